"""`meterveil privacy-report`: DP parameters and privacy spend per feeder per day. Needs no key.

Why it reads the decryption role's audit log: what was released (and spent) is in that signed log,
folded by `meterveil.host.audit.ledger`; the readings' DP parameters come from the store.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from meterveil.host.common.files import write_private
from meterveil.host.common.outpath import OutputError, prepare_output


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("privacy-report", help="DP parameters and privacy spend per feeder per day")
    p.add_argument("--db", required=True, help="the ingest store (read only)")
    p.add_argument("--audit-db", help="the decryption role's database (ROLE_DIR/decryption.db): what was "
                                      "released; its verify key is read from the same folder")
    p.add_argument("--daily-budget", type=float, default=None,
                   help="epsilon per household-day, to show what remains (default: the role's, else 1)")
    p.add_argument("--delta", type=float, default=1e-6, help="delta of the (epsilon, delta) guarantee (default 1e-6)")
    p.add_argument("--gamma", type=float, default=0.2,
                   help="fraction of a feeder's meters assumed colluding in the parameter table (default 0.2; "
                        "spent epsilon uses what the role assumed at release)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON here (folder created if missing)")
    p.set_defaults(func=privacy_report_cmd)


def _released(audit_db: str | None):
    """(released cells per (feeder, day), the role's daily budget) from its verified audit log."""
    if audit_db is None:
        return None, None
    from meterveil.host.audit import signing
    from meterveil.host.audit.ledger import fold_verified

    p = Path(audit_db)
    if not p.is_file():
        raise FileNotFoundError(f"audit database {p} does not exist")
    led = fold_verified(p, signing.load_verify(p.with_name(signing.VERIFY_NAME)))
    return led.released_cells(), (None if led.daily_budget_milli is None else led.daily_budget_milli / 1000)


def privacy_report_cmd(args: argparse.Namespace) -> int:
    from meterveil.host.backoffice.privacy_report import build_report, format_report

    try:
        json_out = prepare_output(args.json_out, "--json") if args.json_out else None
        released, role_budget = _released(args.audit_db)
        budget = args.daily_budget if args.daily_budget is not None else role_budget
        rep = build_report(args.db, released, budget, args.delta, args.gamma)
    except (FileNotFoundError, sqlite3.DatabaseError, OutputError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if json_out is not None:
        try:
            write_private(json_out, json.dumps(rep, indent=1, default=str) + "\n")
        except OSError as e:
            print(f"error: cannot write {json_out}: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0
