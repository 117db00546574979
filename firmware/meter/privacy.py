# Firmware side of the DP design (ARCHITECTURE.md "Two values per reading"): clamp the reading and
# add an integer distributed noise share. MicroPython and CPython, same numbers for the same bytes.
#
# Interface (docs/CONTRACTS.md, refined):
#   noise_share(epsilon_milli, clamp_wh, m, rand_bytes=None) -> int
#       rand_bytes(n) -> n random bytes (default os.urandom). Bad parameters raise
#       PrivacyParamError (reason "bad_dp_params", .field names the parameter).
#   analytics_value(energy_wh, clamp_wh, noise) -> int    clamp(energy, 0, clamp_wh) + noise
#   is_clamped(energy_wh, clamp_wh) -> bool                 for FLAG_CLAMPED
#   DailySpend(): .record(t_s, epsilon_milli), .today(t_s) -> (spend_milli, readings)
#
# Construction (FIELD-NOTES "Distributed DP noise"): with a = exp(-epsilon/clamp_wh) the target is
# discrete Laplace DL(a), P(k) = (1-a)/(1+a) a^|k|, the difference of two geometric variables
# NB(1, a). NB is infinitely divisible, so each meter adds NB(1/m, a) - NB(1/m, a) and any m
# shares sum to exactly DL(a); k >= m shares sum to DL plus extra independent noise. NB(1/m, a) is
# compound Poisson: N ~ Poisson(-ln(1-a)/m) logarithmic(a) variates (Kemp's LK algorithm).
#
# The gateway rejects an analytics value beyond clamp + the 1e-12 quantile of this share
# (host/common/noise_bound.py): a new sampler needs a new bound there.
#
# Floats: the samplers need exp/log; they only shape the noise distribution and never touch the
# reading. Uniforms come from 64 random bits kept as (hi, lo) so that both U and 1-U, and ln U,
# keep full relative precision even in float32 (tails reach 2**-64, i.e. ~44 noise scales, instead
# of 2**-24); 1-exp(-x) and ln(1-x) use cancellation-free forms because a = exp(-eps/clamp) is
# within 1e-3 of 1 for typical parameters. What float32 leaves is a relative pmf error ~1e-6, not
# data-dependent: the statistical test on the unix port checks the result against the exact pmf.
import math

_TWO32 = 4294967296.0
_LN2 = 0.6931471805599453


class PrivacyParamError(ValueError):
    reason = "bad_dp_params"

    def __init__(self, field, msg):
        super().__init__(field + ": " + msg)
        self.field = field


def _check(field, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int):
        raise PrivacyParamError(field, "not an integer")
    if not (lo <= v <= hi):
        raise PrivacyParamError(field, "out of range [%d, %d]" % (lo, hi))


def _expm1(x):
    # exp(x) - 1 without cancellation for small |x| (Kahan's trick; works in any precision).
    u = math.exp(x)
    if u == 1.0:
        return x
    um1 = u - 1.0
    if um1 == -1.0:
        return -1.0
    return um1 * x / math.log(u)


def _log1p(x):
    # ln(1 + x) without cancellation for small |x| (Goldberg's trick).
    u = 1.0 + x
    if u == 1.0:
        return x
    return math.log(u) * x / (u - 1.0)


def _u32(rb):
    b = rb(4)
    return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


def _uniform64(rb):
    # -> (V, 1 - V, ln V) for V uniform on (0, 1) with 64 bits, each to full relative precision.
    hi = _u32(rb)
    lo = _u32(rb)
    v = (hi + (lo + 0.5) / _TWO32) / _TWO32
    w = ((0xFFFFFFFF - hi) + (0xFFFFFFFF - lo + 0.5) / _TWO32) / _TWO32
    if hi:
        lnv = math.log(hi + (lo + 0.5) / _TWO32) - 32 * _LN2
    else:
        lnv = math.log(lo + 0.5) - 64 * _LN2
    return v, w, lnv


def _poisson(lam, rb):
    # Count unit-rate arrivals in [0, lam]: expected lam + 1 uniforms; lam is a few at most here.
    n = 0
    s = -_uniform64(rb)[2]
    while s <= lam:
        n += 1
        s -= _uniform64(rb)[2]
    return n


def _logarithmic(r, q1, rb):
    # Kemp's LK algorithm for P(k) = -a^k / (k ln(1-a)), k >= 1; q1 = 1 - a, r = ln(1 - a).
    v, w, lnv = _uniform64(rb)
    if w <= q1:          # V >= a, tested on the complement so 1 - a keeps its precision
        return 1
    ru = r * ((_u32(rb) + 0.5) / _TWO32)
    q = -_expm1(ru)      # 1 - exp(r U)
    if v <= q * q:
        lnq = _log1p(-math.exp(ru))
        return 1 + int(math.floor(lnv / lnq))
    if v >= q:
        return 1
    return 2


def _neg_binomial(lam, r, q1, rb):
    # NB(1/m, a) as compound Poisson: Poisson(-ln(1-a)/m) logarithmic(a) variates.
    k = 0
    for _ in range(_poisson(lam, rb)):
        k += _logarithmic(r, q1, rb)
    return k


def dl_param(epsilon_milli, clamp_wh):
    # -> (1 - a, ln(1 - a)) for a = exp(-epsilon/clamp), both without cancellation.
    q1 = -_expm1(-epsilon_milli / (1000.0 * clamp_wh))
    return q1, math.log(q1)


def noise_share(epsilon_milli, clamp_wh, m, rand_bytes=None):
    # One meter's share: Polya difference NB(1/m, a) - NB(1/m, a), an integer, symmetric about 0.
    _check("epsilon_milli", epsilon_milli, 1, 65535)  # u16 on the wire, as config.py and the registry say
    _check("clamp_wh", clamp_wh, 1, 1000000)
    _check("m", m, 1, 65535)
    if rand_bytes is None:
        import os
        rand_bytes = os.urandom
    q1, r = dl_param(epsilon_milli, clamp_wh)
    lam = -r / m
    return _neg_binomial(lam, r, q1, rand_bytes) - _neg_binomial(lam, r, q1, rand_bytes)


def is_clamped(energy_wh, clamp_wh):
    return energy_wh < 0 or energy_wh > clamp_wh


def analytics_value(energy_wh, clamp_wh, noise):
    # Clamping bounds one reading's influence on any sum (the DP sensitivity) by clamp_wh.
    if energy_wh < 0:
        energy_wh = 0
    elif energy_wh > clamp_wh:
        energy_wh = clamp_wh
    return energy_wh + noise


class DailySpend:
    # Privacy spend of the current UTC day for the status frame: each reading costs epsilon
    # (event-level, one reading changed by up to clamp_wh); a day of readings composes to the sum.
    def __init__(self, day=-1, spend_milli=0, readings=0):
        self.day = day
        self.spend_milli = spend_milli
        self.readings = readings

    def record(self, t_s, epsilon_milli):
        self._roll(t_s)
        self.spend_milli += epsilon_milli
        self.readings += 1

    def today(self, t_s):
        self._roll(t_s)
        return self.spend_milli, self.readings

    def _roll(self, t_s):
        d = int(t_s) // 86400
        if d != self.day:
            self.day = d
            self.spend_milli = 0
            self.readings = 0
