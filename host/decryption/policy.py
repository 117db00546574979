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


class PolicyError(ValueError):
    """A query the decryption role will not run at all (malformed, not a whole billing period, ...)."""


@dataclass(frozen=True)
class Policy:
    k_min: int = DEFAULT_K_MIN
    feeder_m: Mapping[str, int] = field(default_factory=dict)  # provisioned m per feeder
    max_bands: int = DEFAULT_MAX_BANDS
    daily_budget_milli: int | None = None  # per feeder per UTC day; None = the one in the ledger
    # A household's period may be decrypted again only over the same readings (same value) or over
    # at least this many more: two bills that differ by a few readings would expose those readings
    # by difference. 96 = one day of 15-minute readings.
    rebill_min_new: int = 96

    def __post_init__(self) -> None:
        if self.k_min < 2:
            raise PolicyError(f"k_min must be at least 2, got {self.k_min}")
        if self.rebill_min_new < 1:
            raise PolicyError(f"rebill_min_new must be at least 1, got {self.rebill_min_new}")

    @classmethod
    def from_registry(cls, registry: MeterRegistry, **kwargs: Any) -> Policy:
        """Per feeder, the largest m provisioned for any of its meters."""
        feeder_m: dict[str, int] = {}
        for rec in registry:
            feeder_m[rec.feeder] = max(feeder_m.get(rec.feeder, 0), rec.m)
        return cls(feeder_m=feeder_m, **kwargs)

    def required_m(self, feeder: str, carried_m: int) -> int:
        return max(self.k_min, self.feeder_m.get(feeder, 0), carried_m)
