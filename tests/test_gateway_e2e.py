"""Gateway in end-to-end mode: kind 3 frames are verified and stored as received, never opened.

A mixed fleet (one proxy meter, one E2E meter) runs through the same pipeline; stored E2E ciphertexts
decrypt with the secret key only, the household copy opens with the household key only. The gateway's key
file holds the E2E meter's MAC and status keys, never its master key (the meter's config has that).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from phe import paillier
from roles import assert_no_value_keys
from test_gateway_ingest import PRIV, PUB, T0, Clock, seal, topic

from meterveil.host.backoffice.aggregate import feeder_sums, hom_sum
from meterveil.host.common import packing
from meterveil.host.common.registry import MODE_E2E, MODE_PROXY
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import Gateway, Message
from meterveil.host.gateway.meter_keys import PREVIOUS_KEY_GRACE_S, E2EKeys, KeyedRegistry, frame_keys
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, SCHEME_PACKED_V1, open_store
from meterveil.protocol import e2e, errors, frame, household, opener
from meterveil.protocol import paillier as mpaillier

HOUSEHOLD = bytes(range(100, 132))
PROXY_MASTER, E2E_MASTER = bytes([1]) * 32, bytes([2]) * 32  # what the meters' configs hold
X = 0x1234567
HS = pow(-X * X % PUB.n, PUB.n, PUB.nsquare)
EXP_BITS = PUB.n.bit_length() // 2


def registry(root) -> KeyedRegistry:
    reg = KeyedRegistry.load(root / "keys", root / "registry" / "meters.json")
    reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=PROXY_MASTER)
    reg.add("m0002", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=E2E_MASTER, mode=MODE_E2E,
            household_fingerprint=household.fingerprint(HOUSEHOLD))
    return reg


def seal_e2e(reg, counter, billing=250, analytics=180, *, n=PUB.n, hs=HS, rho=None, key=None, **over):
    header = {"kind": frame.KIND_READING_PAILLIER, "meter_id": "m0002", "counter": counter,
              "interval_start": T0 + counter * 900, "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000,
              "m": 10}
    fields = {"billing_wh": billing, "analytics_wh": analytics, "flags": 0, "samples": 900, "clipped": 0,
              "missing_s": 0}
    for k, v in over.items():
        (header if k in header else fields)[k] = v
    if rho is None:
        rho = mpaillier.obfuscator_now(hs, n, n.bit_length() // 2)
    return e2e.seal(frame.derive_keys(key or E2E_MASTER), e2e.household_keys(HOUSEHOLD), header, fields, n,
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
    hdr = frame.verify_frame(reg.get("m0002").key.mac_key, blob)
    _meta, c, hh = opener.split_e2e(blob, hdr["body_len"])
    assert row.ciphertext == c and row.household == hh  # stored exactly as the meter made them
    assert packing.unpack_sum(PRIV.raw_decrypt(row.ciphertext), 1) == (321, -7)
    got = household.open_copy(e2e.household_keys(HOUSEHOLD), row.household, "m0002", 5, row.interval_start, 900)
    assert got["billing_wh"] == 321 and got["samples"] == 900


def _gateway_key_material(keys_path) -> list[bytes]:
    """Every key in the gateway's key file, as bytes."""
    return [bytes.fromhex(v) for entry in json.loads(keys_path.read_text())["meters"].values()
            for k, v in entry.items() if k != "rotated_at" and v]


def test_no_key_the_gateway_holds_opens_the_household_copy(gw):
    g, reg, store = gw
    run(g, seal_e2e(reg, 5))
    (row,) = store.readings_for_meter("m0002", 0, 2**32)
    material = _gateway_key_material(reg.keys.path)
    # every key as either half, and every 32-byte key as a household key or a master key
    tries = [(a[:16], b) for a in material for b in material]
    tries += [e2e.household_keys(k) for k in material if len(k) == 32]
    tries += [frame.derive_keys(k) for k in material if len(k) == 32]
    for keys in tries:
        with pytest.raises(errors.BadTag):
            household.open_copy(keys, row.household, "m0002", 5, row.interval_start, 900)
    assert all(HOUSEHOLD.hex() not in p.read_text() for p in (reg.keys.path, reg.registry.path))


def test_the_gateway_key_file_holds_no_e2e_master_key(gw):
    """Done-when of issue 14: the gateway holds no key that decrypts a value. The master key would: it
    derives every key of the meter, so the gateway keeps only the MAC key and the status frames' key."""
    _g, reg, _store = gw
    assert_no_value_keys(reg.keys.path.parent, {"m0002": (E2E_MASTER, HOUSEHOLD)})
    entries = json.loads(reg.keys.path.read_text())["meters"]
    assert entries["m0001"]["key"] == PROXY_MASTER.hex()  # a proxy meter's readings are the gateway's to open
    # rotation keeps both keys reduced, the previous one for the grace period
    new_master = bytes([3]) * 32
    t0 = 1_800_000_000
    rotated = reg.rotate("m0002", new_master, now=t0)
    assert rotated.key == E2EKeys.from_master(new_master) and rotated.previous_key == E2EKeys.from_master(E2E_MASTER)
    assert_no_value_keys(reg.keys.path.parent, {"m0002": (new_master, HOUSEHOLD)})
    entry = json.loads(reg.keys.path.read_text())["meters"]["m0002"]
    old_status, old_mac = frame.derive_keys(E2E_MASTER)
    assert (entry["previous_status_key"], entry["previous_mac_key"]) == (old_status.hex(), old_mac.hex())
    assert E2E_MASTER.hex() not in reg.keys.path.read_text()
    with pytest.raises(ValueError, match="must be given"):
        reg.rotate("m0002")  # a master made here could never reach the meter's config
    # past the grace period the previous pair is dropped; the entry stays reduced
    assert reg.get("m0002", now=t0 + PREVIOUS_KEY_GRACE_S).previous_key is not None
    assert reg.get("m0002", now=t0 + PREVIOUS_KEY_GRACE_S + 1).previous_key is None
    reg.keys.save(now=t0 + PREVIOUS_KEY_GRACE_S + 1)
    assert json.loads(reg.keys.path.read_text())["meters"]["m0002"]["previous_mac_key"] is None
    assert_no_value_keys(reg.keys.path.parent, {"m0002": (new_master, HOUSEHOLD)})


def test_a_gateway_loaded_from_the_reduced_key_file_stores_values_the_secret_key_bills(tmp_path):
    """A gateway started on the files (as `meterveil gateway --keys`) with MAC and status keys only: readings
    of a rotated E2E meter under both keys are stored, its status frames are read, and every stored ciphertext
    decrypts with the decryption role's secret key to exactly what the meter measured."""
    writer = registry(tmp_path)
    writer.rotate("m0002", bytes([3]) * 32)
    reg = KeyedRegistry.load(tmp_path / "keys", tmp_path / "registry" / "meters.json")
    assert isinstance(reg.get("m0002").key, E2EKeys) and isinstance(reg.get("m0002").previous_key, E2EKeys)
    store = open_store(tmp_path / "gw.db")
    try:
        g = Gateway(store, reg, make_encryptor("packed", PUB), clock=Clock())
        sent = {1: (400, 120), 2: (0, -30), 3: (1234, 999)}
        for c, (b, a) in sent.items():
            key = E2E_MASTER if c == 1 else bytes([3]) * 32  # counter 1 sealed before the meter got its new key
            assert run(g, seal_e2e(reg, c, billing=b, analytics=a, key=key)).reason == "accepted"
        status = seal(reg, "m0002", 9, kind=frame.KIND_STATUS, key=bytes([3]) * 32)
        assert run(g, status, leaf="status").reason == "status"
        rows = store.readings_for_meter("m0002", 0, 2**32)
        assert {r.counter: packing.unpack_sum(PRIV.raw_decrypt(r.ciphertext), 1) for r in rows} == sent
        total = hom_sum([r.ciphertext for r in rows], PUB.nsquare)
        assert packing.unpack_sum(PRIV.raw_decrypt(total), 3) == (1634, 1089)
    finally:
        store.close()


def test_an_older_key_file_with_an_e2e_master_is_reduced_on_save(tmp_path):
    """A key file written before E2E entries were reduced: the process keeps the reduced keys only, and the
    next save (any provisioning) drops the master from disk."""
    reg = registry(tmp_path)
    data = json.loads(reg.keys.path.read_text())
    data["meters"]["m0002"] = {"key": E2E_MASTER.hex(), "previous_key": None, "rotated_at": None}
    reg.keys.path.write_text(json.dumps(data))
    old = KeyedRegistry.load(tmp_path / "keys", tmp_path / "registry" / "meters.json")
    assert old.get("m0002").key == E2EKeys.from_master(E2E_MASTER)
    old.save()
    assert_no_value_keys(tmp_path / "keys", {"m0002": (E2E_MASTER, HOUSEHOLD)})


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
    g, reg, store = gw
    proxy_from_e2e = seal(reg, "m0002", 4, key=E2E_MASTER)  # AES-sealed reading under the E2E meter's key
    assert run(g, proxy_from_e2e).reason == "mode_mismatch"
    assert store.meter_counters()["m0002"]["mode_mismatch"] == 1 and store.count_readings() == 0
    kind3_from_proxy = e2e.seal(frame.derive_keys(reg.get("m0001").key), e2e.household_keys(HOUSEHOLD),
                                {"kind": 3, "meter_id": "m0001", "counter": 4, "interval_start": T0 + 3600,
                                 "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10},
                                {"billing_wh": 1, "analytics_wh": 1, "flags": 0, "samples": 1, "clipped": 0,
                                 "missing_s": 0}, PUB.n, 1, os.urandom(16))
    assert run(g, kind3_from_proxy, mid="m0001").reason == "mode_mismatch"
    # status frames are the same in both modes
    assert run(g, seal(reg, "m0002", 9, kind=frame.KIND_STATUS, key=E2E_MASTER), leaf="status").reason == "status"


def test_an_aes_reading_from_a_meter_with_reduced_keys_is_refused_unopened(tmp_path, monkeypatch):
    """Even if the registry is edited back to proxy, a meter whose key entry has no master key has no reading
    key: its kind 1 frame is refused as mode_mismatch, counted, and never decrypted with its status key."""
    reg = registry(tmp_path)
    reg.registry.put(replace(reg.registry.get("m0002"), mode=MODE_PROXY), replace_existing=True)
    reg = KeyedRegistry.load(tmp_path / "keys", tmp_path / "registry" / "meters.json")
    assert reg.get("m0002").end_to_end and frame_keys(reg.get("m0002").key)[0] == frame.derive_keys(E2E_MASTER)[0]
    store = open_store(tmp_path / "gw.db")
    try:
        g = Gateway(store, reg, make_encryptor("packed", PUB), clock=Clock())
        opened = []
        real_open = opener.open_frame
        monkeypatch.setattr(opener, "open_frame", lambda *a, **k: opened.append(a) or real_open(*a, **k))
        assert run(g, seal(reg, "m0002", 4, key=E2E_MASTER)).reason == "mode_mismatch"
        assert run(g, seal(reg, "m0001", 4, key=PROXY_MASTER), mid="m0001").reason == "accepted"
        assert len(opened) == 1  # the proxy meter's reading only and store.count_readings() == 0
        assert store.count_readings() == 1 and store.meter_counters()["m0002"] == {"mode_mismatch": 1}
    finally:
        store.close()


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
