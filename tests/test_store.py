"""The store, on both backends (SQLite file, PostgreSQL cluster): one suite, so the interface cannot drift.

Backend-specific checks (SQLite pragmas, PostgreSQL partitions, migrations) follow the shared ones.
"""

from __future__ import annotations

import sqlite3
import threading
import tracemalloc

import psycopg
import pytest

from meterveil.host.store import postgres as store_pg
from meterveil.host.store import sqlite as store_sqlite
from meterveil.host.store.base import (
    Batch,
    QuarantinedFrame,
    StatusRecord,
    StoredReading,
    StoreError,
    StoreVersionError,
    open_store,
)
from meterveil.host.store.quarantine import QuarantinePolicy

BIG = (1 << 4095) + 12345  # a 4096-bit "ciphertext"
T0 = 1_764_547_200  # 2025-12-01 00:00 UTC


def _r(meter: str, counter: int, start: int, feeder: str = "F1", ct: int = BIG, digest: bytes = b"d" * 16,
       length: int = 900):
    return StoredReading(meter_id=meter, counter=counter, feeder=feeder, interval_start=start, interval_len=length,
                         epsilon_milli=1000, clamp_wh=1000, m=10, ciphertext=ct + counter, frame_digest=digest,
                         received_at=1_000)


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path):
    """Where a store lives: an SQLite path or a PostgreSQL URL (a fresh database per test)."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def s(where):
    store = open_store(where)
    yield store
    store.close()


def test_write_batch_is_idempotent_and_counts(s):
    b = Batch(readings=[_r("m1", 1, T0), _r("m1", 2, T0 + 900), _r("m2", 1, T0)])
    b.count("bad_tag", "m9")
    assert s.write_batch(b) == [True, True, True]
    assert s.write_batch(Batch(readings=[_r("m1", 2, T0 + 900), _r("m1", 3, T0 + 1800)])) == [False, True]
    assert s.count_readings() == 4
    assert s.counters() == {"accepted": 4, "duplicate": 1, "bad_tag": 1}
    assert s.meter_counters()["m1"] == {"accepted": 3, "duplicate": 1}
    assert s.lookup("m1", 2) == (b"d" * 16, 1_000) and s.lookup("m1", 9) is None
    assert s.max_counter("m1") == 3 and s.max_counter("zz") is None
    got = s.readings_for_meter("m1", T0, T0 + 10_000)
    assert [r.counter for r in got] == [1, 2, 3] and got[0].ciphertext == BIG + 1
    assert s.interval_bounds() == (T0, T0 + 1800)


def test_household_copy_is_kept_opaque_on_both_backends(s):
    """E2E rows keep the household's sealed copy byte for byte; proxy rows keep none."""
    from dataclasses import replace

    copy = bytes(range(48))
    assert s.write_batch(Batch(readings=[replace(_r("m1", 1, T0), scheme="paillier-packed-e2e-v1", household=copy),
                                         _r("m2", 1, T0)])) == [True, True]
    got = {r.meter_id: r for r in s.iter_readings(t_from=T0, t_to=T0 + 900)}
    assert got["m1"].household == copy and got["m2"].household == b""


def test_household_copies_of_one_meter_in_a_range_on_both_backends(s):
    """What the household portal serves: only the asked meter's rows that carry a copy, in range, oldest
    first, with the fields the copy's tag binds; a proxy-mode meter has none and no span."""
    from dataclasses import replace

    e2e = "paillier-packed-e2e-v1"
    rows = [replace(_r("m1", k + 1, T0 + k * 900), scheme=e2e, household=bytes([k]) * 48) for k in (2, 0, 1, 3)]
    rows += [_r("m1", 9, T0 + 9 * 900),  # a proxy-mode reading of the same meter (before it switched)
             replace(_r("m2", 1, T0), scheme=e2e, household=b"\xee" * 48), _r("m3", 1, T0)]
    assert all(s.write_batch(Batch(readings=rows)))
    got = s.household_copies("m1", T0 + 900, T0 + 100 * 900)
    assert [(c.meter_id, c.counter, c.interval_start, c.interval_len, c.sealed) for c in got] == [
        ("m1", k + 1, T0 + k * 900, 900, bytes([k]) * 48) for k in (1, 2, 3)]
    assert [c.counter for c in s.household_copies("m1", 0, 2**40, limit=2)] == [1, 2]
    assert s.household_span("m1") == (T0, T0 + 3 * 900) and s.household_span("m2") == (T0, T0)
    assert s.household_copies("m3", 0, 2**40) == [] and s.household_span("m3") is None
    assert s.household_span("nobody") is None


def test_database_refuses_overlap_and_counter_reuse(s):
    """The rules hold in the database itself, whatever the caller checked: an interval overlapping a
    stored one of the same meter (any length, any alignment) and another frame under a stored counter
    are not stored, and are counted."""
    assert s.write_batch(Batch(readings=[_r("m1", 1, T0, length=3600)])) == [True]
    batch = Batch(readings=[_r("m1", 2, T0 + 2700),                      # inside the hour
                            _r("m1", 1, T0 + 7200, digest=b"x" * 16),   # counter 1 again, other bytes
                            _r("m1", 3, T0 + 3600),                      # adjacent: fine
                            _r("m2", 2, T0 + 2700)])                     # other meter: fine
    assert s.write_batch(batch) == [False, False, True, True]
    assert s.counters() == {"accepted": 3, "interval_overlap": 1, "counter_reuse": 1}
    assert s.meter_counters()["m1"] == {"accepted": 2, "interval_overlap": 1, "counter_reuse": 1}
    assert [(r.counter, r.interval_start) for r in s.readings_for_meter("m1", 0, 2**40)] == [(1, T0), (3, T0 + 3600)]
    assert s.overlapping("m1", T0 + 600, T0 + 700) == 1 and s.overlapping("m1", T0 + 4500, T0 + 5400) is None
    # the same within one batch: the first of two overlapping readings wins
    assert s.write_batch(Batch(readings=[_r("m3", 1, T0), _r("m3", 2, T0 + 300, length=300)])) == [True, False]


def test_two_writers_race_for_one_interval_one_wins(where):
    """Two gateway workers (two connections), each sure the interval is free, write overlapping readings
    of one meter at once, many times over: exactly one of each pair is stored."""
    a, b = open_store(where), open_store(where)
    try:
        rounds = 40
        results: dict[str, list[bool]] = {}
        go = threading.Barrier(2)

        def worker(name: str, store, counter_base: int, shift: int) -> None:
            out = []
            for i in range(rounds):
                go.wait()
                out += store.write_batch(Batch(readings=[_r("race", counter_base + i, T0 + i * 7200 + shift,
                                                            digest=bytes([counter_base % 251]) * 16, length=3600)]))
            results[name] = out

        ts = [threading.Thread(target=worker, args=("a", a, 1000, 0)),
              threading.Thread(target=worker, args=("b", b, 5000, 1800))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        wins = [x + y for x, y in zip(results["a"], results["b"], strict=True)]
        assert wins == [1] * rounds
        rows = a.readings_for_meter("race", 0, 2**40)
        assert len(rows) == rounds
        assert sum(a.counters().values()) == 2 * rounds and a.counters()["interval_overlap"] == rounds
    finally:
        a.close()
        b.close()


def test_failed_batch_leaves_nothing(s):
    bad = _r("m1", 2, T0 + 900)
    object.__setattr__(bad, "feeder", None)  # NOT NULL violation mid-batch
    b = Batch(readings=[_r("m1", 1, T0), bad])
    b.count("bad_tag", "m1")
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        s.write_batch(b)
    assert s.count_readings() == 0 and s.counters() == {}
    assert s.lookup("m1", 1) is None and s.overlapping("m1", T0, T0 + 900) is None
    assert s.write_batch(Batch(readings=[_r("m1", 1, T0)])) == [True]  # usable afterwards


def test_queries_feeder_meter_coverage(s):
    rows = [_r("a", i, T0 + i * 900, "F1") for i in range(8)] + [_r("b", i, T0 + i * 900, "F2") for i in (0, 2, 4)]
    rows.append(_r("b", 100, T0 + 2 * 900, "F2"))  # a second frame for an interval already present: refused
    assert s.write_batch(Batch(readings=rows))[-1] is False
    f1 = s.readings_for_feeder("F1", T0 + 900, T0 + 3 * 900)  # half-open [from, to)
    assert [(r.meter_id, r.interval_start) for r in f1] == [("a", T0 + 900), ("a", T0 + 1800)]
    assert [r.counter for r in s.readings_for_meter("b", T0, T0 + 8 * 900)] == [0, 2, 4]
    assert s.feeders() == ["F1", "F2"]
    info = {m.meter_id: m for m in s.meters()}
    assert info["b"].readings == 3 and info["b"].max_counter == 4 and info["a"].last_interval == T0 + 7 * 900
    cov = {c.meter_id: c for c in s.coverage(T0, T0 + 8 * 900, 900, meter_ids=["a", "b", "ghost"])}
    assert (cov["a"].expected, cov["a"].present, cov["a"].missing) == (8, 8, 0)
    assert (cov["b"].present, cov["b"].missing) == (3, 5)
    assert cov["ghost"].missing == 8
    assert len(list(s.iter_readings())) == 11
    assert [r.interval_start for r in s.iter_readings(feeder="F2", t_from=T0 + 900)] == [T0 + 1800, T0 + 3600]


def test_readings_across_months_come_back_in_order(s):
    """A meter's readings on both sides of a month boundary (two partitions in PostgreSQL)."""
    edge = T0 + 31 * 86400  # 2026-01-01
    s.write_batch(Batch(readings=[_r("m1", i, edge + (i - 3) * 900) for i in range(6)]))
    assert [r.counter for r in s.iter_readings(meter_id="m1")] == list(range(6))
    assert s.overlapping("m1", edge - 300, edge + 300) == 2  # the check spans the boundary too
    assert s.write_batch(Batch(readings=[_r("m1", 9, edge - 450, length=900)])) == [False]


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_iter_readings_streams(s):
    """Memory while iterating must not grow with the rows: 6,000 readings with 512-byte ciphertexts
    are read one fetch chunk at a time, a fraction of what holding them all takes."""
    n = 6000
    for k in range(0, n, 1000):
        s.write_batch(Batch(readings=[_r(f"m{i % 50}", i, T0 + (i // 50) * 900) for i in range(k, k + 1000)]))
    seen = []
    streamed = _peak(lambda: seen.append(sum(1 for _ in s.iter_readings())))
    held = _peak(lambda: seen.append(len(list(s.iter_readings()))))
    assert seen == [n, n]
    assert streamed * 3 < held, f"iter_readings peaked at {streamed} bytes vs {held} for the whole result"


def test_iter_readings_by_meter_for_billing(s, where):
    """order="meter": meter ids in Python's str order (bytewise, whatever the database locale), each
    meter's readings by time, and served by the (meter_id, interval_start) index, not a sort of the month."""
    ids = ["b", "B", "a-1", "a_1", "a", "Z9", "\u00e9"]
    s.write_batch(Batch(readings=[_r(m, i, T0 + (3 - i) * 900) for m in ids for i in range(4)]))
    got = [(r.meter_id, r.interval_start) for r in s.iter_readings(t_from=T0 + 900, order="meter")]
    assert got == [(m, T0 + k * 900) for m in sorted(ids) for k in (1, 2, 3)]
    sql = (f"SELECT ciphertext FROM readings WHERE interval_start >= {T0} AND interval_start < {T0 + 86400}"
           + store_sqlite.ORDER_BY["meter"])
    if where.startswith("postgresql://"):
        with psycopg.connect(where) as conn:
            conn.execute("SET enable_sort = off")  # a plan that must sort then still shows its Sort node
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql))
        # each month's partition has its own copy of the (meter_id, interval_start) index
        assert "Sort" not in plan and "meter_id_interval_start_idx" in plan, plan
    else:
        with sqlite3.connect(where) as conn:
            plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "TEMP B-TREE" not in plan and "readings_meter_interval" in plan, plan


def test_meter_order_is_bytewise_under_a_natural_language_collation(pg_cluster):
    """A utility's database usually sorts text by a language's rules ("a_1" < "a-1" < "B" < "b");
    billing checks that meter ids come in Python's order, so the store sorts them bytewise anyway."""
    name = "meterveil_icu"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                  "LOCALE 'C.UTF-8'")
    store = open_store(pg_cluster.url(name))
    try:
        ids = ["b", "B", "a-1", "a_1", "a", "Z9"]
        store.write_batch(Batch(readings=[_r(m, 1, T0) for m in ids]))
        assert [r.meter_id for r in store.iter_readings(order="meter")] == sorted(ids)
    finally:
        store.close()


def test_status_keeps_only_newer(s):
    s.write_batch(Batch(statuses=[StatusRecord("m1", 5, 10, {"uptime_s": 5})]))
    s.write_batch(Batch(statuses=[StatusRecord("m1", 3, 11, {"uptime_s": 3})]))
    assert s.latest_status("m1").status == {"uptime_s": 5}
    s.write_batch(Batch(statuses=[StatusRecord("m1", 9, 12, {"uptime_s": 9})]))
    assert s.latest_status("m1").counter == 9 and len(s.statuses()) == 1
    assert s.latest_status("nobody") is None


def _q(meter: str, i: int, reason: str = "unknown_meter") -> QuarantinedFrame:
    return QuarantinedFrame(bytes([i % 256, i // 256]) * 16, meter, f"meterveil/v1/{meter}/reading",
                            b"sealed" + bytes([i % 256]), reason, 1_000 + i)


def test_quarantine_bounds_order_and_release(s, monkeypatch):
    monkeypatch.setattr(s, "quarantine_policy", QuarantinePolicy(per_id=3))
    s.write_batch(Batch(quarantine=[_q("x", i) for i in range(5)] + [_q("y", 10, "future")]))
    assert s.quarantine_counts() == {"future": 1, "unknown_meter": 3}
    assert s.counters() == {"quarantine_full": 2} and s.meter_counters()["x"] == {"quarantine_full": 2}
    first = s.quarantined(2)
    assert [q.received_at for q in first] == [1000, 1001]
    assert first[0].payload == b"sealed\x00" and first[0].topic == "meterveil/v1/x/reading"
    s.write_batch(Batch(retried=[(q.digest, "unknown_meter", None) for q in first]))  # to the back of the line
    assert [q.received_at for q in s.quarantined(10)] == [1002, 1010, 1000, 1001]
    s.write_batch(Batch(released=[first[0].digest]))
    assert sorted(q.received_at for q in s.quarantined(10)) == [1001, 1002, 1010]


def test_no_plaintext_columns(s):
    if isinstance(s, store_sqlite.SqliteStore):
        cols = {r[1] for r in s.conn.execute("PRAGMA table_info(readings)")}
    else:
        cols = {r[0] for r in s.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'readings'")}
    assert not cols & {"billing_wh", "analytics_wh", "energy_wh", "clipped", "samples"}
    assert "ciphertext" in cols


def test_read_only_open_refuses_what_is_not_a_store(where, tmp_path):
    with pytest.raises(StoreError):
        open_store(where, create=False)  # nothing there yet: not created by a reader
    open_store(where).close()
    open_store(where, create=False).close()


# -- SQLite only ---------------------------------------------------------------------------------------
def test_sqlite_fresh_store_is_migrated_wal_full_and_indexed(tmp_path):
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


def test_sqlite_newer_schema_is_refused(tmp_path):
    c = sqlite3.connect(tmp_path / "s.db")
    c.execute(f"PRAGMA user_version={store_sqlite.SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(StoreVersionError):
        open_store(tmp_path / "s.db")


def test_sqlite_failed_migration_rolls_back(tmp_path, monkeypatch):
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


# -- PostgreSQL only -----------------------------------------------------------------------------------
def test_pg_schema_partitions_bytea_and_constraints(pg_url):
    s = open_store(pg_url)
    try:
        assert s.schema_version() == len(store_pg.migrations()) >= 1
        names = [n for _, n, _ in store_pg.migrations()]
        assert [r[0] for r in s.conn.execute("SELECT name FROM schema_migrations ORDER BY version")] == names
        kind = s.conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'").fetchone()[0]
        assert kind == "p"  # declarative partitioning
        dtype = s.conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'readings' "
                               "AND column_name = 'ciphertext'").fetchone()[0]
        assert dtype == "bytea"
        cons = {r[0]: r[1] for r in s.conn.execute(
            "SELECT conname, contype FROM pg_constraint WHERE conrelid = 'reading_keys'::regclass")}
        assert cons["reading_keys_no_overlap"] == "x" and "p" in cons.values()
        s.write_batch(Batch(readings=[_r("m1", 1, T0), _r("m1", 2, T0 + 31 * 86400), _r("m1", 3, 0)]))
        assert {"readings_y2025m12", "readings_y2026m01", "readings_y1970m01"} <= set(s.partitions())
        where = dict(s.conn.execute("SELECT tableoid::regclass::text, counter FROM readings").fetchall())
        assert where == {"readings_y2025m12": 1, "readings_y2026m01": 2, "readings_y1970m01": 3}
        # billing one month reads one partition
        plan = "\n".join(r[0] for r in s.conn.execute(
            f"EXPLAIN SELECT * FROM readings WHERE interval_start >= {T0} AND interval_start < {T0 + 86400}"))
        assert "readings_y2025m12" in plan and "readings_y2026m01" not in plan
    finally:
        s.close()


def test_pg_reopen_migrates_once_and_newer_schema_is_refused(pg_url):
    open_store(pg_url).close()
    s = open_store(pg_url)
    n = s.conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0]
    assert n == len(store_pg.migrations())
    s.conn.execute("INSERT INTO schema_migrations(version, name) VALUES (%s, 'future.sql')", (n + 1,))
    s.close()
    with pytest.raises(StoreVersionError):
        open_store(pg_url)
    with pytest.raises(StoreVersionError):
        open_store(pg_url, create=False)


def test_pg_failed_migration_rolls_back(pg_url, monkeypatch):
    real = store_pg.migrations()
    monkeypatch.setattr(store_pg, "migrations",
                        lambda: [*real, (len(real) + 1, "9999_broken.sql", "CREATE TABLE half_done(x int); SELEC 1")])
    with pytest.raises(StoreError, match="9999_broken.sql"):
        open_store(pg_url)
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT to_regclass('readings'), to_regclass('half_done')").fetchone() == (None, None)


def test_pg_unreachable_or_bad_url_is_a_one_line_store_error(pg_cluster):
    with pytest.raises(StoreError, match="cannot connect") as e:
        open_store(f"postgresql://postgres:secret@127.0.0.1:{pg_cluster.port}/no_such_db")
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_pg_quarantine_retries_are_leased_between_workers(pg_url):
    """Two workers retrying the quarantine at once take disjoint frames; a lease left by a worker
    that died expires."""
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        a.write_batch(Batch(quarantine=[_q("x", i) for i in range(6)]))
        got_a, got_b = a.quarantined(4), b.quarantined(4)
        assert len(got_a) == 4 and len(got_b) == 2
        assert not {q.digest for q in got_a} & {q.digest for q in got_b}
        assert b.quarantined(4) == got_b  # its own lease: the same frames again
        a.write_batch(Batch(retried=[(q.digest, q.reason, None) for q in got_a]))  # settled: free again
        assert len(b.quarantined(10)) == 6  # 4 settled by a, 2 leased by b itself
        assert a.quarantined(10) == []
        a.conn.execute("UPDATE quarantine SET claimed_until = 0")  # as if b had died and its lease run out
        assert len(a.quarantined(10)) == 6
    finally:
        a.close()
        b.close()


def test_pg_readers_need_only_select(pg_url):
    """The decryption role and the back office can read with a SELECT-only login: opening for reading
    creates and migrates nothing."""
    s = open_store(pg_url)
    s.write_batch(Batch(readings=[_r("m1", 1, T0)]))
    s.conn.execute("DROP ROLE IF EXISTS reader")
    s.conn.execute("CREATE ROLE reader LOGIN")
    s.conn.execute("GRANT USAGE ON SCHEMA public TO reader")
    s.conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    s.close()
    ro = open_store(pg_url.replace("postgres@", "reader@"), create=False)
    try:
        assert [r.counter for r in ro.iter_readings()] == [1] and ro.counters() == {"accepted": 1}
    finally:
        ro.close()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        open_store(pg_url.replace("postgres@", "reader@"))  # only the gateway creates
