"""Who may keep how many frames in the quarantine, so that nobody can fill it for everyone else.

The quarantine holds acknowledged frames that may pass later (the meter has forgotten them), so a
full quarantine loses data. Two pools, by what the gateway could verify:

- verified: the meter's MAC checked (``future``, ``dp_mismatch``): room reserved per registered
  meter (``per_meter``); only whoever holds that meter's key can fill it, and only its own room.
- unverified: meter ids not in the registry (``unknown_meter``): nothing authenticates them. Under
  the broker ACL (``pattern write meterveil/v1/%u/#``) the meter id in a topic is the login that
  published it, so an id stands for its sender: each id keeps at most ``per_id`` frames, and once
  the pool (``total``) is full a newcomer still gets a fair share (``total`` / ids held) by evicting
  the oldest frame of the id holding the most.

Every frame that does not stay is counted against the id that caused it: ``quarantine_full`` for a
sender over its share, ``quarantine_evicted`` for the largest holder that made room.
"""

from __future__ import annotations

from dataclasses import dataclass

VERIFIED = "verified"
UNVERIFIED = "unverified"
UNVERIFIED_REASONS = ("unknown_meter",)


def pool_of(reason: str) -> str:
    return UNVERIFIED if reason in UNVERIFIED_REASONS else VERIFIED


@dataclass(frozen=True)
class QuarantinePolicy:
    per_meter: int = 3000   # verified, per registered meter: a month of 15-minute readings
    per_id: int = 3000      # unverified, per meter id
    total: int = 200_000    # unverified, all ids together (~25 MB of frames)


@dataclass(frozen=True)
class Admission:
    admit: bool
    evict_from: str | None = None  # keep the frame after dropping the oldest one of this id


def admit(policy: QuarantinePolicy, pool: str, sender: str, held: int, total: int, ids: int,
          largest: tuple[str, int] | None) -> Admission:
    """Whether `sender`, holding `held` frames in `pool`, may add one.

    `total` and `ids` are the unverified pool's frame and id counts; `largest` its biggest holder.
    """
    if pool == VERIFIED:
        return Admission(held < policy.per_meter)
    if held >= policy.per_id:
        return Admission(False)
    if total < policy.total:
        return Admission(True)
    fair = policy.total // (ids + (0 if held else 1))
    if held < fair and largest is not None and largest[0] != sender and largest[1] > held + 1:
        return Admission(True, evict_from=largest[0])
    return Admission(False)
