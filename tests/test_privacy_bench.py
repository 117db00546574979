"""Small versions of bench/privacy_utility.py and bench/attacks.py, with assertions that can fail."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import attacks  # noqa: E402
import privacy_utility as pu  # noqa: E402


@pytest.fixture(scope="module")
def utility_small():
    return pu.run(dict(pu.SMALL))


def _row(res, n):
    return next(r for r in res["results"] if r["n"] == n and r["epsilon"] == 1.0)


def test_ours_close_to_central_at_the_same_guarantee(utility_small):
    for n in pu.SMALL["n_list"]:
        r = _row(utility_small, n)
        assert r["ours_epsilon_day"] <= 1.0 and r["central_epsilon_day"] <= 1.0  # the same guarantee
        assert r["ours_over_central"] < 1.2, r  # theory sqrt(n / ceil(0.8 n)) ~ 1.118
        assert math.isclose(r["ours_over_central"], r["theory_ours_over_central"], rel_tol=0.06), r
        assert r["previous_over_ours"] > 2.5, r  # per-reading Laplace at epsilon/96 per reading
        assert r["local_over_central"] > 0.8 * math.sqrt(n), r
    # error shrinks like 1/N for aggregated noise
    ratio = _row(utility_small, 10)["ours_hourly"] / _row(utility_small, 1000)["ours_hourly"]
    assert 50 < ratio < 200, ratio


def test_firmware_sampler_cell_matches_the_table(utility_small):
    c = utility_small["firmware_cell"]
    assert 0.7 < c["ratio"] < 1.3, c  # 200 hourly sums: sd of the variance ratio ~0.1


@pytest.fixture(scope="module")
def attacks_small():
    return attacks.run(dict(attacks.SMALL))


def _att(res, prefix):
    return next(r for r in res["results"] if r["output"].startswith(prefix))


def test_raw_readings_leak_released_outputs_do_not(attacks_small):
    best = attacks_small["best_baseline"]["daytime_08_20"]
    assert best >= _att(attacks_small, "baseline: time of day")["daytime_08_20"]["auc"]
    assert _att(attacks_small, "(a)")["daytime_08_20"]["auc"] > best + 0.1
    for prefix in ("(c)", "(e)"):
        assert _att(attacks_small, prefix)["daytime_08_20"]["auc_minus_best_baseline"] < 0.02
    raw, dp_adv = attacks_small["away_day"]
    assert raw["auc_minus_baseline"] > 0.1 and dp_adv["auc_minus_baseline"] < raw["auc_minus_baseline"] / 3


def test_policy_attacks_refused_by_the_decryption_role(attacks_small):
    p = attacks_small["policy"]
    assert p["differencing"]["first_query"] == "ok"
    assert "different contributor set" in p["differencing"]["second_query_one_more_meter"]
    assert "honest" in p["dummy_meters"]["status"]
    assert p["interim_bills"]["shortest_difference_days"] >= 7 and p["refused"] and p["audit_chain_ok"]


def test_auc_helper():
    y = np.array([0, 0, 1, 1])
    assert attacks.auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert attacks.auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert attacks.auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
