"""The edge's connection limit: it raises its open-file limit, accepts client connections up to
a budget below it, and lets the rest wait in the listen backlog instead of running out of file
descriptors (which, before the limit, ended the process: libdispatch cannot open
/proc/<tid>/stat and aborts)."""
import json
import resource
import selectors
import socket
import subprocess
import time

import requests

from harness import free_port, gangway_bin

STREAM_REQUEST = b"GET /v1/topics/stream?match=limit.* HTTP/1.1\r\nHost: test\r\n\r\n"


def start_edge_with_open_files(stack, soft, hard, extra=()):
    """An edge whose process starts with the given soft and hard limits on open files."""
    port = free_port()

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    edge = stack.spawn([gangway_bin(), "edge", "--port", str(port), *extra], "edge", preexec_fn=limit)
    edge.base = f"http://127.0.0.1:{port}"
    edge.port = port
    stack.wait_ready(edge)
    return edge


def open_streams(edge, count):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", edge.port))
        s.sendall(STREAM_REQUEST)
        socks.append(s)
    return socks


def read_until(socks, done, timeout):
    """Reads what arrives on `socks` until `done(received)` holds or `timeout` passes; returns
    the bytes each socket received (a socket whose peer closed is dropped)."""
    received = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    deadline = time.time() + timeout
    while not done(received) and time.time() < deadline:
        for key, _ in sel.select(timeout=0.1):
            data = key.fileobj.recv(65536)
            if not data:
                sel.unregister(key.fileobj)
                continue
            received[key.fileobj] += data
    sel.close()
    return received


def answered(received):
    return [s for s, data in received.items() if data.startswith(b"HTTP/1.1 200")]


def test_a_flood_past_the_open_file_limit_waits_in_the_backlog_and_the_edge_keeps_serving(stack):
    # 160 open files, soft and hard: 40 are kept back, so 120 client connections at most.
    edge = start_edge_with_open_files(stack, 160, 160)
    health = requests.get(edge.base + "/healthz", timeout=5).json()
    assert health["connection_limit"] == 120, health
    publisher = stack.start_edge()
    socks = open_streams(edge, 200)
    try:
        # Everything the edge will answer now, it answers within a few seconds; meanwhile
        # libdispatch looks at its threads every second while tasks are queued, and so meets
        # a full descriptor table if there is one, as it did before the limit.
        first = read_until(socks, lambda r: False, timeout=4)
        assert edge.poll() is None, open(edge.log_path).read()[-3000:]
        served = answered(first)
        # One read of the listening socket may accept a few connections past the limit.
        assert 120 <= len(served) <= 124, len(served)
        waiting = [s for s in socks if s not in served]
        assert all(first[s] == b"" for s in waiting)

        # The edge serves its open streams while it is full: an event published through
        # another edge reaches every one of them.
        r = requests.post(publisher.base + "/v1/topics/limit.full", json={"n": 1}, timeout=10)
        assert r.status_code == 202, r.text
        got = read_until(served, lambda r: all(b"limit.full" in d for d in r.values()), timeout=15)
        assert all(b"limit.full" in d for d in got.values()), sum(b"limit.full" in d for d in got.values())

        # As the served clients leave, the waiting ones are accepted and answered.
        for s in served:
            s.close()
        later = read_until(waiting, lambda r: len(answered(r)) == len(waiting), timeout=30)
        assert len(answered(later)) == len(waiting), f"{len(answered(later))} of {len(waiting)}"
    finally:
        for s in socks:
            s.close()
    assert edge.poll() is None
    r = requests.post(edge.base + "/v1/echo", data=b"after the flood", timeout=10)
    assert r.status_code in (200, 503), r.text  # no echo worker in this test: 503 at once
    health = requests.get(edge.base + "/healthz", timeout=5).json()
    assert health["connection_limit_reached"] >= 1, health
    log = open(edge.log_path).read()
    assert "edge.connections.limit_reached" in log
    assert "process.open_file_limit=160" in log


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(stack):
    # A soft limit of 100 would not hold 150 connections; the hard limit of 4096 does.
    edge = start_edge_with_open_files(stack, 100, 4096)
    health = requests.get(edge.base + "/healthz", timeout=5).json()
    assert health["connection_limit"] == 4096 - 256, health
    socks = open_streams(edge, 150)
    try:
        got = read_until(socks, lambda r: len(answered(r)) == 150, timeout=20)
        assert len(answered(got)) == 150
        health = requests.get(edge.base + "/healthz", timeout=5).json()
        assert health["connections"] >= 151 and health["connection_limit_reached"] == 0, health
    finally:
        for s in socks:
            s.close()


def test_max_connections_holds_the_next_client_until_one_leaves(stack):
    edge = stack.start_edge(extra=("--max-connections", "3"))
    health = requests.get(edge.base + "/healthz", timeout=5).json()
    assert health["connection_limit"] == 3, health
    time.sleep(0.5)  # the edge sees the close of that request's connection
    port = int(edge.base.rsplit(":", 1)[1])
    held = []
    try:
        # One at a time: a burst of connections may be accepted in one read, a few past the limit.
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            held.append(s)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert answered(read_until([s], lambda r: len(answered(r)) == 1, timeout=10)) == [s]
        fourth = socket.create_connection(("127.0.0.1", port))  # the kernel's backlog takes it
        held.append(fourth)
        fourth.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_until([fourth], lambda r: any(r.values()), timeout=1.5)[fourth] == b""
        held[0].close()
        later = read_until([fourth], lambda r: len(answered(r)) == 1, timeout=10)
        assert answered(later) == [fourth], later
        health = json.loads(later[fourth].split(b"\r\n\r\n", 1)[1])
        assert health["connection_limit_reached"] >= 1 and health["connections"] == 3, health
    finally:
        for s in held:
            s.close()


def test_max_connections_beyond_the_open_file_limit_is_refused_with_a_reason(stack):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    r = subprocess.run([gangway_bin(), "edge", "--port", "0", "--max-connections", "5000"], env=stack.env(),
                       capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert r.returncode != 0
    assert "--max-connections 5000 is more than the open-file limit leaves room for: 1024 open files" in r.stderr, r.stderr
    assert "ask for 768 at most" in r.stderr, r.stderr
    r = subprocess.run([gangway_bin(), "edge", "--port", "0", "--max-connections", "0"], env=stack.env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--max-connections must be at least 1, got 0" in r.stderr, r.stderr
