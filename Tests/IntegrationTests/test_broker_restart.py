"""The broker goes away while requests flow: nothing hangs, and the edge comes back by itself."""
import time

import requests

from harness import PostLoad, Stack, serves_again


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


def test_a_resource_alarm_gets_503s_at_once_and_nothing_waits_past_its_deadline(own_broker, tmp_path):
    # A broker low on memory blocks the connections that publish. The edge asks to be told
    # (connection.blocked): from then on what it would publish fails at once with 503, and a
    # message sent just before the notice (the broker holds it unread until the alarm clears)
    # waits no longer than its deadline, or its confirm timeout. Then the edge serves again.
    stack = Stack(own_broker, tmp_path)
    try:
        edge = stack.start_edge()
        stack.start_worker("echo")
        stack.start_worker("render", queue=stack.queue["render"])
        json_headers = {"content-type": "application/json"}
        job_url = edge.base + "/v1/jobs/render?steps=1&delay_ms=0"
        assert requests.post(edge.base + "/v1/echo", data="before").status_code == 200
        assert requests.post(job_url, data="{}", headers=json_headers).status_code == 202
        # Each connection names itself to the broker, and asks for connection.blocked.
        listed = own_broker.ctl("list_connections", "client_properties").stdout
        assert "edge.publish" in listed and "edge.consume" in listed, listed
        assert "connection.blocked" in listed, listed
        own_broker.ctl("set_vm_memory_high_watermark", "0.000001")
        try:
            start = time.monotonic()
            first = requests.post(edge.base + "/v1/echo", data="held?", timeout=15)
            assert first.status_code in (503, 504), first.text
            assert time.monotonic() - start < 3.0 + 0.5
            deadline = time.monotonic() + 10
            while "amqp.blocked" not in open(edge.log_path).read():
                assert time.monotonic() < deadline, open(edge.log_path).read()[-2000:]
                time.sleep(0.1)
            for method, url, data in [("post", edge.base + "/v1/echo", "x"),
                                      ("post", job_url, "{}"),
                                      ("post", edge.base + f"/v1/topics/alarm.{stack.suffix}", "{}")]:
                start = time.monotonic()
                r = requests.request(method, url, data=data, headers=json_headers, timeout=15)
                assert r.status_code == 503, (url, r.text)
                assert "blocking publishers" in r.json()["detail"], r.text
                assert time.monotonic() - start < 0.5, (url, time.monotonic() - start)
        finally:
            own_broker.ctl("set_vm_memory_high_watermark", "0.4")
        assert serves_again(edge, within=15) is not None
        assert requests.post(job_url, data="{}", headers=json_headers).status_code == 202
        log = open(edge.log_path).read()
        assert "reason=low on memory" in log and "amqp.unblocked" in log, log[-2000:]
    finally:
        stack.stop()
