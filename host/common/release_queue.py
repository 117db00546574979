"""The release queue: where the web tier asks for a bill run or a feeder load, and the decryption
role answers.

Why a database both sides open, in common: the web tier holds no key and must never import the
decryption role, and the decryption role must never import the web tier; they meet in this file
(``releases.db``, 0600, default next to the ingest store). The web tier only inserts requests and
reads answers; ``meterveil decryption serve`` claims queued requests, decrypts under its policy
(audited in its own signed log as always) and writes the answer: released bills and feeder loads as
rows, refusals with their reasons. Nothing here is secret to the role that wrote it, but it is
released data, so the file is owner-only.

Statuses: queued -> running -> done | partial (some households/intervals refused) | refused (all
refused or policy error) | failed (bad input, e.g. unknown tariff).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUE_NAME = "releases.db"
KINDS = ("bill", "feeder-load")
FINAL = ("done", "partial", "refused", "failed")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS requests(
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, requested_by TEXT NOT NULL,
        requested_at INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'queued', reason TEXT NOT NULL DEFAULT '',
        started_at INTEGER, finished_at INTEGER, summary TEXT NOT NULL DEFAULT '{}')""",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests(status, id)",
    """CREATE TABLE IF NOT EXISTS bills(
        request_id INTEGER NOT NULL REFERENCES requests(id), meter_id TEXT NOT NULL, period TEXT NOT NULL,
        total_minor INTEGER NOT NULL, total_wh INTEGER NOT NULL, missing INTEGER NOT NULL,
        bill TEXT NOT NULL, PRIMARY KEY(request_id, meter_id))""",
    "CREATE INDEX IF NOT EXISTS bills_meter ON bills(meter_id, period)",
    """CREATE TABLE IF NOT EXISTS refusals(
        request_id INTEGER NOT NULL REFERENCES requests(id), subject TEXT NOT NULL, reason TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS refusals_request ON refusals(request_id)",
    """CREATE TABLE IF NOT EXISTS feeder_loads(
        request_id INTEGER NOT NULL REFERENCES requests(id), feeder TEXT NOT NULL,
        interval_start INTEGER NOT NULL, interval_len INTEGER NOT NULL, contributors INTEGER NOT NULL,
        m INTEGER NOT NULL, epsilon_milli INTEGER NOT NULL, clamp_wh INTEGER NOT NULL, status TEXT NOT NULL,
        analytics_sum_wh INTEGER, PRIMARY KEY(request_id, interval_start))""",
)


class QueueError(ValueError):
    """A request the queue cannot take (unknown kind, malformed parameters)."""


@dataclass(frozen=True)
class Request:
    id: int
    kind: str
    params: dict[str, Any]
    requested_by: str
    requested_at: int
    status: str
    reason: str
    started_at: int | None
    finished_at: int | None
    summary: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _row(r: tuple[Any, ...]) -> Request:
    return Request(int(r[0]), r[1], json.loads(r[2]), r[3], int(r[4]), r[5], r[6], r[7], r[8], json.loads(r[9]))


_COLS = "id, kind, params, requested_by, requested_at, status, reason, started_at, finished_at, summary"


class ReleaseQueue:
    """One connection to the queue file; creates it (0600) and its tables on first open."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / QUEUE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        for stmt in _SCHEMA:
            self.conn.execute(stmt)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReleaseQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- the web tier's side ----------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any], requested_by: str) -> int:
        if kind not in KINDS:
            raise QueueError(f"unknown request kind {kind!r}; one of {', '.join(KINDS)}")
        cur = self.conn.execute("INSERT INTO requests(kind, params, requested_by, requested_at) VALUES (?,?,?,?)",
                                (kind, json.dumps(params, sort_keys=True), requested_by, int(time.time())))
        return int(cur.lastrowid)

    def get(self, request_id: int) -> Request | None:
        r = self.conn.execute(f"SELECT {_COLS} FROM requests WHERE id=?", (request_id,)).fetchone()
        return None if r is None else _row(r)

    def recent(self, kind: str | None = None, limit: int = 50) -> list[Request]:
        if kind is None:
            rows = self.conn.execute(f"SELECT {_COLS} FROM requests ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.conn.execute(f"SELECT {_COLS} FROM requests WHERE kind=? ORDER BY id DESC LIMIT ?",
                                     (kind, limit))
        return [_row(r) for r in rows.fetchall()]

    def bills_of_request(self, request_id: int, limit: int = 500, offset: int = 0) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT bill FROM bills WHERE request_id=? ORDER BY meter_id LIMIT ? OFFSET ?",
                                 (request_id, limit, offset)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def bills_of_meter(self, meter_id: str) -> list[dict[str, Any]]:
        """The newest bill per period of one meter (a re-run replaces an older bill of that period)."""
        rows = self.conn.execute(
            "SELECT b.period, b.bill, b.request_id FROM bills b WHERE b.meter_id=? ORDER BY b.period DESC, "
            "b.request_id DESC", (meter_id,)).fetchall()
        seen: dict[str, dict[str, Any]] = {}
        for period, bill, rid in rows:
            if period not in seen:
                seen[period] = {**json.loads(bill), "request_id": rid}
        return list(seen.values())

    def refusals_of(self, request_id: int) -> list[tuple[str, str]]:
        return [(s, r) for s, r in self.conn.execute(
            "SELECT subject, reason FROM refusals WHERE request_id=? ORDER BY rowid", (request_id,))]

    def feeder_loads_of(self, request_id: int) -> list[dict[str, Any]]:
        cols = ("feeder", "interval_start", "interval_len", "contributors", "m", "epsilon_milli", "clamp_wh",
                "status", "analytics_sum_wh")
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM feeder_loads WHERE request_id=? "
                                 "ORDER BY interval_start", (request_id,)).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # -- the decryption role's side ---------------------------------------------------------------
    def claim(self) -> Request | None:
        """The oldest queued request, marked running (one worker gets it)."""
        with self._tx() as c:
            r = c.execute(f"SELECT {_COLS} FROM requests WHERE status='queued' ORDER BY id LIMIT 1").fetchone()
            if r is None:
                return None
            c.execute("UPDATE requests SET status='running', started_at=? WHERE id=?", (int(time.time()), r[0]))
        return _row(r)

    def requeue_stale(self) -> int:
        """Requests left running by a worker that died: back to the queue (decisions are audited, and a
        re-run of the same bill or interval is answered from the pinned ledger)."""
        return self.conn.execute("UPDATE requests SET status='queued', started_at=NULL WHERE status='running'").rowcount

    def finish(self, request_id: int, status: str, reason: str = "", *, bills: Iterable[dict[str, Any]] = (),
               refusals: Iterable[tuple[str, str]] = (), feeder_loads: Iterable[dict[str, Any]] = (),
               summary: dict[str, Any] | None = None) -> None:
        if status not in FINAL:
            raise QueueError(f"status {status!r} is not final")
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO bills(request_id, meter_id, period, total_minor, total_wh, missing, "
                          "bill) VALUES (?,?,?,?,?,?,?)",
                          [(request_id, b["meter_id"], b["period"], int(b["total_minor"]), int(b["total_wh"]),
                            int(b["missing_intervals"]), json.dumps(b, sort_keys=True)) for b in bills])
            c.executemany("INSERT INTO refusals(request_id, subject, reason) VALUES (?,?,?)",
                          [(request_id, s, r) for s, r in refusals])
            c.executemany("INSERT OR REPLACE INTO feeder_loads(request_id, feeder, interval_start, interval_len, "
                          "contributors, m, epsilon_milli, clamp_wh, status, analytics_sum_wh) "
                          "VALUES (?,?,?,?,?,?,?,?,?,?)",
                          [(request_id, f["feeder"], f["interval_start"], f["interval_len"], f["contributors"],
                            f["m"], f["epsilon_milli"], f["clamp_wh"], f["status"], f["analytics_sum_wh"])
                           for f in feeder_loads])
            c.execute("UPDATE requests SET status=?, reason=?, finished_at=?, summary=? WHERE id=?",
                      (status, reason, int(time.time()), json.dumps(summary or {}, sort_keys=True), request_id))
