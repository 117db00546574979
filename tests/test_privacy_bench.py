"""Small versions of bench/privacy_utility.py and bench/attacks.py, with assertions that can fail."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from meterveil.host.backoffice import dp

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import attacks  # noqa: E402
import privacy_utility as pu  # noqa: E402


@pytest.fixture(scope="module")
def utility_small():
    return pu.run(dict(pu.SMALL))


def _row(res, n, eps):
    return next(r for r in res["results"] if r["n"] == n and r["epsilon"] == eps)


def test_distributed_close_to_central_local_much_worse(utility_small):
    for eps in pu.SMALL["eps_list"]:
        r = _row(utility_small, 1000, eps)
        assert 0.95 < r["distributed_over_central"] < 1.15, r  # theory: sqrt(N/m) = 1.054 in RMS
        assert r["local_over_central"] > 20, r  # theory ~ sqrt(1000)
        assert r["distributed_m_kmin"] > 5 * r["distributed"], r  # m far below N wastes accuracy
        # central error matches the closed form E|DL| / mean true sum within sampling error
        assert math.isclose(r["central"], r["theory_rel_mae_central"], rel_tol=0.1), r
    # error of central/distributed shrinks like 1/N; local like 1/sqrt(N)
    for mech, lo, hi in (("central", 50, 200), ("distributed", 50, 200), ("local", 5, 20)):
        ratio = _row(utility_small, 10, 1.0)[mech] / _row(utility_small, 1000, 1.0)[mech]
        assert lo < ratio < hi, (mech, ratio)


def test_firmware_sampler_matches_numpy_equivalent(utility_small):
    c = utility_small["sampler_check"]
    assert c["ks"] < c["ks_crit_1pct"]
    assert abs(c["p0_firmware"] - c["p0_numpy"]) < 0.04
    assert c["p0_firmware"] >= c["p0_lower_bound"] - 0.03
    assert 0.7 < c["var_firmware"] / c["var_theory"] < 1.4
    fw = utility_small["firmware_cell"]
    assert 0.6 < fw["rel_mae_firmware"] / fw["rel_mae_numpy"] < 1.6  # 96 sums each: loose, but not broken


def test_sum_of_m_firmware_shares_is_discrete_laplace():
    fw = pu.load_firmware_privacy()
    rb = random.Random(5).randbytes
    eps_milli, clamp, m, n = 1000, 20, 4, 3000
    sums = np.array([sum(fw.noise_share(eps_milli, clamp, m, rb) for _ in range(m)) for _ in range(n)])
    a = dp.dl_a(1.0, clamp)
    edges = np.array([-1000, -40, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 40, 1001])
    z = np.arange(-1000, 1001)
    pmf = (1 - a) / (1 + a) * a ** np.abs(z)
    expected = np.array([pmf[(z >= lo) & (z < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)]) * n
    observed = np.histogram(sums, bins=edges)[0]
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 36.1  # 13 degrees of freedom, p = 0.001


def test_numpy_sum_identity_matches_per_meter_draws():
    rng = np.random.default_rng(3)
    eps, clamp, m, n = 1.0, 1000, 45, 50
    per_meter = pu.np_share(rng, eps, clamp, m, (4000, n)).sum(axis=1)
    direct = pu.noise("distributed", rng, n, eps, clamp, 0.9, (4000,))
    assert pu.ks_two_sample(per_meter, direct) < 1.63 * math.sqrt(2 / 4000)
    local = pu.np_dl(rng, eps, clamp, (4000, n)).sum(axis=1)
    assert pu.ks_two_sample(local, pu.noise("local", rng, n, eps, clamp, 0.9, (4000,))) < 1.63 * math.sqrt(2 / 4000)


def test_plot_written(utility_small, tmp_path):
    pu.plot(utility_small, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def attacks_small():
    return attacks.run(dict(attacks.SMALL))


def _att(res, prefix):
    return next(r for r in res["results"] if r["output"].startswith(prefix))


def test_attacks_raw_leaks_feeder_sum_does_not(attacks_small):
    base = _att(attacks_small, "time of day")["daytime_08_20"]["auc"]
    raw = _att(attacks_small, "(a)")["daytime_08_20"]["auc"]
    feeder = _att(attacks_small, "(c) feeder sum of 20 meters, DP")["daytime_08_20"]["auc"]
    one5 = _att(attacks_small, "(b) one meter's analytics value, m=5")["daytime_08_20"]["auc"]
    assert raw > base + 0.1
    assert feeder < base + 0.03
    assert one5 < raw - 0.1  # a single share with small m hides most of the signal ...
    # ... but not all of it: one meter's analytics value must never be released on its own
    one20 = _att(attacks_small, "(b) one meter's analytics value, m=20")
    assert one20["daytime_08_20"]["auc"] > base


def test_auc_helper():
    y = np.array([0, 0, 1, 1])
    assert attacks.auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert attacks.auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert attacks.auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_differencing_refused_by_the_decryption_role(attacks_small):
    d = attacks_small["differencing_policy"]
    assert d["first_query"] == "ok"
    assert d["second_query_one_more_meter"].startswith("refused") and "contributor set" in d["second_query_one_more_meter"]
    assert d["query_with_m_minus_1"].startswith("refused")
    assert d["refused"] and d["refusals_audited"] == 2 and d["audit_chain_ok"]
    assert d["if_not_refused"]["effective_epsilon"] > 3 * attacks.SMALL["epsilon"]
