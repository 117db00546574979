"""SQLite store: schema/migrations, durability settings, idempotent batches, back-office queries."""

from __future__ import annotations

import sqlite3

import pytest

from meterveil.host.store import sqlite as store_sqlite
from meterveil.host.store.base import Batch, StatusRecord, StoredReading, open_store

BIG = (1 << 4095) + 12345  # a 4096-bit "ciphertext"


def _r(meter: str, counter: int, start: int, feeder: str = "F1", ct: int = BIG, digest: bytes = b"d" * 16):
    return StoredReading(meter_id=meter, counter=counter, feeder=feeder, interval_start=start, interval_len=900,
                         epsilon_milli=1000, clamp_wh=1000, m=10, ciphertext=ct + counter, frame_digest=digest,
                         received_at=1_000)


def test_fresh_store_is_migrated_wal_full_and_indexed(tmp_path):
    s = open_store(tmp_path / "s.db")
    assert s.schema_version() == store_sqlite.SCHEMA_VERSION == len(store_sqlite.MIGRATIONS)
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    idx = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"readings_feeder_interval", "readings_meter_interval"} <= idx
    plan = " ".join(str(r) for r in s.conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM readings WHERE feeder='F1' AND interval_start>=0 AND interval_start<9"))
    assert "readings_feeder_interval" in plan
    s.close()
    s2 = open_store(tmp_path / "s.db")  # reopening runs no migration twice
    assert s2.schema_version() == store_sqlite.SCHEMA_VERSION
    s2.close()


def test_newer_schema_is_refused(tmp_path):
    c = sqlite3.connect(tmp_path / "s.db")
    c.execute(f"PRAGMA user_version={store_sqlite.SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(store_sqlite.StoreVersionError):
        open_store(tmp_path / "s.db")


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    def broken(conn):
        conn.execute("CREATE TABLE half_done(x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_sqlite, "MIGRATIONS", [*store_sqlite.MIGRATIONS, broken])
    monkeypatch.setattr(store_sqlite, "SCHEMA_VERSION", len(store_sqlite.MIGRATIONS) + 1)
    with pytest.raises(RuntimeError):
        open_store(tmp_path / "s.db")
    c = sqlite3.connect(tmp_path / "s.db")
    assert c.execute("PRAGMA user_version").fetchone()[0] == 0
    assert not c.execute("SELECT name FROM sqlite_master WHERE name IN ('half_done', 'readings')").fetchall()


def test_write_batch_is_idempotent_and_counts(tmp_path):
    s = open_store(tmp_path / "s.db")
    b = Batch(readings=[_r("m1", 1, 0), _r("m1", 2, 900), _r("m2", 1, 0)])
    b.count("bad_tag", "m9")
    assert s.write_batch(b) == [True, True, True]
    assert s.write_batch(Batch(readings=[_r("m1", 2, 900), _r("m1", 3, 1800)])) == [False, True]
    assert s.count_readings() == 4
    assert s.counters() == {"accepted": 4, "duplicate": 1, "bad_tag": 1}
    assert s.meter_counters()["m1"] == {"accepted": 3, "duplicate": 1}
    assert s.lookup("m1", 2) == (b"d" * 16, 1_000) and s.lookup("m1", 9) is None
    assert s.max_counter("m1") == 3 and s.max_counter("zz") is None
    got = s.readings_for_meter("m1", 0, 10_000)
    assert [r.counter for r in got] == [1, 2, 3] and got[0].ciphertext == BIG + 1


def test_failed_batch_leaves_nothing(tmp_path):
    s = open_store(tmp_path / "s.db")
    bad = _r("m1", 2, 900)
    object.__setattr__(bad, "feeder", None)  # NOT NULL violation mid-batch
    b = Batch(readings=[_r("m1", 1, 0), bad])
    b.count("bad_tag", "m1")
    with pytest.raises(sqlite3.IntegrityError):
        s.write_batch(b)
    assert s.count_readings() == 0 and s.counters() == {}


def test_queries_feeder_meter_coverage(tmp_path):
    s = open_store(tmp_path / "s.db")
    rows = [_r("a", i, i * 900, "F1") for i in range(8)] + [_r("b", i, i * 900, "F2") for i in (0, 2, 4)]
    rows.append(_r("b", 100, 2 * 900, "F2"))  # a second (partial) frame for an interval already present
    s.write_batch(Batch(readings=rows))
    f1 = s.readings_for_feeder("F1", 900, 3 * 900)  # half-open [from, to)
    assert [(r.meter_id, r.interval_start) for r in f1] == [("a", 900), ("a", 1800)]
    assert [r.counter for r in s.readings_for_meter("b", 0, 8 * 900)] == [0, 2, 100, 4]
    assert s.feeders() == ["F1", "F2"]
    info = {m.meter_id: m for m in s.meters()}
    assert info["b"].readings == 4 and info["b"].max_counter == 100 and info["a"].last_interval == 7 * 900
    cov = {c.meter_id: c for c in s.coverage(0, 8 * 900, 900, meter_ids=["a", "b", "ghost"])}
    assert (cov["a"].expected, cov["a"].present, cov["a"].missing) == (8, 8, 0)
    assert (cov["b"].present, cov["b"].missing) == (3, 5)
    assert cov["ghost"].missing == 8
    assert len(list(s.iter_readings())) == 12


def test_status_keeps_only_newer(tmp_path):
    s = open_store(tmp_path / "s.db")
    s.write_batch(Batch(statuses=[StatusRecord("m1", 5, 10, {"uptime_s": 5})]))
    s.write_batch(Batch(statuses=[StatusRecord("m1", 3, 11, {"uptime_s": 3})]))
    assert s.latest_status("m1").status == {"uptime_s": 5}
    s.write_batch(Batch(statuses=[StatusRecord("m1", 9, 12, {"uptime_s": 9})]))
    assert s.latest_status("m1").counter == 9 and len(s.statuses()) == 1
    assert s.latest_status("nobody") is None


def test_no_plaintext_columns(tmp_path):
    s = open_store(tmp_path / "s.db")
    cols = {r[1] for r in s.conn.execute("PRAGMA table_info(readings)")}
    assert not cols & {"billing_wh", "analytics_wh", "energy_wh", "clipped", "samples"}
    assert "ciphertext" in cols
