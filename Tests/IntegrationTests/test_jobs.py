"""Jobs: 202 after the broker confirmed, status, live SSE with history and resume, any edge."""
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import threading
import time
import uuid

import pika
import requests
import sseclient

from harness import gangway_bin


def submit(edge, query="steps=3&delay_ms=200"):
    r = requests.post(edge.base + "/v1/jobs/render?" + query, data="{}", headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    return r


def wait_until_running(edge, job_id, percent, timeout=5):
    """Waits until the job runs and has reported at least `percent` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
        if s["status"] == "running" and (s["percent"] or 0) >= percent:
            return
        time.sleep(0.05)


def follow(edge, job_id, headers=None, query=""):
    r = requests.get(edge.base + f"/v1/jobs/{job_id}/events{query}", headers=headers or {}, stream=True, timeout=30)
    assert r.status_code == 200, r.text
    return r, list(sseclient.SSEClient(r).events())


def test_submit_answers_202_with_location_and_the_job_runs_to_done(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    r = submit(edge)
    body = r.json()
    job_id = body["id"]
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{job_id}" == body["status_url"]
    assert r.headers["link"] == f'</v1/jobs/{job_id}/events>; rel="monitor"'
    assert body["events_url"] == f"/v1/jobs/{job_id}/events"
    assert r.headers["retry-after"] == "1"
    resp, events = follow(edge, job_id)
    assert resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["cache-control"] == "no-cache"
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    assert [e.event for e in events] == ["log", "progress", "progress", "progress", "done"]
    status = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
    assert status["status"] == "succeeded" and status["percent"] == 100
    assert status["result"] == {"url": f"/renders/{job_id}.png"}


def test_live_event_streams_one_after_another_on_one_keep_alive_connection(stack):
    # Live events are written as ready-made chunks below the HTTP encoder; each stream's
    # response must still end cleanly and leave the connection fit for the next request.
    # (The connection opens with an ordinary request, so it stays a keep-alive one: see the
    # next test for a connection that opens with a stream.)
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    conn = http.client.HTTPConnection(edge.base.removeprefix("http://"), timeout=30)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() and conn.sock is not None
    sockets = [conn.sock]
    for _ in range(3):
        job_id = submit(edge, "steps=3&delay_ms=150").json()["id"]
        conn.request("GET", f"/v1/jobs/{job_id}/events")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("transfer-encoding") == "chunked"
        assert resp.getheader("connection") is None
        text = resp.read().decode()
        ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
        assert ids == ["1", "2", "3", "4", "5"], text
        assert "event: done" in text
        sockets.append(conn.sock)
    assert all(s is sockets[0] for s in sockets), sockets
    conn.close()


def read_to_eof(sock, timeout=20):
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_connection_that_opens_with_an_event_stream_ends_with_it(stack):
    # Served without a task: the response says so, ends with the last chunk, and the edge
    # closes the connection; a request the client sent after it is not answered.
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=3&delay_ms=150").json()["id"]
    port = int(edge.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = read_to_eof(sock).decode()
    sock.close()
    head, _, body = data.partition("\r\n\r\n")
    lines = head.lower().split("\r\n")
    assert lines[0] == "http/1.1 200 ok", head
    assert {"connection: close", "transfer-encoding: chunked", "content-type: text/event-stream"} <= set(lines), head
    assert any(line.startswith("date: ") for line in lines) and any(line.startswith("x-request-id: ") for line in lines), head
    assert body.endswith("0\r\n\r\n") and "HTTP/1.1" not in body, body
    ids = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
    assert ids == ["1", "2", "3", "4", "5"], body
    # An error on such a connection is an ordinary response, and the connection closes too.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /v1/jobs/no-such-job/events HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_to_eof(sock).decode()
    sock.close()
    head, _, body = data.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 404") and "connection: close" in head.lower(), head
    assert "application/problem+json" in head and json.loads(body)["status"] == 404, data
    assert requests.get(edge.base + "/healthz").json()["event_streams"] == 0


def test_a_late_subscriber_sees_the_full_history_and_last_event_id_resumes(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=3&delay_ms=50").json()["id"]
    time.sleep(1.0)  # the job is over before anyone follows
    _, events = follow(edge, job_id)
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    _, events = follow(edge, job_id, headers={"Last-Event-ID": "3"})
    assert [e.id for e in events] == ["4", "5"]
    _, events = follow(edge, job_id, query="?lastEventId=4")
    assert [e.id for e in events] == ["5"]
    # An id that is none of this stream's: a reset that says so, then the whole history.
    _, events = follow(edge, job_id, headers={"Last-Event-ID": "orders-17"})
    assert events[0].event == "reset" and "orders-17 is not an event id" in json.loads(events[0].data)["reason"], events[0]
    assert [e.id for e in events[1:]] == ["1", "2", "3", "4", "5"]


def test_reconnecting_with_last_event_id_mid_job_gets_the_rest_exactly_once(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=6&delay_ms=300").json()["id"]
    r = requests.get(edge.base + f"/v1/jobs/{job_id}/events", stream=True, timeout=30)
    first = []
    for e in sseclient.SSEClient(r).events():
        first.append(e.id)
        if e.id == "3":
            break
    r.close()
    _, rest = follow(edge, job_id, headers={"Last-Event-ID": "3"})
    ids = first + [e.id for e in rest]
    assert ids == [str(i) for i in range(1, 9)], ids


def test_a_job_submitted_on_one_edge_is_followed_on_another(stack):
    edge_a = stack.start_edge()
    edge_b = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge_a, "steps=3&delay_ms=300").json()["id"]
    deadline = time.monotonic() + 3
    while requests.get(edge_b.base + f"/v1/jobs/{job_id}").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, events = follow(edge_b, job_id)
    assert [e.event for e in events][-1] == "done"
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]


def test_a_job_event_the_broker_nacks_is_published_again_and_the_job_goes_on_without_a_gap(stack):
    edge = stack.start_edge()
    worker = stack.start_worker("render", queue=stack.queue["render"])
    # While this queue is bound, the broker refuses (nacks) every event a worker reports: it
    # holds no message and rejects publishes when full. The edge's own queued notice passes.
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    ch = conn.channel()
    ch.queue_declare("it.nacker", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    for kind in ("log", "progress", "done", "failed"):
        ch.queue_bind("it.nacker", "gangway.events", f"job.*.{kind}")
    try:
        job_id = submit(edge, "steps=3&delay_ms=0").json()["id"]
        time.sleep(2.5)
        # The worker does not go past its first event until the broker takes it.
        log = open(worker.log_path).read()
        assert "worker.job.event.nacked" in log and "job.event.seq=1" in log, log[-2000:]
        assert "job.event.seq=2" not in log
        assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] != "succeeded"
    finally:
        ch.queue_delete("it.nacker")
        conn.close()
    # Taken at the next retry (5 s apart at most): the job runs to done, and its events come
    # numbered 1, 2, 3… once each, though the broker may have stored a copy of a nacked one
    # in the event log (it went to two queues and only one refused it).
    _, events = follow(edge, job_id)
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    assert [e.event for e in events] == ["log", "progress", "progress", "progress", "done"]
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_an_event_that_reaches_no_queue_is_published_again_not_lost(stack):
    # Right after the broker's application restarts it takes connections a moment before it
    # routes anything to the event log (measured: about 0.3 s around each `start_app`). An
    # event published then reached no queue and was confirmed all the same: lost, a gap for
    # good. Events are mandatory now, and a returned one is published again. Here the event
    # log's binding is taken away while a job runs, and put back 2 s later.
    edge = stack.start_edge()
    worker = stack.start_worker("render", queue=stack.queue["render"])
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    ch = conn.channel()
    try:
        job_id = submit(edge, "steps=4&delay_ms=300").json()["id"]
        deadline = time.monotonic() + 10
        while requests.get(edge.base + f"/v1/jobs/{job_id}").json().get("status") != "running":
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        ch.queue_unbind("gangway.events.log", "gangway.events", "job.#")
        time.sleep(2)
        log = open(worker.log_path).read()
        assert "worker.job.event.unroutable" in log, log[-2000:]
    finally:
        ch.queue_bind("gangway.events.log", "gangway.events", "job.#")
        conn.close()
    _, events = follow(edge, job_id)
    assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [e.event for e in events] == ["log", "progress", "progress", "progress", "progress", "done"]


def test_a_failing_job_reports_failed(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=2&delay_ms=50&fail=1").json()["id"]
    _, events = follow(edge, job_id)
    assert events[-1].event == "failed"
    status = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
    assert status["status"] == "failed" and "render failed" in status["error"]["error"]


def test_a_job_with_a_bad_option_fails_at_once_naming_it(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=abc&delay_ms=50").json()["id"]
    _, events = follow(edge, job_id)
    assert [e.event for e in events] == ["failed"], [(e.event, e.data) for e in events]
    status = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
    assert status["status"] == "failed"
    assert status["error"]["error"] == "steps must be a whole number from 1 to 1000, not 'abc'", status


def test_a_worker_killed_mid_job_has_the_job_redelivered_and_completed(stack):
    edge = stack.start_edge()
    doomed = stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=4&delay_ms=400").json()["id"]
    wait_until_running(edge, job_id, percent=25)
    os.killpg(doomed.pid, signal.SIGKILL)
    stack.wait_no_consumers(stack.queue["render"])  # the broker notices the dead connection
    stack.start_worker("render", queue=stack.queue["render"])
    _, events = follow(edge, job_id)
    assert events[-1].event == "done"
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "no duplicate or out-of-order ids"
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_worker_past_its_shutdown_timeout_leaves_the_job_to_another_worker(stack):
    edge = stack.start_edge()
    first = stack.start_worker("render", queue=stack.queue["render"], extra=["--shutdown-timeout", "0.3"])
    job_id = submit(edge, "steps=4&delay_ms=600").json()["id"]
    wait_until_running(edge, job_id, percent=25)
    stopped_at = time.monotonic()
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    # The job had at least 1.8 s to go: it was interrupted, not finished...
    assert time.monotonic() - stopped_at < 1.5
    assert "worker.job.interrupted" in open(first.log_path).read()
    # ...and not reported cancelled or failed: nobody asked for that.
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "running"
    stack.wait_no_consumers(stack.queue["render"])  # the broker takes the closed connection's consumer away
    stack.start_worker("render", queue=stack.queue["render"])
    _, events = follow(edge, job_id)
    assert events[-1].event == "done"
    assert "cancelled" not in [e.event for e in events]
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "no duplicate or out-of-order ids"
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_worker_stopped_while_its_done_is_nacked_leaves_the_job_to_another_not_failed(stack):
    edge = stack.start_edge()
    first = stack.start_worker("render", queue=stack.queue["render"], extra=["--shutdown-timeout", "0.5"])
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    ch = conn.channel()
    ch.queue_declare("it.nacker", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_bind("it.nacker", "gangway.events", "job.*.done")
    try:
        job_id = submit(edge, "steps=1&delay_ms=0").json()["id"]
        deadline = time.monotonic() + 10
        while "job.event.kind=done" not in open(first.log_path).read() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "job.event.kind=done" in open(first.log_path).read(), "the done event was never nacked"
        # Stopped past its shutdown timeout while it publishes `done` again and again: the job
        # succeeded, so it is not reported failed; unacked, it goes back to the queue.
        os.killpg(first.pid, signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        log = open(first.log_path).read()
        assert "worker.job.report.failed" in log and "worker.job.failed" not in log, log[-2000:]
        # The event log took a copy of the nacked `done` (only the other queue refused it), so
        # the edge knows the job succeeded; a `failed` after it would have overwritten that.
        assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    finally:
        ch.queue_delete("it.nacker")
        conn.close()
    stack.wait_no_consumers(stack.queue["render"])
    stack.start_worker("render", queue=stack.queue["render"])
    _, events = follow(edge, job_id)
    assert events[-1].event == "done" and "failed" not in [e.event for e in events]
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_unknown_jobs_are_404_and_unroutable_jobs_are_503_never_202(stack):
    edge = stack.start_edge()
    unknown = "0" * 32
    for method, path in [("GET", ""), ("GET", "/events"), ("DELETE", "")]:
        r = requests.request(method, edge.base + "/v1/jobs/" + unknown + path, headers={"x-request-id": "rid-404"})
        assert r.status_code == 404, (method, path, r.text)
        body = r.json()
        # Told that the job is unknown (and why it may be), not that no route matches the path.
        assert body["detail"].startswith(f"no job {unknown} is known here: it was never submitted, or it finished"), body
        assert "60 minutes after their last event" in body["detail"], body
        assert body["request_id"] == "rid-404", body
    r = requests.post(edge.base + "/v1/jobs/nowhere", data="{}")
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_idle_event_streams_get_heartbeat_comments(stack):
    edge = stack.start_edge(extra=["--sse-heartbeat", "1"])
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=2&delay_ms=1800").json()["id"]
    r = requests.get(edge.base + f"/v1/jobs/{job_id}/events", stream=True, timeout=30)
    lines = [line.decode() for line in r.iter_lines()]
    assert lines[0] == "retry: 2000"
    assert ": keep-alive" in lines
    assert "event: done" in lines


def test_an_edge_started_mid_job_still_serves_the_full_history(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=5&delay_ms=300").json()["id"]
    deadline = time.monotonic() + 5
    while requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(edge.pid, signal.SIGKILL)
    edge.wait()
    fresh = stack.start_edge()  # knows nothing but what the stream queue replays
    _, events = follow(fresh, job_id)
    assert [e.id for e in events] == [str(i) for i in range(1, 8)]
    assert events[-1].event == "done"


def test_idempotency_key_returns_the_same_job_on_this_edge_and_on_another(stack):
    edge_a = stack.start_edge()
    edge_b = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    headers = {"idempotency-key": f"order-77-{stack.suffix}", "content-type": "application/json"}
    url = "/v1/jobs/render?steps=2&delay_ms=100"
    first = requests.post(edge_a.base + url, data="{}", headers=headers)
    again = requests.post(edge_a.base + url, data="{}", headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    time.sleep(0.5)  # the queued notice reaches the other edge through the event stream
    elsewhere = requests.post(edge_b.base + url, data="{}", headers=headers)
    assert elsewhere.json()["id"] == first.json()["id"]
    other = requests.post(edge_a.base + url, data="{}", headers={"idempotency-key": f"order-78-{stack.suffix}"})
    assert other.json()["id"] != first.json()["id"]
    bad = requests.post(edge_a.base + url, data="{}", headers={"idempotency-key": "x" * 300})
    assert bad.status_code == 400


def test_the_same_idempotency_key_sent_to_two_edges_at_once_makes_one_job(stack):
    edge_a = stack.start_edge()
    edge_b = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    url = "/v1/jobs/render?steps=1&delay_ms=0"
    for round_ in range(10):
        headers = {"idempotency-key": f"race-{round_}-{stack.suffix}", "content-type": "application/json"}
        barrier = threading.Barrier(2)
        answers = {}

        def post(name, edge):
            barrier.wait()
            answers[name] = requests.post(edge.base + url, data="{}", headers=headers)

        threads = [threading.Thread(target=post, args=(n, e)) for n, e in (("a", edge_a), ("b", edge_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers["a"].status_code == answers["b"].status_code == 202, (answers["a"].text, answers["b"].text)
        assert answers["a"].json()["id"] == answers["b"].json()["id"]
        follow(edge_a, answers["a"].json()["id"])  # until done
    # Ten keys, ten jobs published: every published job is announced once on the event log
    # (job.<id>.queued with its key), so count the announcements that carry these keys.
    announced = queued_notices(stack, f"-{stack.suffix}")
    assert sorted(announced.values()) == sorted(f"job-render race-{r}-{stack.suffix}" for r in range(10)), announced


def queued_notices(stack, key_suffix):
    """job id → idempotency key of every queued notice on gangway.events.log whose key ends so."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    found = {}
    deadline = time.monotonic() + 10
    for method, properties, _ in channel.consume("gangway.events.log", arguments={"x-stream-offset": "first"}, inactivity_timeout=1):
        if method is None or time.monotonic() > deadline:
            break
        key = (properties.headers or {}).get("x-idempotency-key")
        if method.routing_key.endswith(".queued") and isinstance(key, str) and key.endswith(key_suffix):
            found[method.routing_key.split(".")[1]] = key
        channel.basic_ack(method.delivery_tag)
    connection.close()
    return found


def test_a_key_whose_job_was_never_announced_answers_with_it_once_its_worker_reports(stack):
    # An edge that dies after the broker confirmed its job and before it announced the job
    # (its queued notice) leaves the key's claim behind with no job known for it. The job runs,
    # and its worker's events carry the key, from which every edge learns it. Played with pika:
    # the claim and the job as that edge left them.
    edge = stack.start_edge()
    key = f"orphan-{stack.suffix}"
    scoped = f"job-render {key}"
    job_id = uuid.uuid4().hex
    connection = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    channel = connection.channel()
    claim = "gangway.claim." + hashlib.sha256(scoped.encode()).hexdigest()[:40]
    channel.queue_declare(claim, durable=True,
                          arguments={"x-max-length": 1, "x-overflow": "reject-publish", "x-expires": 3600000})
    channel.basic_publish("", claim, job_id.encode(), pika.BasicProperties(delivery_mode=2))
    channel.basic_publish("", stack.queue["render"], b"{}", pika.BasicProperties(
        delivery_mode=2, content_type="application/json",
        headers={"x-job-id": job_id, "x-idempotency-key": scoped, "x-method": "POST",
                 "x-path": "/v1/jobs/render", "x-query": "steps=2&delay_ms=50"}))
    connection.close()
    url = edge.base + "/v1/jobs/render"
    headers = {"content-type": "application/json", "idempotency-key": key}
    # Before a worker has run it, nothing says which job holds the key.
    r = requests.post(url, data="{}", headers=headers, timeout=10)
    assert r.status_code == 409, r.text
    stack.start_worker("render", queue=stack.queue["render"])
    deadline = time.monotonic() + 15
    while (r := requests.post(url, data="{}", headers=headers, timeout=10)).status_code == 409:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.status_code == 202 and r.json()["id"] == job_id, r.text
    stream = requests.get(edge.base + f"/v1/jobs/{job_id}/events", stream=True, timeout=30)
    assert [e.event for e in sseclient.SSEClient(stream).events()][-1] == "done"


def test_a_poison_job_is_dead_lettered_after_five_deliveries_and_reported_failed(stack):
    edge = stack.start_edge()
    job_id = submit(edge, "steps=3&delay_ms=50&poison=1").json()["id"]
    deliveries = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "failed":
            break
        worker = stack.spawn([gangway_bin(), "worker", "render", "--queue", stack.queue["render"]], "poisoned")
        try:
            worker.wait(timeout=10)  # it dies on the job (exit 70)
            deliveries += 1
        except Exception:
            worker.kill()
            break
    status = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
    assert status["status"] == "failed", status
    assert status["error"]["reason"] == "delivery_limit", status
    assert deliveries == 5  # x-delivery-limit 4: dead-lettered on the fifth failed delivery
    _, events = follow(edge, job_id)
    assert events[-1].event == "failed"


def test_delete_cancels_a_running_job_through_the_worker(stack):
    edge = stack.start_edge()
    worker = stack.start_worker("render", queue=stack.queue["render"])
    job_id = submit(edge, "steps=20&delay_ms=300").json()["id"]
    deadline = time.monotonic() + 5
    while requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    r = requests.delete(edge.base + f"/v1/jobs/{job_id}")
    assert r.status_code == 202, r.text
    _, events = follow(edge, job_id)
    assert events[-1].event == "cancelled"
    assert len(events) < 20
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert "worker.cancelled" in open(worker.log_path).read()
    # A finished job cannot be cancelled; an unknown one is not found.
    assert requests.delete(edge.base + f"/v1/jobs/{job_id}").status_code == 409
    assert requests.delete(edge.base + "/v1/jobs/" + "0" * 32).status_code == 404


def assert_cancelled_before_it_started(edge, job_id):
    _, events = follow(edge, job_id)
    # Not a single log or progress event: it was never started.
    assert [e.event for e in events] == ["cancelled"]
    assert "before it started" in events[0].data
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_delete_of_a_job_still_waiting_in_its_queue_means_it_never_runs(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"], extra=["--prefetch", "1"])
    running = submit(edge, "steps=3&delay_ms=700").json()["id"]
    waiting = submit(edge, "steps=3&delay_ms=100").json()["id"]
    deadline = time.monotonic() + 5
    while requests.get(edge.base + f"/v1/jobs/{running}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.get(edge.base + f"/v1/jobs/{waiting}").json()["status"] == "queued"
    assert requests.delete(edge.base + f"/v1/jobs/{waiting}").status_code == 202
    assert_cancelled_before_it_started(edge, waiting)
    _, events = follow(edge, running)
    assert events[-1].event == "done"


def test_a_job_cancelled_while_no_worker_runs_is_not_started_by_the_worker_that_comes_later(stack):
    # The cancel message is kept in the cancel log; a job worker reads the log from its start
    # when it connects, before it starts the jobs it takes.
    edge = stack.start_edge()
    job_id = submit(edge, "steps=3&delay_ms=100").json()["id"]
    kept = submit(edge, "steps=2&delay_ms=50").json()["id"]
    assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "queued"
    r = requests.delete(edge.base + f"/v1/jobs/{job_id}")
    assert r.status_code == 202, r.text
    time.sleep(0.5)  # long gone from any live queue: no worker was there to take it
    # Other cancels keep coming, so the log is never quiet: the worker knows it has read up to
    # the present by the marker it publishes into the log, not by a pause.
    stop = threading.Event()

    def chatter():
        conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
        ch = conn.channel()
        while not stop.is_set():
            ch.basic_publish("gangway.cancel", "", b"", pika.BasicProperties(headers={"x-cancel": uuid.uuid4().hex}, timestamp=int(time.time())))
            time.sleep(0.05)
        conn.close()

    busy = threading.Thread(target=chatter)
    busy.start()
    try:
        worker = stack.start_worker("render", queue=stack.queue["render"])
        assert_cancelled_before_it_started(edge, job_id)
        # The job behind it, not cancelled, runs.
        _, events = follow(edge, kept)
        assert events[-1].event == "done"
    finally:
        stop.set()
        busy.join()
    log = open(worker.log_path).read()
    assert "worker.cancelled.before.start" in log
    assert "worker.cancel_log.behind" not in log


def test_a_cancel_that_no_queue_takes_is_refused_with_503(stack):
    edge = stack.start_edge()
    job_id = submit(edge, "steps=3&delay_ms=100").json()["id"]
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    try:
        ch = conn.channel()
        ch.queue_delete("gangway.cancel.log")
        try:
            r = requests.delete(edge.base + f"/v1/jobs/{job_id}")
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "the cancel request reached no queue" in r.json()["detail"] and "gangway.cancel.log" in r.json()["detail"], r.text
            assert requests.get(edge.base + f"/v1/jobs/{job_id}").json()["status"] == "queued"
        finally:
            ch.queue_declare("gangway.cancel.log", durable=True, arguments={
                "x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": 10000000})
            ch.queue_bind("gangway.cancel.log", "gangway.cancel", "")
    finally:
        conn.close()
    # With the log back, the same request goes through.
    assert requests.delete(edge.base + f"/v1/jobs/{job_id}").status_code == 202


def test_an_edge_started_on_a_busy_event_log_knows_at_once_when_it_has_caught_up(stack):
    # A job elsewhere keeps reporting, so the event log is never quiet for long: the edge knows
    # it has read the log up to the present by the marker it publishes into it, and answers
    # 404 for a job that is not there without waiting for a pause (at most 3 s) first.
    stop = threading.Event()
    other = uuid.uuid4().hex

    def chatter():
        conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
        ch = conn.channel()
        # As an edge declares them, so that the events are kept before any edge ran.
        ch.exchange_declare("gangway.events", "topic", durable=True)
        ch.queue_declare("gangway.events.log", durable=True, arguments={
            "x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": 100000000})
        ch.queue_bind("gangway.events.log", "gangway.events", "job.#")
        seq = 0
        while not stop.is_set():
            seq += 1
            ch.basic_publish("gangway.events", f"job.{other}.log", json.dumps({"line": f"line {seq}"}).encode(),
                             pika.BasicProperties(headers={"x-seq": seq}, delivery_mode=2, content_type="application/json"))
            time.sleep(0.05)
        conn.close()

    busy = threading.Thread(target=chatter)
    busy.start()
    try:
        time.sleep(0.5)
        assert busy.is_alive()
        edge = stack.start_edge()
        start = time.monotonic()
        r = requests.get(edge.base + "/v1/jobs/" + uuid.uuid4().hex)
        elapsed = time.monotonic() - start
        assert r.status_code == 404, r.text
        assert elapsed < 1.5, f"404 after {elapsed:.1f} s"
        # And the job that keeps reporting is known, with its history.
        assert requests.get(edge.base + f"/v1/jobs/{other}").json()["status"] == "running"
        assert busy.is_alive()
    finally:
        stop.set()
        busy.join()


def test_a_finished_job_redirects_to_its_result_when_the_route_says_so(stack):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    r = requests.post(edge.base + "/v1/jobs/render-redirect?steps=1&delay_ms=1000", data="{}")
    job_id = r.json()["id"]
    # Before it has succeeded there is no result, and the 404 says why.
    early = requests.get(edge.base + f"/v1/jobs/{job_id}/result")
    assert early.status_code == 404, early.text
    assert re.fullmatch(f"job {job_id} has no result: it is (queued|running)", early.json()["detail"]), early.text
    follow(edge, job_id)  # until done
    status = requests.get(edge.base + f"/v1/jobs/{job_id}", allow_redirects=False)
    assert status.status_code == 303
    assert status.headers["location"] == f"/v1/jobs/{job_id}/result"
    result = requests.get(edge.base + f"/v1/jobs/{job_id}")  # followed
    assert result.json() == {"url": f"/renders/{job_id}.png"}
    # Routes without result_redirect keep answering the status itself.
    other = submit(edge, "steps=1&delay_ms=50").json()["id"]
    follow(edge, other)
    assert requests.get(edge.base + f"/v1/jobs/{other}", allow_redirects=False).status_code == 200


def test_an_event_that_skips_a_sequence_number_is_passed_on_and_reported_as_a_gap(stack):
    # A worker's events go out one after the other, each once the one before is confirmed: a
    # gap means an event was lost on the way. The edge cannot invent it, but says so.
    edge = stack.start_edge()
    job = uuid.uuid4().hex
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for seq, kind in ((1, "log"), (3, "progress"), (4, "done")):
            ch.basic_publish("gangway.events", f"job.{job}.{kind}", json.dumps({"line": "x"} if kind == "log" else {"percent": 50} if kind == "progress" else {"ok": True}).encode(),
                             pika.BasicProperties(headers={"x-seq": seq}, delivery_mode=2, content_type="application/json"))
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while requests.get(f"{edge.base}/v1/jobs/{job}").json().get("status") != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    events = [e.id for e in sseclient.SSEClient(requests.get(f"{edge.base}/v1/jobs/{job}/events", stream=True, timeout=10)).events()
              if e.event in ("log", "progress", "done")]
    assert events == ["1", "3", "4"]
    # Other tests' jobs in the broker's event log may count too: this one adds one.
    assert requests.get(f"{edge.base}/healthz").json()["job_event_gaps"] >= 1
    log = open(edge.log_path).read()
    gap = [line for line in log.splitlines() if "job.events.gap" in line and f"job.id={job}" in line]
    assert len(gap) == 1 and " warning " in gap[0], gap
    assert "job.event.seq=3" in gap[0] and "job.events.missing=2...2" in gap[0], gap


def test_job_history_is_bounded_in_bytes_and_an_oversized_event_is_kept_as_a_placeholder(stack):
    # Every edge holds each job's events for an hour and replays them on every reconnect: a
    # worker's oversized event is dropped as it arrives and kept as a placeholder with its
    # x-seq (no gap), and the history as a whole stays within its byte bound, the oldest jobs
    # forgotten first.
    edge = stack.start_edge(extra=("--max-event-bytes", "65536", "--job-history-bytes", "300000"))
    time.sleep(1)  # the replay of earlier tests' events
    with open(f"/proc/{edge.pid}/status") as f:
        peak_before = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    big, small = uuid.uuid4().hex, [uuid.uuid4().hex for _ in range(6)]
    huge = 12 * 1024 * 1024
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()

        def event(job, seq, kind, body):
            ch.basic_publish("gangway.events", f"job.{job}.{kind}", body,
                             pika.BasicProperties(headers={"x-seq": seq}, delivery_mode=2, content_type="application/json"))

        for job in small:  # 6 x 60 000 bytes: more than the 300 000 kept
            event(job, 1, "log", b'{"line":"' + b"y" * 60_000 + b'"}')
            event(job, 2, "done", b'{"ok":true}')
        event(big, 1, "log", b'{"line":"started"}')
        event(big, 2, "log", b'{"line":"' + b"x" * huge + b'"}')
        event(big, 3, "done", b'{"ok":true}')
    finally:
        conn.close()
    deadline = time.monotonic() + 20
    while requests.get(f"{edge.base}/v1/jobs/{big}").json().get("status") != "succeeded":
        assert time.monotonic() < deadline, "the last job's events did not arrive"
        time.sleep(0.1)
    events = [(e.id, e.event, e.data) for e in sseclient.SSEClient(requests.get(f"{edge.base}/v1/jobs/{big}/events", stream=True, timeout=10)).events()
              if e.event in ("log", "done")]
    assert [(i, kind) for i, kind, _ in events] == [("1", "log"), ("2", "log"), ("3", "done")]
    placeholder = json.loads(events[1][2])
    assert placeholder["bytes"] == huge + len('{"line":""}') and placeholder["limit"] == 65536 and "larger than the edge keeps" in placeholder["omitted"]
    assert json.loads(events[2][2]) == {"ok": True}
    # Never held: the edge's peak memory grew by much less than the event.
    with open(f"/proc/{edge.pid}/status") as f:
        peak_after = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    assert peak_after - peak_before < 8 * 1024, f"peak RSS grew by {peak_after - peak_before} KiB"
    health = requests.get(f"{edge.base}/healthz").json()
    assert health["job_history_bytes"] <= 300_000 and health["jobs_forgotten_for_bytes"] >= 1
    # The oldest of the six is forgotten (404, as for any job the edge does not know); the
    # newest are kept whole.
    assert requests.get(f"{edge.base}/v1/jobs/{small[0]}").status_code == 404
    assert requests.get(f"{edge.base}/v1/jobs/{small[-1]}").json()["status"] == "succeeded"
    assert "job.event.too_large" in open(edge.log_path).read()
    # Bad limits are refused at start with the reason.
    refused = stack.start_edge(extra=("--max-event-bytes", "65536", "--job-history-bytes", "1000"), wait=False)
    assert refused.wait(timeout=30) != 0
    assert "--job-history-bytes must be at least --max-event-bytes" in open(refused.log_path).read()
