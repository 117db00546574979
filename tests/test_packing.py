"""Packed plaintexts: exact sums in both slots, no carry at the limits, masking hides one slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier

from meterveil.host.backoffice.aggregate import hom_sum
from meterveil.host.common import packing
from meterveil.host.gateway.encryptor import make_encryptor

billing = st.integers(0, (1 << packing.VALUE_BITS) - 1)
analytics = st.integers(-packing.ANALYTICS_OFFSET, packing.ANALYTICS_OFFSET - 1)


@given(st.lists(st.tuples(billing, analytics), min_size=0, max_size=50))
def test_sum_of_packed_unpacks_to_both_sums(values):
    plain = sum(packing.pack(b, a) for b, a in values)
    assert packing.unpack_sum(plain, len(values)) == (sum(b for b, _ in values), sum(a for _, a in values))


@pytest.mark.parametrize("count", [1 << 24, packing.MAX_COUNT])
def test_extreme_sums_do_not_carry_between_slots(count):
    hi_b, hi_a, lo_a = (1 << packing.VALUE_BITS) - 1, packing.ANALYTICS_OFFSET - 1, -packing.ANALYTICS_OFFSET
    for b, a in ((hi_b, hi_a), (hi_b, lo_a), (0, hi_a), (0, lo_a)):
        plain = count * packing.pack(b, a)  # the same as adding `count` packed readings
        assert packing.unpack_sum(plain, count) == (count * b, count * a)
    masked = count * packing.pack(hi_b, hi_a) + ((1 << packing.MASK_BITS) - 1)
    assert packing.analytics_of(masked, count) == count * hi_a


def test_pack_rejects_out_of_range():
    for b, a in ((-1, 0), (1 << packing.VALUE_BITS, 0), (0, packing.ANALYTICS_OFFSET), (0, -packing.ANALYTICS_OFFSET - 1)):
        with pytest.raises(packing.PackingError):
            packing.pack(b, a)
    with pytest.raises(packing.PackingError):
        packing.unpack_sum(0, packing.MAX_COUNT + 1)
    with pytest.raises(packing.PackingError):
        packing.draw_mask(2)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(-5_000, 5_000)), min_size=1, max_size=8))
def test_blind_slot_hides_one_slot_and_keeps_the_other(values):
    pub, priv = _KEYS
    enc = make_encryptor("packed", pub)
    total = hom_sum([enc.encrypt_reading(b, a)[0] for b, a in values], pub.nsquare)
    b_sum, a_sum = sum(b for b, _ in values), sum(a for _, a in values)
    bill_view = priv.raw_decrypt(packing.blind_slot(pub, total, packing.SLOT_ANALYTICS))
    load_view = priv.raw_decrypt(packing.blind_slot(pub, total, packing.SLOT_BILLING))
    assert packing.billing_of(bill_view) == b_sum
    assert packing.analytics_of(load_view, len(values)) == a_sum
    # the hidden slot is off by the mask (>= 2**64 with probability 1 - 2**-128): readers refuse it
    with pytest.raises(packing.PackingError):
        packing.analytics_of(bill_view, len(values))
    with pytest.raises(packing.PackingError):
        packing.billing_of(load_view)


def test_masks_are_fresh_and_in_range():
    masks = {packing.draw_mask(packing.SLOT_BILLING) for _ in range(50)}
    assert len(masks) == 50 and all(0 <= m < (1 << packing.MASK_BITS) for m in masks)
    hi = packing.draw_mask(packing.SLOT_ANALYTICS)
    assert hi % (1 << packing.SLOT_BITS) == 0


_KEYS = paillier.generate_paillier_keypair(n_length=1024)
