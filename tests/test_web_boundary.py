"""The web process holds no key: run the real `meterveil web` and look at what it imported and opened.

Every page of every role is requested (the auditor's verify included), then the server is stopped;
an audit hook in the web process recorded every file it opened and the modules it loaded. None of
the decryption role, the gateway or the demo may be among the modules, and no key file (Paillier
secret key, audit signing key, meter keys) among the files, although all of them sit in the
workspace next to the store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from webutil import METERS, Browserless, build_workspace, free_port

from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.web.app import ROUTE_ROLES

PROBE = r"""
import atexit, json, sys
opened = []
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)) or event == "sqlite3.connect":
        opened.append(str(args[0]))
sys.addaudithook(hook)
def dump():
    with open(sys.argv[1], "w") as f:
        json.dump({"opened": opened, "modules": sorted(sys.modules)}, f)
atexit.register(dump)
from meterveil.host.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_web_process_never_loads_role_code_or_reads_a_key(tmp_path):
    ws = build_workspace(tmp_path / "ws", generate_keypair(512))
    gw_keys = tmp_path / "ws" / "keys"
    gw_keys.mkdir()
    (gw_keys / "meter-keys.json").write_text(json.dumps({"version": 1, "meters": {}}))
    report = tmp_path / "probe.json"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", PROBE, str(report), "web", "--db", str(ws.store),
                             "--bind", f"127.0.0.1:{port}", "--registry", str(ws.registry),
                             "--audit-db", str(ws.role_dir / "decryption.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        c = Browserless(f"http://127.0.0.1:{port}")
        deadline = time.time() + 60
        while True:
            try:
                c.get("/login")
                break
            except Exception:
                assert time.time() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        seen = 0
        for role in ("operator", "billing", "auditor", "analyst", "household"):
            c = Browserless(f"http://127.0.0.1:{port}")
            assert c.login(role).status_code == 303
            csrf = c.csrf(f"/{role}")
            for route, allowed in ROUTE_ROLES.items():
                if role not in allowed:
                    continue
                path = route.replace("{rid:int}", "1")
                if path in ("/billing/request", "/auditor/verify", "/analyst/request"):
                    r = c.post(path, {"csrf": csrf, "period": "2026-11", "tariff": "tou3", "feeder": "F1",
                                      "from": "2026-11-01", "to": "2026-11-01"})
                else:
                    r = c.get(path + ("?month=2026-11" if path.endswith(".json") else ""))
                assert r.status_code in (200, 303, 404), (role, path, r.status_code)
                seen += 1
        assert seen == sum(len(v) for v in ROUTE_ROLES.values())
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    probe = json.loads(report.read_text())
    modules = probe["modules"]
    assert "meterveil.host.web.app" in modules and "meterveil.host.audit.chain" in modules  # the probe sees
    forbidden = [m for m in modules if m.startswith(("meterveil.host.decryption", "meterveil.host.gateway",
                                                     "meterveil.host.demo"))]
    assert forbidden == []
    opened = probe["opened"]
    assert any("store.db" in p for p in opened)  # the hook sees the files the web tier reads
    keys = [p for p in opened if any(k in p for k in ("utility.key.json", "audit-signing.key.json", "meter-keys.json"))]
    assert keys == []
    assert METERS[0]  # the workspace had meters and households
