"""`meterveil demo`: a whole neighbourhood end to end on one machine.

Real firmware (MicroPython unix port, one process per meter, accelerated simulated clock) ->
real broker (embedded amqtt, or --broker) -> real gateway (in-process threads, ciphertexts only)
-> decryption role under policy -> bills.csv, feeder_load.csv, truth.csv, stats.json, report.html.

The simulated clock runs on the 1st of a month that has already passed (setup.choose_start),
so every reading is in the past for the gateway and bills cover whole calendar months.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meterveil.host.backoffice.tariff import TariffError, load_tariff
from meterveil.host.common.registry import MODE_E2E
from meterveil.host.demo import report
from meterveil.host.demo.broker import EmbeddedBroker, meter_acls
from meterveil.host.demo.gateway import DemoGateway, gateway_stats
from meterveil.host.demo.meters import Fleet
from meterveil.host.demo.outputs import (
    FEEDER_COLUMNS,
    DpError,
    bill_mismatches,
    bills_from_truth,
    decrypt_all,
    dp_error,
    feeder_rows,
    periods_between,
    write_bills,
    write_json,
    write_rows,
    write_truth,
)
from meterveil.host.demo.setup import (
    GATEWAY_USER,
    DemoConfig,
    DemoError,
    Workspace,
    meter_heapsize,
    provision,
    write_meter_configs,
)
from meterveil.host.household.card import read_card
from meterveil.host.household.show import household_intervals
from meterveil.host.store.base import open_store

log = logging.getLogger("meterveil.demo")

MAX_SPEED = 10_000_000  # the firmware's config limit; in effect "as fast as the CPU allows"


class DemoInterrupted(DemoError):
    """SIGINT/SIGTERM: everything was stopped."""


@dataclass
class DemoResult:
    out: Path
    workspace: Path
    meters: int
    readings: int
    expected: int
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicates: int
    bills_total_minor: int
    currency: str
    minor_unit: str
    dp: DpError
    wall_s: float
    run_s: float
    readings_per_s: float
    block_s: int
    mode: str = "proxy"
    household_checked: int = 0  # E2E: intervals opened with the household cards and equal to truth

    def summary_lines(self) -> list[str]:
        d = self.dp
        where = ("meters encrypt (end to end): the gateway never saw a reading" if self.mode == "e2e"
                 else "the gateway opens each frame and encrypts it (proxy)")
        hh = ([f"household copies: {self.household_checked} intervals opened with the household cards, every "
               f"one equal to truth.csv (the utility holds only the cards' fingerprints)"]
              if self.mode == "e2e" else [])
        return [
            f"mode {self.mode}: {where}",
            f"meters {self.meters}, readings stored {self.readings}/{self.expected}, "
            f"rejected {self.rejected}{' ' + str(self.rejected_by_reason) if self.rejected else ''}, "
            f"duplicates {self.duplicates} (acknowledged, stored once)",
            f"bills total {self.bills_total_minor} {self.minor_unit} ({self.currency}); "
            f"every bill equals the bill computed from truth.csv to the minor unit",
            f"DP error of feeder sums over {d.intervals} intervals: MAE {d.mae_wh:.0f} Wh, "
            f"RMSE {d.rmse_wh:.0f} Wh, relative {100 * d.rel_error:.1f}% (noise alone RMSE {d.noise_rmse_wh:.0f} Wh)",
            f"wall time {self.wall_s:.1f} s (meters+ingest {self.run_s:.1f} s), "
            f"{self.readings_per_s:.0f} readings/s end to end",
            *hh,
            f"outputs in {self.out}/ (open report.html)",
        ]


class Progress:
    """A one-line stderr bar on a terminal; a line per 10% otherwise (CI logs)."""

    def __init__(self, total: int, enabled: bool):
        self.total = max(1, total)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last_decile = -1

    def update(self, sealed: int, stored: int) -> None:
        if not self.enabled:
            return
        frac = min(1.0, stored / self.total)
        el = time.monotonic() - self.t0
        text = (f"sealed {sealed}/{self.total}  stored {stored}/{self.total}  {el:5.1f} s")
        if self.tty:
            n = int(30 * frac)
            sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {100 * frac:5.1f}%  {text}")
            sys.stderr.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            sys.stderr.write(f"demo: {100 * frac:3.0f}%  {text}\n")

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def auto_block_s(cfg: DemoConfig) -> int:
    """Seconds each sparse ADC block stands for: 1 (a few mains cycles every simulated second)
    while the fleet is small, coarser so that meters x days of MicroPython fits a 2-core budget.
    Any value dividing 60 is exact for the 1-minute profiles (one block per profile step)."""
    if cfg.sim_mode == "dense":
        return 1
    if cfg.block_s:
        return cfg.block_s
    work = cfg.meters * cfg.days
    for b in (1, 5, 10, 30, 60):
        if work * 86400 / b <= 40 * 86400:  # at most ~40 meter-days of 1-second blocks
            return b
    return 60


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}

    def handler(signum, _frame) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    return old


def _missing_report(ws: Workspace, truth: dict, stored: Counter, expected_k: int) -> str:
    lines = []
    for plan in ws.meters:
        got = sorted(t for (m, t) in stored if m == plan.meter_id)
        sealed = sorted(t for (m, t) in truth if m == plan.meter_id)
        if len(got) < expected_k:
            missing = sorted(set(sealed) - set(got))
            lines.append(f"  {plan.meter_id}: stored {len(got)}/{expected_k}, sealed {len(sealed)}"
                         + (f", sealed but not stored: {missing[:5]}{'...' if len(missing) > 5 else ''}"
                            if missing else ""))
    return "\n".join(lines[:40]) + ("\n  ..." if len(lines) > 40 else "")


def _stored_keys(db: Path) -> Counter:
    store = open_store(db)
    try:
        return Counter((r.meter_id, r.interval_start) for r in store.iter_readings())
    finally:
        store.close()


def check_config(cfg: DemoConfig, out: Path, root: Path) -> None:
    """Inputs a run would trip over later, as DemoError before anything is created."""
    for what, path in (("--out", out), ("--workspace", root)):
        if path.exists() and not path.is_dir():
            raise DemoError(f"{what} {path} exists and is not a directory; choose a folder")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise DemoError(f"{what} {path}: {parent} is not a directory")
                break
    try:
        load_tariff(cfg.tariff)
    except TariffError as e:
        raise DemoError(f"--tariff: {e}") from None


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the whole demo; raises DemoError with a clear message on timeout, failure or Ctrl-C."""
    t_start = time.monotonic()
    out = Path(cfg.out)
    root = Path(cfg.workspace) if cfg.workspace else out / "workspace"
    check_config(cfg, out, root)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    embedded = cfg.broker is None
    ws = provision(cfg, root, with_passwords=embedded)
    block_s = auto_block_s(cfg)
    cfg.block_s = block_s
    expected_k = cfg.intervals
    expected = expected_k * cfg.meters
    stop = threading.Event()
    old_handlers = _install_signals(stop)
    broker: EmbeddedBroker | None = None
    gw: DemoGateway | None = None
    fleet: Fleet | None = None
    try:
        if embedded:
            broker = EmbeddedBroker(users=ws.broker_users,
                                    acls=meter_acls([p.meter_id for p in ws.meters], GATEWAY_USER)).start()
            url = broker.url
        else:
            url = cfg.broker  # type: ignore[assignment]
        write_meter_configs(ws, cfg, url, cfg.speed or MAX_SPEED)
        gw = DemoGateway(ws.keys_dir, ws.registry, ws.db, url, mqtt_v5=not embedded,
                         username=GATEWAY_USER if embedded else None,
                         password=ws.broker_users.get(GATEWAY_USER)).start()
        fleet = Fleet(ws.meters, heapsize=meter_heapsize(cfg), log_dir=root / "logs")
        # E2E meters spend ~6x the CPU per reading (they Paillier-encrypt; docs/DEMO.md "Measured")
        per_meter_day = 18.0 if cfg.mode == MODE_E2E else 3.0
        timeout = cfg.timeout_s or (120 + per_meter_day * cfg.meters * max(cfg.days, 0.25))
        log.info("demo: %d meters on %d feeders, %d intervals each, block %d s, timeout %.0f s",
                 cfg.meters, cfg.feeders, expected_k, block_s, timeout)
        t_run = time.monotonic()
        fleet.start()
        progress = Progress(expected, cfg.progress)
        poll = open_store(ws.db)
        try:
            while True:
                stored = poll.count_readings()
                progress.update(fleet.sealed(), stored)
                if stop.is_set():
                    raise DemoInterrupted("interrupted: meters, gateway and broker stopped")
                if gw.error is not None:
                    raise DemoError(f"gateway failed: {gw.error!r}")
                failed = fleet.failed()
                if failed:
                    mid, rc = sorted(failed.items())[0]
                    raise DemoError(f"meter {mid} exited with code {rc} ({len(failed)} failed); last output:\n"
                                    f"{fleet.procs[mid].tail()}")
                if not fleet.running() and stored >= expected:
                    break
                if time.monotonic() - t_run > timeout:
                    miss = _missing_report(ws, fleet.truth(), _stored_keys(ws.db), expected_k)
                    raise DemoError(f"timeout after {timeout:.0f} s: {stored}/{expected} readings stored; "
                                    f"missing:\n{miss}")
                time.sleep(0.25)
        finally:
            progress.done()
            poll.close()
        run_s = time.monotonic() - t_run
        gw.stop()
        truth_full = fleet.truth()
        broker_info = {"kind": "embedded amqtt" if broker else "external", "url": url,
                       "late_pubacks_over_5s": broker.puback_timeouts if broker else None}
    finally:
        if fleet is not None:
            fleet.stop()
        if gw is not None:
            gw.stop()
            gw.close()
        if broker is not None:
            broker.stop()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    return _finish(cfg, ws, out, truth_full, expected_k, block_s, t_start, run_s, broker_info)


def _finish(cfg: DemoConfig, ws: Workspace, out: Path, truth_full: dict, expected_k: int, block_s: int,
            t_start: float, run_s: float, broker_info: dict[str, Any]) -> DemoResult:
    stored = _stored_keys(ws.db)
    dupes = [k for k, n in stored.items() if n > 1]
    if dupes or len(stored) != cfg.meters * expected_k:
        raise DemoError(f"store holds {len(stored)} distinct (meter, interval), expected {cfg.meters * expected_k}; "
                        f"duplicated: {dupes[:5]}\n{_missing_report(ws, truth_full, stored, expected_k)}")
    truth = {k: int(v["energy_wh"]) for k, v in truth_full.items()}
    write_truth(out / "truth.csv", truth)
    t0 = int(ws.start.timestamp())
    t1 = t0 + expected_k * cfg.interval_s
    store = open_store(ws.db)
    try:
        bills, loads = decrypt_all(ws.role_dir, ws.registry, store, ws.tariff, cfg.k_min, ws.feeders(), t0, t1,
                                   cfg.min_band_readings)
        stats = gateway_stats(store)
    finally:
        store.close()
    write_bills(out / "bills.csv", bills)
    household_checked = _check_household_copies(ws, truth) if cfg.mode == "e2e" else 0
    mismatched = bill_mismatches(bills, bills_from_truth(ws.tariff, truth, periods_between(ws.tariff, t0, t1)))
    if mismatched:
        raise DemoError(f"bills differ from the bills computed from truth.csv for: {', '.join(mismatched[:10])}")
    rows = feeder_rows(loads, truth, {p.meter_id: p.feeder for p in ws.meters}, ws.dp.clamp_wh)
    write_rows(out / "feeder_load.csv", FEEDER_COLUMNS, rows)
    write_json(out / "stats.json", stats)
    err = dp_error(rows)
    wall = time.monotonic() - t_start
    result = DemoResult(
        out=out, workspace=ws.root, meters=cfg.meters, readings=stats["readings"],
        expected=cfg.meters * expected_k, rejected=stats["rejected_total"],
        rejected_by_reason=dict(stats["rejected"]), duplicates=stats["duplicate"],
        bills_total_minor=sum(b.total_minor for b in bills),
        currency=ws.tariff.currency, minor_unit=ws.tariff.minor_unit, dp=err, wall_s=wall, run_s=run_s,
        readings_per_s=stats["readings"] / run_s if run_s > 0 else math.nan, block_s=block_s,
        mode=cfg.mode, household_checked=household_checked,
    )
    write_json(out / "run.json", {**_run_json(cfg, ws, result), "broker": broker_info})
    report.build_report(out)
    result.wall_s = time.monotonic() - t_start
    write_json(out / "run.json", {**_run_json(cfg, ws, result), "broker": broker_info})
    return result


def _check_household_copies(ws: Workspace, truth: dict[tuple[str, int], int]) -> int:
    """Each household opens its own copies with its card (what `meterveil household show` does); every
    interval must equal truth.csv. Returns the number of intervals checked."""
    store = open_store(ws.db, create=False)
    try:
        n = 0
        for plan in ws.meters:
            rep = household_intervals(read_card(ws.root / "households" / plan.meter_id), store)
            got = {(iv.meter_id, iv.interval_start): iv.energy_wh for iv in rep.intervals}
            want = {k: v for k, v in truth.items() if k[0] == plan.meter_id}
            if got != want or rep.unreadable:
                raise DemoError(f"household copies of {plan.meter_id} differ from truth.csv "
                                f"({len(got)} opened, {rep.unreadable} unreadable, {len(want)} in truth)")
            n += len(got)
        return n
    finally:
        store.close()


def _run_json(cfg: DemoConfig, ws: Workspace, r: DemoResult) -> dict[str, Any]:
    per_day = 86400 // cfg.interval_s
    return {
        "description": (f"{cfg.meters} simulated households on {cfg.feeders} feeders, "
                        f"{cfg.days:g} day(s) from {ws.start.isoformat()} at {cfg.interval_min}-minute "
                        f"intervals; real MicroPython firmware, broker, gateway and decryption role."),
        "start": ws.start.isoformat(), "timezone": ws.tariff.timezone, "interval_s": cfg.interval_s, "intervals_per_day": per_day,
        "intervals": cfg.intervals, "meters": cfg.meters, "feeders": cfg.feeders,
        "tariff": f"{ws.tariff.name} ({ws.tariff.currency}, {ws.tariff.timezone})",
        "dp": {"epsilon_milli": ws.dp.epsilon_milli, "clamp_wh": ws.dp.clamp_wh, "k_min": ws.dp.k_min,
               "m": min(ws.dp.m.values()), "m_per_feeder": ws.dp.m},
        "sampling": {"mode": cfg.sim_mode, "block_s": r.block_s, "speed": cfg.speed or "max"},
        "mode": cfg.mode,
        "summary": {
            "mode": "end to end (meters encrypt)" if cfg.mode == "e2e" else "proxy (gateway encrypts)",
            "meters": r.meters, "readings stored": f"{r.readings}/{r.expected}", "rejected": r.rejected,
            "bills total": f"{r.bills_total_minor} {r.minor_unit}",
            "DP feeder error (MAE)": f"{r.dp.mae_wh:.0f} Wh ({100 * r.dp.rel_error:.1f}%)",
            "wall time": f"{r.wall_s:.1f} s", "readings/s": f"{r.readings_per_s:.0f}",
        },
        "result": {k: (v if not isinstance(v, Path) else str(v)) for k, v in asdict(r).items()},
    }


def print_summary(result: DemoResult, stream: Any = None) -> None:
    stream = stream or sys.stdout
    for line in result.summary_lines():
        print(line, file=stream)


def dump_json(result: DemoResult) -> str:
    return json.dumps(asdict(result), default=str)
