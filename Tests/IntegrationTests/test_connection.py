"""Connection-level behaviour: graceful drain, heartbeats, a frozen broker, TLS to the broker,
a topology the broker refuses."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pika
import requests

from harness import Broker, Stack


def test_graceful_shutdown_lets_in_flight_requests_finish(stack):
    edge = stack.start_edge()
    stack.start_worker("echo", extra=["--delay-ms", "1000"])
    result = {}

    def call():
        result["r"] = requests.post(edge.base + "/v1/echo", data="finish me", timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    os.killpg(edge.pid, signal.SIGTERM)
    t.join(timeout=10)
    assert result["r"].status_code == 200
    assert result["r"].text == "finish me"
    assert edge.wait(timeout=10) == 0


def test_past_its_shutdown_timeout_the_edge_answers_what_still_waits_and_exits(stack):
    edge = stack.start_edge(extra=["--shutdown-timeout", "1"])
    stack.start_worker("echo", extra=["--delay-ms", "2500"])
    count = stack.start_worker("count")
    result = {}

    def call():
        result["r"] = requests.post(edge.base + "/v1/echo", data="too slow", timeout=10)

    def stream():
        r = requests.post(edge.base + "/v1/count?n=100&delay_ms=200", headers={"accept": "application/x-ndjson"},
                          stream=True, timeout=10)
        result["lines"] = [json.loads(line) for line in r.iter_lines() if line]

    threads = [threading.Thread(target=call), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    stopped_at = time.monotonic()
    os.killpg(edge.pid, signal.SIGTERM)
    for t in threads:
        t.join(timeout=10)
    # One second after SIGTERM, the request still waiting for its worker (2.5 s) and the
    # stream (20 s of parts) are answered, rather than holding the edge up or being cut off.
    r = result["r"]
    assert r.status_code == 503, r.text
    assert r.json()["type"].endswith("/shutting-down")
    lines = result["lines"]
    assert [p["n"] for p in lines[:-1]] == list(range(len(lines) - 1)) and len(lines) > 3
    assert lines[-1]["error"]["status"] == 503 and lines[-1]["error"]["type"].endswith("/shutting-down")
    assert edge.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 4
    assert "edge.drain.expired" in open(edge.log_path).read()
    # The stream's worker was told to stop.
    deadline = time.monotonic() + 5
    while "worker.cancelled" not in open(count.log_path).read() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "worker.cancelled" in open(count.log_path).read()


def test_the_edge_s_shutdown_timeout_is_checked():
    from harness import gangway_bin
    for value in ("0", "-1", "3601"):
        r = subprocess.run([gangway_bin(), "edge", "--amqp-url", "amqp://127.0.0.1:1/", "--port", "0", f"--shutdown-timeout={value}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert "--shutdown-timeout must be more than 0 and at most 3600 seconds" in r.stderr, r.stderr


def test_a_queue_deleted_under_its_consumer_is_declared_again_and_consumed(stack):
    # The broker tells a consumer whose queue goes (consumer_cancel_notify): the worker, and
    # the edge for its own reply queue, reconnect, declare the queue again and consume it.
    edge = stack.start_edge(extra=["--instance-id", f"it{stack.suffix}"])
    worker = stack.start_worker("echo")
    assert requests.post(edge.base + "/v1/echo", data="before").text == "before"
    for queue, log_path in ((stack.queue["echo"], worker.log_path), (f"gangway.reply.it{stack.suffix}", edge.log_path)):
        stack.broker.ctl("delete_queue", queue)
        deadline = time.monotonic() + 10
        while True:
            r = requests.post(edge.base + "/v1/echo", data="after")
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503, r.text  # meanwhile: at once, not at the deadline
            time.sleep(0.1)
        assert r.status_code == 200 and r.text == "after", (queue, r.status_code, r.text)
        assert f"the broker cancelled the consumer of queue {queue} (deleted, or its node went away); consuming again" in open(log_path).read()
    assert requests.get(edge.base + "/readyz").status_code == 200


def thread_names(pid):
    task_dir = f"/proc/{pid}/task"
    names = set()
    for t in os.listdir(task_dir):
        try:
            names.add(open(os.path.join(task_dir, t, "comm")).read().strip())
        except FileNotFoundError:
            pass  # a pool thread that ended meanwhile
    return names


def test_each_connection_thread_carries_its_connection_name(stack):
    edge = stack.start_edge()
    assert {"edge.publish", "edge.consume"} <= thread_names(edge.pid), thread_names(edge.pid)
    # A name past the kernel's 15 bytes keeps its end from a dot on:
    # worker.it.echo.<suffix> → echo.<suffix>.
    worker = stack.start_worker("echo")
    assert f"echo.{stack.suffix}" in thread_names(worker.pid), thread_names(worker.pid)


def test_a_topology_the_broker_refuses_is_retried_with_a_growing_backoff_and_serves_once_fixed(stack):
    # The echo queue exists as a quorum queue; the topology file says classic: every
    # declaration is refused with 406 PRECONDITION_FAILED.
    queue = stack.queue["echo"]
    conn = pika.BlockingConnection(pika.URLParameters(stack.broker.url))
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        edge = stack.start_edge(wait=False)
        time.sleep(7)
        assert requests.get(edge.base + "/readyz", timeout=5).status_code == 503
        log = open(edge.log_path).read()
        assert "inequivalent arg 'x-queue-type'" in log, log[-2000:]
        # Steps of 100, 200, 400… ms (each between half and all of it) fit 8 tries at most in
        # 7 s; retrying at the first step's pace made some 90.
        failures = log.count("amqp.session.failed")
        assert 2 <= failures <= 8, f"{failures} failed sessions in 7 s"
        assert "amqp.retry_ms=" in log
        conn.channel().queue_delete(queue)
    finally:
        conn.close()
    # Fixed: the next retry (5 s apart at most by now) opens the session.
    stack.wait_ready(edge, timeout=10)
    stack.start_worker("echo")
    r = requests.post(edge.base + "/v1/echo", data="declared at last", timeout=10)
    assert r.status_code == 200 and r.text == "declared at last"


def test_an_idle_connection_stays_up_on_heartbeats(stack):
    url = stack.broker.url + "?heartbeat=1"
    edge = stack.start_edge(url=url)
    stack.start_worker("echo")
    time.sleep(5)  # the broker closes a connection after two missed heartbeats (2 s here)
    r = requests.post(edge.base + "/v1/echo", data="still here")
    assert r.status_code == 200 and r.text == "still here"
    log = open(edge.log_path).read()
    assert "amqp.connection.lost" not in log, log[-2000:]


def test_a_frozen_broker_is_detected_by_heartbeats_and_requests_do_not_hang(own_broker, tmp_path):
    stack = Stack(own_broker, tmp_path)
    try:
        edge = stack.start_edge(url=own_broker.url + "?heartbeat=1")
        stack.start_worker("echo")
        assert requests.post(edge.base + "/v1/echo", data="a").status_code == 200
        pid = own_broker.pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            r = requests.post(edge.base + "/v1/echo", data="b", timeout=10)
            assert r.status_code in (503, 504), r.text
            assert time.monotonic() - start < 3.5
            deadline = time.monotonic() + 6
            ready = 200
            while time.monotonic() < deadline:
                ready = requests.get(edge.base + "/readyz", timeout=2).status_code
                if ready == 503:
                    break
                time.sleep(0.2)
            assert ready == 503, "missed heartbeats must make the edge not-ready"
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                r = requests.post(edge.base + "/v1/echo", data="c", timeout=5)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        assert r.status_code == 200
    finally:
        stack.stop()


def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gangway-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.pem")
    # A second CA that did not sign the server certificate.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
        "-keyout", "other.key", "-out", "other.pem")
    # Client certificates: one the broker's CA signed, one the other CA signed.
    for name, ca in (("client", "ca"), ("stranger", "other")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=gangway-{name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem")
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)
    os.chmod(d, 0o755)


def test_amqps_with_a_verified_certificate_round_trips_and_a_wrong_ca_is_refused(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(str(certs))
    broker = Broker(tls_dir=str(certs)).start()
    stack = Stack(broker, tmp_path)
    try:
        tls_url = f"amqps://guest:guest@localhost:{broker.tls_port}/?cacertfile={certs}/ca.pem"
        edge = stack.start_edge(url=tls_url)
        stack.start_worker("echo")
        r = requests.post(edge.base + "/v1/echo", data="over tls")
        assert r.status_code == 200 and r.text == "over tls"
        tls_connections = broker.ctl("list_connections", "ssl", "--quiet", "--no-table-headers").stdout.split()
        assert "true" in tls_connections

        # A server certificate the CA given did not sign, and one for another host name: each
        # refused, with the reason OpenSSL or rabbitmq-c gives, not only "handshake failed".
        wrong_ca = stack.start_edge(url=f"amqps://guest:guest@localhost:{broker.tls_port}/?cacertfile={certs}/other.pem", wait=False)
        wrong_host = stack.start_edge(url=f"amqps://guest:guest@127.0.0.2:{broker.tls_port}/?cacertfile={certs}/ca.pem", wait=False)
        time.sleep(3)
        for edge, reason in ((wrong_ca, "SSL peer cert verification failed (server certificate: self-signed certificate in certificate chain)"),
                             (wrong_host, "hostname verification failed")):
            assert requests.get(edge.base + "/readyz").status_code == 503
            failures = [line for line in open(edge.log_path) if "amqp.connect.failed" in line]
            assert failures and all("could not connect" in line and reason in line for line in failures), failures
        # Without the host name check the same connection is taken.
        unchecked = stack.start_edge(url=f"amqps://guest:guest@127.0.0.2:{broker.tls_port}/?cacertfile={certs}/ca.pem&server_name_indication=disable")
        assert requests.post(unchecked.base + "/v1/echo", data="no host check").text == "no host check"
    finally:
        stack.stop()
        broker.stop()


def test_a_broker_that_requires_client_certificates_takes_the_edge_and_workers_that_present_one(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(str(certs))
    broker = Broker(tls_dir=str(certs), client_cert_required=True).start()
    stack = Stack(broker, tmp_path)
    base = f"amqps://guest:guest@localhost:{broker.tls_port}/?cacertfile={certs}/ca.pem"
    try:
        url = f"{base}&certfile={certs}/client.pem&keyfile={certs}/client.key"
        edge = stack.start_edge(url=url)
        stack.start_worker("echo", url=url)
        r = requests.post(edge.base + "/v1/echo", data="mutual tls")
        assert r.status_code == 200 and r.text == "mutual tls"
        subjects = broker.ctl("list_connections", "peer_cert_subject", "--quiet", "--no-table-headers").stdout
        assert subjects.count("CN=gangway-client") >= 3, subjects  # the edge's two, the worker's

        # No certificate, or one from a CA the broker does not trust: refused, and the log says
        # what the broker answered.
        without = stack.start_edge(url=base, wait=False)
        stranger = stack.start_edge(url=f"{base}&certfile={certs}/stranger.pem&keyfile={certs}/stranger.key", wait=False)
        time.sleep(3)
        for bad, reason in ((without, "certificate required"), (stranger, "unknown ca")):
            assert requests.get(bad.base + "/readyz").status_code == 503
            failures = [line for line in open(bad.log_path) if "amqp.connect.failed" in line]
            # The broker's alert says why; when the connection's reset overtakes it, the edge
            # says what a refused certificate looks like.
            hint = "the broker ended the TLS session before AMQP began: does it require a client certificate"
            assert failures and all("could not connect to the broker" in line and ": login: " in line and (reason in line or hint in line)
                                    for line in failures), failures
            assert any(reason in line for line in failures), failures
    finally:
        stack.stop()
        broker.stop()


def test_a_broker_nobody_listens_for_is_one_warning_then_quiet_retries(stack):
    edge = stack.start_edge(url="amqp://guest:guest@localhost:1/", wait=False)
    time.sleep(2.5)
    assert requests.get(edge.base + "/readyz").status_code == 503
    failures = [line for line in open(edge.log_path) if "amqp.connect.failed" in line]
    # Each of the edge's two connections warns once, then retries at info level.
    warnings = [line for line in failures if " warning " in line]
    assert len(warnings) == 2, failures
    assert all("amqp.attempts=1 " in line for line in warnings), warnings
    assert any(" info " in line and "amqp.attempts=2 " in line for line in failures), failures
    assert all("localhost:1: the connection was refused or the host is unreachable" in line for line in failures), failures


def test_a_worker_past_its_shutdown_timeout_leaves_the_request_to_another_worker(stack):
    edge = stack.start_edge()
    slow = stack.start_worker("echo", extra=["--delay-ms", "5000", "--shutdown-timeout", "0.3"])
    result = {}

    def call():
        result["r"] = requests.post(edge.base + "/v1/echo", data="handed on", timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)  # the slow worker holds the request now; the next one cannot take it
    # Not waiting for its consumer to show (rabbitmqctl takes up to a second a look, and the
    # request has 3 s in all): the request waits in the queue until it is there.
    stack.start_worker("echo", wait=False)
    stopped_at = time.monotonic()
    os.killpg(slow.pid, signal.SIGTERM)
    assert slow.wait(timeout=10) == 0
    # Interrupted after 0.3 s instead of finishing its 5 s handler...
    assert time.monotonic() - stopped_at < 2.5
    assert "worker.interrupted" in open(slow.log_path).read()
    # ...and the request, left unacknowledged, was answered by the other worker in time.
    t.join(timeout=10)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].text == "handed on"


def test_a_worker_stopped_with_sigterm_finishes_what_it_holds(stack):
    edge = stack.start_edge()
    worker = stack.start_worker("echo", extra=["--delay-ms", "800"])
    result = {}

    def call():
        result["r"] = requests.post(edge.base + "/v1/echo", data="in flight", timeout=10)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    os.killpg(worker.pid, signal.SIGTERM)
    t.join(timeout=10)
    assert result["r"].status_code == 200 and result["r"].text == "in flight"
    assert worker.wait(timeout=10) == 0
    assert "worker.stopped" in open(worker.log_path).read()
    # The answered request was acked before the connection closed: nothing is left in the
    # queue for another worker to run a second time.
    queue = stack.queue["echo"]
    out = stack.broker.ctl("list_queues", "name", "messages", "--quiet", "--no-table-headers").stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 2}
    assert counts.get(queue) == 0, out


def test_idle_client_connections_close_but_busy_ones_do_not(stack):
    # --idle-timeout: a connection with nothing read and nothing owed closes; one whose request
    # waits for its reply, or that carries an event stream, stays however long that takes.
    edge = stack.start_edge(extra=["--idle-timeout", "1"])
    stack.start_worker("echo", extra=["--delay-ms", "2500"])
    host, port = edge.base.removeprefix("http://").split(":")

    def closes_within(s, seconds):
        s.settimeout(seconds)
        t = time.time()
        while s.recv(65536):
            pass
        return time.time() - t

    # Nothing ever sent.
    with socket.create_connection((host, int(port))) as s:
        assert 0.5 < closes_within(s, 5) < 3
    # A request head that trickles in and never ends (a slow-headers client).
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t, closed = time.time(), False
        s.settimeout(0.2)
        while time.time() - t < 5 and not closed:
            try:
                s.sendall(b"X")
                closed = s.recv(65536) == b""
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed and time.time() - t < 3
    # Keep-alive after an answer: open while the worker takes 2.5 s, closed ~1 s after.
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nslow")
        s.settimeout(10)
        answer = b""
        while not answer.endswith(b"slow"):
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert 0.5 < closes_within(s, 5) < 3
    # An event stream with nothing to say for longer than the timeout stays open.
    with requests.get(edge.base + "/v1/topics/stream?match=idle.*", stream=True, timeout=10) as r:
        assert r.status_code == 200
        time.sleep(2.5)
        assert requests.post(edge.base + "/v1/topics/idle.tick", data=b'{"n":1}').status_code == 202
        lines = r.iter_lines()
        got = next(line for line in lines if line.startswith(b"data:"))
        assert b"idle.tick" in got, got
