"""DP maths (host/backoffice/dp.py) against independent computations, and the ledger/budget on a real store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from roles import audit_db, role_for

from meterveil.host.backoffice import dp
from meterveil.host.cli.main import main
from meterveil.host.common import packing
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.store.base import Batch, StoredReading, open_store

T0 = 1793491200  # 2026-11-01 00:00 UTC, a multiple of 900
IV = 900


def nb_pmf_direct(r: float, a: float, kmax: int) -> np.ndarray:
    """NB(r, a) pmf from lgamma, term by term (independent of dp's recursion and FFT)."""
    return np.array([math.exp(math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) + r * math.log1p(-a)
                              + k * math.log(a)) for k in range(kmax)])


def diff_pmf_direct(r: float, a: float, half: int, kmax: int) -> np.ndarray:
    p = nb_pmf_direct(r, a, kmax)
    full = np.convolve(p, p[::-1])  # index kmax-1 is 0
    return full[kmax - 1 - half: kmax + half]


def test_polya_pmf_r1_is_discrete_laplace():
    a = dp.dl_a(1.0, 50)
    pmf = dp.polya_difference_pmf(1.0, a, 400)
    z = np.arange(-400, 401)
    exact = (1 - a) / (1 + a) * a ** np.abs(z)
    assert np.max(np.abs(pmf / exact - 1)) < 1e-9


@pytest.mark.parametrize("r", [0.05, 0.3, 2.5])
def test_polya_pmf_matches_direct_convolution(r):
    a = dp.dl_a(2.0, 20)
    half, kmax = 60, 3000
    assert np.allclose(dp.polya_difference_pmf(r, a, half), diff_pmf_direct(r, a, half, kmax), rtol=1e-7, atol=1e-15)


def test_variances_and_mean_abs_match_the_pmf():
    eps, clamp, m = 1.0, 40, 8
    a = dp.dl_a(eps, clamp)
    half = 4000
    z = np.arange(-half, half + 1)
    p1 = dp.polya_difference_pmf(1.0, a, half)
    assert math.isclose(float((p1 * z * z).sum()), dp.dl_variance(eps, clamp), rel_tol=1e-6)
    assert math.isclose(float((p1 * np.abs(z)).sum()), dp.dl_mean_abs(eps, clamp), rel_tol=1e-6)
    ps = dp.polya_difference_pmf(1 / m, a, half)
    assert math.isclose(float((ps * z * z).sum()), dp.share_variance(eps, clamp, m), rel_tol=1e-6)
    assert math.isclose(dp.sum_variance(eps, clamp, m, 3 * m), 3 * dp.dl_variance(eps, clamp))
    assert math.isclose(dp.local_variance(eps, clamp, 100), 100 * dp.dl_variance(eps, clamp))
    assert ps[half] >= dp.share_zero_probability(eps, clamp, m) > 0.5 * ps[half]


def test_effective_epsilon_exact_at_m_and_worse_below():
    eps, clamp, m = 1.0, 30, 10
    assert dp.effective_epsilon(eps, clamp, m, m) == eps
    assert dp.effective_epsilon(eps, clamp, m, 3 * m) == eps
    losses = [dp.effective_epsilon(eps, clamp, m, n) for n in range(1, m)]
    assert all(x > eps for x in losses)
    assert all(x > y for x, y in zip(losses, losses[1:], strict=False))  # more contributors, less loss
    # independent brute force for n = 3: max over z of ln P(z)/P(z+clamp) on the direct pmf
    a = dp.dl_a(eps, clamp)
    half = 600
    p = diff_pmf_direct(3 / m, a, half + clamp, 6000)
    ratios = [math.log(p[half + clamp + z] / p[half + clamp + z + clamp]) for z in range(0, half)]
    assert math.isclose(losses[2], max(max(ratios), eps), rel_tol=1e-6)
    assert dp.effective_epsilon(eps, clamp, m, 0) == math.inf


def test_composition():
    c = dp.compose(0.1, 96, 1e-6)
    assert c.basic == pytest.approx(9.6)
    drv = 0.1 * math.sqrt(2 * 96 * math.log(1e6)) + 96 * 0.1 * math.expm1(0.1)
    rho = 96 * 0.01 / 2
    assert c.advanced == pytest.approx(min(drv, rho + 2 * math.sqrt(rho * math.log(1e6))))
    assert c.advanced < c.basic
    big = dp.compose(2.0, 96)
    assert big.advanced == big.basic  # advanced composition does not help for large epsilon
    assert dp.READINGS_PER_DAY == 96


# -- ledger and budget against a real store and the real decryption role --------------------------
@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _fill(db, pub, layout, eps_milli=500, clamp=1000, m=5):
    """layout: list of contributor counts per interval on feeder F1 (meters f0..)."""
    store = open_store(db)
    counters: dict[str, int] = {}
    batch = Batch()
    for i, n in enumerate(layout):
        for k in range(n):
            mid = f"f{k}"
            counters[mid] = counters.get(mid, 0) + 1
            c = pub.raw_encrypt(packing.pack(100 + k, 50 + k))
            batch.readings.append(StoredReading(mid, counters[mid], "F1", T0 + i * IV, IV, eps_milli, clamp, m, c))
    store.write_batch(batch)
    store.close()


def test_ledger_budget_and_decryptor_agree(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    _fill(db, pub, [6, 6, 6, 3])
    store = open_store(db)
    role = role_for(db, priv, actor="analyst", daily_budget_milli=1200)
    loads = role.feeder_load(store, "F1", T0, T0 + 4 * IV)
    statuses = [fl.status for fl in loads]
    assert statuses[0] == "ok" and statuses[1] == "ok"
    assert "budget" in statuses[2]  # 0.5 + 0.5 + 0.5 > 1.2
    assert "m=5" in statuses[3]  # 3 contributors

    rows = dp.ledger(store.conn, daily_budget=1.2, released=role.ledger.released_per_day())
    assert len(rows) == 1
    r = rows[0]
    assert (r.feeder, r.day, r.meters, r.readings, r.intervals) == ("F1", "2026-11-01", 6, 21, 4)
    assert r.released_intervals == 2 and r.released_epsilon == pytest.approx(1.0)
    assert r.collected_epsilon == pytest.approx(4 * 0.5)  # meters f0..f2 have 4 readings each
    assert r.intervals_below_m == 1 and r.min_contributors == 3
    assert r.remaining == pytest.approx(0.2)

    assert role.spent_milli("F1", "2026-11-01") == 1000 and role.spent_milli("F1", "2026-11-02") == 0
    refusals = [e for e in role.audit.entries() if e.decision == "refuse"]
    assert any("budget" in e.reason for e in refusals)
    assert role.audit.verify().ok
    role.close()
    role.audit.close()
    store.close()

    # the command prints the same numbers and writes JSON
    out = tmp_path / "rep.json"
    assert main(["privacy-report", "--db", str(db), "--audit-db", str(audit_db(db)), "--daily-budget", "1.2",
                 "--json", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    rep = json.loads(out.read_text())
    (fd,) = rep["feeder_days"]
    assert fd["released_epsilon"] == pytest.approx(1.0) and fd["intervals_below_m"] == 1
    assert fd["effective_epsilon_at_min_contributors"] > 0.5  # 3 < m=5 contributors: weaker than eps
    (par,) = rep["parameters"]
    assert par["epsilon_per_day"]["basic"] == pytest.approx(48.0)
    assert 0 < par["single_value_exact_probability"] < 1
    assert par["effective_epsilon_one_meter"] > par["epsilon"]


def test_report_refuses_missing_db(tmp_path, capsys):
    assert main(["privacy-report", "--db", str(tmp_path / "nope.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
