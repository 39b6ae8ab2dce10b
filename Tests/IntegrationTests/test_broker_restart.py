"""The broker goes away while requests flow: nothing hangs, and the edge comes back by itself."""
import concurrent.futures
import threading
import time

import pytest
import requests

from harness import Broker, Stack


@pytest.fixture
def own_broker():
    b = Broker().start()
    yield b
    b.stop()


def test_broker_restart_fails_requests_cleanly_and_recovers(own_broker, tmp_path):
    stack = Stack(own_broker, tmp_path)
    try:
        edge = stack.start_edge()
        stack.start_worker("echo")
        stop = threading.Event()
        outcomes = []

        def load():
            s = requests.Session()
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = s.post(edge.base + "/v1/echo", data="ping", timeout=10)
                    outcomes.append((r.status_code, time.monotonic() - start))
                except requests.RequestException as e:
                    outcomes.append((repr(e), time.monotonic() - start))
                time.sleep(0.01)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(8):
                pool.submit(load)
            time.sleep(1.0)
            own_broker.stop_app()
            time.sleep(2.0)
            during = requests.get(edge.base + "/readyz")
            own_broker.start_app()
            restarted = time.monotonic()
            recovered_at = None
            while time.monotonic() - restarted < 15:
                try:
                    r = requests.post(edge.base + "/v1/echo", data="back?", timeout=5)
                    if r.status_code == 200 and r.text == "back?":
                        recovered_at = time.monotonic()
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            time.sleep(0.5)
            stop.set()

        assert during.status_code == 503, "edge must report not-ready while the broker is down"
        assert recovered_at is not None, "edge did not serve again after the broker came back"
        assert recovered_at - restarted < 10, recovered_at - restarted
        statuses = [s for s, _ in outcomes]
        assert 200 in statuses
        # Every request ended with an answer: 200, or a clean 503/504, and none outlived its deadline.
        bad = [(s, d) for s, d in outcomes if s not in (200, 503, 504)]
        assert not bad, bad[:5]
        assert max(d for _, d in outcomes) < 3.0 + 0.5
        assert any(s in (503, 504) for s in statuses), "requests during the outage must fail cleanly"
        assert requests.get(edge.base + "/readyz").status_code == 200
    finally:
        stack.stop()
