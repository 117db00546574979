"""Web accounts, sessions and login throttling: the web tier's own database (``web.db``).

Why a file of its own and not tables in the ingest store: the store is written by the gateway and
read by the decryption role; logins are neither's business, and a store administrator should not be
able to read password hashes or session tokens. ``web.db`` (0600) sits next to the store by default.

- Passwords: argon2id (argon2-cffi defaults, RFC 9106 low-memory profile); no account exists until
  ``meterveil users add`` makes one, and that command generates the password unless one is piped in.
- Sessions: a random 256-bit token in the cookie; the database keeps only its SHA-256, so a copy of
  ``web.db`` opens no session. A login always creates a new session (no fixation), logout deletes it,
  sessions expire after ``IDLE_S`` without a request and ``MAX_AGE_S`` in all.
- Throttling: ``MAX_FAILURES`` failed logins for a user name (``MAX_FAILURES_ADDR`` from one client
  address) in ``WINDOW_S`` lock that name (address) out until the window slides past them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

WEB_DB_NAME = "web.db"
ROLES = ("operator", "billing", "auditor", "analyst", "household")
NAME_RE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_FAILURES = 5  # per user name
MAX_FAILURES_ADDR = 50  # per client address (one address may front many people: a NAT, a proxy)
WINDOW_S = 15 * 60

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users(name TEXT PRIMARY KEY, role TEXT NOT NULL, meter_id TEXT,
        pw_hash TEXT NOT NULL, created_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions(token_hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name)
        ON DELETE CASCADE, csrf TEXT NOT NULL, created_at INTEGER NOT NULL, seen_at INTEGER NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS login_failures(subject TEXT NOT NULL, at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS login_failures_subject ON login_failures(subject, at)",
)


class AccountError(ValueError):
    """A user name, role or meter the accounts database cannot take (one line for the CLI)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    meter_id: str | None


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    token_hash: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """One connection to web.db (thread-safe enough for uvicorn's single event loop + threadpool)."""

    def __init__(self, path: str | os.PathLike[str], *, hasher: PasswordHasher | None = None, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        for stmt in _SCHEMA:
            self.conn.execute(stmt)
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        # Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
        self._dummy = self.hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self.conn.close()

    # -- users ------------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password: str, meter_id: str | None = None) -> User:
        if not name or len(name) > 64 or not set(name) <= NAME_RE_CHARS:
            raise AccountError(f"user name {name!r}: 1-64 characters of letters, digits and ._-@")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
        if (role == "household") != (meter_id is not None):
            raise AccountError("a household account needs --meter ID; other roles take none")
        if len(password) < 12:
            raise AccountError("password: at least 12 characters")
        try:
            self.conn.execute("INSERT INTO users(name, role, meter_id, pw_hash, created_at) VALUES (?,?,?,?,?)",
                              (name, role, meter_id, self.hasher.hash(password), int(self.clock())))
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} exists") from None
        return User(name, role, meter_id)

    def users(self) -> list[User]:
        return [User(*r) for r in self.conn.execute("SELECT name, role, meter_id FROM users ORDER BY name")]

    def user(self, name: str) -> User | None:
        r = self.conn.execute("SELECT name, role, meter_id FROM users WHERE name=?", (name,)).fetchone()
        return None if r is None else User(*r)

    # -- login ------------------------------------------------------------------------------------
    def throttled(self, *subjects: str) -> bool:
        since = int(self.clock()) - WINDOW_S
        for s in subjects:
            n = self.conn.execute("SELECT COUNT(*) FROM login_failures WHERE subject=? AND at > ?",
                                  (s, since)).fetchone()[0]
            if n >= (MAX_FAILURES_ADDR if s.startswith("addr:") else MAX_FAILURES):
                return True
        return False

    def authenticate(self, name: str, password: str, client: str) -> User | None:
        """The user if the password is right and neither the name nor the client is throttled."""
        subjects = (f"user:{name}", f"addr:{client}")
        if self.throttled(*subjects):
            return None
        row = self.conn.execute("SELECT pw_hash FROM users WHERE name=?", (name,)).fetchone()
        ok = False
        try:
            ok = self.hasher.verify(row[0] if row else self._dummy, password) and row is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok:
            now = int(self.clock())
            self.conn.executemany("INSERT INTO login_failures(subject, at) VALUES (?,?)", [(s, now) for s in subjects])
            self.conn.execute("DELETE FROM login_failures WHERE at <= ?", (now - WINDOW_S,))
            return None
        self.conn.execute("DELETE FROM login_failures WHERE subject=?", (subjects[0],))
        return self.user(name)

    # -- sessions ---------------------------------------------------------------------------------
    def new_session(self, user: User) -> str:
        """A fresh session token for `user` (the cookie value; only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        now = int(self.clock())
        self.conn.execute("INSERT INTO sessions(token_hash, user, csrf, created_at, seen_at) VALUES (?,?,?,?,?)",
                          (_digest(token), user.name, secrets.token_urlsafe(32), now, now))
        self.conn.execute("DELETE FROM sessions WHERE seen_at < ? OR created_at < ?", (now - IDLE_S, now - MAX_AGE_S))
        return token

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        now = int(self.clock())
        r = self.conn.execute(
            "SELECT s.token_hash, s.csrf, s.created_at, s.seen_at, u.name, u.role, u.meter_id FROM sessions s "
            "JOIN users u ON u.name = s.user WHERE s.token_hash=?", (_digest(token),)).fetchone()
        if r is None:
            return None
        if r[3] < now - IDLE_S or r[2] < now - MAX_AGE_S:
            self.conn.execute("DELETE FROM sessions WHERE token_hash=?", (r[0],))
            return None
        if now - r[3] >= 60:  # one write a minute per session is enough for the idle timeout
            self.conn.execute("UPDATE sessions SET seen_at=? WHERE token_hash=?", (now, r[0]))
        return Session(User(r[4], r[5], r[6]), r[1], r[0])

    def end_session(self, token_hash: str) -> None:
        self.conn.execute("DELETE FROM sessions WHERE token_hash=?", (token_hash,))


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


def generate_password() -> str:
    """20 characters from a 56-symbol alphabet without look-alikes (~116 bits)."""
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))
