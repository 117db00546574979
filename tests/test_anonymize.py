"""k-anonymity and synthetic households (host/backoffice/anonymize.py) and the audited export command."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from roles import audit_db, role_dir_for

from meterveil.host.audit import signing
from meterveil.host.audit.chain import AuditLog
from meterveil.host.backoffice import anonymize as an
from meterveil.host.cli.main import main
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.demo import profiles
from meterveil.host.store.base import Batch, StoredReading, open_store

QI = list(an.QUASI_IDENTIFIERS)


def households(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = profiles.make_household(i, base_seed=3).attributes()
        rows.append({**{q: a[q] for q in QI},
                     "kwh_2026-01": round(float(120 + 70 * a["occupants"] + rng.normal(0, 25))),
                     "kwh_2026-02": round(float(100 + 60 * a["occupants"] + rng.normal(0, 25)))})
    return pd.DataFrame(rows)


def min_class_independent(table: pd.DataFrame) -> int:
    """Smallest equivalence class, counted without pandas groupby machinery of the module."""
    counts = Counter(tuple(str(v) for v in row) for row in table[QI].itertuples(index=False))
    return min(counts.values())


@pytest.mark.parametrize("k", [2, 5, 10])
def test_k_anonymity_holds_by_independent_count(k):
    df = households(250)
    res = an.k_anonymize(df, k)
    assert len(res.table) + res.suppressed == len(df)
    assert res.suppressed <= 0.05 * len(df)
    assert min_class_independent(res.table) >= k
    assert res.k_achieved == min_class_independent(res.table)
    assert res.table.groupby(QI).size().min() >= k  # and by an independent groupby
    # generalisation is reported and consistent with the values present
    if res.levels["occupants"] == 1:
        assert set(res.table["occupants"]) <= {"1-2", "3-4", "5+"}
    assert set(res.generalised) == set(QI)


def test_raw_table_is_not_k_anonymous_so_generalisation_was_needed():
    df = households(250)
    assert min_class_independent(df.astype({"occupants": str})) < 5
    res = an.k_anonymize(df, 5)
    assert any(level > 0 for level in res.levels.values())


def test_too_few_rows_release_nothing():
    res = an.k_anonymize(households(4), 5)
    assert len(res.table) == 0 and res.suppressed == 4 and res.k_achieved == 0


def test_synthetic_preserves_marginals_and_copies_nothing():
    df = households(400)
    res = an.synthesize(df, 2000, k=5, seed=1)
    assert len(res.table) == 2000
    real_rows = {tuple(str(v) for v in r) for r in df.astype({"occupants": str}).itertuples(index=False)}
    synth_rows = {tuple(str(v) for v in r) for r in res.table.itertuples(index=False)}
    assert not (real_rows & synth_rows) and res.copies == 0
    u = res.utility
    assert max(u["marginal_tvd"].values()) < 0.06
    for col in ("kwh_2026-01", "kwh_2026-02"):
        assert u["numeric"][col]["ks"] < 0.08
    assert u["corr_kwh_occupants"]["synth"] > 0.5 * u["corr_kwh_occupants"]["real"] > 0
    assert res.model["pairwise"]  # home_type -> occupants/tariff is backed by >= k per cell somewhere


def test_synthetic_drops_pairwise_when_no_cell_reaches_k():
    df = households(12)
    res = an.synthesize(df, 50, k=50, seed=2)
    assert res.model["pairwise"] == {} and res.model["kwh_conditioned_on"] is None


def test_distances():
    a = pd.Series(["x"] * 50 + ["y"] * 50)
    assert an.tvd(a, a) == 0
    assert an.tvd(pd.Series(["x"] * 10), pd.Series(["y"] * 10)) == 1
    assert an.ks_statistic(np.arange(100), np.arange(100) + 1000) == 1
    assert an.wasserstein1(np.zeros(10), np.full(10, 3.0)) == pytest.approx(3.0)


# -- the audited export end to end ----------------------------------------------------------------
T0 = 1767225600  # 2026-01-01 00:00 UTC


@pytest.fixture(scope="module")
def utility(tmp_path_factory):
    """Keys (512-bit: tests only), registry with attributes, a store with two months of readings."""
    d = tmp_path_factory.mktemp("exp")
    pub, priv = generate_keypair(512)
    role_dir_for(d / "s.db", priv)
    reg = MeterRegistry.load(d / "registry" / "meters.json")
    truth: dict[str, dict[str, int]] = {}
    batch = Batch()
    for i in range(60):
        hh = profiles.make_household(i, base_seed=3)
        mid = f"h{i:03d}"
        reg.put(MeterRecord(mid, f"F{i % 3}", 1000, 1000, 5, hh.attributes()), save=False)
        for j, month_start in enumerate((T0, T0 + 31 * 86400)):
            for day in range(24):  # >= min_band_readings per bill: fewer would be refused as exact
                wh = 500 + 190 * hh.occupants + 5 * i + 60 * (day % 3)
                c = pub.raw_encrypt(packing.pack(wh, 0))
                batch.readings.append(StoredReading(mid, 1 + j * 24 + day, f"F{i % 3}", month_start + day * 86400,
                                                    900, 1000, 1000, 5, c))
                key = f"kwh_2026-0{j + 1}"
                truth.setdefault(mid, {}).setdefault(key, 0)
                truth[mid][key] += wh
    reg.save()
    store = open_store(d / "s.db")
    store.write_batch(batch)
    store.close()
    return d, truth


def role_args(d) -> list[str]:
    return ["--role-dir", str(d / "decryption"), "--registry", str(d / "registry" / "meters.json")]


def test_export_k_anonymous_via_cli(utility, capsys):
    d, truth = utility
    out = d / "hh.csv"
    assert main(["export", "households", "--db", str(d / "s.db"), *role_args(d),
                 "--k", "5", "--out", str(out), "--actor", "researcher-desk", "--seed", "3"]) == 0
    table = pd.read_csv(out, dtype={"occupants": str})
    assert "meter_id" not in table.columns
    assert list(table.columns[:4]) == QI and {"kwh_2026-01", "kwh_2026-02"} <= set(table.columns)
    assert table.groupby(QI, dropna=False).size().min() >= 5  # independent groupby on the file
    report = json.loads((d / "hh.csv.report.json").read_text())
    assert report["k_achieved"] >= 5 and report["rows"] == len(table)
    assert report["rows"] + report["suppressed"] == 60
    # the released kWh are the decrypted monthly totals (whole kWh), as a multiset
    expect = sorted(round(v["kwh_2026-01"] / 1000) for v in truth.values())
    got = sorted(table["kwh_2026-01"].tolist())
    assert set(got) <= set(expect) and len(got) == report["rows"]
    with AuditLog(audit_db(d / "s.db")) as log:
        entries = list(log.entries())
        assert log.verify(signing.load_verify(d / "decryption")).ok
    exports = [e for e in entries if e.action == "export-households"]
    assert exports[-1].decision == "allow" and exports[-1].actor == "researcher-desk"
    assert exports[-1].query["k"] == 5 and exports[-1].result_hash
    assert sum(e.action == "bill" and e.decision == "allow" for e in entries) >= 120  # 60 households x 2 months
    assert "achieved k=" in capsys.readouterr().out


def test_export_synthetic_and_refusals(utility):
    d, _ = utility
    out = d / "syn.csv"
    assert main(["export", "households", "--db", str(d / "s.db"), *role_args(d), "--k", "5",
                 "--synthetic", "300", "--out", str(out), "--seed", "4"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 300 and "meter_id" not in rows[0]
    rep = json.loads((d / "syn.csv.report.json").read_text())
    assert rep["copies_of_real_rows"] == 0 and "marginal_tvd" in rep["utility"]
    assert main(["export", "households", "--db", str(d / "s.db"), *role_args(d), "--k", "1",
                 "--out", str(d / "bad.csv")]) == 2
    assert not (d / "bad.csv").exists()
    with AuditLog(audit_db(d / "s.db")) as log:
        last = list(log.entries())[-1]
    assert last.action == "export-households" and last.decision == "refuse"


# -- copies are found by value, not by text ("1" vs "1.0") -----------------------------------------
def _few_values(n: int, seed: int) -> pd.DataFrame:
    """Few categories and whole kWh 5..24: synthetic rows often equal a real row numerically."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"home_type": rng.choice(["flat", "detached"], n), "occupants": rng.integers(1, 3, n),
                         "tariff_type": ["flat"] * n, "region": rng.choice(["north", "south"], n),
                         "kwh_2026-01": rng.integers(5, 25, n)})


def _numeric_keys(table: pd.DataFrame) -> set[tuple]:
    """Row identities computed here, independently: text for categories, float for kWh."""
    return {(str(r.home_type), str(r.occupants), str(r.tariff_type), str(r.region), float(r[4]))
            for r in table.itertuples(index=False)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_copies_are_detected_numerically_and_redrawn(seed):
    df = _few_values(60, seed)
    res = an.synthesize(df, 50, k=5, seed=seed)
    assert res.redraws > 0  # copies occurred (as numbers) and were redrawn
    assert res.copies == 0 and not (_numeric_keys(df) & _numeric_keys(res.table))
    assert res.table["kwh_2026-01"].dtype.kind == "i"  # whole kWh written like the real ones ("12", not "12.0")


def test_synthetic_copies_that_cannot_be_avoided_are_counted():
    df = pd.DataFrame({"home_type": ["flat"] * 20, "occupants": [1] * 20, "tariff_type": ["flat"] * 20,
                       "region": ["north"] * 20, "kwh_2026-01": [1] * 20})  # every draw is (..., 1)
    res = an.synthesize(df, 50, k=5, seed=0)
    assert res.copies == 50 and res.report()["copies_of_real_rows"] == 50
    assert res.utility["corr_kwh_occupants"] == {"real": None, "synth": None}


def test_row_keys_ignore_float_formatting():
    a = pd.DataFrame({"home_type": ["flat"], "kwh": [0.1 + 0.2]})
    b = pd.DataFrame({"home_type": ["flat"], "kwh": [0.3]})
    c = pd.DataFrame({"home_type": ["flat"], "kwh": [1]})
    d = pd.DataFrame({"home_type": ["flat"], "kwh": [1.0]})
    assert an._row_keys(a, ["kwh"], 1) == an._row_keys(b, ["kwh"], 1)
    assert an._row_keys(c, ["kwh"], 0) == an._row_keys(d, ["kwh"], 0)


def test_provisioning_vocabulary_matches_the_hierarchies():
    """Every value provisioning accepts is known to level 1 of its hierarchy (never "other")."""
    assert set(an.ATTRIBUTE_VALUES) | {"occupants"} == set(an.QUASI_IDENTIFIERS)
    for col, values in an.ATTRIBUTE_VALUES.items():
        assert all(an.HIERARCHIES[col][1](v) != "other" for v in values)
