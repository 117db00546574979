"""What the decryption role may release: the policy parameters and the refusal type.

Why apart from the role: the numbers (k_min, bands, re-bill distance, budget) are what an operator
configures and an auditor reads; the role (role.py) applies them with the ledger (ledger.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meterveil.host.common.registry import MeterRegistry

DEFAULT_K_MIN = 5
DEFAULT_MAX_BANDS = 6
DEFAULT_GAMMA = 0.2  # fraction of a feeder's meters assumed colluding (or dummies)
DEFAULT_DAILY_BUDGET_MILLI = 1000  # epsilon per household-day, at DEFAULT_DELTA
DEFAULT_DELTA = 1e-6
DEFAULT_RELEASE_S = 3600  # hourly feeder sums; 900 releases every interval
# Bills: interim bills only over [period start, cut) with cuts on these local days of the month (any
# set >= 7 days apart, the last >= 7 days before any month's end, is accepted).
DEFAULT_CUT_DAYS = (15,)  # semi-monthly: a weekday-only band still falls on >= 9 days per half
MIN_SEGMENT_DAYS = 7  # a band must fall on >= this many local days in every difference of two bills
DEFAULT_MIN_BAND_READINGS = 24  # readings per band per bill and per difference: 6 hours, a day of tou3 off-peak


class PolicyError(ValueError):
    """A query the decryption role will not run at all (malformed, not a whole billing period, ...)."""


@dataclass(frozen=True)
class Policy:
    k_min: int = DEFAULT_K_MIN
    feeder_m: Mapping[str, int] = field(default_factory=dict)  # provisioned m per feeder
    max_bands: int = DEFAULT_MAX_BANDS
    # epsilon per household-day (milli); None = the one in the ledger, else DEFAULT_DAILY_BUDGET_MILLI
    daily_budget_milli: int | None = None
    delta: float = DEFAULT_DELTA
    gamma: float = DEFAULT_GAMMA
    feeder_gamma: Mapping[str, float] = field(default_factory=dict)  # per-feeder override of gamma
    release_s: int = DEFAULT_RELEASE_S
    cut_days: tuple[int, ...] = DEFAULT_CUT_DAYS
    min_band_readings: int = DEFAULT_MIN_BAND_READINGS

    def __post_init__(self) -> None:
        if self.k_min < 2:
            raise PolicyError(f"k_min must be at least 2, got {self.k_min}")
        for g in (self.gamma, *self.feeder_gamma.values()):
            if not 0 <= g < 1:
                raise PolicyError(f"gamma must be in [0, 1), got {g}")
        if self.release_s not in (900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400):
            raise PolicyError(f"release_s must divide a day into whole intervals, got {self.release_s}")
        cuts = sorted(self.cut_days)
        if any(b - a < MIN_SEGMENT_DAYS for a, b in zip([1, *cuts], cuts, strict=False)) or (cuts and cuts[-1] > 29 - MIN_SEGMENT_DAYS):
            raise PolicyError(f"cut days {self.cut_days} must be >= {MIN_SEGMENT_DAYS} days apart, from the "
                              f"1st and before the shortest month's end")
        if self.min_band_readings < 1:
            raise PolicyError(f"min_band_readings must be at least 1, got {self.min_band_readings}")

    def gamma_of(self, feeder: str) -> float:
        return self.feeder_gamma.get(feeder, self.gamma)

    @classmethod
    def from_registry(cls, registry: MeterRegistry, **kwargs: Any) -> Policy:
        """Per feeder, the largest m provisioned for any of its meters."""
        feeder_m: dict[str, int] = {}
        for rec in registry:
            feeder_m[rec.feeder] = max(feeder_m.get(rec.feeder, 0), rec.m)
        return cls(feeder_m=feeder_m, **kwargs)

    def required_m(self, feeder: str, carried_m: int) -> int:
        return max(self.k_min, self.feeder_m.get(feeder, 0), carried_m)
