"""Correctly sealed reading frames for load tests, made in a pool of processes.

Why CPython and a pool: the load generator must outpace a gateway worker, and one process sealing
(AES-CBC + HMAC, ~50 us a frame) would be the bottleneck before the gateway is. Frames are sealed
with each meter's real key from the gateway's keys folder, so the gateway opens and checks them
exactly as it would a meter's.

Counters are ``interval_start // 900``: unique per interval and rising. IVs come from os.urandom as
on a meter, so a second run over the same intervals sends other bytes under stored counters: the
gateway rejects those as ``counter_reuse`` (what a cloned meter looks like), and stores nothing twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from meterveil.protocol import frame

INTERVAL_S = 900


@dataclass(frozen=True)
class MeterSpec:
    """What sealing needs of one meter (its master key, DP parameters); picklable for the pool."""

    meter_id: str
    key: bytes
    epsilon_milli: int
    clamp_wh: int
    m: int


def billing_wh(meter_id: str, interval_start: int) -> int:
    """A deterministic, plausible consumption (Wh per 15 min): the same on every run, so a test or
    benchmark can compute the truth without keeping what was sent."""
    h = hashlib.sha256(f"{meter_id}:{interval_start}".encode()).digest()
    base = 40 + (interval_start // 3600 % 24 in range(18, 23)) * 120  # evening peak
    return base + h[0] % 80


def seal_interval(meters: list[MeterSpec], interval_start: int) -> list[tuple[str, bytes]]:
    """(topic, sealed frame) of every meter's reading for one interval."""
    out = []
    for spec in meters:
        keys = frame.derive_keys(spec.key)
        wh = billing_wh(spec.meter_id, interval_start)
        header = {"kind": frame.KIND_READING, "meter_id": spec.meter_id, "counter": interval_start // INTERVAL_S,
                  "interval_start": interval_start, "interval_len": INTERVAL_S,
                  "epsilon_milli": spec.epsilon_milli, "clamp_wh": spec.clamp_wh, "m": spec.m}
        fields = {"billing_wh": wh, "analytics_wh": min(wh, spec.clamp_wh), "flags": 0, "samples": INTERVAL_S,
                  "clipped": 0, "missing_s": 0}
        out.append((frame.topic(spec.meter_id, "reading"), frame.seal(keys, header, fields)))
    return out


def _chunk(args: tuple[list[MeterSpec], int]) -> list[tuple[str, bytes]]:
    return seal_interval(*args)


def sealed_frames(meters: list[MeterSpec], first_interval: int, intervals: int, *, processes: int | None = None,
                  chunk_meters: int = 500) -> Iterator[list[tuple[str, bytes]]]:
    """Chunks of sealed frames in time order (interval by interval, meters in chunks of
    ``chunk_meters``), sealed ahead by ``processes`` worker processes."""
    tasks = ((meters[i:i + chunk_meters], first_interval + k * INTERVAL_S)
             for k in range(intervals) for i in range(0, len(meters), chunk_meters))
    workers = processes or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # map() would submit everything at once; a bounded look-ahead keeps memory flat for big runs
        pending = []
        for t in tasks:
            pending.append(pool.submit(_chunk, t))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()
