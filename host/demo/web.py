"""`meterveil demo --web`: after the demo, start the console on its workspace and print the logins.

Why two child processes: the console must hold no key even in the demo, so it runs as its own
`meterveil web` process beside `meterveil decryption serve` (the only one that opens the role
folder), exactly as on separate machines. Accounts are made here with random passwords (one per
role, one household), printed once; nothing has a default password.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from meterveil.host.backoffice.tariff import load_tariff
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.common.release_queue import QUEUE_NAME, ReleaseQueue
from meterveil.host.household.card import CARD_TEXT
from meterveil.host.web.accounts import ROLES, WEB_DB_NAME, Accounts, generate_password


def make_logins(web_db: Path, household_meter: str) -> dict[str, tuple[str, str]]:
    """role -> (user name, password): fresh accounts in a fresh web.db."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(web_db) + suffix).unlink(missing_ok=True)
    acc = Accounts(web_db)
    out = {}
    try:
        for role in ROLES:
            name = f"{role}-{household_meter}" if role == "household" else role
            pw = generate_password()
            acc.add_user(name, role, pw, household_meter if role == "household" else None)
            out[role] = (name, pw)
    finally:
        acc.close()
    return out


def serve_console(workspace: Path, tariff_path: Path, start: datetime | None, bind: str = "127.0.0.1:8080") -> int:
    db = workspace / "store.sqlite"
    registry = workspace / "registry" / "meters.json"
    role_dir = workspace / "decryption"
    meters = MeterRegistry.load(registry).ids()
    logins = make_logins(db.with_name(WEB_DB_NAME), sorted(meters)[0])
    tariff = load_tariff(tariff_path)
    if start is not None:  # the demo's bill run, answered by the decryption role like any other request
        period = start.astimezone(ZoneInfo(tariff.timezone)).strftime("%Y-%m")
        with ReleaseQueue(db.with_name(QUEUE_NAME)) as q:
            q.submit("bill", {"period": period, "tariff": tariff.name}, "demo")
    cli = [sys.executable, "-m", "meterveil.host.cli"]
    worker = subprocess.Popen([*cli, "decryption", "serve", "--db", str(db), "--role-dir", str(role_dir),
                               "--registry", str(registry), "--tariff", str(tariff_path)])
    web = subprocess.Popen([*cli, "web", "--db", str(db), "--bind", bind, "--registry", str(registry),
                            "--audit-db", str(role_dir / "decryption.db"), "--tariff", str(tariff_path)])
    print(f"\nweb console: http://{bind}/  (Ctrl-C to stop)")
    print("logins (generated now, shown once):")
    for role, (name, pw) in logins.items():
        print(f"  {role:<10} {name:<18} {pw}")
    card = workspace / "households" / sorted(meters)[0] / CARD_TEXT
    if card.is_file():  # --mode e2e: the household's readings open in its browser with this card's key
        print(f"  household card (paste its line on 'My 15-minute readings'): {card}")
    try:
        return web.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for p in (web, worker):
            if p.poll() is None:
                p.terminate()
        for p in (web, worker):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
