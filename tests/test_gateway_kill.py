"""SIGKILL the gateway process mid-burst, restart it: every frame stored exactly once, none lost.

Why it holds: the persistent MQTT v5 session keeps unacknowledged and new QoS 1 messages at the
broker, the gateway acks only after the SQLite commit, and (meter_id, counter) is unique.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from brokerutil import wait_until
from phe import paillier
from roles import split_keys

from meterveil.host.common import packing
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.protocol import frame

METERS = ("k01", "k02", "k03", "k04", "k05")
PER_METER = 100


def _rows(db: Path) -> int:
    try:
        c = sqlite3.connect(db, timeout=5)
        try:
            return c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        finally:
            c.close()
    except sqlite3.OperationalError:
        return 0


def _start_gateway(port: int, db: Path, keydir: Path, registry: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "meterveil.host.cli", "gateway", "--broker", f"mqtt://127.0.0.1:{port}",
           "--db", str(db), "--keys", str(keydir), "--registry", str(registry), "--client-id", "gw-kill-test",
           # full r^n encryption: the gateway is then clearly slower than the publisher, so the kill
           # lands with hundreds of messages queued or in flight
           "--encryption", "packed", "--batch-size", "32", "--batch-ms", "20"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def test_sigkill_mid_burst_loses_nothing_and_stores_nothing_twice(tmp_path, mosquitto):
    db, log, registry = tmp_path / "gw.db", tmp_path / "gw.log", tmp_path / "registry" / "meters.json"
    pub, priv = paillier.generate_paillier_keypair(n_length=1024)
    keydir, _role_dir = split_keys(tmp_path, pub, priv)  # the gateway gets the public key only
    reg = KeyedRegistry.load(keydir, registry)
    for i, mid in enumerate(METERS):
        reg.add(mid, feeder=f"F{i % 2}", epsilon_milli=1000, clamp_wh=1000, m=10)
    start0 = int(time.time()) // 900 * 900 - PER_METER * 900
    frames = []
    for c in range(PER_METER):
        for mid in METERS:
            rec = reg.get(mid)
            header = {"kind": frame.KIND_READING, "meter_id": mid, "counter": c + 1,
                      "interval_start": start0 + c * 900, "interval_len": 900, "epsilon_milli": 1000,
                      "clamp_wh": 1000, "m": 10}
            fields = {"billing_wh": 100 + c, "analytics_wh": c - 50, "flags": 0, "samples": 900,
                      "clipped": 0, "missing_s": 0}
            frames.append((frame.topic(mid, "reading"), frame.seal(frame.derive_keys(rec.key), header, fields)))
    assert len(frames) == 500

    gw = _start_gateway(mosquitto.port, db, keydir, registry, log)
    try:
        assert wait_until(lambda: b"gateway ready" in log.read_bytes() if log.exists() else False, 30, poll=0.005), log.read_text()
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kill-pub", protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", mosquitto.port)
        publisher.loop_start()
        infos: list[mqtt.MQTTMessageInfo] = []

        def burst() -> None:
            for t, p in frames:
                infos.append(publisher.publish(t, p, qos=1))

        th = threading.Thread(target=burst)
        th.start()
        assert wait_until(lambda: _rows(db) >= 200, 60, poll=0.005), log.read_text()
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        rows_at_kill = _rows(db)
        th.join(30)
        for i in infos:
            i.wait_for_publish(30)  # the broker has every frame (queued for the gateway's session)
        publisher.disconnect()
        publisher.loop_stop()
        assert 200 <= rows_at_kill < 500, f"kill did not land mid-burst: {rows_at_kill} rows"

        gw = _start_gateway(mosquitto.port, db, keydir, registry, log)
        assert wait_until(lambda: _rows(db) >= 500, 120, poll=0.005), log.read_text()[-3000:]
        time.sleep(0.5)  # let redelivered copies (committed before the kill, never acked) be processed
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)

    c = sqlite3.connect(db)
    assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 500
    assert c.execute("SELECT COUNT(DISTINCT meter_id || ':' || counter) FROM readings").fetchone()[0] == 500
    per_meter = dict(c.execute("SELECT meter_id, COUNT(*) FROM readings GROUP BY meter_id").fetchall())
    assert per_meter == dict.fromkeys(METERS, PER_METER)
    counters = dict(c.execute("SELECT reason, count FROM counters").fetchall())
    assert counters["accepted"] == 500
    assert set(counters) <= {"accepted", "duplicate"}, counters  # redeliveries only, no rejections
    # spot-check: stored ciphertexts decrypt to the published values
    ct = c.execute("SELECT ciphertext FROM readings WHERE meter_id='k03' AND counter=42").fetchone()[0]
    assert packing.unpack_sum(priv.raw_decrypt(int.from_bytes(ct, "big")), 1) == (141, -9)
    print(f"rows at kill: {rows_at_kill}, duplicates after restart: {counters.get('duplicate', 0)}",
          file=sys.stderr)
    assert os.path.getsize(db) > 0
