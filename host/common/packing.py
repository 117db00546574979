"""One Paillier plaintext per reading: billing in the low slot, analytics (+ offset) in the high slot.

Why: one ciphertext serves both sums (feeder load, household bill), halving encryption, storage and
homomorphic additions; the slots are wide enough that sums never carry between them and that a query
can hide the slot it must not reveal under a random mask before decryption.

Layout (all widths in bits; the constants and ``pack`` live in ``meterveil.protocol.paillier``, which
the meter runs too)::

    plain = billing_wh + ((analytics_wh + ANALYTICS_OFFSET) << SLOT_BITS)

- per reading: ``0 <= billing_wh < 2**VALUE_BITS`` and ``-ANALYTICS_OFFSET <= analytics_wh < ANALYTICS_OFFSET``
  (so ``analytics_wh + ANALYTICS_OFFSET < 2**VALUE_BITS``), VALUE_BITS = 32;
- sums of up to ``MAX_COUNT = 2**COUNT_BITS`` readings (COUNT_BITS = 32) stay below ``2**SUM_BITS``
  (SUM_BITS = 64) in each slot;
- a mask is uniform in ``[0, 2**MASK_BITS)`` with MASK_BITS = SUM_BITS + STAT_SECURITY (128): adding it to
  a slot sum hides that sum with statistical distance <= 2**-128 (|s - s'| / 2**MASK_BITS);
- SLOT_BITS = 256 > MASK_BITS + 1, so even a masked slot never carries into the next one.
  The whole plaintext stays below 2**(2*SLOT_BITS + 1), far below n (>= 2**1024).

Interface (stable): ``pack(billing_wh, analytics_wh) -> int``; ``unpack_sum(plain, count) ->
(billing_sum, analytics_sum)``; ``billing_of(plain)``, ``analytics_of(plain, count)`` read one slot only
(use them after masking the other slot); ``draw_mask(slot)`` returns the plaintext to add for masking a
slot (``SLOT_BILLING`` or ``SLOT_ANALYTICS``); ``blind_slot(pub, ciphertext, slot)`` adds such a mask to a
raw ciphertext (int) homomorphically and forgets it. ``PackingError`` (ValueError) on out-of-range input.
"""

from __future__ import annotations

import secrets

from meterveil.protocol import paillier as _layout
from meterveil.protocol.paillier import (  # one reading's layout: defined where the meter reads it
    ANALYTICS_OFFSET,
    SLOT_BITS,
    VALUE_BITS,
)

# Sums and masks: host-only widths, derived from the reading layout.
COUNT_BITS = 32
SUM_BITS = VALUE_BITS + COUNT_BITS
STAT_SECURITY = 128
MASK_BITS = SUM_BITS + STAT_SECURITY
MAX_COUNT = 1 << COUNT_BITS
SLOT_BILLING = 0
SLOT_ANALYTICS = 1

__all__ = ["ANALYTICS_OFFSET", "COUNT_BITS", "MASK_BITS", "MAX_COUNT", "SLOT_ANALYTICS", "SLOT_BILLING",
           "SLOT_BITS", "STAT_SECURITY", "SUM_BITS", "VALUE_BITS", "PackingError", "pack", "billing_of",
           "analytics_of", "unpack_sum", "draw_mask", "blind_slot"]
_SLOT_MASK = (1 << SLOT_BITS) - 1
assert SLOT_BITS > MASK_BITS + 1
assert ANALYTICS_OFFSET == 1 << (VALUE_BITS - 1)


class PackingError(ValueError):
    """A value or sum does not fit its slot (or a slot still carries a mask)."""


def pack(billing_wh: int, analytics_wh: int) -> int:
    """Packed plaintext of one reading."""
    try:
        return _layout.pack(billing_wh, analytics_wh)
    except ValueError as exc:
        raise PackingError(str(exc)) from None


def _check_count(count: int) -> None:
    if not 0 <= count <= MAX_COUNT:
        raise PackingError(f"count {count} outside [0, 2**{COUNT_BITS}]")


def billing_of(plain: int) -> int:
    """Billing sum from a decrypted (possibly analytics-masked) sum."""
    b = plain & _SLOT_MASK
    if b >= (1 << SUM_BITS):
        raise PackingError("billing slot out of range (masked or not a packed sum)")
    return b


def analytics_of(plain: int, count: int) -> int:
    """Analytics sum of ``count`` readings from a decrypted (possibly billing-masked) sum."""
    _check_count(count)
    hi = plain >> SLOT_BITS
    if hi >= (1 << SUM_BITS):
        raise PackingError("analytics slot out of range (masked or not a packed sum)")
    return hi - count * ANALYTICS_OFFSET


def unpack_sum(plain: int, count: int) -> tuple[int, int]:
    """(billing_sum, analytics_sum) of the sum of ``count`` packed readings."""
    return billing_of(plain), analytics_of(plain, count)


def draw_mask(slot: int) -> int:
    """Uniform mask for ``slot``, already shifted into place (plaintext to add before decryption)."""
    if slot not in (SLOT_BILLING, SLOT_ANALYTICS):
        raise PackingError(f"unknown slot {slot}")
    return secrets.randbits(MASK_BITS) << (slot * SLOT_BITS)


def blind_slot(pub, ciphertext: int, slot: int) -> int:
    """Raw ciphertext with a fresh random mask added to ``slot`` (mask discarded).

    Why: the decryption role then learns the other slot exactly and this one only up to a 2**-128
    statistical distance. Uses g = n + 1: Enc(x) * (1 + n*mask) = Enc(x + mask). The result is not
    re-randomised; the mask itself randomises the hidden slot and the other slot is public to the
    decryption role anyway.
    """
    nsq = pub.nsquare
    return (int(ciphertext) * ((1 + pub.n * draw_mask(slot)) % nsq)) % nsq
