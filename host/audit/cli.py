"""`meterveil audit verify|head`: what an auditor runs, with the public verify key only.

Why the defaults point next to the database: `keys init` puts the role's database, its verify key
and its anchor log in one folder, so `audit verify --db ROLE_DIR/decryption.db` works as is; an
auditor who keeps copies elsewhere passes `--verify-key` and `--anchors`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meterveil.host.audit import anchors, signing
from meterveil.host.audit.chain import AuditError, AuditLog
from meterveil.host.common.pubkey import KeyFileError


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="check the signed, hash-chained audit log of the decryption role")
    asub = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser("verify", help="exit 0 if the chain, its signatures and the newest anchor check out, "
                                       "1 naming the first bad entry")
    v.add_argument("--db", required=True, help="the decryption role's database (ROLE_DIR/decryption.db)")
    v.add_argument("--verify-key", help=f"audit verify key (default: {signing.VERIFY_NAME} next to --db)")
    v.add_argument("--anchors", help=f"signed anchor log (default: {anchors.ANCHORS_NAME} next to --db)")
    v.add_argument("--no-anchor", action="store_true",
                   help="accept a log without anchors (cannot detect truncation; for a brand-new role only)")
    v.set_defaults(func=verify_cmd)
    h = asub.add_parser("head", help="print SEQ:HASH of the last entry (anchors are written automatically)")
    h.add_argument("--db", required=True)
    h.set_defaults(func=head_cmd)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _existing_db(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"audit database {p} does not exist")
    return p


def verify_cmd(args: argparse.Namespace) -> int:
    try:
        db = _existing_db(args.db)
        key = signing.load_verify(args.verify_key or db.with_name(signing.VERIFY_NAME))
        anchor = None
        if not args.no_anchor:
            newest = anchors.latest(args.anchors or db.with_name(anchors.ANCHORS_NAME), key)
            anchor = None if newest is None else (newest.seq, newest.hash)
    except (OSError, KeyFileError, anchors.AnchorError) as e:
        return _fail(str(e))
    try:
        with AuditLog(db, readonly=True) as log:
            if anchor is None and not args.no_anchor and log.head()[0] > 0:
                return _fail("the anchor log is empty but the audit log is not: truncation cannot be ruled out")
            result = log.verify(key, anchor)
    except AuditError as e:
        return _fail(str(e))
    print(result.describe() + ("" if anchor is None else f" (reaches anchor {anchor[0]})"))
    return 0 if result.ok else 1


def head_cmd(args: argparse.Namespace) -> int:
    try:
        db = _existing_db(args.db)
    except OSError as e:
        return _fail(str(e))
    try:
        with AuditLog(db, readonly=True) as log:
            seq, h = log.head()
    except AuditError as e:
        return _fail(str(e))
    print(f"{seq}:{h}")
    return 0
