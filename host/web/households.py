"""The household's own sealed copies, served to its browser as they are stored: opaque to the web tier.

Why the web tier can serve them: each copy is a protocol frame (protocol/SPEC.md: header, IV,
AES-128-CBC body, truncated HMAC-SHA256 tag) sealed under keys derived by HKDF from the household
key, which only the household holds (its card). The server hands out bytes it cannot open; the page
(static/household.js) checks the tag and decrypts with WebCrypto.

Where they live: the end-to-end mode stores them in the ingest store, table ``household_copies``
(``meter_id``, ``interval_start``, ``frame`` BLOB: one sealed reading frame per interval). Until a
store has that table, the portal shows bills only and says so.
"""

from __future__ import annotations

import base64
import calendar
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

TABLE = "household_copies"
MAX_FRAMES = 31 * 96 + 8  # one month of 15-minute intervals (+ slack)


def _ro(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)


def has_copies(store: Path) -> bool:
    conn = _ro(store)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone() is not None
    finally:
        conn.close()


def month_bounds(month: str) -> tuple[int, int]:
    y, m = int(month[:4]), int(month[5:7])
    start = datetime(y, m, 1, tzinfo=timezone.utc)
    days = calendar.monthrange(y, m)[1]
    return int(start.timestamp()), int(start.timestamp()) + days * 86400


def months_with_copies(store: Path, meter_id: str) -> list[str]:
    if not has_copies(store):
        return []
    conn = _ro(store)
    try:
        row = conn.execute(f"SELECT MIN(interval_start), MAX(interval_start) FROM {TABLE} WHERE meter_id=?",
                           (meter_id,)).fetchone()
    finally:
        conn.close()
    if row[0] is None:
        return []
    out = []
    d = datetime.fromtimestamp(row[0], timezone.utc).replace(day=1, hour=0, minute=0, second=0)
    end = datetime.fromtimestamp(row[1], timezone.utc)
    while d <= end:
        out.append(f"{d.year:04d}-{d.month:02d}")
        d = d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1)
    return out[::-1]


def copies(store: Path, meter_id: str, month: str) -> list[str]:
    """Base64 frames of one meter's copies in a UTC month, oldest first."""
    if not has_copies(store):
        return []
    t0, t1 = month_bounds(month)
    conn = _ro(store)
    try:
        rows = conn.execute(f"SELECT frame FROM {TABLE} WHERE meter_id=? AND interval_start >= ? AND "
                            f"interval_start < ? ORDER BY interval_start LIMIT ?", (meter_id, t0, t1, MAX_FRAMES))
        return [base64.b64encode(bytes(r[0])).decode() for r in rows]
    finally:
        conn.close()
