"""The ciphertext store: records, the `Store` interface, and `open_store`.

Why an interface: ingest and the back office talk only to `Store`, so the backend is a deployment
choice: SQLite (sqlite.py) for one gateway process, PostgreSQL (postgres.py) for several gateway
workers on one database. `open_store` picks by the name: a ``postgresql://`` URL or a file path.

Nothing here is readable consumption: a reading row holds the meter id, frame counter, feeder,
interval, DP parameters, privacy-neutral flags and the Paillier ciphertext of the packed plaintext
(see packing.py) as an int (stored as big-endian BLOB); E2E rows also keep the household's sealed copy
(``household``, 48 bytes no role but the household can open).

Interface (stable; back office = aggregation, billing, decryption role):
- ``open_store(path_or_url, create=True) -> SqliteStore | PostgresStore``; ``store.close()``. ``create=False`` (every command that only reads a store) raises
  ``StoreError`` for a missing path (or unreachable database), a file that is not an SQLite database or one
  without the store schema, instead of creating an empty store; only the gateway (and the demo) create stores.
  ``StoreVersionError`` for a store written by a newer schema.
- ``write_batch(batch) -> list[bool]``: one transaction: inserts readings idempotently keyed by
  (meter_id, counter) (True = inserted, False = already there), upserts latest statuses, adds
  ``batch.counts`` / ``batch.meter_counts`` to the counters, and counts ``accepted`` / ``duplicate``
  for the readings itself. Returns only after the commit is durable (ingest acks after this).
  The database is the arbiter between writers: a reading whose (meter_id, counter) is taken or whose
  interval overlaps a stored one of its meter is not inserted (False) and counted ``duplicate`` (same
  frame digest), ``counter_reuse`` (other digest) or ``interval_overlap``.
- ``lookup(meter_id, counter) -> (frame_digest, received_at) | None``; ``max_counter(meter_id)``;
  ``max_interval_end(meter_id)``; ``single_writer`` (class attribute, optional: True when one ingest
  process is the only writer, which lets it cache per-meter high-water marks);
  ``overlapping(meter_id, start, end) -> counter | None`` (a stored reading whose interval overlaps);
  ``lookup_many(keys)`` / ``overlapping_many(spans)``: the same for many at once, one query each on
  PostgreSQL (ingest asks them for a whole batch of messages), only hits in the result.
- ``counters() -> dict[reason, n]``; ``meter_counters() -> {meter_id: {reason: n}}``.
- quarantine: ``write_batch`` also keeps ``batch.quarantine`` frames (sealed, as received) as far as
  the store's ``QuarantinePolicy`` admits them (store/quarantine.py: reserved room per registered
  meter for verified frames, per-id caps and a fair share for unverified ones; each frame refused or
  evicted counted ``quarantine_full`` / ``quarantine_evicted`` against the id that caused it),
  deletes ``batch.released`` digests and stamps ``batch.retried`` (digest, reason, retry_at) ones;
  ``quarantined(limit, meter_ids=None, due_by=None)`` least recently tried first, only those ids and
  only frames whose ``retry_at`` is unset or <= ``due_by`` when given; ``quarantine_meter_ids()``;
  ``quarantine_expiring(before, limit)`` (received before ``before``); ``quarantine_counts() -> {reason: n}``.
- ``latest_status(meter_id) -> StatusRecord | None``; ``statuses() -> list[StatusRecord]``. The latest
  status is the one sealed last: ordered by (``sealed_at``, counter), ``sealed_at`` 0 for a meter
  whose clock was not set.
- ``iter_readings(feeder=None, meter_id=None, t_from=None, t_to=None)`` (interval_start in [t_from, t_to),
  ordered by interval_start, meter_id, counter; ``order="meter"``: by meter_id, interval_start),
  streamed: memory does not grow with the rows; ``readings_for_feeder(feeder, t_from, t_to)``,
  ``readings_for_meter(meter_id, t_from, t_to)`` (lists).
- ``household_copies(meter_id, t_from, t_to, limit=None) -> list[HouseholdCopy]``: the meter's E2E rows
  with interval_start in [t_from, t_to), oldest first, only the sealed copy and what its tag binds (no
  Paillier ciphertext); ``household_span(meter_id) -> (first, last interval_start) | None`` of those rows.
  Proxy-mode rows have no copy and are in neither.
- ``interval_bounds() -> (min interval_start, max interval_start) | None``;
- ``meters() -> list[MeterInfo]``; ``feeders() -> list[str]``; ``count_readings() -> int``.
- ``coverage(t_from, t_to, interval_len=900, meter_ids=None) -> list[Coverage]``: expected vs present
  intervals per meter (present = distinct interval_start values in range).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SCHEME_PACKED_V1 = "paillier-packed-v1"  # proxy mode: the gateway encrypted the packed plaintext
# End-to-end mode: the meter encrypted the same packed plaintext (DJN short exponent, protocol/paillier.py)
# and the row also keeps the household's sealed copy, opaque to every role but the household.
SCHEME_PACKED_E2E_V1 = "paillier-packed-e2e-v1"
SUMMABLE_SCHEMES = (SCHEME_PACKED_V1, SCHEME_PACKED_E2E_V1)  # same plaintext layout, same key: one sum


# iter_readings orders: "time" for feeder sums and exports; "meter" for billing, which then holds one
# household's running sums at a time (aggregate.iter_billing_sums). Both are served by an index
# ((meter_id, interval_start) for "meter"), and meter ids compare bytewise on both backends (SQLite's
# BINARY collation, COLLATE "C" in PostgreSQL), i.e. in Python's str order.
ORDER_BY = {"time": " ORDER BY interval_start, meter_id, counter", "meter": " ORDER BY meter_id, interval_start"}


class StoreError(ValueError):
    """The store path is missing, not an SQLite database or not a meterveil store (a one-line message)."""


class StoreVersionError(RuntimeError):
    """The database was written by a newer schema than this code knows."""


def int_to_blob(x: int) -> bytes:
    """A ciphertext as big-endian bytes (BLOB in SQLite, bytea in PostgreSQL)."""
    return int(x).to_bytes((int(x).bit_length() + 7) // 8 or 1, "big")


@dataclass(frozen=True)
class StoredReading:
    """One accepted reading as stored: metadata in clear, consumption only inside ``ciphertext``."""

    meter_id: str
    counter: int
    feeder: str
    interval_start: int
    interval_len: int
    epsilon_milli: int
    clamp_wh: int
    m: int
    ciphertext: int = field(repr=False)
    flags: int = 0
    scheme: str = SCHEME_PACKED_V1
    frame_digest: bytes = field(default=b"", repr=False)
    received_at: int = 0
    household: bytes = field(default=b"", repr=False)  # E2E: iv + AES-CBC + tag under the household key


@dataclass(frozen=True)
class HouseholdCopy:
    """An E2E reading's sealed household copy and the row fields its tag binds (protocol/e2e.py
    ``household_aad``): all a household's own client needs to verify and open it."""

    meter_id: str
    counter: int
    interval_start: int
    interval_len: int
    sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class StatusRecord:
    """Latest health report of a meter (no consumption data; see docs/ENCRYPTION.md on what it reveals)."""

    meter_id: str
    counter: int
    received_at: int
    status: dict[str, Any]
    sealed_at: int = 0  # when the meter sealed it (its clock); 0 = clock not set


@dataclass(frozen=True)
class QuarantinedFrame:
    """A frame rejected for a reason that can pass later (unknown meter, gateway clock behind, DP
    parameters being re-provisioned), kept exactly as received (sealed) so it is not lost."""

    digest: bytes
    meter_id: str
    topic: str
    payload: bytes = field(repr=False)
    reason: str
    received_at: int
    retry_at: int | None = None  # no retry can pass before this time (None: only a registry change helps)


@dataclass
class Batch:
    """Everything one ingest commit writes: readings, statuses, counter increments, quarantine."""

    readings: list[StoredReading] = field(default_factory=list)
    statuses: list[StatusRecord] = field(default_factory=list)
    quarantine: list[QuarantinedFrame] = field(default_factory=list)
    released: list[bytes] = field(default_factory=list)  # digests of quarantined frames now settled
    retried: list[tuple[bytes, str, int | None]] = field(default_factory=list)  # (digest, reason, retry_at) still held
    counts: Counter[str] = field(default_factory=Counter)
    meter_counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, reason: str, meter_id: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if meter_id is not None:
            self.meter_counts[(meter_id, reason)] += n

    def __len__(self) -> int:
        return (len(self.readings) + len(self.statuses) + sum(self.counts.values()) + len(self.quarantine)
                + len(self.retried)
                + len(self.released))


@dataclass(frozen=True)
class MeterInfo:
    meter_id: str
    feeder: str
    readings: int
    first_interval: int
    last_interval: int
    max_counter: int


@dataclass(frozen=True)
class Coverage:
    meter_id: str
    feeder: str
    expected: int
    present: int

    @property
    def missing(self) -> int:
        return max(0, self.expected - self.present)


def coverage_of(rows: Sequence[tuple[str, str, int]], t_from: int, t_to: int, interval_len: int,
                meter_ids: Sequence[str] | None) -> list[Coverage]:
    """Coverage from (meter_id, feeder, distinct intervals present in [t_from, t_to)) rows: the one
    place both backends count the expected slots (aligned starts in the range)."""
    if interval_len <= 0 or t_to < t_from:
        raise ValueError("need interval_len > 0 and t_from <= t_to")
    first = -(-t_from // interval_len) * interval_len
    expected = max(0, -(-(t_to - first) // interval_len))
    found = {r[0]: Coverage(r[0], r[1], expected, int(r[2])) for r in rows}
    ids = list(meter_ids) if meter_ids is not None else sorted(found)
    return [found.get(m, Coverage(m, "", expected, 0)) for m in ids]


class Store(Protocol):
    """What ingest and the back office need from a store (SQLite or PostgreSQL)."""

    def write_batch(self, batch: Batch) -> list[bool]: ...
    def lookup(self, meter_id: str, counter: int) -> tuple[bytes, int] | None: ...
    def max_counter(self, meter_id: str) -> int | None: ...
    def max_interval_end(self, meter_id: str) -> int | None: ...
    def overlapping(self, meter_id: str, start: int, end: int) -> int | None: ...
    def lookup_many(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[bytes, int]]: ...
    def overlapping_many(self, spans: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], int]: ...
    def counters(self) -> dict[str, int]: ...
    def quarantined(self, limit: int = 1000, *, meter_ids: Sequence[str] | None = None,
                    due_by: int | None = None) -> list[QuarantinedFrame]: ...
    def quarantine_meter_ids(self) -> list[str]: ...
    def quarantine_expiring(self, before: int, limit: int = 1000) -> list[QuarantinedFrame]: ...
    def quarantine_counts(self) -> dict[str, int]: ...
    def meter_counters(self) -> dict[str, dict[str, int]]: ...
    def latest_status(self, meter_id: str) -> StatusRecord | None: ...
    def statuses(self) -> list[StatusRecord]: ...
    def iter_readings(self, *, feeder: str | None = None, meter_id: str | None = None,
                      t_from: int | None = None, t_to: int | None = None,
                      order: str = "time") -> Iterator[StoredReading]: ...
    def readings_for_feeder(self, feeder: str, t_from: int, t_to: int) -> list[StoredReading]: ...
    def readings_for_meter(self, meter_id: str, t_from: int, t_to: int) -> list[StoredReading]: ...
    def household_copies(self, meter_id: str, t_from: int, t_to: int,
                         limit: int | None = None) -> list[HouseholdCopy]: ...
    def household_span(self, meter_id: str) -> tuple[int, int] | None: ...
    def interval_bounds(self) -> tuple[int, int] | None: ...
    def meters(self) -> list[MeterInfo]: ...
    def feeders(self) -> list[str]: ...
    def count_readings(self) -> int: ...
    def coverage(self, t_from: int, t_to: int, interval_len: int = 900,
                 meter_ids: Sequence[str] | None = None) -> list[Coverage]: ...
    def close(self) -> None: ...


def open_store(path: str | os.PathLike[str], *, create: bool = True, **kwargs: Any):
    """Open (and migrate) the store at ``path``: a ``postgresql://`` URL or an SQLite file path.

    ``create=True`` (gateway, demo) creates the file and its folder (or the schema) if missing.
    ``create=False`` (commands that only read a store) raises ``StoreError`` unless ``path`` is an
    existing meterveil store, so a mistyped path is an error instead of a new empty store.
    """
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        from meterveil.host.store.postgres import PostgresStore

        return PostgresStore(path, create=create, **kwargs)
    from meterveil.host.store.sqlite import SqliteStore

    return SqliteStore(path, create=create, **kwargs)
