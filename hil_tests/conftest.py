"""Hardware-in-the-loop suite: `pytest hil_tests --target unix` (default) or `--target serial:/dev/ttyUSB0`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from target import make_target  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--target", default="unix",
                     help="unix (MicroPython unix port, default) or serial:PORT (a real board via mpremote)")


@pytest.fixture(scope="session")
def target(request):
    return make_target(request.config.getoption("--target"))
