"""User mistakes on the command line: one line on stderr, a non-zero exit, nothing decrypted or created.

One small demo run (6 meters, 1 feeder, 6 simulated hours) provides a store with real ciphertexts,
the gateway's keys folder, the registry and the decryption role's folder; each test works on its own
copy of the store and of the role folder (whose database holds the audit log) so audit entries can
be counted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from roles import audit_db, split_keys

from meterveil.host.audit.chain import AuditLog
from meterveil.host.cli import main as cli
from meterveil.host.common.pubkey import PUBLIC_NAME
from meterveil.host.common.registry import REGISTRY_NAME
from meterveil.host.decryption.secret_key import SECRET_NAME, generate_keypair
from meterveil.host.demo.run import run_demo
from meterveil.host.demo.setup import DemoConfig
from meterveil.host.gateway.mqtt import MqttConfig, MqttIngest
from meterveil.host.store.base import open_store

TARIFF = Path(__file__).resolve().parents[1] / "tariffs" / "tou3.toml"
CLI = [sys.executable, "-m", "meterveil.host.cli"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-out")
    result = run_demo(DemoConfig(meters=6, feeders=1, days=0.25, out=out, progress=False, timeout_s=600,
                                 min_band_readings=1))  # 6 hours; the bill floor is tested in test_billing
    run = json.loads((out / "run.json").read_text())
    start = datetime.fromisoformat(run["start"])
    t0 = int(start.timestamp())
    ws = result.workspace
    return {"keys": ws / "keys", "db": ws / "store.sqlite", "registry": ws / "registry" / REGISTRY_NAME,
            "role_dir": ws / "decryption", "period": run["start"][:7],
            "from": str(t0), "to": str(t0 + 6 * 3600), "start": start}


def _copy_db(src_path: Path, dst: Path) -> None:
    src = sqlite3.connect(src_path)
    copy = sqlite3.connect(dst)
    src.backup(copy)
    src.close()
    copy.close()


@pytest.fixture
def db(demo, tmp_path):
    """A private copy of the demo store, with a private copy of the decryption role's folder next to it
    (tmp_path/decryption: secret key, signing keys, its database with the audit log, anchors)."""
    dst = tmp_path / "store.sqlite"
    _copy_db(demo["db"], dst)
    role = tmp_path / "decryption"
    shutil.copytree(demo["role_dir"], role, ignore=shutil.ignore_patterns("*.db", "*.db-wal", "*.db-shm"))
    for src in demo["role_dir"].glob("*.db"):
        _copy_db(src, role / src.name)
    return dst


def role_of(db: Path) -> Path:
    return db.parent / "decryption"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory):
    """Decryption role folders holding key pairs the gateway did not encrypt with: 1024-bit
    (ciphertexts out of range) and 2048-bit."""
    made = {}
    for bits in (1024, 2048):
        _gw, role = split_keys(tmp_path_factory.mktemp(f"other{bits}"), *generate_keypair(bits))
        made[bits] = role
    return made


def audit_entries(db: Path) -> int:
    """Entries in the audit log of the role folder next to the store copy `db`."""
    with AuditLog(audit_db(db)) as audit:
        return len(list(audit.entries()))


def one_line_error(err: str) -> str:
    """The error output is one line (warnings from logging aside) and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and " WARNING " not in ln]
    assert len(lines) == 1, err
    return lines[0]


def feeder_load(demo, db, out, *extra, feeder="F01", role=None, registry=None):
    return cli.main(["feeder-load", "--db", str(db), "--role-dir", str(role or role_of(db)),
                     "--registry", str(registry or demo["registry"]), "--feeder", feeder,
                     "--from", demo["from"], "--to", demo["to"], "--out", str(out), "--actor", "t", *extra])


def bill(demo, db, out, *extra, role=None, registry=None):
    return cli.main(["bill", "--db", str(db), "--role-dir", str(role or role_of(db)),
                     "--registry", str(registry or demo["registry"]), "--tariff", str(TARIFF),
                     "--period", demo["period"], "--out", str(out), "--actor", "t", *extra])


# -- 1. --out checked before anything is decrypted ------------------------------------------------

def test_out_missing_folder_is_created(demo, db, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "f.csv"
    assert feeder_load(demo, db, out) == 0
    assert out.stat().st_size > 0
    bills = tmp_path / "other" / "b.csv"
    assert bill(demo, db, bills) == 0
    assert bills.stat().st_size > 0


@pytest.mark.parametrize("command", ["feeder-load", "bill"])
def test_out_directory_or_under_a_file_refused_before_decrypting(demo, db, tmp_path, capsys, command):
    run = feeder_load if command == "feeder-load" else bill
    before = audit_entries(db)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (tmp_path, afile / "x.csv"):
        capsys.readouterr()
        assert run(demo, db, out) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "--out" in line and str(out) in line
    assert audit_entries(db) == before  # nothing decrypted, nothing audited


# -- 2. a secret key of another key pair ---------------------------------------------------------

@pytest.mark.parametrize("bits", [1024, 2048])
def test_wrong_secret_key_is_one_line(demo, db, tmp_path, capsys, other_keys, bits):
    assert bill(demo, db, tmp_path / "b.csv", role=other_keys[bits]) == 2
    assert "does not match the key the gateway encrypted with" in one_line_error(capsys.readouterr().err)
    assert feeder_load(demo, db, tmp_path / "f.csv", role=other_keys[bits]) == 2
    assert "does not match the key the gateway encrypted with" in one_line_error(capsys.readouterr().err)


# -- 3. read-only commands never create a store ----------------------------------------------------

def test_missing_store_is_not_created(demo, tmp_path, capsys):
    missing = tmp_path / "mistyped" / "path.sqlite"
    assert cli.main(["stats", "--db", str(missing)]) != 0
    assert f"store {missing} does not exist" in one_line_error(capsys.readouterr().err)
    for argv in (["audit", "verify", "--db", str(missing)], ["audit", "head", "--db", str(missing)]):
        assert cli.main(argv) != 0
        assert f"audit database {missing} does not exist" in one_line_error(capsys.readouterr().err)
    assert bill(demo, missing, tmp_path / "b.csv") == 2
    assert f"store {missing} does not exist" in one_line_error(capsys.readouterr().err)
    assert feeder_load(demo, missing, tmp_path / "f.csv") == 2
    assert f"store {missing} does not exist" in one_line_error(capsys.readouterr().err)
    assert not missing.parent.exists()


def _not_stores(tmp_path: Path) -> tuple[Path, Path, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t(x)")
    return text, empty, other


def test_file_that_is_not_a_store_is_one_line(demo, tmp_path, capsys):
    text, empty, other = _not_stores(tmp_path)
    for path in (text, empty, other, tmp_path):
        assert cli.main(["stats", "--db", str(path)]) != 0, path
        assert str(path) in one_line_error(capsys.readouterr().err)
        assert bill(demo, path, tmp_path / "b.csv", role=demo["role_dir"]) == 2
        assert str(path) in one_line_error(capsys.readouterr().err)
    # audit verify without anchors next to the file refuses before opening it
    for path in (text, empty, other, tmp_path):
        assert cli.main(["audit", "verify", "--db", str(path)]) != 0, path
        one_line_error(capsys.readouterr().err)
    assert text.read_text() == "not a database\n" * 100 and empty.stat().st_size == 0
    with sqlite3.connect(other) as c:
        assert [n for (n,) in c.execute("SELECT name FROM sqlite_master")] == ["t"]


def test_audit_commands_on_a_file_that_is_not_an_audit_log_are_one_line(demo, tmp_path, capsys):
    text, empty, other = _not_stores(tmp_path)
    verify_key = str(demo["role_dir"] / "audit-verify.pub.json")  # so that the file itself is opened
    for path in (text, empty, other, tmp_path):
        for argv in (["audit", "verify", "--db", str(path), "--verify-key", verify_key, "--no-anchor"],
                     ["audit", "head", "--db", str(path)]):
            try:
                rc = cli.main(argv)
            except sqlite3.DatabaseError:
                rc = None
            assert rc not in (0, None), argv
            assert str(path) in one_line_error(capsys.readouterr().err)
    assert text.read_text() == "not a database\n" * 100 and empty.stat().st_size == 0
    with sqlite3.connect(other) as c:
        assert [n for (n,) in c.execute("SELECT name FROM sqlite_master")] == ["t"]


def test_open_store_create_flag(tmp_path):
    from meterveil.host.store.base import StoreError

    p = tmp_path / "sub" / "s.sqlite"
    with pytest.raises(StoreError, match="does not exist"):
        open_store(p, create=False)
    assert not p.parent.exists()
    open_store(p).close()  # the gateway's default still creates
    open_store(p, create=False).close()


# -- 4. gateway inputs and an unreachable broker -----------------------------------------------------

def _gateway(demo, tmp_path, *extra, broker="mqtt://127.0.0.1:1883", keys_dir=None, registry=None):
    db = tmp_path / "gw" / "gw.sqlite"
    res = subprocess.run(CLI + ["gateway", "--broker", broker, "--db", str(db),
                                "--keys", str(keys_dir or demo["keys"]),
                                "--registry", str(registry or demo["registry"]), *extra],
                         capture_output=True, text=True, timeout=120)
    assert not db.exists() and not db.parent.exists()  # nothing created for a bad command line
    return res.returncode, one_line_error(res.stderr)


def test_gateway_bad_inputs_are_one_line(demo, tmp_path):
    rc, line = _gateway(demo, tmp_path, keys_dir=tmp_path / "nokeys")
    assert rc == 1 and "keys dir" in line and "does not exist" in line
    rc, line = _gateway(demo, tmp_path, broker="127.0.0.1:1883")
    assert rc == 1 and "mqtt://127.0.0.1:1883" in line
    rc, line = _gateway(demo, tmp_path, broker="http://127.0.0.1:1883")
    assert rc == 1 and "mqtt://HOST:PORT" in line
    rc, line = _gateway(demo, tmp_path, "--tls-ca", str(tmp_path / "ca.pem"), broker="mqtts://127.0.0.1:8883")
    assert rc == 1 and "--tls-ca" in line and "does not exist" in line
    rc, line = _gateway(demo, tmp_path, "--username", "gw", "--password-file", str(tmp_path / "pw"))
    assert rc == 1 and "--password-file" in line and "does not exist" in line
    rc, line = _gateway(demo, tmp_path, registry=tmp_path / "noreg" / REGISTRY_NAME)
    assert rc == 1 and "--registry" in line and "does not exist" in line
    empty = tmp_path / "emptykeys"
    empty.mkdir()
    rc, line = _gateway(demo, tmp_path, keys_dir=empty)
    assert rc == 1 and PUBLIC_NAME in line


@pytest.mark.parametrize("name", [SECRET_NAME, "backup.json", "notes"])
def test_gateway_refuses_to_start_beside_the_secret_key(demo, tmp_path, name):
    """A Paillier secret key in the gateway's keys folder, under any name: one line, nothing started."""
    keys_dir = tmp_path / "keys"
    shutil.copytree(demo["keys"], keys_dir)
    shutil.copy(demo["role_dir"] / SECRET_NAME, keys_dir / name)
    rc, line = _gateway(demo, tmp_path, keys_dir=keys_dir)
    assert rc == 1 and "refusing to start" in line and str(keys_dir / name) in line
    assert "secret key" in line


def test_gateway_refuses_to_start_with_the_secret_key_beside_the_registry(demo, tmp_path):
    reg_dir = tmp_path / "registry"
    reg_dir.mkdir()
    shutil.copy(demo["registry"], reg_dir / REGISTRY_NAME)
    shutil.copy(demo["role_dir"] / SECRET_NAME, reg_dir / "k.json")
    rc, line = _gateway(demo, tmp_path, registry=reg_dir / REGISTRY_NAME)
    assert rc == 1 and "refusing to start" in line and str(reg_dir / "k.json") in line


def test_gateway_refuses_a_registry_holding_keys(demo, tmp_path):
    """A version 1 meters.json (master keys inside) is not read: one line pointing at split-registry."""
    old = tmp_path / "old" / REGISTRY_NAME
    old.parent.mkdir()
    data = json.loads(demo["registry"].read_text())
    data["version"] = 1
    for d in data["meters"].values():
        d["key"] = "ab" * 32
    old.write_text(json.dumps(data))
    rc, line = _gateway(demo, tmp_path, registry=old)
    assert rc == 1 and "split-registry" in line and "ab" * 32 not in line


class _IdleGateway:
    """Just enough of Gateway for MqttIngest's worker when no message ever arrives."""

    def pending(self) -> int:
        return 0

    def commit(self) -> None:
        pass

    def release_quarantine(self) -> None:
        pass


def test_unreachable_broker_logged_once_per_attempt(caplog):
    caplog.set_level(logging.WARNING, logger="meterveil.gateway.mqtt")
    ingest = MqttIngest(_IdleGateway(), MqttConfig.from_url("mqtt://127.0.0.1:1"))  # type: ignore[arg-type]
    t0 = time.monotonic()
    ingest.start()
    try:
        deadline = time.monotonic() + 10
        while ingest.connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
    finally:
        ingest.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "cannot connect to broker 127.0.0.1:1" in r.getMessage()]
    assert len(warnings) >= 2, caplog.text
    assert "refused" in warnings[0].lower()
    assert len(warnings) <= 1 + elapsed  # backoff >= 1 s between attempts: no flood


# -- 5. demo inputs ----------------------------------------------------------------------------------

def test_demo_bad_inputs_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    afile = tmp_path / "README.md"
    afile.write_text("keep me\n")
    for argv, needle in ((["--tariff", str(tmp_path / "none.toml"), "--out", str(out)], "none.toml"),
                         (["--start", "2026-13-01", "--out", str(out)], "--start"),
                         (["--out", str(afile)], "not a directory"),
                         (["--out", str(afile / "x")], "not a directory")):
        assert cli.main(["-v", "demo", "--quiet", *argv]) == 1, argv
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith("demo failed:") and needle in line, line
    assert not out.exists() and afile.read_text() == "keep me\n"


# -- 6. keys add-meter --dir is a directory ------------------------------------------------------------

def test_add_meter_creates_missing_dir_0700(tmp_path, capsys):
    from meterveil.host.common.registry import MeterRegistry
    from meterveil.host.gateway.meter_keys import KEYS_NAME, KeyedRegistry

    d, reg = tmp_path / "x" / "nokeys", tmp_path / "y" / "registry" / REGISTRY_NAME
    assert cli.main(["keys", "add-meter", "--dir", str(d), "--registry", str(reg), "--meter-id", "m1",
                     "--feeder", "F1"]) == 0
    assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(reg.parent.stat().st_mode) == 0o700
    assert KeyedRegistry.load(d, reg).get("m1") is not None and (d / KEYS_NAME).is_file()
    assert MeterRegistry.load(reg).get("m1") is not None
    assert json.loads(capsys.readouterr().out)["registry"] == str(reg)


def test_add_meter_refuses_a_file_as_dir(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me\n")
    for argv in (["add-meter", "--dir", str(f), "--registry", str(tmp_path / REGISTRY_NAME), "--meter-id", "m1",
                  "--feeder", "F1"],
                 ["init", "--dir", str(f), "--secret-dir", str(tmp_path / "role"), "--bits", "1024"],
                 ["init", "--dir", str(tmp_path / "gw"), "--secret-dir", str(f), "--bits", "1024"]):
        assert cli.main(["keys", *argv]) == 1
        assert f.read_text() == "keep me\n"
        assert "not a directory" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / REGISTRY_NAME).exists() and not (tmp_path / "role").exists()
    assert not (tmp_path / "gw").exists()


def test_keys_init_overlapping_folders_is_one_line(tmp_path, capsys):
    d = tmp_path / "k"
    for secret in (d, d / "decryption"):
        assert cli.main(["keys", "init", "--dir", str(d), "--secret-dir", str(secret), "--bits", "512"]) == 1
        assert "overlap" in one_line_error(capsys.readouterr().err)
    assert not d.exists()


# -- 7. feeder-load exit codes, bill --keys ------------------------------------------------------------

def test_unknown_feeder_is_exit_2(demo, db, tmp_path, capsys):
    before = audit_entries(db)
    assert feeder_load(demo, db, tmp_path / "f.csv", feeder="F99") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "F99" in line and "F01" in line
    assert audit_entries(db) == before and not (tmp_path / "f.csv").exists()


def test_refused_intervals_are_exit_3(demo, db, tmp_path, capsys):
    out = tmp_path / "f.csv"
    assert feeder_load(demo, db, out, "--k-min", "7") == 3  # 6 meters < k_min: every interval refused
    captured = capsys.readouterr()
    assert "0 intervals released, 7 refused" in captured.out and "refused" in captured.err  # 7 hourly cells
    assert out.exists()


def test_feeder_load_help_documents_exit_codes():
    res = subprocess.run(CLI + ["feeder-load", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "3 some intervals refused" in " ".join(res.stdout.split())


def test_bill_registry_and_role_dir_must_exist(demo, db, tmp_path, capsys):
    before = audit_entries(db)
    assert bill(demo, db, tmp_path / "b.csv", registry=tmp_path / "nonexistent") == 2
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    assert bill(demo, db, tmp_path / "b.csv", registry=empty) == 2
    assert REGISTRY_NAME in one_line_error(capsys.readouterr().err)
    assert bill(demo, db, tmp_path / "b.csv", role=tmp_path / "norole") == 2
    assert "does not exist" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "norole").exists()
    # the gateway's keys folder is not a decryption role folder
    assert bill(demo, db, tmp_path / "b.csv", role=demo["keys"]) == 2
    assert SECRET_NAME in one_line_error(capsys.readouterr().err)
    assert audit_entries(db) == before
    assert os.listdir(tmp_path).count("b.csv") == 0
