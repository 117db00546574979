"""`meterveil web` (the console) and `meterveil users add|list` (its accounts).

Why users are a web command: accounts live in the web tier's own database (web.db, see
accounts.py), which no other role reads. Passwords are generated and printed once unless one is
piped in (`--password-stdin`); nothing has a default password.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meterveil.host.common.release_queue import QUEUE_NAME
from meterveil.host.web.accounts import ROLES, WEB_DB_NAME
from meterveil.tools.fileio import ToolError


def _web_db(args: argparse.Namespace) -> Path:
    return Path(args.web_db) if args.web_db else Path(args.db).with_name(WEB_DB_NAME)


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("web", help="the web console for the utility's roles and the household portal")
    w.add_argument("--db", required=True, help="the ingest store (read only)")
    w.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    w.add_argument("--web-db", help=f"accounts and sessions (default: {WEB_DB_NAME} next to --db)")
    w.add_argument("--queue", help=f"release queue shared with `decryption serve` (default: {QUEUE_NAME} next to --db)")
    w.add_argument("--registry", help="meters.json (no keys): feeders, households, attributes")
    w.add_argument("--audit-db", help="the decryption role's decryption.db (read only, for the auditor page)")
    w.add_argument("--verify-key", help="audit verify key (default: next to --audit-db)")
    w.add_argument("--anchors", help="audit anchor log copy (default: next to --audit-db)")
    w.add_argument("--tariff", action="append", default=[], help="tariff TOML billing may request (repeatable)")
    w.add_argument("--silent-after", type=int, default=2700, help="seconds without a frame before a meter is "
                                                                  "shown silent (default 2700)")
    w.add_argument("--insecure-cookies", action="store_true",
                   help="drop the Secure flag from cookies: only for plain http on a non-loopback address "
                        "(browsers already send Secure cookies to http://127.0.0.1 and localhost)")
    w.set_defaults(func=web_cmd)

    u = sub.add_parser("users", help="web console accounts")
    usub = u.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    a = usub.add_parser("add", help="add an account; prints a generated password once")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--meter", help="the household's meter (household accounts only)")
    a.add_argument("--db", help="the ingest store the console runs on (web.db goes next to it)")
    a.add_argument("--web-db", help=f"accounts database (default: {WEB_DB_NAME} next to --db)")
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin instead")
    a.set_defaults(func=users_add_cmd)
    ls = usub.add_parser("list", help="list accounts (no hashes)")
    ls.add_argument("--db")
    ls.add_argument("--web-db")
    ls.set_defaults(func=users_list_cmd)


def _accounts(args: argparse.Namespace):
    from meterveil.host.web.accounts import Accounts

    if not args.web_db and not args.db:
        raise ToolError("give --db STORE (web.db next to it) or --web-db FILE")
    return Accounts(_web_db(args))


def users_add_cmd(args: argparse.Namespace) -> int:
    from meterveil.host.web.accounts import AccountError, generate_password

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else generate_password()
    acc = _accounts(args)
    try:
        user = acc.add_user(args.name, args.role, password, args.meter)
    except AccountError as e:
        raise ToolError(str(e)) from None
    finally:
        acc.close()
    print(f"added {user.name} ({user.role}{', meter ' + user.meter_id if user.meter_id else ''})")
    if not args.password_stdin:
        print(f"password (shown once): {password}")
    return 0


def users_list_cmd(args: argparse.Namespace) -> int:
    acc = _accounts(args)
    try:
        for u in acc.users():
            print(f"{u.name}\t{u.role}\t{u.meter_id or ''}")
    finally:
        acc.close()
    return 0


def config_from_args(args: argparse.Namespace):
    from meterveil.host.backoffice.tariff import DEFAULT_TARIFF, load_tariff
    from meterveil.host.web.app import WebConfig

    store = Path(args.db)
    if not store.is_file():
        raise ToolError(f"--db {store} does not exist (the gateway creates the store)")
    tariffs = tuple(load_tariff(p).name for p in (args.tariff or [str(DEFAULT_TARIFF)]))
    return WebConfig(store=store, web_db=_web_db(args), queue=Path(args.queue) if args.queue else store.with_name(QUEUE_NAME),
                     registry=Path(args.registry) if args.registry else None,
                     audit_db=Path(args.audit_db) if args.audit_db else None,
                     verify_key=Path(args.verify_key) if args.verify_key else None,
                     anchors=Path(args.anchors) if args.anchors else None, tariffs=tariffs,
                     secure_cookies=not args.insecure_cookies, silent_after_s=args.silent_after)


def parse_bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ToolError(f"--bind {text!r}: HOST:PORT")
    return host, int(port)


def web_cmd(args: argparse.Namespace) -> int:
    import uvicorn

    from meterveil.host.web.app import create_app

    cfg = config_from_args(args)
    host, port = parse_bind(args.bind)
    app = create_app(cfg)
    print(f"meterveil console on http://{host}:{port}/ (store {cfg.store}, accounts {cfg.web_db})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
    return 0
