"""Two gateway workers on one PostgreSQL behind an MQTT v5 shared subscription; one is SIGKILLed
mid-batch while meters publish. Every interval is stored exactly once and the bills equal the truth.

Real parts: mosquitto, two `meterveil gateway --db postgresql://... --share-group` processes, a
throwaway PostgreSQL cluster, the real `meterveil bill` CLI reading the same database.

Why it holds: each worker acks only after its commit; the killed worker's persistent session keeps
what it had not acked, and it gets it again when restarted (as a service manager would), so
nothing is lost; the database is the arbiter for everything seen twice: a redelivered frame
(committed, never acked), a replayed copy landing on the other worker, and a cloned meter's two
readings for one interval sent to both workers at once: (meter, counter) is a primary key and
intervals of a meter an exclusion constraint, so exactly one copy is stored.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg
from brokerutil import wait_until
from phe import paillier
from roles import split_keys

from meterveil.host.backoffice.tariff import load_tariff
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.protocol import frame

METERS = [f"w{i:02d}" for i in range(8)]
INTERVALS = 64           # per meter
CLONES = 12              # intervals for which a cloned meter sends a second reading (other counter)
TARIFF = Path(__file__).resolve().parents[1] / "tariffs" / "flat.toml"


def _day_to_bill(tz: ZoneInfo) -> tuple[int, str]:
    """Midnight (local) of the 10th of last month, and that month: closed for billing, and less than
    the gateway's 62-day limit in the past."""
    now = datetime.now(tz)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    prev = (first - timedelta(days=1)).replace(day=10)
    return int(prev.timestamp()), prev.strftime("%Y-%m")


class Worker:
    def __init__(self, name: str, port: int, url: str, keys: Path, registry: Path, log: Path):
        self.cmd = [sys.executable, "-m", "meterveil.host.cli", "gateway", "--broker", f"mqtt://127.0.0.1:{port}",
                    "--db", url, "--keys", str(keys), "--registry", str(registry), "--client-id", name,
                    "--share-group", "ingest",
                    # full r^n encryption: slower than the publisher, so batches are in flight at the kill
                    "--encryption", "packed", "--batch-size", "16", "--batch-ms", "20"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def ready(self) -> int:
        return self.log.read_bytes().count(b"gateway ready") if self.log.exists() else 0

    def start(self) -> None:
        before = self.ready()
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=f)
        assert wait_until(lambda: self.ready() > before or self.proc.poll() is not None, 60, poll=0.01)
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _rows(url: str) -> int:
    with psycopg.connect(url) as c:
        return c.execute("SELECT COUNT(*) FROM reading_keys").fetchone()[0]


def test_two_workers_one_sigkilled_mid_batch_store_each_interval_once_and_bill_right(tmp_path, mosquitto, pg_url):
    tariff = load_tariff(TARIFF)
    t0, period = _day_to_bill(tariff.tz)
    pub, priv = paillier.generate_paillier_keypair(n_length=1024)
    keydir, role_dir = split_keys(tmp_path, pub, priv)
    registry = tmp_path / "registry" / "meters.json"
    reg = KeyedRegistry.load(keydir, registry)
    for i, mid in enumerate(METERS):
        reg.add(mid, feeder=f"F{i % 2}", epsilon_milli=1000, clamp_wh=1000, m=2)

    def sealed(mid: str, counter: int, start: int, wh: int) -> tuple[str, bytes]:
        header = {"kind": frame.KIND_READING, "meter_id": mid, "counter": counter, "interval_start": start,
                  "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 2}
        fields = {"billing_wh": wh, "analytics_wh": wh // 2, "flags": 0, "samples": 900, "clipped": 0,
                  "missing_s": 0}
        return frame.topic(mid, "reading"), frame.seal(frame.derive_keys(reg.get(mid).key), header, fields)

    truth: dict[tuple[str, int], int] = {}
    frames: list[tuple[str, bytes]] = []
    genuine: list[tuple[str, bytes]] = []  # the frames of the meters themselves (no clone's)
    for c in range(INTERVALS):
        for k, mid in enumerate(METERS):
            start, wh = t0 + c * 900, 20 + (7 * c + 13 * k) % 180
            truth[(mid, start)] = wh
            frames.append(sealed(mid, c + 1, start, wh))
            genuine.append(frames[-1])
            if mid == METERS[0] and c % (INTERVALS // CLONES) == 0 and c // (INTERVALS // CLONES) < CLONES:
                # a clone: same interval, another counter, sent right after: one of the two is stored
                frames.append(sealed(mid, 10_000 + c, start, wh))
    # exact copies of early frames of meters without a clone, sent again at the end (no dup flag)
    replays = [f for f in genuine[:48] if f"/{METERS[0]}/" not in f[0]][::3]

    workers = [Worker(n, mosquitto.port, pg_url, keydir, registry, tmp_path / f"{n}.log") for n in ("gw-a", "gw-b")]
    for w in workers:
        w.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meters", protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    infos: list[mqtt.MQTTMessageInfo] = []

    def publish_all(items) -> None:
        for t, p in items:
            infos.append(publisher.publish(t, p, qos=1))
            time.sleep(0.002)  # meters publish over time, not in one burst

    try:
        th = threading.Thread(target=publish_all, args=(frames,))
        th.start()
        assert wait_until(lambda: _rows(pg_url) >= len(truth) // 4, 120, poll=0.01), workers[0].log.read_text()
        workers[0].proc.send_signal(signal.SIGKILL)
        assert workers[0].proc.wait(10) == -signal.SIGKILL
        rows_at_kill = _rows(pg_url)
        th.join(120)
        for i in infos:
            i.wait_for_publish(60)
        assert rows_at_kill < len(truth), "the kill landed after everything was stored"
        workers[0].start()  # restarted with the same client id: its session still holds what it never acked
        publish_all(replays)
        for i in infos:
            i.wait_for_publish(60)
        assert wait_until(lambda: _rows(pg_url) >= len(truth), 180, poll=0.05), workers[1].log.read_text()[-3000:]

        def settled() -> bool:
            with psycopg.connect(pg_url) as c:
                n = c.execute("SELECT COALESCE(SUM(count), 0) FROM counters WHERE reason IN "
                              "('accepted', 'interval_overlap', 'duplicate')").fetchone()[0]
            return n >= len(frames) + len(replays)

        assert wait_until(settled, 60, poll=0.05)
        time.sleep(0.5)  # redeliveries still in flight are counted too, not only the expected minimum
        for w in workers:
            assert w.stop() == 0
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        for w in workers:
            if w.proc and w.proc.poll() is None:
                w.proc.kill()

    with psycopg.connect(pg_url) as c:
        stored = c.execute("SELECT meter_id, interval_start, COUNT(*) FROM readings GROUP BY 1, 2").fetchall()
        counters = dict(c.execute("SELECT reason, SUM(count)::bigint FROM counters GROUP BY reason").fetchall())
        assert c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == len(truth)
    assert {(m, t) for m, t, _ in stored} == set(truth) and {n for _, _, n in stored} == {1}
    assert counters["accepted"] == len(truth)
    # the clone's second reading, whichever worker got it; a rejection is counted per delivery, so a
    # loser committed by the killed worker but never acked is counted again when redelivered
    assert CLONES <= counters["interval_overlap"] <= 2 * CLONES
    assert counters["duplicate"] >= len(replays)  # replays, plus what the killed worker had not acked
    assert set(counters) <= {"accepted", "duplicate", "interval_overlap"}, counters

    # bills from the same database by the decryption role (no meter keys there) equal the truth
    reg_plain = MeterRegistry.load(registry)
    out = tmp_path / "bills.csv"
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "bill", "--db", pg_url, "--role-dir",
                          str(role_dir), "--registry", str(reg_plain.path), "--tariff", str(TARIFF),
                          "--period", period, "--out", str(out), "--actor", "ops"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    totals = {r["meter_id"]: r for r in csv.DictReader(out.open()) if r["band"] == "TOTAL"}
    price = tariff.bands[0].price
    for mid in METERS:
        wh = sum(v for (m, _), v in truth.items() if m == mid)
        amount = (Decimal(wh) * price / 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP) + tariff.fixed_charge_minor
        assert Decimal(totals[mid]["kwh"]) * 1000 == wh, mid
        assert int(totals[mid]["amount_minor"]) == amount, mid
    print(f"workers: rows at kill {rows_at_kill}, counters {counters}", file=sys.stderr)


def test_ack_latency_histogram_percentiles_and_merge():
    from meterveil.host.gateway.mqtt import LatencyHistogram

    h = LatencyHistogram()
    for i in range(1, 1001):
        h.add(i / 1000)  # 1 ms .. 1 s
    s = h.summary()
    assert s["n"] == 1000 and s["max"] == 1000.0
    assert 500 <= s["p50"] <= 500 * 1.26 and 990 <= s["p99"] <= 1000
    assert sum(s["buckets"].values()) == 1000


def test_a_stopped_worker_leaves_the_group_and_the_other_gets_everything(tmp_path, mosquitto, pg_url):
    """SIGTERM (a scale-down, a rolling restart) must not leave the worker's persistent session in the
    share group: the broker would keep queueing its share of new readings for a session nobody reads
    until it expires. The stopping worker unsubscribes, finishes what it was sent, then disconnects."""
    pub, priv = paillier.generate_paillier_keypair(n_length=1024)
    keydir, _ = split_keys(tmp_path, pub, priv)
    registry = tmp_path / "registry" / "meters.json"
    reg = KeyedRegistry.load(keydir, registry)
    for mid in METERS:
        reg.add(mid, feeder="F0", epsilon_milli=1000, clamp_wh=1000, m=2)
    t0 = int(time.time()) // 900 * 900 - 40 * 900
    frames = []
    for c in range(24):
        for mid in METERS:
            header = {"kind": frame.KIND_READING, "meter_id": mid, "counter": c + 1, "interval_start": t0 + c * 900,
                      "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 2}
            fields = {"billing_wh": 50, "analytics_wh": 25, "flags": 0, "samples": 900, "clipped": 0, "missing_s": 0}
            frames.append((frame.topic(mid, "reading"), frame.seal(frame.derive_keys(reg.get(mid).key), header, fields)))
    workers = [Worker(n, mosquitto.port, pg_url, keydir, registry, tmp_path / f"{n}.log") for n in ("gw-a", "gw-b")]
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meters", protocol=mqtt.MQTTv5)
    try:
        for w in workers:
            w.start()
        assert workers[0].stop() == 0
        assert "left share group" in workers[0].log.read_text(), workers[0].log.read_text()[-2000:]
        publisher.connect("127.0.0.1", mosquitto.port)
        publisher.loop_start()
        for i in [publisher.publish(t, p, qos=1) for t, p in frames]:
            i.wait_for_publish(60)
        # every reading reaches the worker still running; none waits in the stopped worker's session
        assert wait_until(lambda: _rows(pg_url) >= len(frames), 60, poll=0.05), (
            f"{_rows(pg_url)} of {len(frames)} stored\n" + workers[1].log.read_text()[-2000:])
        assert workers[1].stop() == 0
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        for w in workers:
            if w.proc and w.proc.poll() is None:
                w.proc.kill()
