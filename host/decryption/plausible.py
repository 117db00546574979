"""Physical plausibility of decrypted sums: the range checks the gateway cannot do in end-to-end mode.

Why here: a proxy-mode gateway sees each reading and refuses one above what the meter's rated current
can draw in its interval. An end-to-end meter's value reaches nobody before the decryption role, so a
compromised (or broken) meter could otherwise inflate or deflate a bill or a feeder sum at will. The
role compares each decrypted sum with what could physically produce it (a bill: the meter's rated current
over the billing period; a feeder sum: its readings' clamp plus the noise bound) and refuses (and
audits) anything outside; it learns nothing new by doing so (it has just decrypted the sum).

What this cannot catch: a meter that lies *within* its physical range (under-reporting, or shifting
energy between intervals of one bill). That is a metrology and tamper-evidence problem (docs/PRIVACY.md,
threat model), not one any encryption layer can solve.
"""

from __future__ import annotations

from typing import Any

from meterveil.host.common.noise_bound import fallback_share_variance, share_tail_bound
from meterveil.host.common.registry import rated_max_wh


def bill_problem(total_wh: int, period_s: int, attributes: dict[str, Any]) -> str | None:
    """None, or why `total_wh` in a billing period of `period_s` seconds is impossible for this meter.

    The bound is the whole period at the rated current, not readings x interval: a bill is checked as
    the household's sum, and back-office tools may store one reading per longer span."""
    limit = rated_max_wh(attributes, period_s)
    if total_wh < 0 or total_wh > limit:
        return f"more than the {int(limit)} Wh the meter's rated current can draw in the period"
    return None


def feeder_problem(analytics_sum_wh: int, readings: int, epsilon_milli: int, clamp_wh: int, m: int,
                   interval_s: int = 900) -> str | None:
    """None, or why a feeder's DP analytics sum of `readings` clamped-and-noised values is impossible.

    The noise of the sum is the sum of the readings' shares, subgaussian with the summed variance, so
    the tail is bounded once for the sum (not reading by reading: that would hand one lying meter the
    slack of every honest reading in the cell). The variance is the fallback one, never below a
    meter's provisioned one (host/common/noise_bound.py)."""
    if interval_s <= 0 or 86400 % interval_s:
        interval_s = 900  # as noise_share_bound: the meters' calibration assumes whole days of intervals
    t = share_tail_bound(max(1, readings) * fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s))
    lo, hi = -t, readings * clamp_wh + t
    if not lo <= analytics_sum_wh <= hi:
        return f"outside [{lo}, {hi}] Wh for {readings} readings clamped at {clamp_wh} Wh plus noise"
    return None
