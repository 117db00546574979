"""Differential-privacy maths and the privacy-spend ledger on the host side.

Why here and not in the decryption role: the role enforces policy; this module
says what a release costs and what it guarantees, from the DP parameters every stored reading
carries (epsilon_milli, clamp_wh, m). docs/PRIVACY.md explains the numbers.

Mechanism (firmware/meter/privacy.py): with a = exp(-epsilon / clamp_wh), every meter adds
NB(1/m, a) - NB(1/m, a). The sum of n such shares is NB(n/m, a) - NB(n/m, a) (Polya difference):
exactly discrete Laplace DL(a) when n = m, DL plus extra noise when n > m, and *less* than DL when
n < m (then the guarantee weakens; `effective_epsilon` measures by how much). One reading changes a
feeder sum by at most clamp_wh, so a released sum is epsilon-DP for that reading (event level).

Interface:
- ``dl_a``, ``dl_variance``, ``dl_mean_abs``, ``share_variance``, ``sum_variance``, ``local_variance``,
  ``share_zero_probability``: closed forms.
- ``polya_difference_pmf(r, a, half_width)``, ``effective_epsilon(epsilon, clamp_wh, m, n)``: exact pmf
  of the sum of n shares and its pure-DP privacy loss.
- ``compose(epsilon, k, delta)`` -> Composition (basic, advanced, zCDP) over k readings;
  ``READINGS_PER_DAY``.
- the largest share an honest meter draws (the gateway's bound on analytics values) is
  ``meterveil.host.common.noise_bound.noise_share_bound``: it follows this mechanism, change both together.
- ``ledger(conn, ..., released=...)`` -> list[FeederDay]: per feeder per UTC day, what the stored
  readings would cost if released ("collected") and what releases spent ("released", folded from the
  decryption role's signed audit log by ``meterveil.host.audit.ledger``).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass

import numpy as np

INTERVAL_S = 900
READINGS_PER_DAY = 86400 // INTERVAL_S  # 96
DEFAULT_DELTA = 1e-6
MAX_PMF_WIDTH = 4_000_000


# -- closed forms -----------------------------------------------------------------------------------
def dl_a(epsilon: float, clamp_wh: int) -> float:
    """Discrete Laplace parameter a = exp(-epsilon / clamp_wh)."""
    if epsilon <= 0 or clamp_wh <= 0:
        raise ValueError("epsilon and clamp_wh must be positive")
    return math.exp(-epsilon / clamp_wh)


def dl_variance(epsilon: float, clamp_wh: int) -> float:
    """Variance of DL(a): 2a / (1-a)^2 (Wh^2)."""
    a = dl_a(epsilon, clamp_wh)
    return 2 * a / (-math.expm1(-epsilon / clamp_wh)) ** 2


def dl_mean_abs(epsilon: float, clamp_wh: int) -> float:
    """E|X| of DL(a): 2a / ((1-a)(1+a)) (Wh)."""
    a = dl_a(epsilon, clamp_wh)
    return 2 * a / ((-math.expm1(-epsilon / clamp_wh)) * (1 + a))


def share_variance(epsilon: float, clamp_wh: int, m: int) -> float:
    """Variance of one meter's share NB(1/m) - NB(1/m): the DL variance divided by m."""
    return dl_variance(epsilon, clamp_wh) / m


def sum_variance(epsilon: float, clamp_wh: int, m: int, n: int) -> float:
    """Variance of the sum of n shares calibrated for m: (n/m) times the DL variance."""
    return n * share_variance(epsilon, clamp_wh, m)


def local_variance(epsilon: float, clamp_wh: int, n: int) -> float:
    """Variance of the sum when each of n meters adds a full DL draw (plain local DP)."""
    return n * dl_variance(epsilon, clamp_wh)


def share_zero_probability(epsilon: float, clamp_wh: int, m: int) -> float:
    """Lower bound on P(share == 0): both NB(1/m) draws are 0, probability (1-a)^(2/m).

    Why it matters: a single meter's analytics value equals its exact (clamped) reading with at least
    this probability, so one meter's value must never be released; only sums over >= m meters are.
    """
    return math.exp((2.0 / m) * math.log(-math.expm1(-epsilon / clamp_wh)))


# -- exact pmf and privacy loss of a sum of shares ------------------------------------------------
def polya_difference_pmf(r: float, a: float, half_width: int) -> np.ndarray:
    """pmf of NB(r, a) - NB(r, a) on [-half_width, half_width] (index half_width is 0).

    NB(r, a) has pmf c_k (1-a)^r a^k with c_k = Gamma(k+r) / (Gamma(r) k!); the difference is the
    autocorrelation of u_k = c_k a^k, computed by FFT over a support wide enough that the truncated
    tail mass is below 1e-12 of the total.
    """
    if r <= 0 or not 0 < a < 1:
        raise ValueError("need r > 0 and 0 < a < 1")
    scale = 1.0 / (1.0 - a)
    k_max = int(half_width + 30 * scale * max(1.0, r) + 64)
    if k_max > MAX_PMF_WIDTH:
        raise ValueError(f"support {k_max} too wide (clamp_wh/epsilon too large for the exact pmf)")
    k = np.arange(k_max, dtype=np.float64)
    step = np.log((k[1:] - 1 + r) / k[1:])
    log_c = np.concatenate(([0.0], np.cumsum(step)))
    log_u = log_c + k * math.log(a)
    u = np.exp(log_u - log_u.max())
    size = 1 << int(math.ceil(math.log2(2 * k_max)))
    f = np.fft.rfft(u, size)
    corr = np.fft.irfft(f * np.conj(f), size)[: half_width + 1]  # corr[z] = sum_y u[z+y] u[y]
    pos = np.maximum(corr, 0.0) / u.sum() ** 2  # sum over all z of corr[z] is (sum u)^2
    return np.concatenate((pos[:0:-1], pos))


def effective_epsilon(epsilon: float, clamp_wh: int, m: int, n: int) -> float:
    """Pure-DP privacy loss of one reading in a sum of n shares calibrated for m contributors.

    For n >= m the sum is DL(a) plus independent noise, so the loss is at most epsilon (returned
    exactly). For n < m it is max_z ln P(z) / P(z + clamp_wh) of the Polya difference with r = n/m,
    evaluated numerically over the central region where the pmf is accurate (the pmf is symmetric
    and decreasing in |z|, so the worst shift is the full clamp away from the mode; in the tails the
    ratio tends to epsilon).
    """
    if n >= m:
        return float(epsilon)
    if n < 1:
        return math.inf
    a = dl_a(epsilon, clamp_wh)
    scale = 1.0 / (1.0 - a)
    width = int(clamp_wh + 8 * scale) + 1
    pmf = polya_difference_pmf(n / m, a, width)[width:]  # z >= 0
    ok = pmf > pmf[0] * 1e-9
    z = np.arange(len(pmf) - clamp_wh)
    good = ok[z + clamp_wh]
    with np.errstate(divide="ignore"):
        ratio = np.log(pmf[z[good]]) - np.log(pmf[z[good] + clamp_wh])
    return float(max(epsilon, ratio.max()))


# -- composition ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Composition:
    """Privacy of k epsilon-DP releases about the same household (sequential composition)."""

    epsilon: float
    k: int
    delta: float
    basic: float  # pure k*epsilon
    advanced: float  # (advanced, delta): best of Dwork-Rothblum-Vadhan and zCDP conversion, <= basic

    def as_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "k": self.k, "delta": self.delta, "basic": self.basic,
                "advanced": self.advanced}


def compose(epsilon: float, k: int, delta: float = DEFAULT_DELTA) -> Composition:
    """Basic (pure) and advanced ((eps, delta)) composition of k epsilon-DP mechanisms.

    DRV 2010: eps' = eps sqrt(2k ln(1/delta)) + k eps (e^eps - 1). zCDP (Bun-Steinke 2016): pure eps
    implies eps^2/2-zCDP; k-fold gives rho = k eps^2/2 and (rho + 2 sqrt(rho ln(1/delta)), delta)-DP.
    """
    if k < 0 or not 0 < delta < 1:
        raise ValueError("need k >= 0 and 0 < delta < 1")
    basic = k * epsilon
    drv = epsilon * math.sqrt(2 * k * math.log(1 / delta)) + k * epsilon * math.expm1(epsilon)
    rho = k * epsilon * epsilon / 2
    zcdp = rho + 2 * math.sqrt(rho * math.log(1 / delta))
    return Composition(epsilon, k, delta, basic, min(basic, drv, zcdp))


# -- the ledger ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeederDay:
    """Privacy spend of one feeder on one UTC day.

    collected_epsilon: what releasing every stored interval would cost the most exposed household
    (max over meters of the sum of its readings' epsilon); released_epsilon: what the decryption
    role has spent (sum of released intervals' epsilon, each household contributes once per interval).
    """

    feeder: str
    day: str
    meters: int
    readings: int
    intervals: int
    epsilon_values: tuple[float, ...]
    m_max: int
    intervals_below_m: int  # intervals with fewer distinct contributors than m: refused if queried
    min_contributors: int
    collected_epsilon: float
    released_intervals: int
    released_epsilon: float
    daily_budget: float | None

    @property
    def remaining(self) -> float | None:
        return None if self.daily_budget is None else self.daily_budget - self.released_epsilon

    def as_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["epsilon_values"] = list(self.epsilon_values)
        d["remaining"] = self.remaining
        return d


_DAY = "date(interval_start, 'unixepoch')"


def ledger(conn: sqlite3.Connection, *, feeder: str | None = None, daily_budget: float | None = None,
           released: dict[tuple[str, str], tuple[int, float]] | None = None) -> list[FeederDay]:
    """Per feeder per UTC day spend, from the readings' DP parameters and `released`
    ((feeder, day) -> (intervals, epsilon), folded from the decryption role's audit log)."""
    where, args = ("WHERE feeder=?", (feeder,)) if feeder else ("", ())
    base = {}
    for f, day, meters, readings, intervals, eps_list, m_max in conn.execute(
        f"SELECT feeder, {_DAY}, COUNT(DISTINCT meter_id), COUNT(*), COUNT(DISTINCT interval_start), "
        f"GROUP_CONCAT(DISTINCT epsilon_milli), MAX(m) FROM readings {where} GROUP BY 1, 2 ORDER BY 1, 2", args):
        base[(f, day)] = [meters, readings, intervals,
                          tuple(sorted(int(x) / 1000 for x in str(eps_list).split(","))), int(m_max)]
    collected = {}
    for f, day, spend in conn.execute(
        f"SELECT feeder, day, MAX(s) FROM (SELECT feeder, {_DAY} AS day, meter_id, SUM(epsilon_milli) AS s "
        f"FROM readings {where} GROUP BY 1, 2, 3) GROUP BY 1, 2", args):
        collected[(f, day)] = int(spend) / 1000
    below: dict[tuple[str, str], list[int]] = {}
    for f, day, contributors, m in conn.execute(
        f"SELECT feeder, {_DAY}, COUNT(DISTINCT meter_id), MAX(m) FROM readings {where} "
        "GROUP BY feeder, interval_start", args):
        b = below.setdefault((f, day), [0, 1 << 30])
        b[0] += int(contributors < m)
        b[1] = min(b[1], int(contributors))
    released = {k: v for k, v in (released or {}).items() if feeder is None or k[0] == feeder}
    out = []
    for key in sorted(set(base) | set(released)):
        meters, readings, intervals, eps, m_max = base.get(key, [0, 0, 0, (), 0])
        n_rel, s_rel = released.get(key, (0, 0.0))
        b = below.get(key, [0, 0])
        out.append(FeederDay(feeder=key[0], day=key[1], meters=meters, readings=readings, intervals=intervals,
                             epsilon_values=eps, m_max=m_max, intervals_below_m=b[0], min_contributors=b[1],
                             collected_epsilon=collected.get(key, 0.0), released_intervals=n_rel,
                             released_epsilon=s_rel, daily_budget=daily_budget))
    return out
