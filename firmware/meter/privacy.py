# Firmware side of the DP design (docs/PRIVACY.md): clamp the reading (the per-household-day
# contribution bound) and add an integer noise share drawn exactly from a discrete Gaussian.
# MicroPython and CPython, same numbers for the same bytes; integers only (no float anywhere).
#
# Interface:
#   configure(cfg, interval_s)              once at boot: remembers cfg["noise_var"] (the share
#                                           variance provisioning computed with host/backoffice/dp.py)
#   share_variance(epsilon_milli, clamp_wh, m, interval_s=900) -> int   the configured variance for
#       these parameters, else a conservative fallback (zCDP calibration, never less noise)
#   noise_share(epsilon_milli, clamp_wh, m, rand_bytes=None) -> int
#       rand_bytes(n) -> n random bytes (default os.urandom). Bad parameters raise
#       PrivacyParamError (reason "bad_dp_params", .field names the parameter).
#   discrete_gaussian(v, rand_bytes) -> int  N_Z(0, v), v a positive integer (Wh^2)
#   analytics_value(energy_wh, clamp_wh, noise) -> int    clamp(energy, 0, clamp_wh) + noise
#   is_clamped(energy_wh, clamp_wh) -> bool                 for FLAG_CLAMPED
#   DailySpend(): .record(t_s, epsilon_milli), .today(t_s) -> (spend_milli, readings)
#
# Mechanism (distributed discrete Gaussian, Kairouz-Liu-Steinke 2021): every meter adds
# N_Z(0, v) to each clamped reading; a feeder sum over h honest meters carries noise ~ N_Z(0, h v).
# v is calibrated so that m honest shares make a household-day (every interval of one UTC day,
# each moved by up to clamp_wh) (epsilon, 1e-6)-DP; the host accounts what was actually released.
# Sampler: Canonne, Kamath, Steinke 2020, Algorithms 1-3, exact with integer arithmetic.
# The gateway rejects an analytics value beyond clamp + the 1e-12 quantile of this share
# (host/common/noise_bound.py): a new sampler needs a new bound there.

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


# -- exact uniform and Bernoulli draws from random bytes ------------------------------------------
def _below(n, rb):
    # Uniform integer in [0, n) by rejection on the smallest number of whole bytes (>= 1/2 accepted
    # after masking the top byte to the bit length of n - 1).
    top = n - 1
    nb = 0
    while top >> (8 * nb):
        nb += 1
    if nb == 0:
        return 0
    hb = top >> (8 * (nb - 1))
    mask = 1
    while mask <= hb:
        mask <<= 1
    mask -= 1
    while True:
        b = rb(nb)
        x = b[0] & mask
        for i in range(1, nb):
            x = (x << 8) | b[i]
        if x < n:
            return x


# Argument names reuse names the meter already interns (docs/FIRMWARE.md "Memory"): v/n is the ratio.
def _bern_exp1(v, n, rb):
    # Bernoulli(exp(-v/n)) for 0 <= v/n <= 1 (CKS Algorithm 1, first case): count k while a
    # Bernoulli(v/(n k)) draw succeeds; the parity of the final k is the answer.
    k = 1
    while _below(n * k, rb) < v:
        k += 1
    return k & 1


def _bern_exp(v, n, rb):
    # Bernoulli(exp(-v/n)) for any v/n >= 0 (CKS Algorithm 1).
    while v > n:
        if not _bern_exp1(1, 1, rb):
            return 0
        v -= n
    return _bern_exp1(v, n, rb)


def _discrete_laplace(t, rb):
    # P(x) proportional to exp(-|x|/t), t a positive integer (CKS Algorithm 2).
    while True:
        u = _below(t, rb)
        if not _bern_exp1(u, t, rb):
            continue
        v = 0
        while _bern_exp1(1, 1, rb):
            v += 1
        x = u + t * v
        if rb(1)[0] & 1:
            if x == 0:
                continue
            return -x
        return x


def _isqrt(n):
    # floor(sqrt(n)) for an integer n >= 0 (Newton; math.isqrt is missing on MicroPython).
    if n < 2:
        return n
    b = 0  # bit length of n
    while n >> b:
        b += 1
    x = 1 << ((b + 1) // 2)
    while True:
        y = (x + n // x) // 2
        if y >= x:
            return x
        x = y


def discrete_gaussian(v, rb):
    # N_Z(0, v): P(x) proportional to exp(-x^2 / (2 v)) (CKS Algorithm 3 with sigma^2 = v).
    t = _isqrt(v) + 1
    den = 2 * v * t * t
    while True:
        y = _discrete_laplace(t, rb)
        d = (y if y >= 0 else -y) * t - v
        if _bern_exp(d * d, den, rb):
            return y


# -- calibration ---------------------------------------------------------------------------------
_configured = {}


def configure(cfg, interval_s=900):
    # The share variance provisioning calibrated (dp.noise_var), keyed by the header parameters.
    # Without one, the conservative fallback is computed here, at boot, so that the app can drop
    # both functions afterwards (their bytecode is boot-only).
    v = cfg.get("noise_var")
    if v is not None:
        _check("noise_var", v, 1, 1 << 48)
    else:
        v = fallback_share_variance(cfg["epsilon_milli"], cfg["clamp_wh"], cfg["m"], interval_s)
    _configured[(cfg["epsilon_milli"], cfg["clamp_wh"], cfg["m"])] = v


def fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s=900):
    # Without a provisioned variance: rho-zCDP calibration, rho = (sqrt(L + eps) - sqrt(L))^2 with
    # L = ln(1/delta), which gives (eps, delta)-DP and always at least the tight (PLD) noise.
    # Sensitivity of a household-day: every interval moved by clamp_wh, L2^2 = n * clamp^2.
    # Fixed point 1e12; ln(1/delta) = ln(1e6) rounded down (a smaller one -> more noise). Literals
    # here rather than module constants: each module-level name is interned for good.
    n = 86400 // interval_s
    lnd = 13815510557964
    a = _isqrt((lnd + epsilon_milli * 10 ** 9) * 10 ** 12)
    b = _isqrt(lnd * 10 ** 12) + 1
    root = a - b  # sqrt(rho) * 1e12, rounded down
    num = n * clamp_wh * clamp_wh * 10 ** 24
    den = 2 * root * root * m
    return (num + den - 1) // den


def share_variance(epsilon_milli, clamp_wh, m, interval_s=900):
    v = _configured.get((epsilon_milli, clamp_wh, m))
    if v is None:
        v = fallback_share_variance(epsilon_milli, clamp_wh, m, interval_s)
        _configured[(epsilon_milli, clamp_wh, m)] = v
    return v


def noise_share(epsilon_milli, clamp_wh, m, rand_bytes=None, interval_s=900):
    # One meter's share for one reading: N_Z(0, v), an integer, symmetric about 0.
    _check("epsilon_milli", epsilon_milli, 1, 65535)  # u16 on the wire, as config.py and the registry say
    _check("clamp_wh", clamp_wh, 1, 1000000)
    _check("m", m, 1, 65535)
    if rand_bytes is None:
        import os
        rand_bytes = os.urandom
    return discrete_gaussian(share_variance(epsilon_milli, clamp_wh, m, interval_s), rand_bytes)


def is_clamped(energy_wh, clamp_wh):
    return energy_wh < 0 or energy_wh > clamp_wh


def analytics_value(energy_wh, clamp_wh, noise):
    # Clamping bounds one reading's influence on any sum by clamp_wh; with one reading per interval
    # (the app never seals an interval twice) a household-day moves the day's sums by at most
    # clamp_wh per interval: the contribution bound the accounting uses.
    if energy_wh < 0:
        energy_wh = 0
    elif energy_wh > clamp_wh:
        energy_wh = clamp_wh
    return energy_wh + noise


class DailySpend:
    # Share of the household-day budget used by today's readings, for the status frame: each
    # reading is one of the 96 intervals that together cost epsilon (rounded up per reading).
    def __init__(self, day=-1, spend_milli=0, readings=0):
        self.day = day
        self.spend_milli = spend_milli
        self.readings = readings

    def record(self, t_s, epsilon_milli):
        self._roll(t_s)
        self.spend_milli += (epsilon_milli + 95) // 96  # 96 intervals of 15 minutes per day
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
