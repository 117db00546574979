"""Hardware-in-the-loop suite: `pytest hil_tests --target unix` (default), `--target qemu` or
`--target serial:/dev/ttyUSB0`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from brokerutil import Mosquitto  # noqa: E402
from target import make_target  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--target", default="unix",
                     help="unix (MicroPython unix port, default), qemu (the 32-bit `make qemu` firmware in "
                          "qemu-system-arm) or serial:PORT (a real board via mpremote)")
    parser.addoption("--broker", default=None,
                     help="HOST:PORT of a mosquitto the board can reach over its Wi-Fi (serial targets; "
                          "the unix target starts its own)")
    parser.addoption("--reference-watts", type=float, default=1000.0,
                     help="the known resistive load on the CT during the sensing test (serial targets)")
    parser.addoption("--tolerance-pct", type=float, default=1.0,
                     help="allowed sensing error against the reference load, percent")


@pytest.fixture(scope="session")
def target(request):
    t = make_target(request.config.getoption("--target"))
    yield t
    if hasattr(t, "close"):
        t.close()


@pytest.fixture
def mosquitto(tmp_path):
    """A local mosquitto for the unix target (a board uses --broker instead)."""
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker
