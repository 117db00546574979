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
        self._lock = threading.Lock()
        self._rowid = 0
        self._last: dict[str, list[int]] = {}  # meter -> [newest interval_start, last received_at]
        self._feeder: dict[str, str] = {}
        self._samples: list[tuple[float, int]] = []  # (time, accepted counter) for throughput

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
            meter = c.execute("SELECT MIN(meter_id) FROM readings WHERE meter_id > ?", (meter,)).fetchone()[0]
        self._rowid = top

    def refresh(self) -> None:
        with self._lock:
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
                self._rowid = rid

    def feeders(self) -> list[str]:
        with self._lock:
            return sorted(set(self._feeder.values()))

    def _statuses(self) -> dict[str, tuple[int, dict[str, Any]]]:
        import json

        return {m: (int(t), json.loads(s)) for m, t, s in
                self._conn.execute("SELECT meter_id, received_at, status_json FROM meter_status")}

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

    def rows(self) -> list[MeterRow]:
        self.refresh()
        statuses = self._statuses()
        rejections = self.meter_rejections()
        now = self.clock()
        ids = set(self._last) | set(statuses)
        records = {}
        if self.registry is not None:
            records = {r.meter_id: r for r in self.registry}
            ids |= set(records)
        out = []
        for m in ids:
            last = self._last.get(m)
            st_t, status = statuses.get(m, (None, {}))
            heard = max([t for t in (last[1] if last else None, st_t) if t is not None], default=None)
            rec = records.get(m)
            flags = []
            if status.get("outbox_depth", 0) > 96:
                flags.append("backlog")
            if status.get("outbox_overflow", 0):
                flags.append("overflow")
            rej = sum(rejections.get(m, {}).values())
            if rej:
                flags.append("rejections")
            if rec is None:
                flags.append("unregistered")
            silent = heard is None or now - heard > self.silent_after_s
            out.append(MeterRow(
                meter_id=m, feeder=rec.feeder if rec else self._feeder.get(m, ""),
                household=rec.household_id if rec else "", attributes=dict(rec.attributes) if rec else {},
                last_interval=last[0] if last else None, last_heard=heard,
                status=status, rejections=rej, silent=silent, flags=tuple(flags)))
        # problems first: silent, then flagged, then by id
        out.sort(key=lambda r: (not r.silent, not r.flags, r.meter_id))
        return out
