"""Firmware MQTT client: exact bytes on both runtimes, and against a real mosquitto (auth, will)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brokerutil import wait_until
from fwutil import MASTER_KEY, Subscriber, meter_config

from meterveil.host.demo import firmware_runner as fr
from meterveil.protocol import frame

sys.path.insert(0, str(fr.FIRMWARE))
from meter import mqtt  # noqa: E402  (imports on CPython too)

EXPECTED = {
    # CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "m1"
    "connect": "100e00044d5154540402003c00026d31",
    # + will (QoS 1) topic "t" msg "x", username "u", password "p": flags 0xce
    "connect_full": "101a00044d515454" "04ce003c" "00026d31" "000174" "000178" "000175" "000170",
    # PUBLISH QoS 1 + DUP, topic "a/b", pid 10, 3-byte payload follows
    "publish_dup": "3a0a" "0003612f62" "000a",
    "varlen200": "c801",
    "varlen16384": "808001",
}


def _cpython_encodings() -> dict:
    buf = bytearray(384)
    out = {}
    n = mqtt.encode_connect(buf, "m1", 60)
    out["connect"] = bytes(buf[:n]).hex()
    n = mqtt.encode_connect(buf, "m1", 60, "u", "p", "t", b"x")
    out["connect_full"] = bytes(buf[:n]).hex()
    n = mqtt.encode_publish(buf, "a/b", 3, 10, 1, True)
    out["publish_dup"] = bytes(buf[:n]).hex()
    out["varlen200"] = bytes(buf[:mqtt.put_varlen(buf, 0, 200)]).hex()
    out["varlen16384"] = bytes(buf[:mqtt.put_varlen(buf, 0, 16384)]).hex()
    return out


def test_exact_bytes_cpython():
    got = _cpython_encodings()
    for k, v in EXPECTED.items():
        assert got[k] == v, k
    assert mqtt.parse_packet(b"\x40\x02\x00\x0a") == (0x40, 0, b"\x00\x0a", 4)
    assert mqtt.parse_packet(b"\x40\x02\x00") is None


def test_exact_bytes_unix_port():
    res = subprocess.run([fr.micropython_binary(), str(Path(__file__).parent / "mpy" / "mqtt_bytes.py")],
                         capture_output=True, text=True, env=fr.firmware_env(), timeout=60)
    assert res.returncode == 0, res.stdout
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for k, v in EXPECTED.items():
        assert got[k] == v, k
    assert got["puback"] == [0x40, 0, "000a", 4]
    assert got["partial"] is True
    assert got["refused"] == ["refused", True]
    assert got["url"] == [["h", 8884, True], ["h", 1883, False], None]


def test_backoff_bounds_and_jitter():
    from meter.publisher import backoff_ms
    assert backoff_ms(0, 500, 60000, 0) == 250 and backoff_ms(0, 500, 60000, 65535) == 500
    assert backoff_ms(30, 500, 60000, 65535) == 60000
    assert len({backoff_ms(5, 500, 60000, r) for r in range(0, 65536, 4096)}) > 10


def test_auth_acl_and_last_will(tmp_path, mosquitto_factory):
    """Password + ACL broker; the meter publishes with its credentials; SIGKILL fires the will."""
    acl = "user sub\ntopic read meterveil/#\npattern write meterveil/v1/%u/#\n"
    broker = mosquitto_factory(passwords={"m0007": "pw7", "sub": "subpw"}, acl=acl).start()
    sub = Subscriber(broker.port, username="sub", password="subpw")
    cfg = meter_config(tmp_path, broker.url, meter_id="m0007",
                       broker={"username": "m0007", "password": "pw7"}, status_every=2)
    meter = fr.MeterProcess(cfg, tmp_path / "state")
    meter.start()
    assert meter.wait_for(lambda lines: sum(x.startswith("TRUTH ") for x in lines) >= 3, 60)
    assert sub.wait_count(lambda msgs: len(msgs) >= 3, 30)
    meter.kill()
    # The broker publishes the will (a status frame sealed at the first connect attempt, so the lowest
    # counter of this boot) on the status topic.
    first = min(t["counter"] for t in meter.truth())
    assert sub.wait_count(lambda msgs: any(int.from_bytes(m[1][20:24], "big") < first for m in msgs), 30)
    msgs = sub.decoded()
    will = [m for m in msgs if m["header"]["counter"] < first]
    assert will and will[0]["topic"] == "meterveil/v1/m0007/status"
    assert will[0]["header"]["kind"] == frame.KIND_STATUS
    readings = [m for m in msgs if m["header"]["kind"] == frame.KIND_READING]
    assert readings and all(m["topic"] == "meterveil/v1/m0007/reading" for m in readings)
    assert frame.derive_keys(MASTER_KEY)  # frames opened with the provisioned key above
    sub.close()


def test_wrong_password_is_retried_not_fatal(tmp_path, mosquitto_factory):
    broker = mosquitto_factory(passwords={"m0008": "right"}).start()
    cfg = meter_config(tmp_path, broker.url, meter_id="m0008",
                       broker={"username": "m0008", "password": "wrong"})
    meter = fr.MeterProcess(cfg, tmp_path / "state", log_path=tmp_path / "m.log")
    meter.start()
    assert meter.wait_for(lambda lines: sum("mqtt: MQTTError('refused" in x for x in lines) >= 2, 60), meter.output
    assert meter.running  # keeps measuring and retrying with backoff; readings stay in the outbox
    meter.kill()


class FakeBroker:
    """A TCP endpoint that misbehaves like real infrastructure: `eof` closes every connection after
    reading the CONNECT (a proxy in front of a restarting broker); `blackhole` answers CONNACK,
    then swallows everything (a half-open link: NAT timeout, dead Wi-Fi AP)."""

    def __init__(self, mode: str):
        import socket
        import threading

        self.mode = mode
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        try:
            conn.recv(4096)  # the CONNECT
            if self.mode == "eof":
                conn.close()
                return
            conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))  # CONNACK accepted
            while conn.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


def test_broker_closing_during_connect_is_retried(tmp_path):
    """EOF while waiting for CONNACK must not end the publisher task (it once did, silently)."""
    fake = FakeBroker("eof")
    try:
        cfg = meter_config(tmp_path, f"mqtt://127.0.0.1:{fake.port}")
        meter = fr.MeterProcess(cfg, tmp_path / "state", log_path=tmp_path / "m.log").start()
        assert wait_until(lambda: fake.connections >= 3, 30), meter.output[-1500:]
        assert meter.running and "EOFError" in meter.output
        meter.kill()
    finally:
        fake.close()


def test_half_open_link_with_messages_in_flight_reconnects(tmp_path):
    """No PUBACK and no packet at all for a keepalive period while messages are in flight: the
    link is dead even though retransmissions keep going out, so the meter reconnects."""
    fake = FakeBroker("blackhole")
    try:
        cfg = meter_config(tmp_path, f"mqtt://127.0.0.1:{fake.port}",
                           broker={"keepalive_s": 5, "ack_timeout_ms": 1000})
        meter = fr.MeterProcess(cfg, tmp_path / "state", log_path=tmp_path / "m.log").start()
        assert wait_until(lambda: fake.connections >= 2, 40), meter.output[-1500:]
        assert "no PUBACK for a keepalive period" in meter.output
        meter.kill()
    finally:
        fake.close()
