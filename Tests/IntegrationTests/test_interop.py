"""A worker that is not Swift serves the shipped demo route from the README's contract alone."""
import os
import subprocess
import sys

import requests

from harness import ROOT, Stack


def test_a_python_pika_worker_serves_demo_echo_through_the_edge(broker, tmp_path):
    stack = Stack(broker, tmp_path)
    # The shipped files, not the per-test ones: route POST /v1/echo → queue demo.echo.
    stack.routes_path = os.path.join(ROOT, "topology", "routes.yaml")
    stack.topology_path = os.path.join(ROOT, "topology", "definitions.json")
    try:
        edge = stack.start_edge()
        stack.start_pika_worker("demo.echo")
        payload = bytes(range(256))
        r = requests.post(edge.base + "/v1/echo?lang=py", data=payload,
                          headers={"content-type": "application/octet-stream", "x-demo": "interop"})
        assert r.status_code == 200, r.text
        assert r.content == payload
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-worker"] == "python-pika"
        assert r.headers["x-seen-route"] == "echo"
        assert r.headers["x-seen-query"] == "lang=py"
        assert r.headers["x-seen-demo"] == "interop"
        assert r.headers["x-seen-request-id"] == r.headers["x-request-id"]
    finally:
        stack.stop()
