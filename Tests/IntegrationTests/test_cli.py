"""gangway check, topology apply and the refusal to start on bad files."""
import os
import re
import shutil
import socket
import subprocess

from harness import gangway_bin


def run(*args, env=None):
    return subprocess.run([gangway_bin(), *args], capture_output=True, text=True, env=env, timeout=60)


def test_version_names_the_release_and_the_wire_contract():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"gangway \d+\.\d+\.\d+ \(wire contract v1\)\n", r.stdout), r.stdout


def test_check_accepts_the_shipped_files():
    r = run("check", "--routes", "topology/routes.yaml", "--topology", "topology/definitions.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok:")


def test_check_reports_every_mistake_with_file_and_line(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "version: 1\n"
        "routes:\n"
        "  - method: GIT\n"
        "    path: /v1/a\n"
        "    routing_key: demo.echo\n"
        "  - method: GET\n"
        "    path: /v1/b/{id\n"
        "    routing_key: demo.echo\n"
        "    timeout: soon\n"
    )
    r = run("check", "--routes", str(routes), "--topology", "topology/definitions.json")
    assert r.returncode != 0
    assert f"{routes}:3:" in r.stderr and "GIT" in r.stderr
    assert f"{routes}:7:" in r.stderr
    assert f"{routes}:9:" in r.stderr and "soon" in r.stderr
    assert "3 problems" in r.stderr


def test_edge_refuses_to_start_on_an_invalid_file(tmp_path):
    bad = tmp_path / "definitions.json"
    bad.write_text('{"exchanges": [{"name": "x", "type": "sideways"}]}')
    r = run("edge", "--routes", "topology/routes.yaml", "--topology", str(bad), "--port", "0")
    assert r.returncode != 0
    assert "sideways" in r.stderr


def test_edge_explains_a_port_it_cannot_listen_on():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The broker need not be there: the edge listens first and fails at once.
        r = run("edge", "--port", str(port), "--amqp-url", "amqp://localhost:1/")
    assert r.returncode != 0
    assert f"cannot listen on 0.0.0.0:{port}: another process is listening on that port" in r.stderr, r.stderr
    r = run("edge", "--port", "0", "--host", "192.0.2.1", "--amqp-url", "amqp://localhost:1/")
    assert r.returncode != 0
    assert "cannot listen on 192.0.2.1:0: 192.0.2.1 is not an address of this machine" in r.stderr, r.stderr


def test_topology_apply_is_idempotent_and_matches_import_definitions(broker):
    for _ in range(2):
        r = run("topology", "apply", "--amqp-url", broker.url, "--topology", "topology/definitions.json")
        assert r.returncode == 0, r.stderr
    queues = broker.ctl("list_queues", "name", "--quiet", "--no-table-headers").stdout.split()
    assert "demo.echo" in queues and "demo.time" in queues
    # The same file is valid for RabbitMQ's own importer.
    copy = os.path.join(broker.dir, "definitions.json")
    shutil.copy("topology/definitions.json", copy)
    os.chmod(copy, 0o644)
    imported = broker.ctl("import_definitions", copy, check=False)
    assert imported.returncode == 0, imported.stderr


def test_topology_apply_explains_an_unreachable_broker():
    r = run("topology", "apply", "--amqp-url", "amqp://localhost:1/", "--timeout", "2")
    assert r.returncode != 0
    assert "could not connect" in r.stderr


def test_worker_flags_out_of_range_are_refused_with_a_reason():
    for flags, reason in ((["--prefetch", "0"], "--prefetch must be at least 1"),
                          (["--shutdown-timeout", "0"], "--shutdown-timeout must be more than 0"),
                          (["--shutdown-timeout=-3"], "--shutdown-timeout must be more than 0"),
                          (["--handler-start", "inline"], "provide one of 'immediate' and 'task'")):
        r = run("worker", "echo", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", *flags)
        assert r.returncode != 0, flags
        assert reason in r.stderr, (flags, r.stderr)


def test_edge_flags_out_of_range_are_refused_with_a_reason():
    for flags, reason in ((["--idle-timeout=-1"], "--idle-timeout must be 0 (never) or a number of seconds up to 86400, got -1"),
                          (["--idle-timeout", "100000"], "--idle-timeout must be 0 (never)")):
        r = run("edge", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "--port", "0", *flags)
        assert r.returncode != 0, flags
        assert reason in r.stderr, (flags, r.stderr)


def test_a_broker_url_whose_tls_settings_cannot_work_is_refused_at_start(tmp_path):
    # Each of these would connect in plain text, without the client certificate, or retry
    # forever on a file that is not there: every command that connects refuses it at once.
    ca = tmp_path / "ca.pem"
    ca.write_text("not looked at before the connection\n")
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x\n")
    unreadable.chmod(0)
    cases = [
        (f"amqps://localhost:1/?cacertfile={tmp_path}/missing.pem",
         f"invalid AMQP URL: cacertfile {tmp_path}/missing.pem: there is no such file"),
        (f"amqps://localhost:1/?cacertfile={tmp_path}",
         f"invalid AMQP URL: cacertfile {tmp_path}: it is a directory"),
        (f"amqps://localhost:1/?cacertfile={ca}&certfile={ca}",
         "invalid AMQP URL: certfile needs keyfile too: the client certificate's private key"),
        (f"amqp://localhost:1/?cacertfile={ca}",
         "invalid AMQP URL: 'cacertfile' is a TLS option, but 'amqp://' connects without TLS: use amqps://"),
    ]
    if os.geteuid() != 0:  # root reads any file
        cases.append((f"amqps://localhost:1/?cacertfile={unreadable}",
                      f"invalid AMQP URL: cacertfile {unreadable}: it cannot be read"))
    for url, reason in cases:
        for command in (["edge", "--port", "0"], ["worker", "echo"], ["topology", "apply"]):
            r = run(*command, "--amqp-url", url)
            assert r.returncode != 0, (command, url)
            assert reason in r.stderr, (command, url, r.stderr)
    # The environment variable is checked the same way.
    env = dict(os.environ, GANGWAY_AMQP_URL=cases[0][0])
    r = run("edge", "--port", "0", env=env)
    assert r.returncode != 0 and cases[0][1] in r.stderr, r.stderr
