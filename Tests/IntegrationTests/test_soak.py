"""Everything at once, while the faults of the other tests come one after another.

Request/reply, aggregates, streamed replies, jobs and topic events flow through one edge, the
jobs and the topic followed over SSE on a second edge, for GANGWAY_SOAK_SECONDS (default 75;
longer if the six faults take longer) while, every 11 s, a worker is killed or stopped, the
broker drops every connection, stops and starts its application, or is frozen with SIGSTOP.
Each fault has its own test elsewhere; this one looks for what they do to each other and to
the edges over time. At the end:

- no client got another request's reply, and every answer was a reply or a clean problem
  (503, 504, or 502 for an aggregate), none later than its deadline allows;
- every streamed reply arrived whole and in order, or in order up to an error line;
- every job answered 202 finished, as both edges tell, and every followed job's events
  arrived numbered 1, 2, 3… without gap or repeat, across reconnections with Last-Event-ID,
  and neither edge took any job's events with a gap;
- a topic subscriber saw the events published in order, none twice, and missed an accepted
  one only where the edge told it so (an `event: reset` when it lost its connection);
- the edges serve, and hold no more file descriptors or threads than before.

A longer run: GANGWAY_SOAK_SECONDS=600 python3 -m pytest Tests/IntegrationTests/test_soak.py
"""
import collections
import json
import os
import random
import signal
import threading
import time
import uuid

import requests
import sseclient

from harness import Stack

SECONDS = float(os.environ.get("GANGWAY_SOAK_SECONDS", "75"))
FAULT_EVERY = 11.0
# The routes' deadlines (harness.py), and what a loaded machine may add to one.
ECHO_TIMEOUT, AGG_TIMEOUT, SLACK = 3.0, 2.0, 1.5


class Soak:
    """The clients, the fault injector, and what they saw."""

    def __init__(self, stack, broker, edge, other):
        self.stack = stack
        self.broker = broker
        self.edge = edge
        # A second edge: jobs and the topic are followed there.
        self.other = other
        self.stop = threading.Event()
        # Every kind of fault has been injected once.
        self.cycled = threading.Event()
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.violations = []
        self.jobs = []
        self.workers = {}
        # Topic events: the numbers the edge accepted (202), and what the subscriber saw in
        # order, each a number or "reset".
        self.accepted = set()
        self.seen = []
        self.published = 0
        self.subscription = None
        self.subscription_done = threading.Event()
        self.sessions = []

    def session(self):
        """A client's HTTP session, closed at the end (its connections count as the edge's)."""
        session = requests.Session()
        with self.lock:
            self.sessions.append(session)
        return session

    def count(self, key):
        with self.lock:
            self.counts[key] += 1

    def violation(self, what):
        with self.lock:
            self.violations.append(f"{time.strftime('%H:%M:%S')} {what}")

    # Load

    def echo(self):
        session = self.session()
        while not self.stop.is_set():
            body = uuid.uuid4().hex * random.choice((1, 8, 400))
            start = time.monotonic()
            try:
                r = session.post(self.edge.base + "/v1/echo", data=body, headers={"content-type": "text/plain"}, timeout=15)
            except requests.RequestException as e:
                self.violation(f"echo: no answer ({e!r})")
                continue
            took = time.monotonic() - start
            self.count(f"echo {r.status_code}")
            if r.status_code == 200 and r.text != body:
                self.violation(f"echo: sent {body[:16]}…, got {r.text[:16]}…")
            elif r.status_code not in (200, 503, 504):
                self.violation(f"echo: {r.status_code} {r.text[:200]}")
            if took > ECHO_TIMEOUT + SLACK:
                self.violation(f"echo: answered {r.status_code} after {took:.2f} s")
            if r.status_code != 200:
                time.sleep(0.05)

    def aggregate(self):
        session = self.session()
        while not self.stop.is_set():
            sent = {"id": uuid.uuid4().hex}
            start = time.monotonic()
            try:
                r = session.post(self.edge.base + "/v1/agg", json=sent, timeout=15)
            except requests.RequestException as e:
                self.violation(f"aggregate: no answer ({e!r})")
                continue
            took = time.monotonic() - start
            self.count(f"aggregate {r.status_code}")
            if r.status_code == 200 and r.json().get("echo") != sent:
                self.violation(f"aggregate: sent {sent}, got {r.text[:200]}")
            elif r.status_code not in (200, 502, 503, 504):
                self.violation(f"aggregate: {r.status_code} {r.text[:200]}")
            if took > AGG_TIMEOUT + SLACK:
                self.violation(f"aggregate: answered {r.status_code} after {took:.2f} s")
            time.sleep(0.02 if r.status_code == 200 else 0.05)

    def stream(self):
        session = self.session()
        n = 200
        while not self.stop.is_set():
            try:
                r = session.post(self.edge.base + f"/v1/count?n={n}&delay_ms=0", headers={"accept": "application/x-ndjson"},
                                 stream=True, timeout=40)
                lines = [json.loads(line) for line in r.iter_lines() if line]
            except (requests.RequestException, ValueError) as e:
                self.violation(f"stream: broken ({e!r})")
                continue
            if r.status_code != 200:
                self.count(f"stream {r.status_code}")
                if r.status_code not in (503, 504):
                    self.violation(f"stream: {r.status_code} {lines[:1]}")
                time.sleep(0.05)
                continue
            parts = [line for line in lines if "error" not in line]
            if [p.get("n") for p in parts] != list(range(len(parts))):
                self.violation(f"stream: parts out of order or missing: {[p.get('n') for p in parts][:20]}")
            if len(parts) == n and len(lines) == n:
                self.count("stream whole")
            elif len(lines) == len(parts) + 1 and "error" in lines[-1]:
                self.count("stream ended by an error line")
            else:
                self.violation(f"stream: {len(parts)} of {n} parts and no error line at the end: {lines[-1:]}")

    def jobs_loop(self, follow):
        session = self.session()
        while not self.stop.is_set():
            try:
                r = session.post(self.edge.base + "/v1/jobs/render?steps=3&delay_ms=100", json={"scene": "soak"}, timeout=30)
            except requests.RequestException as e:
                self.violation(f"job: no answer to the POST ({e!r})")
                continue
            self.count(f"job {r.status_code}")
            if r.status_code != 202:
                if r.status_code != 503:
                    self.violation(f"job: {r.status_code} {r.text[:200]}")
                time.sleep(0.05)
                continue
            job = r.json()
            with self.lock:
                self.jobs.append(job["id"])
            if follow:
                self.follow(job)
            else:
                time.sleep(0.1)

    def follow(self, job):
        """Reads the job's events to the end, reconnecting with Last-Event-ID as a browser would."""
        seqs = []
        # Each connection: when, the Last-Event-ID sent, the status, the ids received.
        history = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            headers = {"accept": "text/event-stream"}
            if seqs:
                headers["last-event-id"] = str(seqs[-1])
            try:
                r = requests.get(self.other.base + job["events_url"], headers=headers, stream=True, timeout=20)
                history.append([time.strftime("%H:%M:%S"), headers.get("last-event-id"), r.status_code])
                if r.status_code != 200:
                    self.count(f"job events {r.status_code}")
                    time.sleep(0.2)
                    continue
                for event in sseclient.SSEClient(r).events():
                    if time.monotonic() > deadline:
                        break  # heartbeats keep a stream alive that never ends: give up, and say so
                    if event.event not in ("progress", "log", "done", "failed"):
                        continue
                    seqs.append(int(event.id))
                    history[-1].append(int(event.id))
                    if event.event in ("done", "failed"):
                        if seqs != list(range(1, len(seqs) + 1)):
                            gaps = [requests.get(f"{e.base}/healthz", timeout=5).json().get("job_event_gaps") for e in (self.edge, self.other)]
                            self.violation(f"job {job['id']}: events numbered {seqs}; connections {history}; "
                                           f"gaps the edges saw in the event log: {gaps}")
                        self.count(f"job followed to {event.event}")
                        return
            except requests.RequestException:
                pass
            self.count("job events reconnected")
            time.sleep(0.2)
        status = requests.get(f"{self.other.base}/v1/jobs/{job['id']}", timeout=5)
        self.violation(f"job {job['id']}: no final event within 60 s (saw {seqs}); the following edge says "
                       f"{status.status_code} {status.text[:300]}")

    def publish(self):
        session = self.session()
        while not self.stop.is_set():
            self.published += 1
            n = self.published
            try:
                r = session.post(self.edge.base + "/v1/topics/soak.ticks", json={"n": n}, timeout=30)
            except requests.RequestException as e:
                self.violation(f"topic: no answer to the POST ({e!r})")
                continue
            self.count(f"topic publish {r.status_code}")
            if r.status_code == 202:
                with self.lock:
                    self.accepted.add(n)
            elif r.status_code != 503:
                self.violation(f"topic: {r.status_code} {r.text[:200]}")
            time.sleep(0.02)

    def subscribe(self):
        """Follows soak.# until told to stop, resuming with Last-Event-ID if the stream ends."""
        last_id = None
        while not self.subscription_done.is_set():
            headers = {"last-event-id": last_id} if last_id else {}
            try:
                r = requests.get(self.other.base + "/v1/topics/stream?match=soak.%23", headers=headers, stream=True, timeout=30)
                self.subscription = r
                if self.subscription_done.is_set():
                    r.close()
                    return
                for event in sseclient.SSEClient(r).events():
                    if event.event == "reset":
                        self.seen.append("reset")
                    elif event.event == "message" and event.id:
                        last_id = event.id
                        try:
                            self.seen.append(json.loads(event.data)["data"]["n"])
                        except (ValueError, KeyError, TypeError):
                            self.violation(f"topic: an event that is not what was published: {event.data[:200]}")
            except Exception:  # noqa: BLE001 (the connection broke, or the test closed it)
                pass
            if not self.subscription_done.is_set():
                self.count("topic stream reconnected")
                time.sleep(0.2)

    def check_topic(self):
        """Numbers only grow, and a number the edge accepted is missing only across a reset
        (counted from the first event the subscriber saw)."""
        previous, reset_since = None, False
        for item in self.seen:
            if item == "reset":
                reset_since = True
                continue
            if previous is None:
                previous = item
                continue
            if item <= previous:
                self.violation(f"topic: {item} after {previous}")
                continue
            missing = sorted(n for n in range(previous + 1, item) if n in self.accepted)
            if missing and not reset_since:
                self.violation(f"topic: {len(missing)} accepted events missing without a reset: {missing[:5]}")
            previous, reset_since = item, False

    # Faults

    def restart_worker(self, kind, sig):
        old = self.workers[kind].pop(0)
        os.killpg(old.pid, sig)
        old.wait(timeout=15)
        self.workers[kind].append(self.stack.start_worker(kind, wait=False))

    def faults(self):
        faults = [
            ("echo worker killed", lambda: self.restart_worker("echo", signal.SIGKILL)),
            ("broker closes every connection", lambda: self.broker.ctl("close_all_connections", "soak", check=False)),
            ("job worker killed", lambda: self.restart_worker("render", signal.SIGKILL)),
            ("broker application restarted", self.restart_broker_app),
            ("echo worker stopped", lambda: self.restart_worker("echo", signal.SIGTERM)),
            ("broker frozen for 3 s", self.freeze_broker),
        ]
        for index in range(10_000):
            if self.stop.wait(FAULT_EVERY):
                return
            name, inject = faults[index % len(faults)]
            try:
                inject()
                self.count(f"fault: {name}")
            except Exception as e:  # noqa: BLE001 (reported, not raised, so the load threads stop)
                self.violation(f"fault {name} could not be injected: {e!r}")
            if index == len(faults) - 1:
                self.cycled.set()

    def restart_broker_app(self):
        self.broker.stop_app()
        time.sleep(3)
        self.broker.start_app()

    def freeze_broker(self):
        os.kill(self.broker.pid(), signal.SIGSTOP)
        try:
            time.sleep(3)
        finally:
            os.kill(self.broker.pid(), signal.SIGCONT)


def resources(pid):
    """The process's open file descriptors (a count) and its own threads' names: the Swift
    runtime's pool threads (libdispatch's, named after their QoS) come and go with the load."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            if "qos" not in name:
                names.append(name)
        except FileNotFoundError:  # the thread has just ended
            pass
    return len(os.listdir(f"/proc/{pid}/fd")), sorted(names)


def test_mixed_traffic_through_faults_loses_nothing(own_broker, tmp_path):
    stack = Stack(own_broker, tmp_path)
    try:
        edge, other = stack.start_edge(), stack.start_edge()
        soak = Soak(stack, own_broker, edge, other)
        soak.workers = {
            "echo": [stack.start_worker("echo"), stack.start_worker("echo")],
            "render": [stack.start_worker("render"), stack.start_worker("render")],
        }
        stack.start_worker("time")
        stack.start_worker("count")
        assert requests.post(edge.base + "/v1/echo", data="warm").text == "warm"
        before = {e.pid: resources(e.pid) for e in (edge, other)}

        subscriber = threading.Thread(target=soak.subscribe, daemon=True)
        subscriber.start()
        load = [soak.echo] * 3 + [soak.aggregate, soak.stream, soak.publish, lambda: soak.jobs_loop(True), lambda: soak.jobs_loop(False)]
        names = ["echo"] * 3 + ["aggregate", "stream", "publish", "jobs followed", "jobs"]
        threads = [threading.Thread(target=target, name=name, daemon=True) for target, name in zip(load, names)]
        injector = threading.Thread(target=soak.faults, name="fault injector", daemon=True)
        for t in threads + [injector]:
            t.start()
        time.sleep(SECONDS)
        # However long the faults took, each has been injected before the load stops.
        assert soak.cycled.wait(timeout=120), dict(soak.counts)
        soak.stop.set()
        injector.join(timeout=30)
        for t in threads:
            t.join(timeout=90)
        waiting = [t.name for t in threads + [injector] if t.is_alive()]
        assert not waiting, f"still waiting: {waiting}; violations so far: {soak.violations[:5]}"

        # Every job the edge accepted finishes, as both edges tell.
        unfinished = set(soak.jobs)
        statuses = collections.Counter()
        deadline = time.monotonic() + 90
        while unfinished and time.monotonic() < deadline:
            for job in list(unfinished):
                told = set()
                for e in (edge, other):
                    r = requests.get(f"{e.base}/v1/jobs/{job}", timeout=5)
                    told.add(r.json().get("status") if r.status_code == 200 else r.status_code)
                if len(told) == 1 and told & {"succeeded", "failed", "cancelled"}:
                    statuses[told.pop()] += 1
                    unfinished.discard(job)
            if unfinished:
                time.sleep(1)

        assert requests.post(edge.base + "/v1/echo", data="after").text == "after"
        # The subscriber gets an event published now, after everything before it.
        final = soak.published + 1
        assert requests.post(edge.base + "/v1/topics/soak.ticks", json={"n": final}).status_code == 202
        deadline = time.monotonic() + 15
        while final not in soak.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        soak.subscription_done.set()
        if soak.subscription is not None:
            soak.subscription.close()
        subscriber.join(timeout=10)
        assert final in soak.seen, f"the subscriber did not get the final event; saw {soak.seen[-5:]}"
        soak.check_topic()
        for session in soak.sessions:
            session.close()
        # The connections the clients held are closing: give them a moment.
        def settled(pid):
            (fds, threads), (fds_then, threads_then) = resources(pid), before[pid]
            return fds <= fds_then + 2 and threads == threads_then

        deadline = time.monotonic() + 30
        while not all(settled(pid) for pid in before) and time.monotonic() < deadline:
            time.sleep(0.5)
        after = {pid: resources(pid) for pid in before}

        summary = dict(sorted(soak.counts.items())) | {"jobs": dict(statuses), "topic events seen": len(soak.seen),
                                                       "topic resets": soak.seen.count("reset")}
        print(summary)  # with -s: what the run went through
        assert not soak.violations, f"{len(soak.violations)} violations: {soak.violations[:10]}; {summary}"
        assert not unfinished, f"{len(unfinished)} accepted jobs never finished: {sorted(unfinished)[:5]}; {summary}"
        assert statuses["succeeded"] == len(soak.jobs), summary
        # No job's events skipped a number on either edge, followed or not: a gap is an event
        # lost on the way (as one confirmed while the restarted broker routed nothing was).
        gaps = {e.base: requests.get(f"{e.base}/healthz", timeout=5).json()["job_event_gaps"] for e in (edge, other)}
        assert set(gaps.values()) == {0}, f"job event gaps: {gaps}; {summary}"
        # Not vacuous: each kind of traffic got through between the faults, and each fault ran.
        for key, least in [("echo 200", 100), ("aggregate 200", 20), ("stream whole", 5), ("job followed to done", 10),
                           ("topic publish 202", 100)]:
            assert soak.counts[key] >= least, (key, summary)
        assert sum(1 for key in soak.counts if key.startswith("fault: ")) == 6, summary
        for pid in before:
            assert settled(pid), f"edge {pid}: {before[pid][0]} fds and threads {before[pid][1]} before; {after[pid][0]} and {after[pid][1]} after"
    finally:
        stack.stop()
