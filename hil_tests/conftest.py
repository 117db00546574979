"""Hardware-in-the-loop suite: `pytest hil_tests --target unix` (default), `--target qemu` or
`--target serial:/dev/ttyUSB0`.

The targets test a build: the unix target builds one (`meterveil build --sim`) unless `--build DIR`
names it; a board runs what `meterveil flash` put on it; qemu its frozen firmware. The broker is the pilot's: TLS with the
pilot CA and the meter's own login (the unix target generates a pilot workspace and runs its
mosquitto; a board uses `--config`, the config.json `meterveil provision` wrote for it, which also
holds the Wi-Fi settings unless --wifi-ssid/--wifi-password override them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from brokerutil import MOSQUITTO, Mosquitto, free_port, make_readable_by_broker  # noqa: E402
from target import make_target  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--target", default="unix",
                     help="unix (MicroPython unix port, default), qemu (the 32-bit `make qemu` firmware in "
                          "qemu-system-arm) or serial:PORT (a real board via mpremote)")
    parser.addoption("--build", default=None,
                     help="unix target: run this `meterveil build --sim` tree (default: build one now)")
    parser.addoption("--config", default=None,
                     help="serial targets: the meter's provisioned config.json (broker URL, login, CA, Wi-Fi)")
    parser.addoption("--wifi-ssid", default=None, help="serial targets: Wi-Fi network (else from --config)")
    parser.addoption("--wifi-password", default=os.environ.get("METERVEIL_WIFI_PASSWORD"),
                     help="serial targets: Wi-Fi password (else from --config; env METERVEIL_WIFI_PASSWORD)")
    parser.addoption("--subscriber", default=None, metavar="USER:PASSWORD_FILE",
                     help="serial targets: a broker login allowed to read meterveil/v1/# (e.g. the pilot's "
                          "gateway login), to check delivery end to end; without it the PUBACK is checked")
    parser.addoption("--reference-watts", type=float, default=1000.0,
                     help="the known resistive load on the CT during the sensing test (serial targets)")
    parser.addoption("--tolerance-pct", type=float, default=1.0,
                     help="allowed sensing error against the reference load, percent")


@pytest.fixture(scope="session")
def target(request, tmp_path_factory):
    spec = request.config.getoption("--target")
    build_dir = request.config.getoption("--build")
    if spec == "unix" and build_dir is None:
        from meterveil.tools.build import build
        build_dir = build(tmp_path_factory.mktemp("hil") / "build", sim=True).out
    t = make_target(spec, Path(build_dir) if build_dir else None)
    if t.name == "serial":
        t.enter_maintenance()
    yield t
    if t.name == "serial":
        t.restart_meter()
    if hasattr(t, "close"):
        t.close()


@pytest.fixture
def mosquitto(tmp_path):
    """A local plain mosquitto (tests that need no broker login)."""
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker


class PilotBroker:
    """Where and how the meter under test reaches its broker: the meter config's broker section."""

    def __init__(self, host: str, port: int, meter_cfg: dict, ca_der: Path | None, subscriber=None,
                 wifi_override: dict | None = None):
        self.host, self.port, self.cfg, self.ca_der = host, port, meter_cfg, ca_der
        self.subscriber = subscriber  # (username, password, ca_pem) or None
        self.wifi_override = wifi_override or {}  # serial: --wifi-ssid/--wifi-password given

    @property
    def meter_id(self) -> str:
        return self.cfg["meter_id"]


@pytest.fixture
def pilot_broker(request, target, tmp_path):
    """The pilot setup: TLS listener with the pilot CA, password file, per-meter ACL."""
    if target.name == "unix":
        yield from _local_pilot(tmp_path)
        return
    path = request.config.getoption("--config")
    if not path:
        pytest.fail("serial targets need --config: the meter's provisioned config.json")
    cfg = json.loads(Path(path).read_text())
    override = {k: v for k, v in (("ssid", request.config.getoption("--wifi-ssid")),
                                  ("password", request.config.getoption("--wifi-password"))) if v}
    if not (override.get("ssid") or (cfg.get("wifi") or {}).get("ssid")):
        pytest.fail("no Wi-Fi: give --wifi-ssid/--wifi-password or a config with a wifi section")
    ca = Path(path).parent / "ca.der"
    host, port = cfg["broker"]["url"].split("://", 1)[1].rsplit(":", 1)
    sub = None
    if request.config.getoption("--subscriber"):
        import ssl

        user, pw_file = request.config.getoption("--subscriber").split(":", 1)
        pem = tmp_path / "ca.pem"
        pem.write_text(ssl.DER_cert_to_PEM_cert(ca.read_bytes()))
        sub = (user, Path(pw_file).read_text().strip(), str(pem))
    yield PilotBroker(host, int(port), cfg, ca if ca.exists() else None, sub, override)


def _local_pilot(tmp_path: Path):
    from meterveil.tools.broker_config import generate
    from meterveil.tools.provision import MeterSpec, provision_one

    port = free_port()
    ws = generate(tmp_path / "ws", port=port, hostnames=["localhost"], bind="127.0.0.1").workspace
    provision_one(ws.root, MeterSpec("hil-pub", "F1", wifi_ssid="hil-net", wifi_password="unused-here"))
    cfg = json.loads(ws.meter_config("hil-pub").read_text())
    ca = ws.meter_config("hil-pub").parent / "ca.der"
    _hand_to_mosquitto_user(ws.broker_dir)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(ws.broker_conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "mosquitto did not start with the pilot config"
        sub = ("gateway", ws.gateway_password.read_text().strip(), str(ws.pki.ca_cert))
        yield PilotBroker("localhost", port, cfg, ca if ca.exists() else None, sub)
    finally:
        proc.terminate()
        proc.wait(10)


def _hand_to_mosquitto_user(broker_dir: Path) -> None:
    for dirpath, _d, files in os.walk(broker_dir):
        make_readable_by_broker(Path(dirpath))
        for f in files:
            make_readable_by_broker(Path(dirpath) / f)
