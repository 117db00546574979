"""Trust boundaries: import contracts, the gateway process's modules, keys split by role, and the
attacks on the old single-file audit log and ledger (each refused or harmless now)."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from brokerutil import wait_until
from roles import audit_db, registry_from_store, role_for, session

from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.policy import Policy, PolicyError
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.meter_keys import KEYS_NAME, KeyedRegistry
from meterveil.host.store.base import Batch, StoredReading, open_store
from meterveil.tools import import_contracts

REPO = Path(__file__).resolve().parents[1]
T0 = 1793471400  # 2026-11-01 00:00 IST, on the 15-minute grid
IV = 900


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


# -- import contracts ------------------------------------------------------------------------------
def _tree_copy(tmp_path: Path) -> Path:
    for folder in ("host", "protocol", "tools"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_the_tree_keeps_every_contract():
    assert import_contracts.check(REPO) == []


@pytest.mark.parametrize("file,line,contract", [
    ("host/gateway/mqtt.py", "    from meterveil.host.decryption import role", "gateway holds no decryption"),
    ("host/gateway/ingest.py", "    import pandas", "gateway holds no decryption"),
    ("host/decryption/role.py", "    from meterveil.host.gateway.meter_keys import MeterKeys",
     "never reaches the gateway"),
    ("host/backoffice/billing.py", "    from ..decryption import secret_key", "back office holds no keys"),
    ("host/web_probe.py", "    import importlib; importlib.import_module('x' + 'y')", "computed name"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, file, line, contract):
    """A lazy (function-level) import, a relative one and a hidden one are all seen."""
    repo = _tree_copy(tmp_path)
    with (repo / file).open("a") as fh:
        fh.write(f"\n\ndef _probe():\n{line}\n")
    problems = import_contracts.check(repo)
    assert any(contract in p for p in problems), problems
    assert import_contracts.main([str(repo)]) == 1


# -- the gateway process -----------------------------------------------------------------------------
def _provisioned(tmp_path: Path, pub, priv):
    from roles import split_keys

    gw_keys, role = split_keys(tmp_path, pub, priv)
    reg = KeyedRegistry.load(gw_keys, tmp_path / "registry" / "meters.json")
    for i in range(5):
        reg.add(f"m{i}", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=5)
    reg.save()
    return gw_keys, role, reg


def test_gateway_process_never_loads_decryption_code(tmp_path, keypair, mosquitto):
    """`-X importtime` lists every module the process imported: nothing of the decryption role, the
    back office, the demo, pandas or matplotlib."""
    gw_keys, _, reg = _provisioned(tmp_path, *keypair)
    log = tmp_path / "gw.err"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "meterveil.host.cli", "gateway",
                                 "--broker", mosquitto.url, "--db", str(tmp_path / "s.db"), "--keys", str(gw_keys),
                                 "--registry", str(reg.registry.path)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert wait_until(lambda: b"gateway ready" in log.read_bytes(), 60), log.read_text()[-2000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    loaded = {line.split("|")[-1].strip() for line in log.read_text().splitlines() if line.startswith("import time:")}
    assert "meterveil.host.gateway.ingest" in loaded  # the probe sees the gateway's own modules
    forbidden = [m for m in loaded if m.startswith(("meterveil.host.decryption", "meterveil.host.backoffice",
                                                    "meterveil.host.demo", "meterveil.host.audit", "pandas",
                                                    "matplotlib"))]
    assert forbidden == []


def test_gateway_refuses_a_keys_folder_holding_the_secret_key(tmp_path, keypair):
    gw_keys, role, reg = _provisioned(tmp_path, *keypair)
    shutil.copy(role / "utility.key.json", gw_keys / "backup-of-something.json")  # renamed: found by content
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "gateway", "--broker", "mqtt://127.0.0.1:1",
                          "--db", str(tmp_path / "s.db"), "--keys", str(gw_keys), "--registry", str(reg.registry.path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "refusing to start" in res.stderr and "secret key" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.db").exists()


def test_keys_init_refuses_to_put_the_secret_key_with_the_gateway(tmp_path):
    for secret in (tmp_path / "keys", tmp_path / "keys" / "inner"):
        res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "keys", "init", "--dir",
                              str(tmp_path / "keys"), "--secret-dir", str(secret), "--bits", "512"],
                             capture_output=True, text=True)
        assert res.returncode == 1 and "overlap" in res.stderr
    assert not (tmp_path / "keys").exists()
    ok = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "keys", "init", "--dir", str(tmp_path / "keys"),
                         "--secret-dir", str(tmp_path / "decryption"), "--bits", "512"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["utility.pub.json"]
    d = tmp_path / "decryption"
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "utility.key.json").stat().st_mode & 0o777 == 0o600
    assert (d / "audit-signing.key.json").stat().st_mode & 0o777 == 0o600


# -- a store the attacks run against ---------------------------------------------------------------
class Fleet:
    """Real ciphertexts for 6 meters on F1 and 5 on F2, one interval."""

    def __init__(self, tmp_path: Path, pub):
        self.db = tmp_path / "s.db"
        enc = make_encryptor("djn+packed", pub)
        rows = [(f"a{k}", "F1") for k in range(6)] + [(f"b{k}", "F2") for k in range(5)]
        batch = Batch()
        for i, (mid, feeder) in enumerate(rows):
            (c,) = enc.encrypt_reading(100 + i, 10 * i - 40)
            batch.readings.append(StoredReading(mid, 1, feeder, T0, IV, 1000, 1000, 5, c))
        enc.close()
        store = open_store(self.db)
        store.write_batch(batch)
        store.close()
        self.registry = registry_from_store(self.db)

    def feeder_load(self, role, feeder, t0=T0, t1=T0 + IV):
        store = open_store(self.db)
        try:
            return role.feeder_load(store, feeder, t0, t1)
        finally:
            store.close()


def test_decryption_role_never_opens_meter_keys(tmp_path, keypair, monkeypatch):
    """Bills and feeder loads with the gateway's key file absent, and with every file open watched."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    opened: list[str] = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    from meterveil.host.backoffice.tariff import DEFAULT_TARIFF, load_tariff

    with session(f.db, priv, "clerk", Policy(min_band_readings=1), f.registry) as role:  # a few readings each
        assert f.feeder_load(role, "F1")[0].allowed
        store = open_store(f.db)
        assert len(role.household_totals(store, load_tariff(DEFAULT_TARIFF), "2026-11")) == 11
        store.close()
    assert not [p for p in opened if p.endswith(KEYS_NAME)]
    assert not list(tmp_path.rglob(KEYS_NAME))


def test_registry_refuses_an_entry_holding_a_key(tmp_path):
    reg = MeterRegistry.load(tmp_path / "meters.json")
    reg.put(MeterRecord("m1", "F1", 1000, 1000, 5))
    text = (tmp_path / "meters.json").read_text().replace('"feeder"', '"key": "00", "feeder"')
    (tmp_path / "meters.json").write_text(text)
    with pytest.raises(ValueError, match="holds a master key"):
        MeterRegistry.load(tmp_path / "meters.json")


# -- the attacks on the old ledger, rerun ------------------------------------------------------------
def _tamper(db: Path, *sql: str) -> None:
    con = sqlite3.connect(db)
    for t in ("audit_log_no_update", "audit_log_no_delete", "audit_log_no_overwrite"):
        con.execute(f"DROP TRIGGER IF EXISTS {t}")
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()


def test_deleting_a_release_from_the_role_database_stops_the_role(tmp_path, keypair):
    """Old attack: delete the dp_release row (and reset the reconcile marker), release again over
    another set. Now the release is a signed audit entry: deleting it breaks the chain, and the role
    refuses to decrypt anything until the log is restored."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    with session(f.db, priv, "ops", Policy(), f.registry) as role:
        assert f.feeder_load(role, "F1")[0].allowed
    _tamper(audit_db(f.db), "DELETE FROM audit_log WHERE action = 'feeder-load'",
            "UPDATE audit_head SET seq = (SELECT MAX(seq) FROM audit_log)")
    with pytest.raises(PolicyError, match="refusing to decrypt"):
        with session(f.db, priv, "ops", Policy(), f.registry):
            pass


def test_duplicate_json_key_in_a_release_entry_stops_the_role(tmp_path, keypair):
    """Old attack: a duplicate key in an audit entry made SQLite's reading (the ledger) differ from
    Python's (the verifier). Entries are canonical JSON parsed strictly, and signed."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    with session(f.db, priv, "ops", Policy(), f.registry) as role:
        assert f.feeder_load(role, "F1")[0].allowed
    con = sqlite3.connect(audit_db(f.db))
    seq, query = con.execute("SELECT seq, query FROM audit_log WHERE action = 'feeder-load'").fetchone()
    con.close()
    forged = query[:-1] + ',"members_digest":"' + "0" * 64 + '"}'
    _tamper(audit_db(f.db), f"UPDATE audit_log SET query = '{forged}' WHERE seq = {seq}")
    with pytest.raises(PolicyError, match="duplicate key|refusing to decrypt"):
        with session(f.db, priv, "ops", Policy(), f.registry):
            pass


def test_rewriting_readings_feeder_does_not_re_release_an_interval(tmp_path, keypair):
    """Old attack: change readings.feeder for five meters so a "new" feeder re-releases an interval
    over a different set. Membership comes from the registry, frozen per month, never from the store."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    with session(f.db, priv, "ops", Policy(), f.registry) as role:
        (first,) = f.feeder_load(role, "F1")
        assert first.allowed and first.contributors == 6
    con = sqlite3.connect(f.db)
    con.execute("UPDATE readings SET feeder = 'F2' WHERE meter_id IN ('a0', 'a1', 'a2', 'a3', 'a4')")
    con.execute("UPDATE readings SET feeder = 'F9' WHERE meter_id = 'a5'")
    con.commit()
    con.close()
    with session(f.db, priv, "ops", Policy(), f.registry) as role:
        (f1,) = f.feeder_load(role, "F1")
        (f2,) = f.feeder_load(role, "F2")
        assert (f1.contributors, f1.analytics_sum_wh) == (6, first.analytics_sum_wh)  # unchanged
        assert f2.contributors == 5  # the five a-meters do not join F2
        assert f.feeder_load(role, "F9") == []  # not a feeder of the registry: nothing to release
    # re-drawing the registry mid-month does not move the frozen membership either
    moved = MeterRegistry.load(f.registry.path)
    for k in range(5):
        moved.put(MeterRecord(f"a{k}", "F2", 1000, 1000, 5), replace_existing=True, save=False)
    moved.save()
    with session(f.db, priv, "ops", Policy(), moved) as role:
        assert f.feeder_load(role, "F2")[0].contributors == 5


def test_emptied_role_database_is_caught_by_the_anchor(tmp_path, keypair):
    """Old finding: an empty log verified as "intact: 0 entries". The anchor log (signed heads, one
    per session) makes a truncated or emptied log fail, in the role and in `audit verify`."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    with session(f.db, priv, "ops", Policy(), f.registry) as role:
        assert f.feeder_load(role, "F1")[0].allowed
    _tamper(audit_db(f.db), "DELETE FROM audit_log", "DELETE FROM audit_head")
    with pytest.raises(PolicyError, match="beyond the end of the chain"):
        with session(f.db, priv, "ops", Policy(), f.registry):
            pass
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "audit", "verify", "--db",
                          str(audit_db(f.db))], capture_output=True, text=True)
    assert res.returncode == 1 and "truncated" in res.stdout


def test_role_reads_the_store_it_is_given_not_its_own_audit(tmp_path, keypair):
    """The audit log is not in the ingest store: the store file has no audit table at all."""
    pub, priv = keypair
    f = Fleet(tmp_path, pub)
    role = role_for(f.db, priv, registry=f.registry)
    f.feeder_load(role, "F1")
    role.close()
    con = sqlite3.connect(f.db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()
    assert "audit_log" not in tables and "dp_release" not in tables
    assert audit_db(f.db).exists()
