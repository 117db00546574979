"""Homomorphic sums over stored ciphertexts: feeder x interval, and household x band x billing period.

Why raw gmpy2: adding Paillier plaintexts is multiplying ciphertexts mod n^2. Doing that on the
stored ints with gmpy2 avoids building phe EncryptedNumber objects (and their re-obfuscation) and
is about twice as fast (measured: ~200k additions/s raw vs ~120k with phe objects). Nothing here
needs or sees the secret key; the sums are handed to the decryption role (host/decryption/role.py),
which masks and decrypts under policy.

Each sum keeps the metadata the policy needs in clear: how many readings, which meters (by id and
frame counter, to detect a changed contributor set), the DP parameters carried by the readings.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import gmpy2

from meterveil.host.store.base import SUMMABLE_SCHEMES, StoredReading


class AggregateError(ValueError):
    """Readings that cannot be summed together (unknown scheme, ciphertext out of range)."""


def hom_sum(ciphertexts: Iterable[int], nsquare: int) -> int:
    """Product of raw ciphertexts mod n^2, i.e. the ciphertext of the plaintext sum.

    The empty product is 1, a valid (non-random) encryption of 0.
    """
    nsq = gmpy2.mpz(nsquare)
    acc = gmpy2.mpz(1)
    for c in ciphertexts:
        acc = gmpy2.f_mod(acc * c, nsq)
    return int(acc)


def _check(r: StoredReading, nsquare: int) -> None:
    if r.scheme not in SUMMABLE_SCHEMES:
        raise AggregateError(f"reading {r.meter_id}#{r.counter}: unsupported scheme {r.scheme!r}")
    if not 0 < r.ciphertext < nsquare:
        raise AggregateError(f"reading {r.meter_id}#{r.counter}: ciphertext not in (0, n^2): wrong key?")


def contributor_digest(members: Iterable[tuple[str, int]]) -> str:
    """SHA-256 over the sorted (meter_id, counter) pairs: identifies exactly which readings were summed."""
    h = hashlib.sha256()
    for meter_id, counter in sorted(members):
        h.update(f"{meter_id}:{counter}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class FeederCell:
    """Encrypted sum of all readings of one feeder whose intervals start in one release cell
    [interval_start, interval_start + interval_len): one 15-minute interval, or an hour of them."""

    feeder: str
    interval_start: int
    interval_len: int  # the cell's length (release granularity)
    ciphertext: int = field(repr=False)
    readings: int
    contributors: int  # distinct meters
    max_per_meter: int  # most readings of one meter for one interval: > 1 means counted twice
    dp_params: tuple[tuple[int, int, int], ...]  # distinct (epsilon_milli, clamp_wh, m) seen
    members_digest: str
    reading_len: int = 900  # the readings' interval length (one value per cell, else `mixed_lengths`)
    mixed_lengths: bool = False

    @property
    def epsilon_milli(self) -> int:
        return self.dp_params[0][0]

    @property
    def clamp_wh(self) -> int:
        return self.dp_params[0][1]

    @property
    def m(self) -> int:
        return max(p[2] for p in self.dp_params)

    @property
    def intervals(self) -> int:
        """Readings one meter contributes to the cell at most: the cell's sensitivity in clamps."""
        return max(1, self.interval_len // self.reading_len)


@dataclass(frozen=True)
class BandCell:
    """Encrypted sum of one household's readings in one tariff band of one billing period."""

    band: str
    ciphertext: int = field(repr=False)
    readings: int


@dataclass(frozen=True)
class HouseholdSums:
    """One household's band sums for one period, plus coverage metadata (all in clear, none sensitive)."""

    meter_id: str
    t_from: int
    t_to: int
    bands: dict[str, BandCell]
    readings: int
    present_intervals: int  # distinct interval starts present
    interval_len: int  # most common interval length of this meter's readings (900 if none)
    members_digest: str = ""  # which readings were summed (contributor_digest of (meter, counter))
    straddling: int = 0  # readings whose interval crosses a band or period boundary (cannot be billed)


def feeder_sums(readings: Iterable[StoredReading], nsquare: int, cell_s: int | None = None) -> list[FeederCell]:
    """Group readings by (feeder, release cell) and sum each group; sorted by feeder, cell.

    cell_s None: one cell per interval start (the readings' own length); else cells of cell_s
    seconds aligned to the epoch (3600: hourly sums, one decryption for the hour's intervals)."""
    groups: dict[tuple[str, int], list[StoredReading]] = {}
    for r in readings:
        _check(r, nsquare)
        start = r.interval_start if cell_s is None else r.interval_start - r.interval_start % cell_s
        groups.setdefault((r.feeder, start), []).append(r)
    out = []
    for (feeder, start), rs in sorted(groups.items()):
        per_meter = Counter(r.meter_id for r in rs)
        per_interval = Counter((r.meter_id, r.interval_start) for r in rs)
        lens = Counter(r.interval_len for r in rs)
        reading_len = lens.most_common(1)[0][0]
        out.append(FeederCell(
            feeder=feeder, interval_start=start, interval_len=reading_len if cell_s is None else cell_s,
            ciphertext=hom_sum((r.ciphertext for r in rs), nsquare), readings=len(rs),
            contributors=len(per_meter), max_per_meter=max(per_interval.values()),
            dp_params=tuple(sorted({(r.epsilon_milli, r.clamp_wh, r.m) for r in rs})),
            members_digest=contributor_digest((r.meter_id, r.counter) for r in rs),
            reading_len=reading_len, mixed_lengths=len(lens) > 1 or (cell_s is not None and cell_s % reading_len != 0),
        ))
    return out


def billing_sums(
    readings: Iterable[StoredReading], nsquare: int, band_of: Callable[[int], str], t_from: int, t_to: int,
    meter_ids: Iterable[str] = (),
) -> dict[str, HouseholdSums]:
    """`iter_billing_sums` gathered into {meter_id: sums} (tests, small stores)."""
    return {hs.meter_id: hs for hs in iter_billing_sums(readings, nsquare, band_of, t_from, t_to, meter_ids)}


def iter_billing_sums(
    readings: Iterable[StoredReading], nsquare: int, band_of: Callable[[int], str], t_from: int, t_to: int,
    meter_ids: Iterable[str] = (),
) -> Iterator[HouseholdSums]:
    """Per household, per band: the sum of readings whose interval starts in [t_from, t_to), one
    household at a time in meter id order.

    Why a stream: `readings` must come ordered by meter id (``store.iter_readings(order="meter")``),
    so only the running sums of the current meter are held and each household is yielded as soon as
    its last reading has gone by; memory does not grow with the readings (a month of 15-minute
    readings of 100,000 meters is 288 M rows). Readings out of meter order raise AggregateError.

    `band_of` maps a time to its band (Tariff.band_of; cached per distinct interval). A reading is
    billed in one band as a whole, so one whose last second falls in another band or after the
    period (an hourly reading under a tariff in a UTC+5:30 zone) is not summed but counted in
    `straddling`: the decryption role refuses such a household rather than bill it in the wrong band.
    Households in `meter_ids` without readings get empty sums, so they are billed and flagged too.
    """
    band_cache: dict[tuple[int, int], str | None] = {}
    wanted = iter(sorted(set(meter_ids)))
    pending = next(wanted, None)
    current: _MeterSums | None = None
    nsq = gmpy2.mpz(nsquare)
    for r in readings:
        if current is None or r.meter_id != current.meter_id:
            if current is not None:
                if r.meter_id < current.meter_id:
                    raise AggregateError(f"readings not ordered by meter: {r.meter_id!r} after "
                                         f"{current.meter_id!r} (stream them with order='meter')")
                yield current.result(t_from, t_to)
            while pending is not None and pending < r.meter_id:  # households without readings
                yield _MeterSums(pending).result(t_from, t_to)
                pending = next(wanted, None)
            if pending == r.meter_id:
                pending = next(wanted, None)
            current = _MeterSums(r.meter_id)
        if not t_from <= r.interval_start < t_to:
            raise AggregateError(f"reading {r.meter_id}#{r.counter} at {r.interval_start} is outside the period")
        _check(r, nsquare)
        span = (r.interval_start, r.interval_len)
        if span not in band_cache:
            last = r.interval_start + r.interval_len - 1
            first_band = band_of(r.interval_start)
            band_cache[span] = first_band if last < t_to and band_of(last) == first_band else None
        band = band_cache[span]
        if band is None:
            current.straddling += 1
            continue
        current.counters.append(r.counter)
        cell = current.bands.setdefault(band, [gmpy2.mpz(1), 0])
        cell[0] = gmpy2.f_mod(cell[0] * r.ciphertext, nsq)
        cell[1] += 1
        current.intervals.add(r.interval_start)
        current.lens[r.interval_len] += 1
    if current is not None:
        yield current.result(t_from, t_to)
    while pending is not None:
        yield _MeterSums(pending).result(t_from, t_to)
        pending = next(wanted, None)


@dataclass
class _MeterSums:
    """Running sums of the one household `iter_billing_sums` is reading."""

    meter_id: str
    bands: dict[str, list] = field(default_factory=dict)  # band -> [ciphertext product, count]
    counters: array = field(default_factory=lambda: array("q"))
    intervals: set[int] = field(default_factory=set)
    lens: Counter[int] = field(default_factory=Counter)
    straddling: int = 0

    def result(self, t_from: int, t_to: int) -> HouseholdSums:
        cells = {b: BandCell(b, int(c), n) for b, (c, n) in self.bands.items()}
        return HouseholdSums(
            meter_id=self.meter_id, t_from=t_from, t_to=t_to, bands=cells,
            readings=sum(c.readings for c in cells.values()),
            present_intervals=len(self.intervals),
            interval_len=self.lens.most_common(1)[0][0] if self.lens else 900,
            members_digest=contributor_digest((self.meter_id, c) for c in self.counters),
            straddling=self.straddling,
        )
