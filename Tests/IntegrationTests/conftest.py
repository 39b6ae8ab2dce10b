import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Broker, Stack  # noqa: E402


@pytest.fixture(scope="session")
def broker():
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture
def own_broker():
    """A broker for one test alone, for tests that stop, freeze or restart it."""
    b = Broker().start()
    yield b
    # A test that failed while the broker was frozen (SIGSTOP) leaves it so: stop would hang.
    subprocess.run(["kill", "-CONT", str(b.pid())], check=False)
    b.stop()


@pytest.fixture
def stack(broker, tmp_path):
    s = Stack(broker, tmp_path)
    yield s
    s.stop()
