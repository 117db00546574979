"""`meterveil demo` end to end: real MicroPython meters, embedded broker, gateway, decryption role.

One small run (10 meters, 2 feeders, 8 simulated hours on a weekday from 06:00, so the interval
crosses shoulder and peak bands) shared by the assertions below; a second test interrupts a run
with SIGINT and checks that no meter process survives.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meterveil.host.backoffice.tariff import DEFAULT_TARIFF
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.demo.run import run_demo
from meterveil.host.demo.setup import DemoConfig
from meterveil.host.store.base import open_store

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

METERS, FEEDERS, HOURS, START_HOUR = 14, 2, 8, 6  # 7 homes per feeder: 6 honest with gamma 0.2
TZ = ZoneInfo(tomllib.loads(DEFAULT_TARIFF.read_text())["timezone"])


def _recent_weekday() -> date:
    """The last Monday-to-Thursday of the previous month: in the past for the gateway, and in a
    month that has ended, so its closing bill runs (interim bills stop at cut dates)."""
    d = datetime.now(TZ).date().replace(day=1) - timedelta(days=1)
    while d.weekday() > 3:
        d -= timedelta(days=1)
    return d


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-out")
    cfg = DemoConfig(meters=METERS, feeders=FEEDERS, days=HOURS / 24, start=_recent_weekday(),
                     start_hour=START_HOUR, out=out, progress=False, timeout_s=600,
                     min_band_readings=1)  # an 8-hour run; the per-band floor is tested in test_billing
    result = run_demo(cfg)
    return cfg, result, out


def _truth(out: Path) -> dict[tuple[str, int], int]:
    lines = (out / "truth.csv").read_text().splitlines()
    assert lines[0].startswith("#") and "SIMULATION ONLY" in lines[0]
    rows = csv.DictReader(line for line in lines if not line.startswith("#"))
    return {(r["meter_id"], int(r["interval_start"])): int(r["energy_wh"]) for r in rows}


def test_all_outputs_written(demo):
    _, result, out = demo
    for name in ("bills.csv", "feeder_load.csv", "truth.csv", "stats.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    stats = json.loads((out / "stats.json").read_text())
    assert stats["accepted"] == METERS * HOURS * 4
    assert stats["rejected_total"] == 0
    assert result.readings == result.expected == METERS * HOURS * 4


def test_every_file_the_demo_writes_is_owner_only(demo):
    """Attack run: bills, feeder loads and the report were 0644. Every file of a run (outputs, the
    simulated truth and profiles, meter logs that print readings, keys, store, audit log) is 0600."""
    _, _, out = demo
    loose = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.stat().st_mode & 0o077)
    assert loose == []


def test_every_interval_of_every_meter_stored_exactly_once(demo):
    cfg, result, out = demo
    store = open_store(result.workspace / "store.sqlite")
    try:
        rows = list(store.iter_readings())
    finally:
        store.close()
    per_interval = Counter((r.meter_id, r.interval_start) for r in rows)
    per_counter = Counter((r.meter_id, r.counter) for r in rows)
    t0 = int(datetime(cfg.start.year, cfg.start.month, cfg.start.day, START_HOUR, tzinfo=TZ).timestamp())
    want = {(f"m{i + 1:04d}", t0 + k * 900) for i in range(METERS) for k in range(HOURS * 4)}
    assert set(per_interval) == want
    assert max(per_interval.values()) == 1 and max(per_counter.values()) == 1
    assert set(_truth(out)) == want
    # Only ciphertexts at rest: no plaintext energy column in the store.
    assert all(r.ciphertext > 2**64 for r in rows)


def _band_of(t: int, bands: list[dict]) -> str:
    """Independent reading of the TOML windows: local weekday and hour of the interval start."""
    local = datetime.fromtimestamp(t, TZ)
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    day, hour = names[local.weekday()], local.hour
    for band in bands:
        for w in band["windows"]:
            days = w["days"] if isinstance(w["days"], list) else [w["days"]]
            hours = w["hours"] if isinstance(w["hours"], list) else [w["hours"]]
            day_ok = False
            for d in days:
                if d == "all":
                    day_ok = True
                elif "-" in d:
                    a, b = (names.index(x) for x in d.split("-"))
                    day_ok |= a <= names.index(day) <= b
                else:
                    day_ok |= d == day
            if day_ok and any(int(h.split("-")[0]) <= hour < int(h.split("-")[1]) for h in hours):
                return band["name"]
    raise AssertionError(f"no band for {local}")


def test_bills_match_truth_to_the_minor_unit(demo):
    _, _, out = demo
    tariff = tomllib.loads(DEFAULT_TARIFF.read_text())
    price = {b["name"]: Decimal(b["price_minor_per_kwh"]) for b in tariff["bands"]}
    band_wh: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (mid, t), wh in _truth(out).items():
        band_wh[mid][_band_of(t, tariff["bands"])] += wh
    bills = list(csv.DictReader((out / "bills.csv").open()))
    assert {r["meter_id"] for r in bills} == set(band_wh)
    used = set()
    for mid, per_band in band_wh.items():
        expect_total = tariff["fixed_charge_minor"]
        rows = {r["band"]: r for r in bills if r["meter_id"] == mid}
        for band, p in price.items():
            wh = per_band.get(band, 0)
            amount = int((Decimal(wh) * p / 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            assert int(rows[band]["wh"]) == wh, (mid, band)
            assert int(rows[band]["amount_minor"]) == amount, (mid, band)
            expect_total += amount
            if wh:
                used.add(band)
        assert int(rows["TOTAL"]["amount_minor"]) == expect_total, mid
        assert int(rows["TOTAL"]["wh"]) == sum(per_band.values())
    assert used >= {"peak", "shoulder"}  # the run really crossed band boundaries


def test_feeder_load_contributors_and_true_sums(demo):
    _, result, out = demo
    registry = MeterRegistry.load(result.workspace / "registry" / "meters.json")
    feeder_of = {m: registry.get(m).feeder for m in registry.ids()}
    truth = _truth(out)
    size = Counter(feeder_of.values())
    true_sum: dict[tuple[str, int], int] = defaultdict(int)
    for (mid, t), wh in truth.items():
        true_sum[(feeder_of[mid], t - t % 3600)] += wh  # released hourly: the hour's four intervals
    rows = list(csv.DictReader((out / "feeder_load.csv").open()))
    hours = {t - t % 3600 for _, t in truth}  # UTC hours: 06:00 IST is half past a UTC hour
    assert len(rows) == FEEDERS * len(hours) and len(hours) in (HOURS, HOURS + 1)
    for r in rows:
        key = (r["feeder"], int(r["interval_start"]))
        assert int(r["contributors"]) == size[r["feeder"]]
        assert int(r["true_sum_wh"]) == true_sum[key]
        assert r["status"] == "ok" and r["dp_sum_wh"] != ""
    # The DP sums are noisy, not copies of the truth.
    assert sum(int(r["dp_sum_wh"]) != int(r["true_sum_wh"]) for r in rows) > len(rows) // 2


def test_report_embeds_plots_and_bill_table(demo):
    _, _, out = demo
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for i in range(METERS):
        assert f"m{i + 1:04d}" in html
    assert "epsilon" in html and "clamp_wh" in html


def _meter_pids(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "micropython" in cmd:
                pids.append(int(d))
    return pids


def test_sigint_stops_every_meter(tmp_path):
    out = tmp_path / "out"
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "meterveil.host.cli", "demo", "--meters", "6", "--feeders", "1",
           "--days", "3", "--speed", "2000", "--out", str(out), "--workspace", str(ws), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_meter_pids(str(ws))) < 6:  # wait until the fleet is up
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "meters did not start"
            time.sleep(0.1)
        assert len(_meter_pids(str(ws))) == 6
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert _meter_pids(str(ws)) == []


def test_truth_cross_check_names_a_meter_whose_bill_differs():
    from meterveil.host.backoffice.tariff import load_tariff
    from meterveil.host.demo.outputs import bill_mismatches, bills_from_truth

    tariff = load_tariff(Path(__file__).resolve().parents[1] / "tariffs" / "tou3.toml")
    lo, _ = tariff.period_bounds("2026-11")
    truth = {(m, lo + i * 900): 40 + i % 7 for m in ("m1", "m2") for i in range(96)}
    good = bills_from_truth(tariff, truth, ["2026-11"])
    assert bill_mismatches(good, bills_from_truth(tariff, dict(truth), ["2026-11"])) == []
    truth[("m2", lo + 50 * 900)] += 1  # one Wh more in one interval
    assert bill_mismatches(good, bills_from_truth(tariff, truth, ["2026-11"])) == ["m2 2026-11"]
