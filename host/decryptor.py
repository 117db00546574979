"""The decryption role: holds the Paillier secret key and decrypts only what policy allows.

Why the role computes its own sums: its public methods take the store and a query (household bill for
a calendar month, feeder load for a time range), never a bare ciphertext, so no caller can have it
decrypt one reading dressed up as a sum. Policy:

- bills: per household, per tariff band, per whole billing period (a calendar month in the tariff's
  zone); the analytics slot is masked before decryption. At most `max_bands` cells in the common
  refinement of every band partition ever decrypted for that household and period: billing the same
  month again with other bands (a "spy" tariff per hour) would otherwise reveal the daily routine by
  differences. Coarser re-queries (a flat total after a ToU bill) add nothing and pass; a re-bill
  of the same period over a shifted window (a tariff in another time zone) is refused;
- feeder loads: per feeder per interval, only with contributors >= m, where
  m = max(k_min, the largest m provisioned for a meter on that feeder, the largest m the readings
  carry); one reading per meter; one set of DP parameters; the billing slot is masked before
  decryption (packing.blind_slot: the mask is drawn and forgotten inside, so the exact billing sum
  never exists in this process);
- optional daily DP budget per feeder (UTC day of the interval start): releasing an interval spends
  its epsilon once; re-releasing the same contributor set is free (same value, post-processing), a
  different contributor set for an already released interval is refused (differencing attack).

Every decryption and every refusal appends an audit entry; result hashes are HMACs under a key
derived from the secret key (audit.py says why).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from phe import paillier

from . import packing
from .aggregate import FeederCell, HouseholdSums, billing_sums, feeder_sums
from .audit import AuditLog, result_digest
from .billing import expected_intervals as count_expected
from .keys import MeterRegistry
from .store import Store, StoredReading
from .tariff import Tariff

DEFAULT_K_MIN = 5
DEFAULT_MAX_BANDS = 6
_SLOT_S = 900  # band partitions are compared on the period's 15-minute slots (local hours align to them)

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_release (
    feeder          TEXT NOT NULL,
    interval_start  INTEGER NOT NULL,
    day             TEXT NOT NULL,
    epsilon_milli   INTEGER NOT NULL,
    members_digest  TEXT NOT NULL,
    PRIMARY KEY (feeder, interval_start)
);
CREATE TABLE IF NOT EXISTS bill_partition (
    meter_id        TEXT NOT NULL,
    period          TEXT NOT NULL,
    t_from          INTEGER NOT NULL,
    t_to            INTEGER NOT NULL,
    partition       TEXT NOT NULL,
    PRIMARY KEY (meter_id, period)
);
CREATE TABLE IF NOT EXISTS partition_cells (
    partition       TEXT PRIMARY KEY,
    labels          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_settings (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL
);
"""
# Added after the first release: which readings the last decrypted bill summed (re-bill policy).
_BILL_COLUMNS = (("members_digest", "TEXT NOT NULL DEFAULT ''"), ("readings", "INTEGER NOT NULL DEFAULT 0"),
                 ("closed", "INTEGER NOT NULL DEFAULT 0"))
# The ledger is a cache of the hash-chained audit log: rows missing from it (deleted by someone with
# write access to the file) are restored from the audit entries at every session start.
_RECONCILE_RELEASES = """
INSERT OR IGNORE INTO dp_release (feeder, interval_start, day, epsilon_milli, members_digest)
SELECT json_extract(query, '$.feeder'), json_extract(query, '$.interval_start'),
       date(json_extract(query, '$.interval_start'), 'unixepoch'), json_extract(query, '$.dp_params[0][0]'),
       json_extract(query, '$.members_digest')
FROM audit_log WHERE action = 'feeder-load' AND decision = 'allow' AND seq > ? ORDER BY seq
"""
_RECONCILE_PARTITIONS = """
INSERT OR IGNORE INTO partition_cells (partition, labels)
SELECT json_extract(query, '$.partition'), json_extract(query, '$.labels')
FROM audit_log WHERE action = 'partition' AND seq > ?
"""
_RECONCILE_BILLS = """
INSERT OR IGNORE INTO bill_partition (meter_id, period, t_from, t_to, partition, members_digest, readings, closed)
SELECT json_extract(query, '$.meter_id'), json_extract(query, '$.period'), json_extract(query, '$.t_from'),
       json_extract(query, '$.t_to'), json_extract(query, '$.partition'), json_extract(query, '$.members_digest'),
       json_extract(query, '$.readings'), COALESCE(json_extract(query, '$.closed'), 0)
FROM audit_log WHERE action = 'bill' AND decision = 'allow' AND json_extract(query, '$.partition') IS NOT NULL
AND seq > ? ORDER BY seq DESC
"""


class PolicyError(ValueError):
    """A query the decryption role will not run at all (malformed, not a whole billing period, ...)."""


@dataclass(frozen=True)
class Policy:
    k_min: int = DEFAULT_K_MIN
    feeder_m: Mapping[str, int] = field(default_factory=dict)  # provisioned m per feeder
    max_bands: int = DEFAULT_MAX_BANDS
    daily_budget_milli: int | None = None  # per feeder per UTC day; None = the one stored in the ledger
    # A household's period may be decrypted again only over the same readings (same value) or over
    # at least this many more: two bills that differ by a few readings would expose those readings
    # by difference. 96 = one day of 15-minute readings.
    rebill_min_new: int = 96

    def __post_init__(self) -> None:
        if self.k_min < 2:
            raise PolicyError(f"k_min must be at least 2, got {self.k_min}")
        if self.rebill_min_new < 1:
            raise PolicyError(f"rebill_min_new must be at least 1, got {self.rebill_min_new}")

    @classmethod
    def from_registry(cls, registry: MeterRegistry, **kwargs: Any) -> Policy:
        """Per feeder, the largest m provisioned for any of its meters."""
        feeder_m: dict[str, int] = {}
        for rec in registry:
            feeder_m[rec.feeder] = max(feeder_m.get(rec.feeder, 0), rec.m)
        return cls(feeder_m=feeder_m, **kwargs)

    def required_m(self, feeder: str, carried_m: int) -> int:
        return max(self.k_min, self.feeder_m.get(feeder, 0), carried_m)


@dataclass(frozen=True)
class FeederLoad:
    """One feeder interval as released (status 'ok') or refused (status 'refused: ...', no value)."""

    feeder: str
    interval_start: int
    interval_len: int
    readings: int
    contributors: int
    epsilon_milli: int
    clamp_wh: int
    m: int  # the m the policy required
    status: str
    analytics_sum_wh: int | None

    @property
    def allowed(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class HouseholdTotals:
    """Decrypted billing totals of one household for one period (Wh per band) and coverage."""

    meter_id: str
    period: str
    band_wh: dict[str, int]
    readings: int
    present_intervals: int
    expected_intervals: int

    @property
    def missing_intervals(self) -> int:
        return max(0, self.expected_intervals - self.present_intervals)


def _canonical(keys: list[Any]) -> tuple[int, ...]:
    """Relabel a partition of the period's slots by first appearance, so equal partitions compare equal."""
    ids: dict[Any, int] = {}
    return tuple(ids.setdefault(k, len(ids)) for k in keys)


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


class DecryptionRole:
    """Secret-key holder. One instance per actor session; every call is audited under `actor`."""

    def __init__(self, private_key: paillier.PaillierPrivateKey, audit: AuditLog, actor: str,
                 policy: Policy | None = None) -> None:
        if not actor:
            raise PolicyError("the decryption role needs an actor name (who is decrypting)")
        self._priv = private_key
        self.public_key = private_key.public_key
        self.audit = audit
        self.actor = actor
        self.policy = policy or Policy()
        self.refusals: list[tuple[str, str]] = []  # (meter_id, reason) of the last household_totals call
        self._audit_key = hashlib.sha256(
            b"meterveil/audit-result/v1" + private_key.p.to_bytes(512, "big") + private_key.q.to_bytes(512, "big")
        ).digest()
        self._ledger = sqlite3.connect(audit.path, isolation_level=None, timeout=30)
        self._ledger.executescript(_LEDGER_SCHEMA)
        have = {r[1] for r in self._ledger.execute("PRAGMA table_info(bill_partition)")}
        for name, decl in _BILL_COLUMNS:
            if name not in have:
                self._ledger.execute(f"ALTER TABLE bill_partition ADD COLUMN {name} {decl}")
        self._reconcile()
        self.daily_budget_milli = self._settle_budget(self.policy.daily_budget_milli)

    def _reconcile(self) -> None:
        """Restore ledger rows from the audit log: only entries after the last reconciled one, unless
        ledger rows went missing since (counted), then all of them (SQLite walks the JSON, not Python:
        2-3 s per million entries, only after tampering or on first use)."""
        counts = tuple(int(self._ledger.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                       for t in ("dp_release", "bill_partition", "partition_cells"))
        row = self._ledger.execute("SELECT value FROM ledger_settings WHERE key = 'reconciled'").fetchone()
        since = 0
        if row is not None:
            seq, *before = (int(x) for x in row[0].split(":"))
            if all(now >= b for now, b in zip(counts, before, strict=True)):
                since = seq
        with self._tx():
            for sql in (_RECONCILE_PARTITIONS, _RECONCILE_RELEASES, _RECONCILE_BILLS):
                self._ledger.execute(sql, (since,))
            head = int(self._ledger.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0])
            counts = tuple(int(self._ledger.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                           for t in ("dp_release", "bill_partition", "partition_cells"))
            self._ledger.execute("INSERT INTO ledger_settings VALUES ('reconciled', ?) ON CONFLICT(key) DO UPDATE "
                                 "SET value = excluded.value", (":".join(str(x) for x in (head, *counts)),))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One ledger transaction: a policy check and the ledger row it implies are atomic, so two
        sessions cannot both release different contributor sets or overspend a day's budget.
        No audit append inside (its connection would wait for this lock)."""
        self._ledger.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._ledger.execute("ROLLBACK")
            raise
        self._ledger.execute("COMMIT")

    def _settle_budget(self, given: int | None) -> int | None:
        """The daily budget lives in the ledger: a session without --daily-budget keeps the last one set."""
        row = self._ledger.execute("SELECT value FROM ledger_settings WHERE key = 'daily_budget_milli'").fetchone()
        stored = None if row is None else int(row[0])
        if given is None or given == stored:
            return stored
        self._ledger.execute("INSERT INTO ledger_settings VALUES ('daily_budget_milli', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(given),))
        self.audit.append(self.actor, "policy", {"daily_budget_milli": given, "previous": stored}, "allow",
                          "daily DP budget set")
        return given

    def close(self) -> None:
        self._ledger.close()

    # -- the only place a ciphertext is decrypted -------------------------------------------------
    def _decrypt_masked(self, ciphertext: int, hide_slot: int) -> int:
        """Mask `hide_slot` (fresh random mask, forgotten inside blind_slot), then decrypt."""
        return int(self._priv.raw_decrypt(packing.blind_slot(self.public_key, ciphertext, hide_slot)))

    def result_hash(self, result: Any) -> str:
        return result_digest(result, self._audit_key)

    # -- bills --------------------------------------------------------------------------------
    def household_totals(self, store: Store, tariff: Tariff, period: str,
                         meter_ids: Iterable[str] = (), as_of: float | None = None) -> list[HouseholdTotals]:
        """Decrypted Wh per band for every household with readings in the period (plus `meter_ids`).

        Households the partition policy refuses are audited, left out of the result and listed in
        `self.refusals` as (meter_id, reason).

        Missing intervals: once the period has ended (`as_of`, default now, at or after its end)
        every slot of the period is expected. Before that, expected slots run to the end of the
        latest interval stored by any meter in the period, so billing mid-month does not flag
        intervals nobody could have sent yet.
        """
        t_from, t_to = tariff.period_bounds(period)  # raises on a malformed period
        self.refusals = []
        if len(tariff.bands) > self.policy.max_bands:
            self._refuse_bill(tariff, period, "*", f"refused: tariff has {len(tariff.bands)} bands > "
                              f"max_bands={self.policy.max_bands}")
            raise PolicyError(f"tariff {tariff.name!r} has {len(tariff.bands)} bands; policy allows at most "
                              f"{self.policy.max_bands} (finer bands would expose the daily routine)")
        last_end = [t_from]  # end of the latest interval seen, tracked while streaming the readings

        def stream() -> Iterable[StoredReading]:
            for r in store.iter_readings(t_from=t_from, t_to=t_to):
                last_end[0] = max(last_end[0], r.interval_start + r.interval_len)
                yield r

        sums = billing_sums(stream(), self.public_key.nsquare, tariff.band_of, t_from, t_to, meter_ids)
        closed = (time.time() if as_of is None else as_of) >= t_to
        horizon = t_to if closed else min(t_to, last_end[0])
        labels = _canonical([tariff.band_of(t) for t in range(t_from, t_to, _SLOT_S)])
        refined: dict[str | None, tuple[int, ...]] = {}
        out = []
        as_of_t = time.time() if as_of is None else as_of
        for hs in sums.values():
            new_partition = None
            with self._tx():  # check and ledger row atomically; record before decrypting
                reason, digest = self._bill_check(hs, period, labels, refined, closed, t_to - as_of_t)
                if reason is None and hs.bands:
                    new_partition = self._pin_partition(hs, period, refined[digest], closed)
            if new_partition is not None:  # so the ledger can be restored from the audit log
                self.audit.append(self.actor, "partition", {"partition": new_partition[0],
                                                            "labels": json.loads(new_partition[1])},
                                  "allow", "band partition of a billing period, recorded for the ledger")
            if reason is not None:
                self._refuse_bill(tariff, period, hs.meter_id, reason)
                self.refusals.append((hs.meter_id, reason))
                continue
            out.append(self._decrypt_household(hs, tariff, period, horizon, self._pinned(hs.meter_id, period)))
        return out

    def _bill_check(self, hs: HouseholdSums, period: str, labels: tuple[int, ...],
                    refined: dict[str | None, tuple[int, ...]], closed: bool,
                    time_left: float) -> tuple[str | None, str | None]:
        """(refusal reason or None, pinned partition digest) for one household's bill.

        Re-bills: an interim bill (period still open) is refused in the period's last
        `rebill_min_new` slots, so the closing bill, always allowed once, differs from any interim
        one by at least that much time; later re-bills of a closed period need the same readings or
        `rebill_min_new` more (late data)."""
        if not closed and time_left < self.policy.rebill_min_new * _SLOT_S:
            return (f"refused: interim bill within the last {self.policy.rebill_min_new * _SLOT_S // 3600} h "
                    f"of the period (the closing bill would expose the difference); bill after it ends"), None
        if hs.straddling:
            return (f"refused: {hs.straddling} readings straddle a tariff band or period boundary (their "
                    f"interval length does not fit this tariff's bands and time zone)"), None
        prev = self._pinned(hs.meter_id, period)
        if prev is None:
            refined.setdefault(None, labels)
            return None, None
        pinned, bounds, members, n_prev, was_closed = prev
        if bounds != (hs.t_from, hs.t_to):
            return (f"refused: period already billed over [{_iso(bounds[0])}, {_iso(bounds[1])}); "
                    f"a shifted window (other time zone) would expose the difference"), pinned
        closing = closed and not was_closed  # the first bill after the period ended
        if members and members != hs.members_digest and not closing \
                and hs.readings - n_prev < self.policy.rebill_min_new:
            return (f"refused: period already billed over {n_prev} readings; a bill over {hs.readings} "
                    f"(< {self.policy.rebill_min_new} more) would expose the difference"), pinned
        if pinned not in refined:
            refined[pinned] = _canonical(list(zip(self._partition_labels(pinned), labels, strict=True)))
        cells = max(refined[pinned]) + 1
        if cells > self.policy.max_bands:
            return (f"refused: with earlier bills of this period the bands refine to {cells} cells > "
                    f"max_bands={self.policy.max_bands}"), pinned
        return None, pinned

    def _pinned(self, meter_id: str, period: str) -> tuple[str, tuple[int, int], str, int, bool] | None:
        """(partition digest, (t_from, t_to), readings digest, readings, closed) last decrypted for
        this household and period, if any."""
        row = self._ledger.execute("SELECT partition, t_from, t_to, members_digest, readings, closed "
                                   "FROM bill_partition WHERE meter_id=? AND period=?", (meter_id, period)).fetchone()
        return None if row is None else (str(row[0]), (int(row[1]), int(row[2])), str(row[3]), int(row[4]),
                                         bool(row[5]))

    def _partition_labels(self, digest: str) -> tuple[int, ...]:
        row = self._ledger.execute("SELECT labels FROM partition_cells WHERE partition=?", (digest,)).fetchone()
        if row is None:
            raise PolicyError(f"partition {digest[:16]} is referenced but not stored (ledger damaged)")
        return tuple(json.loads(row[0]))

    def _pin_partition(self, hs: HouseholdSums, period: str, labels: tuple[int, ...],
                       closed: bool) -> tuple[str, str] | None:
        """Record the bill in the ledger; returns (digest, labels text) of a partition seen first."""
        text = json.dumps(labels, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        new = self._ledger.execute("INSERT OR IGNORE INTO partition_cells VALUES (?, ?)", (digest, text)).rowcount == 1
        self._ledger.execute("INSERT INTO bill_partition (meter_id, period, t_from, t_to, partition, members_digest, "
                             "readings, closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(meter_id, period) DO "
                             "UPDATE SET partition = excluded.partition, members_digest = excluded.members_digest, "
                             "readings = excluded.readings, closed = MAX(closed, excluded.closed)",
                             (hs.meter_id, period, hs.t_from, hs.t_to, digest, hs.members_digest, hs.readings,
                              int(closed)))
        return (digest, text) if new else None

    def _refuse_bill(self, tariff: Tariff, period: str, meter_id: str, reason: str) -> None:
        self.audit.append(self.actor, "bill", {"meter_id": meter_id, "period": period, "tariff": tariff.name},
                          "refuse", reason)

    def _decrypt_household(self, hs: HouseholdSums, tariff: Tariff, period: str, horizon: int,
                           pinned: tuple[str, tuple[int, int], str, int, bool] | None) -> HouseholdTotals:
        if (hs.t_from, hs.t_to) != tariff.period_bounds(period):
            self._refuse_bill(tariff, period, hs.meter_id, "refused: sums do not span the whole billing period")
            raise PolicyError(f"{hs.meter_id}: sums do not span billing period {period}")
        band_wh = {b: packing.billing_of(self._decrypt_masked(c.ciphertext, packing.SLOT_ANALYTICS))
                   for b, c in sorted(hs.bands.items())}
        totals = HouseholdTotals(
            meter_id=hs.meter_id, period=period, band_wh=band_wh, readings=hs.readings,
            present_intervals=len(hs.intervals),
            expected_intervals=count_expected(hs.t_from, horizon, hs.interval_len),
        )
        query = {"meter_id": hs.meter_id, "period": period, "tariff": tariff.name, "timezone": tariff.timezone,
                 "t_from": hs.t_from, "t_to": hs.t_to,
                 "band_readings": {b: c.readings for b, c in sorted(hs.bands.items())},
                 "readings": hs.readings, "members_digest": hs.members_digest}
        if pinned is not None:  # what the ledger holds, so it can be restored from this entry
            query["partition"] = pinned[0]
            query["closed"] = pinned[4]
        self.audit.append(self.actor, "bill", query, "allow", "ok: household band totals for a whole period",
                          self.result_hash({"band_wh": band_wh}))
        return totals

    # -- feeder load --------------------------------------------------------------------------
    def feeder_load(self, store: Store, feeder: str, t_from: int, t_to: int) -> list[FeederLoad]:
        """Per interval in [t_from, t_to) with readings: the DP analytics sum, or a refusal."""
        if t_to <= t_from:
            raise PolicyError(f"empty time range [{_iso(t_from)}, {_iso(t_to)})")
        cells = feeder_sums(store.iter_readings(feeder=feeder, t_from=t_from, t_to=t_to), self.public_key.nsquare)
        return [self._feeder_cell(c) for c in cells]

    def _check_feeder(self, cell: FeederCell, m: int) -> str | None:
        """None if the cell may be released, else the refusal reason."""
        if len({(e, c) for e, c, _ in cell.dp_params}) > 1:
            return f"refused: mixed DP parameters {list(cell.dp_params)}"
        if cell.max_per_meter > 1:
            return f"refused: a meter contributed {cell.max_per_meter} readings to one interval"
        if cell.contributors < m:
            return f"refused: {cell.contributors} < m={m}"
        return None

    def _budget_check(self, cell: FeederCell) -> tuple[str | None, bool]:
        """(refusal reason or None, whether releasing spends budget)."""
        row = self._ledger.execute("SELECT members_digest FROM dp_release WHERE feeder=? AND interval_start=?",
                                   (cell.feeder, cell.interval_start)).fetchone()
        if row is not None:
            if row[0] != cell.members_digest:
                return ("refused: interval already released with a different contributor set "
                        "(a difference would expose single meters)"), False
            return None, False
        if self.daily_budget_milli is None:
            return None, True
        day = _iso(cell.interval_start)[:10]
        spent = self.spent_milli(cell.feeder, day)
        if spent + cell.epsilon_milli > self.daily_budget_milli:
            return (f"refused: daily DP budget {spent}+{cell.epsilon_milli} > "
                    f"{self.daily_budget_milli} milli-epsilon on {day}"), False
        return None, True

    def spent_milli(self, feeder: str, day: str) -> int:
        """Privacy spent on `feeder` on UTC `day` (YYYY-MM-DD), in milli-epsilon, by released intervals."""
        row = self._ledger.execute("SELECT COALESCE(SUM(epsilon_milli), 0) FROM dp_release WHERE feeder=? AND day=?",
                                   (feeder, day)).fetchone()
        return int(row[0])

    def _feeder_cell(self, cell: FeederCell) -> FeederLoad:
        m = self.policy.required_m(cell.feeder, cell.m)
        query = {"feeder": cell.feeder, "interval_start": cell.interval_start, "interval_len": cell.interval_len,
                 "readings": cell.readings, "contributors": cell.contributors, "dp_params": cell.dp_params,
                 "m_required": m, "members_digest": cell.members_digest}
        with self._tx():  # check and ledger row atomically; ledger before decrypting: a crash
            reason = self._check_feeder(cell, m)  # over-counts spend, never under-counts
            if reason is None:
                reason, spends = self._budget_check(cell)
                if reason is None and spends:
                    self._ledger.execute("INSERT OR IGNORE INTO dp_release VALUES (?,?,?,?,?)",
                                         (cell.feeder, cell.interval_start, _iso(cell.interval_start)[:10],
                                          cell.epsilon_milli, cell.members_digest))
        base = dict(feeder=cell.feeder, interval_start=cell.interval_start, interval_len=cell.interval_len,
                    readings=cell.readings, contributors=cell.contributors, epsilon_milli=cell.epsilon_milli,
                    clamp_wh=cell.clamp_wh, m=m)
        if reason is not None:
            self.audit.append(self.actor, "feeder-load", query, "refuse", reason)
            return FeederLoad(**base, status=reason, analytics_sum_wh=None)
        value = packing.analytics_of(self._decrypt_masked(cell.ciphertext, packing.SLOT_BILLING), cell.readings)
        self.audit.append(self.actor, "feeder-load", query, "allow", f"ok: {cell.contributors} >= m={m}",
                          self.result_hash({"analytics_sum_wh": value}))
        return FeederLoad(**base, status="ok", analytics_sum_wh=value)
