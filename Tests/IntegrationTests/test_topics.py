"""Topics: publish (202 after the confirm), SSE subscriptions filtered by the broker through
reference-counted bindings, resume with Last-Event-ID, and slow clients cut off."""
import json
import os
import selectors
import signal
import socket
import threading
import time

import pika
import requests
import sseclient


def publish(edge, topic, body, content_type="application/json", session=requests):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    r = session.post(f"{edge.base}/v1/topics/{topic}", data=data, headers={"content-type": content_type})
    assert r.status_code == 202, r.text
    return r.json()["id"]


class Subscriber:
    """An SSE subscription read by sseclient-py in a thread, until `until(event)` is true."""

    def __init__(self, edge, *patterns, headers=None, query="", until=None):
        params = "&".join(f"match={p}" for p in patterns) + query
        self.response = requests.get(f"{edge.base}/v1/topics/stream?{params}", headers=headers or {}, stream=True, timeout=30)
        assert self.response.status_code == 200, self.response.text
        self.events = []
        self.until = until or (lambda e: False)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in sseclient.SSEClient(self.response).events():
                self.events.append(event)
                if self.until(event):
                    break
        except Exception:  # the test closed the response
            pass
        self.response.close()

    def join(self, timeout=15):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"subscriber still waiting; got {[(e.id, e.data) for e in self.events]}"
        return self.events

    def close(self):
        self.response.close()


def topic_of(event):
    return json.loads(event.data)["topic"]


def edge_bindings(stack, edge_queue_prefix="gangway.topics."):
    out = stack.broker.ctl("list_bindings", "source_name", "destination_name", "routing_key",
                           "--quiet", "--no-table-headers").stdout
    return [line.split("\t") for line in out.splitlines()
            if line.startswith("gangway.topics\t") and line.split("\t")[1].startswith(edge_queue_prefix)]


def test_publish_is_202_after_the_confirm_and_a_subscription_gets_only_matching_events(stack):
    edge = stack.start_edge()
    t = f"t{stack.suffix}"
    sub = Subscriber(edge, f"{t}.orders.*", f"{t}.audit.%23", until=lambda e: topic_of(e) == f"{t}.audit.end")
    r = requests.post(f"{edge.base}/v1/topics/{t}.orders.created", data='{"order":1}', headers={"content-type": "application/json"})
    assert r.status_code == 202 and r.headers["content-type"] == "application/json"
    first_id = r.json()["id"]
    assert r.json()["topic"] == f"{t}.orders.created"
    published = [
        (f"{t}.orders.created.eu", {"order": 2}),    # * is one word: no
        (f"{t}.other", {"x": 1}),                    # no
        (f"{t}.audit.login.ok", "plain text"),       # # is any number of words: yes
        (f"{t}.orders.updated", {"order": 1, "v": 2}),  # yes
        (f"{t}.audit.end", {}),                      # yes, and the end
    ]
    ids = {}
    for topic, body in published:
        ids[topic] = publish(edge, topic, body, content_type="text/plain" if isinstance(body, str) else "application/json")
    events = sub.join()
    assert [topic_of(e) for e in events] == [f"{t}.orders.created", f"{t}.audit.login.ok", f"{t}.orders.updated", f"{t}.audit.end"]
    assert [e.id for e in events] == [first_id, ids[f"{t}.audit.login.ok"], ids[f"{t}.orders.updated"], ids[f"{t}.audit.end"]]
    assert json.loads(events[0].data)["data"] == {"order": 1}   # JSON embedded as JSON
    assert json.loads(events[1].data)["data"] == "plain text"   # anything else as a string
    assert sub.response.headers["content-type"] == "text/event-stream"
    assert sub.response.headers["cache-control"] == "no-cache"
    assert sub.response.headers["x-accel-buffering"] == "no"


def test_an_event_published_on_one_edge_reaches_a_subscriber_on_another(stack):
    a = stack.start_edge()
    b = stack.start_edge()
    t = f"t{stack.suffix}"
    sub = Subscriber(b, f"{t}.news", until=lambda e: True)
    event_id = publish(a, f"{t}.news", {"hello": "world"})
    [event] = sub.join()
    assert event.id == event_id and json.loads(event.data) == {"topic": f"{t}.news", "data": {"hello": "world"}}


def test_bad_topics_and_patterns_are_clear_400s(stack):
    edge = stack.start_edge()
    for topic in ["a..b", "a.*", "a%20b", "a.%23"]:
        r = requests.post(f"{edge.base}/v1/topics/{topic}", data="{}")
        assert r.status_code == 400, topic
        assert r.headers["content-type"] == "application/problem+json"
        assert "topic" in r.json()["detail"]
    r = requests.get(f"{edge.base}/v1/topics/stream")
    assert r.status_code == 400 and "match" in r.json()["detail"]
    assert r.headers["connection"] == "close"  # it opened the connection (a stream path)
    r = requests.get(f"{edge.base}/v1/topics/stream?match=a..b")
    assert r.status_code == 400 and "pattern" in r.json()["detail"]
    r = requests.put(f"{edge.base}/v1/topics/a.b", data="{}")
    assert r.status_code == 405
    r = requests.post(f"{edge.base}/v1/topics/a.b", data=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413


def test_the_edge_binds_once_per_pattern_and_unbinds_after_the_last_subscriber_leaves(stack):
    edge = stack.start_edge(extra=["--topic-linger", "0"])
    t = f"t{stack.suffix}"
    pattern = f"{t}.refs.*"
    port = int(edge.base.rsplit(":", 1)[1])
    subs = [open_stream(port, f"/v1/topics/stream?match={pattern}") for _ in range(3)]
    for s in subs:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    mine = [b for b in edge_bindings(stack) if b[2] == pattern]
    assert len(mine) == 1, mine
    subs[0].close()
    subs[1].close()
    time.sleep(2.5)  # longer than the sweep: the third subscriber still holds the binding
    assert len([b for b in edge_bindings(stack) if b[2] == pattern]) == 1
    end = Subscriber(edge, pattern, until=lambda e: True)
    publish(edge, f"{t}.refs.x", {"still": "bound"})
    assert json.loads(end.join()[0].data)["data"] == {"still": "bound"}
    subs[2].close()
    deadline = time.time() + 10
    while time.time() < deadline and [b for b in edge_bindings(stack) if b[2] == pattern]:
        time.sleep(0.2)
    assert not [b for b in edge_bindings(stack) if b[2] == pattern]
    assert requests.get(f"{edge.base}/healthz").json()["topic_subscribers"] == 0


def test_resume_with_last_event_id_gets_exactly_the_events_after_it(stack):
    edge = stack.start_edge()
    t = f"t{stack.suffix}"
    first = Subscriber(edge, f"{t}.feed", until=lambda e: json.loads(e.data)["data"]["n"] == 3)
    ids = [publish(edge, f"{t}.feed", {"n": n}) for n in range(1, 4)]
    assert [e.id for e in first.join()] == ids
    # Disconnected: two more go by while the client is away.
    ids += [publish(edge, f"{t}.feed", {"n": n}) for n in (4, 5)]
    done = lambda e: json.loads(e.data)["data"]["n"] == 6
    again = Subscriber(edge, f"{t}.feed", headers={"Last-Event-ID": ids[2]}, until=done)
    ids.append(publish(edge, f"{t}.feed", {"n": 6}))
    events = again.join()
    assert [e.id for e in events] == ids[3:]
    assert [json.loads(e.data)["data"]["n"] for e in events] == [4, 5, 6]
    # The query parameter works as the header does, for clients that cannot set headers.
    by_query = Subscriber(edge, f"{t}.feed", query=f"&lastEventId={ids[4]}", until=done)
    assert [e.id for e in by_query.join()] == ids[5:]
    # An id the edge does not know is an explicit reset, never a silent gap.
    unknown = Subscriber(edge, f"{t}.feed", headers={"Last-Event-ID": "no-such-id"}, until=lambda e: e.event == "reset")
    assert [e.event for e in unknown.join()] == ["reset"]


def test_heartbeat_comments_keep_an_idle_topic_stream_alive(stack):
    edge = stack.start_edge(extra=["--sse-heartbeat", "1"])
    with socket.create_connection(("127.0.0.1", int(edge.base.rsplit(":", 1)[1]))) as s:
        s.sendall(f"GET /v1/topics/stream?match=t{stack.suffix}.quiet HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.settimeout(5)
        seen = b""
        deadline = time.time() + 5
        while b": keep-alive" not in seen and time.time() < deadline:
            seen += s.recv(4096)
    assert b"retry: 2000" in seen and b": keep-alive" in seen


def read_streams(socks, stop, seen):
    """Reads many raw SSE connections on one thread, appending each one's event ids to seen[i]."""
    sel = selectors.DefaultSelector()
    state = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        seen[i] = []
        state[i] = [b"", seen[i]]
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            i = key.data
            try:
                chunk = key.fileobj.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = state[i][0] + chunk
            *events, buf = buf.split(b"\n\n")
            state[i][0] = buf
            for e in events:
                for line in e.split(b"\n"):
                    if line.startswith(b"id: "):
                        state[i][1].append(line[4:].decode())


def open_stream(port, path, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def test_a_client_that_never_reads_is_cut_off_at_the_buffer_bound_while_100_others_keep_up(stack):
    # The default bound (256 KiB), set explicitly: the edge's bytes for one client, queued or
    # handed to the connection and not yet taken by the kernel.
    edge = stack.start_edge(extra=["--sse-buffer-bytes", str(256 * 1024)])
    port = int(edge.base.rsplit(":", 1)[1])
    t = f"t{stack.suffix}"
    path = f"/v1/topics/stream?match={t}.bulk"
    slow = open_stream(port, path, rcvbuf=4096)
    fast = [open_stream(port, path) for _ in range(100)]
    deadline = time.time() + 10
    while requests.get(f"{edge.base}/healthz").json()["topic_subscribers"] < 101:
        assert time.time() < deadline
        time.sleep(0.05)
    stop = threading.Event()
    result = {}
    reader = threading.Thread(target=read_streams, args=(fast, stop, result), daemon=True)
    reader.start()

    session = requests.Session()
    payload = "x" * 4000
    ids = []
    cut_off = 0
    while cut_off == 0 and len(ids) < 6000:
        for _ in range(50):
            ids.append(publish(edge, f"{t}.bulk", payload, content_type="text/plain", session=session))
        cut_off = session.get(f"{edge.base}/healthz").json()["event_streams_cut_off"]
    assert cut_off == 1, f"not cut off after {len(ids)} events"
    ids.append(publish(edge, f"{t}.bulk", "last", content_type="text/plain", session=session))
    deadline = time.time() + 30
    while time.time() < deadline and not all(len(v) >= len(ids) for v in list(result.values())):
        time.sleep(0.1)
    stop.set()
    reader.join(10)
    assert len(result) == 100
    for i, seen in result.items():
        assert seen == ids, f"reader {i} got {len(seen)} of {len(ids)} events"
    # The slow client's connection was closed: what it can still read ends, well short of it all.
    # The slow client's connection was closed: what the kernel buffers still held for it ends
    # (EOF or reset) before the events published after the cut-off.
    slow.settimeout(10)
    received = b""
    while True:
        try:
            chunk = slow.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    slow_ids = [line[4:].decode() for line in received.split(b"\n") if line.startswith(b"id: ")]
    assert slow_ids == ids[:len(slow_ids)] and len(slow_ids) < len(ids) - 1
    health = session.get(f"{edge.base}/healthz").json()
    assert health["event_streams_cut_off"] == 1 and health["topic_subscribers"] == 100


def test_sigterm_ends_a_topic_stream_that_opened_its_connection_and_the_edge_exits_cleanly(stack):
    # Such a stream has no task for the server to wait on: graceful shutdown ends it all the
    # same, with the last chunk, and the edge exits 0.
    edge = stack.start_edge()
    port = int(edge.base.rsplit(":", 1)[1])
    t = f"t{stack.suffix}"
    sock = open_stream(port, f"/v1/topics/stream?match={t}.bye")
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    publish(edge, f"{t}.bye", {"n": 1})
    # The publisher's 202 comes with the broker's confirm; the event reaches this edge's
    # consumer about then, not before: wait for it, so that the stream is ended mid-way.
    data = b""
    while b'"data":{"n": 1}' not in data and (chunk := sock.recv(65536)):
        data += chunk
    os.killpg(edge.pid, signal.SIGTERM)
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert b'"data":{"n": 1}' in data and data.endswith(b"0\r\n\r\n"), data
    assert edge.wait(timeout=15) == 0


def test_an_http_1_0_client_gets_its_topic_stream_unchunked_each_event_as_it_comes(stack):
    # HTTP/1.0 has no chunks: the events go out as the plain body, through the HTTP handlers
    # rather than framed below them, and the body ends when the connection does.
    edge = stack.start_edge()
    port = int(edge.base.rsplit(":", 1)[1])
    t = f"t{stack.suffix}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /v1/topics/stream?match={t}.* HTTP/1.0\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = s.recv(65536)
            assert chunk, received
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200"), head
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower(), head
        ids = []
        for i in range(3):
            ids.append(publish(edge, f"{t}.n", {"n": i}))
            # Each event arrives before the next is published.
            while body.count(b"\n\n") < i + 2:  # the retry hint, then the events so far
                chunk = s.recv(65536)
                assert chunk, body
                body += chunk
    blocks = [b for b in body.decode().split("\n\n") if b]
    assert blocks[0].startswith("retry: "), blocks
    events = [dict(line.split(": ", 1) for line in b.split("\n")) for b in blocks[1:]]
    assert [e["id"] for e in events] == ids
    assert [json.loads(e["data"]) for e in events] == [{"topic": f"{t}.n", "data": {"n": i}} for i in range(3)]


def test_a_client_that_keeps_up_is_not_cut_off_for_one_event_larger_than_the_bound(stack):
    edge = stack.start_edge(extra=["--sse-buffer-bytes", "65536"])
    t = f"t{stack.suffix}"
    sub = Subscriber(edge, f"{t}.big", until=lambda e: json.loads(e.data)["data"] == "after")
    deadline = time.time() + 10
    while requests.get(f"{edge.base}/healthz").json()["topic_subscribers"] < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    big = "y" * 400_000  # six times the bound, with nothing else waiting for the client
    publish(edge, f"{t}.big", big, content_type="text/plain")
    publish(edge, f"{t}.big", "after", content_type="text/plain")
    sub.thread.join(20)
    assert [json.loads(e.data)["data"] for e in sub.events] == [big, "after"]
    assert requests.get(f"{edge.base}/healthz").json()["event_streams_cut_off"] == 0


def test_an_oversized_topic_event_is_refused_at_the_edge_and_passed_on_as_a_placeholder_from_the_broker(stack):
    edge = stack.start_edge(extra=("--max-event-bytes", "65536", "--topic-history-bytes", "200000"))
    t = f"t{stack.suffix}"
    sub = Subscriber(edge, f"{t}.%23", until=lambda e: topic_of(e) == f"{t}.end")
    # Through the edge: over the limit is a 413, and nothing is published.
    r = requests.post(f"{edge.base}/v1/topics/{t}.big", data="x" * 65537, headers={"content-type": "text/plain"})
    assert r.status_code == 413, r.text
    # Straight to the exchange (any AMQP client can): dropped as it arrives, passed on as a
    # placeholder that gives the size, with the publisher's id.
    huge = 5 * 1024 * 1024
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("gangway.topics", f"{t}.big", b"z" * huge, pika.BasicProperties(message_id="big-1", content_type="text/plain"))
    finally:
        conn.close()
    for n in range(4):  # 4 x ~60 KB: more than the 200 000 bytes of history kept
        publish(edge, f"{t}.filler", {"n": n, "pad": "p" * 60_000})
    publish(edge, f"{t}.end", {})
    events = sub.join()
    assert [topic_of(e) for e in events] == [f"{t}.big"] + [f"{t}.filler"] * 4 + [f"{t}.end"]
    big = events[0]
    assert big.id == "big-1"
    assert json.loads(big.data)["data"] == {"omitted": "the event's body is larger than the edge keeps", "bytes": huge, "limit": 65536}
    health = requests.get(f"{edge.base}/healthz").json()
    assert health["topic_history_bytes"] <= 200_000 and health["topic_history_events"] < 6
    # Resuming from the oldest event: it is gone from the bounded history, so a reset.
    resumed = requests.get(f"{edge.base}/v1/topics/stream?match={t}.%23", headers={"last-event-id": "big-1"}, stream=True, timeout=10)
    first = next(sseclient.SSEClient(resumed).events())
    resumed.close()
    assert first.event == "reset"
    assert "topic.event.too_large" in open(edge.log_path).read()
