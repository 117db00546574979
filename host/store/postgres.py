"""PostgreSQL implementation of the `Store` interface (see base.py), for several gateway workers.

Why PostgreSQL: past one machine the gateway runs as N stateless workers on a shared MQTT
subscription, and the database must be the arbiter between them. The two integrity rules are
constraints, not Python checks: ``reading_keys`` (unpartitioned) has the primary key
(meter_id, counter) and an exclusion constraint (btree_gist) forbidding overlapping intervals of a
meter. Each reading inserts its key row with ``ON CONFLICT DO NOTHING`` first; a worker that loses
a race waits for the winner's commit, inserts nothing, and the reading is counted ``duplicate``
(same frame), ``counter_reuse`` or ``interval_overlap`` instead of ``accepted``.

readings are partitioned by UTC month of ``interval_start`` (declarative range partitioning): a
month is one table, dropped whole for retention, and billing a month scans one partition.
Partitions are created ahead (the current month, the previous two, the next one) when the store
opens, and on demand before a batch that needs another one: creating a partition locks the parent,
so doing it ahead keeps that lock away from running billing reads.

Schema versions: numbered SQL files in ``pg_migrations/`` (``0001_name.sql``...), each applied in
one transaction under an advisory lock (two workers starting together migrate once) and recorded
in ``schema_migrations``. A database newer than this code is refused. Why not Alembic: the schema is
a handful of tables with no ORM; plain SQL files are reviewable as they run.

Durability: ``synchronous_commit`` is left at the server default (on): ``write_batch`` returns after
the WAL is flushed, so acking the broker afterwards loses nothing on power loss (with fsync on).

Streaming: ``iter_readings`` runs on its own connection with a server-side (named) cursor fetching
``STREAM_ROWS`` rows at a time, so billing a month holds one chunk in memory, not the month.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import urlparse

import psycopg
from psycopg import errors as pg_errors

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

QUARANTINE_LEASE_S = 300.0  # a retry claimed by a worker that died is free again after this
STREAM_ROWS = 1000
_COUNTER_SHARDS = 16
_RETRIES = 8  # deadlock / serialization failures between workers: retry the whole batch
_MIGRATION_LOCK = 0x6D7665696C01  # advisory lock keys ("mveil" + n)
_PARTITION_LOCK = 0x6D7665696C02
_QUARANTINE_LOCK = 0x6D7665696C03
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_COLS = ("meter_id, counter, feeder, interval_start, interval_len, epsilon_milli, clamp_wh, m, "
         "flags, scheme, ciphertext, frame_digest, received_at, household")


def is_postgres_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    u = urlparse(url)
    if u.password is None:
        return url
    return url.replace(f":{u.password}@", ":***@", 1)


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order; versions must be 1..N."""
    folder = resources.files("meterveil.host.store") / "pg_migrations"
    found = []
    for f in folder.iterdir():
        m = _MIGRATION_RE.match(f.name)
        if m:
            found.append((int(m.group(1)), f.name, f.read_text()))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"pg_migrations must be numbered 0001.. without gaps, found {[n for _, n, _ in found]}")
    return found


def month_bounds(t: int) -> tuple[int, int, str]:
    """[start, end) epoch seconds of the UTC month holding ``t`` and its partition name."""
    d = datetime.fromtimestamp(t, timezone.utc)
    start = datetime(d.year, d.month, 1, tzinfo=timezone.utc)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp()), int(end.timestamp()), f"readings_y{d.year:04d}m{d.month:02d}"


def _row_to_reading(r: tuple[Any, ...]) -> StoredReading:
    return StoredReading(meter_id=r[0], counter=r[1], feeder=r[2], interval_start=r[3], interval_len=r[4],
                         epsilon_milli=r[5], clamp_wh=r[6], m=r[7], flags=r[8], scheme=r[9],
                         ciphertext=int.from_bytes(r[10], "big"), frame_digest=bytes(r[11]), received_at=r[12],
                         household=bytes(r[13]))


class PostgresStore:
    """The store on PostgreSQL. One connection for writes and lookups (thread-safe by one lock);
    streaming reads open their own."""

    def __init__(self, url: str, *, create: bool = True, connect_timeout: int = 10,
                 quarantine: QuarantinePolicy | None = None):
        self.url = url
        self.quarantine_policy = quarantine or QuarantinePolicy()
        self.path = redact(url)  # what messages print (the SQLite store's `path`)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as e:
            raise StoreError(f"store {self.path}: cannot connect ({str(e).strip().splitlines()[0]})") from None
        self._lock = threading.RLock()
        self._shard = random.randrange(_COUNTER_SHARDS)
        self._token = os.urandom(8).hex()  # names this store's quarantine leases
        self._months: set[str] = set()
        try:
            if create:  # the gateway: migrate, and make the partitions ingest will need
                self._migrate()
                now = int(time.time())
                self._ensure_partitions({now - 62 * 86400, now - 31 * 86400, now, now + 31 * 86400})
            else:  # readers may hold SELECT only: they neither migrate nor create anything
                if not self._has_schema():
                    raise StoreError(f"store {self.path} is a PostgreSQL database but not a meterveil store "
                                     f"(no schema; only `meterveil gateway` creates a store)")
                self._check_version()
                if self.schema_version() < len(migrations()):
                    raise StoreVersionError(f"{self.path}: schema version {self.schema_version()} is older than "
                                            f"{len(migrations())}: start the gateway once to migrate it")
        except BaseException:
            self.conn.close()
            raise

    # -- schema -------------------------------------------------------------------------------
    def _has_schema(self) -> bool:
        return self.conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]

    def schema_version(self) -> int:
        if not self._has_schema():
            return 0
        return int(self.conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def _check_version(self) -> None:
        v, known = self.schema_version(), len(migrations())
        if v > known:
            raise StoreVersionError(f"{self.path}: schema version {v} is newer than {known}")

    def _migrate(self) -> None:
        with self._lock, self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self.conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations(version integer PRIMARY KEY, "
                              "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            self._check_version()
            done = self.schema_version()
            for version, name, sql in migrations()[done:]:
                with self.conn.transaction():  # a savepoint per file: an error names the file
                    try:
                        self.conn.execute(sql)
                    except psycopg.Error as e:
                        raise StoreError(f"store {self.path}: migration {name} failed: {e}") from None
                    self.conn.execute("INSERT INTO schema_migrations(version, name) VALUES (%s, %s)",
                                      (version, name))

    def _ensure_partitions(self, times: set[int]) -> None:
        need = {}
        for t in times:
            lo, hi, name = month_bounds(t)
            if name not in self._months:
                need[name] = (lo, hi)
        if not need:
            return
        with self._lock:
            have = {r[0] for r in self.conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'readings'::regclass AND c.relname = ANY(%s)", (list(need),))}
            missing = {k: v for k, v in need.items() if k not in have}
            if missing:  # creating one locks the parent table: only when it is really missing
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
                    for name, (lo, hi) in sorted(missing.items()):
                        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
                                          f"FOR VALUES FROM ({lo}) TO ({hi})")
        self._months.update(need)

    def partitions(self) -> list[str]:
        """Names of the monthly partitions of readings, oldest first."""
        rows = self.conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                 "WHERE i.inhparent = 'readings'::regclass ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- writes -------------------------------------------------------------------------------
    def write_batch(self, batch: Batch) -> list[bool]:
        """Insert/upsert/count in one durable transaction; returns per reading whether it was new.

        A deadlock or serialization failure against another worker rolls the whole batch back and
        retries it: nothing was acked yet, and every statement is idempotent."""
        self._ensure_partitions({r.interval_start for r in batch.readings})
        for attempt in range(_RETRIES):
            try:
                with self._lock, self.conn.transaction():
                    return self._write(batch)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _write(self, batch: Batch) -> list[bool]:
        c = self.conn
        counts = batch.counts.copy()
        meter_counts = batch.meter_counts.copy()
        rs = batch.readings
        # one lock order for every worker (meter, then time): conflicting inserts wait, never cycle
        order = sorted(range(len(rs)), key=lambda i: (rs[i].meter_id, rs[i].interval_start, rs[i].counter))
        inserted = [False] * len(rs)
        now = int(time.time())
        if rs:
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO reading_keys(meter_id, counter, span, frame_digest, received_at) "
                    "VALUES (%s, %s, int8range(%s, %s), %s, %s) ON CONFLICT DO NOTHING RETURNING true",
                    [(rs[i].meter_id, rs[i].counter, rs[i].interval_start, rs[i].interval_start + rs[i].interval_len,
                      rs[i].frame_digest, rs[i].received_at or now) for i in order], returning=True)
                for i in order:
                    inserted[i] = cur.fetchone() is not None
                    cur.nextset()
            new = [rs[i] for i in order if inserted[i]]
            if new:
                with c.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO readings({_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                        [(r.meter_id, r.counter, r.feeder, r.interval_start, r.interval_len, r.epsilon_milli,
                          r.clamp_wh, r.m, r.flags, r.scheme, int_to_blob(r.ciphertext), r.frame_digest,
                          r.received_at or now, r.household) for r in new])
            lost = self._lost_races([r for i, r in enumerate(rs) if not inserted[i]])
            for i, r in enumerate(rs):
                reason = "accepted" if inserted[i] else lost[(r.meter_id, r.counter, r.frame_digest)]
                counts[reason] += 1
                meter_counts[(r.meter_id, reason)] += 1
        if batch.quarantine or batch.retried:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_QUARANTINE_LOCK,))
        for q in batch.quarantine:
            self._keep_quarantined(q, counts, meter_counts)
        if batch.released:
            c.execute("DELETE FROM quarantine WHERE digest = ANY(%s)", (list(batch.released),))
        if batch.retried:  # to the back of the line: a retry round number, not a clock
            stamp = int(c.execute("SELECT COALESCE(MAX(last_try), 0) FROM quarantine").fetchone()[0]) + 1
            with c.cursor() as cur:
                cur.executemany("UPDATE quarantine SET last_try = %s, reason = %s, pool = %s, retry_at = %s, "
                                "claimed_by = '', claimed_until = 0 WHERE digest = %s",
                                [(stamp, r, pool_of(r), at, d) for d, r, at in batch.retried])
        if batch.statuses:
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO meter_status(meter_id, counter, received_at, status_json, sealed_at) "
                    "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (meter_id) DO UPDATE SET counter = excluded.counter, "
                    "received_at = excluded.received_at, status_json = excluded.status_json, "
                    "sealed_at = excluded.sealed_at "
                    "WHERE (excluded.sealed_at, excluded.counter) > (meter_status.sealed_at, meter_status.counter)",
                    [(s.meter_id, s.counter, s.received_at, json.dumps(s.status, sort_keys=True), s.sealed_at)
                     for s in sorted(batch.statuses, key=lambda s: (s.meter_id, s.sealed_at, s.counter))])
        # hot rows last and in a fixed order: held only for the few statements before the commit
        with c.cursor() as cur:
            rows = sorted((k, v) for k, v in meter_counts.items() if v)
            if rows:
                cur.executemany("INSERT INTO meter_counters(meter_id, reason, count) VALUES (%s,%s,%s) "
                                "ON CONFLICT (meter_id, reason) DO UPDATE SET count = meter_counters.count + "
                                "excluded.count", [(m, k, v) for (m, k), v in rows])
            rows2 = sorted((k, v) for k, v in counts.items() if v)
            if rows2:
                cur.executemany("INSERT INTO counters(reason, shard, count) VALUES (%s,%s,%s) "
                                "ON CONFLICT (reason, shard) DO UPDATE SET count = counters.count + excluded.count",
                                [(k, self._shard, v) for k, v in rows2])
        return inserted

    def _keep_quarantined(self, q: QuarantinedFrame, counts, meter_counts) -> None:
        """Admit one frame under the policy (store/quarantine.py), evicting or counting as it says;
        the caller holds the quarantine advisory lock, so workers admit one at a time."""
        c = self.conn
        if c.execute("SELECT 1 FROM quarantine WHERE digest = %s", (q.digest,)).fetchone():
            return  # a redelivery of a frame already held
        pool = pool_of(q.reason)
        held = int(c.execute("SELECT COUNT(*) FROM quarantine WHERE pool = %s AND meter_id = %s",
                             (pool, q.meter_id)).fetchone()[0])
        total = ids = 0
        largest = None
        if pool == UNVERIFIED:
            total, ids = c.execute("SELECT COUNT(*), COUNT(DISTINCT meter_id) FROM quarantine WHERE pool = %s",
                                   (UNVERIFIED,)).fetchone()
            top = c.execute("SELECT meter_id, COUNT(*) AS n FROM quarantine WHERE pool = %s GROUP BY meter_id "
                            "ORDER BY n DESC LIMIT 1", (UNVERIFIED,)).fetchone()
            largest = (top[0], int(top[1])) if top else None
        verdict = admit(self.quarantine_policy, pool, q.meter_id, held, int(total), int(ids), largest)
        if not verdict.admit:
            counts["quarantine_full"] += 1
            meter_counts[(q.meter_id, "quarantine_full")] += 1
            return
        if verdict.evict_from is not None:
            c.execute("DELETE FROM quarantine WHERE digest = (SELECT digest FROM quarantine WHERE meter_id = %s "
                      "AND pool = %s ORDER BY received_at, seq LIMIT 1)", (verdict.evict_from, UNVERIFIED))
            counts["quarantine_evicted"] += 1
            meter_counts[(verdict.evict_from, "quarantine_evicted")] += 1
        c.execute("INSERT INTO quarantine(digest, meter_id, topic, payload, reason, received_at, pool, retry_at) "
                  "VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                  (q.digest, q.meter_id, q.topic, q.payload, q.reason, q.received_at, pool, q.retry_at))

    def _lost_races(self, rs: list[StoredReading]) -> dict[tuple[str, int, bytes], str]:
        """Why each reading's key row was not inserted, in one query: the same frame is there
        (``duplicate``), another frame holds its counter (``counter_reuse``), or another reading
        covers its interval (``interval_overlap``). Keyed by (meter_id, counter, frame_digest)."""
        if not rs:
            return {}
        rows = self.conn.execute(
            "SELECT k.meter_id, k.counter, k.frame_digest FROM reading_keys k "
            "JOIN unnest(%s::text[], %s::bigint[]) AS q(meter_id, counter) USING (meter_id, counter)",
            ([r.meter_id for r in rs], [r.counter for r in rs])).fetchall()
        held = {(m, int(c)): bytes(d) for m, c, d in rows}
        out = {}
        for r in rs:
            d = held.get((r.meter_id, r.counter))
            out[(r.meter_id, r.counter, r.frame_digest)] = ("interval_overlap" if d is None else
                                                            "duplicate" if d == r.frame_digest else "counter_reuse")
        return out

    _Q_COLS = "q.digest, q.meter_id, q.topic, q.payload, q.reason, q.received_at, q.retry_at"

    @staticmethod
    def _q_rows(rows) -> list[QuarantinedFrame]:
        return [QuarantinedFrame(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], int(r[5]),
                                 None if r[6] is None else int(r[6])) for r in rows]

    def quarantined(self, limit: int = 1000, *, meter_ids: Sequence[str] | None = None,
                    due_by: int | None = None) -> list[QuarantinedFrame]:
        """Held frames, least recently tried first; only of `meter_ids` and due by `due_by` if given.
        Each frame returned is leased to this store (this worker) for ``QUARANTINE_LEASE_S``, so a
        second worker retrying at the same time takes other frames and a worker that died mid-retry
        holds them no longer than that."""
        where, args = ["(claimed_until <= %s OR claimed_by = %s)"], []
        now = time.time()
        args += [now, self._token]
        if due_by is not None:
            where.append("(retry_at IS NULL OR retry_at <= %s)")
            args.append(due_by)
        if meter_ids is not None:
            ids = list(dict.fromkeys(meter_ids))
            if not ids:
                return []
            where.append("meter_id = ANY(%s)")
            args.append(ids)
        with self._lock, self.conn.transaction():
            rows = self.conn.execute(
                f"UPDATE quarantine q SET claimed_by = %s, claimed_until = %s FROM ("
                f" SELECT digest FROM quarantine WHERE {' AND '.join(where)}"
                f" ORDER BY last_try, received_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) pick "
                f"WHERE q.digest = pick.digest RETURNING {self._Q_COLS}, q.last_try, q.seq",
                (self._token, now + QUARANTINE_LEASE_S, *args, limit)).fetchall()
        rows.sort(key=lambda r: (r[7], r[5], r[8]))
        return self._q_rows(rows)

    def quarantine_meter_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT meter_id FROM quarantine ORDER BY 1")]

    def quarantine_expiring(self, before: int, limit: int = 1000) -> list[QuarantinedFrame]:
        """Frames received before `before`, oldest first (the gateway expires them, counted)."""
        with self._lock:
            rows = self.conn.execute(f"SELECT {self._Q_COLS} FROM quarantine q WHERE received_at < %s "
                                     "ORDER BY received_at, seq LIMIT %s", (before, limit)).fetchall()
        return self._q_rows(rows)

    def quarantine_counts(self) -> dict[str, int]:
        with self._lock:
            return {r: int(n) for r, n in self.conn.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason")}

    # -- point lookups used by ingest ---------------------------------------------------------
    def lookup(self, meter_id: str, counter: int) -> tuple[bytes, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT frame_digest, received_at FROM reading_keys "
                                    "WHERE meter_id = %s AND counter = %s", (meter_id, counter)).fetchone()
        return (bytes(row[0]), int(row[1])) if row else None

    def overlapping(self, meter_id: str, start: int, end: int) -> int | None:
        """Counter of a stored reading of this meter whose interval overlaps [start, end), if any."""
        with self._lock:
            row = self.conn.execute("SELECT counter FROM reading_keys WHERE meter_id = %s "
                                    "AND span && int8range(%s, %s) LIMIT 1", (meter_id, start, end)).fetchone()
        return None if row is None else int(row[0])

    def lookup_many(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[bytes, int]]:
        """`lookup` of many (meter_id, counter) keys in one query: only those stored are in the result."""
        if not keys:
            return {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT k.meter_id, k.counter, k.frame_digest, k.received_at FROM reading_keys k "
                "JOIN unnest(%s::text[], %s::bigint[]) AS q(meter_id, counter) USING (meter_id, counter)",
                ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
        return {(r[0], int(r[1])): (bytes(r[2]), int(r[3])) for r in rows}

    def overlapping_many(self, spans: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], int]:
        """`overlapping` of many (meter_id, start, end) in one query (the exclusion constraint's gist
        index answers each): only spans that overlap a stored reading are in the result."""
        if not spans:
            return {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT q.meter_id, q.s, q.e, x.counter FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) "
                "AS q(meter_id, s, e) CROSS JOIN LATERAL (SELECT counter FROM reading_keys k "
                "WHERE k.meter_id = q.meter_id AND k.span && int8range(q.s, q.e) LIMIT 1) x",
                ([s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans])).fetchall()
        return {(r[0], int(r[1]), int(r[2])): int(r[3]) for r in rows}

    def max_counter(self, meter_id: str) -> int | None:
        with self._lock:
            row = self.conn.execute("SELECT MAX(counter) FROM reading_keys WHERE meter_id = %s",
                                    (meter_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    # -- counters and status ------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self._lock:
            return {k: int(v) for k, v in self.conn.execute(
                "SELECT reason, SUM(count) FROM counters GROUP BY reason ORDER BY reason")}

    def meter_counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for m, k, v in self.conn.execute("SELECT meter_id, reason, count FROM meter_counters ORDER BY 1, 2"):
                out.setdefault(m, {})[k] = int(v)
        return out

    def latest_status(self, meter_id: str) -> StatusRecord | None:
        with self._lock:
            row = self.conn.execute("SELECT meter_id, counter, received_at, status_json, sealed_at FROM meter_status "
                                    "WHERE meter_id = %s", (meter_id,)).fetchone()
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
        """Stream readings through a server-side cursor on a connection of its own (``STREAM_ROWS``
        rows in memory at a time; the ingest connection and its lock stay free)."""
        where, args = [], []
        for col, op, val in (("feeder", "=", feeder), ("meter_id", "=", meter_id),
                             ("interval_start", ">=", t_from), ("interval_start", "<", t_to)):
            if val is not None:
                where.append(f"{col} {op} %s")
                args.append(val)
        sql = f"SELECT {_COLS} FROM readings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ORDER_BY[order]
        with psycopg.connect(self.url) as conn, conn.cursor(name="meterveil_iter_readings") as cur:
            cur.itersize = STREAM_ROWS
            cur.execute(sql, args)
            for r in cur:
                yield _row_to_reading(r)

    def readings_for_feeder(self, feeder: str, t_from: int, t_to: int) -> list[StoredReading]:
        return list(self.iter_readings(feeder=feeder, t_from=t_from, t_to=t_to))

    def readings_for_meter(self, meter_id: str, t_from: int, t_to: int) -> list[StoredReading]:
        return list(self.iter_readings(meter_id=meter_id, t_from=t_from, t_to=t_to))

    def household_copies(self, meter_id: str, t_from: int, t_to: int,
                         limit: int | None = None) -> list[HouseholdCopy]:
        sql = ("SELECT meter_id, counter, interval_start, interval_len, household FROM readings WHERE meter_id = %s "
               "AND interval_start >= %s AND interval_start < %s AND octet_length(household) > 0 ORDER BY interval_start")
        args: list[Any] = [meter_id, t_from, t_to]
        if limit is not None:
            sql += " LIMIT %s"
            args.append(int(limit))
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [HouseholdCopy(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def household_span(self, meter_id: str) -> tuple[int, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT MIN(interval_start), MAX(interval_start) FROM readings "
                                    "WHERE meter_id = %s AND octet_length(household) > 0", (meter_id,)).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def interval_bounds(self) -> tuple[int, int] | None:
        with self._lock:
            row = self.conn.execute("SELECT MIN(interval_start), MAX(interval_start) FROM readings").fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def meters(self) -> list[MeterInfo]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT meter_id, MAX(feeder), COUNT(*), MIN(interval_start), MAX(interval_start), MAX(counter) "
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
                "SELECT meter_id, MAX(feeder), COUNT(DISTINCT interval_start) FILTER (WHERE interval_start >= %s "
                "AND interval_start < %s) FROM readings GROUP BY meter_id ORDER BY meter_id",
                (t_from, t_to)).fetchall()
        return coverage_of(rows, t_from, t_to, interval_len, meter_ids)

    def storage_bytes(self) -> dict[str, int]:
        """On-disk bytes (tables + indexes + TOAST) per table family, for the growth benchmark."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT CASE WHEN c.relname LIKE 'readings_y%%' THEN 'readings' ELSE c.relname END, "
                "SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') GROUP BY 1").fetchall()
        return {k: int(v) for k, v in rows}
