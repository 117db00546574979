"""After ingest: run the decryption role for bills and feeder loads, write the demo's CSV/JSON files
(0600, like the decryption role's own outputs: bills, loads and the simulated truth are private).

Why separate from the run loop: these are pure functions of (store, secret key, truth), so a finished
workspace can be re-evaluated without rerunning meters, and tests can check them on their own.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meterveil.host.backoffice.billing import CSV_COLUMNS, Bill, bill_rows, compute_bill
from meterveil.host.backoffice.tariff import Tariff
from meterveil.host.common.files import write_private
from meterveil.host.common.outpath import write_csv
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.decryption.policy import Policy
from meterveil.host.decryption.role import DecryptionRole, FeederLoad
from meterveil.host.decryption.session import close_role, open_role
from meterveil.host.store.base import Store

TRUTH_HEADER = ("# SIMULATION ONLY: ground truth that no real deployment has. energy_wh is the exact "
                "interval energy each meter measured and sealed (its billing value), printed by the "
                "simulated meter; the utility never sees it.\n")
FEEDER_COLUMNS = ("feeder", "interval_start", "contributors", "dp_sum_wh", "true_sum_wh",
                  "true_clamped_sum_wh", "status", "epsilon_milli", "clamp_wh", "m", "interval_utc")


@dataclass(frozen=True)
class DpError:
    intervals: int
    mae_wh: float            # mean |dp - true|
    rmse_wh: float
    rel_error: float         # sum |dp - true| / sum true
    noise_rmse_wh: float     # against the clamped truth: the DP noise alone


def write_truth(path: Path, truth: dict[tuple[str, int], int]) -> None:
    buf = io.StringIO(newline="")
    buf.write(TRUTH_HEADER)
    w = csv.writer(buf)
    w.writerow(["meter_id", "interval_start", "energy_wh"])
    for (mid, t), wh in sorted(truth.items()):
        w.writerow([mid, t, wh])
    write_private(path, buf.getvalue())  # every household's consumption in clear


def read_truth(path: Path) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    with path.open() as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        for r in rows:
            out[(r["meter_id"], int(r["interval_start"]))] = int(r["energy_wh"])
    return out


def periods_between(tariff: Tariff, t0: int, t1: int) -> list[str]:
    """Billing periods (YYYY-MM in the tariff's zone) touched by [t0, t1)."""
    out: list[str] = []
    t = t0
    while t < t1:
        p = datetime.fromtimestamp(t, tariff.tz).strftime("%Y-%m")
        out.append(p)
        t = tariff.period_bounds(p)[1]
    return out


def make_bills(role: DecryptionRole, store: Store, tariff: Tariff, periods: Iterable[str],
               as_of: int | None = None) -> list[Bill]:
    """Bills as of `as_of` (the simulation's end: intervals after it are not due yet)."""
    bills: list[Bill] = []
    for period in periods:
        for hh in sorted(role.household_totals(store, tariff, period, as_of=as_of), key=lambda h: h.meter_id):
            bills.append(compute_bill(tariff, hh.meter_id, period, hh.band_wh, hh.readings, hh.missing_intervals))
    return bills


def bills_from_truth(tariff: Tariff, truth: dict[tuple[str, int], int], periods: Iterable[str]) -> list[Bill]:
    """Simulation-only cross-check: the same tariff applied to the meters' plaintext truth.

    The demo's bills come from Paillier sums decrypted by the decryption role; these come from
    truth.csv directly. Equal bills show the whole path (sealing, ingest, packing, homomorphic
    band sums, masking, decryption) lost or changed nothing.
    """
    bills: list[Bill] = []
    for period in periods:
        lo, hi = tariff.period_bounds(period)
        per_meter: dict[str, dict[str, int]] = {}
        for (meter_id, start), wh in truth.items():
            if lo <= start < hi:
                bands = per_meter.setdefault(meter_id, {b: 0 for b in tariff.band_names})
                bands[tariff.band_of(start)] += wh
        for meter_id in sorted(per_meter):
            bills.append(compute_bill(tariff, meter_id, period, per_meter[meter_id]))
    return bills


def bill_mismatches(decrypted: list[Bill], reference: list[Bill]) -> list[str]:
    """Meters whose decrypted bill differs from the truth bill (band Wh, amounts, total)."""
    def key(b: Bill) -> tuple[str, str]:
        return b.meter_id, b.period

    def lines(b: Bill) -> list[tuple[str, str, int | None, int]]:
        return [(ln.band, ln.kind, ln.wh, ln.amount_minor) for ln in b.lines]

    ref = {key(b): lines(b) for b in reference}
    got = {key(b): lines(b) for b in decrypted}
    return sorted(f"{m} {p}" for (m, p) in ref.keys() | got.keys() if ref.get((m, p)) != got.get((m, p)))


def write_bills(path: Path, bills: list[Bill]) -> None:
    write_csv(path, CSV_COLUMNS, bill_rows(bills))


def feeder_rows(loads: list[FeederLoad], truth: dict[tuple[str, int], int], feeder_of: dict[str, str],
                clamp_wh: int) -> list[dict[str, Any]]:
    true_sum: dict[tuple[str, int], int] = defaultdict(int)
    true_clamped: dict[tuple[str, int], int] = defaultdict(int)
    cell = max((fl.interval_len for fl in loads), default=1)  # hourly releases sum the hour's intervals
    for (mid, t), wh in truth.items():
        key = (feeder_of[mid], t - t % cell)
        true_sum[key] += wh
        true_clamped[key] += min(max(wh, 0), clamp_wh)
    rows = []
    for fl in sorted(loads, key=lambda x: (x.feeder, x.interval_start)):
        key = (fl.feeder, fl.interval_start)
        rows.append({
            "feeder": fl.feeder, "interval_start": fl.interval_start, "contributors": fl.contributors,
            "dp_sum_wh": "" if fl.analytics_sum_wh is None else fl.analytics_sum_wh,
            "true_sum_wh": true_sum.get(key, 0), "true_clamped_sum_wh": true_clamped.get(key, 0),
            "status": fl.status, "epsilon_milli": fl.epsilon_milli, "clamp_wh": fl.clamp_wh, "m": fl.m,
            "interval_utc": datetime.fromtimestamp(fl.interval_start, timezone.utc).isoformat(),
        })
    return rows


def write_rows(path: Path, columns: Iterable[str], rows: list[dict[str, Any]]) -> None:
    write_csv(path, list(columns), rows)


def dp_error(rows: list[dict[str, Any]]) -> DpError:
    ok = [r for r in rows if r["dp_sum_wh"] != ""]
    if not ok:
        return DpError(0, math.nan, math.nan, math.nan, math.nan)
    errs = [int(r["dp_sum_wh"]) - int(r["true_sum_wh"]) for r in ok]
    noise = [int(r["dp_sum_wh"]) - int(r["true_clamped_sum_wh"]) for r in ok]
    total = sum(int(r["true_sum_wh"]) for r in ok)
    return DpError(
        intervals=len(ok),
        mae_wh=sum(abs(e) for e in errs) / len(ok),
        rmse_wh=math.sqrt(sum(e * e for e in errs) / len(ok)),
        rel_error=sum(abs(e) for e in errs) / total if total else math.nan,
        noise_rmse_wh=math.sqrt(sum(e * e for e in noise) / len(ok)),
    )


def decrypt_all(role_dir: Path, registry_path: Path, store: Store, tariff: Tariff, k_min: int,
                feeders: list[str], t0: int, t1: int, min_band_readings: int | None = None,
                ) -> tuple[list[Bill], list[FeederLoad]]:
    """The back office step: every decryption goes through the decryption role's policy and lands in
    its signed audit log (its own database, in its own folder; no meter key is read)."""
    registry = MeterRegistry.load(registry_path)
    extra = {} if min_band_readings is None else {"min_band_readings": min_band_readings}
    role = open_role(role_dir, "demo-backoffice", Policy.from_registry(registry, k_min=k_min, **extra), registry)
    try:
        # bills as of now: the demo simulates an ended month, so the closing bill runs (an interim
        # bill would end at the month's cut date, before the simulated days)
        bills = make_bills(role, store, tariff, periods_between(tariff, t0, t1), as_of=max(t1, int(time.time())))
        loads = [fl for f in feeders for fl in role.feeder_load(store, f, t0, t1)]
    finally:
        close_role(role)
    return bills, loads


def write_json(path: Path, obj: Any) -> None:
    write_private(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
