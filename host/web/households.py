"""The household's own sealed copies, served to its browser as the gateway stored them: opaque here.

Why the web tier can serve them: in end-to-end mode each reading row keeps the household's copy
(``readings.household``: IV, AES-128-CBC of the exact energy, truncated HMAC-SHA256 tag; protocol/e2e.py)
sealed under keys derived by HKDF from the household key, which only the household (its card) and its
meter hold. The server hands out bytes it cannot open, with the row fields the tag binds (meter,
counter, interval); the page (static/household.js) checks the tag and decrypts with WebCrypto.

A proxy-mode meter has no copy: the gateway encrypted its readings for the utility and nothing was
sealed for the household, so the portal shows bills only and says why.
"""

from __future__ import annotations

import base64
import calendar
import threading
from datetime import datetime, timezone
from typing import Any

from meterveil.host.store.base import open_store

MAX_COPIES = 31 * 96 + 8  # one month of 15-minute intervals (+ slack)


def month_bounds(month: str) -> tuple[int, int]:
    y, m = int(month[:4]), int(month[5:7])
    start = datetime(y, m, 1, tzinfo=timezone.utc)
    days = calendar.monthrange(y, m)[1]
    return int(start.timestamp()), int(start.timestamp()) + days * 86400


def months_between(first: int, last: int) -> list[str]:
    """UTC months from the one holding ``last`` back to the one holding ``first`` (newest first)."""
    out = []
    d = datetime.fromtimestamp(first, timezone.utc).replace(day=1, hour=0, minute=0, second=0)
    end = datetime.fromtimestamp(last, timezone.utc)
    while d <= end:
        out.append(f"{d.year:04d}-{d.month:02d}")
        d = d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1)
    return out[::-1]


class HouseholdCopies:
    """Reads copies through the store interface (SQLite file or PostgreSQL URL), opened on first use
    and kept: opening a store takes its schema lock, which a page view should not."""

    def __init__(self, store: str):
        self.where = store
        self._store: Any = None
        self._lock = threading.Lock()

    def _s(self):
        with self._lock:
            if self._store is None:
                self._store = open_store(self.where, create=False)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def months(self, meter_id: str) -> list[str]:
        """Months holding at least one copy of this meter, newest first; [] for a proxy-mode meter."""
        span = self._s().household_span(meter_id)
        return months_between(*span) if span else []

    def month(self, meter_id: str, month: str) -> list[dict[str, Any]]:
        """One meter's copies in a UTC month, oldest first, as the page opens them."""
        t0, t1 = month_bounds(month)
        return [{"counter": c.counter, "start": c.interval_start, "len": c.interval_len,
                 "copy": base64.b64encode(c.sealed).decode()}
                for c in self._s().household_copies(meter_id, t0, t1, limit=MAX_COPIES)]
