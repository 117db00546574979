"""`meterveil privacy-report` and `meterveil export households`.

Why the export goes through the decryption role: monthly kWh per household are bill totals, which
only the role may decrypt (each decryption is audited as a "bill" entry); the export itself is one
more audit entry naming k, what was generalised or synthesised, and an HMAC of the file written.
The meter id never leaves this module. `run_export` is importable for tests and the demo.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

EXPORT_TARIFF = {  # one band, UTC calendar months: the role's bill path yields the monthly total
    "name": "export-monthly-kwh", "currency": "XXX", "minor_unit": "none", "timezone": "UTC",
    "bands": [{"name": "all", "price_minor_per_kwh": "0", "windows": [{"days": "all", "hours": "00-24"}]}],
}
MIN_EXPORT_K = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy-report", help="DP parameters and privacy spend per feeder per day")
    p.add_argument("--db", required=True, help="SQLite store")
    p.add_argument("--daily-budget", type=float, default=None, help="daily epsilon budget per feeder, to show what remains")
    p.add_argument("--delta", type=float, default=1e-6, help="delta for advanced composition (default 1e-6)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON here")
    p.set_defaults(func=privacy_report_cmd)

    e = sub.add_parser("export", help="privacy-safe exports for researchers")
    esub = e.add_subparsers(dest="export_kind", metavar="KIND")
    h = esub.add_parser("households", help="k-anonymous (or synthetic) table of household attributes + monthly kWh")
    h.add_argument("--db", required=True, help="SQLite store (also holds the audit log)")
    h.add_argument("--secret-key", required=True, help="utility.key.json (or the keys dir holding it)")
    h.add_argument("--keys", help="keys dir with meters.json (attributes); default: the secret key's directory")
    h.add_argument("--k", type=int, default=5, help="every quasi-identifier combination appears >= k times (default 5)")
    h.add_argument("--max-suppress", type=float, default=0.05, help="largest fraction of households suppressed (default 0.05)")
    h.add_argument("--synthetic", type=int, default=None, metavar="N", help="write N synthetic records instead")
    h.add_argument("--seed", type=int, default=None, help="seed for shuffling/synthesis: tests only (a known seed lets anyone undo the row shuffle)")
    h.add_argument("--out", required=True, help="CSV to write; a JSON report goes next to it (OUT.report.json)")
    h.add_argument("--actor", default=None, help="who is exporting (audit log); default: OS user")
    h.set_defaults(func=export_households_cmd)
    e.set_defaults(func=lambda a: (e.print_help(), 2)[1])


def privacy_report_cmd(args: argparse.Namespace) -> int:
    from .privacy_report import build_report, format_report

    try:
        rep = build_report(args.db, args.daily_budget, args.delta)
    except (FileNotFoundError, sqlite3.DatabaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rep, indent=1, default=str) + "\n")
    return 0


@dataclass(frozen=True)
class ExportResult:
    out: Path
    report: dict[str, Any]
    table: pd.DataFrame


def _months(store) -> list[str]:
    row = store.conn.execute("SELECT MIN(interval_start), MAX(interval_start) FROM readings").fetchone()
    if row[0] is None:
        return []
    t0 = datetime.fromtimestamp(row[0], timezone.utc)
    t1 = datetime.fromtimestamp(row[1], timezone.utc)
    out, y, mo = [], t0.year, t0.month
    while (y, mo) <= (t1.year, t1.month):
        out.append(f"{y:04d}-{mo:02d}")
        y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return out


def monthly_kwh(role, store, meter_ids: list[str]) -> pd.DataFrame:
    """meter_id x month kWh (whole kWh) decrypted by the role as one-band bill totals (audited)."""
    from .tariff import parse_tariff

    tariff = parse_tariff(EXPORT_TARIFF, "export")
    cols: dict[str, dict[str, float]] = {}
    for period in _months(store):
        for t in role.household_totals(store, tariff, period, meter_ids):
            cols.setdefault(f"kwh_{period}", {})[t.meter_id] = round(sum(t.band_wh.values()) / 1000)
    return pd.DataFrame(cols).rename_axis("meter_id")


def attributes_table(registry) -> tuple[pd.DataFrame, int]:
    """meter_id x quasi-identifiers from provisioning metadata; meters lacking any are left out (count)."""
    from .anonymize import QUASI_IDENTIFIERS

    rows, skipped = {}, 0
    for rec in registry:
        a = rec.attributes
        if all(q in a for q in QUASI_IDENTIFIERS):
            rows[rec.meter_id] = {q: a[q] for q in QUASI_IDENTIFIERS}
        else:
            skipped += 1
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("meter_id"), skipped


def run_export(db: str | Path, secret_key: str | Path, out: str | Path, *, k: int = 5, keys: str | Path | None = None,
               synthetic: int | None = None, max_suppress: float = 0.05, seed: int | None = None,
               actor: str | None = None) -> ExportResult:
    """Decrypt monthly totals through the role, anonymise, write CSV + report, audit the export."""
    from . import anonymize
    from .audit import AuditLog
    from .decryptor import DecryptionRole, PolicyError
    from .keys import MeterRegistry, load_private
    from .store import open_store

    if not Path(db).exists():
        raise FileNotFoundError(f"store {db} does not exist")
    key_path = Path(secret_key)
    keys_dir = Path(keys) if keys else (key_path if key_path.is_dir() else key_path.parent)
    registry = MeterRegistry.load(keys_dir)
    priv = load_private(secret_key)
    store = open_store(db)
    audit = AuditLog(db)
    role = DecryptionRole(priv, audit, actor or getpass.getuser())
    query: dict[str, Any] = {"k": k, "synthetic": synthetic, "max_suppress": max_suppress}
    try:
        if k < MIN_EXPORT_K or (synthetic is not None and synthetic < 1):
            reason = f"refused: k={k} < {MIN_EXPORT_K}" if k < MIN_EXPORT_K else "refused: --synthetic must be >= 1"
            audit.append(role.actor, "export-households", query, "refuse", reason)
            raise PolicyError(reason)
        attrs, skipped = attributes_table(registry)
        kwh = monthly_kwh(role, store, sorted(attrs.index))
        table = attrs.join(kwh, how="inner").reset_index(drop=True)  # meter ids dropped here
        query.update(households=len(table), months=list(kwh.columns), skipped_no_attributes=skipped)
        if synthetic is not None:
            res = anonymize.synthesize(table, synthetic, k=k, seed=seed)
            if res.copies:
                audit.append(role.actor, "export-households", query, "refuse",
                             f"refused: {res.copies} synthetic rows copy real ones")
                raise PolicyError(f"{res.copies} synthetic rows still copy real rows")
            released, report = res.table, {"mode": "synthetic", **res.report()}
        else:
            kres = anonymize.k_anonymize(table, k, max_suppress=max_suppress, seed=seed)
            if len(kres.table) == 0:
                audit.append(role.actor, "export-households", query, "refuse",
                             f"refused: {len(table)} households cannot reach k={k}")
                raise PolicyError(f"{len(table)} households cannot be made {k}-anonymous")
            released, report = kres.table, {"mode": "k-anonymous", **kres.report()}
        report.update(households_in=len(table), months=list(kwh.columns), skipped_no_attributes=skipped)
        out = Path(out)
        released.to_csv(out, index=False)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        report["sha256"] = digest
        Path(f"{out}.report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        summary = {key: report[key] for key in ("mode", "rows") if key in report}
        for key in ("k_achieved", "suppressed", "generalised", "copies_of_real_rows"):
            if key in report:
                summary[key] = report[key]
        audit.append(role.actor, "export-households", {**query, **summary}, "allow",
                     f"ok: {report['mode']} export of {len(released)} rows",
                     role.result_hash({"sha256": digest}))
        return ExportResult(out, report, released)
    finally:
        role.close()
        audit.close()
        store.close()


def export_households_cmd(args: argparse.Namespace) -> int:
    from .decryptor import PolicyError
    from .keys import KeyFileError

    try:
        res = run_export(args.db, args.secret_key, args.out, k=args.k, keys=args.keys, synthetic=args.synthetic,
                         max_suppress=args.max_suppress, seed=args.seed, actor=args.actor)
    except (PolicyError, KeyFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = res.report
    if r["mode"] == "k-anonymous":
        print(f"{r['rows']} of {r['households_in']} households, k={r['k']} achieved k={r['k_achieved']}, "
              f"{r['suppressed']} suppressed, {r['classes']} classes -> {res.out}")
        for col, what in r["generalised"].items():
            print(f"  {col}: {what}")
    else:
        u = r["utility"]
        print(f"{r['rows']} synthetic records from {r['households_in']} households -> {res.out}; "
              f"copies of real rows: {r['copies_of_real_rows']}; pairwise kept: {r['model']['pairwise']}")
        print(f"  marginal TVD: {u['marginal_tvd']}")
        for col, d in u["numeric"].items():
            print(f"  {col}: KS {d['ks']}, W1 {d['w1_kwh']} kWh")
    print(f"report: {res.out}.report.json (audited)")
    return 0
