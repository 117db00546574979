"""Signed, hash-chained audit log: intact chains verify; edits, deletions, reordering, rewritten chains,
non-canonical entries and truncation are detected."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meterveil.host.audit import anchors
from meterveil.host.audit.chain import (
    GENESIS,
    AuditError,
    AuditLog,
    canonical_json,
    parse_anchor,
    result_digest,
)

SK = Ed25519PrivateKey.generate()  # test signing key, generated per run


def _fill(path, n: int = 6) -> list:
    with AuditLog(path, signer=SK) as log:
        return [
            log.append(f"clerk{i % 2}", "bill", {"meter_id": f"m{i:03d}", "period": "2026-11", "band": "peak"},
                       "allow" if i % 3 else "refuse", "ok" if i % 3 else "refused: 3 < m=5",
                       result_digest({"wh": i * 1000}, b"k" * 32) if i % 3 else "")
            for i in range(n)
        ]


def _tamper(path, *sql: str) -> None:
    """Tamper as an attacker with write access would: drop the append-only triggers first."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    db.execute("DROP TRIGGER IF EXISTS audit_log_no_overwrite")
    for s in sql:
        db.execute(s)
    db.commit()
    db.close()


def _verify(path, anchor=None):
    with AuditLog(path) as log:
        return log.verify(SK.public_key(), anchor)


def test_intact_chain_verifies_and_links(tmp_path):
    db = tmp_path / "s.db"
    entries = _fill(db)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:], strict=False))
    r = _verify(db)
    assert r.ok and r.entries == 6 and r.first_bad_seq is None
    assert r.head == (6, entries[-1].entry_hash)
    with AuditLog(db) as log:
        stored = list(log.entries())
    assert stored == entries  # what was hashed is exactly what was stored
    assert all(e.signature_ok(SK.public_key()) for e in stored)
    other = Ed25519PrivateKey.generate().public_key()
    assert not _verify_with(db, other).ok  # signatures bind the chain to the role's key


def _verify_with(path, key):
    with AuditLog(path) as log:
        return log.verify(key)


def test_empty_log_verifies(tmp_path):
    r = _verify(tmp_path / "e.db")
    assert r.ok and r.entries == 0 and r.head == (0, GENESIS)


def test_triggers_block_plain_updates(tmp_path):
    db = tmp_path / "s.db"
    _fill(db, 2)
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 2")
    # REPLACE deletes the old row without firing delete triggers: the insert itself is refused
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("INSERT OR REPLACE INTO audit_log SELECT seq, ts, 'mallory', action, query, decision, "
                      "reason, result_hash, prev_hash, entry_hash, signature FROM audit_log WHERE seq = 1")
    assert conn.execute("SELECT actor FROM audit_log WHERE seq = 1").fetchone()[0] != "mallory"


@pytest.mark.parametrize("column,value", [
    ("actor", "'mallory'"), ("decision", "'refuse'"), ("reason", "'refused: 1 < m=5'"), ("query", "'{\"meter_id\":\"m999\"}'"),
    ("result_hash", "'00'"), ("ts", "'2020-01-01T00:00:00+00:00'"),
])
def test_edit_detected_at_that_entry(tmp_path, column, value):
    db = tmp_path / "s.db"
    _fill(db)
    _tamper(db, f"UPDATE audit_log SET {column} = {value} WHERE seq = 3")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 3 and r.entries == 2
    assert "edited" in r.reason or "prev_hash" in r.reason


def test_rewritten_chain_with_every_hash_recomputed_fails_on_signatures(tmp_path):
    """An attacker with write access but without the signing key rewrites an entry and recomputes the
    hash of it and of every later entry: the chain links, the signatures do not."""
    import dataclasses
    db = tmp_path / "s.db"
    entries = _fill(db)
    prev = entries[1].entry_hash
    sql = []
    for e in entries[2:]:
        f = dataclasses.replace(e, actor="mallory" if e.seq == 3 else e.actor, prev_hash=prev)
        f = dataclasses.replace(f, entry_hash=f.compute_hash())
        sql.append(f"UPDATE audit_log SET actor = '{f.actor}', prev_hash = '{f.prev_hash}', "
                   f"entry_hash = '{f.entry_hash}' WHERE seq = {f.seq}")
        prev = f.entry_hash
    sql.append(f"UPDATE audit_head SET entry_hash = '{prev}'")
    _tamper(db, *sql)
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 3 and "signature" in r.reason


def test_duplicate_key_in_an_entry_is_rejected(tmp_path):
    """SQLite's JSON reader keeps the last duplicate key and Python's the last too, but other readers
    differ: a duplicate key (or any non-canonical spelling) is an error, even with a matching hash."""
    db = tmp_path / "s.db"
    _fill(db, 3)
    _tamper(db, """UPDATE audit_log SET query = '{"band":"peak","meter_id":"m000","meter_id":"m999","period":"2026-11"}'
                   WHERE seq = 2""")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 2 and "duplicate key" in r.reason
    _tamper(db, """UPDATE audit_log SET query = '{"period": "2026-11"}' WHERE seq = 2""")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 2 and "canonical" in r.reason


def test_edit_with_recomputed_hash_fails_its_signature(tmp_path):
    db = tmp_path / "s.db"
    entries = _fill(db)
    import dataclasses
    forged = dataclasses.replace(entries[2], actor="mallory")
    forged = dataclasses.replace(forged, entry_hash=forged.compute_hash())
    _tamper(db, f"UPDATE audit_log SET actor = 'mallory', entry_hash = '{forged.entry_hash}' WHERE seq = 3")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 3 and "signature" in r.reason


def test_delete_middle_detected(tmp_path):
    db = tmp_path / "s.db"
    _fill(db)
    _tamper(db, "DELETE FROM audit_log WHERE seq = 4")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 5 and "missing" in r.reason


def test_delete_and_renumber_detected(tmp_path):
    db = tmp_path / "s.db"
    _fill(db)
    _tamper(db, "DELETE FROM audit_log WHERE seq = 4", "UPDATE audit_log SET seq = seq - 1 WHERE seq > 4")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 4


def test_reorder_detected(tmp_path):
    db = tmp_path / "s.db"
    _fill(db)
    _tamper(db, "UPDATE audit_log SET seq = -1 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3", "UPDATE audit_log SET seq = 3 WHERE seq = -1")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 2


def test_tail_truncation_detected_by_head_row(tmp_path):
    db = tmp_path / "s.db"
    _fill(db)
    _tamper(db, "DELETE FROM audit_log WHERE seq = 6")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 6 and "removed" in r.reason


def test_tail_truncation_with_rewritten_head_needs_external_anchor(tmp_path):
    db = tmp_path / "s.db"
    entries = _fill(db)
    anchor = (6, entries[-1].entry_hash)
    _tamper(db, "DELETE FROM audit_log WHERE seq = 6",
            f"UPDATE audit_head SET seq = 5, entry_hash = '{entries[4].entry_hash}'")
    assert _verify(db).ok  # undetectable from the database alone (documented limitation)
    r = _verify(db, anchor)
    assert not r.ok and r.first_bad_seq == 6 and "truncated" in r.reason
    # an older anchor still checks out after later appends
    with AuditLog(db, signer=SK) as log:
        log.append("clerk", "bill", {}, "allow", "ok", "ab")
    assert _verify(db, (3, entries[2].entry_hash)).ok
    assert not _verify(db, (3, entries[3].entry_hash)).ok


def test_parse_anchor_and_bad_inputs(tmp_path):
    assert parse_anchor(f"12:{'a' * 64}") == (12, "a" * 64)
    for bad in ("12", f"x:{'a' * 64}", "3:abc"):
        with pytest.raises(ValueError):
            parse_anchor(bad)
    with AuditLog(tmp_path / "s.db", signer=SK) as log, pytest.raises(AuditError):
        log.append("clerk", "bill", {}, "maybe", "?")
    with AuditLog(tmp_path / "s.db", signer=SK) as log, pytest.raises(AuditError):
        log.append("", "bill", {}, "allow", "ok")
    with AuditLog(tmp_path / "s.db") as log, pytest.raises(AuditError, match="read-only"):
        log.append("clerk", "bill", {}, "allow", "ok")  # without the signing key nothing is appended


def test_result_digest_is_keyed_and_canonical():
    a = result_digest({"b": 1, "a": 2}, b"k1")
    assert a == result_digest({"a": 2, "b": 1}, b"k1")
    assert a != result_digest({"a": 2, "b": 1}, b"k2")
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


def test_concurrent_appends_keep_one_chain(tmp_path):
    db = tmp_path / "s.db"
    AuditLog(db).close()

    def worker(i: int) -> None:
        with AuditLog(db, signer=SK) as log:
            for j in range(10):
                log.append(f"w{i}", "feeder-load", {"j": j}, "allow", "ok", "")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = _verify(db)
    assert r.ok and r.entries == 40


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "meterveil.host.cli", "audit", *args], capture_output=True, text=True)


def test_cli_audit_verify_needs_key_and_anchor(tmp_path):
    from meterveil.host.audit import signing

    db = tmp_path / "decryption.db"
    signing.generate(tmp_path)
    sk = signing.load_signing(tmp_path)
    with AuditLog(db, signer=sk) as log:
        for i in range(6):
            log.append("clerk", "bill", {"i": i}, "allow", "ok")
        seq, h = log.head()
    no_anchor = _cli("verify", "--db", str(db))
    assert no_anchor.returncode == 2 and "truncation" in no_anchor.stderr  # no anchor file: cannot rule it out
    anchors.append(tmp_path / anchors.ANCHORS_NAME, seq, h, sk)
    ok = _cli("verify", "--db", str(db))
    assert ok.returncode == 0, ok.stderr
    assert "intact: 6 entries" in ok.stdout and "reaches anchor 6" in ok.stdout
    head = _cli("head", "--db", str(db))
    assert head.returncode == 0 and head.stdout.startswith("6:")
    # the whole log emptied (an empty log used to verify as "intact: 0 entries")
    _tamper(db, "DELETE FROM audit_log", "DELETE FROM audit_head")
    gone = _cli("verify", "--db", str(db))
    assert gone.returncode == 1 and "truncated" in gone.stdout
    # a forged anchor line (no signing key) is refused outright
    with open(tmp_path / anchors.ANCHORS_NAME, "a") as fh:
        fh.write('{"hash":"' + "0" * 64 + '","seq":1,"sig":"00","ts":"x"}\n')
    forged = _cli("verify", "--db", str(db))
    assert forged.returncode == 2 and "does not verify" in forged.stderr
