"""Every encryption strategy yields ciphertexts phe's private key decrypts and that add homomorphically."""

from __future__ import annotations

import gmpy2
import pytest
from phe import paillier

from meterveil.host.backoffice.aggregate import hom_sum
from meterveil.host.common import packing
from meterveil.host.gateway.encryptor import (
    STRATEGIES,
    DJNTable,
    ObfuscatorPool,
    ReadingEncryptor,
    full_obfuscator,
    make_encryptor,
)

PUB, PRIV = paillier.generate_paillier_keypair(n_length=1024)
READINGS = [(0, 0), (123, -45), (4000, 1500), (17, -900), ((1 << 32) - 1, packing.ANALYTICS_OFFSET - 1)]


def _decrypt_pair(enc: ReadingEncryptor, cts: tuple[int, ...], count: int) -> tuple[int, int]:
    if enc.packed:
        assert len(cts) == 1
        return packing.unpack_sum(PRIV.raw_decrypt(cts[0]), count)
    assert len(cts) == 2
    return (PRIV.decrypt(paillier.EncryptedNumber(PUB, cts[0], 0)),
            PRIV.decrypt(paillier.EncryptedNumber(PUB, cts[1], 0)))


@pytest.fixture(params=STRATEGIES)
def encryptor(request):
    enc = make_encryptor(request.param, PUB, pool_size=8)
    yield enc
    enc.close()


def test_each_reading_decrypts_with_phe(encryptor):
    for b, a in READINGS:
        assert _decrypt_pair(encryptor, encryptor.encrypt_reading(b, a), 1) == (b, a)


def test_sums_add_homomorphically_with_phe_encrypted_numbers(encryptor):
    cts = [encryptor.encrypt_reading(b, a) for b, a in READINGS[:4]]
    want = (sum(b for b, _ in READINGS[:4]), sum(a for _, a in READINGS[:4]))
    slots = len(cts[0])
    sums = [sum((paillier.EncryptedNumber(PUB, c[i], 0) for c in cts[1:]),
                paillier.EncryptedNumber(PUB, cts[0][i], 0)) for i in range(slots)]
    if encryptor.packed:
        assert packing.unpack_sum(PRIV.raw_decrypt(sums[0].ciphertext(be_secure=False)), len(cts)) == want
        assert PRIV.raw_decrypt(hom_sum([c[0] for c in cts], PUB.nsquare)) == sum(packing.pack(b, a) for b, a in READINGS[:4])
    else:
        assert (PRIV.decrypt(sums[0]), PRIV.decrypt(sums[1])) == want


def test_encryptions_of_the_same_value_differ(encryptor):
    seen = {encryptor.encrypt_reading(100, 7) for _ in range(6)}
    assert len(seen) == 6
    for cts in seen:
        assert _decrypt_pair(encryptor, cts, 1) == (100, 7)


def test_djn_table_matches_powmod_and_is_an_nth_residue():
    table = DJNTable(PUB, exp_bits=200, window=5)
    for a in (0, 1, 31, 32, (1 << 200) - 1, 123456789 << 100):
        assert table.power(a) == gmpy2.powmod(table.hs, a, PUB.nsquare)
    # hs^a is an n-th residue: it encrypts 0
    assert PRIV.raw_decrypt(int(table.obfuscator())) == 0
    assert table.exp_bits == 200
    assert DJNTable(PUB).exp_bits == PUB.n.bit_length() // 2
    with pytest.raises(ValueError):
        DJNTable(PUB, exp_bits=64)


def test_pool_hands_out_each_value_once_and_counts_misses():
    pool = ObfuscatorPool(full_obfuscator(PUB), size=4, start=False)
    got = [pool.get() for _ in range(3)]
    assert pool.misses == 3 and pool.hits == 0 and len(set(got)) == 3
    pool = ObfuscatorPool(full_obfuscator(PUB), size=4)
    try:
        values = [pool.get() for _ in range(12)]
        assert len(set(values)) == 12 and pool.hits + pool.misses == 12
        assert all(PRIV.raw_decrypt(int(v)) == 0 for v in values[:3])
    finally:
        pool.close()


def test_plaintext_outside_range_and_unknown_strategy_raise():
    enc = make_encryptor("djn+packed", PUB, exp_bits=256)
    with pytest.raises(ValueError):
        enc.encrypt_plain(PUB.n)
    with pytest.raises(ValueError):
        enc.encrypt_plain(-1)
    with pytest.raises(packing.PackingError):
        enc.encrypt_reading(-1, 0)
    with pytest.raises(ValueError):
        make_encryptor("rot13", PUB)
