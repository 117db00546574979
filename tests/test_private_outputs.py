"""Every file the decryption role writes is owner-only (0600), whatever the umask.

Attack run: bills, feeder loads, exports and the export report were written 0644; the audit log
database (every release, its meters and feeders) and the anchor log were created with the umask too.
"""

from __future__ import annotations

import os
import subprocess
import sys

from roles import role_dir_for
from test_billing import TARIFFS, fill_store, keypair, synth  # noqa: F401 - keypair is a fixture

from meterveil.host.common.files import open_private_append
from meterveil.host.common.registry import MeterRecord, MeterRegistry


def _loose(folder) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.stat().st_mode & 0o077)


def test_decryption_role_folder_and_outputs_are_owner_only(tmp_path, keypair):  # noqa: F811
    pub, priv = keypair
    reg = MeterRegistry.load(tmp_path / "registry" / "meters.json")
    for m in ("h1", "h2", "h3", "h4"):
        reg.put(MeterRecord(m, "F1", 1000, 1000, 2), save=False)
    reg.save()
    db = tmp_path / "s.db"
    fill_store(db, pub, synth("Europe/Berlin", 2026, 11, 5))
    role = role_dir_for(db, priv)
    out = tmp_path / "out"
    common = ["--db", str(db), "--role-dir", str(role), "--registry", str(reg.path)]
    old = os.umask(0o022)
    try:
        for cmd in (["bill", *common, "--tariff", str(TARIFFS / "slabs.toml"), "--period", "2026-11",
                     "--out", str(out / "bills.csv")],
                    ["feeder-load", *common, "--k-min", "2", "--feeder", "F1", "--from", "2026-11-02T00:00:00Z",
                     "--to", "2026-11-02T06:00:00Z", "--out", str(out / "loads.csv")]):
            res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", *cmd], capture_output=True, text=True)
            # 4 meters stored with m = 5: the feeder sums are refused (exit 3), and the file with the
            # reasons is written all the same
            assert res.returncode in (0, 3) and (out / cmd[cmd.index("--out") + 1].split("/")[-1]).exists(), res.stderr
    finally:
        os.umask(old)
    names = {p.name for p in role.iterdir()}
    assert {"decryption.db", "audit-anchors.jsonl", "audit-verify.pub.json"} <= names, names
    assert _loose(role) == [] and _loose(out) == [] and len(list(out.iterdir())) == 2


def test_appended_logs_are_owner_only_even_if_they_existed_loose(tmp_path):
    p = tmp_path / "meter.log"
    p.write_text("old\n")
    os.chmod(p, 0o644)
    with open_private_append(p) as f:
        f.write("reading\n")
    with open_private_append(tmp_path / "new.log", binary=True) as f:
        f.write(b"x")
    assert _loose(tmp_path) == [] and p.read_text() == "old\nreading\n"
