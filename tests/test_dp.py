"""DP maths (host/backoffice/dp.py) against independent computations and Google's dp-accounting, and
the household-day accounting of the real decryption role on a real store (privacy-report)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from roles import audit_db, role_for
from scipy.stats import norm

from meterveil.host.backoffice import dp
from meterveil.host.cli.main import main
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.store.base import Batch, StoredReading, open_store

REPO = Path(__file__).resolve().parents[1]
T0 = 1793491200  # 2026-11-01 00:00 UTC, a multiple of 3600
IV = 900


def exact_gaussian_epsilon(l2_over_sigma: float, delta: float) -> float:
    """epsilon at delta of a Gaussian mechanism with sensitivity/sigma = l2_over_sigma, from the exact
    privacy profile (Balle-Wang) by bisection, written here with scipy (independent of dp.py)."""
    mu = l2_over_sigma

    def d(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("eps,clamp", [(1.0, 500), (0.5, 1000), (2.0, 50)])
def test_calibration_is_tight_against_the_exact_gaussian_profile(eps, clamp):
    var = dp.calibrate_total_variance(eps, clamp)
    l2 = math.sqrt(96) * clamp  # a household-day: 96 intervals, each moved by up to clamp
    assert exact_gaussian_epsilon(l2 / math.sqrt(var), 1e-6) <= eps
    assert exact_gaussian_epsilon(l2 / math.sqrt(0.99 * var), 1e-6) > eps  # not wasteful: within 1% variance


def test_pld_accounting_between_the_exact_profile_and_the_zcdp_and_rdp_bounds():
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    clamp, var = 500, dp.calibrate_total_variance(1.0, 500)
    cells = [(4, 4 * var)] * 24  # every hour of a day
    ours = dp.household_day_epsilon(clamp, cells)
    exact = exact_gaussian_epsilon(math.sqrt(24 * (4 * clamp) ** 2 / (4 * var)), 1e-6)
    assert exact <= ours <= exact * 1.01
    assert ours < dp.zcdp_epsilon(clamp, cells)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(math.sqrt(4 * var) / (4 * clamp)), 24)
    assert ours <= acc.get_epsilon(1e-6)
    # hourly sums are post-processing of the quarter-hour sums: the same day costs the same
    assert dp.household_day_epsilon(clamp, [(1, var)] * 96) == pytest.approx(ours, rel=0.01)


def test_continuous_surrogate_never_below_the_discrete_gaussian_pld():
    from dp_accounting.pld import privacy_loss_distribution as pld

    for sigma, sens, k in ((430.0, 100, 96), (2150.0, 500, 24), (43.0, 10, 96)):
        exact = pld.from_discrete_gaussian_mechanism(sigma, sensitivity=sens, value_discretization_interval=1e-5)
        e_exact = exact.self_compose(k).get_epsilon_for_delta(1e-6)
        cont = pld.from_gaussian_mechanism(sigma / sens, value_discretization_interval=1e-4)
        e_sur = dp.SURROGATE_MARGIN * cont.self_compose(k).get_epsilon_for_delta(1e-6)
        assert e_exact <= e_sur, (sigma, sens, e_exact, e_sur)


def test_collusion_calibration_keeps_the_nominal_guarantee():
    for n in (10, 100, 1000):
        m = dp.honest_m(n, 0.2)
        assert m == math.ceil(0.8 * n) and dp.colluders(n, 0.2) == n - m
        v = dp.share_variance(1.0, 500, m)
        honest = n - dp.colluders(n, 0.2)
        eff = dp.household_day_epsilon(500, [(4, 4 * honest * v)] * 24)
        assert eff <= 1.0  # the target holds with 20% colluding (<= 1.2x nominal is the bar)
        # the attack the calibration prevents: shares for all n, 20% known to the attacker
        naive = dp.household_day_epsilon(500, [(4, 4 * honest * -(-dp.calibrate_total_variance(1.0, 500) // n))] * 24)
        assert naive > 1.1


def test_share_tail_bound_against_the_exact_pmf():
    for v in (4, 100, 10_000):
        b = dp.share_tail_bound(v)
        w = int(40 * math.sqrt(v)) + 10
        z = sum(math.exp(-x * x / (2 * v)) for x in range(-w, w + 1))
        tail = 2 * sum(math.exp(-x * x / (2 * v)) for x in range(b + 1, w + 1)) / z
        assert tail <= 1e-12
        loose = 2 * sum(math.exp(-x * x / (2 * v)) for x in range(int(b / 1.3) + 1, w + 1)) / z
        assert loose > 1e-12  # the bound is within 30% of the true 1e-12 quantile


def test_analytics_value_bounds_cover_both_calibrations():
    sys.path.insert(0, str(REPO / "firmware"))
    from meter import privacy

    for eps, clamp, m in ((1000, 500, 800), (1000, 1000, 5), (250, 100, 40)):
        fb = privacy.fallback_share_variance(eps, clamp, m)
        assert fb == dp.fallback_share_variance(eps, clamp, m)  # one formula, two runtimes
        lo, hi = dp.analytics_value_bounds(eps, clamp, m)
        assert fb >= dp.share_variance(eps / 1000, clamp, m)
        b = dp.share_tail_bound(fb)
        assert (lo, hi) == (-b, clamp + b)


# -- the real decryption role on a real store ---------------------------------------------------
@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _fill(db, pub, meters, hours, eps_milli=1000, clamp=100, m=4, feeder="F1"):
    store = open_store(db)
    batch = Batch()
    counters: dict[str, int] = {}
    for mid in meters:
        for i in range(hours * 4):
            counters[mid] = counters.get(mid, 0) + 1
            c = pub.raw_encrypt(packing.pack(60, 50))
            batch.readings.append(StoredReading(mid, counters[mid], feeder, T0 + i * IV, IV, eps_milli, clamp, m, c))
    store.write_batch(batch)
    store.close()


def test_hourly_release_spends_the_household_day_and_report_prints_it(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    meters = [f"h{k}" for k in range(5)]
    _fill(db, pub, meters, hours=24)
    reg = MeterRegistry(tmp_path / "registry" / "meters.json")
    for mid in meters:
        reg.put(MeterRecord(mid, "F1", 1000, 100, 4), save=False)
    reg.save()
    store = open_store(db)
    role = role_for(db, priv, registry=reg, k_min=4)
    loads = role.feeder_load(store, "F1", T0, T0 + 86400)
    assert len(loads) == 24 and all(fl.allowed for fl in loads)  # one cell (one decryption) per hour
    assert all(fl.interval_len == 3600 and fl.readings == 20 for fl in loads)
    # independent: share variance for m = 4, 1 of 5 colluding -> 4 honest meters x 4 readings per hour
    v = dp.share_variance(1.0, 100, 4)
    want = dp.household_day_epsilon(100, [(4, 16 * v)] * 24)
    assert want <= 1.0
    assert role.spent_milli("F1", "2026-11-01") == math.ceil(want * 1000 - 1e-9)
    # a quarter-hour release of the same day overlaps released hours: refused (no finer differences)
    q = role.feeder_load(store, "F1", T0, T0 + IV, release_s=900)
    assert not q[0].allowed and "released with" in q[0].status
    role.close()
    role.audit.close()
    store.close()

    out = tmp_path / "rep.json"
    assert main(["privacy-report", "--db", str(db), "--audit-db", str(audit_db(db)), "--json", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    rep = json.loads(out.read_text())
    (fd,) = rep["feeder_days"]
    assert fd["released_cells"] == 24 and fd["epsilon_spent"] == pytest.approx(want, abs=1e-4)
    nominal = dp.household_day_epsilon(100, [(4, 20 * v)] * 24)
    assert fd["epsilon_nominal"] == pytest.approx(nominal, abs=1e-4) and nominal < want
    (par,) = rep["parameters"]
    assert par["share_variance"] == v and par["day_epsilon_all_hours_gamma"] <= 1.0


def test_budget_refuses_a_second_granularity_and_over_budget_days(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    meters = [f"h{k}" for k in range(5)]
    _fill(db, pub, meters, hours=24, m=5)  # shares for 5 honest: with 1 colluding the day exceeds 1
    store = open_store(db)
    role = role_for(db, priv, k_min=4)
    loads = role.feeder_load(store, "F1", T0, T0 + 86400)
    ok = [fl for fl in loads if fl.allowed]
    assert 0 < len(ok) < 24
    assert all("household-day epsilon would reach" in fl.status for fl in loads if not fl.allowed)
    assert role.spent_milli("F1", "2026-11-01") <= 1000
    role.close()
    role.audit.close()
    store.close()


def test_two_meters_of_one_household_count_once(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    meters = [f"h{k}" for k in range(6)]
    _fill(db, pub, meters, hours=1, m=4)
    reg = MeterRegistry(tmp_path / "registry" / "meters.json")
    for mid in meters:  # h4 and h5 are two meters of one household
        reg.put(MeterRecord(mid, "F1", 1000, 100, 4, household="house-4" if mid in ("h4", "h5") else ""), save=False)
    reg.save()
    store = open_store(db)
    role = role_for(db, priv, registry=reg, k_min=4)
    (cell,) = role.feeder_load(store, "F1", T0, T0 + 3600)
    assert cell.allowed and cell.contributors == 5 and cell.readings == 20
    assert role.members("F1", "2026-11") == ("h0", "h1", "h2", "h3", "h4")
    role.close()
    role.audit.close()
    store.close()


def test_report_refuses_missing_db(tmp_path, capsys):
    assert main(["privacy-report", "--db", str(tmp_path / "nope.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
