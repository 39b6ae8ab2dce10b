"""Streamed replies through the real broker: formats, order, idle timeout, cancellation, latency."""
import http.client
import json
import os
import re
import signal
import threading
import time

import requests
import sseclient


def ndjson(r):
    return [json.loads(line) for line in r.iter_lines() if line]


def test_a_thousand_parts_arrive_complete_and_in_order_as_ndjson(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    r = requests.post(edge.base + "/v1/count?n=1000&delay_ms=0", headers={"accept": "application/x-ndjson"}, stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    parts = ndjson(r)
    assert all("n" in p for p in parts), [p for p in parts if "n" not in p]
    assert [p["n"] for p in parts] == list(range(1000))


def test_a_thousand_parts_arrive_as_server_sent_events_to_a_real_sse_client(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    r = requests.post(edge.base + "/v1/count?n=1000&delay_ms=0", headers={"accept": "text/event-stream"}, stream=True)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    events = list(sseclient.SSEClient(r).events())
    assert [e.id for e in events] == [str(i) for i in range(1000)]
    assert [json.loads(e.data)["n"] for e in events] == list(range(1000))


def test_a_thousand_parts_arrive_as_a_plain_chunked_body(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    r = requests.post(edge.base + "/v1/count?n=1000&delay_ms=0")
    assert r.headers["transfer-encoding"] == "chunked"
    numbers = [int(m) for m in re.findall(r'\{"n":(\d+),', r.text)]
    assert numbers == list(range(1000))


def test_shuffled_parts_are_put_back_in_order(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["pika"], mode="stream-shuffled")
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson"}, stream=True)
    assert [p["n"] for p in ndjson(r)] == list(range(50))


def test_a_stream_answered_with_a_status_without_content_ends_after_its_head(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["pika"], mode="stream-status")
    conn = http.client.HTTPConnection("127.0.0.1", int(edge.base.rsplit(":", 1)[1]), timeout=10)
    try:
        for status in ("204", "304"):
            conn.request("POST", "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": status})
            r = conn.getresponse()
            assert r.status == int(status) and r.read() == b""
        # The connection is still in step: none of the 50 parts was written to it.
        conn.request("POST", "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": "200"})
        r = conn.getresponse()
        assert r.status == 200
        assert [json.loads(line)["n"] for line in r.read().splitlines()] == list(range(50))
    finally:
        conn.close()


def test_the_idle_timeout_ends_the_stream_with_a_visible_error(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["pika"], mode="stream-stall")
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson"}, stream=True)
    lines = ndjson(r)
    elapsed = time.monotonic() - start
    assert [p["n"] for p in lines[:3]] == [0, 1, 2]
    assert lines[3]["error"]["status"] == 504
    assert "idle" in lines[3]["error"]["detail"]
    assert 0.6 < elapsed < 2.5, elapsed
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "text/event-stream"}, stream=True)
    events = list(sseclient.SSEClient(r).events())
    assert [e.id for e in events[:3]] == ["0", "1", "2"]
    assert events[3].event == "error" and json.loads(events[3].data)["status"] == 504


def test_no_consumer_before_the_first_part_is_a_503_problem(stack):
    edge = stack.start_edge()
    r = requests.post(edge.base + "/v1/count?n=3")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"


def test_a_bad_option_gets_a_400_problem_from_the_worker_not_a_clamped_stream(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    for query, option in [("n=-3", "n"), ("n=200000", "n"), ("n=ten", "n"), ("n=3&delay_ms=", "delay_ms")]:
        r = requests.post(edge.base + "/v1/count?" + query)
        assert r.status_code == 400, (query, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["status"] == 400 and problem["detail"].startswith(option + " must be a whole number"), problem
    r = requests.post(edge.base + "/v1/count?n=2&delay_ms=0&unknown=x", headers={"accept": "application/x-ndjson"})
    assert r.status_code == 200 and [p["n"] for p in ndjson(r)] == [0, 1]


def test_a_client_that_goes_away_cancels_the_worker(stack):
    edge = stack.start_edge()
    worker = stack.start_worker("count", queue=stack.queue["count"])
    r = requests.post(edge.base + "/v1/count?n=100&delay_ms=100", headers={"accept": "application/x-ndjson"}, stream=True)
    seen = 0
    for line in r.iter_lines():
        if line:
            seen += 1
        if seen == 3:
            break
    r.close()
    deadline = time.monotonic() + 5
    log = ""
    while time.monotonic() < deadline:
        log = open(worker.log_path).read()
        if "worker.cancelled" in log:
            break
        time.sleep(0.1)
    assert "worker.cancelled" in log, log[-2000:]
    parts = int(re.search(r"stream\.parts=(\d+)", log).group(1))
    assert parts < 20, parts


def test_the_first_part_reaches_the_client_before_the_last_is_made(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/count?n=10&delay_ms=200", headers={"accept": "application/x-ndjson"}, stream=True)
    arrivals = []
    for line in r.iter_lines():
        if line:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 10
    # The worker needs 9 × 200 ms for the last part; the first must not wait for it.
    assert arrivals[0] < 0.6, arrivals
    assert arrivals[-1] > 1.7, arrivals
    assert arrivals[-1] - arrivals[0] > 1.5


def test_a_client_that_does_not_read_is_cut_off_at_the_buffer_bound(stack):
    edge = stack.start_edge()
    stack.start_worker("count", queue=stack.queue["count"])
    # 6000 parts of ~8 KiB: ~48 MiB, far past socket buffers plus the 8 MiB stream buffer.
    r = requests.post(edge.base + "/v1/count?n=6000&delay_ms=0&pad=8192", headers={"accept": "application/x-ndjson"}, stream=True)
    time.sleep(4)  # read nothing while the worker produces everything
    lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) < 6000
    assert "error" in lines[-1], lines[-1].keys()
    assert lines[-1]["error"]["status"] == 502
    assert "outran the client" in lines[-1]["error"]["detail"]
    assert [p["n"] for p in lines[:-1]] == list(range(len(lines) - 1))
    # The edge lives on and serves the next stream.
    r = requests.post(edge.base + "/v1/count?n=3&delay_ms=0", headers={"accept": "application/x-ndjson"})
    assert [json.loads(line)["n"] for line in r.text.splitlines()] == [0, 1, 2]


def test_a_worker_past_its_shutdown_timeout_ends_its_stream_with_a_visible_error(stack):
    edge = stack.start_edge()
    worker = stack.start_worker("count", queue=stack.queue["count"], extra=["--shutdown-timeout", "0.3"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/count?n=100&delay_ms=50", headers={"accept": "application/x-ndjson"}, stream=True, timeout=10)
    lines = (json.loads(line) for line in r.iter_lines() if line)
    first = next(lines)
    assert first["n"] == 0
    os.killpg(worker.pid, signal.SIGTERM)
    rest = list(lines)
    elapsed = time.monotonic() - start
    # The stream ends with the worker's error at once, not with the edge's idle timeout (1 s)
    # or after all 100 parts (5 s).
    assert "error" in rest[-1], rest[-1]
    assert "worker stopped" in rest[-1]["error"]["detail"], rest[-1]
    parts = [first] + rest[:-1]
    assert [p["n"] for p in parts] == list(range(len(parts)))
    assert len(parts) < 100 and elapsed < 3, (len(parts), elapsed)
    assert worker.wait(timeout=10) == 0
    assert "worker.interrupted" in open(worker.log_path).read()


def test_a_part_larger_than_the_edge_takes_ends_the_stream_with_an_error_and_the_edge_holds_none_of_it(stack):
    edge = stack.start_edge(extra=["--max-reply-bytes", "65536"])
    stack.start_pika_worker(stack.queue["pika"], mode="stream-big")
    # Part 3 of about 60 KB is under the limit: all 50 parts arrive.
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": "60000"}, stream=True)
    assert [p["n"] for p in ndjson(r)] == list(range(50))
    before_kib = peak_rss_kib(edge.pid)
    # Of about 20 MB, it is dropped as it arrives; the client sees parts 0-2, then the error.
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": "20000000"}, stream=True)
    lines = ndjson(r)
    assert [p["n"] for p in lines[:3]] == [0, 1, 2]
    assert lines[3]["error"]["status"] == 502, lines[3]
    assert lines[3]["error"]["type"].endswith("/reply-too-large")
    assert "more than this edge takes (65536 bytes, --max-reply-bytes)" in lines[3]["error"]["detail"]
    assert len(lines) == 4
    # The reply connection was not dropped for it: the next stream is whole.
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": "10"}, stream=True)
    assert [p["n"] for p in ndjson(r)] == list(range(50))
    grown_kib = peak_rss_kib(edge.pid) - before_kib
    assert grown_kib < 8 * 1024, f"the edge's peak RSS grew by {grown_kib} KiB: the 20 MB part was held"


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def test_parts_held_back_for_a_missing_one_count_against_the_stream_buffer(stack):
    # Every part but the first, 1 MB each: held back until part 0 comes, which it never does.
    # They count against the stream's 8 MiB buffer like parts the client has not read, so the
    # stream fails past it rather than hold the 49 MB.
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["pika"], mode="stream-hole")
    before_kib = peak_rss_kib(edge.pid)
    r = requests.post(edge.base + "/v1/pika-stream", headers={"accept": "application/x-ndjson", "x-demo": "1000000"}, stream=True)
    # Nothing was sent before the failure: a plain problem response.
    assert r.status_code == 502, r.text[:300]
    problem = r.json()
    assert "held back until a missing part came" in problem["detail"], problem
    grown_kib = peak_rss_kib(edge.pid) - before_kib
    assert grown_kib < 24 * 1024, f"the edge's peak RSS grew by {grown_kib} KiB: the parts were held"
