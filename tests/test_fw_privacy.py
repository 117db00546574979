"""Firmware DP noise shares: exact discrete Gaussian shares, checked on the MicroPython unix port."""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPY_DIR = REPO / "tests" / "mpy"
sys.path.insert(0, str(REPO / "firmware"))
sys.path.insert(0, str(MPY_DIR))

from detrand import CounterRandom  # noqa: E402
from meter import privacy  # noqa: E402
from mpyrun import run_cpython, run_mpy  # noqa: E402

N = 20000          # draws per correct configuration
N_NEG = 8000       # draws per negative control
ALPHA = 1e-9       # a correct sampler fails a bound with probability < 1e-9 (and the seed is fixed)

# name, share variance (0: through noise_share with the variance in the name), shares summed,
# target variance of N_Z. Small variances are where a float or rounding shortcut would show.
CORRECT = [["var1_single", 1, 1, 1],
           ["var3_single", 3, 1, 3],
           ["var1000_sum5", 1000, 5, 5000],
           ["ns:1000:500:800:858669", 0, 1, 858669]]
NEGATIVE = [["neg_var_doubled", 1000, 5, 10000],   # target twice the noise the shares give
            ["neg_var_1.3", 1, 1, 1.3],            # 30% off at the smallest scale
            ["neg_half_the_meters", 1000, 3, 5000]]  # fewer shares than calibrated for


def dkw(n: int) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: P(sup|F_n - F| > d) <= 2 exp(-2 n d^2); also valid for discrete F."""
    return math.sqrt(math.log(2 / ALPHA) / (2 * n))


def chi2_limit(df: int) -> float:
    """Upper 1 - ALPHA quantile of chi-square(df), Wilson-Hilferty (z = 6.0 for 1e-9)."""
    z = 6.0
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def var_tol(n: int) -> float:
    """6 standard deviations of the sample variance of a Gaussian, relative: sqrt(2/n)."""
    return 6 * math.sqrt(2 / n)


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    specs = [{"seed": "meterveil-dp-test", "n": N, "keep": 5000, "cases": CORRECT[:2] + CORRECT[3:]},
             {"seed": "meterveil-dp-test", "n": N, "keep": 5000, "cases": CORRECT[2:3]},
             {"seed": "meterveil-dp-test", "n": N_NEG, "keep": 0, "cases": NEGATIVE}]
    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda i: run_mpy("privacy_check.py", specs[i], tmp, f"p{i}"), range(3)))
    return {r["name"]: r for o in outs for r in o}


@pytest.mark.parametrize("name", [c[0] for c in CORRECT])
def test_shares_match_the_exact_discrete_gaussian(stats, name):
    r = stats[name]
    assert r["n"] == N and r["outside"] == 0
    assert r["ks"] < dkw(N), r                      # max CDF distance vs the exact pmf
    assert r["chi2"] < chi2_limit(r["bins"] - 1), r  # every value (or merged run) vs the exact pmf
    assert abs(r["var"] / r["var_target"] - 1) < var_tol(N), r
    assert abs(r["mean"]) < 6 * math.sqrt(r["var_target"] / N)


@pytest.mark.parametrize("name", [c[0] for c in CORRECT])
def test_single_shares_symmetric_integers(stats, name):
    r = stats[name]
    # privacy_check raises on a non-int share, so reaching here means all were ints
    pos, neg = r["pos"], r["neg"]
    assert pos + neg > 100
    assert abs(pos - neg) < 6 * math.sqrt(pos + neg)


@pytest.mark.parametrize("name", [c[0] for c in NEGATIVE])
def test_wrong_calibration_is_detected(stats, name):
    # The same bounds, applied to mis-calibrated targets, must fail: the check has teeth.
    r = stats[name]
    assert r["chi2"] > chi2_limit(r["bins"] - 1), r
    assert r["ks"] > dkw(N_NEG) or abs(r["var"] / r["var_target"] - 1) > 2 * var_tol(N_NEG), r


def test_cpython_gives_the_same_numbers(tmp_path):
    spec = {"seed": "same-on-both", "n": 300, "keep": 3000,
            "cases": [CORRECT[0], CORRECT[3], ["big", 10 ** 8, 2, 2 * 10 ** 8]]}
    mp = run_mpy("privacy_check.py", spec, tmp_path, "both")
    cp = run_cpython("privacy_check.py", tmp_path, "both")
    for a, b in zip(mp, cp, strict=True):
        assert a["first"] == b["first"] and a["hash"] == b["hash"] and a["bytes"] == b["bytes"]
    assert any(x != 0 for x in mp[0]["first"])


# ---------------------------------------------------------------- CPython unit checks


def test_deterministic_with_injected_randomness():
    a = [privacy.noise_share(1000, 100, 10, CounterRandom(b"k")) for _ in range(3)]
    rb = CounterRandom(b"k")
    b = [privacy.noise_share(1000, 100, 10, rb) for _ in range(200)]
    rb2 = CounterRandom(b"k")
    assert b == [privacy.noise_share(1000, 100, 10, rb2) for _ in range(200)]
    assert a == [b[0]] * 3
    assert len(set(b)) > 20


def test_default_randomness_is_os_urandom():
    xs = {privacy.noise_share(1000, 1000, 3) for _ in range(50)}
    assert all(isinstance(x, int) for x in xs) and len(xs) > 10


@pytest.mark.parametrize("args,field", [((0, 1000, 10), "epsilon_milli"), ((1000, 0, 10), "clamp_wh"),
                                        ((1000, 1000, 0), "m"), ((1.5, 1000, 10), "epsilon_milli"),
                                        ((1000, True, 10), "clamp_wh")])
def test_bad_parameters_rejected(args, field):
    with pytest.raises(privacy.PrivacyParamError) as ei:
        privacy.noise_share(*args, rand_bytes=CounterRandom(b"x"))
    assert ei.value.field == field and ei.value.reason == "bad_dp_params"


def test_analytics_value_clamps():
    assert privacy.analytics_value(500, 1000, -7) == 493
    assert privacy.analytics_value(1500, 1000, 3) == 1003
    assert privacy.analytics_value(-5, 1000, 3) == 3
    assert privacy.is_clamped(1001, 1000) and privacy.is_clamped(-1, 1000)
    assert not privacy.is_clamped(1000, 1000)


def test_daily_spend_rolls_over_at_utc_midnight():
    s = privacy.DailySpend()
    day = 1763856000
    for k in range(96):
        s.record(day + 900 * k, 960)  # a day of readings costs the household-day epsilon
    assert s.today(day + 86399) == (960, 96)
    assert s.today(day + 86400) == (0, 0)
    s.record(day + 86400 + 5, 960)
    assert (s.day, s.spend_milli, s.readings) == ((day + 86400) // 86400, 10, 1)


def test_fallback_variance_is_never_below_the_tight_calibration():
    from meterveil.host.backoffice import dp

    for eps, clamp, m in ((1000, 500, 800), (500, 1000, 10), (2000, 100, 3)):
        tight = dp.share_variance(eps / 1000, clamp, m)
        fb = privacy.fallback_share_variance(eps, clamp, m)
        assert tight <= fb < 2 * tight, (eps, clamp, m, tight, fb)


def test_dp_limits_agree_across_meter_registry_and_wire():
    """One range for the DP parameters everywhere (u16 on the wire): the sampler, the firmware's config
    check and the registry refuse the same values."""
    from meterveil.host.common.registry import DP_LIMITS

    for name in ("epsilon_milli", "m"):
        assert DP_LIMITS[name] == 65535
    args = {"epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
    for name in ("epsilon_milli", "m"):
        privacy.noise_share(**{**args, name: DP_LIMITS[name]}, rand_bytes=CounterRandom(b"limits"))
        with pytest.raises(ValueError):
            privacy.noise_share(**{**args, name: DP_LIMITS[name] + 1}, rand_bytes=CounterRandom(b"limits"))


def test_configured_variance_is_used():
    privacy.configure({"epsilon_milli": 777, "clamp_wh": 50, "m": 4, "noise_var": 9})
    assert privacy.share_variance(777, 50, 4) == 9
    xs = [privacy.noise_share(777, 50, 4, CounterRandom(bytes([i]))) for i in range(200)]
    assert max(abs(x) for x in xs) < 20  # sd 3: a fallback variance (~thousands) would be far wider
    with pytest.raises(privacy.PrivacyParamError):
        privacy.configure({"epsilon_milli": 777, "clamp_wh": 50, "m": 4, "noise_var": 0})


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 1000, 2 ** 40 + 3])
def test_uniform_below_covers_exactly_its_range(n):
    rb = CounterRandom(b"u%d" % n)
    xs = [privacy._below(n, rb) for _ in range(400)]
    assert min(xs) >= 0 and max(xs) < n
    if n <= 3:
        assert set(xs) == set(range(n))


def test_isqrt():
    for n in list(range(200)) + [10 ** 30 + 7, 2 ** 61 - 1]:
        assert privacy._isqrt(n) == math.isqrt(n)
