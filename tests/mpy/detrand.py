# Deterministic rand_bytes for fixed-answer tests on MicroPython and CPython: SHA-256 in counter
# mode over a seed. Same seed -> same byte stream on both runtimes. Not for production use.
import hashlib


class CounterRandom:
    def __init__(self, seed):
        if isinstance(seed, str):
            seed = seed.encode()
        self.seed = seed
        self.ctr = 0
        self.buf = b""
        self.pos = 0
        self.used = 0

    def __call__(self, n):
        out = b""
        while n > 0:
            if self.pos >= len(self.buf):
                self.buf = hashlib.sha256(self.seed + self.ctr.to_bytes(8, "big")).digest()
                self.ctr += 1
                self.pos = 0
            take = min(n, len(self.buf) - self.pos)
            out += self.buf[self.pos:self.pos + take]
            self.pos += take
            n -= take
        self.used += len(out)
        return out
