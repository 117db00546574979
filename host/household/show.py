"""Open a household's own copies from the store: the exact interval energy its meter sealed for it.

Why apart from billing: the utility's path reveals only billing-period sums; this is the household reading
its own 15-minute data, with a key only it (and its meter) holds. A copy whose tag does not verify is
reported, never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meterveil.host.household.card import HouseholdCard
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, Store
from meterveil.protocol import e2e, household
from meterveil.protocol import errors as frame_errors


@dataclass(frozen=True)
class HouseholdInterval:
    meter_id: str
    counter: int
    interval_start: int
    interval_len: int
    energy_wh: int
    flags: int
    missing_s: int


@dataclass
class OpenReport:
    intervals: list[HouseholdInterval]
    unreadable: int  # rows of this meter without a copy that opens with this card (proxy rows, other key)


def household_intervals(card: HouseholdCard, store: Store, t_from: int | None = None,
                        t_to: int | None = None) -> OpenReport:
    keys = e2e.household_keys(card.key)
    out: list[HouseholdInterval] = []
    bad = 0
    for r in _rows(store, card.meter_id, t_from, t_to):
        if r.scheme != SCHEME_PACKED_E2E_V1 or not r.household:
            bad += 1
            continue
        try:
            got = household.open_copy(keys, r.household, r.meter_id, r.counter, r.interval_start, r.interval_len)
        except frame_errors.FrameError:
            bad += 1
            continue
        out.append(HouseholdInterval(r.meter_id, r.counter, r.interval_start, r.interval_len, got["billing_wh"],
                                     got["flags"], got["missing_s"]))
    return OpenReport(out, bad)


def _rows(store: Store, meter_id: str, t_from: int | None, t_to: int | None) -> Iterator:
    return store.iter_readings(meter_id=meter_id, t_from=t_from, t_to=t_to)
