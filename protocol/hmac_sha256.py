# HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869), written once for both runtimes:
# MicroPython has hashlib.sha256 but no hmac module. Checked against RFC 4231 / RFC 5869
# vectors on both runtimes (protocol/vectors.json).
import hashlib

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_BLOCK = const(64)


def hmac_sha256(key, msg):
    # Keys longer than a block are hashed first (RFC 2104); the core lives in frame.py so a
    # meter can seal without loading this module. One implementation for both runtimes.
    from .frame import _hmac
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    return _hmac(key, msg)


def hkdf_sha256(ikm, salt, info, length):
    if length > 255 * 32:
        raise ValueError("hkdf length too large")
    prk = hmac_sha256(salt if salt else bytes(32), ikm)
    okm = b""
    block = b""
    i = 1
    while len(okm) < length:
        block = hmac_sha256(prk, block + info + bytes((i,)))
        okm += block
        i += 1
    return okm[:length]


try:  # CPython: the C implementation is constant time by contract
    from hmac import compare_digest as _compare
except ImportError:  # MicroPython: no hmac module
    _compare = None


def ct_equal(a, b):
    # Constant-time comparison: the time depends on the length only, never on where bytes differ.
    if _compare is not None:
        return _compare(bytes(a), bytes(b))
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0
