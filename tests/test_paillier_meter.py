"""Meter-side Paillier (protocol/paillier.py, protocol/e2e.py) on both runtimes, checked by phe.

Vectors both ways: frozen kind 3 frames made on CPython are reproduced byte for byte on the MicroPython
unix port, and ciphertexts the unix port makes with os.urandom decrypt with phe on CPython.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from phe import paillier as phe_paillier
from test_protocol import MICROPYTHON, REPO

from meterveil.host.common import packing
from meterveil.protocol import e2e, frame, gen_vectors, household, opener, paillier, selftest

E2E_VECTORS = json.loads((REPO / "protocol" / "vectors_e2e.json").read_text())


def _mpy(script: str, heap: str = "64k") -> subprocess.CompletedProcess:
    return subprocess.run([MICROPYTHON, "-X", f"heapsize={heap}", "-c",
                           f"import sys\nsys.path.append({str(REPO)!r})\n" + script],
                          capture_output=True, text=True, timeout=300)


def test_e2e_vectors_pass_on_cpython():
    ok, fail = selftest.run(E2E_VECTORS, log=print)
    assert (ok, fail) == (5 * len(E2E_VECTORS["e2e_frames"]), 0)


def test_e2e_vectors_pass_on_micropython_in_64k():
    res = _mpy(f"from protocol import selftest\nsys.exit(selftest.main({str(REPO / 'protocol' / 'vectors_e2e.json')!r}))")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"ok={5 * len(E2E_VECTORS['e2e_frames'])} fail=0" in res.stdout


def test_phe_decrypts_the_frozen_vectors():
    p, q = gen_vectors.fixture_primes()
    n = int(E2E_VECTORS["n"], 16)
    assert p * q == n
    sk = phe_paillier.PaillierPrivateKey(phe_paillier.PaillierPublicKey(n), p, q)
    for v in E2E_VECTORS["e2e_frames"]:
        plain = sk.raw_decrypt(int(v["ciphertext"], 16))
        assert packing.unpack_sum(plain, 1) == (v["fields"]["billing_wh"], v["fields"]["analytics_wh"])


def test_micropython_ciphertexts_with_urandom_decrypt_with_phe():
    pub, sk = phe_paillier.generate_paillier_keypair(n_length=2048)
    hs = pow(pow(-12345, 2, pub.n) * -1 % pub.n, pub.n, pub.nsquare)
    cases = [(0, 0), (1234, -56), (2**32 - 1, 2**31 - 1), (77, -(2**31))]
    script = (f"from protocol import paillier\nn={pub.n}\nhs={hs}\nnsq=n*n\n"
              f"for b, a in {cases!r}:\n"
              f"    o = paillier.Obfuscator(hs, n, 1024)\n"
              f"    while not o.step(8):\n        pass\n"
              f"    print('C', paillier.encrypt(n, paillier.pack(b, a), o.value()))\n")
    res = _mpy(script)
    assert res.returncode == 0, res.stdout + res.stderr
    cts = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("C ")]
    assert len(cts) == len(cases) and len(set(cts)) == len(cases)  # fresh randomness every time
    assert [packing.unpack_sum(sk.raw_decrypt(c), 1) for c in cts] == cases


def test_obfuscator_steps_agree_with_pow_and_bound_the_work():
    n = int(E2E_VECTORS["n"], 16)
    hs, nsq = int(E2E_VECTORS["hs"], 16), n * n
    o = paillier.Obfuscator(hs, n, 512)
    a = o.a
    steps = 0
    while not o.step(5):
        steps += 1
    assert o.value() == pow(hs, a, nsq)
    assert steps == 512 // 5  # 103 calls: 102 not done, the last one finishes
    with pytest.raises(ValueError):
        paillier.Obfuscator(hs, n, 128)  # below the 2 x 112-bit floor
    with pytest.raises(ValueError):
        paillier.Obfuscator(hs, n, 512).value()


def test_pack_is_the_one_layout_the_host_uses():
    assert packing.pack(5, -3) == paillier.pack(5, -3)
    assert (packing.SLOT_BITS, packing.VALUE_BITS) == (paillier.SLOT_BITS, paillier.VALUE_BITS)
    with pytest.raises(packing.PackingError):
        packing.pack(-1, 0)
    with pytest.raises(ValueError):
        paillier.pack(0, 2**31)


def test_household_copy_is_bound_to_its_meter_counter_and_interval():
    v = E2E_VECTORS["e2e_frames"][0]
    blob = bytes.fromhex(v["frame"])
    hdr = frame.parse_header(blob)
    _meta, _c, hh = opener.split_e2e(blob, hdr["body_len"])
    hk = e2e.household_keys(bytes.fromhex(E2E_VECTORS["household_key"]))
    args = [hdr["meter_id"], hdr["counter"], hdr["interval_start"], hdr["interval_len"]]
    assert household.open_copy(hk, hh, *args)["billing_wh"] == v["fields"]["billing_wh"]
    from meterveil.protocol import errors
    for i, bad in ((1, hdr["counter"] + 1), (2, hdr["interval_start"] + 900)):
        moved = list(args)
        moved[i] = bad
        with pytest.raises(errors.BadTag):
            household.open_copy(hk, hh, *moved)
