"""Fleet health for the operator page, read from the ingest store without touching a ciphertext.

Why a tail index: "last reading per meter" over a month of 15-minute data for 10,000 meters is a
GROUP BY over ~30 million rows, seconds per page. Readings are only ever inserted, so this keeps the
newest interval and receive time per meter in memory and, on each refresh, reads only the rows with
a rowid above the last one seen (a range scan on the primary key). The first refresh reads no table:
it walks the distinct meter ids by seeks on the (meter_id, interval_start) index and takes each
meter's newest interval from the same index, one seek per meter. "Last heard" is the receive time of
that newest interval, of any reading stored since the console started, or of the latest status frame,
whichever is latest.

Silence: a meter is silent when nothing (reading or status) has been received from it for
``silent_after_s`` (default three 15-minute intervals).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from meterveil.host.common.registry import MeterRegistry

# Status keys worth a column (protocol STATUS_KEYS); the rest is shown on hover.
BACKLOG = 96  # outbox depth above one day of 15-minute readings is a backlog
STATUS_SHOWN = ("outbox_depth", "outbox_overflow", "dp_spend_milli", "reconnects", "boot_count")
# Counters that are not rejections: the gateway's own list (host/gateway/ingest.py, which this tier may
# not import); tests/test_web_security.py checks the two are equal.
NOT_REJECTIONS = ("accepted", "duplicate", "status", "status_superseded", "quarantine_released")


@dataclass
class MeterRow:
    meter_id: str
    feeder: str
    household: str
    attributes: dict[str, Any]
    last_interval: int | None
    last_heard: int | None
    status: dict[str, Any]
    rejections: int
    silent: bool
    flags: tuple[str, ...]


class Fleet:
    """Tails the store's readings table; thread-safe; one per web process."""

    def __init__(self, store_path: str, registry: MeterRegistry | None, silent_after_s: int = 2700,
                 clock=time.time):
        self.store_path = store_path
        self.registry = registry
        self.silent_after_s = silent_after_s
        self.clock = clock
        self._conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        self._lock = threading.RLock()
        self._rowid = 0
        self._last: dict[str, list[int]] = {}  # meter -> [newest interval_start, last received_at]
        self._feeder: dict[str, str] = {}
        self._samples: list[tuple[float, int]] = []  # (time, accepted counter) for throughput
        self._status: dict[str, tuple[int, dict[str, Any]]] = {}
        self._status_mark = 0
        self._status_counter: dict[str, int] = {}
        self._status_flagged: set[str] = set()
        self._heard: dict[str, int] = {}  # meter -> last receive time of anything from it
        self._sorted: list[str] = []  # every meter id known, sorted
        self._records: dict[str, Any] | None = None

    def close(self) -> None:
        self._conn.close()

    def _warm_up(self) -> None:
        c = self._conn
        top = c.execute("SELECT MAX(id) FROM readings").fetchone()[0]
        if top is None:
            return
        meter = c.execute("SELECT MIN(meter_id) FROM readings").fetchone()[0]
        while meter is not None:
            start, received, feeder = c.execute(
                "SELECT interval_start, received_at, feeder FROM readings WHERE meter_id=? AND id <= ? "
                "ORDER BY interval_start DESC LIMIT 1", (meter, top)).fetchone() or (None, None, "")
            if start is not None:
                self._last[meter] = [start, received]
                self._feeder[meter] = feeder
                self._heard[meter] = max(self._heard.get(meter, -1), received)
            meter = c.execute("SELECT MIN(meter_id) FROM readings WHERE meter_id > ?", (meter,)).fetchone()[0]
        self._rowid = top

    def refresh(self) -> None:
        with self._lock:
            self.refresh_locked()

    def refresh_locked(self) -> None:
        if self._rowid == 0:
            self._warm_up()
        rows = self._conn.execute(
            "SELECT id, meter_id, feeder, interval_start, received_at FROM readings WHERE id > ? ORDER BY id",
            (self._rowid,)).fetchall()
        for rid, meter, feeder, start, received in rows:
            cur = self._last.get(meter)
            if cur is None:
                self._last[meter] = [start, received]
            else:
                cur[0] = max(cur[0], start)
                cur[1] = max(cur[1], received)
            self._feeder[meter] = feeder
            if received > self._heard.get(meter, -1):
                self._heard[meter] = received
            self._rowid = rid

    def feeders(self) -> list[str]:
        with self._lock:
            return sorted(set(self._feeder.values()))

    def _refresh_statuses(self) -> None:
        """Only status rows received since the newest one seen are read and parsed (a status row is
        replaced in place by the meter's next status frame, with a later received_at)."""
        import json

        rows = self._conn.execute("SELECT meter_id, counter, received_at, status_json FROM meter_status "
                                  "WHERE received_at >= ?", (self._status_mark,)).fetchall()
        for m, counter, t, text in rows:
            if self._status_counter.get(m) == counter:
                continue  # same status as last time (rows received in the same second are read again)
            self._status_counter[m] = counter
            status = json.loads(text)
            self._status[m] = (int(t), status)
            self._status_mark = max(self._status_mark, int(t))
            self._heard[m] = max(self._heard.get(m, -1), int(t))
            if status.get("outbox_depth", 0) > BACKLOG or status.get("outbox_overflow", 0):
                self._status_flagged.add(m)
            else:
                self._status_flagged.discard(m)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._conn.execute("SELECT reason, count FROM counters ORDER BY reason")}

    def meter_rejections(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        marks = ",".join("?" * len(NOT_REJECTIONS))
        q = f"SELECT meter_id, reason, count FROM meter_counters WHERE reason NOT IN ({marks}) ORDER BY meter_id, reason"
        for m, reason, n in self._conn.execute(q, NOT_REJECTIONS):
            out.setdefault(m, {})[reason] = int(n)
        return out

    def quarantine(self) -> dict[str, int]:
        return {r: int(n) for r, n in self._conn.execute(
            "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason")}

    def throughput(self, accepted: int) -> float | None:
        """Readings accepted per second since a sample at least 30 s old (None until there is one)."""
        now = self.clock()
        with self._lock:
            self._samples.append((now, accepted))
            self._samples = [s for s in self._samples if now - s[0] <= 3600]
            old = [s for s in self._samples if now - s[0] >= 30]
            if not old:
                return None
            t0, a0 = old[-1]
        return (accepted - a0) / (now - t0)

    def view(self, q: str = "", offset: int = 0, limit: int = 100) -> tuple[list[MeterRow], int, int, int]:
        """(rows of one page, meters matching `q`, silent among them, flagged among them); problems
        first: silent, then flagged, then by id. Per-meter state is kept up to date incrementally; a
        request only compares receive times with the cutoff and builds the page's rows."""
        with self._lock:
            self.refresh_locked()
            self._refresh_statuses()
            rejections = {m: sum(v.values()) for m, v in self.meter_rejections().items()}
            if self._records is None:
                self._records = {r.meter_id: r for r in self.registry} if self.registry is not None else {}
            known = set(self._last) | set(self._status) | set(self._records)
            if len(known) != len(self._sorted):  # ids only ever grow
                self._sorted = sorted(known)
            ids = self._sorted
            if q:
                ql = q.lower()
                ids = [m for m in ids if ql in m.lower() or ql in self._feeder_of(m).lower()]
            cutoff = self.clock() - self.silent_after_s
            heard = self._heard
            records = self._records
            flagged = self._status_flagged | set(rejections)
            silent = [m for m in ids if heard.get(m, -1) < cutoff]
            silent_set = set(silent)
            registered = self.registry is not None
            flagged_ids = [m for m in ids if m in flagged or (registered and m not in records)]
            flagged_set = set(flagged_ids)
            order = ([m for m in silent if m in flagged_set] + [m for m in silent if m not in flagged_set]
                     + [m for m in flagged_ids if m not in silent_set])
            if offset + limit > len(order):  # the healthy rest, only when the page reaches it
                order += [m for m in ids if m not in silent_set and m not in flagged_set]
            keyed = order
            silent_n, flagged_n = len(silent), len(flagged_ids)
            total = len(ids)
            page = [self._row(m, rejections.get(m, 0), cutoff) for m in keyed[offset:offset + limit]]
        return page, total, silent_n, flagged_n

    def _feeder_of(self, m: str) -> str:
        rec = (self._records or {}).get(m)
        return rec.feeder if rec else self._feeder.get(m, "")

    def _row(self, m: str, rej: int, cutoff: float) -> MeterRow:
        lt, st = self._last.get(m), self._status.get(m)
        heard = max([t for t in (lt[1] if lt else None, st[0] if st else None) if t is not None], default=None)
        status = st[1] if st else {}
        rec = (self._records or {}).get(m)
        flags = []
        if status.get("outbox_depth", 0) > BACKLOG:
            flags.append("backlog")
        if status.get("outbox_overflow", 0):
            flags.append("overflow")
        if rej:
            flags.append("rejections")
        if rec is None and self.registry is not None:
            flags.append("unregistered")
        return MeterRow(meter_id=m, feeder=self._feeder_of(m), household=rec.household_id if rec else "",
                        attributes=dict(rec.attributes) if rec else {}, last_interval=lt[0] if lt else None,
                        last_heard=heard, status=status, rejections=rej,
                        silent=heard is None or heard < cutoff, flags=tuple(flags))
