"""SQLite implementation of the `Store` interface (see store.py for the contract).

Durability choice: WAL with ``synchronous=FULL``. Ingest acknowledges a QoS 1 message to the broker
only after ``write_batch`` returns, and the broker then forgets it, so a committed batch must survive
power loss, not only a process crash. In WAL mode NORMAL survives a crash of the process but may lose
the last commits on power loss (the WAL is fsync-ed only at checkpoints); FULL fsyncs the WAL at every
commit. Batching amortises that one fsync over up to hundreds of readings.

Schema is versioned by ``PRAGMA user_version``; ``MIGRATIONS[i]`` upgrades version i to i+1 inside one
transaction. A database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from meterveil.host.store.base import (
    ORDER_BY,
    Batch,
    Coverage,
    HouseholdCopy,
    MeterInfo,
    QuarantinedFrame,
    StatusRecord,
    StoredReading,
    StoreError,
    StoreVersionError,
    coverage_of,
    int_to_blob,
)
from meterveil.host.store.quarantine import UNVERIFIED, QuarantinePolicy, admit, pool_of

__all__ = ["SqliteStore", "StoreVersionError", "int_to_blob", "inspect_file"]

# Longest interval the gateway accepts: bounds the index range the overlap lookup scans.
_MAX_INTERVAL_S = 86400
STREAM_ROWS = 1000  # rows per fetch in iter_readings


def _m1_initial(c: sqlite3.Connection) -> None:
    c.execute("""CREATE TABLE readings(
        id INTEGER PRIMARY KEY,
        meter_id TEXT NOT NULL, counter INTEGER NOT NULL, feeder TEXT NOT NULL,
        interval_start INTEGER NOT NULL, interval_len INTEGER NOT NULL,
        epsilon_milli INTEGER NOT NULL, clamp_wh INTEGER NOT NULL, m INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0, scheme TEXT NOT NULL, ciphertext BLOB NOT NULL,
        frame_digest BLOB NOT NULL, received_at INTEGER NOT NULL,
        UNIQUE(meter_id, counter))""")
    c.execute("CREATE INDEX readings_feeder_interval ON readings(feeder, interval_start)")
    c.execute("CREATE INDEX readings_meter_interval ON readings(meter_id, interval_start)")
    c.execute("CREATE TABLE counters(reason TEXT PRIMARY KEY, count INTEGER NOT NULL)")
    c.execute("""CREATE TABLE meter_counters(meter_id TEXT NOT NULL, reason TEXT NOT NULL,
        count INTEGER NOT NULL, PRIMARY KEY(meter_id, reason))""")
    c.execute("""CREATE TABLE meter_status(meter_id TEXT PRIMARY KEY, counter INTEGER NOT NULL,
        received_at INTEGER NOT NULL, status_json TEXT NOT NULL)""")


def _m2_quarantine(c: sqlite3.Connection) -> None:
    c.execute("""CREATE TABLE quarantine(digest BLOB PRIMARY KEY, meter_id TEXT NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, reason TEXT NOT NULL, received_at INTEGER NOT NULL,
        last_try INTEGER NOT NULL DEFAULT 0)""")  # retry round of the last attempt
    c.execute("CREATE INDEX quarantine_meter ON quarantine(meter_id)")
    c.execute("CREATE INDEX quarantine_retry ON quarantine(last_try, received_at)")


def _m3_fair_quarantine(c: sqlite3.Connection) -> None:
    """Quarantine pools with per-id counts kept by triggers (admission is O(1), not a COUNT over
    200,000 rows per frame), a retry time, and statuses ordered by when they were sealed."""
    # literal values: a migration is frozen, whatever the policy module says later
    c.execute("ALTER TABLE quarantine ADD COLUMN pool TEXT NOT NULL DEFAULT 'verified'")
    c.execute("ALTER TABLE quarantine ADD COLUMN retry_at INTEGER")
    c.execute("UPDATE quarantine SET pool='unverified' WHERE reason='unknown_meter'")
    c.execute("CREATE INDEX quarantine_received ON quarantine(received_at)")
    c.execute("""CREATE TABLE quarantine_held(meter_id TEXT NOT NULL, pool TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY(meter_id, pool))""")
    c.execute("CREATE INDEX quarantine_held_largest ON quarantine_held(pool, n)")
    c.execute("INSERT INTO quarantine_held(meter_id, pool, n) SELECT meter_id, pool, COUNT(*) FROM quarantine "
              "GROUP BY meter_id, pool")
    add = ("INSERT INTO quarantine_held(meter_id, pool, n) VALUES (NEW.meter_id, NEW.pool, 1) "
           "ON CONFLICT(meter_id, pool) DO UPDATE SET n = n + 1;")
    sub = ("UPDATE quarantine_held SET n = n - 1 WHERE meter_id = OLD.meter_id AND pool = OLD.pool; "
           "DELETE FROM quarantine_held WHERE meter_id = OLD.meter_id AND pool = OLD.pool AND n <= 0;")
    c.execute(f"CREATE TRIGGER quarantine_held_add AFTER INSERT ON quarantine BEGIN {add} END")
    c.execute(f"CREATE TRIGGER quarantine_held_sub AFTER DELETE ON quarantine BEGIN {sub} END")
    c.execute(f"CREATE TRIGGER quarantine_held_move AFTER UPDATE OF meter_id, pool ON quarantine BEGIN {sub} "
              f"{add} END")
    c.execute("ALTER TABLE meter_status ADD COLUMN sealed_at INTEGER NOT NULL DEFAULT 0")


def _m4_no_overlap(c: sqlite3.Connection) -> None:
    # The database refuses a second reading covering any part of a meter's stored interval (the
    # rule PostgreSQL enforces by an exclusion constraint): RAISE(IGNORE) skips the row, and
    # write_batch counts it. Intervals are at most _MAX_INTERVAL_S long, which bounds the index scan.
    c.execute(f"""CREATE TRIGGER readings_no_overlap BEFORE INSERT ON readings
        WHEN EXISTS (SELECT 1 FROM readings WHERE meter_id = NEW.meter_id
                     AND interval_start < NEW.interval_start + NEW.interval_len
                     AND interval_start >= NEW.interval_start - {_MAX_INTERVAL_S}
                     AND interval_start + interval_len > NEW.interval_start)
        BEGIN SELECT RAISE(IGNORE); END""")


def _m5_household(c: sqlite3.Connection) -> None:
    c.execute("ALTER TABLE readings ADD COLUMN household BLOB NOT NULL DEFAULT x''")


def _m6_no_overlap_one_probe(c: sqlite3.Connection) -> None:
    # The same rule in one index probe instead of a scan of the meter's last day (up to 96 rows, each
    # read from the table for its length, which held SQLite ingest to ~2,000 readings/s). Stored
    # intervals of a meter never overlap (this trigger is the guard), so their ends rise with their
    # starts: the new interval overlaps one iff it overlaps the latest one starting before its end.
    c.execute("DROP TRIGGER readings_no_overlap")
    c.execute("""CREATE TRIGGER readings_no_overlap BEFORE INSERT ON readings
        WHEN (SELECT interval_start + interval_len FROM readings WHERE meter_id = NEW.meter_id
              AND interval_start < NEW.interval_start + NEW.interval_len
              ORDER BY interval_start DESC LIMIT 1) > NEW.interval_start
        BEGIN SELECT RAISE(IGNORE); END""")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial, _m2_quarantine, _m3_fair_quarantine,
                                                          _m4_no_overlap, _m5_household, _m6_no_overlap_one_probe]
SCHEMA_VERSION = len(MIGRATIONS)

_COLS = ("meter_id, counter, feeder, interval_start, interval_len, epsilon_milli, clamp_wh, m, "
         "flags, scheme, ciphertext, frame_digest, received_at, household")




def inspect_file(path: str | os.PathLike[str]) -> set[str]:
    """Table names of an existing SQLite file, opened read-only (nothing is created or migrated).

    Raises StoreError when ``path`` does not exist, is a directory or is not an SQLite database.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"store {p} does not exist")
    if p.is_dir():
        raise StoreError(f"store {p} is a directory, not an SQLite file")
    if p.stat().st_size == 0:
        raise StoreError(f"store {p} is an empty file, not a meterveil store")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"store {p} is not an SQLite database ({e})") from None


def _row_to_reading(r: tuple[Any, ...]) -> StoredReading:
    return StoredReading(meter_id=r[0], counter=r[1], feeder=r[2], interval_start=r[3], interval_len=r[4],
                         epsilon_milli=r[5], clamp_wh=r[6], m=r[7], flags=r[8], scheme=r[9],
                         ciphertext=int.from_bytes(r[10], "big"), frame_digest=bytes(r[11]), received_at=r[12],
                         household=bytes(r[13]))


class SqliteStore:
    """The default store. Thread-safe by one lock (ingest writes from its worker thread)."""

    # One gateway process writes a SQLite store (several workers need a server database): ingest may
    # keep per-meter high-water marks in memory instead of asking for every frame.
    single_writer = True

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL", timeout: float = 30.0,
                 create: bool = True, quarantine: QuarantinePolicy | None = None):
        self.path = Path(path)
        self.quarantine_policy = quarantine or QuarantinePolicy()
        if not create:
            # read-only commands: a mistyped path must not become a new empty store
            if "readings" not in inspect_file(self.path):
                raise StoreError(f"store {self.path} is an SQLite database but not a meterveil store "
                                 f"(no readings table; only `meterveil gateway` creates a store)")
        elif self.path.is_dir():
            raise StoreError(f"store {self.path} is a directory, not an SQLite file")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the first byte: the file holds meter ids, feeders, timing and the audit
            # log (SQLite gives the -wal/-shm files the same mode).
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                    check_same_thread=False)
        self._lock = threading.RLock()
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if isinstance(e, sqlite3.OperationalError):  # locked, read-only, ...: not about the file's kind
                raise
            raise StoreError(f"store {self.path} is not a usable SQLite database ({e})") from None
        except BaseException:
            self.conn.close()
            raise

    # -- schema -------------------------------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                v = self.schema_version()
                if v > SCHEMA_VERSION:
                    raise StoreVersionError(f"{self.path}: schema version {v} is newer than {SCHEMA_VERSION}")
                for i in range(v, SCHEMA_VERSION):
                    MIGRATIONS[i](self.conn)
                    self.conn.execute(f"PRAGMA user_version={i + 1}")
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- writes -------------------------------------------------------------------------------
    def write_batch(self, batch: Batch) -> list[bool]:
        """Insert/upsert/count in one durable transaction; returns per reading whether it was new."""
        with self._lock:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                inserted: list[bool] = []
                counts = batch.counts.copy()
                meter_counts = batch.meter_counts.copy()
                for r in batch.readings:
                    cur = c.execute(
                        f"INSERT INTO readings({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT(meter_id, counter) DO NOTHING",
                        (r.meter_id, r.counter, r.feeder, r.interval_start, r.interval_len, r.epsilon_milli,
                         r.clamp_wh, r.m, r.flags, r.scheme, int_to_blob(r.ciphertext), r.frame_digest,
                         r.received_at or int(time.time()), r.household))
                    new = cur.rowcount == 1
                    inserted.append(new)
                    reason = "accepted" if new else self._not_inserted(c, r)
                    counts[reason] += 1
                    meter_counts[(r.meter_id, reason)] += 1
                for q in batch.quarantine:
                    self._keep_quarantined(c, q, counts, meter_counts)
                c.executemany("DELETE FROM quarantine WHERE digest=?", [(d,) for d in batch.released])
                if batch.retried:  # to the back of the line: a retry round number, not a clock
                    stamp = int(c.execute("SELECT COALESCE(MAX(last_try), 0) FROM quarantine").fetchone()[0]) + 1
                    c.executemany("UPDATE quarantine SET last_try=?, reason=?, pool=?, retry_at=? WHERE digest=?",
                                  [(stamp, r, pool_of(r), at, d) for d, r, at in batch.retried])
                for s in batch.statuses:
                    c.execute("INSERT INTO meter_status(meter_id, counter, received_at, status_json, sealed_at) "
                              "VALUES (?,?,?,?,?) ON CONFLICT(meter_id) DO UPDATE SET counter=excluded.counter, "
                              "received_at=excluded.received_at, status_json=excluded.status_json, "
                              "sealed_at=excluded.sealed_at "
                              "WHERE (excluded.sealed_at, excluded.counter) > (meter_status.sealed_at, meter_status.counter)",
                              (s.meter_id, s.counter, s.received_at, json.dumps(s.status, sort_keys=True), s.sealed_at))
                c.executemany("INSERT INTO counters(reason, count) VALUES (?,?) "
                              "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                              [(k, v) for k, v in counts.items() if v])
                c.executemany("INSERT INTO meter_counters(meter_id, reason, count) VALUES (?,?,?) "
                              "ON CONFLICT(meter_id, reason) DO UPDATE SET count = count + excluded.count",
                              [(m, k, v) for (m, k), v in meter_counts.items() if v])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return inserted

    @staticmethod
    def _not_inserted(c: sqlite3.Connection, r: StoredReading) -> str:
        """Why a reading was not inserted: the same frame is stored (``duplicate``), another frame holds
        its counter (``counter_reuse``), or the overlap trigger skipped it (``interval_overlap``)."""
        row = c.execute("SELECT frame_digest FROM readings WHERE meter_id=? AND counter=?",
                        (r.meter_id, r.counter)).fetchone()
        if row is None:
            return "interval_overlap"
        return "duplicate" if bytes(row[0]) == r.frame_digest else "counter_reuse"

    def _keep_quarantined(self, c: sqlite3.Connection, q: QuarantinedFrame, counts, meter_counts) -> None:
        """Admit one frame under the policy (store/quarantine.py), evicting or counting as it says."""
        if c.execute("SELECT 1 FROM quarantine WHERE digest=?", (q.digest,)).fetchone():
            return  # a redelivery of a frame already held
        pool = pool_of(q.reason)
        row = c.execute("SELECT n FROM quarantine_held WHERE meter_id=? AND pool=?", (q.meter_id, pool)).fetchone()
        held = int(row[0]) if row else 0
        total = ids = 0
        largest = None
        if pool == UNVERIFIED:
            total, ids = c.execute("SELECT COALESCE(SUM(n), 0), COUNT(*) FROM quarantine_held WHERE pool=?",
                                   (UNVERIFIED,)).fetchone()
            top = c.execute("SELECT meter_id, n FROM quarantine_held WHERE pool=? ORDER BY n DESC LIMIT 1",
                            (UNVERIFIED,)).fetchone()
            largest = (top[0], int(top[1])) if top else None
        verdict = admit(self.quarantine_policy, pool, q.meter_id, held, int(total), int(ids), largest)
        if not verdict.admit:
            counts["quarantine_full"] += 1
            meter_counts[(q.meter_id, "quarantine_full")] += 1
            return
        if verdict.evict_from is not None:
            c.execute("DELETE FROM quarantine WHERE rowid = (SELECT rowid FROM quarantine WHERE meter_id=? AND pool=? "
                      "ORDER BY received_at, rowid LIMIT 1)", (verdict.evict_from, UNVERIFIED))
            counts["quarantine_evicted"] += 1
            meter_counts[(verdict.evict_from, "quarantine_evicted")] += 1
        c.execute("INSERT INTO quarantine(digest, meter_id, topic, payload, reason, received_at, pool, retry_at) "
                  "VALUES (?,?,?,?,?,?,?,?)",
                  (q.digest, q.meter_id, q.topic, q.payload, q.reason, q.received_at, pool, q.retry_at))

    _Q_COLS = "digest, meter_id, topic, payload, reason, received_at, retry_at"

    @staticmethod
    def _q_rows(rows) -> list[QuarantinedFrame]:
        return [QuarantinedFrame(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], int(r[5]),
                                 None if r[6] is None else int(r[6])) for r in rows]

    def quarantined(self, limit: int = 1000, *, meter_ids: Sequence[str] | None = None,
                    due_by: int | None = None) -> list[QuarantinedFrame]:
        """Held frames, least recently tried first; only of `meter_ids` and due by `due_by` if given."""
        where, args = [], []
        if due_by is not None:
            where.append("(retry_at IS NULL OR retry_at <= ?)")
            args.append(due_by)
        if meter_ids is not None:
            ids = list(dict.fromkeys(meter_ids))
            if not ids:
                return []
            where.append("meter_id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(ids))
        sql = f"SELECT {self._Q_COLS} FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self.conn.execute(sql + " ORDER BY last_try, received_at, rowid LIMIT ?", (*args, limit)).fetchall()
        return self._q_rows(rows)

    def quarantine_meter_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT meter_id FROM quarantine_held ORDER BY 1")]

    def quarantine_expiring(self, before: int, limit: int = 1000) -> list[QuarantinedFrame]:
        """Frames received before `before`, oldest first (the gateway expires them, counted)."""
        with self._lock:
            rows = self.conn.execute(f"SELECT {self._Q_COLS} FROM quarantine WHERE received_at < ? "
                                     "ORDER BY received_at, rowid LIMIT ?", (before, limit)).fetchall()
        return self._q_rows(rows)

    def quarantine_counts(self) -> dict[str, int]:
        with self._lock:
            return {r: int(n) for r, n in self.conn.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason")}

    # -- point lookups used by ingest ---------------------------------------------------------
    def lookup(self, meter_id: str, counter: int) -> tuple[bytes, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT frame_digest, received_at FROM readings WHERE meter_id=? AND counter=?",
                                    (meter_id, counter)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def overlapping(self, meter_id: str, start: int, end: int) -> int | None:
        """Counter of a stored reading of this meter whose interval overlaps [start, end), if any."""
        with self._lock:
            row = self.conn.execute(
                "SELECT counter FROM readings WHERE meter_id=? AND interval_start < ? AND interval_start >= ? "
                "AND interval_start + interval_len > ? LIMIT 1",
                (meter_id, end, start - _MAX_INTERVAL_S, start)).fetchone()
        return None if row is None else int(row[0])

    def lookup_many(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[bytes, int]]:
        """`lookup` of many keys (in-process: no round trips to save): only stored ones are in the result."""
        found = {}
        for k in keys:
            row = self.lookup(*k)
            if row is not None:
                found[k] = row
        return found

    def overlapping_many(self, spans: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], int]:
        """`overlapping` of many (meter_id, start, end): only spans that overlap are in the result."""
        found = {}
        for sp in spans:
            other = self.overlapping(*sp)
            if other is not None:
                found[sp] = other
        return found

    def max_interval_end(self, meter_id: str) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT MAX(interval_start + interval_len) FROM readings WHERE meter_id=?",
                                    (meter_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    def max_counter(self, meter_id: str) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT MAX(counter) FROM readings WHERE meter_id=?", (meter_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    # -- counters and status ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self._lock:
            return {k: int(v) for k, v in self.conn.execute("SELECT reason, count FROM counters ORDER BY reason")}

    def meter_counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for m, k, v in self.conn.execute("SELECT meter_id, reason, count FROM meter_counters ORDER BY 1, 2"):
                out.setdefault(m, {})[k] = int(v)
        return out

    def latest_status(self, meter_id: str) -> StatusRecord | None:
        with self._lock:
            row = self.conn.execute("SELECT meter_id, counter, received_at, status_json, sealed_at FROM meter_status "
                                    "WHERE meter_id=?", (meter_id,)).fetchone()
        return StatusRecord(row[0], row[1], row[2], json.loads(row[3]), row[4]) if row else None

    def statuses(self) -> list[StatusRecord]:
        with self._lock:
            rows = self.conn.execute("SELECT meter_id, counter, received_at, status_json, sealed_at FROM meter_status "
                                     "ORDER BY meter_id").fetchall()
        return [StatusRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    # -- back-office queries ------------------------------------------------------------------
    def iter_readings(self, *, feeder: str | None = None, meter_id: str | None = None,
                      t_from: int | None = None, t_to: int | None = None,
                      order: str = "time") -> Iterator[StoredReading]:
        where, args = [], []
        for col, op, val in (("feeder", "=", feeder), ("meter_id", "=", meter_id),
                             ("interval_start", ">=", t_from), ("interval_start", "<", t_to)):
            if val is not None:
                where.append(f"{col} {op} ?")
                args.append(val)
        sql = f"SELECT {_COLS} FROM readings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ORDER_BY[order]
        # a read-only connection of its own, fetched in chunks: memory stays flat however many rows
        # match, and the writer's connection and lock stay free (WAL: readers never block it)
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            cur = conn.execute(sql, args)
            while rows := cur.fetchmany(STREAM_ROWS):
                for r in rows:
                    yield _row_to_reading(r)
        finally:
            conn.close()

    def readings_for_feeder(self, feeder: str, t_from: int, t_to: int) -> list[StoredReading]:
        return list(self.iter_readings(feeder=feeder, t_from=t_from, t_to=t_to))

    def readings_for_meter(self, meter_id: str, t_from: int, t_to: int) -> list[StoredReading]:
        return list(self.iter_readings(meter_id=meter_id, t_from=t_from, t_to=t_to))

    def household_copies(self, meter_id: str, t_from: int, t_to: int,
                         limit: int | None = None) -> list[HouseholdCopy]:
        sql = ("SELECT meter_id, counter, interval_start, interval_len, household FROM readings WHERE meter_id = ? "
               "AND interval_start >= ? AND interval_start < ? AND length(household) > 0 ORDER BY interval_start")
        args: list[Any] = [meter_id, t_from, t_to]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [HouseholdCopy(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def household_span(self, meter_id: str) -> tuple[int, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT MIN(interval_start), MAX(interval_start) FROM readings "
                                    "WHERE meter_id = ? AND length(household) > 0", (meter_id,)).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def interval_bounds(self) -> tuple[int, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT MIN(interval_start), MAX(interval_start) FROM readings").fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def storage_bytes(self) -> dict[str, int]:
        """File bytes (database + WAL), for the growth benchmark."""
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"file": sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())}

    def meters(self) -> list[MeterInfo]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT meter_id, feeder, COUNT(*), MIN(interval_start), MAX(interval_start), MAX(counter) "
                "FROM readings GROUP BY meter_id ORDER BY meter_id").fetchall()
        return [MeterInfo(*r) for r in rows]

    def feeders(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT feeder FROM readings ORDER BY feeder")]

    def count_readings(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def coverage(self, t_from: int, t_to: int, interval_len: int = 900,
                 meter_ids: Sequence[str] | None = None) -> list[Coverage]:
        """Expected intervals in [t_from, t_to) vs distinct intervals present, per meter."""
        if interval_len <= 0 or t_to < t_from:
            raise ValueError("need interval_len > 0 and t_from <= t_to")
        with self._lock:
            rows = self.conn.execute(
                "SELECT meter_id, MAX(feeder), COUNT(DISTINCT CASE WHEN interval_start >= ? AND interval_start < ? "
                "THEN interval_start END) FROM readings GROUP BY meter_id ORDER BY meter_id",
                (t_from, t_to)).fetchall()
        return coverage_of(rows, t_from, t_to, interval_len, meter_ids)
