"""Aggregation through the real broker: legs in parallel, failure policies, chained legs."""
import json
import time

import requests


def test_all_policy_merges_json_as_json_and_text_as_a_string(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    stack.start_worker("time")
    r = requests.post(edge.base + "/v1/agg", data='{"a": [1, 2]}', headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["echo"] == {"a": [1, 2]}
    assert "epoch_ms" in body["time"]
    assert r.headers["echo-x-echo-method"] == "POST"
    # The JSON leg body is embedded byte for byte, not re-encoded.
    assert '"echo":{"a": [1, 2]}' in r.text
    r = requests.post(edge.base + "/v1/agg", data="plain text\n", headers={"content-type": "text/plain"})
    assert r.json()["echo"] == "plain text\n"


def test_all_policy_fails_with_502_naming_the_leg_without_consumers_at_once(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/agg", data="x")
    elapsed = time.monotonic() - start
    assert r.status_code == 502, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert "time (503" in detail and "echo" not in detail.split("failed:")[1]
    assert elapsed < 0.5, elapsed


def test_partial_policy_answers_with_errors_for_a_slow_leg_and_a_leg_without_consumers(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    stack.start_worker("echo", queue=stack.queue["slow"], extra=["--delay-ms", "1500"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/agg-partial", data='{"ok": true}', headers={"content-type": "application/json"})
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert r.headers["x-gangway-partial"] == "true"
    body = r.json()
    assert body["echo"] == {"ok": True}
    assert body["errors"]["slow"]["status"] == 504
    assert body["errors"]["nobody"]["status"] == 503
    assert "slow" not in body and "nobody" not in body
    assert 0.45 < elapsed < 1.2, elapsed


def test_a_leg_declared_json_with_an_invalid_body_is_a_failed_leg(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    stack.start_worker("time")
    r = requests.post(edge.base + "/v1/agg", data="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 502
    assert "echo (declared JSON but the body is not valid JSON)" in r.json()["detail"]


def test_a_chained_leg_takes_a_value_from_the_earlier_reply(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    stack.start_pika_worker(stack.queue["pika"])
    r = requests.post(edge.base + "/v1/agg-chain", data=json.dumps({"id": "abc-9"}), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["second-x-seen-params"] == "id=abc-9"
    body = r.json()
    assert body["first"] == {"id": "abc-9"}
    # The second leg got no body (body: none), and a pika echo of nothing is an empty string.
    assert body["second"] == ""
    # The third leg's body was made from the template with the value from the first.
    assert body["third"] == {"about": "abc-9", "kind": "chained"}
    # A value that would change a routing key is refused for that leg.
    r = requests.post(edge.base + "/v1/agg-chain", data=json.dumps({"id": "a.b"}), headers={"content-type": "application/json"})
    assert r.status_code == 502
    assert "cannot go into a routing key" in r.json()["detail"]
