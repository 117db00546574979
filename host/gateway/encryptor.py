"""Fast Paillier encryption for the ingest path (raw gmpy2; ciphertexts phe's private key decrypts).

Why: phe's ``encrypt`` computes a fresh r^n mod n^2 per value (~110/s at 2048 bits); a head-end needs
>= 1,100 readings/s. Everything here uses g = n + 1, so Enc(m) = (1 + m*n) * rho mod n^2 with rho an
n-th residue, exactly as phe; ``PaillierPrivateKey.raw_decrypt`` / ``decrypt`` read the results.

Strategies (``make_encryptor(name, pub)``; see docs/ENCRYPTION.md for the assumptions and numbers):

- ``naive``:       phe ``encrypt`` per value, two ciphertexts per reading (billing, analytics). Baseline.
- ``packed``:      one plaintext per reading (packing.py), rho = r^n with r uniform in Z_n* (standard
                   Paillier; DCR assumption only).
- ``precomputed``: as packed, but r^n values are made ahead by a background thread into a bounded pool
                   (helps only when the gateway has idle time; the GIL means no parallelism).
- ``djn``:         Damgard-Jurik-Nielsen short-exponent obfuscator rho = hs^a, hs = h^n mod n^2 for a
                   random h = -x^2 mod n, a uniform of ``exp_bits`` bits (default n_bits/2, as Intel
                   IPCL), computed by fixed-base windowed exponentiation from a precomputed table;
                   two ciphertexts per reading. Extra assumption: stated in docs/ENCRYPTION.md.
- ``djn+packed``:  DJN obfuscator and packing: one cheap ciphertext per reading (the gateway default).

Interface (stable): ``make_encryptor(name, pub, **opts) -> ReadingEncryptor`` with
``.encrypt_reading(billing_wh, analytics_wh) -> tuple[int, ...]`` (1 ciphertext if ``.packed`` else 2),
``.encrypt_plain(plain) -> int`` (one value, 0 <= plain < n), ``.name``, ``.packed``, ``.close()``;
``DJNTable(pub, exp_bits=None, window=DEFAULT_WINDOW)``; ``ObfuscatorPool(source, size)``;.
"""

from __future__ import annotations

import collections
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz
from phe import paillier

from meterveil.host.common import packing

STRATEGIES = ("naive", "packed", "precomputed", "djn", "djn+packed")
PACKED_STRATEGIES = ("packed", "precomputed", "djn+packed")  # one ciphertext per reading: storable
DEFAULT_WINDOW = 10  # 2048-bit n, 1024-bit exponent: 103 mulmods per obfuscator, 52 MiB table


def full_obfuscator(pub: paillier.PaillierPublicKey) -> Callable[[], mpz]:
    """Standard Paillier randomiser r^n mod n^2, r uniform in [1, n)."""
    n, nsq = mpz(pub.n), mpz(pub.nsquare)

    def make() -> mpz:
        r = mpz(secrets.randbelow(pub.n - 1) + 1)
        return gmpy2.powmod(r, n, nsq)

    return make


class DJNTable:
    """Fixed-base table for hs^a, a uniform of exp_bits bits; ~ceil(exp_bits/window) mulmods per use.

    Why fixed-base: hs never changes, so all squarings can be precomputed once:
    row i holds hs^(d * 2^(window*i)) for every digit d. Memory: ceil(exp_bits/window) * 2^window
    values of 2*n_bits bits (2048-bit n, 1024-bit exponent, window 10: 103*1024*512 B = 52 MiB).
    """

    def __init__(self, pub: paillier.PaillierPublicKey, exp_bits: int | None = None,
                 window: int = DEFAULT_WINDOW, x: int | None = None):
        if not 1 <= window <= 12:
            raise ValueError("window must be 1..12")
        self.n, self.nsq = mpz(pub.n), mpz(pub.nsquare)
        self.exp_bits = int(exp_bits or pub.n.bit_length() // 2)
        if self.exp_bits < 128:
            raise ValueError("exp_bits below 128 gives no security margin")
        self.window = window
        while True:  # h = -x^2 mod n with x a unit (as DJN 2010 and IPCL)
            xx = mpz(x if x is not None else secrets.randbelow(pub.n - 2) + 2)
            if gmpy2.gcd(xx, self.n) == 1:
                break
            x = None
        h = (-xx * xx) % self.n
        self.hs = gmpy2.powmod(h, self.n, self.nsq)
        self._mask = (1 << window) - 1
        chunks = -(-self.exp_bits // window)
        table: list[list[mpz]] = []
        base = self.hs
        for _ in range(chunks):
            row = [mpz(1), base]
            for _d in range(2, 1 << window):
                row.append(row[-1] * base % self.nsq)
            table.append(row)
            base = row[-1] * base % self.nsq
        self._table = table

    def power(self, a: int) -> mpz:
        """hs^a mod n^2 for 0 <= a < 2**exp_bits."""
        nsq, mask, w = self.nsq, self._mask, self.window
        acc = mpz(1)
        for row in self._table:
            d = a & mask
            a >>= w
            if d:
                acc = acc * row[d] % nsq
        return acc

    def obfuscator(self) -> mpz:
        return self.power(secrets.randbits(self.exp_bits))


class ObfuscatorPool:
    """Bounded pool of ready obfuscators filled by a daemon thread; each value is handed out once.

    Why bounded and counted: memory stays fixed, and ``misses`` (computed inline because the pool
    was empty) shows when the precomputation cannot keep up.
    """

    def __init__(self, source: Callable[[], mpz], size: int = 1024, start: bool = True):
        self._source = source
        self._pool: collections.deque[mpz] = collections.deque()
        self.size = size
        self.hits = 0
        self.misses = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._fill, name="obfuscator-pool", daemon=True)
        if start:
            self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._cv:
                while not self._stop and len(self._pool) >= self.size:
                    self._cv.wait()
                if self._stop:
                    return
            value = self._source()
            with self._cv:
                self._pool.append(value)

    def get(self) -> mpz:
        with self._cv:
            if self._pool:
                self.hits += 1
                value = self._pool.popleft()
                self._cv.notify()
                return value
            self.misses += 1
        return self._source()

    def __len__(self) -> int:
        return len(self._pool)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


@dataclass
class ReadingEncryptor:
    """Encrypts readings with one obfuscator source; packed -> 1 ciphertext, else 2 per reading."""

    name: str
    pub: paillier.PaillierPublicKey
    obfuscate: Callable[[], mpz] | None  # None: phe.encrypt (naive)
    packed: bool
    pool: ObfuscatorPool | None = None
    _n: mpz = field(init=False, repr=False)
    _nsq: mpz = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._n, self._nsq = mpz(self.pub.n), mpz(self.pub.nsquare)

    def encrypt_plain(self, plain: int) -> int:
        """Ciphertext of one plaintext in [0, n) (negatives: pass plain % n, as phe encodes them)."""
        if not 0 <= plain < self.pub.n:
            raise ValueError("plaintext outside [0, n)")
        if self.obfuscate is None:
            return self.pub.raw_encrypt(int(plain))
        nude = (1 + self._n * plain) % self._nsq
        return int(nude * self.obfuscate() % self._nsq)

    def encrypt_reading(self, billing_wh: int, analytics_wh: int) -> tuple[int, ...]:
        if self.packed:
            return (self.encrypt_plain(packing.pack(billing_wh, analytics_wh)),)
        if self.obfuscate is None:
            return (self.pub.encrypt(billing_wh).ciphertext(be_secure=False),
                    self.pub.encrypt(analytics_wh).ciphertext(be_secure=False))
        n = self.pub.n
        return (self.encrypt_plain(billing_wh % n), self.encrypt_plain(analytics_wh % n))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def make_encryptor(name: str, pub: paillier.PaillierPublicKey, *, exp_bits: int | None = None,
                   window: int = DEFAULT_WINDOW, pool_size: int = 1024) -> ReadingEncryptor:
    """Build one of STRATEGIES. ``exp_bits``/``window`` tune DJN; ``pool_size`` the precomputed pool."""
    if name == "naive":
        return ReadingEncryptor(name, pub, None, packed=False)
    if name == "packed":
        return ReadingEncryptor(name, pub, full_obfuscator(pub), packed=True)
    if name == "precomputed":
        pool = ObfuscatorPool(full_obfuscator(pub), size=pool_size)
        return ReadingEncryptor(name, pub, pool.get, packed=True, pool=pool)
    if name in ("djn", "djn+packed"):
        table = DJNTable(pub, exp_bits=exp_bits, window=window)
        return ReadingEncryptor(name, pub, table.obfuscator, packed=name == "djn+packed")
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
