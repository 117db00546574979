"""Firmware DP noise shares: the sum of m shares is discrete Laplace, checked on the MicroPython unix port."""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
MPY_DIR = REPO / "tests" / "mpy"
sys.path.insert(0, str(REPO / "firmware"))
sys.path.insert(0, str(MPY_DIR))

from detrand import CounterRandom  # noqa: E402
from meter import privacy  # noqa: E402
from mpyrun import run_cpython, run_mpy  # noqa: E402

N = 20000          # sums per correct configuration
N_NEG = 8000       # sums per negative control
DELTA = 1e-9       # DKW failure probability: a correct sampler fails with prob. < 1e-9 (and the seed is fixed)

# name, epsilon_milli, clamp_wh, m the shares are calibrated for, shares summed, m of the target
CORRECT = [["eps1_clamp10_m5", 1000, 10, 5, 5, 5],
           ["eps0.5_clamp20_m10", 500, 20, 10, 10, 10],
           ["eps1_clamp1000_m3", 1000, 1000, 3, 3, 3]]
NEGATIVE = [["neg_m_doubled", 1000, 10, 10, 5, 5],     # shares for 2m, only m of them: half the noise
            ["neg_m_halved", 1000, 10, 3, 6, 6],       # shares for m/2, m of them: twice the noise
            ["neg_full_laplace", 1000, 10, 1, 5, 5]]   # every meter adds full Laplace (local DP)


def dkw(n: int) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: P(sup|F_n - F| > d) <= 2 exp(-2 n d^2); also valid for discrete F."""
    return math.sqrt(math.log(2 / DELTA) / (2 * n))


def var_tol(n: int, kurt: float) -> float:
    """6 standard deviations of the sample variance, relative: sd(s^2)/sigma^2 ~ sqrt((kurt - 1)/n)."""
    return 6 * math.sqrt((kurt - 1) / n)


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    specs = [{"seed": "meterveil-dp-test", "n": N, "keep": 5000, "cases": CORRECT[1:2]},
             {"seed": "meterveil-dp-test", "n": N, "keep": 5000, "cases": CORRECT[0:1] + CORRECT[2:]},
             {"seed": "meterveil-dp-test", "n": N_NEG, "keep": 0, "cases": NEGATIVE}]
    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda i: run_mpy("privacy_check.py", specs[i], tmp, f"p{i}"), range(3)))
    return {r["name"]: r for o in outs for r in o}


@pytest.mark.parametrize("name", [c[0] for c in CORRECT])
def test_sum_of_m_shares_is_discrete_laplace(stats, name):
    r = stats[name]
    assert r["n"] == N
    assert r["ks"] < dkw(N), r                      # max CDF distance vs the exact pmf
    assert abs(r["var"] / r["var_target"] - 1) < var_tol(N, r["kurt_target"]), r
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
    # The same bounds, applied to mis-calibrated samplers, must fail: the check has teeth.
    r = stats[name]
    assert r["ks"] > 1.5 * dkw(N_NEG), r
    assert abs(r["var"] / r["var_target"] - 1) > 2 * var_tol(N_NEG, r["kurt_target"]), r


def test_cpython_gives_the_same_numbers(tmp_path):
    spec = {"seed": "same-on-both", "n": 300, "keep": 3000,
            "cases": [CORRECT[0], CORRECT[2], ["tiny_eps", 1, 100000, 20, 20, 20]]}
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
        s.record(day + 900 * k, 250)
    assert s.today(day + 86399) == (24000, 96)
    assert s.today(day + 86400) == (0, 0)
    s.record(day + 86400 + 5, 250)
    assert (s.day, s.spend_milli, s.readings) == ((day + 86400) // 86400, 250, 1)


@given(st.floats(min_value=-30, max_value=30, allow_nan=False).filter(lambda x: x != 0))
def test_expm1_log1p_cancellation_free(x):
    assert math.isclose(privacy._expm1(x), math.expm1(x), rel_tol=1e-12)
    if x > -1:
        assert math.isclose(privacy._log1p(x), math.log1p(x), rel_tol=1e-12)


def test_dl_param_small_epsilon_precise():
    q1, r = privacy.dl_param(1, 1000000)  # epsilon/clamp = 1e-9: naive 1 - exp(-x) loses 7 digits
    assert math.isclose(q1, -math.expm1(-1e-9), rel_tol=1e-12)
    assert math.isclose(r, math.log(-math.expm1(-1e-9)), rel_tol=1e-12)


def test_dp_limits_agree_across_meter_registry_and_wire():
    """One range for the DP parameters everywhere (u16 on the wire): the sampler, the firmware's config
    check and the registry refuse the same values."""
    from meterveil.host.common.registry import DP_LIMITS

    for name in ("epsilon_milli", "m"):
        assert DP_LIMITS[name] == 65535
    args = {"epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
    for name in ("epsilon_milli", "m"):
        privacy.noise_share(**{**args, name: DP_LIMITS[name]}, rand_bytes=lambda n: bytes(n))
        with pytest.raises(ValueError):
            privacy.noise_share(**{**args, name: DP_LIMITS[name] + 1}, rand_bytes=lambda n: bytes(n))
