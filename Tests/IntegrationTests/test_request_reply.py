"""Request/reply through a real RabbitMQ with the real edge binary and workers."""
import concurrent.futures
import http.client
import json
import os
import re
import resource
import signal
import socket
import threading
import time

import pytest
import requests


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    return body


@pytest.mark.parametrize("handler_start", ["immediate", "task"])
def test_round_trip_keeps_body_bytes_and_headers(stack, handler_start):
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--handler-start", handler_start])
    r = requests.post(edge.base + "/v1/echo?x=1", data="hello gangway",
                      headers={"content-type": "text/plain; charset=utf-8", "x-request-id": "req-123", "x-demo": "yes"})
    assert r.status_code == 200
    assert r.text == "hello gangway"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["x-request-id"] == "req-123"
    assert r.headers["x-request-id-seen"] == "req-123"
    assert r.headers["x-echo-method"] == "POST"
    assert r.headers["x-traceparent-seen"].startswith("00-")


def test_one_mebibyte_and_binary_bodies_arrive_intact(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    big = os.urandom(1 << 20)
    r = requests.post(edge.base + "/v1/echo", data=big, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == big
    binary = bytes(range(256)) * 3 + b"\x00\r\n\x00"
    r = requests.post(edge.base + "/v1/echo", data=binary, headers={"content-type": "application/x-binary"})
    assert r.content == binary
    assert r.headers["content-type"] == "application/x-binary"


def test_generated_request_id_is_echoed_and_forwarded(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    r = requests.post(edge.base + "/v1/echo", data="x")
    rid = r.headers["x-request-id"]
    assert len(rid) == 32
    assert r.headers["x-request-id-seen"] == rid


def test_path_parameters_and_contract_headers_reach_a_pika_worker(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"])
    r = requests.get(edge.base + "/v1/echo/42?q=a%20b", headers={"x-demo": "d", "x-request-id": "rid-9"})
    assert r.status_code == 200, r.text
    assert r.headers["x-worker"] == "python-pika"
    assert r.headers["x-seen-method"] == "GET"
    assert r.headers["x-seen-path"] == "/v1/echo/42"
    assert r.headers["x-seen-query"] == "q=a%20b"
    assert r.headers["x-seen-route"] == "echo-get"
    assert r.headers["x-seen-demo"] == "d"
    assert r.headers["x-seen-request-id"] == "rid-9"
    assert r.headers["x-seen-expiration"] == "3000"
    assert r.headers["x-seen-app-id"] == "gangway"


def test_unknown_path_is_404_and_wrong_method_is_405(stack):
    edge = stack.start_edge()
    problem(requests.get(edge.base + "/v1/nothing"), 404)
    r = requests.delete(edge.base + "/v1/echo")
    problem(r, 405)
    assert r.headers["allow"] == "POST"


def raw_exchange(edge, data):
    """Sends raw bytes to the edge and reads until it closes the connection (10 s at most)."""
    host, port = edge.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode("latin-1")


def test_requests_that_do_not_parse_get_a_problem_and_a_closed_connection(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    # Header fields past the decoder's limit: 431, through a real client.
    r = requests.get(edge.base + "/v1/nothing", headers={"x-big": "k" * 100_000})
    body = problem(r, 431)
    assert "81920 bytes" in body["detail"] and r.headers["connection"] == "close"
    # Not HTTP at all: 400, and the edge closes the connection after it (the read ends).
    answer = raw_exchange(edge, b"GE T /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400 Bad Request\r\n"), answer
    assert "application/problem+json" in answer and "not valid HTTP/1.1" in answer, answer
    # Pipelined behind a good request: the good one is answered first, then the problem.
    answer = raw_exchange(edge, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                                b"GET /v1/echo HTTP/1.1\r\nHo st: x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 200 OK\r\n"), answer
    assert answer.index("first") < answer.index("HTTP/1.1 400 Bad Request"), answer
    # A malformed chunk inside a body: the route's handler answers 400 with a problem.
    answer = raw_exchange(edge, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400 Bad Request\r\n") and "not valid HTTP/1.1" in answer, answer
    # A transfer coding the edge cannot undo (gzip under chunked): 501, not its compressed bytes
    # passed on as the body.
    answer = raw_exchange(edge, b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert answer.startswith("HTTP/1.1 501 Not Implemented\r\n"), answer
    assert "application/problem+json" in answer and "transfer coding 'gzip, chunked' is not supported" in answer, answer
    assert "hello" not in answer, answer
    # The edge still serves.
    assert requests.post(edge.base + "/v1/echo", data="ok").text == "ok"


def test_header_values_that_are_not_utf8_are_refused_not_forwarded_altered(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"])
    # UTF-8 beyond ASCII reaches the worker byte for byte.
    r = requests.get(edge.base + "/v1/echo/1", headers={"x-demo": "café ✓".encode()})
    assert r.status_code == 200, r.text
    assert r.headers["x-seen-demo"].encode("latin-1") == "café ✓".encode()
    # An ISO-8859-1 byte (RFC 9110's obs-text) would reach it as U+FFFD: a 400 naming the field.
    answer = raw_exchange(edge, b"GET /v1/echo/2 HTTP/1.1\r\nHost: x\r\nX-Demo: caf\xe9\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400 Bad Request\r\n"), answer
    assert "application/problem+json" in answer and "header field 'X-Demo' is not UTF-8 text" in answer, answer
    assert "x-seen-demo" not in answer, answer
    # Two job idempotency keys that differ only there would otherwise name one job.
    stack.start_worker("render")
    answer = raw_exchange(edge, b"POST /v1/jobs/render HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\xe9\r\nContent-Length: 2\r\n\r\n{}")
    assert answer.startswith("HTTP/1.1 400 Bad Request\r\n") and "'Idempotency-Key'" in answer, answer
    r = requests.post(edge.base + "/v1/jobs/render", json={}, headers={"idempotency-key": "ké".encode()})
    assert r.status_code == 202, r.text
    again = requests.post(edge.base + "/v1/jobs/render", json={}, headers={"idempotency-key": "ké".encode()})
    assert again.json()["id"] == r.json()["id"]
    other = requests.post(edge.base + "/v1/jobs/render", json={}, headers={"idempotency-key": "kè".encode()})
    assert other.json()["id"] != r.json()["id"]


def test_pipelined_requests_of_every_kind_are_answered_in_order_on_one_connection(stack):
    # Request/reply routes are served in the connection's pipeline, the rest by Hummingbird:
    # one client pipelining both kinds still gets every answer, in order.
    edge = stack.start_edge()
    stack.start_worker("echo")

    def post(body, request_id, extra=b""):
        return (b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nX-Request-ID: " + request_id
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)

    answer = raw_exchange(edge, post(b"first", b"r1")
                          + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r2\r\n\r\n"
                          + post(b"third", b"r3")
                          + b"GET /v1/time HTTP/1.1\r\nHost: x\r\nX-Request-ID: r4\r\n\r\n"
                          + post(b"x" * (2 * 1024 * 1024 + 1), b"r5")
                          + b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r6\r\n\r\n"
                          + b"HEAD /v1/time HTTP/1.1\r\nHost: x\r\nX-Request-ID: r7\r\n\r\n"
                          + post(b"last", b"r8", b"Connection: close\r\n"))
    responses = ["HTTP/1.1 " + part for part in answer.split("HTTP/1.1 ")[1:]]
    statuses = [int(r.split(" ", 2)[1]) for r in responses]
    assert statuses == [200, 200, 200, 503, 413, 200, 503, 200], answer[:2000]
    for i, response in enumerate(responses):
        assert f"x-request-id: r{i + 1}\r\n" in response.lower(), response
    assert responses[0].endswith("\r\n\r\nfirst") and responses[2].endswith("\r\n\r\nthird")
    assert '"status":"ok"' in responses[1] and '"status":"ready"' in responses[5]
    assert "no consumers" in responses[3] and "2097152" in responses[4]
    # HEAD: the length of the problem a GET would get, without it.
    assert responses[6].endswith("\r\n\r\n") and "content-length: " in responses[6].lower(), responses[6]
    # The last one asked to close: raw_exchange returned, so the edge closed the connection.
    assert responses[7].endswith("\r\n\r\nlast")


def test_a_client_that_half_closes_after_its_request_still_gets_the_reply(stack):
    # The client sends its request and shuts its side down (as `nc -N` does), while the worker
    # takes 300 ms: the edge keeps reading while it waits for the reply, sees the end of input
    # then, and still answers before it closes the connection.
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--delay-ms", "300"])
    host, port = edge.base.removeprefix("http://").split(":")
    for sent in (b"hello", bytes(range(256)) * 4096):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                      + b"Content-Length: " + str(len(sent)).encode() + b"\r\n\r\n" + sent)
            s.shutdown(socket.SHUT_WR)
            start = time.monotonic()
            head, body = read_response(s)
            assert time.monotonic() - start >= 0.25, "answered before the worker did"
            assert head.startswith("HTTP/1.1 200 OK\r\n") and body == sent, head
            assert s.recv(1) == b"", "the connection closes after the response"


def read_response(s):
    """Reads one response with a Content-Length from an open socket: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    head = head.decode("latin-1")
    length = int(re.search(r"(?im)^content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"closed inside the body: {head}"
        body += chunk
    assert len(body) == length, (head, body)
    return head, body


def test_http_1_0_clients_get_http_1_0_responses_and_connections(stack):
    # Without keep-alive, an HTTP/1.0 connection closes after its response; with it, the
    # response says so and the connection stays; a response without a length is not chunked
    # and ends with the connection. Alike for request/reply routes (served in the pipeline),
    # the edge's own endpoints and unknown paths (Hummingbird) and streamed replies.
    edge = stack.start_edge()
    stack.start_worker("echo")
    stack.start_worker("count", queue=stack.queue["count"])
    host, port = edge.base.removeprefix("http://").split(":")
    for request, status in [(b"POST /v1/echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", 200),
                            (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
                            (b"GET /v1/nothing HTTP/1.0\r\n\r\n", 404),
                            # HTTP/1.0 knows no 100-continue: no interim response.
                            (b"POST /v1/echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", 200)]:
        answer = raw_exchange(edge, request)  # returns only once the edge closes
        assert answer.startswith(f"HTTP/1.0 {status} "), answer
        assert answer.lower().count("connection: close\r\n") == 1, answer
        assert "100 Continue" not in answer and (status != 200 or "hello" in answer or "ok" in answer), answer

    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc")
        head, body = read_response(s)
        assert head.startswith("HTTP/1.0 200 ") and "connection: keep-alive" in head.lower() and body == b"abc", head
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        head, body = read_response(s)
        assert head.startswith("HTTP/1.0 200 ") and "connection: keep-alive" in head.lower() and b'"status"' in body, head
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        head, body = read_response(s)
        assert "connection: close" in head.lower(), head
        assert s.recv(65536) == b""  # and closed

    # A streamed reply has no length: plain bytes, then the close ends it, keep-alive or not.
    answer = raw_exchange(edge, b"POST /v1/count?n=50&delay_ms=0 HTTP/1.0\r\nConnection: keep-alive\r\n"
                                b"Content-Length: 0\r\n\r\n")
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.0 200 ") and "connection: close" in head.lower(), head
    assert "transfer-encoding" not in head.lower(), head
    assert body.startswith('{"n":0,'), body[:200]
    assert [int(m) for m in re.findall(r'\{"n":(\d+),', body)] == list(range(50))

    # HTTP/1.1 without a Host: 400, as RFC 9112 asks (HTTP/1.0 above needs none).
    answer = raw_exchange(edge, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400 ") and "must carry a Host header field" in answer, answer

    # HTTP/1.1 with close among other Connection tokens closes too, and says so.
    for path in [b"GET /healthz", b"POST /v1/echo"]:
        answer = raw_exchange(edge, path + b" HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\nContent-Length: 0\r\n\r\n")
        assert answer.startswith("HTTP/1.1 200 ") and "connection: close\r\n" in answer.lower(), answer


def test_expect_100_continue_is_answered_before_the_body(stack):
    # curl sends Expect: 100-continue for bodies over 1 MiB and waits a second for the answer.
    edge = stack.start_edge()
    stack.start_worker("echo")
    host, port = edge.base.removeprefix("http://").split(":")
    body = b"z" * (1536 * 1024)
    for path, status in [("/v1/echo", 200), ("/v1/topics/orders.created", 413)]:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            s.settimeout(0.5)  # well under curl's 1 s wait
            first = s.recv(65536).decode("latin-1")
            s.settimeout(10)
            # Also for the topic endpoint, served by Hummingbird, which then refuses the body
            # by its 1 MiB limit.
            assert first.startswith("HTTP/1.1 100 Continue\r\n\r\n"), first
            s.sendall(body)
            out = first.encode("latin-1")
            while chunk := s.recv(1 << 20):
                out += chunk
        final = out.decode("latin-1").split("\r\n\r\n", 1)[1]
        assert final.startswith(f"HTTP/1.1 {status} "), final[:200]
        assert final.endswith("z" * 100) if status == 200 else "1048576" in final, final[:400]
    # A body the route refuses by its Content-Length gets the 413 at once, not a 100.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 3000000\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):  # the edge closes: the body may never come
            out += chunk
        assert out.decode("latin-1").startswith("HTTP/1.1 413 "), out


def test_body_over_the_route_limit_is_413(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    body = problem(requests.post(edge.base + "/v1/echo", data=b"x" * (2 * 1024 * 1024 + 1)), 413)
    assert "2097152" in body["detail"]

    # Chunked, without a Content-Length: the limit holds while streaming.
    def chunks():
        for _ in range(300):
            yield b"y" * 8192

    problem(requests.post(edge.base + "/v1/echo", data=chunks()), 413)
    # The edge still serves afterwards.
    assert requests.post(edge.base + "/v1/echo", data="ok").text == "ok"


def test_no_consumer_is_503_in_under_100_ms(stack):
    edge = stack.start_edge()
    requests.get(edge.base + "/healthz")  # warm the connection pool
    for _ in range(3):
        start = time.monotonic()
        r = requests.get(edge.base + "/v1/time")
        elapsed = time.monotonic() - start
        body = problem(r, 503)
        assert "no consumers" in body["detail"]
        assert elapsed < 0.1, elapsed
        assert r.headers["retry-after"] == "1"


def test_a_worker_that_sleeps_past_the_deadline_gives_504_at_the_deadline(stack):
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--delay-ms", "3000"])
    start = time.monotonic()
    r = requests.post(edge.base + "/v1/slow", data="z")
    elapsed = time.monotonic() - start
    problem(r, 504)
    assert 0.75 <= elapsed < 1.3, elapsed


def test_malformed_replies_are_502(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"], mode="bad-status")
    body = problem(requests.post(edge.base + "/v1/echo", data="x"), 502)
    assert "x-status" in body["detail"]
    stack.stop()
    stack.procs.clear()
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"], mode="bad-header")
    r = requests.post(edge.base + "/v1/echo", data="x")
    problem(r, 502)
    assert "set-cookie" not in r.headers


def test_a_reply_larger_than_the_edge_takes_is_502_and_is_never_held(stack):
    edge = stack.start_edge(extra=["--max-reply-bytes", "65536"])
    stack.start_worker("echo")
    stack.start_worker("time")
    exact = os.urandom(65536)
    r = requests.post(edge.base + "/v1/echo", data=exact)
    assert r.status_code == 200 and r.content == exact
    # The echo worker answers with the body it got: one byte over the limit.
    body = problem(requests.post(edge.base + "/v1/echo", data=exact + b"!"), 502)
    assert body["type"].endswith("/reply-too-large")
    assert body["detail"] == ("the worker for route 'echo' sent a reply body of 65537 bytes, "
                              "more than this edge takes (65536 bytes, --max-reply-bytes)")
    # An aggregate's leg the same way, named among the failed legs.
    body = problem(requests.post(edge.base + "/v1/agg", data=exact + b"!!"), 502)
    assert "1 leg failed: echo (502 Bad Gateway: " in body["detail"], body
    assert "sent a reply body of 65538 bytes, more than this edge takes" in body["detail"], body
    # Nothing was dropped but those bodies: the reply connection stayed up. (That the edge
    # never holds such a body is shown with a 20 MB one in test_stream.py.)
    assert requests.post(edge.base + "/v1/echo", data="after").text == "after"
    r = requests.get(edge.base + "/healthz").json()
    assert r["pending_requests"] == 0
    # The flag is checked.
    bad = stack.start_edge(extra=["--max-reply-bytes", "0"], wait=False)
    assert bad.wait(timeout=10) != 0
    assert "--max-reply-bytes must be at least 1, got 0" in open(bad.log_path).read()


def test_a_status_without_content_is_sent_without_the_body_its_worker_sent(stack):
    """204, 205 and 304 carry no content: the body a worker sent with one is dropped, so the
    connection stays in step (written after the head, it would be read as the next response).
    A 1xx status is not an answer: 502."""
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"], mode="status")
    conn = http.client.HTTPConnection("127.0.0.1", int(edge.base.rsplit(":", 1)[1]), timeout=10)
    try:
        for status in (204, 304, 205, 200, 101, 100, 204):
            conn.request("POST", "/v1/echo", body=b"worker body", headers={"X-Demo": str(status)})
            r = conn.getresponse()
            body = r.read()
            if status < 200:
                assert r.status == 502, (status, r.status)
                assert f"x-status must be a final HTTP status 200...599, got '{status}'" in json.loads(body)["detail"]
                continue
            assert r.status == status
            assert r.getheader("x-worker") == "python-pika"
            assert body == (b"worker body" if status == 200 else b"")
            if status == 205:
                assert r.getheader("content-length") == "0"
            else:
                assert r.getheader("content-length") in (None, "11" if status == 200 else None)
        # Every response was read whole on the one connection: nothing was left over to be
        # taken for the next one's start.
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        conn.close()


def test_a_killed_worker_s_request_is_redelivered_and_answered(stack):
    edge = stack.start_edge()
    doomed = stack.start_worker("echo", extra=["--delay-ms", "5000"])
    result = {}

    def call():
        start = time.monotonic()
        r = requests.post(edge.base + "/v1/echo", data="survive me")
        result["response"] = r
        result["elapsed"] = time.monotonic() - start

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)  # the doomed worker holds the message unacked
    os.killpg(doomed.pid, signal.SIGKILL)
    stack.start_worker("echo")
    t.join(timeout=10)
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.text == "survive me"
    assert result["elapsed"] < 3.0


def test_a_thousand_concurrent_requests_get_their_own_replies(stack):
    edge = stack.start_edge()
    # One worker of each handler start mode, sharing the queue.
    stack.start_worker("echo", extra=["--handler-start", "immediate"])
    stack.start_worker("echo", extra=["--handler-start", "task"])
    n = 1000
    barrier = threading.Barrier(200)
    session_local = threading.local()

    def call(i):
        if not hasattr(session_local, "s"):
            session_local.s = requests.Session()
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
        body = f"request-{i}-{os.urandom(8).hex()}"
        r = session_local.s.post(edge.base + "/v1/echo", data=body, headers={"x-request-id": f"id-{i}"})
        return i, body, r.status_code, r.text, r.headers.get("x-request-id-seen")

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(call, range(n)))
    assert len(results) == n
    for i, body, status, text, seen in results:
        assert status == 200, (i, status, text)
        assert text == body
        assert seen == f"id-{i}"


@pytest.mark.parametrize("handler_start", ["immediate", "task"])
def test_handlers_that_wait_overlap_whatever_their_start_mode(stack, handler_start):
    # Twenty requests to a worker whose handler sleeps 1 s: an immediate handler gives the
    # connection's thread back at its first suspension, so they overlap as tasks' would.
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--handler-start", handler_start, "--delay-ms", "1000"])
    requests.post(edge.base + "/v1/echo", data="warm", timeout=10).raise_for_status()

    def call(i):
        return requests.post(edge.base + "/v1/echo", data=f"n{i}", timeout=10)

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(call, range(20)))
    elapsed = time.monotonic() - start
    assert [r.text for r in responses] == [f"n{i}" for i in range(20)]
    assert elapsed < 4, f"20 handlers sleeping 1 s took {elapsed:.1f} s: they ran one after the other"


def test_readiness_reflects_the_broker(stack):
    edge = stack.start_edge()
    health = requests.get(edge.base + "/healthz").json()
    # This request's connection, and the readiness check's if its close is not seen yet.
    assert health.pop("connections") in (1, 2)
    # Counted while the edge replays the broker's event log, which other tests wrote to.
    assert health.pop("job_event_gaps") >= 0
    # The job history so far replayed from it, within the default 256 MiB: nothing forgotten.
    assert health.pop("job_history_jobs") >= 0 and 0 <= health.pop("job_history_bytes") <= 256 << 20
    assert health.pop("jobs_forgotten_for_bytes") == 0
    # The edge raised its soft limit on open files to the hard one, and keeps a reserve.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    open_files = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    assert health == {"status": "ok", "pending_requests": 0, "unknown_replies": 0, "event_streams": 0,
                      "event_streams_cut_off": 0, "topic_subscribers": 0, "topic_bindings": 0,
                      "topic_history_events": 0, "topic_history_bytes": 0,
                      "connection_limit": open_files - min(256, open_files // 4), "connection_limit_reached": 0}
    assert requests.get(edge.base + "/readyz").status_code == 200


def test_duplicate_replies_are_counted_and_dropped(stack):
    edge = stack.start_edge()
    stack.start_pika_worker(stack.queue["echo"], mode="twice")
    r = requests.post(edge.base + "/v1/echo", data="once")
    assert r.status_code == 200 and r.text == "once"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        health = requests.get(edge.base + "/healthz").json()
        if health["unknown_replies"] >= 1:
            break
        time.sleep(0.05)
    assert health["unknown_replies"] == 1
    assert health["pending_requests"] == 0


def test_a_failing_handler_becomes_a_500_problem(stack):
    edge = stack.start_edge()
    stack.start_worker("echo")
    r = requests.post(edge.base + "/v1/echo", data="x", headers={"x-demo": "fail"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 500
    # The worker keeps serving.
    assert requests.post(edge.base + "/v1/echo", data="fine").text == "fine"


def test_a_worker_drops_a_request_whose_deadline_has_passed(stack):
    """Published straight to the queue with pika: an expired x-deadline gets acked, not answered."""
    import pika

    stack.start_edge()  # declares the topology
    stack.start_worker("echo")
    connection = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    channel = connection.channel()
    reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
    now_ms = int(time.time() * 1000)
    for cid, deadline in (("expired", now_ms - 1000), ("fresh", now_ms + 5000)):
        channel.basic_publish(
            exchange="gangway.rpc",
            routing_key=stack.queue["echo"],
            properties=pika.BasicProperties(correlation_id=cid, reply_to=reply_queue, headers={"x-deadline": deadline}),
            body=cid.encode(),
        )
    replies = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(replies) < 2:
        method, props, body = channel.basic_get(reply_queue, auto_ack=True)
        if method:
            replies.append((props.correlation_id, body))
        else:
            time.sleep(0.05)
    connection.close()
    assert replies == [("fresh", b"fresh")]
    # The expired one was acknowledged, not left in the queue or redelivered.
    assert stack.broker.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "--quiet", "--no-table-headers").stdout.count(f"{stack.queue['echo']}\t0\t0") == 1


def thread_policies(pid):
    """Each thread's name and Linux scheduling policy (0 normal, 3 batch), from /proc."""
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        policy = int(stat[stat.rindex(")") + 2:].split()[38])  # field 41, policy
        policies.setdefault(name, set()).add(policy)
    return policies


def test_edge_and_worker_run_their_busy_threads_as_batch_threads(stack):
    worker = stack.start_worker("echo")
    plain_worker = stack.start_worker("echo", extra=["--no-batch-scheduling"])
    edge = stack.start_edge()
    plain = stack.start_edge(extra=["--no-batch-scheduling"])
    assert requests.post(edge.base + "/v1/echo", data="ok").text == "ok"
    batch, normal = thread_policies(edge.pid), thread_policies(plain.pid)
    loops = [name for name in batch if name.startswith("NIO-SGLTN")]
    assert loops, batch
    for name in loops + ["edge.publish", "edge.consume"]:
        assert batch[name] == {3}, (name, batch)
        assert normal[name] == {0}, (name, normal)
    # A worker's connection thread (named after its queue) and no other.
    batch, normal = thread_policies(worker.pid), thread_policies(plain_worker.pid)
    batch_threads = [name for name, policies in batch.items() if 3 in policies]
    assert len(batch_threads) == 1 and batch_threads[0].startswith("echo."), batch
    assert all(policies == {0} for policies in normal.values()), normal


def wake_ups(pid):
    """How often a process's threads have woken from sleep so far (voluntary context switches)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def test_an_idle_edge_sleeps_and_still_times_out_the_next_request(stack):
    # The deadline sweeper runs every 5 ms while a request waits for its reply, and sleeps
    # while none does: an idle edge has no timer to serve. Its AMQP threads wake a few times a
    # second for heartbeats; sweeping through the idle time alone would be 600 wake-ups and more.
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--delay-ms", "1500"])
    problem(requests.post(edge.base + "/v1/slow", data="z"), 504)
    time.sleep(1)  # the worker's late reply comes and is dropped
    before = wake_ups(edge.pid)
    time.sleep(3)
    woke = wake_ups(edge.pid) - before
    assert woke < 150, woke
    # Asleep, it still times out the next request at its deadline (1 s on this route).
    start = time.monotonic()
    problem(requests.post(edge.base + "/v1/slow", data="z"), 504)
    assert 0.75 <= time.monotonic() - start < 1.3
