"""Scatter-gather through a topic exchange: expect N, a deadline with a replier down, first k."""
import time

import requests


def start_repliers(stack, names, delays=None):
    for i, name in enumerate(names):
        extra = ["--replier-id", name]
        if delays and delays[i]:
            extra += ["--delay-ms", str(delays[i])]
        stack.start_worker("echo", queue=stack.queue[f"g{i + 1}"], extra=extra)


def test_three_repliers_with_expect_three(stack):
    edge = stack.start_edge()
    start_repliers(stack, ["alpha", "beta", "gamma"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/gather", data='{"q": 1}', headers={"content-type": "application/json"})
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expected"] == 3 and body["received"] == 3 and body["complete"] is True
    assert sorted(x["replier"] for x in body["replies"]) == ["alpha", "beta", "gamma"]
    assert all(x["body"] == {"q": 1} and x["status"] == 200 for x in body["replies"])
    assert elapsed < 1.0, elapsed  # did not wait for the deadline


def test_two_of_three_alive_answer_at_the_deadline(stack):
    edge = stack.start_edge()
    start_repliers(stack, ["alpha", "beta"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/gather", data="hi", headers={"content-type": "text/plain"})
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expected"] == 3 and body["received"] == 2 and body["complete"] is False
    assert sorted(x["replier"] for x in body["replies"]) == ["alpha", "beta"]
    assert all(x["body"] == "hi" for x in body["replies"])
    assert 1.4 < elapsed < 2.2, elapsed


def test_first_one_answers_with_the_fastest(stack):
    edge = stack.start_edge()
    start_repliers(stack, ["slow", "fast", "slower"], delays=[800, 0, 1000])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/gather-first", data="x")
    elapsed = time.monotonic() - start
    body = r.json()
    assert body["received"] == 1 and body["complete"] is True
    assert body["replies"][0]["replier"] == "fast"
    assert elapsed < 0.6, elapsed


def test_nobody_answering_is_a_504(stack):
    edge = stack.start_edge()
    r = requests.post(edge.base + "/v1/gather", data="x")
    assert r.status_code == 504
    assert r.headers["content-type"] == "application/problem+json"


def test_a_gather_holds_its_replies_within_the_reply_limit(stack):
    # One replier answering 40 times with 100 KB each: 4 MB in all, over the edge's 1 MB.
    edge = stack.start_edge(extra=["--max-reply-bytes", "1000000"])
    stack.start_pika_worker(stack.queue["pika"], mode="gather-flood")
    r = requests.post(edge.base + "/v1/pika-gather", data="x", headers={"x-demo": "100000"})
    assert r.status_code == 502, r.text[:300]
    assert r.json()["type"].endswith("/reply-too-large")
    assert "the replies gathered for route 'pika-gather' passed 1000000 bytes in all" in r.json()["detail"]
    # Within the limit, all 40 replies are listed.
    r = requests.post(edge.base + "/v1/pika-gather", data="x", headers={"x-demo": "1000"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["received"] == 40 and len(r.json()["replies"]) == 40
