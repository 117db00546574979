"""The largest DP noise share a meter's sampler draws, except with negligible probability.

Why one function: the gateway accepts a MACed reading's analytics value only within
[-B, clamp_wh + B], so a compromised meter moves a feeder sum no further than an honest share could;
the bound must follow the sampler (firmware/meter/privacy.py) exactly, and changes with it.

Sampler: one meter's share is S = X - Y with X, Y independent NB(r, a), r = 1/m, a = exp(-eps/clamp)
(host/backoffice/dp.py). For r <= 1 the NB pmf ratio p(k+1)/p(k) = a (k + r)/(k + 1) is at most a,
so for every B and y >= 0: P(X > B + y) <= a^y P(X > B), and P(X > B) <= p(B+1) / (1 - a). Hence
P(S > B) = E[P(X > B + Y)] <= P(X > B) E[a^Y] = P(X > B) (1 + a)^-r (the NB generating function at a),
and by symmetry P(|S| > B) <= 2 p(B+1) (1 + a)^-r / (1 - a). The bound is the smallest B where this
is at most SHARE_TAIL; the geometric step is tight within a few per cent at B of ~28 noise scales, so B
sits within a fraction of one scale (clamp/eps) of the exact quantile.
"""

from __future__ import annotations

import math
from functools import lru_cache

# An honest share falls outside [-B, B] with probability at most this (per reading).
SHARE_TAIL = 1e-12


def _log_tail_bound(b: int, r: float, log_a: float, log_q: float) -> float:
    """ln of 2 p(b+1) (1+a)^-r / (1-a) for NB(r, a); log_q = ln(1 - a)."""
    k = b + 1
    log_pk = math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * log_q + k * log_a
    return math.log(2.0) + log_pk - r * math.log1p(math.exp(log_a)) - log_q


@lru_cache(maxsize=256)
def noise_share_bound(epsilon_milli: int, clamp_wh: int, m: int, tail: float = SHARE_TAIL) -> int:
    """Smallest B (Wh) with P(|share| > B) <= `tail` for a meter configured with (epsilon_milli, clamp_wh, m)."""
    if epsilon_milli <= 0 or clamp_wh <= 0 or m < 1:
        raise ValueError("need epsilon_milli > 0, clamp_wh > 0 and m >= 1")
    if not 0 < tail < 1:
        raise ValueError("tail must be in (0, 1)")
    r = 1.0 / m
    log_a = -epsilon_milli / (1000.0 * clamp_wh)
    log_q = math.log(-math.expm1(log_a))
    target = math.log(tail)
    if _log_tail_bound(0, r, log_a, log_q) <= target:
        return 0
    lo, hi = 0, 1  # invariant: bound(lo) > target; the pmf decreases, so the bound does too
    while _log_tail_bound(hi, r, log_a, log_q) > target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _log_tail_bound(mid, r, log_a, log_q) > target:
            lo = mid
        else:
            hi = mid
    return hi
