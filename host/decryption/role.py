"""The decryption role: holds the Paillier secret key and decrypts only what policy allows.

Why the role computes its own sums: its public methods take the store and a query (household bill for
a calendar month, feeder load for a time range), never a bare ciphertext, so no caller can have it
decrypt one reading dressed up as a sum. Policy (policy.py):

- bills: per household, per tariff band, over [period start, end): the whole calendar month in the
  tariff's zone once it has ended, before that only up to a fixed cut date (policy.cut_days, >= 7
  days apart); every band on >= 7 local days of every segment between possible bill ends; none or
  >= min_band_readings readings per band in the bill and in its difference with each neighbouring
  billed window; a billed window again only over the same readings. The analytics slot is masked
  before decryption. At most `max_bands` cells in the common refinement of every band partition
  decrypted for that household and period (a "spy" tariff per hour), no shifted windows;
- feeder loads: per feeder per release cell (an hour by default: one decryption of the hour's
  intervals; 15 minutes as an option), only with contributors >= m (max of k_min and the provisioned
  and carried m) and >= k_min households beyond the gamma assumed colluding; one meter per household
  and one reading per meter per interval; one set of DP parameters; the billing slot is masked before
  decryption (packing.blind_slot). Membership comes from the registry, frozen per month the first
  time the feeder is released in it (an audit entry), never from a column the ingest side writes;
- household-day budget (default epsilon 1 at delta 1e-6): before each cell the household-day epsilon
  of the feeder-day with it (PLD accounting, host/backoffice/dp.py, honest shares only) must stay
  within the budget; re-releasing the same contributor set is free, a different set or a cell
  overlapping a released one of another length is refused (differencing).

Every decryption and every refusal appends a signed audit entry; the ledger those checks read is
folded from the verified audit log (ledger.py), under an exclusive lock per decision, so two
sessions cannot both pass a check. The role holds no meter key and never opens one.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from phe import paillier

from meterveil.host.audit import anchors
from meterveil.host.audit.chain import AuditError, AuditLog, canonical_json, result_digest, strict_loads
from meterveil.host.audit.ledger import BilledWindow, Ledger, utc_month
from meterveil.host.backoffice import dp
from meterveil.host.backoffice.aggregate import FeederCell, HouseholdSums, feeder_sums, iter_billing_sums
from meterveil.host.backoffice.billing import expected_intervals as count_expected
from meterveil.host.backoffice.tariff import Tariff
from meterveil.host.common import packing
from meterveil.host.common.files import open_private_append
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.decryption import plausible
from meterveil.host.decryption.policy import DEFAULT_DAILY_BUDGET_MILLI, MIN_SEGMENT_DAYS, Policy, PolicyError
from meterveil.host.store.base import Store, StoredReading

_SLOT_S = 900  # band partitions are compared on the period's 15-minute slots (local hours align to them)

__all__ = ["DecryptionRole", "FeederLoad", "HouseholdTotals", "Policy", "PolicyError"]


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
    """Secret-key holder. One instance per actor session; every call is audited under `actor`.

    `audit` must be opened with the signing key. `anchor_path` (default: next to the audit database)
    receives the signed head when the session closes; at open, the chain must verify and reach the
    newest anchor, or the role refuses to decrypt anything. `registry` (meter metadata, no keys) gives
    feeder membership and the household list; without it feeder loads are refused.
    """

    def __init__(self, private_key: paillier.PaillierPrivateKey, audit: AuditLog, actor: str,
                 policy: Policy | None = None, registry: MeterRegistry | None = None,
                 anchor_path: str | os.PathLike[str] | None = None) -> None:
        if not actor:
            raise PolicyError("the decryption role needs an actor name (who is decrypting)")
        if audit.verify_key is None:
            raise PolicyError("the decryption role needs the audit log opened with its signing key")
        self._priv = private_key
        self.public_key = private_key.public_key
        self.audit = audit
        self.actor = actor
        self.policy = policy or Policy()
        self.registry = registry
        self.refusals: list[tuple[str, str]] = []  # (meter_id, reason) of the last household_totals call
        self._audit_key = hashlib.sha256(
            b"meterveil/audit-result/v1" + private_key.p.to_bytes(512, "big") + private_key.q.to_bytes(512, "big")
        ).digest()
        self.anchor_path = Path(anchor_path) if anchor_path is not None else \
            Path(audit.path).with_name(anchors.ANCHORS_NAME)
        self._lock_fd = os.open(f"{audit.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.ledger = Ledger()
        self._last_hash = ""
        with self._tx():
            self._verify_at_open()
            self.daily_budget_milli = self._settle_budget(self.policy.daily_budget_milli)

    def _verify_at_open(self) -> None:
        """Fail closed: a chain that does not verify, or misses the newest anchor, stops the role."""
        head = self.audit.head()
        anchor = None
        if self.anchor_path.exists():
            try:
                newest = anchors.latest(self.anchor_path, self.audit.verify_key)
            except anchors.AnchorError as e:
                raise PolicyError(f"refusing to decrypt: {e}") from None
            anchor = None if newest is None else (newest.seq, newest.hash)
        elif head[0] > 0:
            raise PolicyError(f"refusing to decrypt: the audit log has {head[0]} entries but the anchor file "
                              f"{self.anchor_path} is missing (truncation could not be detected)")
        else:  # a new role: the anchor log starts now, so a later session can tell "new" from "emptied"
            open_private_append(self.anchor_path).close()
        result = self.audit.verify(anchor=anchor)
        if not result.ok:
            raise PolicyError(f"refusing to decrypt: {result.describe()}")
        self._refresh()

    def _refresh(self) -> None:
        """Fold audit entries appended since the last refresh (by this or another session) into the
        ledger, checking each one's link, hash and signature on the way."""
        key = self.audit.verify_key
        try:
            for e in self.audit.entries_after(self.ledger.seq):
                if e.seq != self.ledger.seq + 1 or (self._last_hash and e.prev_hash != self._last_hash) \
                        or e.compute_hash() != e.entry_hash or not e.signature_ok(key):
                    raise PolicyError(f"refusing to decrypt: audit entry seq={e.seq} does not continue the "
                                      f"verified chain (run `meterveil audit verify`)")
                self.ledger.apply(e)
                self._last_hash = e.entry_hash
        except AuditError as e:
            raise PolicyError(f"refusing to decrypt: {e}") from None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One decision: exclusive lock, ledger brought up to date, check, audit entry. Two sessions
        cannot both pass a check that only one of them may pass."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _settle_budget(self, given: int | None) -> int:
        """The daily budget lives in the ledger: a session without --daily-budget keeps the last one set
        (the policy default, epsilon 1 per household-day, if none ever was)."""
        stored = self.ledger.daily_budget_milli
        if given is None:
            return DEFAULT_DAILY_BUDGET_MILLI if stored is None else stored
        if given == stored:
            return stored
        self.record("policy", {"daily_budget_milli": given, "previous": stored}, "allow", "daily DP budget set")
        return given

    @contextmanager
    def decision(self) -> Iterator[Ledger]:
        """One decision made outside this class (an export): the lock held, the ledger up to date."""
        with self._tx():
            yield self.ledger

    def record(self, action: str, query: dict[str, Any], decision: str, reason: str, result_hash: str = ""):
        entry = self.audit.append(self.actor, action, query, decision, reason, result_hash)
        self._refresh()
        return entry

    def close(self) -> None:
        """Write the signed head to the anchor log and release the lock file."""
        if self._lock_fd < 0:
            return
        try:
            with self._tx():
                seq, h = self.audit.head()
                if seq > 0:
                    anchors.append(self.anchor_path, seq, h, self.audit.signer)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the only place a ciphertext is decrypted -------------------------------------------------
    def _attributes(self, meter_id: str) -> dict[str, Any]:
        rec = self.registry.get(meter_id) if self.registry is not None else None
        return dict(rec.attributes) if rec is not None else {}

    def _decrypt_masked(self, ciphertext: int, hide_slot: int) -> int:
        """Mask `hide_slot` (fresh random mask, forgotten inside blind_slot), then decrypt."""
        return int(self._priv.raw_decrypt(packing.blind_slot(self.public_key, ciphertext, hide_slot)))

    def result_hash(self, result: Any) -> str:
        return result_digest(result, self._audit_key)

    def seal_private(self, obj: Any) -> str:
        """Canonical JSON of `obj` under AES-GCM with a key derived from the secret key (fresh nonce):
        what the role keeps in its signed log for itself only (the export ledger's released rows).
        Auditors and the web tier read the log without any key: they see an opaque string."""
        nonce = os.urandom(12)
        ct = AESGCM(self._private_key_bytes()).encrypt(nonce, canonical_json(obj).encode(), b"meterveil/private/v1")
        return base64.b64encode(nonce + ct).decode()

    def open_private(self, text: str) -> Any:
        raw = base64.b64decode(text)
        pt = AESGCM(self._private_key_bytes()).decrypt(raw[:12], raw[12:], b"meterveil/private/v1")
        return strict_loads(pt.decode())

    def _private_key_bytes(self) -> bytes:
        return hashlib.sha256(b"meterveil/role-private/v1" + self._audit_key).digest()

    # -- bills --------------------------------------------------------------------------------
    def household_totals(self, store: Store, tariff: Tariff, period: str,
                         meter_ids: Iterable[str] = (), as_of: float | None = None) -> list[HouseholdTotals]:
        """Decrypted Wh per band for every household with readings in the bill window (plus `meter_ids`).

        The window: the whole period once it has ended (`as_of`, default now, at or after its end);
        before that, an interim bill over [period start, latest cut date), cut dates being the
        policy's fixed local days of the month (>= 7 days apart). Households the policy refuses are
        audited, left out of the result and listed in `self.refusals` as (meter_id, reason).

        Missing intervals: every slot of the window is expected once the window has ended.
        """
        t_from, t_to = tariff.period_bounds(period)  # raises on a malformed period
        self.refusals = []
        if len(tariff.bands) > self.policy.max_bands:
            self._refuse_bill(tariff, period, "*", f"refused: tariff has {len(tariff.bands)} bands > "
                              f"max_bands={self.policy.max_bands}")
            raise PolicyError(f"tariff {tariff.name!r} has {len(tariff.bands)} bands; policy allows at most "
                              f"{self.policy.max_bands} (finer bands would expose the daily routine)")
        as_of_t = time.time() if as_of is None else as_of
        closed = as_of_t >= t_to
        cuts = self._cuts(tariff, period)
        passed = [c for c in cuts if c <= as_of_t]
        w_end = t_to if closed else (passed[-1] if passed else t_from)
        window_reason = None if w_end > t_from else (
            "refused: no interim bill before the first cut date (interim bills cover whole weeks up to "
            "fixed cut dates); bill after it")
        w_to = max(w_end, t_from + 1)
        # one household at a time, decrypted as soon as its readings have streamed by: memory grows
        # with the households billed, not with their readings
        sums = iter_billing_sums(store.iter_readings(t_from=t_from, t_to=w_to, order="meter"), self.public_key.nsquare,
                                 tariff.band_of, t_from, w_to, meter_ids)
        labels = _canonical([tariff.band_of(t) for t in range(t_from, t_to, _SLOT_S)])
        tariff_reasons = {False: self._tariff_check(tariff, [t_from, t_to]),
                          True: self._tariff_check(tariff, [t_from, *cuts, t_to])}
        refined: dict[str | None, tuple[int, ...]] = {}
        out = []
        households = 0
        for hs in sums:
            households += 1
            with self._tx():  # check, decrypt and the audit entry that pins the bill: one decision
                windows = self.ledger.windows.get((hs.meter_id, period), {})
                interim = w_end < t_to or any(end < t_to for end in windows)
                reason = window_reason or tariff_reasons[interim]
                digest = None
                if reason is None:
                    reason, digest = self._bill_check(hs, period, labels, refined, windows)
                if reason is None:
                    reason = _window_gap_reason(w_end, windows)
                if reason is None and any(end not in (t_to, *cuts) for end in windows):  # cut days changed:
                    # check the segments between the windows that exist (and this one)
                    reason = self._tariff_check(tariff, sorted({t_from, *windows, w_end, t_to}))
                if reason is not None:
                    self._refuse_bill(tariff, period, hs.meter_id, reason)
                    self.refusals.append((hs.meter_id, reason))
                    continue
                partition = self._record_partition(refined[digest]) if hs.bands else None
                totals = self._decrypt_household(hs, tariff, period, w_end, partition, closed, t_to)
                if isinstance(totals, str):
                    self.refusals.append((hs.meter_id, totals))
                    continue
                out.append(totals)
        _wrong_key_if_all_overflow([r for _, r in self.refusals], households)
        return out

    def _cuts(self, tariff: Tariff, period: str) -> list[int]:
        """Interim cut dates of the period: local midnights of the policy's cut days."""
        year, month = (int(x) for x in period.split("-"))
        return [int(datetime(year, month, d, tzinfo=tariff.tz).timestamp()) for d in sorted(self.policy.cut_days)]

    def _tariff_check(self, tariff: Tariff, bounds: list[int]) -> str | None:
        """Refusal reason if a band isolates less than MIN_SEGMENT_DAYS local days in a segment between
        two possible bill windows (a 1-hour band on one weekday, a weekend band between weekly cuts):
        the difference of two bills would give that short window's energy exactly."""
        for a, b in zip(bounds, bounds[1:], strict=False):
            days: dict[str, set[object]] = {}
            for t in range(a, b, _SLOT_S):
                days.setdefault(tariff.band_of(t), set()).add(datetime.fromtimestamp(t, tariff.tz).date())
            for band, d in sorted(days.items()):
                if len(d) < MIN_SEGMENT_DAYS:
                    return (f"refused: tariff band {band!r} falls on {len(d)} local days between "
                            f"{_iso(a)[:10]} and {_iso(b)[:10]} (< {MIN_SEGMENT_DAYS}): two bills would "
                            f"expose that short window")
        return None

    def _bill_check(self, hs: HouseholdSums, period: str, labels: tuple[int, ...],
                    refined: dict[str | None, tuple[int, ...]],
                    windows: dict[int, BilledWindow]) -> tuple[str | None, str | None]:
        """(refusal reason or None, pinned partition digest) for one household's bill window.

        A window billed before may be billed again only over the same readings (same value). Any
        other window differs from its neighbours by at least a week (cut dates); on top, in every
        band the bill and its difference with each neighbouring window must hold none or at least
        `min_band_readings` readings, so no difference is a handful of readings."""
        if hs.straddling:
            return (f"refused: {hs.straddling} readings straddle a tariff band or period boundary (their "
                    f"interval length does not fit this tariff's bands and time zone)"), None
        prev = self._pinned(hs.meter_id, period)
        pinned = None if prev is None else prev[0]
        if prev is not None and prev[1][0] != hs.t_from:
            return (f"refused: period already billed from {_iso(prev[1][0])}; a shifted window (other time "
                    f"zone) would expose the difference"), pinned
        counts = {b: c.readings for b, c in hs.bands.items()}
        same = windows.get(hs.t_to)
        if same is not None and same.members_digest != hs.members_digest:
            return ("refused: this window was billed over other readings; a re-bill would expose the "
                    "late or changed readings by difference"), pinned
        if same is None:
            lower = [e for e in windows if e < hs.t_to]
            upper = [e for e in windows if e > hs.t_to]
            others = [("the bill", {})]
            if lower:
                others.append((f"the bill to {_iso(max(lower))[:10]}", windows[max(lower)].band_readings))
            if upper:
                others.append((f"the bill to {_iso(min(upper))[:10]}", windows[min(upper)].band_readings))
            for what, base in others:
                for band in sorted(set(counts) | set(base)):
                    d = abs(counts.get(band, 0) - base.get(band, 0))
                    if 0 < d < self.policy.min_band_readings:
                        return (f"refused: band {band!r} differs from {what} by {d} readings "
                                f"(< {self.policy.min_band_readings}); that difference would be exact"
                                if base else
                                f"refused: band {band!r} holds {d} readings (< {self.policy.min_band_readings}); "
                                f"too few to bill without exposing them"), pinned
        if prev is None:
            refined.setdefault(None, labels)
            return None, None
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
        b = self.ledger.bills.get((meter_id, period))
        return None if b is None else (b.partition, b.bounds, b.members_digest, b.readings, b.closed)

    def _partition_labels(self, digest: str) -> tuple[int, ...]:
        labels = self.ledger.partitions.get(digest)
        if labels is None:
            raise PolicyError(f"partition {digest[:16]} is referenced but not in the audit log (ledger damaged)")
        return labels

    def _record_partition(self, labels: tuple[int, ...]) -> str:
        """Digest of a band partition; a partition seen for the first time gets its own audit entry,
        so the ledger can compare later bills with it."""
        text = json.dumps(labels, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest not in self.ledger.partitions:
            self.record("partition", {"partition": digest, "labels": list(labels)}, "allow",
                         "band partition of a billing period, recorded for the ledger")
        return digest

    def _refuse_bill(self, tariff: Tariff, period: str, meter_id: str, reason: str) -> None:
        self.record("bill", {"meter_id": meter_id, "period": period, "tariff": tariff.name},
                          "refuse", reason)

    def _decrypt_household(self, hs: HouseholdSums, tariff: Tariff, period: str, w_end: int,
                           partition: str | None, closed: bool, period_end: int) -> HouseholdTotals | str:
        if hs.t_from != tariff.period_bounds(period)[0] or hs.t_to != w_end:
            self._refuse_bill(tariff, period, hs.meter_id, "refused: sums do not span the bill window")
            raise PolicyError(f"{hs.meter_id}: sums do not span the bill window of {period}")
        impossible = None
        try:
            band_wh = {b: packing.billing_of(self._decrypt_masked(c.ciphertext, packing.SLOT_ANALYTICS))
                       for b, c in sorted(hs.bands.items())}
        except packing.PackingError:
            band_wh, impossible = {}, _OVERFLOW
        if impossible is None:
            impossible = plausible.bill_problem(sum(band_wh.values()), hs.t_to - hs.t_from,
                                                self._attributes(hs.meter_id))
        if impossible is not None:
            # E2E meters encrypt their own values: the gateway could not range-check them, so a
            # compromised or faulty meter is caught here, refused and audited, never billed.
            reason = f"refused: physically impossible bill ({impossible})"
            self._refuse_bill(tariff, period, hs.meter_id, reason)
            return reason
        totals = HouseholdTotals(
            meter_id=hs.meter_id, period=period, band_wh=band_wh, readings=hs.readings,
            present_intervals=hs.present_intervals,
            expected_intervals=count_expected(hs.t_from, w_end, hs.interval_len),
        )
        query = {"meter_id": hs.meter_id, "period": period, "tariff": tariff.name, "timezone": tariff.timezone,
                 "t_from": hs.t_from, "t_to": hs.t_to, "period_to": period_end,
                 "band_readings": {b: c.readings for b, c in sorted(hs.bands.items())},
                 "readings": hs.readings, "members_digest": hs.members_digest}
        if partition is not None:  # what the ledger folds from this entry
            query["partition"] = partition
            query["closed"] = closed
        self.record("bill", query, "allow", "ok: household band totals for a bill window",
                          self.result_hash({"band_wh": band_wh}))
        return totals

    # -- feeder load --------------------------------------------------------------------------
    def feeder_load(self, store: Store, feeder: str, t_from: int, t_to: int,
                    release_s: int | None = None) -> list[FeederLoad]:
        """Per release cell (policy.release_s, default an hour) in [t_from, t_to) with readings of the
        feeder's frozen members: the DP analytics sum (one decryption per cell), or a refusal."""
        if t_to <= t_from:
            raise PolicyError(f"empty time range [{_iso(t_from)}, {_iso(t_to)})")
        if self.registry is None:
            raise PolicyError("feeder loads need the meter registry (--registry): feeder membership comes "
                              "from it, never from the store")
        cell_s = release_s or self.policy.release_s
        # Whole cells only: a range that cuts a cell is widened to its end, since a cell released with
        # part of its readings would pin that contributor set and refuse the full cell ever after.
        t_to = -(-t_to // cell_s) * cell_s
        members = {m: set(self.members(feeder, m)) for m in _months(t_from, t_to)}

        def relabelled() -> Iterator[StoredReading]:
            for r in store.iter_readings(t_from=t_from - t_from % cell_s, t_to=t_to):
                if r.meter_id in members[utc_month(r.interval_start)]:
                    yield r if r.feeder == feeder else replace(r, feeder=feeder)

        cells = [c for c in feeder_sums(relabelled(), self.public_key.nsquare, cell_s)
                 if c.interval_start >= t_from - t_from % cell_s]
        now = time.time()
        loads = [self._feeder_cell(c, len(members[utc_month(c.interval_start)]))
                 if c.interval_start + c.interval_len <= now else self._incomplete_cell(c)
                 for c in cells]
        _wrong_key_if_all_overflow([x.status for x in loads], len(loads))
        return loads

    def members(self, feeder: str, month: str) -> tuple[str, ...]:
        """The meters whose readings make `feeder`'s sums in `month` (UTC, YYYY-MM): frozen from the
        registry the first time they are asked for, so a feeder cannot be re-drawn or padded with
        dummies mid-period; one meter per household (the registry's `household`), so a household
        with two meters counts once and contributes one clamp per interval."""
        with self._tx():
            frozen = self.ledger.membership.get((feeder, month))
            if frozen is not None:
                return frozen
            assert self.registry is not None
            self.registry.reload_if_changed()
            taken = [mid for mid in self.registry.feeders().get(feeder, [])
                     if self.ledger.feeder_of(mid, month) not in (None, feeder)]
            households: dict[str, str] = {}
            extra = []
            for mid in self.registry.feeders().get(feeder, []):
                if mid in taken:
                    continue
                rec = self.registry.get(mid)
                hh = rec.household_id if rec is not None else mid
                if hh in households:
                    extra.append(mid)
                else:
                    households[hh] = mid
            meters = tuple(sorted(households.values()))
            note = f"; {len(taken)} meters already frozen into another feeder left out" if taken else ""
            if extra:
                note += f"; {len(extra)} further meters of households already counted left out"
            self.record("membership", {"feeder": feeder, "month": month, "meters": list(meters)}, "allow",
                         f"feeder membership frozen for the month from the registry{note}")
            return meters

    def _check_feeder(self, cell: FeederCell, m: int, frozen: int = 0) -> str | None:
        """None if the cell may be released, else the refusal reason."""
        if len({(e, c) for e, c, _ in cell.dp_params}) > 1:
            return f"refused: mixed DP parameters {list(cell.dp_params)}"
        if cell.mixed_lengths:
            return "refused: readings of different interval lengths (or not dividing the cell) in one cell"
        if cell.max_per_meter > 1:
            return f"refused: a meter contributed {cell.max_per_meter} readings to one interval"
        if cell.contributors < m:
            return f"refused: {cell.contributors} < m={m}"
        bad = dp.colluders(max(frozen, cell.contributors), self.policy.gamma_of(cell.feeder))
        if cell.contributors - bad < self.policy.k_min:
            return (f"refused: {cell.contributors} households, {bad} assumed colluding (gamma="
                    f"{self.policy.gamma_of(cell.feeder):g}): fewer than k_min={self.policy.k_min} honest ones "
                    f"(dummy meters beside one household)")
        return None

    def _noise(self, cell: FeederCell, frozen: int) -> tuple[int, int, int]:
        """(share variance, noise variance of the cell from honest meters with gamma of the frozen
        feeder colluding, noise variance with none colluding). Colluders are assumed to be the
        meters with the most readings in the cell (worst case)."""
        v = dp.share_variance(cell.epsilon_milli / 1000, cell.clamp_wh, cell.m, cell.reading_len, self.policy.delta)
        bad = dp.colluders(max(frozen, cell.contributors), self.policy.gamma_of(cell.feeder))
        honest_readings = cell.readings - bad * cell.intervals
        return v, max(0, honest_readings) * v, cell.readings * v

    def _day_cells(self, feeder: str, day: str, extra: list[tuple[int, int]] | None = None,
                   nominal: bool = False) -> list[tuple[int, int]]:
        cells = [(r.intervals, r.noise_var_nominal if nominal else r.noise_var)
                 for r in self.ledger.day_releases(feeder, day)]
        return cells + (extra or [])

    def _budget_check(self, cell: FeederCell, noise_var: int) -> str | None:
        """Refusal reason or None (re-releasing the same contributor set is free)."""
        released = self.ledger.releases.get((cell.feeder, cell.interval_start))
        if released is not None:
            if released.members_digest != cell.members_digest or released.cell_len != cell.interval_len:
                return ("refused: cell already released with a different contributor set or length "
                        "(a difference would expose single meters)")
            return None
        for r in self.ledger.day_releases(cell.feeder, _iso(cell.interval_start)[:10]):
            start = next(k[1] for k, v in self.ledger.releases.items() if v is r)
            if start < cell.interval_start + cell.interval_len and cell.interval_start < start + r.cell_len:
                return ("refused: overlaps a cell released with another length (one granularity per "
                        "feeder-day, so no difference isolates a part of a released cell)")
        if noise_var < 1:
            return "refused: no honest share left once gamma of the feeder is assumed colluding"
        budget = self.daily_budget_milli
        day = _iso(cell.interval_start)[:10]
        eps = self.day_epsilon(cell.feeder, day, [(cell.intervals, noise_var)], clamp_wh=cell.clamp_wh)
        if eps * 1000 > budget:
            return (f"refused: household-day epsilon would reach {eps:.3f} > budget {budget / 1000:g} on {day} "
                    f"(gamma={self.policy.gamma_of(cell.feeder):g} colluding, delta={self.policy.delta:g})")
        return None

    def day_epsilon(self, feeder: str, day: str, extra: list[tuple[int, int]] | None = None,
                    clamp_wh: int | None = None, nominal: bool = False) -> float:
        """Household-day epsilon (at policy.delta) of `feeder`'s releases on UTC `day`, with gamma of
        the feeder colluding (nominal: none), plus `extra` cells [(intervals, noise variance)]."""
        rels = self.ledger.day_releases(feeder, day)
        clamps = {r.clamp_wh for r in rels} | ({clamp_wh} if clamp_wh else set())
        if not clamps:
            return 0.0
        return dp.household_day_epsilon(max(clamps), self._day_cells(feeder, day, extra, nominal), self.policy.delta)

    def spent_milli(self, feeder: str, day: str) -> int:
        """Household-day epsilon spent on `feeder` on UTC `day` (YYYY-MM-DD), milli, rounded up."""
        return math.ceil(self.day_epsilon(feeder, day) * 1000 - 1e-9)

    def _incomplete_cell(self, cell: FeederCell) -> FeederLoad:
        """A cell that has not ended yet is not released: its readings are not all in, and a partial
        release would pin the cell's contributor set, so the honest full cell would be refused forever
        afterwards."""
        reason = (f"refused: incomplete cell (it ends at {_iso(cell.interval_start + cell.interval_len)}, in the "
                  f"future): ask again once the whole cell has passed")
        with self._tx():
            self.record("feeder-load", {"feeder": cell.feeder, "interval_start": cell.interval_start,
                                        "interval_len": cell.interval_len, "readings": cell.readings}, "refuse", reason)
        return FeederLoad(feeder=cell.feeder, interval_start=cell.interval_start, interval_len=cell.interval_len,
                          readings=cell.readings, contributors=cell.contributors, epsilon_milli=cell.epsilon_milli,
                          clamp_wh=cell.clamp_wh, m=self.policy.required_m(cell.feeder, cell.m), status=reason,
                          analytics_sum_wh=None)

    def _feeder_cell(self, cell: FeederCell, frozen: int) -> FeederLoad:
        m = self.policy.required_m(cell.feeder, cell.m)
        base = dict(feeder=cell.feeder, interval_start=cell.interval_start, interval_len=cell.interval_len,
                    readings=cell.readings, contributors=cell.contributors, epsilon_milli=cell.epsilon_milli,
                    clamp_wh=cell.clamp_wh, m=m)
        with self._tx():  # check, decrypt and the audit entry the ledger folds: one decision
            reason = self._check_feeder(cell, m, frozen)
            v = noise_var = nominal_var = 0
            if reason is None:
                v, noise_var, nominal_var = self._noise(cell, frozen)
                reason = self._budget_check(cell, noise_var)
            query = {"feeder": cell.feeder, "interval_start": cell.interval_start, "interval_len": cell.interval_len,
                     "readings": cell.readings, "contributors": cell.contributors, "dp_params": cell.dp_params,
                     "m_required": m, "members_digest": cell.members_digest, "intervals": cell.intervals,
                     "clamp_wh": cell.clamp_wh, "share_var": v, "noise_var": noise_var,
                     "noise_var_nominal": nominal_var, "frozen_households": frozen,
                     "gamma": self.policy.gamma_of(cell.feeder)}
            if reason is not None:
                self.record("feeder-load", query, "refuse", reason)
                return FeederLoad(**base, status=reason, analytics_sum_wh=None)
            try:
                value = packing.analytics_of(self._decrypt_masked(cell.ciphertext, packing.SLOT_BILLING),
                                             cell.readings)
                eps, clamp, m_min = (f(p[i] for p in cell.dp_params) for f, i in ((min, 0), (max, 1), (min, 2)))
                impossible = plausible.feeder_problem(value, cell.readings, eps, clamp, m_min, cell.reading_len)
            except packing.PackingError:
                impossible = _OVERFLOW
            if impossible is not None:
                reason = f"refused: physically impossible feeder sum ({impossible})"
                self.record("feeder-load", query, "refuse", reason)
                return FeederLoad(**base, status=reason, analytics_sum_wh=None)
            self.record("feeder-load", query, "allow", f"ok: {cell.contributors} >= m={m}",
                         self.result_hash({"analytics_sum_wh": value}))
        return FeederLoad(**base, status="ok", analytics_sum_wh=value)


_OVERFLOW = "a decrypted sum does not fit its slot"


def _window_gap_reason(w_end: int, windows: dict[int, Any]) -> str | None:
    """A bill window ending within MIN_SEGMENT_DAYS of an earlier window of the same household and
    period (possible only if the policy's cut days changed between sessions) would difference to
    less than a week."""
    near = [end for end in windows if end != w_end and abs(end - w_end) < MIN_SEGMENT_DAYS * 86400]
    if not near:
        return None
    return (f"refused: this bill window ends {abs(near[0] - w_end) / 86400:g} days from an earlier bill window "
            f"(to {_iso(near[0])[:10]}) of this household and period (< {MIN_SEGMENT_DAYS}): the cut days "
            f"changed?")


def _wrong_key_if_all_overflow(reasons: list[str], total: int) -> None:
    """A hostile meter can make its own sums overflow (it may encrypt any plaintext below n), and those
    are refused one by one. When every sum overflows, the secret key is not the one the ciphertexts
    were made with: raise, as before there were end-to-end meters."""
    if total and sum(_OVERFLOW in r for r in reasons) == total:
        raise packing.PackingError("every decrypted sum is out of range: wrong secret key?")


def _months(t_from: int, t_to: int) -> list[str]:
    """UTC months (YYYY-MM) touched by [t_from, t_to)."""
    out, t = [], t_from
    while t < t_to:
        month = utc_month(t)
        out.append(month)
        d = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
        nxt = d.replace(year=d.year + 1, month=1) if d.month == 12 else d.replace(month=d.month + 1)
        t = int(nxt.timestamp())
    return out
