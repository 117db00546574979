"""`meterveil broker-config` output starts a real mosquitto that enforces TLS, passwords and the ACL."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokerutil import MOSQUITTO, free_port, make_readable_by_broker

from meterveil.host.cli.main import main as cli_main
from meterveil.tools import mqtt_auth
from meterveil.tools.broker_config import generate
from meterveil.tools.workspace import Workspace


def hand_to_broker_user(ws: Workspace) -> None:
    """What the printed chown note tells a root operator to do (mosquitto drops to user mosquitto)."""
    for dirpath, _dirs, files in os.walk(ws.broker_dir.resolve()):
        make_readable_by_broker(Path(dirpath))
        for f in files:
            make_readable_by_broker(Path(dirpath) / f)


class Broker:
    def __init__(self, conf: Path, port: int):
        self.port = port
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def client(port: int, ca: Path, user: str, password: str, on_message=None) -> tuple[mqtt.Client, object]:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}")
    c.tls_set(ca_certs=str(ca))
    c.username_pw_set(user, password)
    result: dict[str, object] = {}
    ready = threading.Event()

    def on_connect(cl, ud, flags, rc, props):
        result["rc"] = rc
        ready.set()

    c.on_connect = on_connect
    if on_message:
        c.on_message = on_message
    c.connect("localhost", port, keepalive=10)
    c.loop_start()
    assert ready.wait(5), "no CONNACK"
    return c, result["rc"]


@pytest.fixture
def pilot(tmp_path):
    port = free_port()
    cfg = generate(tmp_path / "ws", port=port, hostnames=["gw.example"], bind="127.0.0.1")
    ws = cfg.workspace
    pw = {m: mqtt_auth.new_password() for m in ("m0001", "m0002")}
    for m, p in pw.items():
        mqtt_auth.set_password(ws.passwd, m, p)
    mqtt_auth.write_acl(ws.acl, "gateway", list(pw))
    hand_to_broker_user(ws)
    broker = Broker(ws.broker_conf, port)
    yield ws, port, pw
    broker.stop()


def test_files_and_modes(tmp_path):
    cfg = generate(tmp_path / "ws", port=free_port(), hostnames=["gw.example"])
    ws = cfg.workspace
    for secret in (ws.passwd, ws.gateway_password, ws.pki.ca_key, ws.pki.server_key):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600, secret
    conf = ws.broker_conf.read_text()
    for needle in ("allow_anonymous false", "password_file", "acl_file", "persistence true",
                   "certfile", "keyfile", "cafile", "log_dest file"):
        assert needle in conf, needle
    assert "pattern write meterveil/v1/%u/#" in ws.acl.read_text()
    info = json.loads(ws.broker_info.read_text())
    assert info["host"] == "gw.example" and info["tls"] is True


def test_our_password_hash_matches_mosquitto_passwd(tmp_path):
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd missing: apt-get install mosquitto")
    f = tmp_path / "pw"
    f.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(f), "alice", "s3cret"], check=True)
    hashed = mqtt_auth.read_passwd(f)["alice"]
    assert mqtt_auth.check_password("s3cret", hashed)
    assert not mqtt_auth.check_password("wrong", hashed)


def test_rerun_keeps_gateway_password_and_meter_acl(tmp_path):
    ws = generate(tmp_path / "ws", port=18883).workspace
    mqtt_auth.set_password(ws.passwd, "m0009", "x")
    mqtt_auth.write_acl(ws.acl, "gateway", ["m0009"])
    before = ws.gateway_password.read_text()
    generate(tmp_path / "ws", port=18884)
    assert ws.gateway_password.read_text() == before
    assert mqtt_auth.check_password(before.strip(), mqtt_auth.read_passwd(ws.passwd)["gateway"])
    assert mqtt_auth.acl_meters(ws.acl) == ["m0009"]
    assert "m0009" in mqtt_auth.read_passwd(ws.passwd)
    assert json.loads(ws.broker_info.read_text())["port"] == 18884


def test_generated_broker_enforces_acl(pilot):
    ws, port, pw = pilot
    ca = ws.pki.ca_cert
    gw_pw = ws.gateway_password.read_text().strip()
    got: list[tuple[str, bytes]] = []
    gw, rc = client(port, ca, "gateway", gw_pw, on_message=lambda c, u, m: got.append((m.topic, m.payload)))
    assert rc == 0
    gw.subscribe("meterveil/v1/#", qos=1)
    time.sleep(0.3)

    meter, rc = client(port, ca, "m0001", pw["m0001"])
    assert rc == 0
    meter.publish("meterveil/v1/m0002/reading", b"forged", qos=1).wait_for_publish(5)
    meter.publish("meterveil/v1/m0001/reading", b"own", qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # give a (wrongly) forwarded forgery time to arrive too
    assert got == [("meterveil/v1/m0001/reading", b"own")]

    # A meter cannot read other meters' readings.
    spy_got: list[bytes] = []
    spy, rc = client(port, ca, "m0002", pw["m0002"], on_message=lambda c, u, m: spy_got.append(m.payload))
    spy.subscribe("meterveil/v1/#", qos=1)
    time.sleep(0.3)
    meter.publish("meterveil/v1/m0001/reading", b"second", qos=1).wait_for_publish(5)
    time.sleep(0.5)
    assert spy_got == [] and got[-1] == ("meterveil/v1/m0001/reading", b"second")

    bad, rc = client(port, ca, "m0001", "wrong-password")
    assert rc != 0 and rc.is_failure
    for c in (gw, meter, spy, bad):
        c.loop_stop()
        c.disconnect()


def test_cli_prints_start_and_chown_instructions(tmp_path, capsys):
    assert cli_main(["broker-config", "--workspace", str(tmp_path / "ws"), "--port", "18883",
                     "--hostname", "gw.lan"]) == 0
    out = capsys.readouterr().out
    assert f"mosquitto -c {(tmp_path / 'ws' / 'broker' / 'mosquitto.conf').resolve()}" in out
    assert "chown -R mosquitto:" in out and "mqtts://gw.lan:18883" in out
    assert "meterveil gateway --broker mqtts://gw.lan:18883 --tls-ca" in out


def test_cli_rejects_bad_port(tmp_path, capsys):
    assert cli_main(["broker-config", "--workspace", str(tmp_path / "ws"), "--port", "70000"]) == 1
    assert "--port 70000" in capsys.readouterr().err
