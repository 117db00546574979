"""Differential-privacy maths on the host: calibration, tight accounting per household-day, bounds.

Why here and not in the decryption role: the role enforces policy; this module says what a release
costs and what it guarantees, from the DP parameters every stored reading carries (epsilon_milli,
clamp_wh, m). docs/PRIVACY.md states the guarantee in words.

Unit of privacy: the household-day. Two datasets are neighbours if one household's readings of one
UTC day differ arbitrarily; each reading is clamped to [0, clamp_wh] on the meter and a meter seals
one reading per interval, so the day moves the day's interval sums by at most clamp_wh each (L2
sensitivity sqrt(96) clamp_wh over a day of 15-minute intervals). Any release built from those sums
(hourly sums, daily totals) is post-processing of them, so an hour costs what its four quarters cost.

Mechanism (firmware/meter/privacy.py): every meter adds N_Z(0, v) (discrete Gaussian) to each clamped
reading, v = ceil(V / m) where V is the smallest integer variance of one interval sum that makes a
household-day (epsilon, delta)-DP. A sum over h honest meters carries noise N_Z(0, h v) up to a
divergence tau(v, h) (Kairouz, Liu, Steinke 2021, sums of discrete Gaussians), negligible for v >= 4.
With a fraction gamma of the feeder colluding (or dummy meters), their shares are known and only
the honest ones count: provisioning sets m = ceil((1 - gamma) n) so that honest shares still make V.

Accounting: privacy loss distributions of the discrete Gaussian (Google's dp-accounting), one per
released cell (k intervals summed, honest noise variance), composed over the cells of a day.

Interface:
- ``calibrate_total_variance(epsilon, clamp_wh, interval_s, delta)``, ``share_variance(...)`` (what
  provisioning writes into a meter's config as dp.noise_var), ``fallback_share_variance(...)`` (what
  a meter without dp.noise_var uses: never less noise), ``honest_m(n, gamma)``, ``colluders(n, gamma)``;
- ``household_day_epsilon(clamp_wh, cells, delta)`` with cells = [(intervals, noise_var)];
  ``day_epsilon(...)`` for a day of releases by parameters; ``zcdp_epsilon(...)`` (independent upper bound);
- the largest share an honest meter draws (the gateway's bound on analytics values) is
  ``meterveil.host.common.noise_bound.noise_share_bound``: it follows this mechanism, change both together;
- ``analytics_value_bounds(epsilon_milli, clamp_wh, m, interval_s)`` -> (lo, hi): the values a MACed
  reading frame may carry (clamp plus the largest share the sampler draws with probability above 1e-12);
  defined in meterveil.host.common.noise_bound so the gateway can use it, re-exported here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from meterveil.host.common.noise_bound import (  # noqa: F401 - re-exported: the frame bound lives in common
    SHARE_TAIL,
    analytics_value_bounds,
    fallback_share_variance,
    noise_share_bound,
    share_tail_bound,
)

INTERVAL_S = 900
READINGS_PER_DAY = 86400 // INTERVAL_S  # 96
DEFAULT_DELTA = 1e-6
DEFAULT_EPSILON_DAY = 1.0
DEFAULT_GAMMA = 0.2
PLD_DISCRETIZATION = 1e-4  # dp-accounting's pessimistic rounding of privacy-loss values
MAX_TAU = 1e-9  # sums of shares must be this close to one discrete Gaussian for the accounting to hold



def intervals_per_day(interval_s: int = INTERVAL_S) -> int:
    if interval_s <= 0 or 86400 % interval_s:
        raise ValueError(f"interval_s {interval_s} does not divide a day")
    return 86400 // interval_s


def honest_m(n: int, gamma: float = DEFAULT_GAMMA) -> int:
    """Shares a sum must hold from honest meters when gamma of n may collude: ceil((1 - gamma) n)."""
    if not 0 <= gamma < 1 or n < 1:
        raise ValueError("need n >= 1 and 0 <= gamma < 1")
    return max(1, math.ceil((1 - gamma) * n - 1e-9))


def colluders(n: int, gamma: float = DEFAULT_GAMMA) -> int:
    """How many of n meters the accounting assumes collude (their shares known): floor(gamma n)."""
    return math.floor(gamma * n + 1e-9)


# -- calibration -----------------------------------------------------------------------------------
def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_delta(sigma_over_sens: float, epsilon: float) -> float:
    """Exact delta(epsilon) of the continuous Gaussian mechanism (Balle and Wang 2018)."""
    s = sigma_over_sens
    return _phi(1 / (2 * s) - epsilon * s) - math.exp(epsilon) * _phi(-1 / (2 * s) - epsilon * s)


def gaussian_sigma(epsilon: float, delta: float) -> float:
    """Smallest sigma/sensitivity with gaussian_delta <= delta (bisection)."""
    lo, hi = 1e-3, 1e4
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gaussian_delta(mid, epsilon) > delta:
            lo = mid
        else:
            hi = mid
    return hi


SIGMA_EXACT = 200.0  # below: the discrete Gaussian's own PLD; above: the continuous surrogate
SURROGATE_MARGIN = 1.001  # discrete/continuous epsilon differ by < 4e-5 relative from sigma 43 on (tests)


@lru_cache(maxsize=256)
def _cell_pld(sigma: float, sensitivity: int):
    """PLD of one released cell. The discrete Gaussian's PLD costs time linear in sigma (seconds at
    the feeder scale); from SIGMA_EXACT on its privacy loss equals the continuous Gaussian's to
    < 4e-5 relative (tests/test_dp.py measures it), so the continuous one is used and the composed
    epsilon is multiplied by SURROGATE_MARGIN."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    if sigma < SIGMA_EXACT:
        return pld.from_discrete_gaussian_mechanism(sigma, sensitivity=sensitivity,
                                                    value_discretization_interval=PLD_DISCRETIZATION)
    return pld.from_gaussian_mechanism(sigma / sensitivity, sensitivity=1,
                                       value_discretization_interval=PLD_DISCRETIZATION)


def household_day_epsilon(clamp_wh: int, cells: Iterable[tuple[int, int]], delta: float = DEFAULT_DELTA) -> float:
    """epsilon at `delta` of one household-day over released cells [(intervals summed, noise variance
    of the cell from honest meters)], by PLD composition (dp-accounting, discrete Gaussian)."""
    counts = Counter((int(k), int(var)) for k, var in cells)
    if not counts:
        return 0.0
    total, margin = None, 1.0
    for (k, var), count in sorted(counts.items()):
        if var < 1:
            return math.inf
        if math.sqrt(var) >= SIGMA_EXACT:
            margin = SURROGATE_MARGIN
        p = _cell_pld(math.sqrt(var), k * clamp_wh).self_compose(count)
        total = p if total is None else total.compose(p)
    return margin * float(total.get_epsilon_for_delta(delta))


def zcdp_epsilon(clamp_wh: int, cells: Iterable[tuple[int, int]], delta: float = DEFAULT_DELTA) -> float:
    """Independent upper bound: discrete Gaussian is (sens^2 / 2 var)-zCDP (Canonne, Kamath, Steinke
    2020); rho adds up; rho-zCDP gives (rho + 2 sqrt(rho ln(1/delta)), delta)-DP."""
    rho = sum((k * clamp_wh) ** 2 / (2 * var) for k, var in cells)
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


@lru_cache(maxsize=256)
def calibrate_total_variance(epsilon: float, clamp_wh: int, interval_s: int = INTERVAL_S,
                             delta: float = DEFAULT_DELTA) -> int:
    """Smallest integer variance V (Wh^2) of one interval's noise such that releasing every interval
    sum of a household-day is (epsilon, delta)-DP by the PLD accountant (and so is any coarser
    release built from them, e.g. hourly sums)."""
    if epsilon <= 0 or clamp_wh < 1:
        raise ValueError("epsilon and clamp_wh must be positive")
    n = intervals_per_day(interval_s)
    ratio = gaussian_sigma(epsilon, delta)  # sigma / L2 sensitivity, continuous Gaussian
    var = math.ceil((ratio * clamp_wh) ** 2 * n)
    while household_day_epsilon(clamp_wh, [(1, var)] * n, delta) > epsilon:
        var = math.ceil(var * 1.002)  # dp-accounting rounds pessimistically: a few steps at most
    return var


def share_variance(epsilon: float, clamp_wh: int, m: int, interval_s: int = INTERVAL_S,
                   delta: float = DEFAULT_DELTA) -> int:
    """One meter's share variance v = ceil(V / m): m honest shares make at least V."""
    if m < 1:
        raise ValueError("m must be at least 1")
    return -(-calibrate_total_variance(epsilon, clamp_wh, interval_s, delta) // m)


def sum_tau(share_var: int, h: int) -> float:
    """KLS 2021: the sum of h N_Z(0, v) is within tau of N_Z(0, h v), tau = 10 sum_{k<h} e^{-2 pi^2 v k/(k+1)}."""
    return 10 * sum(math.exp(-2 * math.pi ** 2 * share_var * k / (k + 1)) for k in range(1, min(h, 64)))


# -- a day of releases by parameters --------------------------------------------------------------
@dataclass(frozen=True)
class DayCells:
    """Released cells of one feeder-day: per cell, intervals summed and honest shares (contributors
    minus assumed colluders)."""

    clamp_wh: int
    share_var: int
    cells: tuple[tuple[int, int], ...]  # (intervals, honest shares)

    def noise_cells(self) -> list[tuple[int, int]]:
        return [(k, k * h * self.share_var) for k, h in self.cells]


def day_epsilon(d: DayCells, delta: float = DEFAULT_DELTA) -> float:
    if any(h < 1 for _, h in d.cells):
        return math.inf
    if d.cells and sum_tau(d.share_var, max(h for _, h in d.cells)) > MAX_TAU:
        return math.inf  # shares too small for the sum to be a discrete Gaussian: no claim
    return household_day_epsilon(d.clamp_wh, d.noise_cells(), delta)
