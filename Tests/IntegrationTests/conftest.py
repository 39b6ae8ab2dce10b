import os
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
def stack(broker, tmp_path):
    s = Stack(broker, tmp_path)
    yield s
    s.stop()
