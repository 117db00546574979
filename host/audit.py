"""Hash-chained audit log of every decryption and refusal, in the store's SQLite file.

Each entry's hash is SHA-256 over the canonical JSON of the entry including the previous entry's
hash, so editing, removing or reordering any entry breaks the chain at that entry. Removing the
*last* entries leaves a valid shorter chain; to catch that, the head (seq, hash) is kept in a
one-row table updated in the same transaction, and `verify(anchor=...)` checks a head published
elsewhere. What cannot be detected: someone with write access who truncates the log *and* rewrites
the head row, unless an anchor was kept outside the database (`meterveil audit head`).

Result hashes are HMACs under a key held by the decryption role: a plain SHA-256 of a small
integer (a bill total) could be brute-forced by anyone who can read the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY,
    ts          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    query       TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('allow', 'refuse')),
    reason      TEXT NOT NULL,
    result_hash TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    entry_hash  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    entry_hash  TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
-- INSERT OR REPLACE deletes the old row without firing delete triggers: refuse the insert itself
CREATE TRIGGER IF NOT EXISTS audit_log_no_overwrite BEFORE INSERT ON audit_log
WHEN EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""


class AuditError(RuntimeError):
    """The audit log could not be written or read."""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def result_digest(result: Any, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of a decrypted result."""
    return hmac.new(key, canonical_json(result).encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    query: dict[str, Any]
    decision: str  # 'allow' | 'refuse'
    reason: str
    result_hash: str  # '' for refusals
    prev_hash: str
    entry_hash: str

    def body(self) -> dict[str, Any]:
        """The hashed content: everything but entry_hash."""
        return {
            "seq": self.seq, "ts": self.ts, "actor": self.actor, "action": self.action,
            "query": self.query, "decision": self.decision, "reason": self.reason,
            "result_hash": self.result_hash, "prev_hash": self.prev_hash,
        }

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body()).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked before the first bad one (or all)
    first_bad_seq: int | None
    reason: str
    head: tuple[int, str]  # (seq, hash) of the last good entry; (0, GENESIS) for an empty log

    def describe(self) -> str:
        if self.ok:
            return f"audit log intact: {self.entries} entries, head {self.head[0]}:{self.head[1]}"
        return f"audit log BROKEN at entry seq={self.first_bad_seq}: {self.reason}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AuditLog:
    """Append-only, hash-chained log; one instance per SQLite connection it opens."""

    def __init__(self, db_path: str | Path, clock: Callable[[], str] = _utc_now) -> None:
        self.path = str(db_path)
        self._clock = clock
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(
        self, actor: str, action: str, query: dict[str, Any], decision: str, reason: str,
        result_hash: str = "",
    ) -> AuditEntry:
        """Append one entry atomically (BEGIN IMMEDIATE: concurrent writers cannot fork the chain)."""
        if decision not in ("allow", "refuse"):
            raise AuditError(f"decision must be 'allow' or 'refuse', got {decision!r}")
        if not actor:
            raise AuditError("an audit entry needs an actor (who is decrypting)")
        query = json.loads(canonical_json(query))  # what is stored is exactly what is hashed
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            entry = AuditEntry(seq, self._clock(), actor, action, query, decision, reason, result_hash, prev, "")
            entry = dataclasses.replace(entry, entry_hash=entry.compute_hash())
            cur.execute(
                "INSERT INTO audit_log (seq, ts, actor, action, query, decision, reason, result_hash,"
                " prev_hash, entry_hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (entry.seq, entry.ts, actor, action, canonical_json(query), decision, reason,
                 result_hash, prev, entry.entry_hash),
            )
            cur.execute(
                "INSERT INTO audit_head (id, seq, entry_hash) VALUES (1, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, entry_hash = excluded.entry_hash",
                (entry.seq, entry.entry_hash),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return entry

    def entries(self) -> Iterator[AuditEntry]:
        """All entries in seq order (as stored; verify() says whether to trust them)."""
        for r in self._db.execute(
            "SELECT seq, ts, actor, action, query, decision, reason, result_hash, prev_hash, entry_hash"
            " FROM audit_log ORDER BY seq"
        ):
            try:
                query = json.loads(r[4])
            except (TypeError, json.JSONDecodeError):
                query = {"unparseable": str(r[4])}
            yield AuditEntry(r[0], r[1], r[2], r[3], query, r[5], r[6], r[7], r[8], r[9])

    def head(self) -> tuple[int, str]:
        """(seq, entry_hash) recorded in the head row; (0, GENESIS) for an empty log."""
        row = self._db.execute("SELECT seq, entry_hash FROM audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Walk the chain; report the first entry whose seq, link or hash is wrong.

        `anchor` (seq, hash) is a head published outside the database earlier: the chain must still
        contain that entry with that hash, which catches truncation even when the head row was rewritten.
        """
        prev, expected_seq, good = GENESIS, 1, (0, GENESIS)

        def bad(seq: int | None, reason: str) -> VerifyResult:
            return VerifyResult(False, expected_seq - 1, seq, reason, good)

        for e in self.entries():
            if e.seq != expected_seq:
                what = "an entry is missing (removed?)" if e.seq > expected_seq else "entries out of order"
                return bad(e.seq, f"expected seq {expected_seq}, found {e.seq}: {what}")
            if e.prev_hash != prev:
                return bad(e.seq, "prev_hash does not match the previous entry (removed or reordered entry)")
            if e.compute_hash() != e.entry_hash:
                return bad(e.seq, "entry_hash does not match its content (entry edited)")
            if anchor is not None and e.seq == anchor[0] and e.entry_hash != anchor[1]:
                return bad(e.seq, f"entry differs from the external anchor {anchor[0]}:{anchor[1]}")
            prev, good, expected_seq = e.entry_hash, (e.seq, e.entry_hash), expected_seq + 1
        head = self.head()
        if head != good:
            return bad(head[0] if head[0] > good[0] else good[0],
                       f"head row records {head[0]}:{head[1][:16]}... but the chain ends at "
                       f"{good[0]}:{good[1][:16]}... (last entries removed or head rewritten)")
        if anchor is not None and anchor[0] > good[0]:
            return bad(anchor[0], f"external anchor {anchor[0]} is beyond the end of the chain ({good[0]}): truncated")
        return VerifyResult(True, good[0], None, "ok", good)


def parse_anchor(text: str) -> tuple[int, str]:
    """'SEQ:HASH' (as printed by `meterveil audit head`) -> (seq, hash)."""
    seq, sep, h = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise ValueError(f"anchor {text!r} is not SEQ:SHA256HEX")
    return int(seq), h
