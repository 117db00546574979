"""`meterveil broker-config` output starts a real mosquitto that enforces TLS, passwords and the ACL."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import pytest
from brokerutil import free_port, subscribe_and_wait, tls_client, wait_until

from meterveil.host.cli.main import main as cli_main
from meterveil.protocol import frame
from meterveil.tools import broker_config, mqtt_auth
from meterveil.tools.broker_config import generate


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
    ws, port, pw = pilot.ws, pilot.port, pilot.pw
    ca = ws.pki.ca_cert
    gw_pw = ws.gateway_password.read_text().strip()
    got: list[tuple[str, bytes]] = []
    gw, rc = tls_client(port, ca, "gateway", gw_pw, on_message=lambda c, u, m: got.append((m.topic, m.payload)))
    assert rc == 0
    subscribe_and_wait(gw, "meterveil/v1/#")

    meter, rc = tls_client(port, ca, "m0001", pw["m0001"])
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
    spy, rc = tls_client(port, ca, "m0002", pw["m0002"], on_message=lambda c, u, m: spy_got.append(m.payload))
    spy.subscribe("meterveil/v1/#", qos=1)
    time.sleep(0.3)
    meter.publish("meterveil/v1/m0001/reading", b"second", qos=1).wait_for_publish(5)
    time.sleep(0.5)
    assert spy_got == [] and got[-1] == ("meterveil/v1/m0001/reading", b"second")

    bad, rc = tls_client(port, ca, "m0001", "wrong-password")
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


def _conf(ws) -> dict[str, list[str]]:
    """The generated mosquitto.conf as {option: [values]} (what mosquitto itself reads)."""
    out: dict[str, list[str]] = {}
    for line in ws.broker_conf.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def _largest_v1_frames() -> list[bytes]:
    keys = frame.derive_keys(bytes(32))
    head = {"meter_id": "m" * 16, "counter": 2**32 - 1, "interval_start": 2**32 - 1, "interval_len": 3600,
            "epsilon_milli": 65535, "clamp_wh": 2**32 - 1, "m": 65535}
    reading = {"billing_wh": 2**32 - 1, "analytics_wh": -(2**31), "flags": 65535, "samples": 2**32 - 1,
               "clipped": 65535, "missing_s": 65535}
    status = {k: 65535 for k in frame.STATUS_KEYS} | {"fw_version": (255, 255, 255)}
    return [frame.seal(keys, {**head, "kind": frame.KIND_READING}, reading),
            frame.seal(keys, {**head, "kind": frame.KIND_STATUS}, status)]


def test_generated_config_binds_client_ids_caps_payloads_refuses_retain_and_persists(tmp_path):
    """Attack run: a meter login took over the gateway's client id, published 5 MB, and a retained frame
    came back at every gateway restart. Each point is a line of the generated config."""
    ws = generate(tmp_path / "ws", port=free_port(), hostnames=["gw.example"]).workspace
    conf = _conf(ws)
    assert conf["use_username_as_clientid"] == ["true"]
    assert conf["retain_available"] == ["false"]
    assert conf["persistence"] == ["true"] and conf["persistence_location"][0].startswith(str(ws.broker_dir.resolve()))
    limit = int(conf["message_size_limit"][0])
    assert limit == broker_config.message_size_limit()
    # every valid frame fits: the largest v1 frames, and the end-to-end frame assumed (two 3072-bit ciphertexts)
    assert all(len(f) <= limit for f in _largest_v1_frames())
    assert broker_config.largest_frame() <= limit < 2 * broker_config.largest_frame()
    assert broker_config.largest_frame() >= 40 + 16 + 2 * (2 * 3072 // 8) + 16
    assert limit < 5_000_000


def test_ca_private_key_is_outside_the_folder_handed_to_the_broker(tmp_path):
    """Attack run: the documented `chown -R mosquitto:` of the broker folder handed the broker's user the
    CA private key (it can mint a server certificate every meter trusts)."""
    ws = generate(tmp_path / "ws", port=free_port()).workspace
    broker = ws.broker_dir.resolve()
    assert broker not in ws.pki.ca_key.resolve().parents
    for f in broker.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes() or f == ws.pki.server_key.resolve(), f
    assert stat.S_IMODE(os.stat(ws.ca_key_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ws.pki.ca_key).st_mode) == 0o600


def test_rerun_moves_a_ca_key_left_in_the_broker_folder(tmp_path):
    ws = generate(tmp_path / "ws", port=free_port()).workspace
    ca_cert = ws.pki.ca_cert.read_bytes()
    os.replace(ws.pki.ca_key, ws.legacy_ca_key)  # a workspace from before the move
    generate(tmp_path / "ws", port=free_port())
    assert not ws.legacy_ca_key.exists() and ws.pki.ca_key.exists()
    assert ws.pki.ca_cert.read_bytes() == ca_cert  # same CA: meters keep trusting the broker


def _as_broker_user_can_read(path) -> bool:
    """Whether user `mosquitto` (what a root-started broker runs as) can open `path`."""
    r = subprocess.run(["cat", str(path)], user="mosquitto", capture_output=True, cwd="/")
    return r.returncode == 0


def test_generated_broker_refuses_oversize_and_retained_keeps_queue_and_not_the_ca_key(pilot):
    ws, port, pw, ca = pilot.ws, pilot.port, pilot.pw, pilot.ca
    if os.geteuid() == 0:
        assert not _as_broker_user_can_read(ws.pki.ca_key)
        assert _as_broker_user_can_read(ws.pki.server_key)  # it can still read what it needs
    else:
        assert os.stat(ws.pki.ca_key).st_uid == os.getuid()
    limit = broker_config.message_size_limit()
    got: list[tuple[str, int, bool]] = []

    def on_message(c, u, m):
        got.append((m.topic, len(m.payload), bool(m.retain)))

    def stop(*clients):
        for c in clients:
            c.disconnect()
            c.loop_stop()

    # Logins are client ids on this broker: each step below uses an account's one session in turn.
    gw, rc = tls_client(port, ca, "gateway", pilot.gateway_password, on_message, clean=False)
    subscribe_and_wait(gw, "meterveil/v1/#")
    t = "meterveil/v1/m0001/reading"
    meter, rc = tls_client(port, ca, "m0001", pw["m0001"])
    meter.publish(t, bytes(limit), qos=1).wait_for_publish(5)
    assert wait_until(lambda: got, 5)
    stop(meter)
    for size in (limit + 1, 5_000_000):  # mosquitto discards them (3.1.1: after a PUBACK)
        big, rc = tls_client(port, ca, "m0001", pw["m0001"])
        big.publish(t, bytes(size), qos=1)
        time.sleep(0.5)
        stop(big)
    assert got == [(t, limit, False)]  # the oversize ones never reach the gateway

    # retained: refused (mosquitto closes the publisher's connection), never kept for later subscribers
    meter2, rc = tls_client(port, ca, "m0002", pw["m0002"])
    meter2.publish("meterveil/v1/m0002/reading", b"retained", qos=1, retain=True)
    time.sleep(0.5)
    stop(meter2, gw)
    late: list[bytes] = []
    sub, rc = tls_client(port, ca, "gateway", pilot.gateway_password, lambda c, u, m: late.append(m.payload))
    subscribe_and_wait(sub, "meterveil/v1/#")
    time.sleep(0.5)  # a retained message would be delivered right after the SUBACK
    stop(sub)
    assert late == [] and got == [(t, limit, False)]

    # persistence: a frame queued for the disconnected gateway survives a broker restart
    gw, rc = tls_client(port, ca, "gateway", pilot.gateway_password, on_message, clean=False)
    subscribe_and_wait(gw, "meterveil/v1/#")
    stop(gw)
    meter, rc = tls_client(port, ca, "m0001", pw["m0001"])
    meter.publish(t, b"queued", qos=1).wait_for_publish(5)
    stop(meter)
    pilot.restart()
    got.clear()
    gw, rc = tls_client(port, ca, "gateway", pilot.gateway_password, on_message, clean=False)
    assert wait_until(lambda: got, 5)
    assert got == [(t, len(b"queued"), False)]
    stop(gw)
