"""`meterveil loadgen` against a real mosquitto and a real gateway: every frame it seals is accepted
(MAC, ranges, DP parameters all pass), the report is the gateway's own counters, and a second run
over the same intervals (fresh IVs, so other bytes under stored counters) is rejected as counter
reuse, stores nothing twice, and says so in its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brokerutil import wait_until
from phe import paillier
from roles import split_keys

from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.loadgen.frames import MeterSpec, billing_wh, sealed_frames
from meterveil.host.store.base import open_store
from meterveil.protocol import frame, opener


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meterveil.host.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_frames_are_sealed_with_each_meters_key_in_time_order():
    specs = [MeterSpec(f"lg{i:06d}", bytes([i + 1]) * 32, 1000, 1000, 10) for i in range(5)]
    chunks = list(sealed_frames(specs, 900 * 1000, 3, processes=2, chunk_meters=2))
    flat = [f for c in chunks for f in c]
    assert len(flat) == 15
    starts = []
    for (topic, payload), spec in zip(flat, specs * 3, strict=True):
        assert topic == frame.topic(spec.meter_id, "reading")
        opened = opener.open_frame(frame.derive_keys(spec.key), payload, topic_meter=spec.meter_id)
        h, f = opened["header"], opened["fields"]
        assert h["counter"] == h["interval_start"] // 900 and f["billing_wh"] == billing_wh(spec.meter_id, h["interval_start"])
        starts.append(h["interval_start"])
    assert starts == sorted(starts)


def test_loadgen_through_a_real_gateway(tmp_path, mosquitto):
    pub, priv = paillier.generate_paillier_keypair(n_length=1024)
    keydir, _ = split_keys(tmp_path, pub, priv)
    registry, db = tmp_path / "registry" / "meters.json", tmp_path / "gw.db"
    KeyedRegistry.load(keydir, registry).save()
    common = ["--broker", mosquitto.url, "--keys", str(keydir), "--registry", str(registry)]
    first = _cli("loadgen", "--meters", "12", "--days", "0.001", *common, "--register", "--quiet")  # registers only
    assert first.returncode == 0, first.stderr
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "meterveil.host.cli", "gateway", "--db", str(db), *common,
                           "--client-id", "lg-test-gw"], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        assert wait_until(lambda: b"gateway ready" in log.read_bytes(), 60), log.read_text()
        args = ["loadgen", "--meters", "12", "--days", "0.25", "--rate", "3000", "--db", str(db), *common]
        run1 = _cli(*args)
        assert run1.returncode == 0, run1.stderr
        r1 = json.loads(run1.stdout)
        assert r1["published"] == 12 * 24 and r1["settled"]
        assert (r1["accepted"], r1["duplicate"], r1["rejected_total"]) == (12 * 24, 0, 0), r1
        assert "publish" in run1.stderr and "100%" in run1.stderr  # the progress report
        r2 = json.loads(_cli(*args, "--quiet").stdout)  # the same intervals again
        assert (r2["accepted"], r2["rejected"]) == (0, {"counter_reuse": 12 * 24}), r2
    finally:
        gw.terminate()
        gw.wait(30)
    store = open_store(db, create=False)
    try:
        assert store.count_readings() == 12 * 24 and len(store.meters()) == 12
    finally:
        store.close()


def test_loadgen_refuses_bad_arguments(tmp_path):
    base = ["--broker", "mqtt://127.0.0.1:1", "--keys", str(tmp_path), "--registry", str(tmp_path / "m.json")]
    res = _cli("loadgen", "--meters", "5", "--days", "90", *base)
    assert res.returncode == 1 and "stale" in res.stderr
    res = _cli("loadgen", "--meters", "5", *base)
    assert res.returncode == 1 and "only 0 meters registered" in res.stderr
    assert not Path(tmp_path / "m.json").exists()
