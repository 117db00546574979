"""Gateway in end-to-end mode: kind 3 frames are verified and stored as received, never opened.

A mixed fleet (one proxy meter, one E2E meter) runs through the same pipeline; stored E2E ciphertexts
decrypt with the secret key only, the household copy opens with the household key only.
"""

from __future__ import annotations

import os

import pytest
from phe import paillier
from test_gateway_ingest import PRIV, PUB, T0, Clock, seal, topic

from meterveil.host.backoffice.aggregate import feeder_sums, hom_sum
from meterveil.host.common import packing
from meterveil.host.common.registry import MODE_E2E
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import Gateway, Message
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, SCHEME_PACKED_V1, open_store
from meterveil.protocol import e2e, errors, frame, household, opener
from meterveil.protocol import paillier as mpaillier

HOUSEHOLD = bytes(range(100, 132))
X = 0x1234567
HS = pow(-X * X % PUB.n, PUB.n, PUB.nsquare)
EXP_BITS = PUB.n.bit_length() // 2


def registry(root) -> KeyedRegistry:
    reg = KeyedRegistry.load(root / "keys", root / "registry" / "meters.json")
    reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([1]) * 32)
    reg.add("m0002", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([2]) * 32, mode=MODE_E2E,
            household_fingerprint=household.fingerprint(HOUSEHOLD))
    return reg


def seal_e2e(reg, counter, billing=250, analytics=180, *, n=PUB.n, hs=HS, rho=None, key=None, **over):
    rec = reg.get("m0002")
    header = {"kind": frame.KIND_READING_PAILLIER, "meter_id": "m0002", "counter": counter,
              "interval_start": T0 + counter * 900, "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000,
              "m": 10}
    fields = {"billing_wh": billing, "analytics_wh": analytics, "flags": 0, "samples": 900, "clipped": 0,
              "missing_s": 0}
    for k, v in over.items():
        (header if k in header else fields)[k] = v
    if rho is None:
        rho = mpaillier.obfuscator_now(hs, n, n.bit_length() // 2)
    return e2e.seal(frame.derive_keys(key or rec.key), e2e.household_keys(HOUSEHOLD), header, fields, n,
                    rho, os.urandom(16))


@pytest.fixture
def gw(tmp_path):
    reg = registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    g = Gateway(store, reg, make_encryptor("packed", PUB), clock=Clock())
    yield g, reg, store
    store.close()


def run(g, payload, leaf="reading", mid="m0002"):
    out = g.process(Message(topic(mid, leaf), payload))
    g.commit()
    return out


def test_e2e_reading_is_stored_as_received_and_decrypts_with_the_secret_key_only(gw):
    g, reg, store = gw
    blob = seal_e2e(reg, 5, billing=321, analytics=-7)
    assert run(g, blob).reason == "accepted"
    (row,) = store.readings_for_meter("m0002", 0, 2**32)
    assert row.scheme == SCHEME_PACKED_E2E_V1
    hdr = frame.verify_frame(frame.derive_keys(reg.get("m0002").key)[1], blob)
    _meta, c, hh = opener.split_e2e(blob, hdr["body_len"])
    assert row.ciphertext == c and row.household == hh  # stored exactly as the meter made them
    assert packing.unpack_sum(PRIV.raw_decrypt(row.ciphertext), 1) == (321, -7)
    got = household.open_copy(e2e.household_keys(HOUSEHOLD), row.household, "m0002", 5, row.interval_start, 900)
    assert got["billing_wh"] == 321 and got["samples"] == 900


def test_no_key_the_gateway_holds_opens_the_household_copy(gw):
    g, reg, store = gw
    run(g, seal_e2e(reg, 5))
    (row,) = store.readings_for_meter("m0002", 0, 2**32)
    gateway_keys = [frame.derive_keys(m.key) for m in reg] + [(m.key[:16], m.key) for m in reg]
    for keys in gateway_keys:
        with pytest.raises(errors.BadTag):
            household.open_copy(keys, row.household, "m0002", 5, row.interval_start, 900)
    assert all(HOUSEHOLD.hex() not in p.read_text() for p in (reg.keys.path, reg.registry.path))


def test_a_mixed_fleet_sums_and_bills_across_modes(gw):
    g, reg, store = gw
    assert run(g, seal(reg, "m0001", 3, billing=100, analytics=40), mid="m0001").reason == "accepted"
    assert run(g, seal_e2e(reg, 3, billing=200, analytics=-10)).reason == "accepted"
    rows = store.readings_for_feeder("F1", 0, 2**32)
    assert sorted(r.scheme for r in rows) == [SCHEME_PACKED_E2E_V1, SCHEME_PACKED_V1]
    total = hom_sum([r.ciphertext for r in rows], PUB.nsquare)
    assert len(feeder_sums(rows, PUB.nsquare)) == 1  # the back office sums both schemes together
    assert packing.unpack_sum(PRIV.raw_decrypt(total), 2) == (300, 30)


def test_a_kind_from_the_other_mode_is_mode_mismatch(gw):
    g, reg, _ = gw
    proxy_from_e2e = seal(reg, "m0002", 4)
    assert run(g, proxy_from_e2e).reason == "mode_mismatch"
    kind3_from_proxy = e2e.seal(frame.derive_keys(reg.get("m0001").key), e2e.household_keys(HOUSEHOLD),
                                {"kind": 3, "meter_id": "m0001", "counter": 4, "interval_start": T0 + 3600,
                                 "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10},
                                {"billing_wh": 1, "analytics_wh": 1, "flags": 0, "samples": 1, "clipped": 0,
                                 "missing_s": 0}, PUB.n, 1, os.urandom(16))
    assert run(g, kind3_from_proxy, mid="m0001").reason == "mode_mismatch"
    # status frames are the same in both modes
    assert run(g, seal(reg, "m0002", 9, kind=frame.KIND_STATUS), leaf="status").reason == "status"


def test_header_checks_still_apply_to_e2e_frames(gw):
    g, reg, store = gw
    good = seal_e2e(reg, 7)
    assert run(g, good).reason == "accepted"
    assert run(g, good).reason == "duplicate"
    assert run(g, seal_e2e(reg, 7, billing=9)).reason == "counter_reuse"
    assert run(g, seal_e2e(reg, 8, interval_start=T0 + 7 * 900)).reason == "interval_overlap"
    assert run(g, seal_e2e(reg, 10, flags=frame.FLAG_CLOCK_UNSYNCED)).reason == "clock_unsynced"
    assert run(g, seal_e2e(reg, 11, interval_start=T0 + 11 * 900 + 1)).reason == "bad_interval"
    assert run(g, seal_e2e(reg, 12, interval_start=T0 + 200 * 900)).reason == "future"
    assert run(g, seal_e2e(reg, 13, interval_start=T0 - 100 * 86400)).reason == "stale"
    assert run(g, seal_e2e(reg, 14, missing_s=901)).reason == "out_of_range"
    assert run(g, seal_e2e(reg, 15, epsilon_milli=500)).reason == "dp_mismatch"
    assert run(g, seal_e2e(reg, 16, key=bytes([9]) * 32)).reason == "bad_tag"
    tampered = bytearray(seal_e2e(reg, 17))
    tampered[frame.HEADER_LEN + frame.IV_LEN + 10] ^= 1  # inside the Paillier ciphertext
    assert run(g, bytes(tampered)).reason == "bad_tag"
    assert store.count_readings() == 1


def test_ciphertexts_that_would_corrupt_a_sum_are_refused(gw):
    g, reg, store = gw
    assert run(g, seal_e2e(reg, 20, rho=PUB.n)).reason == "bad_ciphertext"  # a multiple of n
    other = paillier.generate_paillier_keypair(n_length=1536)[0]
    wrong_size = seal_e2e(reg, 21, n=other.n, hs=pow(4, other.n, other.nsquare))
    assert run(g, wrong_size).reason == "bad_length"
    assert store.count_readings() == 0


def test_only_the_flags_that_say_nothing_about_consumption_are_public(gw):
    g, reg, store = gw
    clamped = frame.FLAG_CLAMPED | frame.FLAG_ADC_CLIPPED | frame.FLAG_PARTIAL_INTERVAL
    blob = seal_e2e(reg, 30, flags=clamped, clipped=3)
    hdr = frame.parse_header(blob)
    meta, _c, _hh = opener.split_e2e(blob, hdr["body_len"])
    assert meta["flags"] == frame.FLAG_PARTIAL_INTERVAL
    assert run(g, blob).reason == "accepted"
    (row,) = store.readings_for_meter("m0002", 0, 2**32)
    assert row.flags == frame.FLAG_PARTIAL_INTERVAL


def test_a_restarted_gateway_still_finds_duplicates_and_overlaps(gw, tmp_path):
    """The in-memory high-water marks start from the store, so a new process misses nothing."""
    g, reg, store = gw
    first = seal_e2e(reg, 40)
    assert run(g, first).reason == "accepted"
    g2 = Gateway(store, registry(tmp_path / "again"), make_encryptor("packed", PUB), clock=Clock())
    g2.registry = reg
    assert run(g2, first).reason == "duplicate"
    assert run(g2, seal_e2e(reg, 41, interval_start=T0 + 40 * 900)).reason == "interval_overlap"
    late = seal_e2e(reg, 39, interval_start=T0 + 10 * 900)
    assert run(g2, late).reason == "accepted"  # below the high-water mark but never stored
    assert run(g2, late).reason == "duplicate"
    assert run(g2, seal_e2e(reg, 39, interval_start=T0 + 10 * 900)).reason == "counter_reuse"
    assert store.count_readings() == 2
