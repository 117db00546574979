"""The release ledger: what the decryption role has released so far, folded from its signed audit log.

Why in audit/: the decryption role checks its policy against it, and auditors and the privacy
report read the same fold without any key.

Why derived and not stored: a ledger kept in tables can be edited by whoever can write the file
(delete a release row and the differencing check is gone). Here the ledger is rebuilt from the
audit entries, each of which is hash-chained and signed, and refreshed from new entries before
every decision. The only way to change it is to forge a signature.

What it remembers (from ``allow`` entries and bookkeeping entries):
- ``feeder-load``: per (feeder, cell start), the released contributor set digest, the cell's length
  and what its noise was (intervals summed, clamp, noise variance from honest meters with the
  policy's gamma colluding and with none): what the household-day accounting composes;
- ``bill`` / ``partition``: per (household, period), the band partition, window, readings digest and
  count of the last decrypted bill, every window billed (its end, readings digest, readings per
  band), and the cell labels of every partition;
- ``policy``: the daily DP budget;
- ``membership``: per (feeder, month), the frozen set of meters whose readings make its sums;
- ``export-households``: every allowed export in order (the export ledger): its mode, the deployment's
  generalisation scheme (k-anonymous) or epsilon (synthetic), and the released rows per household
  sealed under a key only the decryption role derives (an auditor sees how many, not whose or which:
  row equality per meter id would undo the anonymisation), so a later export keeps every household's
  anonymity set across exports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meterveil.host.audit.chain import AuditEntry


def utc_day(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def utc_month(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m")


@dataclass(frozen=True)
class Release:
    day: str
    epsilon_milli: int
    members_digest: str
    cell_len: int = 900
    intervals: int = 1
    clamp_wh: int = 0
    noise_var: int = 0  # honest shares only, gamma of the feeder colluding
    noise_var_nominal: int = 0  # every contributor honest


@dataclass(frozen=True)
class PinnedBill:
    """The last decrypted bill of one household and period."""

    partition: str
    bounds: tuple[int, int]
    members_digest: str
    readings: int
    closed: bool


@dataclass(frozen=True)
class BilledWindow:
    """One decrypted bill window [period start, end) of one household: which readings, how many per band."""

    members_digest: str
    band_readings: dict[str, int]


@dataclass(frozen=True)
class ExportRelease:
    """One allowed household export."""

    seq: int
    mode: str  # "k-anonymous" | "synthetic"
    scheme: dict  # k-anonymous: {"k": int, "levels": {key: level}}; synthetic: {}
    released_sealed: str  # k-anonymous: {meter_id: released row}, sealed by the role (DecryptionRole.open_private)
    epsilon: float = 0.0  # synthetic


@dataclass
class Ledger:
    releases: dict[tuple[str, int], Release] = field(default_factory=dict)
    bills: dict[tuple[str, str], PinnedBill] = field(default_factory=dict)
    windows: dict[tuple[str, str], dict[int, BilledWindow]] = field(default_factory=dict)
    partitions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    membership: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    daily_budget_milli: int | None = None
    exports: list[ExportRelease] = field(default_factory=list)
    seq: int = 0

    def apply_all(self, entries: Iterable[AuditEntry]) -> None:
        for e in entries:
            self.apply(e)

    def apply(self, e: AuditEntry) -> None:
        """Fold one (already verified) entry into the ledger."""
        self.seq = e.seq
        if e.decision != "allow":
            return
        q = e.query
        if e.action == "feeder-load":
            key = (str(q["feeder"]), int(q["interval_start"]))
            if key not in self.releases:
                self.releases[key] = Release(
                    utc_day(key[1]), int(q["dp_params"][0][0]), str(q["members_digest"]),
                    int(q.get("interval_len", 900)), int(q.get("intervals", 1)), int(q.get("clamp_wh", 0)),
                    int(q.get("noise_var", 0)), int(q.get("noise_var_nominal", 0)))
        elif e.action == "partition":
            self.partitions.setdefault(str(q["partition"]), tuple(int(x) for x in q["labels"]))
        elif e.action == "bill" and q.get("partition") is not None:
            key = (str(q["meter_id"]), str(q["period"]))
            before = self.bills.get(key)
            closed = bool(q.get("closed")) or (before is not None and before.closed)
            self.bills[key] = PinnedBill(str(q["partition"]), (int(q["t_from"]), int(q["t_to"])),
                                         str(q["members_digest"]), int(q["readings"]), closed)
            self.windows.setdefault(key, {})[int(q["t_to"])] = BilledWindow(
                str(q["members_digest"]), {str(b): int(n) for b, n in q.get("band_readings", {}).items()})
        elif e.action == "policy" and "daily_budget_milli" in q:
            self.daily_budget_milli = None if q["daily_budget_milli"] is None else int(q["daily_budget_milli"])
        elif e.action == "membership":
            self.membership.setdefault((str(q["feeder"]), str(q["month"])), tuple(str(m) for m in q["meters"]))
        elif e.action == "export-households" and "mode" in q:
            self.exports.append(ExportRelease(
                e.seq, str(q["mode"]), dict(q.get("scheme") or {}), str(q.get("released_sealed") or ""),
                float(q.get("epsilon") or 0.0)))

    def day_releases(self, feeder: str, day: str) -> list[Release]:
        return [r for (f, _), r in sorted(self.releases.items()) if f == feeder and r.day == day]

    def released_cells(self) -> dict[tuple[str, str], list[Release]]:
        """(feeder, UTC day) -> the cells released, for the household-day accounting."""
        out: dict[tuple[str, str], list[Release]] = {}
        for (feeder, _), r in sorted(self.releases.items()):
            out.setdefault((feeder, r.day), []).append(r)
        return out

    def feeder_of(self, meter_id: str, month: str) -> str | None:
        """The feeder whose frozen membership holds `meter_id` in `month`, if any."""
        for (feeder, m), members in self.membership.items():
            if m == month and meter_id in members:
                return feeder
        return None


def fold_verified(audit_db: str | Path, verify_key: Ed25519PublicKey) -> Ledger:
    """The ledger of a role database, read only; AuditError unless the whole chain verifies."""
    from meterveil.host.audit.chain import AuditError, AuditLog

    with AuditLog(audit_db, readonly=True) as log:
        result = log.verify(verify_key)
        if not result.ok:
            raise AuditError(result.describe())
        led = Ledger()
        led.apply_all(log.entries())
    return led
