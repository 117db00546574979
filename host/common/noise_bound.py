"""The largest DP noise share a meter's sampler draws, except with negligible probability.

Why one function: the gateway accepts a MACed reading's analytics value only within
[-B, clamp_wh + B], so a compromised meter moves a feeder sum no further than an honest share could;
the bound must follow the sampler (firmware/meter/privacy.py) exactly, and changes with it. Here
because the gateway may not import the back office; host/backoffice/dp.py re-exports it.

Sampler: one meter's share is N_Z(0, v), a discrete Gaussian, with v its provisioned share variance
(dp.share_variance) or, without one, ``fallback_share_variance`` below, which is never smaller
(tests/test_dp.py). N_Z(0, v) is subgaussian with variance proxy v (Canonne, Kamath, Steinke 2020),
so P(|S| > t) <= 2 exp(-t^2 / 2v); B = ceil(sqrt(2 v ln(2 / tail))) for the fallback variance covers
both (about 7.4 standard deviations at tail 1e-12).

Interface: ``noise_share_bound(epsilon_milli, clamp_wh, m, tail=SHARE_TAIL, interval_s=900) -> int``,
``fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s=900) -> int`` (the same integers as
the firmware), ``share_tail_bound(share_var, tail) -> int``, ``analytics_value_bounds(...) -> (lo, hi)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

# An honest share falls outside [-B, B] with probability at most this (per reading).
SHARE_TAIL = 1e-12
_DELTA_LN_FP = 13815510557964  # ln(1e6) * 1e12 rounded down (smaller ln(1/delta): more noise)
_FP = 10 ** 12


def fallback_share_variance(epsilon_milli: int, clamp_wh: int, m: int, interval_s: int = 900) -> int:
    """rho-zCDP calibration of a household-day (86400 / interval_s readings, each moved by up to
    clamp_wh), rho = (sqrt(L + eps) - sqrt(L))^2, L = ln(1e6), in integers; divided among m shares."""
    n = 86400 // interval_s
    a = math.isqrt((_DELTA_LN_FP + epsilon_milli * 10 ** 9) * _FP)
    b = math.isqrt(_DELTA_LN_FP * _FP) + 1
    root = a - b
    num = n * clamp_wh * clamp_wh * _FP * _FP
    den = 2 * root * root * m
    return -(-num // den)


def share_tail_bound(share_var: int, tail: float = SHARE_TAIL) -> int:
    """B with P(|N_Z(0, v)| > B) <= tail."""
    return math.ceil(math.sqrt(2 * share_var * math.log(2 / tail)))


@lru_cache(maxsize=256)
def noise_share_bound(epsilon_milli: int, clamp_wh: int, m: int, tail: float = SHARE_TAIL,
                      interval_s: int = 900) -> int:
    """Smallest-known B (Wh) with P(|share| > B) <= `tail` for a meter configured with
    (epsilon_milli, clamp_wh, m), whichever of its two variances it runs."""
    if epsilon_milli <= 0 or clamp_wh <= 0 or m < 1:
        raise ValueError("need epsilon_milli > 0, clamp_wh > 0 and m >= 1")
    if not 0 < tail < 1:
        raise ValueError("tail must be in (0, 1)")
    if interval_s <= 0 or 86400 % interval_s:
        interval_s = 900
    return share_tail_bound(fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s), tail)


def analytics_value_bounds(epsilon_milli: int, clamp_wh: int, m: int, interval_s: int = 900,
                           tail: float = SHARE_TAIL) -> tuple[int, int]:
    """(lo, hi): the analytics values a reading frame with these DP parameters may carry."""
    b = noise_share_bound(epsilon_milli, clamp_wh, m, tail, interval_s)
    return -b, clamp_wh + b
