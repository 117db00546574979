"""Signed, hash-chained audit log of every decryption and refusal, in the decryption role's own database.

Each entry's hash is SHA-256 over the canonical JSON of the entry including the previous entry's
hash, and each hash is signed with the decryption role's Ed25519 key (signing.py). Editing,
removing or reordering entries breaks the chain; rewriting the chain and recomputing the hashes
breaks the signatures. Removing the *last* entries leaves a valid shorter chain: the head is also
written, signed, to an anchor log after every session (anchors.py), and `verify` requires the newest
anchor to be in the chain.

Entries are stored as canonical JSON and parsed strictly: a duplicate key or any other spelling than
the canonical one is an error, so every reader (the ledger, the verifier) sees the same entry.

Result hashes are HMACs under a key held by the decryption role: a plain SHA-256 of a small
integer (a bill total) could be brute-forced by anyone who can read the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterveil.host.audit import signing

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
    entry_hash  TEXT NOT NULL,
    signature   TEXT NOT NULL
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


ENTRY_DOMAIN = b"meterveil/audit-entry/v2\0"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise AuditError(f"duplicate key {k!r} in an audit entry")
        out[k] = v
    return out


def strict_loads(text: str) -> Any:
    """Parse canonical JSON only: duplicate keys, NaN or any non-canonical spelling raise AuditError.

    Why: two parsers that disagree on a duplicate key (SQLite keeps one, Python another) would let
    the ledger read one entry while the verifier checks a different one."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates,
                         parse_constant=lambda c: (_ for _ in ()).throw(AuditError(f"{c} in an audit entry")))
    except (TypeError, ValueError) as e:
        raise AuditError(f"audit entry is not JSON ({e})") from None
    if canonical_json(obj) != text:
        raise AuditError("audit entry is not in canonical JSON")
    return obj


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
    signature: str = ""

    def body(self) -> dict[str, Any]:
        """The hashed content: everything but entry_hash."""
        return {
            "seq": self.seq, "ts": self.ts, "actor": self.actor, "action": self.action,
            "query": self.query, "decision": self.decision, "reason": self.reason,
            "result_hash": self.result_hash, "prev_hash": self.prev_hash,
        }

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.body()).encode("utf-8")).hexdigest()

    def signature_ok(self, verify_key: Ed25519PublicKey) -> bool:
        return signing.check(verify_key, ENTRY_DOMAIN, bytes.fromhex(self.entry_hash), self.signature)


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
    """Append-only, signed, hash-chained log; one instance per SQLite connection it opens.

    Opened with the signing key (the decryption role) it can append; without it (auditors, the web
    tier) it can only read and verify.
    """

    def __init__(self, db_path: str | Path, signer: Ed25519PrivateKey | None = None,
                 clock: Callable[[], str] = _utc_now, *, readonly: bool = False) -> None:
        """`readonly` (auditors): open an existing file without creating or changing anything;
        AuditError if it is not an audit log."""
        self.path = str(db_path)
        self._clock = clock
        self._signer = None if readonly else signer
        if readonly:
            try:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
                tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.DatabaseError as e:
                raise AuditError(f"{self.path} is not an audit database ({e})") from None
            if not {"audit_log", "audit_head"} <= tables:
                self._db.close()
                raise AuditError(f"{self.path} holds no audit log (the decryption role's is ROLE_DIR/decryption.db)")
            return
        # Owner-only from the first byte (SQLite gives the -wal/-shm files the same mode): the log
        # names every release, its meters and feeders.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)

    @property
    def signer(self) -> Ed25519PrivateKey:
        if self._signer is None:
            raise AuditError("this audit log was opened without the signing key")
        return self._signer

    @property
    def verify_key(self) -> Ed25519PublicKey | None:
        return None if self._signer is None else self._signer.public_key()

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
        """Append one signed entry atomically (BEGIN IMMEDIATE: concurrent writers cannot fork the chain)."""
        if self._signer is None:
            raise AuditError("this audit log was opened without the signing key: read-only")
        if decision not in ("allow", "refuse"):
            raise AuditError(f"decision must be 'allow' or 'refuse', got {decision!r}")
        if not actor:
            raise AuditError("an audit entry needs an actor (who is decrypting)")
        query = strict_loads(canonical_json(query))  # what is stored is exactly what is hashed
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            entry = AuditEntry(seq, self._clock(), actor, action, query, decision, reason, result_hash, prev, "")
            h = entry.compute_hash()
            entry = dataclasses.replace(entry, entry_hash=h,
                                        signature=signing.sign(self._signer, ENTRY_DOMAIN, bytes.fromhex(h)))
            cur.execute(
                "INSERT INTO audit_log (seq, ts, actor, action, query, decision, reason, result_hash,"
                " prev_hash, entry_hash, signature) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (entry.seq, entry.ts, actor, action, canonical_json(query), decision, reason,
                 result_hash, prev, entry.entry_hash, entry.signature),
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
        """All entries in seq order, parsed strictly (AuditError on a non-canonical one); `verify` says
        whether to trust them."""
        return self.entries_after(0)

    def entries_after(self, seq: int) -> Iterator[AuditEntry]:
        """Entries with a seq above `seq`, in order, parsed strictly."""
        for r in self._db.execute(
            "SELECT seq, ts, actor, action, query, decision, reason, result_hash, prev_hash, entry_hash, signature"
            " FROM audit_log WHERE seq > ? ORDER BY seq", (seq,)
        ):
            if not isinstance(r[4], str):
                raise AuditError(f"audit entry seq={r[0]}: query is not text")
            yield AuditEntry(r[0], r[1], r[2], r[3], strict_loads(r[4]), r[5], r[6], r[7], r[8], r[9], r[10])

    def head(self) -> tuple[int, str]:
        """(seq, entry_hash) recorded in the head row; (0, GENESIS) for an empty log."""
        row = self._db.execute("SELECT seq, entry_hash FROM audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def verify(self, verify_key: Ed25519PublicKey | None = None,
               anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Walk the chain; report the first entry whose seq, link, hash, signature or JSON is wrong.

        `verify_key` defaults to the public half of the signing key this log was opened with.
        `anchor` (seq, hash) is a head published outside the database earlier: the chain must still
        contain that entry with that hash, which catches truncation even when the head row was rewritten.
        """
        key = verify_key or self.verify_key
        if key is None:
            raise AuditError("verifying needs the audit verify key (audit-verify.pub.json)")
        prev, expected_seq, good = GENESIS, 1, (0, GENESIS)

        def bad(seq: int | None, reason: str) -> VerifyResult:
            return VerifyResult(False, expected_seq - 1, seq, reason, good)

        it = self.entries()
        while True:
            try:
                e = next(it)
            except StopIteration:
                break
            except AuditError as err:
                return bad(expected_seq, f"{err} (entry edited)")
            if e.seq != expected_seq:
                what = "an entry is missing (removed?)" if e.seq > expected_seq else "entries out of order"
                return bad(e.seq, f"expected seq {expected_seq}, found {e.seq}: {what}")
            if e.prev_hash != prev:
                return bad(e.seq, "prev_hash does not match the previous entry (removed or reordered entry)")
            if e.compute_hash() != e.entry_hash:
                return bad(e.seq, "entry_hash does not match its content (entry edited)")
            if not e.signature_ok(key):
                return bad(e.seq, "signature does not verify with the audit verify key (entry forged or rewritten)")
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
