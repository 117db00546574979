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

from .outpath import OutputError, prepare_output

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
    f.epilog = ("Exit status: 0 ok, 2 bad input (unknown feeder, paths, keys) or policy error, "
                "3 some intervals refused by policy (audited; in the CSV with the reason).")
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


def _load_registry(keys_arg: str):
    from .keys import REGISTRY_NAME, MeterRegistry

    p = Path(keys_arg)
    if not p.exists():
        raise InputError(f"--keys {p} does not exist")
    if not (p / REGISTRY_NAME if p.is_dir() else p).is_file():
        raise InputError(f"--keys {p}: no {REGISTRY_NAME} (meter registry) there")
    try:
        return MeterRegistry.load(p)
    except ValueError as e:  # KeyFileError, malformed JSON
        raise InputError(f"--keys {p}: {e}") from None


def _check_key_pair(priv, keys_arg: str | None) -> None:
    """If the keys dir holds the gateway's public key, the secret key must belong to it (no decryption needed)."""
    from .keys import PUBLIC_NAME, load_public

    if not keys_arg or not (Path(keys_arg) / PUBLIC_NAME).is_file():
        return
    try:
        pub = load_public(Path(keys_arg) / PUBLIC_NAME)
    except ValueError:
        return
    if pub.n != priv.public_key.n:
        raise InputError(f"{WRONG_KEY}: it is not the secret key of {Path(keys_arg) / PUBLIC_NAME}")


def _role(args: argparse.Namespace, daily_budget_milli: int | None = None, feeder: str | None = None):
    """Open the store (never created here), the secret key and the decryption role, after checking every
    input, so nothing is decrypted or audited for a command that would fail on its inputs anyway."""
    from .audit import AuditLog
    from .decryptor import DecryptionRole, Policy
    from .keys import load_private
    from .store import open_store

    store = open_store(args.db, create=False)
    try:
        priv = load_private(args.secret_key)
        registry = _load_registry(args.keys) if args.keys else None
        _check_key_pair(priv, args.keys)
        if registry is None:
            log.warning("no --keys: feeder m comes from the readings only (and k_min); meters without readings "
                        "are not listed")
        if feeder is not None and feeder not in (known := store.feeders()):
            registered = sorted({r.feeder for r in registry}) if registry is not None else []
            note = " (registered, but no readings yet)" if feeder in registered else ""
            raise InputError(f"feeder {feeder} has no readings in {args.db}{note}; feeders with readings: "
                             f"{', '.join(known) or 'none'}")
        policy = (Policy.from_registry(registry, k_min=args.k_min, daily_budget_milli=daily_budget_milli)
                  if registry is not None else Policy(k_min=args.k_min, daily_budget_milli=daily_budget_milli))
        if getattr(args, "out", None):
            prepare_output(args.out)
        role = DecryptionRole(priv, AuditLog(args.db), args.actor or getpass.getuser(), policy)
    except BaseException:
        store.close()
        raise
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


def _input_errors() -> tuple[type[Exception], ...]:
    """What bill and feeder-load report as one line (exit 2) instead of a traceback."""
    from .decryptor import PolicyError
    from .keys import KeyFileError
    from .store import StoreError
    from .store_sqlite import StoreVersionError

    return (InputError, OutputError, PolicyError, KeyFileError, StoreError, StoreVersionError, FileNotFoundError,
            IsADirectoryError, PermissionError)


def _wrong_key_errors() -> tuple[type[Exception], ...]:
    """Ciphertexts out of range for the key, or decrypted sums that are no packed sums: the secret key
    belongs to another key pair than the one the gateway encrypted with."""
    from .aggregate import AggregateError
    from .packing import PackingError

    return (AggregateError, PackingError)


def bill_cmd(args: argparse.Namespace) -> int:
    import pandas as pd

    from .billing import CSV_COLUMNS, BillingError, bill_rows, kwh_str
    from .tariff import TariffError

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
    budget = None if args.daily_budget is None else int(args.daily_budget * 1000)
    store, role, _ = _role(args, budget, feeder=args.feeder)
    try:
        return role.feeder_load(store, args.feeder, args.t_from, args.t_to)
    finally:
        role.close()
        role.audit.close()
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


def _check_audit_db(path: str) -> None:
    """An existing SQLite file holding a store or an audit log; never creates one (StoreError)."""
    from .store import StoreError
    from .store_sqlite import inspect_file

    if not {"readings", "audit_log"} & inspect_file(path):
        raise StoreError(f"store {path} is an SQLite database but holds no meterveil store or audit log")


def audit_verify_cmd(args: argparse.Namespace) -> int:
    from .audit import AuditLog, parse_anchor

    try:
        _check_audit_db(args.db)
        anchor = parse_anchor(args.anchor) if args.anchor else None
    except ValueError as e:  # StoreError, bad anchor
        return _fail(e)
    with AuditLog(args.db) as audit:
        result = audit.verify(anchor)
    print(result.describe())
    return 0 if result.ok else 1


def audit_head_cmd(args: argparse.Namespace) -> int:
    from .audit import AuditLog

    try:
        _check_audit_db(args.db)
    except ValueError as e:
        return _fail(e)
    with AuditLog(args.db) as audit:
        seq, h = audit.head()
    print(f"{seq}:{h}")
    return 0
