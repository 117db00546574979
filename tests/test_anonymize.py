"""k-anonymity and synthetic households (host/backoffice/anonymize.py) and the audited export command."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from roles import audit_db, role_dir_for, session

from meterveil.host.audit import signing
from meterveil.host.audit.chain import AuditLog
from meterveil.host.backoffice import anonymize as an
from meterveil.host.cli.main import main
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.role import Policy
from meterveil.host.decryption.secret_key import generate_keypair, load_private
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
    """Smallest equivalence class over every released column (attributes and kWh bins), counted
    without the module's groupby machinery."""
    counts = Counter(tuple(str(v) for v in row) for row in table.itertuples(index=False))
    return min(counts.values())


@pytest.mark.parametrize("k", [2, 5, 10])
def test_k_anonymity_holds_by_independent_count(k):
    df = households(250)
    res = an.k_anonymize(df, k)
    assert len(res.table) + res.suppressed == len(df)
    assert res.suppressed <= 0.05 * len(df)
    assert min_class_independent(res.table) >= k
    assert res.k_achieved == min_class_independent(res.table)
    # generalisation is reported and consistent with the values present
    if res.levels["occupants"] == 1:
        assert set(res.table["occupants"]) <= {"1-2", "3-4", "5+"}
    assert set(res.generalised) == set(QI) | {an.KWH}


def test_kwh_is_a_quasi_identifier_released_in_top_coded_bins():
    """A known bill must not find its row: kWh leaves only as a bin, and the largest consumers (the
    easiest to recognise) share one top-coded bin."""
    df = households(250)
    df.loc[0, "kwh_2026-01"] = 4321
    res = an.k_anonymize(df, 5, levels={**{q: 3 if q == "occupants" else 2 for q in QI}, an.KWH: 0})
    cols = an.kwh_columns(res.table)
    assert cols == ["kwh_2026-01", "kwh_2026-02"]
    width = an.KWH_BIN_KWH[0]
    for c in cols:
        for label in res.table[c]:
            assert label == f"{an.KWH_TOP_KWH}+" or int(label.split("-")[1]) - int(label.split("-")[0]) == width - 1
    assert not any(str(v) == "4321" for v in res.table.to_numpy().ravel())
    assert an.HIERARCHIES[an.KWH][0](4321) == an.HIERARCHIES[an.KWH][0](an.KWH_TOP_KWH) == f"{an.KWH_TOP_KWH}+"


def test_raw_table_is_not_k_anonymous_so_generalisation_was_needed():
    df = households(250)
    assert min_class_independent(df.astype({"occupants": str})) < 5
    res = an.k_anonymize(df, 5)
    assert any(level > 0 for level in res.levels.values())


def test_too_few_rows_release_nothing():
    res = an.k_anonymize(households(4), 5)
    assert len(res.table) == 0 and res.suppressed == 4 and res.k_achieved == 0


def test_fixed_levels_are_used_and_every_small_class_suppressed():
    df = households(120)
    levels = {"home_type": 0, "occupants": 0, "tariff_type": 0, "region": 0, an.KWH: 0}
    res = an.k_anonymize(df, 5, levels=levels)  # finest levels: most classes are small
    assert res.levels == levels and res.fixed and res.suppressed > 0.05 * len(df)
    assert len(res.table) == 0 or min_class_independent(res.table) >= 5


# -- several exports of overlapping populations ------------------------------------------------------
def _exports(population: pd.DataFrame, subsets: list[list[str]], month_sets: list[list[str]], k: int,
             with_history: bool) -> list[dict[str, tuple]]:
    """Run successive exports; each returns meter_id -> released row. with_history=False is the old
    behaviour: levels searched per export, earlier exports ignored."""
    from meterveil.host.decryption.export import anonymize_with_history

    earlier, scheme, out = [], None, []
    for seq, (ids, months) in enumerate(zip(subsets, month_sets, strict=True), start=1):
        table = population.loc[ids, [*QI, *months]]
        if with_history:
            kres, rows, scheme = anonymize_with_history(table, k, 0.05, seq, earlier, scheme)
            earlier.append((seq, rows))
        else:
            kres = an.k_anonymize(table, k, seed=seq)
        out.append({mid: tuple(str(v) for v in row) for mid, row in kres.released.iterrows()})
    return out


def _smallest_linked_set(exports: list[dict[str, tuple]]) -> int:
    """The linking adversary: for every set of two or more exports and every household released in
    all of them, the households released in all of them with the same row in each (it cannot tell
    them apart). Smallest."""
    worst = 10 ** 9
    for r in range(2, len(exports) + 1):
        for group in itertools.combinations(exports, r):
            common = set.intersection(*(set(e) for e in group))
            sig = Counter(tuple(e[m] for e in group) for m in common)
            if common:
                worst = min(worst, min(sig.values()))
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exports_of_overlapping_populations_never_link_below_k(seed):
    rng = np.random.default_rng(seed)
    pop = households(240, seed=seed)
    pop["kwh_2026-03"] = pop["kwh_2026-02"] + rng.integers(-40, 40, len(pop))
    pop.index = [f"m{i:04d}" for i in range(len(pop))]
    ids = list(pop.index)
    subsets = [sorted(rng.choice(ids, 190, replace=False)), sorted(rng.choice(ids, 150, replace=False)),
               ids[:90]]
    months = [["kwh_2026-01", "kwh_2026-02"], ["kwh_2026-02", "kwh_2026-03"], ["kwh_2026-01"]]
    k = 5
    linked = _exports(pop, subsets, months, k, with_history=True)
    assert all(len(e) > 0 for e in linked)
    assert all(min(Counter(e.values()).values()) >= k for e in linked)  # each one k-anonymous
    assert _smallest_linked_set(linked) >= k
    # the old behaviour (levels per population, no history) links below k on the same data
    assert _smallest_linked_set(_exports(pop, subsets, months, k, with_history=False)) < k


# -- differentially private synthetic households --------------------------------------------------
def test_dp_synthetic_rows_are_on_the_public_domain_and_outliers_do_not_echo():
    from meterveil.host.backoffice import dp_synth

    df = households(300)
    df.loc[0, "occupants"] = 12
    df.loc[0, "kwh_2026-01"] = 5000
    res = dp_synth.synthesize(df, 1000, epsilon=1.0, seed=1)
    assert len(res.table) == 1000 and list(res.table.columns) == list(df.columns)
    assert set(res.table["occupants"]) <= set(dp_synth.OCCUPANT_BUCKETS)
    assert set(res.table["kwh_2026-01"]) <= set(dp_synth.kwh_domain())
    for col, vocab in an.ATTRIBUTE_VALUES.items():
        assert set(res.table[col]) <= set(vocab)
    assert res.report()["epsilon"] == 1.0 and res.report()["delta"] == 0.0
    # noise scale is (number of measured marginals) / epsilon, as the docstring's accounting says
    assert res.model["noise_scale_households"] == pytest.approx(len(res.model["marginals"]) / 1.0)


def test_dp_synthetic_keeps_the_measured_marginals_when_the_budget_is_large():
    from meterveil.host.backoffice import dp_synth

    df = households(400)
    loose = dp_synth.synthesize(df, 4000, epsilon=200.0, seed=2)
    tight = dp_synth.synthesize(df, 4000, epsilon=0.05, seed=2)
    real, _ = dp_synth.discretise(df)

    def worst(res):  # distance to the real table, computed here (the report has only noisy-side figures)
        return max(an.tvd(real[c], res.table[c]) for c in res.table.columns)

    assert worst(loose) < 0.06
    assert worst(tight) > worst(loose)
    assert set(loose.utility["marginal_tvd_vs_measured"]) == set(df.columns)


def test_dp_synthetic_noise_is_calibrated():
    """The discrete Laplace draws have the variance of scale b: 2 e^(-1/b) / (1 - e^(-1/b))^2."""
    from meterveil.host.backoffice import dp_synth

    b = 6.0
    x = dp_synth._discrete_laplace((200_000,), b, np.random.default_rng(3))
    q = np.exp(-1 / b)
    assert x.dtype.kind == "i" and abs(x.mean()) < 0.1
    assert x.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.03)


def test_distances():
    a = pd.Series(["x"] * 50 + ["y"] * 50)
    assert an.tvd(a, a) == 0
    assert an.tvd(pd.Series(["x"] * 10), pd.Series(["y"] * 10)) == 1


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
    table = pd.read_csv(out, dtype=str)
    assert "meter_id" not in table.columns
    assert list(table.columns[:4]) == QI and {"kwh_2026-01", "kwh_2026-02"} <= set(table.columns)
    assert min_class_independent(table) >= 5  # independent count on the file, kWh bins included
    report = json.loads((d / "hh.csv.report.json").read_text())
    assert report["k_achieved"] >= 5 and report["rows"] == len(table)
    assert report["rows"] + report["suppressed"] == 60
    # the released kWh are the decrypted monthly totals, binned at the level the report names
    binned = an.HIERARCHIES[an.KWH][report["levels"][an.KWH]]
    expect = Counter(binned(round(v["kwh_2026-01"] / 1000)) for v in truth.values())
    got = Counter(table["kwh_2026-01"])
    assert all(got[b] <= expect[b] for b in got) and sum(got.values()) == report["rows"]
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
                 "--synthetic", "300", "--epsilon", "3", "--out", str(out), "--seed", "4"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 300 and "meter_id" not in rows[0]
    rep = json.loads((d / "syn.csv.report.json").read_text())
    assert rep["epsilon"] == 3.0 and rep["epsilon_spent_total"] == 3.0 and "marginal_tvd_vs_measured" in rep["utility"]
    # nothing measured without noise beside a DP table: no exact household counts in its report
    assert not {"households_in", "households_left_out_refused", "refused_by_decryption_role"} & set(rep)
    # the deployment's synthetic exports share one cap: 3 + 2 > 4 is refused and audited, nothing written
    assert main(["export", "households", "--db", str(d / "s.db"), *role_args(d), "--synthetic", "300",
                 "--epsilon", "2", "--out", str(d / "syn2.csv")]) == 2
    assert not (d / "syn2.csv").exists()
    assert main(["export", "households", "--db", str(d / "s.db"), *role_args(d), "--k", "1",
                 "--out", str(d / "bad.csv")]) == 2
    assert not (d / "bad.csv").exists()
    with AuditLog(audit_db(d / "s.db")) as log:
        exports = [e for e in log.entries() if e.action == "export-households"]
    assert [e.decision for e in exports[-2:]] == ["refuse", "refuse"]
    assert "cap" in exports[-2].reason


def test_second_export_keeps_the_first_exports_levels_and_k(utility, tmp_path):
    """Two exports of overlapping populations (two registries): the second uses the levels the first
    fixed, refuses a smaller k, and no household shares its pair of rows with fewer than k others."""
    d, _ = utility
    full = MeterRegistry.load(d / "registry" / "meters.json")
    recs = list(full)
    regs = []
    for name, part in (("a", recs[:45]), ("b", recs[15:])):
        r = MeterRegistry.load(tmp_path / name / "meters.json")
        for rec in part:
            r.put(rec, save=False)
        r.save()
        regs.append(tmp_path / name / "meters.json")
    args = ["export", "households", "--db", str(d / "s.db"), "--role-dir", str(d / "decryption")]
    assert main([*args, "--registry", str(regs[0]), "--k", "5", "--out", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--registry", str(regs[1]), "--k", "3", "--out", str(tmp_path / "x.csv")]) == 2
    assert main([*args, "--registry", str(regs[1]), "--k", "5", "--out", str(tmp_path / "b.csv")]) == 0
    ra, rb = (json.loads((tmp_path / f"{x}.csv.report.json").read_text()) for x in "ab")
    assert rb["levels"] == ra["levels"] and rb["levels_fixed"] and rb["earlier_exports"] >= 1
    with AuditLog(audit_db(d / "s.db")) as log:
        allowed = [e for e in log.entries() if e.action == "export-households" and e.decision == "allow"
                   and e.query.get("mode") == "k-anonymous"]
    # what an auditor reads: no meter id and no row equality, only an opaque sealed ledger
    for e in allowed[-2:]:
        assert "released" not in e.query and not any(rec.meter_id in e.query["released_sealed"] for rec in recs)
    assert allowed[-2].query["released_sealed"] != allowed[-1].query["released_sealed"]
    with session(d / "s.db", load_private(d / "decryption"), "test", Policy()) as role:
        a, b = (role.open_private(e.query["released_sealed"]) for e in allowed[-2:])
    both = set(a) & set(b)
    assert both
    pairs = Counter((json.dumps(a[m], sort_keys=True), json.dumps(b[m], sort_keys=True)) for m in both)
    assert min(pairs.values()) >= 5


def test_provisioning_vocabulary_matches_the_hierarchies():
    """Every value provisioning accepts is known to level 1 of its hierarchy (never "other")."""
    assert set(an.ATTRIBUTE_VALUES) | {"occupants"} == set(an.QUASI_IDENTIFIERS)
    for col, values in an.ATTRIBUTE_VALUES.items():
        assert all(an.HIERARCHIES[col][1](v) != "other" for v in values)
