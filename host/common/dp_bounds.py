"""What a MACed reading frame's analytics value may be, from its DP header alone (no key, no numpy).

Why in common/: the gateway checks frames against it and may not import the back office; the back
office (dp.py) re-exports it. A meter adds N_Z(0, v) to its clamped reading, with v its provisioned
share variance or, without one, the fallback below; the fallback is never smaller than the tight
calibration (tests/test_dp.py), so bounds computed from it cover both.

Interface: ``fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s=900) -> int`` (the same
integers as firmware/meter/privacy.py), ``share_tail_bound(share_var, p=1e-12) -> int``,
``analytics_value_bounds(epsilon_milli, clamp_wh, m, interval_s=900, p=1e-12) -> (lo, hi)``.
"""

from __future__ import annotations

import math

SHARE_TAIL_P = 1e-12
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


def share_tail_bound(share_var: int, p: float = SHARE_TAIL_P) -> int:
    """B with P(|N_Z(0, v)| > B) <= p: N_Z(0, v) is subgaussian with variance proxy v (Canonne, Kamath,
    Steinke 2020), so P(|X| > t) <= 2 exp(-t^2 / 2v)."""
    return math.ceil(math.sqrt(2 * share_var * math.log(2 / p)))


def analytics_value_bounds(epsilon_milli: int, clamp_wh: int, m: int, interval_s: int = 900,
                           p: float = SHARE_TAIL_P) -> tuple[int, int]:
    """(lo, hi): the analytics values a reading frame with these DP parameters may carry: clamp plus the
    largest share the meter's sampler draws with probability above p (1e-12)."""
    b = share_tail_bound(fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s), p)
    return -b, clamp_wh + b
