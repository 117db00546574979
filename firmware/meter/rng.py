# SHA-256 deterministic random bit generator for IVs and DP noise. The hardware source is read
# once per boot (os.urandom; on rp2 before MicroPython 1.28 that is a ring-oscillator bit through
# an 8-bit LFSR, biased and correlated) and conditioned with SHA-256 together with values that
# never repeat on this meter (unique id, boot count): outputs are then distinct across boots even
# if the source is weak, and unpredictable as long as the seed holds enough entropy.
# Construction: key K = SHA256(label | source | seed); output block i = SHA256(K | 0x00 | i);
# after every request K = SHA256(K | 0x01), so a later heap dump does not reveal earlier outputs.
# Module-level state (one generator per meter): no class or instance on a 64 KB heap.
# MicroPython and CPython.
import hashlib
import os

_k = b""
_i = 0


def seed(extra, source=None):
    global _k, _i
    _k = hashlib.sha256(b"meterveil/v1/drbg" + (source or os.urandom)(32) + extra).digest()
    _i = 0


def take(n):
    # n random bytes (n <= 64 in one call suffices for IVs and noise draws).
    global _k, _i
    out = b""
    while len(out) < n:
        _i += 1
        h = hashlib.sha256(_k)
        h.update(b"\x00" + _i.to_bytes(8, "big"))
        out += h.digest()
    _k = hashlib.sha256(_k + b"\x01").digest()
    return out[:n]
