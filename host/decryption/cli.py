"""Decryption-role commands: `meterveil bill` and `meterveil feeder-load`.

Why here and thin: the policy lives in role.py and the maths in the back office; these functions
only wire files to them, write CSV (0600: released results are for the people who asked) and print
a readable table. `run_bills` and `run_feeder_load` are importable so tests and notebooks use the
same path as the command line.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from meterveil.host.common.outpath import OutputError, prepare_output, write_csv

log = logging.getLogger(__name__)


class InputError(ValueError):
    """A command-line input the back office cannot use (path, key, feeder); one line, exit status 2."""


WRONG_KEY = ("the secret key does not match the key the gateway encrypted with (use the utility.key.json "
             "made together with the gateway's utility.pub.json)")

FEEDER_COLUMNS = ("feeder", "interval_start", "interval_start_epoch", "interval_len", "readings",
                  "contributors", "m", "epsilon", "clamp_wh", "status", "analytics_sum_wh")


def parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC) or epoch seconds -> UTC epoch seconds."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ISO 8601 (e.g. 2026-11-02T00:00Z) or epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", required=True, help="the ingest store (read only)")
        p.add_argument("--role-dir", required=True,
                       help="the decryption role's folder (secret key, audit signing key, its own database)")
        p.add_argument("--registry", required=True,
                       help="meters.json (meter metadata, no keys): feeder membership, m per feeder, meter list")
        p.add_argument("--actor", default=None, help="who is decrypting (audit log); default: OS user")
        p.add_argument("--k-min", type=int, default=5, help="minimum contributors for any feeder sum (default 5)")

    b = sub.add_parser("bill", help="decrypt household band totals for a period and bill them")
    common(b)
    b.add_argument("--tariff", required=True, help="tariff TOML (docs/TARIFFS.md)")
    b.add_argument("--period", required=True, help="billing period YYYY-MM (calendar month in the tariff's zone)")
    b.add_argument("--out", required=True, help="bills CSV")
    b.add_argument("--max-rows", type=int, default=40, help="meters shown in the terminal table")
    b.epilog = "Exit status: 0 ok, 2 bad input or policy error, 3 some households refused by policy (audited)."
    b.set_defaults(func=bill_cmd)

    f = sub.add_parser("feeder-load", help="decrypt DP feeder sums per hour (or interval) within the "
                                           "household-day budget")
    common(f)
    f.add_argument("--feeder", required=True)
    f.add_argument("--from", dest="t_from", required=True, type=parse_time, help="ISO time (UTC if naive)")
    f.add_argument("--to", dest="t_to", required=True, type=parse_time, help="ISO time, exclusive")
    f.add_argument("--out", required=True, help="CSV")
    f.add_argument("--daily-budget", type=Decimal, default=None,
                   help="epsilon per household-day (default: the last one set, else 1)")
    f.add_argument("--release", choices=("hour", "quarter"), default="hour",
                   help="hourly sums (default: one decryption per hour) or every 15-minute interval "
                        "(same budget per reading, each value four times noisier relative to its size)")
    f.add_argument("--gamma", type=float, default=None,
                   help="fraction of the feeder's meters assumed colluding (default 0.2)")
    f.epilog = ("Exit status: 0 ok, 2 bad input (unknown feeder, paths, keys) or policy error, "
                "3 some intervals refused by policy (audited; in the CSV with the reason).")
    f.set_defaults(func=feeder_load_cmd)


def _load_registry(path: str):
    from meterveil.host.common.registry import REGISTRY_NAME, MeterRegistry

    p = Path(path)
    if not p.exists():
        raise InputError(f"--registry {p} does not exist")
    if not (p / REGISTRY_NAME if p.is_dir() else p).is_file():
        raise InputError(f"--registry {p}: no {REGISTRY_NAME} (meter registry) there")
    try:
        return MeterRegistry.load(p)
    except ValueError as e:  # KeyFileError, malformed JSON
        raise InputError(f"--registry {p}: {e}") from None


def _role(args: argparse.Namespace, daily_budget_milli: int | None = None, feeder: str | None = None,
          **policy_args):
    """Open the store (read only, never created here), then the decryption role, after checking every
    input, so nothing is decrypted or audited for a command that would fail on its inputs anyway."""
    from meterveil.host.decryption.policy import Policy
    from meterveil.host.decryption.session import check_role_dir, open_role
    from meterveil.host.store.base import open_store

    store = open_store(args.db, create=False)
    try:
        check_role_dir(args.role_dir)
        registry = _load_registry(args.registry)
        if feeder is not None and feeder not in (registered := registry.feeders()):
            raise InputError(f"feeder {feeder} is not in the registry {args.registry}; registered feeders: "
                             f"{', '.join(sorted(registered)) or 'none'}")
        policy = Policy.from_registry(registry, k_min=args.k_min, daily_budget_milli=daily_budget_milli,
                                      **policy_args)
        if getattr(args, "out", None):
            prepare_output(args.out)
        role = open_role(args.role_dir, args.actor or getpass.getuser(), policy, registry)
    except BaseException:
        store.close()
        raise
    return store, role, registry


def run_bills(args: argparse.Namespace):
    """(tariff, bills, refusals) for args.period; refusals are (meter_id, reason), already audited."""
    from meterveil.host.backoffice.billing import compute_bill
    from meterveil.host.backoffice.tariff import load_tariff
    from meterveil.host.decryption.session import close_role

    tariff = load_tariff(args.tariff)
    store, role, registry = _role(args)
    try:
        totals = role.household_totals(store, tariff, args.period, registry.ids())
        refusals = list(role.refusals)
    finally:
        close_role(role)
        store.close()
    bills = []
    for t in totals:
        if t.readings > t.present_intervals:
            log.warning("%s: %d readings for %d distinct intervals (duplicate interval starts)",
                        t.meter_id, t.readings, t.present_intervals)
        bills.append(compute_bill(tariff, t.meter_id, t.period, t.band_wh, t.readings, t.missing_intervals))
    return tariff, bills, refusals


def _write_csv(path: str, columns: Sequence[str], rows: list[dict[str, object]]) -> None:
    write_csv(path, columns, rows)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _input_errors() -> tuple[type[Exception], ...]:
    """What bill and feeder-load report as one line (exit 2) instead of a traceback."""
    from meterveil.host.audit.chain import AuditError
    from meterveil.host.common.pubkey import KeyFileError
    from meterveil.host.decryption.policy import PolicyError
    from meterveil.host.store.base import StoreError, StoreVersionError

    return (InputError, OutputError, PolicyError, AuditError, KeyFileError, StoreError, StoreVersionError, FileNotFoundError,
            IsADirectoryError, PermissionError)


def _wrong_key_errors() -> tuple[type[Exception], ...]:
    """Ciphertexts out of range for the key, or decrypted sums that are no packed sums: the secret key
    belongs to another key pair than the one the gateway encrypted with."""
    from meterveil.host.backoffice.aggregate import AggregateError
    from meterveil.host.common.packing import PackingError

    return (AggregateError, PackingError)


def bill_cmd(args: argparse.Namespace) -> int:
    import pandas as pd

    from meterveil.host.backoffice.billing import CSV_COLUMNS, BillingError, bill_rows, kwh_str
    from meterveil.host.backoffice.tariff import TariffError

    try:
        tariff, bills, refusals = run_bills(args)
    except _wrong_key_errors() as e:
        return _fail(InputError(f"{WRONG_KEY} ({e})"))
    except (TariffError, BillingError, *_input_errors()) as e:
        return _fail(e)
    try:
        _write_csv(args.out, CSV_COLUMNS, bill_rows(bills))
    except OSError as e:
        return _fail(InputError(f"--out {args.out}: {e.strerror or e} (the bills were decrypted and audited)"))
    table = pd.DataFrame([
        {"meter_id": b.meter_id,
         **{f"{line.band} kWh": kwh_str(line.wh or 0) for line in b.lines if line.kind in ("energy", "surcharge")},
         "total kWh": kwh_str(b.total_wh), f"total {tariff.minor_unit}": b.total_minor,
         "missing": b.missing_intervals}
        for b in bills
    ])
    print(f"{len(bills)} bills for {args.period}, tariff {tariff.name} ({tariff.currency}, amounts in "
          f"{tariff.minor_unit}) -> {args.out}")
    if not table.empty:
        print(table.head(args.max_rows).to_string(index=False))
        if len(table) > args.max_rows:
            print(f"... {len(table) - args.max_rows} more in {args.out}")
        flagged = int((table["missing"] > 0).sum())
        print(f"total {sum(b.total_minor for b in bills)} {tariff.minor_unit}; {flagged} meters with missing intervals")
    for meter_id, reason in refusals:
        print(f"error: {meter_id} not billed: {reason}", file=sys.stderr)
    return 3 if refusals else 0


def run_feeder_load(args: argparse.Namespace):
    from meterveil.host.decryption.session import close_role

    budget = None if args.daily_budget is None else int(args.daily_budget * 1000)
    extra = {"release_s": 3600 if getattr(args, "release", "hour") == "hour" else 900}
    if getattr(args, "gamma", None) is not None:
        extra["gamma"] = args.gamma
    store, role, _ = _role(args, budget, feeder=args.feeder, **extra)
    try:
        return role.feeder_load(store, args.feeder, args.t_from, args.t_to)
    finally:
        close_role(role)
        store.close()


def feeder_load_cmd(args: argparse.Namespace) -> int:
    import pandas as pd

    try:
        loads = run_feeder_load(args)
    except _wrong_key_errors() as e:
        return _fail(InputError(f"{WRONG_KEY} ({e})"))
    except _input_errors() as e:
        return _fail(e)
    rows = []
    for fl in loads:
        d = asdict(fl)
        rows.append({
            "feeder": fl.feeder, "interval_start": datetime.fromtimestamp(fl.interval_start, timezone.utc).isoformat(),
            "interval_start_epoch": fl.interval_start, "interval_len": fl.interval_len, "readings": fl.readings,
            "contributors": fl.contributors, "m": fl.m, "epsilon": str(Decimal(d["epsilon_milli"]) / 1000),
            "clamp_wh": fl.clamp_wh, "status": fl.status,
            "analytics_sum_wh": "" if fl.analytics_sum_wh is None else fl.analytics_sum_wh,
        })
    try:
        _write_csv(args.out, FEEDER_COLUMNS, rows)
    except OSError as e:
        return _fail(InputError(f"--out {args.out}: {e.strerror or e} (the sums were decrypted and audited)"))
    refused = sum(not fl.allowed for fl in loads)
    print(f"feeder {args.feeder}: {len(loads) - refused} intervals released, {refused} refused -> {args.out}")
    if rows:
        print(pd.DataFrame(rows).drop(columns=["interval_start_epoch", "feeder"]).head(40).to_string(index=False))
    if refused:
        print(f"error: {refused} of {len(loads)} intervals of feeder {args.feeder} refused by policy (audited; "
              f"reasons in {args.out})", file=sys.stderr)
    return 3 if refused else 0
