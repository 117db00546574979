# Packed Paillier plaintexts and encryption under the utility's public key, for the meter
# (MicroPython) and the host (CPython). Integer arithmetic only; randomness from os.urandom.
#
# Layout (the one place it is defined; host/common/packing.py imports it):
#   plain = billing_wh + ((analytics_wh + ANALYTICS_OFFSET) << SLOT_BITS)
# Widths and why they never carry between slots: docs/ENCRYPTION.md "One plaintext per reading".
#
# Encryption is the Damgard-Jurik-Nielsen short-exponent form with g = n + 1 (as phe):
#   c = (1 + m*n) * hs^a mod n^2,  hs = h^n mod n^2 published with the public key,
#   a uniform in [0, 2^exp_bits), exp_bits = bits(n) / 2 by default.
# phe's PaillierPrivateKey decrypts the result. The assumption this rests on is stated in
# protocol/SPEC.md ("End-to-end mode"). `Obfuscator` computes hs^a in bounded steps so a meter
# can spread one exponentiation over many ADC blocks instead of stalling sampling.
# Only the per-reading layout is here (what the meter needs); the widths of sums and masks derive
# from it in host/common/packing.py. Few public names: each costs a meter qstr in RAM.
import os

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

VALUE_BITS = const(32)
SLOT_BITS = const(256)
ANALYTICS_OFFSET = 1 << 31  # 2^(VALUE_BITS - 1): analytics may be negative (not const: above a 32-bit small int)
_MIN_EXP_BITS = const(224)  # 2 x 112-bit security: generic attacks on a short exponent cost 2^(l/2)


def pack(billing_wh, analytics_wh):
    # One plaintext per reading. ValueError (a plain one: MicroPython has no host error classes)
    # when a value does not fit its slot.
    if not 0 <= billing_wh < (1 << VALUE_BITS):
        raise ValueError("billing_wh %d outside [0, 2**%d)" % (billing_wh, VALUE_BITS))
    if not -ANALYTICS_OFFSET <= analytics_wh < ANALYTICS_OFFSET:
        raise ValueError("analytics_wh %d outside [-2**%d, 2**%d)" % (analytics_wh, VALUE_BITS - 1,
                                                                        VALUE_BITS - 1))
    return billing_wh + ((analytics_wh + ANALYTICS_OFFSET) << SLOT_BITS)


def nsq_len(n):
    # Byte length of a ciphertext mod n^2 on the wire (fixed per key: sizes reveal nothing): twice
    # the bytes of n, counted in hex digits (MicroPython ints have no bit_length()).
    return 2 * ((len("%x" % n) + 1) // 2)


def draw_exponent(exp_bits, rand=os.urandom):
    # Uniform in [0, 2^exp_bits) from `rand(nbytes)`: os.urandom (the hardware RNG on ESP32/RP2040)
    # or the meter's DRBG seeded from it.
    nbytes = (exp_bits + 7) // 8
    a = int.from_bytes(rand(nbytes), "big")
    extra = nbytes * 8 - exp_bits
    return a >> extra if extra else a


class Obfuscator:
    # hs^a mod n^2 by left-to-right square-and-multiply, `step(bits)` bits at a time: each call
    # costs at most 2 * bits modular multiplications, so the caller bounds the work per call.
    # Numbers mod n^2 are kept as two base-n digits (x0 + x1*n, each < n): a product then needs
    # blocks of 2*bits(n) bits, never 4*bits(n), which a fragmented 64 KB heap still has (a 1 KB
    # block for a 4096-bit product often is not there), and it costs fewer digit operations.
    # The exponent is forgotten as it is consumed (`a` shrinks to what is left).
    def __init__(self, hs, n, exp_bits, a=None):
        if exp_bits < _MIN_EXP_BITS:
            raise ValueError("exp_bits below %d" % _MIN_EXP_BITS)
        self.n = n
        self.h = (hs % n, hs // n)
        self.left = exp_bits   # exponent bits still to process
        self.a = draw_exponent(exp_bits) if a is None else a
        self.x = (1, 0)

    def done(self):
        return self.left == 0

    def step(self, bits):
        n = self.n
        x0, x1 = self.x
        h0, h1 = self.h
        a = self.a
        k = bits if bits < self.left else self.left
        left = self.left
        for _ in range(k):
            left -= 1
            # (x0 + x1 n)^2 = x0^2 + 2 x0 x1 n  (mod n^2)
            q, r = divmod(x0 * x0, n)
            x1 = (q + 2 * x0 * x1) % n
            x0 = r
            if (a >> left) & 1:
                # (x0 + x1 n)(h0 + h1 n) = x0 h0 + (x0 h1 + x1 h0) n  (mod n^2)
                q, r = divmod(x0 * h0, n)
                x1 = (q + x0 * h1 + x1 * h0) % n
                x0 = r
        self.x = (x0, x1)
        self.left = left
        self.a = a & ((1 << left) - 1)
        return left == 0

    def value(self):
        if self.left:
            raise ValueError("obfuscator not finished")
        return self.x[0] + self.x[1] * self.n


def encrypt(n, m, rho):
    # Paillier with g = n + 1: (1 + m*n) * rho mod n^2, rho an n-th residue (here hs^a).
    # In base-n digits rho = r0 + r1*n: (1 + m n)(r0 + r1 n) = r0 + (r1 + m r0) n  (mod n^2),
    # so no number above 2*bits(n) + bits(m) bits is formed.
    if not 0 <= m < n:
        raise ValueError("plaintext outside [0, n)")
    r1, r0 = divmod(rho, n)
    return r0 + (r1 + m * r0) % n * n


def obfuscator_now(hs, n, exp_bits, a=None):
    # One obfuscator in a single call (host side, tests, vectors).
    o = Obfuscator(hs, n, exp_bits, a)
    o.step(exp_bits)
    return o.value()
