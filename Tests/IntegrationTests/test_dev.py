"""The README's first command: `gangway dev` starts a local broker, the edge and the demo workers."""
import datetime
import os
import signal
import subprocess
import time

import requests

from harness import ROOT, free_port, gangway_bin


def test_dev_starts_a_local_broker_edge_and_demo_workers_then_cleans_up():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GANGWAY_AMQP_URL"}
    env["GANGWAY_HTTP_PORT"] = str(port)
    p = subprocess.Popen([gangway_bin(), "dev"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        ok = False
        while time.monotonic() < deadline and p.poll() is None:
            try:
                r = requests.post(base + "/v1/echo", data="hello dev", timeout=2)
                if r.status_code == 200:
                    ok = True
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert ok, "gangway dev did not serve /v1/echo"
        assert r.text == "hello dev"
        t = requests.get(base + "/v1/time", timeout=5)
        assert t.status_code == 200, t.text
        # The ISO 8601 text and the epoch milliseconds are the same instant.
        stamp = datetime.datetime.fromtimestamp(t.json()["epoch_ms"] / 1000, datetime.timezone.utc)
        assert t.json()["time"] == stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.json()["epoch_ms"] % 1000)
        d = requests.get(base + "/v1/dashboard", timeout=5)
        assert d.status_code == 200, d.text
        assert d.json()["profile"]["name"] == "Ada Lovelace" and len(d.json()["orders"]["orders"]) == 2
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    assert "curl -s -X POST" in out
    node = [line for line in out.splitlines() if "broker.node=" in line]
    assert node, out[-2000:]
    name = node[0].split("broker.node=")[1].split()[0]
    # The local node is gone after shutdown.
    status = subprocess.run(["rabbitmqctl", "-n", name, "status"], capture_output=True, text=True,
                            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"})
    assert status.returncode != 0
