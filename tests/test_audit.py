"""Hash-chained audit log: intact chains verify; edit, delete, reorder and truncation are detected."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from meterveil.host.audit.chain import (
    GENESIS,
    AuditError,
    AuditLog,
    canonical_json,
    parse_anchor,
    result_digest,
)


def _fill(path, n: int = 6) -> list:
    with AuditLog(path) as log:
        return [
            log.append(f"clerk{i % 2}", "bill", {"meter_id": f"m{i:03d}", "period": "2026-11", "band": "peak"},
                       "allow" if i % 3 else "refuse", "ok" if i % 3 else "refused: 3 < m=5",
                       result_digest({"wh": i * 1000}, b"k" * 32) if i % 3 else "")
            for i in range(n)
        ]


def _tamper(path, *sql: str) -> None:
    """Tamper as an attacker with write access would: drop the append-only triggers first."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("DROP TRIGGER audit_log_no_delete")
    for s in sql:
        db.execute(s)
    db.commit()
    db.close()


def _verify(path, anchor=None):
    with AuditLog(path) as log:
        return log.verify(anchor)


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
                      "reason, result_hash, prev_hash, entry_hash FROM audit_log WHERE seq = 1")
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


def test_edit_with_recomputed_hash_breaks_next_link(tmp_path):
    db = tmp_path / "s.db"
    entries = _fill(db)
    import dataclasses
    forged = dataclasses.replace(entries[2], actor="mallory")
    forged = dataclasses.replace(forged, entry_hash=forged.compute_hash())
    _tamper(db, f"UPDATE audit_log SET actor = 'mallory', entry_hash = '{forged.entry_hash}' WHERE seq = 3")
    r = _verify(db)
    assert not r.ok and r.first_bad_seq == 4 and "prev_hash" in r.reason


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
    with AuditLog(db) as log:
        log.append("clerk", "bill", {}, "allow", "ok", "ab")
    assert _verify(db, (3, entries[2].entry_hash)).ok
    assert not _verify(db, (3, entries[3].entry_hash)).ok


def test_parse_anchor_and_bad_inputs(tmp_path):
    assert parse_anchor(f"12:{'a' * 64}") == (12, "a" * 64)
    for bad in ("12", f"x:{'a' * 64}", "3:abc"):
        with pytest.raises(ValueError):
            parse_anchor(bad)
    with AuditLog(tmp_path / "s.db") as log, pytest.raises(AuditError):
        log.append("clerk", "bill", {}, "maybe", "?")
    with AuditLog(tmp_path / "s.db") as log, pytest.raises(AuditError):
        log.append("", "bill", {}, "allow", "ok")


def test_result_digest_is_keyed_and_canonical():
    a = result_digest({"b": 1, "a": 2}, b"k1")
    assert a == result_digest({"a": 2, "b": 1}, b"k1")
    assert a != result_digest({"a": 2, "b": 1}, b"k2")
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


def test_concurrent_appends_keep_one_chain(tmp_path):
    db = tmp_path / "s.db"
    AuditLog(db).close()

    def worker(i: int) -> None:
        with AuditLog(db) as log:
            for j in range(10):
                log.append(f"w{i}", "feeder-load", {"j": j}, "allow", "ok", "")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r = _verify(db)
    assert r.ok and r.entries == 40


def test_cli_audit_verify_exit_codes(tmp_path):
    db = tmp_path / "s.db"
    _fill(db)
    cmd = [sys.executable, "-m", "meterveil.host.cli.main", "audit", "verify", "--db", str(db)]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "intact: 6 entries" in ok.stdout
    head = subprocess.run([sys.executable, "-m", "meterveil.host.cli.main", "audit", "head", "--db", str(db)],
                          capture_output=True, text=True)
    assert head.returncode == 0 and head.stdout.startswith("6:")
    _tamper(db, "UPDATE audit_log SET reason = 'ok (edited)' WHERE seq = 3")
    broken = subprocess.run(cmd, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "seq=3" in broken.stdout + broken.stderr
