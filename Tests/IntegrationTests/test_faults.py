"""Network faults between gangway and the broker, injected by the project's own TCP proxy
(faultproxy.py): connections reset mid-stream, a partition that heals, a stream cut into
pieces of a few bytes. The broker itself stays up throughout."""
import concurrent.futures
import os
import threading
import time

import pytest
import requests

from faultproxy import FaultProxy


@pytest.fixture
def proxy(broker):
    p = FaultProxy(broker.port).start()
    yield p
    p.close()


def serves_again(edge, within):
    """Seconds until the edge answers a request with its worker's reply, or None."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        try:
            r = requests.post(edge.base + "/v1/echo", data="back?", timeout=5)
            if r.status_code == 200 and r.text == "back?":
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return None


def test_frames_cut_into_pieces_of_a_few_bytes_arrive_whole(stack, proxy):
    # Every AMQP frame between the edge, the worker and the broker arrives in pieces of 1 to 7
    # bytes: methods, headers and bodies are reassembled on both sides.
    proxy.pieces = 7
    edge = stack.start_edge(url=proxy.url)
    stack.start_worker("echo", url=proxy.url)
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
    stop = threading.Event()
    outcomes = []

    def load():
        s = requests.Session()
        while not stop.is_set():
            start = time.monotonic()
            try:
                r = s.post(edge.base + "/v1/echo", data="ping", timeout=10)
                outcomes.append((r.status_code, start, time.monotonic() - start))
            except requests.RequestException as e:
                outcomes.append((repr(e), start, time.monotonic() - start))
            time.sleep(0.01)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(8):
            pool.submit(load)
        time.sleep(1.0)
        assert proxy.cut() >= 2, "the edge's publishing and consuming connections pass the proxy"
        # And again while it recovers.
        time.sleep(0.3)
        proxy.cut()
        recovered = serves_again(edge, within=15)
        recovered_at = time.monotonic()
        time.sleep(1.0)
        stop.set()

    assert recovered is not None, open(edge.log_path).read()[-3000:]
    assert recovered < 10, f"the edge served again only after {recovered:.1f} s"
    statuses = [status for status, _, _ in outcomes]
    assert statuses.count(200) > 20
    # Each request was answered at once: its reply, or 503 when its message or its reply
    # could not travel. None waited for its deadline: the edge knows when a reply cannot come.
    assert set(statuses) <= {200, 503}, [s for s in statuses if s not in (200, 503)]
    assert max(elapsed for _, _, elapsed in outcomes) < 1, "no request waits while the edge recovers"
    after = [status for status, start, _ in outcomes if start > recovered_at]
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
