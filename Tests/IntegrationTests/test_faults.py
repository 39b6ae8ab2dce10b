"""Network faults between gangway and the broker, injected by the project's own TCP proxy
(faultproxy.py): connections reset mid-stream, a partition that heals, a stream cut into
pieces of a few bytes. The broker itself stays up throughout."""
import concurrent.futures
import json
import os
import re
import threading
import time
import uuid

import pika
import pytest
import requests
import sseclient

from faultproxy import FaultProxy
from harness import PostLoad, serves_again
from test_jobs import wait_until_running


@pytest.fixture
def proxy(broker):
    p = FaultProxy(broker.port).start()
    yield p
    p.close()


def test_frames_cut_into_pieces_of_a_few_bytes_arrive_whole(stack, proxy):
    # Every AMQP frame between the edge, the worker and the broker arrives in pieces of 1 to 7
    # bytes: methods, headers and bodies are reassembled on both sides.
    proxy.pieces = 7
    # A virtual host of its own: the edge reads the job event log from its start, through the
    # proxy too, on the connection its replies come by, and at a few bytes a piece the events
    # earlier tests left there (one of 12 MB) would hold the replies past the route's timeout.
    vhost = f"pieces-{uuid.uuid4().hex[:8]}"
    stack.broker.ctl("add_vhost", vhost)
    stack.broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    edge = stack.start_edge(url=proxy.url + vhost)
    stack.start_worker("echo", url=proxy.url + vhost, vhost=vhost)
    body = os.urandom(48 * 1024)
    r = requests.post(edge.base + "/v1/echo", data=body, headers={"content-type": "application/octet-stream",
                                                                 "x-request-id": "pieces-1"})
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["x-request-id-seen"] == "pieces-1"

    def call(i):
        return requests.post(edge.base + "/v1/echo", data=f"request {i}", timeout=10)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(call, range(64)))
    assert [r.text for r in replies] == [f"request {i}" for i in range(64)]


def test_connections_reset_while_requests_flow_fail_cleanly_and_recover(stack, proxy):
    edge = stack.start_edge(url=proxy.url)
    stack.start_worker("echo")
    with PostLoad(edge) as load:
        time.sleep(1.0)
        assert proxy.cut() >= 2, "the edge's publishing and consuming connections pass the proxy"
        # And again while it recovers.
        time.sleep(0.3)
        proxy.cut()
        recovered = serves_again(edge, within=15)
        recovered_at = time.monotonic()
        time.sleep(1.0)
    outcomes = load.outcomes

    assert recovered is not None, open(edge.log_path).read()[-3000:]
    assert recovered < 10, f"the edge served again only after {recovered:.1f} s"
    statuses = [status for status, *_ in outcomes]
    assert statuses.count(200) > 20
    # Each request was answered at once: its reply, or 503 when its message or its reply
    # could not travel. None waited for its deadline: the edge knows when a reply cannot come.
    assert set(statuses) <= {200, 503}, [s for s in statuses if s not in (200, 503)]
    assert max(elapsed for _, _, elapsed, _ in outcomes) < 1, "no request waits while the edge recovers"
    after = [status for status, start, *_ in outcomes if start > recovered_at]
    assert after and set(after) == {200}, after
    log = open(edge.log_path).read()
    # Both connections were lost, and connected again (first connects: one each).
    assert "amqp.connection.lost" in log and log.count("amqp.connected") > 2, log[-3000:]


def test_a_worker_whose_connection_is_reset_mid_request_loses_no_request(stack, proxy):
    # Worker A, behind the proxy, holds requests when its connection is reset; the broker
    # gives them to worker B, and every client still gets its own reply before the deadline.
    edge = stack.start_edge()
    stack.start_worker("echo", url=proxy.url, extra=["--delay-ms", "400"])

    def call(i):
        start = time.monotonic()
        r = requests.post(edge.base + "/v1/echo", data=f"held {i}", timeout=10)
        return r, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        calls = [pool.submit(call, i) for i in range(20)]
        time.sleep(0.2)
        assert proxy.cut() == 1
        stack.start_worker("echo", wait=False)
        results = [c.result() for c in calls]
    for i, (r, elapsed) in enumerate(results):
        assert r.status_code == 200, r.text
        assert r.text == f"held {i}"
        assert elapsed < 3
    # Worker A comes back by itself through the proxy.
    stack.wait_consumers(stack.queue["echo"], at_least=2, timeout=15)


def test_a_partition_is_detected_by_heartbeats_and_the_edge_recovers_when_it_heals(stack, proxy):
    edge = stack.start_edge(url=proxy.url + "?heartbeat=1")
    stack.start_worker("echo", url=proxy.url + "?heartbeat=1")
    assert requests.post(edge.base + "/v1/echo", data="a").status_code == 200
    proxy.partition()
    try:
        start = time.monotonic()
        r = requests.post(edge.base + "/v1/echo", data="b", timeout=10)
        assert r.status_code in (503, 504), r.text
        assert time.monotonic() - start < 3.5
        ready, deadline = 200, time.monotonic() + 6
        while time.monotonic() < deadline and ready != 503:
            ready = requests.get(edge.base + "/readyz", timeout=2).status_code
            time.sleep(0.2)
        assert ready == 503, "missed heartbeats must make the edge not-ready"
        # Stay partitioned while the edge and the worker try to reconnect: their new
        # connections are accepted and then hear nothing, and must not wait forever.
        accepted = proxy.accepted
        time.sleep(8)
        assert proxy.accepted > accepted, "the edge tries to reconnect during the partition"
        assert requests.get(edge.base + "/readyz", timeout=2).status_code == 503
    finally:
        proxy.heal()
    recovered = serves_again(edge, within=20)
    assert recovered is not None, open(edge.log_path).read()[-3000:]
    assert recovered < 15, f"the edge served again only after {recovered:.1f} s"


def test_a_job_followed_across_a_reset_of_the_edge_s_connections_loses_and_repeats_no_event(stack, proxy):
    # The edge reads job events from the event log; its connections reset mid-job. A follower
    # that stays connected, or resumes with Last-Event-ID if the edge ended its stream, sees
    # every event once, in order.
    edge = stack.start_edge(url=proxy.url)
    stack.start_worker("render", queue=stack.queue["render"])
    r = requests.post(edge.base + "/v1/jobs/render?steps=8&delay_ms=250", data="{}",
                      headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    seen = []
    cut = threading.Timer(0.9, proxy.cut)
    cut.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": seen[-1].id} if seen else {}
        try:
            stream = requests.get(edge.base + f"/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=30)
        except requests.RequestException:
            time.sleep(0.2)
            continue
        if stream.status_code != 200:
            time.sleep(0.2)
            continue
        try:
            for e in sseclient.SSEClient(stream).events():
                seen.append(e)
        except requests.RequestException:
            pass
        if seen and seen[-1].event in ("done", "failed"):
            break
    cut.join()
    assert [e.id for e in seen] == [str(i) for i in range(1, len(seen) + 1)], [(e.id, e.event) for e in seen]
    assert seen[-1].event == "done", [(e.id, e.event) for e in seen]
    assert len(seen) == 8 + 2, [(e.id, e.event) for e in seen]


def test_a_topic_subscriber_is_told_of_the_gap_when_the_edge_s_connections_reset(stack, proxy):
    # The edge's topic queue is exclusive: it dies with the connection, and events published
    # until it is back never reach this edge. Its subscribers are told, never left a silent gap.
    edge = stack.start_edge(url=proxy.url)
    topic = f"orders{stack.suffix}"
    r = requests.get(f"{edge.base}/v1/topics/stream?match={topic}.*", stream=True, timeout=30)
    assert r.status_code == 200, r.text
    events = []

    def read():
        try:
            for e in sseclient.SSEClient(r).events():
                events.append(e)
                if e.event == "message" and json.loads(e.data)["data"]["n"] == 2:
                    break
        except Exception:
            pass
        r.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def publish(n):
        return requests.post(f"{edge.base}/v1/topics/{topic}.created", json={"n": n}).status_code

    assert publish(1) == 202
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    first_id = events[0].id
    proxy.cut()
    # Published again once the edge is back: the subscription's binding was made again.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and publish(2) != 202:
        time.sleep(0.2)
    reader.join(timeout=5)
    assert not reader.is_alive(), [(e.event, e.data) for e in events]
    assert [e.event for e in events] == ["message", "reset", "message"], [(e.event, e.data) for e in events]
    assert "lost its connection to the broker" in json.loads(events[1].data)["reason"]
    assert [json.loads(events[i].data)["data"]["n"] for i in (0, 2)] == [1, 2]
    # Resuming from before the gap: a reset, not a replay that would look complete.
    resumed = requests.get(f"{edge.base}/v1/topics/stream?match={topic}.*", headers={"Last-Event-ID": first_id},
                           stream=True, timeout=30)
    first = next(sseclient.SSEClient(resumed).events())
    resumed.close()
    assert first.event == "reset", (first.event, first.data)


def test_a_job_worker_whose_connection_is_reset_mid_job_runs_it_again_not_twice_at_once(stack, proxy):
    # The job is redelivered when the worker's connection goes; the worker reconnects and gets
    # it again. The run the lost connection delivered is interrupted, so the job does not run
    # twice at once, and a follower sees each event once, in order, then done.
    edge = stack.start_edge()
    worker = stack.start_worker("render", queue=stack.queue["render"], url=proxy.url)
    r = requests.post(edge.base + "/v1/jobs/render?steps=8&delay_ms=250", data="{}",
                      headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_until_running(edge, job_id, 25)
    assert proxy.cut() == 1
    stream = requests.get(edge.base + f"/v1/jobs/{job_id}/events", stream=True, timeout=30)
    events = list(sseclient.SSEClient(stream).events())
    assert [e.id for e in events] == [str(i) for i in range(1, 11)], [(e.id, e.event) for e in events]
    assert events[-1].event == "done"
    log = open(worker.log_path).read()
    assert log.count("worker.job.interrupted") == 1 and log.count("amqp.connected") == 2, log[-3000:]
    status = requests.get(edge.base + f"/v1/jobs/{job_id}").json()
    assert status["status"] == "succeeded", status
    # Had the first run gone on, it would have published a done event of its own by now.
    time.sleep(2.5)
    assert published_events(stack, job_id).count("done") == 1


def published_events(stack, job_id):
    """The kinds of the job's events on gangway.events.log, in order, duplicates included."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    kinds = []
    deadline = time.monotonic() + 10
    for method, _, _ in channel.consume("gangway.events.log", arguments={"x-stream-offset": "first"}, inactivity_timeout=1):
        if method is None or time.monotonic() > deadline:
            break
        if method.routing_key.startswith(f"job.{job_id}."):
            kinds.append(method.routing_key.split(".")[2])
        channel.basic_ack(method.delivery_tag)
    connection.close()
    return kinds


def test_a_stream_whose_worker_s_connection_is_reset_ends_with_an_error_the_client_sees(stack, proxy):
    # The parts sent cannot be taken back, and the redelivered request starts the stream over:
    # the client gets the parts in order, then an error line, never a silent cut or a hang.
    edge = stack.start_edge()
    stack.start_worker("count", url=proxy.url)
    threading.Timer(0.6, proxy.cut).start()
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/count?n=30&delay_ms=50", headers={"accept": "application/x-ndjson"},
                      stream=True, timeout=30)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.iter_lines() if line]
    assert time.monotonic() - start < 5
    parts, last = lines[:-1], lines[-1]
    assert 0 < len(parts) < 30 and [p["n"] for p in parts] == list(range(len(parts))), lines
    assert last["error"]["status"] in (502, 504), last


def test_a_job_submitted_during_a_partition_is_refused_in_seconds_and_its_key_works_after(stack, proxy):
    # 202 means the broker has the job: with the broker out of reach the edge cannot know that,
    # so it answers 503 once heartbeats find the partition, and never hangs. Once healed, the
    # same Idempotency-Key makes one job.
    edge = stack.start_edge(url=proxy.url + "?heartbeat=1")
    stack.start_worker("render", queue=stack.queue["render"])
    headers = {"content-type": "application/json", "idempotency-key": f"partitioned-{stack.suffix}"}
    url = edge.base + "/v1/jobs/render?steps=2&delay_ms=50"
    proxy.partition()
    try:
        start = time.monotonic()
        r = requests.post(url, data="{}", headers=headers, timeout=30)
        assert r.status_code == 503, r.text
        assert time.monotonic() - start < 6
    finally:
        proxy.heal()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = requests.post(url, data="{}", headers=headers, timeout=30)
        if r.status_code == 202:
            break
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert requests.post(url, data="{}", headers=headers).json()["id"] == job_id
    stream = requests.get(edge.base + f"/v1/jobs/{job_id}/events", stream=True, timeout=30)
    assert list(sseclient.SSEClient(stream).events())[-1].event == "done"


def test_job_submissions_cut_by_resets_are_each_answered_at_once_and_no_key_makes_two_jobs(stack, proxy):
    # Jobs with Idempotency-Keys flow while the edge's connections are reset, twice. Each
    # submission is answered within seconds: 202, or 503 once its connection is gone (never
    # left waiting, even when the publish was still queued to be written). Retried afterwards,
    # a key never makes a second job: a claim is given back only when its job certainly did
    # not reach the broker, and a job that may have is named in the 503, and a retry answers
    # with it once it runs (its worker's events carry the key).
    edge = stack.start_edge(url=proxy.url)
    stack.start_worker("render", queue=stack.queue["render"])
    url = edge.base + "/v1/jobs/render?steps=1&delay_ms=0"

    def headers(n):
        return {"content-type": "application/json", "idempotency-key": f"burst-{stack.suffix}-{n}"}

    with PostLoad(edge, threads=16, path="/v1/jobs/render?steps=1&delay_ms=0", data="{}", headers=headers) as load:
        time.sleep(1.0)
        assert proxy.cut() >= 2
        time.sleep(0.3)
        proxy.cut()
        cut_at = time.monotonic()
        deadline = cut_at + 15
        while not any(s == 202 and start > cut_at + 0.5 for s, start, *_ in list(load.outcomes)):
            assert time.monotonic() < deadline, open(edge.log_path).read()[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)
    outcomes = load.outcomes
    errors = [s for s, *_ in outcomes if not isinstance(s, int)]
    assert not errors, errors[:5]
    statuses = [s for s, *_ in outcomes]
    assert set(statuses) <= {202, 503}, sorted(set(statuses))
    assert max(elapsed for _, _, elapsed, _ in outcomes) < 5
    assert statuses.count(202) > 20 and statuses.count(503) >= 1, (statuses.count(202), statuses.count(503))

    accepted = {r.request.headers["idempotency-key"]: r.json()["id"] for s, _, _, r in outcomes if s == 202}
    refused = {r.request.headers["idempotency-key"]: r.json()["detail"] for s, _, _, r in outcomes if s == 503}
    with requests.Session() as session:
        for key, job_id in accepted.items():
            again = session.post(url, data="{}", headers={"content-type": "application/json", "idempotency-key": key})
            assert again.status_code == 202 and again.json()["id"] == job_id, (key, again.text)
        for key, detail in refused.items():
            named = re.search(r"runs as job ([0-9a-f]+)", detail)
            deadline = time.monotonic() + 15
            while True:
                again = session.post(url, data="{}", headers={"content-type": "application/json", "idempotency-key": key})
                if again.status_code in (202, 409) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            # 409: the key's claim may be at the broker with no job behind it (see the README).
            assert again.status_code in (202, 409), (key, detail, again.text)
            if again.status_code == 202 and named:
                assert again.json()["id"] == named.group(1), (key, detail, again.text)
    time.sleep(2)
    jobs_by_key = {}
    for key, job_id in job_keys_in_event_log(stack, f"job-render burst-{stack.suffix}-"):
        jobs_by_key.setdefault(key, set()).add(job_id)
    assert len(jobs_by_key) >= len(accepted)
    assert all(len(ids) == 1 for ids in jobs_by_key.values()), {k: v for k, v in jobs_by_key.items() if len(v) > 1}


def job_keys_in_event_log(stack, prefix):
    """(Idempotency-Key, job id) of every event on gangway.events.log whose key starts with
    `prefix`: the edge's queued notices and the worker's events alike."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1000)
    found = []
    for method, properties, _ in channel.consume("gangway.events.log", arguments={"x-stream-offset": "first"}, inactivity_timeout=1):
        if method is None:
            break
        key = (properties.headers or {}).get("x-idempotency-key")
        if isinstance(key, bytes):
            key = key.decode()
        if key and key.startswith(prefix):
            found.append((key, method.routing_key.split(".")[1]))
        channel.basic_ack(method.delivery_tag)
    connection.close()
    return found

