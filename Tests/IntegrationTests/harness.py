"""Starts real RabbitMQ nodes, real gangway binaries and outside workers for the tests."""
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BROKER_SH = os.path.join(ROOT, "scripts", "broker.sh")


def gangway_bin():
    return os.environ.get("GANGWAY_BIN") or os.path.join(ROOT, ".build", "debug", "gangway")


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port + 20000 <= 65535:
            return port


class Broker:
    """A private RabbitMQ node: own name, port and directory."""

    def __init__(self, tls_dir=None, client_cert_required=False):
        self.client_cert_required = client_cert_required
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gangway-it-broker-")
        self.url = f"amqp://guest:guest@localhost:{self.port}/"
        self.tls_dir = tls_dir
        self.tls_port = free_port() if tls_dir else None

    def start(self):
        env = dict(os.environ)
        if self.tls_dir:
            env["BROKER_TLS_PORT"] = str(self.tls_port)
            env["BROKER_TLS_DIR"] = self.tls_dir
            if self.client_cert_required:
                env["BROKER_TLS_CLIENT_CERT"] = "required"
        subprocess.run([BROKER_SH, "start", self.dir, str(self.port)], check=True, stdout=subprocess.DEVNULL, env=env)
        return self

    def pid(self):
        """The Erlang VM's pid, for kill -STOP."""
        if not hasattr(self, "_pid"):
            self._pid = int(self.ctl("eval", "os:getpid().").stdout.strip().strip('"'))
        return self._pid

    def ctl(self, *args, check=True, input=None):
        return subprocess.run([BROKER_SH, "ctl", self.dir, *args], check=check, capture_output=True, text=True, input=input)

    def stop_app(self):
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")
        self.ctl("await_startup")

    def stop(self):
        subprocess.run([BROKER_SH, "stop", self.dir], check=False)


class Stack:
    """Configuration files with queue names unique to one test, an edge and its workers."""

    def __init__(self, broker, tmpdir, routes_extra="", queues=("echo", "time", "slow", "nobody", "pika", "count", "g1", "g2", "g3", "render")):
        self.broker = broker
        self.tmp = str(tmpdir)
        self.suffix = uuid.uuid4().hex[:8]
        self.procs = []
        self.queue = {q: f"it.{q}.{self.suffix}" for q in queues}
        self.write_config(routes_extra)

    def write_config(self, routes_extra):
        queues = [
            {"name": name, "vhost": "/", "durable": True, "auto_delete": False,
             "arguments": {"x-queue-type": "classic"}}
            for key, name in self.queue.items() if key != "render"
        ]
        # Jobs: a quorum queue that dead-letters a job after 5 deliveries.
        queues.append({"name": self.queue["render"], "vhost": "/", "durable": True, "auto_delete": False,
                       "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 4,
                                     "x-dead-letter-exchange": "gangway.jobs.dlx"}})
        self.scatter = f"it.scatter.{self.suffix}"
        bindings = [
            {"source": "gangway.rpc", "vhost": "/", "destination": name, "destination_type": "queue",
             "routing_key": name, "arguments": {}}
            for name in self.queue.values()
        ] + [
            {"source": self.scatter, "vhost": "/", "destination": self.queue[g], "destination_type": "queue",
             "routing_key": "scatter.all", "arguments": {}}
            for g in ("g1", "g2", "g3")
        ]
        definitions = {
            "exchanges": [{"name": "gangway.rpc", "vhost": "/", "type": "direct", "durable": True,
                           "auto_delete": False, "internal": False, "arguments": {}},
                          {"name": "gangway.cancel", "vhost": "/", "type": "fanout", "durable": True,
                           "auto_delete": False, "internal": False, "arguments": {}},
                          {"name": self.scatter, "vhost": "/", "type": "topic", "durable": False,
                           "auto_delete": False, "internal": False, "arguments": {}}],
            "queues": queues,
            "bindings": bindings,
        }
        self.topology_path = os.path.join(self.tmp, "definitions.json")
        with open(self.topology_path, "w") as f:
            json.dump(definitions, f, indent=2)
        self.routes_path = os.path.join(self.tmp, "routes.yaml")
        with open(self.routes_path, "w") as f:
            f.write(f"""version: 1
defaults:
  exchange: gangway.rpc
  timeout: 3s
  forward_headers: [accept, x-demo]
routes:
  - name: echo
    method: POST
    path: /v1/echo
    routing_key: {self.queue['echo']}
    max_body: 2MiB
  - name: echo-get
    method: GET
    path: /v1/echo/{{id}}
    routing_key: {self.queue['echo']}
  - name: time
    method: GET
    path: /v1/time
    routing_key: {self.queue['time']}
    timeout: 1s
  - name: slow
    method: POST
    path: /v1/slow
    routing_key: {self.queue['echo']}
    timeout: 800ms
  - name: agg
    method: POST
    path: /v1/agg
    shape: aggregate
    policy: all
    timeout: 2s
    legs:
      - key: echo
        routing_key: {self.queue['echo']}
        keep_headers: [x-echo-method]
      - key: time
        routing_key: {self.queue['time']}
        body: none
  - name: agg-partial
    method: POST
    path: /v1/agg-partial
    shape: aggregate
    policy: partial
    timeout: 2s
    legs:
      - key: echo
        routing_key: {self.queue['echo']}
      - key: slow
        routing_key: {self.queue['slow']}
        timeout: 500ms
      - key: nobody
        routing_key: {self.queue['nobody']}
  - name: agg-chain
    method: POST
    path: /v1/agg-chain
    shape: aggregate
    timeout: 2s
    legs:
      - key: first
        routing_key: {self.queue['echo']}
      - key: second
        routing_key: {self.queue['pika']}
        body: none
        use: {{id: /first/id}}
        keep_headers: [x-seen-params]
      - key: third
        routing_key: {self.queue['echo']}
        use: {{id: /first/id}}
        body_template: '{{"about": "${{id}}", "kind": "chained"}}'
  - name: count
    method: POST
    path: /v1/count
    shape: stream
    routing_key: {self.queue['count']}
    timeout: 30s
    idle_timeout: 1s
  - name: gather3
    method: POST
    path: /v1/gather
    shape: gather
    exchange: {self.scatter}
    routing_key: scatter.all
    expect: 3
    timeout: 1500ms
  - name: gather-first
    method: POST
    path: /v1/gather-first
    shape: gather
    exchange: {self.scatter}
    routing_key: scatter.all
    first: 1
    timeout: 1500ms
  - name: job-render
    method: POST
    path: /v1/jobs/render
    shape: job
    routing_key: {self.queue['render']}
  - name: job-redirect
    method: POST
    path: /v1/jobs/render-redirect
    shape: job
    routing_key: {self.queue['render']}
    result_redirect: true
  - name: job-nowhere
    method: POST
    path: /v1/jobs/nowhere
    shape: job
    exchange: ""
    routing_key: it.no.such.queue.{self.suffix}
  - name: pika-stream
    method: POST
    path: /v1/pika-stream
    shape: stream
    routing_key: {self.queue['pika']}
    timeout: 10s
    idle_timeout: 700ms
  - name: pika-gather
    method: POST
    path: /v1/pika-gather
    shape: gather
    routing_key: {self.queue['pika']}
    timeout: 3s
{routes_extra}""")

    def env(self, **extra):
        env = dict(os.environ)
        env["GANGWAY_AMQP_URL"] = self.broker.url
        env["GANGWAY_ROUTES"] = self.routes_path
        env["GANGWAY_TOPOLOGY"] = self.topology_path
        env.update(extra)
        return env

    def spawn(self, args, name, **kw):
        log = open(os.path.join(self.tmp, f"{name}-{len(self.procs)}.log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True, **kw)
        p.log_path = log.name
        self.procs.append(p)
        return p

    def start_edge(self, port=None, url=None, wait=True, extra=()):
        port = port or free_port()
        args = [gangway_bin(), "edge", "--port", str(port), *extra]
        if url:
            args += ["--amqp-url", url]
        p = self.spawn(args, "edge")
        p.base = f"http://127.0.0.1:{port}"
        if wait:
            self.wait_ready(p)
        return p

    def wait_ready(self, edge, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if edge.poll() is not None:
                raise RuntimeError(f"edge exited with {edge.returncode}: {open(edge.log_path).read()[-2000:]}")
            try:
                if requests.get(edge.base + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("edge did not become ready: " + open(edge.log_path).read()[-2000:])

    def start_worker(self, kind="echo", queue=None, extra=(), wait=True, url=None, vhost="/"):
        """Starts a worker (on the broker at `url`, when given, in `vhost`); with `wait`, returns
        once the broker lists its consumer (each look is a `rabbitmqctl` call of up to a second)."""
        queue = queue or self.queue[kind]
        before = self.consumer_count(queue, vhost) if wait else 0
        args = [gangway_bin(), "worker", kind, "--queue", queue, *extra]
        if url:
            args += ["--amqp-url", url]
        p = self.spawn(args, f"worker-{kind}")
        if wait:
            self.wait_consumers(queue, at_least=before + 1, vhost=vhost)
        return p

    def start_pika_worker(self, queue, mode="echo", extra=()):
        before = self.consumer_count(queue)
        p = self.spawn([sys.executable, os.path.join(os.path.dirname(__file__), "pika_worker.py"),
                        self.broker.url, queue, "--mode", mode, *extra], f"pika-{mode}")
        self.wait_consumers(queue, at_least=before + 1)
        return p

    def consumer_count(self, queue, vhost="/"):
        out = self.broker.ctl("list_queues", "-p", vhost, "name", "consumers", "--quiet", "--no-table-headers", check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0

    def wait_no_consumers(self, queue, timeout=10):
        """Waits until the broker lists no consumer on `queue` (or the timeout passed)."""
        deadline = time.time() + timeout
        while self.consumer_count(queue) > 0 and time.time() < deadline:
            time.sleep(0.1)

    def wait_consumers(self, queue, at_least, timeout=30, vhost="/"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.consumer_count(queue, vhost) >= at_least:
                return
            for p in self.procs:
                if p.poll() is not None and p.returncode not in (0, -9, -15):
                    raise RuntimeError(f"process exited {p.returncode}: {open(p.log_path).read()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{queue} did not reach {at_least} consumers")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


class PostLoad:
    """Threads that POST in a loop while the block runs (by default "ping" to /v1/echo), each
    outcome recorded as (status or error, start, seconds taken, response or None).
    `headers(n)` gives the headers of the n-th request (n counts across threads)."""

    def __init__(self, edge, threads=8, path="/v1/echo", data="ping", headers=None):
        self.edge = edge
        self.path = path
        self.data = data
        self.headers = headers or (lambda n: {})
        self.outcomes = []
        self._count = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def _run(self):
        session = requests.Session()
        while not self._stop.is_set():
            headers = self.headers(next(self._count))
            start = time.monotonic()
            try:
                r = session.post(self.edge.base + self.path, data=self.data, headers=headers, timeout=10)
                self.outcomes.append((r.status_code, start, time.monotonic() - start, r))
            except requests.RequestException as e:
                self.outcomes.append((repr(e), start, time.monotonic() - start, None))
            time.sleep(0.01)


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
