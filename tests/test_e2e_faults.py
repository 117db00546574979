"""Fault tests end to end (issue 5 item 3), every part real and in its own process.

Real mosquitto (tests/brokerutil.py), the real gateway (`meterveil gateway`, MQTT v5 persistent
session, acks after the SQLite commit) as a subprocess, 8 real firmware meters on the MicroPython
unix port (workspace provisioned by host/demo/setup.py: keys, registry, household profiles,
configs), one simulated day at 15-minute intervals on an accelerated clock, then the real
`meterveil bill` CLI. In one run, each triggered by progress (TRUTH lines), never by wall time:

1. meter CUT is cut off: its `<storage>/netcut` flag is set and its broker connection is taken
   over (a client with its client id connects; mosquitto drops the meter, which cannot reconnect
   while the flag exists), for 6 simulated hours; then the flag is removed;
2. mosquitto is restarted (graceful stop + start, persistence kept) while CUT is still cut off;
3. the gateway is killed with SIGKILL, meters keep publishing (the broker queues for the gateway's
   session), the gateway is restarted with the same client id and the same database;
4. meter KILL is killed with SIGKILL between two readings (so mid-interval, or inside the seal)
   and restarted with the same storage.

At the end: every (meter, interval) a meter reported in a TRUTH line is stored exactly once, under
the counter of that TRUTH line, and nothing else is stored except (precisely) a reading that the
SIGKILL cut off between its outbox append and its TRUTH line (read back from the killed meter's
outbox on disk); the gateway counted no rejection; every bill of the real CLI equals a bill
computed here from the TRUTH energies with a 3-band ToU tariff (own band lookup, Decimal, half up
per line), to the paisa. In E2E mode the gateway runs with a key file holding each meter's MAC key
and status key only (checked before it starts): what it stores, the decryption role bills exactly.
"""

from __future__ import annotations

import binascii
import csv
import json
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import pytest
from roles import assert_no_value_keys

from meterveil.host.backoffice.tariff import DEFAULT_TARIFF
from meterveil.host.common.pubkey import secret_keys_in
from meterveil.host.demo.firmware_runner import EXIT_OK, MeterProcess, build_firmware
from meterveil.host.demo.setup import DemoConfig, provision, write_meter_configs
from meterveil.host.gateway.meter_keys import KEYS_NAME
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, SCHEME_PACKED_V1
from meterveil.protocol import e2e, frame, household, opener

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

METERS = 8
INTERVALS = 96          # one simulated day of 15-minute readings per meter
SPEED = 1800            # simulated seconds per real second: one interval every 0.5 s
BLOCK_S = 10            # sparse sampling: two mains cycles stand for 10 s (divides the 60 s profile step)
CUT, KILL = "m0004", "m0003"
CUT_HOURS = 6
GW_CLIENT_ID = "e2e-faults-gateway"
TARIFF = tomllib.loads(DEFAULT_TARIFF.read_text())
TZ = ZoneInfo(TARIFF["timezone"])
FLAG_PARTIAL = frame.FLAG_PARTIAL_INTERVAL
WAIT = 180.0            # generous per-step timeout (progress-driven; a slow machine only waits longer)

def _start_day() -> date:
    """A Monday-to-Thursday (all three bands occur) at least 6 days ago: the clock may run ahead of
    the planned day after restarts (it is paced at SPEED), and the gateway refuses future intervals;"""
    d = datetime.now(TZ).date() - timedelta(days=6)
    # ... and the run (a day, plus what a rebooted meter adds) stays in one billing month: a reading
    # spilling into the next month would make every meter billed there without readings of its own.
    while d.weekday() > 3 or (d + timedelta(days=2)).month != d.month:
        d -= timedelta(days=1)
    return d


# -- small helpers -------------------------------------------------------------------------------

def _wait(pred, timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _sealed(meter: MeterProcess) -> int:
    with meter._cond:
        return sum(1 for line in meter.lines if line.startswith("TRUTH "))


def _store_rows(db: Path) -> int:
    try:
        c = sqlite3.connect(db, timeout=5)
        try:
            return c.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        finally:
            c.close()
    except sqlite3.OperationalError:  # not created yet, or locked for longer than the timeout
        return -1


def _outbox_records(storage: Path) -> list[bytes]:
    """Every complete record on flash, oldest first (format: docs/FIRMWARE.md "Outbox format").
    A segment's scan stops at the first short or CRC-failing record, as the meter's boot scan does."""
    out = []
    for seg in sorted((storage / "outbox").glob("s*.log")):
        data, off = seg.read_bytes(), 0
        while off + 6 <= len(data):
            n, crc = struct.unpack_from("<HI", data, off)
            body = data[off + 6:off + 6 + n]
            if len(body) != n or binascii.crc32(body, binascii.crc32(data[off:off + 2])) != crc:
                break
            out.append(body)
            off += 6 + n
    return out


class GatewayProc:
    """`meterveil gateway` as a subprocess; 'gateway ready' lines in its log count subscriptions."""

    def __init__(self, url: str, db: Path, keys_dir: Path, registry: Path, log: Path):
        self.cmd = [sys.executable, "-m", "meterveil.host.cli", "gateway", "--broker", url, "--db", str(db),
                    "--keys", str(keys_dir), "--registry", str(registry), "--client-id", GW_CLIENT_ID, "--batch-ms", "50"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def ready_count(self) -> int:
        return self.log.read_bytes().count(b"gateway ready") if self.log.exists() else 0

    def start(self) -> None:
        before = self.ready_count()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=logf)
        self.wait_ready(before)

    def wait_ready(self, before: int) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return self.ready_count() > before
        _wait(ready, what="the gateway to subscribe")

    def sigkill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "gateway died before the kill"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _take_over(port: int, client_id: str) -> None:
    """Connect with a meter's client id: the broker closes the meter's connection (session takeover)."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                    clean_session=True)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        _wait(c.is_connected, 30, "the take-over connection")
    finally:
        c.disconnect()
        c.loop_stop()


# -- independent bill ------------------------------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _as_list(v) -> list[str]:
    return v if isinstance(v, list) else [v]


def _day_in(spec: str, day: int) -> bool:
    if spec == "all":
        return True
    if "-" in spec:
        a, b = (_DAYS.index(x) for x in spec.split("-"))
        return a <= day <= b if a <= b else (day >= a or day <= b)
    return _DAYS.index(spec) == day


def _band(t: int) -> str:
    """The band of an interval = the band of its start in the tariff's local time (docs/TARIFFS.md)."""
    local = datetime.fromtimestamp(t, TZ)
    hits = [b["name"] for b in TARIFF["bands"] for w in b["windows"]
            if any(_day_in(d, local.weekday()) for d in _as_list(w["days"]))
            and any(int(h[:2]) <= local.hour < int(h[3:]) for h in _as_list(w["hours"]))]
    assert len(hits) == 1, (local, hits)
    return hits[0]


def _expected_bills(energy: dict[tuple[str, int], int]) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """(meter, period) -> {band: (wh, amount_minor)} plus FIXED and TOTAL, straight from the energies."""
    price = {b["name"]: Decimal(str(b["price_minor_per_kwh"])) for b in TARIFF["bands"]}
    wh: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(price, 0))
    for (mid, t), e in energy.items():
        period = datetime.fromtimestamp(t, TZ).strftime("%Y-%m")
        wh[(mid, period)][_band(t)] += e
    out = {}
    for key, per_band in wh.items():
        lines = {}
        for band, w in per_band.items():
            amount = (Decimal(w) * price[band] / 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            lines[band] = (w, int(amount))
        fixed = int(TARIFF.get("fixed_charge_minor", 0))
        lines["TOTAL"] = (sum(per_band.values()), fixed + sum(a for _, a in lines.values()))
        lines["FIXED"] = (0, fixed)
        out[key] = lines
    return out


# -- the run ---------------------------------------------------------------------------------------

def _open_record(mode: str, plan, rec: bytes) -> tuple[dict, dict] | None:
    """(header, fields with billing_wh) of an outbox reading, or None for other kinds. In E2E mode the
    value comes from the household copy, opened with the household's card (no utility key opens it)."""
    mk = frame.derive_keys(plan.key)
    if mode == "proxy":
        msg = opener.open_frame(mk, rec, topic_meter=plan.meter_id)
        return (msg["header"], msg["fields"]) if msg["header"]["kind"] == frame.KIND_READING else None
    h = opener.parse_header(rec)
    if h["kind"] != frame.KIND_READING_PAILLIER:
        return None
    h = opener.verify_frame(mk[1], rec, plan.meter_id)
    _meta, _c, copy = opener.split_e2e(rec, h["body_len"])
    fields = household.open_copy(e2e.household_keys(plan.household_key), copy, plan.meter_id, h["counter"],
                                 h["interval_start"], h["interval_len"])
    return h, fields


# E2E mode runs with a 1024-bit utility key: the faults do not depend on the key size, and meters that
# spend 8x less CPU per obfuscator keep the run (8 meters x 96+ readings, 2 cores) within CI time.
@pytest.mark.parametrize("mode", ["proxy", "e2e"])
def test_faults_end_to_end(tmp_path, mosquitto, mode):
    t_begin = time.monotonic()
    cfg = DemoConfig(meters=METERS, feeders=1, days=2, start=_start_day(), start_hour=0, block_s=BLOCK_S,
                     out=tmp_path / "out", progress=False, mode=mode,  # days=2: room after restarts
                     key_bits=2048 if mode == "proxy" else 1024)
    ws = provision(cfg, tmp_path / "ws", with_passwords=False)
    write_meter_configs(ws, cfg, mosquitto.url, SPEED)
    plans = {p.meter_id: p for p in ws.meters}
    for p in ws.meters:  # fast reconnects: network timers are real time, the default backoff is 60 s
        conf = json.loads(p.config.read_text())
        conf["broker"].update(keepalive_s=30, backoff_min_ms=100, backoff_max_ms=1000, ack_timeout_ms=3000)
        p.config.write_text(json.dumps(conf, indent=1))
    # The decryption role's secret key never lives next to the gateway's keys, nor a household key.
    assert secret_keys_in(ws.keys_dir) == [] and secret_keys_in(ws.role_dir)
    gateway_files = b"".join(p.read_bytes() for d in (ws.keys_dir, ws.registry.parent) for p in d.iterdir())
    assert all(p.household_key.hex().encode() not in gateway_files for p in ws.meters if p.household_key)
    if mode == "e2e":  # the gateway below runs with MAC and status keys only: no master key, no household key
        assert_no_value_keys(ws.keys_dir, {p.meter_id: (p.key, p.household_key) for p in ws.meters})
    build_firmware()

    gw = GatewayProc(mosquitto.url, ws.db, ws.keys_dir, ws.registry, tmp_path / "gateway.log")
    meters: dict[str, list[MeterProcess]] = {}
    orphans: dict[tuple[str, int], dict] = {}  # sealed + durable, TRUTH line cut off by the SIGKILL

    def launch(mid: str, intervals: int) -> MeterProcess:
        p = plans[mid]
        m = MeterProcess(p.config, p.dir / "state", intervals=intervals, drain_timeout=120,
                         log_path=tmp_path / f"{mid}.log")
        meters.setdefault(mid, []).append(m.start())
        return m

    def sealed(mid: str) -> int:
        return sum(_sealed(m) for m in meters[mid])

    def truth(mid: str) -> list[dict]:
        return [t for m in meters[mid] for t in m.truth()]

    def progress(mid: str, n: int, what: str) -> None:
        def ok() -> bool:
            cur = meters[mid][-1]
            assert cur.running or cur.returncode == EXIT_OK or sealed(mid) >= n, cur.output[-2000:]
            return sealed(mid) >= n
        _wait(ok, what=f"{mid}: {n} readings ({what})")

    def all_progress(n: int, what: str) -> None:
        for mid in plans:
            if mid != CUT:
                progress(mid, n, what)

    def still_running(mid: str, what: str) -> None:
        assert meters[mid][-1].running and sealed(mid) < INTERVALS - 4, \
            f"{what}: {mid} finished before the fault could land (machine too slow for SPEED={SPEED})"

    try:
        gw.start()  # before the meters: the broker queues for the gateway's session only once it exists
        for mid in plans:
            launch(mid, INTERVALS)
        timeline = {}

        # (1) CUT loses its network for CUT_HOURS simulated hours.
        progress(CUT, 8, "before the cut")
        still_running(CUT, "cut")
        netcut = plans[CUT].dir / "state" / "netcut"
        netcut.write_text("")
        _take_over(mosquitto.port, CUT)
        cut_at = sealed(CUT)
        timeline["cut"] = cut_at

        # (2) broker restart while readings flow (and CUT is still off the network).
        all_progress(cut_at + 4, "before the broker restart")
        still_running(KILL, "broker restart")
        ready = gw.ready_count()
        mosquitto.restart()
        timeline["broker_restart"] = min(sealed(m) for m in plans)
        gw.wait_ready(ready)  # paho reconnected and resubscribed on the persisted session

        # CUT reconnects after CUT_HOURS; its outbox must have held the backlog meanwhile.
        progress(CUT, cut_at + 4 * CUT_HOURS, "readings while cut off")
        depth = max(s["outbox_depth"] for s in meters[CUT][-1].tagged("STATUS")
                    if s["counter"] > truth(CUT)[cut_at - 1]["counter"])
        assert depth >= 4 * CUT_HOURS - 4, f"{CUT} was not cut off: outbox depth {depth}"
        netcut.unlink()
        timeline["reconnect"] = sealed(CUT)

        # (3) gateway SIGKILL; readings keep being sealed and published meanwhile; restart.
        n = min(sealed(m) for m in plans) + 2
        all_progress(n, "before the gateway kill")
        still_running(KILL, "gateway kill")
        gw.sigkill()
        rows_at_kill = _store_rows(ws.db)
        all_progress(n + 6, "while the gateway is down")
        assert _store_rows(ws.db) == rows_at_kill
        gw.start()
        timeline["gateway_kill"] = n

        # (4) KILL gets SIGKILL between two readings, i.e. mid-interval (or inside the seal).
        n = sealed(KILL) + 2
        progress(KILL, n, "before the meter kill")
        still_running(KILL, "meter kill")
        # Not a correctness wait: places the kill a few simulated minutes into the interval (at
        # pace) rather than right after the seal; any point between two readings is a valid test.
        time.sleep(0.2)
        killed = meters[KILL][-1]
        killed.kill()
        before = truth(KILL)
        last_counter = max(t["counter"] for t in before)
        # A reading appended to the outbox (durable) whose TRUTH line the kill cut off: the meter
        # sends it after the restart, so the test takes its value from the sealed record itself.
        by_counter = {t["counter"]: t for t in before}
        if mode == "e2e":  # obfuscators kept for the reboot (fewer than 2: one was being computed)
            timeline["obfuscators_on_flash_at_kill"] = len(list((plans[KILL].dir / "state").glob("obf[01]")))
        for rec in _outbox_records(plans[KILL].dir / "state"):
            opened = _open_record(mode, plans[KILL], rec)
            if opened is None:
                continue
            h, fields = opened
            if h["counter"] > last_counter:
                orphans[(KILL, h["interval_start"])] = {"counter": h["counter"], **fields}
            else:  # the reader agrees with the TRUTH lines on everything they both saw
                t = by_counter[h["counter"]]
                assert (h["interval_start"], fields["billing_wh"]) == (t["interval_start"], t["energy_wh"])
        assert len(orphans) <= 1, orphans
        launch(KILL, INTERVALS - len(before) - len(orphans))
        timeline["meter_kill"] = len(before)

        # Everyone finishes: each meter exits 0 once its outbox is drained to the broker.
        for mid, runs in meters.items():
            rc = runs[-1].wait(WAIT + 120)
            assert rc == EXIT_OK, f"{mid} exited {rc}:\n{runs[-1].output[-2000:]}"
        truth_all = {mid: truth(mid) for mid in plans}
        want = sum(len(v) for v in truth_all.values()) + len(orphans)
        _wait(lambda: _store_rows(ws.db) >= want, what=f"{want} readings in the store (gateway log:\n{gw.tail()})")
        assert gw.stop() == 0, gw.tail()
    finally:
        for runs in meters.values():
            for m in runs:
                if m.running:
                    m.kill()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(10)
    run_s = time.monotonic() - t_begin

    # -- exactly once ---------------------------------------------------------------------------
    c = sqlite3.connect(ws.db)
    try:
        rows = c.execute("SELECT meter_id, interval_start, counter, flags FROM readings").fetchall()
        counters = dict(c.execute("SELECT reason, count FROM counters").fetchall())
    finally:
        c.close()
    per_interval = Counter((m, t) for m, t, _, _ in rows)
    assert max(per_interval.values()) == 1, [k for k, v in per_interval.items() if v > 1][:5]
    assert len({(m, n) for m, _, n, _ in rows}) == len(rows)
    stored = {(m, t): n for m, t, n, _ in rows}
    reported = {(mid, t["interval_start"]): t["counter"] for mid, ts in truth_all.items() for t in ts}
    assert len(reported) == sum(len(v) for v in truth_all.values()), "a meter reported an interval twice"
    expect = {**reported, **{k: v["counter"] for k, v in orphans.items()}}
    assert set(stored) - set(expect) == set(), "stored readings no meter sealed"
    assert set(expect) - set(stored) == set(), "sealed readings never stored"
    assert stored == expect, "stored under another counter than the meter sealed"

    # Every meter covered the day; the fault meters only lost what a real meter would.
    iv = 900
    t0 = int(ws.start.timestamp())
    for mid in plans:
        starts = sorted(t for (m, t) in expect if m == mid)
        assert starts[0] == t0, mid
        if mid != KILL:  # no reboot: every interval of the day, once, in order
            assert starts == [t0 + k * iv for k in range(INTERVALS)], mid
    k_before = [t["interval_start"] for t in truth_all[KILL][:timeline["meter_kill"]]]
    k_after = [t for t in truth_all[KILL][timeline["meter_kill"]:]]
    assert k_after and k_after[0]["interval_start"] > max(k_before + [t for (_, t) in orphans])
    # A reading with missing seconds (the reboot's first, unless it started on a boundary) is flagged.
    assert all(t["flags"] & FLAG_PARTIAL for t in k_after if t["missing_s"])

    # -- gateway counters -----------------------------------------------------------------------
    stats = json.loads(subprocess.run(
        [sys.executable, "-m", "meterveil.host.cli", "stats", "--db", str(ws.db)],
        capture_output=True, text=True, check=True).stdout)
    assert stats["rejected_total"] == 0, stats["rejected"]
    assert set(counters) <= {"accepted", "duplicate", "status", "status_superseded"}, counters
    assert stats["accepted"] == stats["readings"] == len(expect)
    c = sqlite3.connect(ws.db)
    try:
        schemes = {r[0] for r in c.execute("SELECT scheme FROM readings")}
    finally:
        c.close()
    assert schemes == {SCHEME_PACKED_V1 if mode == "proxy" else SCHEME_PACKED_E2E_V1}
    # Status frames: each one a meter sealed is counted once, at most one more per boot (a last
    # will the broker published before a newer status was stored) and one sealed without its
    # STATUS line by the SIGKILL; the latest stored is each meter's last (the final runs end cleanly).
    n_status = sum(len(m.tagged("STATUS")) for runs in meters.values() for m in runs)
    boots = sum(len(runs) for runs in meters.values())
    assert n_status <= stats["status"] <= n_status + boots + 1, (n_status, stats)
    c = sqlite3.connect(ws.db)
    try:
        latest = dict(c.execute("SELECT meter_id, counter FROM meter_status").fetchall())
    finally:
        c.close()
    assert latest == {mid: max(s["counter"] for m in runs for s in m.tagged("STATUS"))
                      for mid, runs in meters.items()}

    # -- bills: the real CLI vs. an independent computation from the TRUTH energies -------------
    energy = {(mid, t["interval_start"]): int(t["energy_wh"]) for mid, ts in truth_all.items() for t in ts}
    energy.update({k: int(v["billing_wh"]) for k, v in orphans.items()})
    expected = _expected_bills(energy)
    bands = {b["name"] for b in TARIFF["bands"]}
    used = set()
    # The decryption role bills without any meter key: the gateway's key file is not even there.
    (ws.keys_dir / KEYS_NAME).rename(tmp_path / "meter-keys.away.json")
    for period in sorted({p for _, p in expected}):
        out = tmp_path / f"bills-{period}.csv"
        res = subprocess.run(
            [sys.executable, "-m", "meterveil.host.cli", "bill", "--db", str(ws.db),
             "--role-dir", str(ws.role_dir), "--registry", str(ws.registry), "--tariff", str(DEFAULT_TARIFF),
             "--period", period, "--out", str(out), "--actor", "e2e-test"],
            capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        got: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        for r in csv.DictReader(out.open()):
            assert r["period"] == period
            got[r["meter_id"]][r["band"]] = (int(r["wh"] or 0), int(r["amount_minor"]))
        assert set(got) == set(plans), period
        for mid in plans:
            lines = expected.get((mid, period))
            assert lines is not None, f"{mid} billed for {period} without any TRUTH reading in it"
            assert set(got[mid]) == bands | {"FIXED", "TOTAL"}, got[mid].keys()
            for band in bands:
                assert got[mid][band] == lines[band], (mid, period, band)
                used |= {band} if lines[band][0] else set()
            assert got[mid]["FIXED"][1] == lines["FIXED"][1]
            assert got[mid]["TOTAL"] == lines["TOTAL"], (mid, period)
    assert used == bands, "the run did not cross all three bands"
    audit = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "audit", "verify", "--db",
                            str(ws.role_dir / "decryption.db")],
                           capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    print(f"e2e faults ({mode}): {len(expect)} readings, {len(orphans)} sealed without TRUTH line, "
          f"duplicates {stats['duplicate']}, status {stats['status']}, superseded {stats['status_superseded']}, "
          f"timeline {timeline}, {run_s:.1f} s", file=sys.stderr)
