"""The broker goes away while requests flow: nothing hangs, and the edge comes back by itself."""
import time

import pytest
import requests

from harness import Broker, PostLoad, Stack, serves_again


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
        with PostLoad(edge) as load:
            time.sleep(1.0)
            own_broker.stop_app()
            time.sleep(2.0)
            during = requests.get(edge.base + "/readyz")
            own_broker.start_app()
            recovered = serves_again(edge, within=15)
            time.sleep(0.5)
        outcomes = [(status, elapsed) for status, _, elapsed, _ in load.outcomes]

        assert during.status_code == 503, "edge must report not-ready while the broker is down"
        assert recovered is not None, "edge did not serve again after the broker came back"
        assert recovered < 10, recovered
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
