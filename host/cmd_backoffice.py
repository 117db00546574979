"""Back-office commands: `meterveil bill`, `meterveil feeder-load`, `meterveil audit verify|head`.

Why here and thin: the policy lives in decryptor.py and the maths in billing.py; these functions
only wire files to them, write CSV and print a readable table. `run_bills` and `run_feeder_load`
are importable so tests and notebooks use the same path as the command line.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

log = logging.getLogger(__name__)

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
        p.add_argument("--db", required=True, help="SQLite store (also holds the audit log)")
        p.add_argument("--secret-key", required=True, help="utility.key.json (or the keys dir holding it)")
        p.add_argument("--keys", help="keys dir with meters.json: provisioned m per feeder, full meter list")
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

    f = sub.add_parser("feeder-load", help="decrypt DP feeder sums per interval (>= m contributors)")
    common(f)
    f.add_argument("--feeder", required=True)
    f.add_argument("--from", dest="t_from", required=True, type=parse_time, help="ISO time (UTC if naive)")
    f.add_argument("--to", dest="t_to", required=True, type=parse_time, help="ISO time, exclusive")
    f.add_argument("--out", required=True, help="CSV")
    f.add_argument("--daily-budget", type=Decimal, default=None,
                   help="refuse releases beyond this epsilon per feeder per UTC day")
    f.set_defaults(func=feeder_load_cmd)

    a = sub.add_parser("audit", help="check the hash-chained audit log")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser("verify", help="exit 0 if the chain is intact, 1 naming the first bad entry")
    v.add_argument("--db", required=True)
    v.add_argument("--anchor", help="SEQ:HASH printed earlier by `audit head` (detects tail truncation)")
    v.set_defaults(func=audit_verify_cmd)
    h = asub.add_parser("head", help="print SEQ:HASH of the last entry, to keep outside the database")
    h.add_argument("--db", required=True)
    h.set_defaults(func=audit_head_cmd)


def _role(args: argparse.Namespace, daily_budget_milli: int | None = None):
    from .audit import AuditLog
    from .decryptor import DecryptionRole, Policy
    from .keys import MeterRegistry, load_private
    from .store import open_store

    if not Path(args.db).exists():
        raise FileNotFoundError(f"store {args.db} does not exist")
    priv = load_private(args.secret_key)
    registry = MeterRegistry.load(args.keys) if args.keys else None
    if registry is None:
        log.warning("no --keys: feeder m comes from the readings only (and k_min); meters without readings are not listed")
    policy = (Policy.from_registry(registry, k_min=args.k_min, daily_budget_milli=daily_budget_milli)
              if registry is not None else Policy(k_min=args.k_min, daily_budget_milli=daily_budget_milli))
    store = open_store(args.db)
    role = DecryptionRole(priv, AuditLog(args.db), args.actor or getpass.getuser(), policy)
    return store, role, registry


def run_bills(args: argparse.Namespace):
    """(tariff, bills, refusals) for args.period; refusals are (meter_id, reason), already audited."""
    from .billing import compute_bill
    from .tariff import load_tariff

    tariff = load_tariff(args.tariff)
    store, role, registry = _role(args)
    try:
        totals = role.household_totals(store, tariff, args.period, registry.ids() if registry else ())
        refusals = list(role.refusals)
    finally:
        role.close()
        role.audit.close()
        store.close()
    bills = []
    for t in totals:
        if t.readings > t.present_intervals:
            log.warning("%s: %d readings for %d distinct intervals (duplicate interval starts)",
                        t.meter_id, t.readings, t.present_intervals)
        bills.append(compute_bill(tariff, t.meter_id, t.period, t.band_wh, t.readings, t.missing_intervals))
    return tariff, bills, refusals


def _write_csv(path: str, columns: Sequence[str], rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def bill_cmd(args: argparse.Namespace) -> int:
    import pandas as pd

    from .billing import CSV_COLUMNS, BillingError, bill_rows, kwh_str
    from .decryptor import PolicyError
    from .keys import KeyFileError
    from .tariff import TariffError

    try:
        tariff, bills, refusals = run_bills(args)
    except (TariffError, BillingError, PolicyError, KeyFileError, FileNotFoundError) as e:
        return _fail(e)
    _write_csv(args.out, CSV_COLUMNS, bill_rows(bills))
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
    budget = None if args.daily_budget is None else int(args.daily_budget * 1000)
    store, role, _ = _role(args, budget)
    try:
        return role.feeder_load(store, args.feeder, args.t_from, args.t_to)
    finally:
        role.close()
        role.audit.close()
        store.close()


def feeder_load_cmd(args: argparse.Namespace) -> int:
    import pandas as pd

    from .decryptor import PolicyError
    from .keys import KeyFileError

    try:
        loads = run_feeder_load(args)
    except (PolicyError, KeyFileError, FileNotFoundError) as e:
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
    _write_csv(args.out, FEEDER_COLUMNS, rows)
    refused = sum(not fl.allowed for fl in loads)
    print(f"feeder {args.feeder}: {len(loads) - refused} intervals released, {refused} refused -> {args.out}")
    if rows:
        print(pd.DataFrame(rows).drop(columns=["interval_start_epoch", "feeder"]).head(40).to_string(index=False))
    return 0


def audit_verify_cmd(args: argparse.Namespace) -> int:
    from .audit import AuditLog, parse_anchor

    if not Path(args.db).exists():
        return _fail(FileNotFoundError(f"store {args.db} does not exist"))
    try:
        anchor = parse_anchor(args.anchor) if args.anchor else None
    except ValueError as e:
        return _fail(e)
    with AuditLog(args.db) as audit:
        result = audit.verify(anchor)
    print(result.describe())
    return 0 if result.ok else 1


def audit_head_cmd(args: argparse.Namespace) -> int:
    from .audit import AuditLog

    if not Path(args.db).exists():
        return _fail(FileNotFoundError(f"store {args.db} does not exist"))
    with AuditLog(args.db) as audit:
        seq, h = audit.head()
    print(f"{seq}:{h}")
    return 0
