"""Safe household tables for researchers: k-anonymity by generalisation + suppression, or synthetic rows.

Why both: a k-anonymous table keeps the real rows (exact monthly kWh) but coarsens who they are; a
synthetic table keeps only the statistics (marginals, and pairwise relations where every cell they
rest on has at least k households), so no row belongs to anybody. Either way the export never
contains a meter id, and row order is shuffled.

Input is a clean DataFrame: one row per household, the quasi-identifier columns QUASI_IDENTIFIERS
(home_type, occupants, tariff_type, region) and numeric columns (monthly kWh, e.g. ``kwh_2026-01``).

Interface:
- ``k_anonymize(df, k, max_suppress=0.05) -> KAnonResult`` (table, levels per QI, suppressed, k achieved)
- ``synthesize(df, n, k, seed) -> SynthResult`` (table, utility report, copy check)
- ``generalise(df, levels)``, ``equivalence_class_sizes(df, qis)``, ``utility_report(real, synth)``
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

QUASI_IDENTIFIERS = ("home_type", "occupants", "tariff_type", "region")
# What provisioning may record for each quasi-identifier (`meterveil provision --attr`, checked in
# tools/provision.py): the values the generalisation hierarchies below know, so no provisioned value
# falls into "other". occupants is a whole number in OCCUPANTS_RANGE.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "home_type": ("flat", "terraced", "semi-detached", "detached"),
    "tariff_type": ("flat", "tou", "ev"),
    "region": ("north", "central", "south", "coast"),
}
OCCUPANTS_RANGE = (1, 20)


def _occupants(level: int) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        n = int(v)
        if level == 0:
            return str(n)
        if level == 1:
            return "1-2" if n <= 2 else ("3-4" if n <= 4 else "5+")
        if level == 2:
            return "1-2" if n <= 2 else "3+"
        return "*"
    return f


def _mapper(groups: Mapping[str, str]) -> Callable[[Any], str]:
    return lambda v: groups.get(str(v), "other")


def _star(_: Any) -> str:
    return "*"


def _ident(v: Any) -> str:
    return str(v)


# Generalisation hierarchies: level 0 = as provisioned, last level = fully suppressed ("*").
HIERARCHIES: dict[str, list[Callable[[Any], str]]] = {
    "occupants": [_occupants(0), _occupants(1), _occupants(2), _occupants(3)],
    "home_type": [_ident, _mapper({"flat": "flat", "terraced": "house", "semi-detached": "house",
                                   "detached": "house"}), _star],
    "tariff_type": [_ident, _mapper({"flat": "flat", "tou": "time-of-use", "ev": "time-of-use"}), _star],
    "region": [_ident, _mapper({"north": "north/central", "central": "north/central", "south": "south/coast",
                                "coast": "south/coast"}), _star],
}


def generalise(df: pd.DataFrame, levels: Mapping[str, int]) -> pd.DataFrame:
    """Copy of df with each quasi-identifier mapped to its hierarchy level."""
    out = df.copy()
    for col, lvl in levels.items():
        out[col] = df[col].map(HIERARCHIES[col][lvl]).astype(str)
    return out


def equivalence_class_sizes(df: pd.DataFrame, qis: tuple[str, ...] = QUASI_IDENTIFIERS) -> pd.Series:
    """Size of the equivalence class of every row (rows sharing all quasi-identifier values)."""
    return df.groupby(list(qis), dropna=False)[qis[0]].transform("size")


@dataclass(frozen=True)
class KAnonResult:
    table: pd.DataFrame
    k: int
    k_achieved: int  # smallest class in the released table (>= k unless nothing was released)
    levels: dict[str, int]
    generalised: dict[str, str]  # column -> human description of what was done
    suppressed: int
    classes: int
    info_loss: float

    def report(self) -> dict[str, Any]:
        return {"k": self.k, "k_achieved": self.k_achieved, "rows": len(self.table), "suppressed": self.suppressed,
                "classes": self.classes, "levels": self.levels, "generalised": self.generalised,
                "info_loss": round(self.info_loss, 4)}


_LEVEL_TEXT = {
    "occupants": ["exact", "bucketed 1-2 / 3-4 / 5+", "bucketed 1-2 / 3+", "suppressed"],
    "home_type": ["exact", "flat / house", "suppressed"],
    "tariff_type": ["exact", "flat / time-of-use", "suppressed"],
    "region": ["exact", "north+central / south+coast", "suppressed"],
}


def k_anonymize(df: pd.DataFrame, k: int, max_suppress: float = 0.05, seed: int | None = None) -> KAnonResult:
    """Least-generalised k-anonymous version of df, suppressing at most max_suppress of the rows.

    Full search of the generalisation lattice (4*3*3*3 = 108 nodes): for each node, rows in classes
    smaller than k would be suppressed; among nodes within the suppression limit pick the one with the
    least information loss = mean normalised level + suppressed fraction (ties: more classes). If no
    node qualifies the fully generalised node is used (one class; k-anonymous iff len(df) >= k).
    Rows are shuffled with `seed` (None = fresh randomness): a known permutation of rows sorted by
    meter id would link rows back to meters, so production exports must not pass a seed.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    qis = list(QUASI_IDENTIFIERS)
    missing = [c for c in qis if c not in df.columns]
    if missing:
        raise ValueError(f"missing quasi-identifier columns {missing}")
    best: tuple[float, int, dict[str, int]] | None = None
    for combo in itertools.product(*(range(len(HIERARCHIES[c])) for c in qis)):
        levels = dict(zip(qis, combo, strict=True))
        g = generalise(df[qis], levels)
        sizes = equivalence_class_sizes(g)
        suppressed = int((sizes < k).sum())
        if suppressed > max_suppress * len(df):
            continue
        loss = float(np.mean([lv / (len(HIERARCHIES[c]) - 1) for c, lv in levels.items()])) + suppressed / max(len(df), 1)
        classes = int(g[sizes >= k].drop_duplicates().shape[0])
        if best is None or (loss, -classes) < (best[0], -best[1]):
            best = (loss, classes, levels)
    if best is None:
        levels = {c: len(HIERARCHIES[c]) - 1 for c in qis}
        loss = 1.0
    else:
        loss, _, levels = best
    g = generalise(df, levels)
    sizes = equivalence_class_sizes(g)
    keep = g[sizes >= k]
    suppressed = len(g) - len(keep)
    if len(keep) < k:  # fewer than k rows in total: nothing can be released
        keep = keep.iloc[0:0]
    out = keep.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    k_ach = int(equivalence_class_sizes(out).min()) if len(out) else 0
    return KAnonResult(table=out, k=k, k_achieved=k_ach, levels=levels,
                       generalised={c: _LEVEL_TEXT[c][lv] for c, lv in levels.items()},
                       suppressed=suppressed + (len(g) - suppressed - len(out)),
                       classes=int(out[qis].drop_duplicates().shape[0]) if len(out) else 0, info_loss=loss)


# -- synthetic records --------------------------------------------------------------------------
# Sampling order for the categorical part: each column conditioned on at most one parent.
_PARENTS: dict[str, str | None] = {"home_type": None, "occupants": "home_type", "tariff_type": "home_type",
                                   "region": None}


@dataclass(frozen=True)
class SynthResult:
    table: pd.DataFrame
    utility: dict[str, Any]
    copies: int  # synthetic rows equal to some real row on every column, numbers compared as numbers
    # at the released precision (after redraws; must be 0)
    redraws: int
    model: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"rows": len(self.table), "copies_of_real_rows": self.copies, "redraws": self.redraws,
                "model": self.model, "utility": self.utility}


def _numeric_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in QUASI_IDENTIFIERS and pd.api.types.is_numeric_dtype(df[c])]


def _conditional_table(df: pd.DataFrame, col: str, parent: str, k: int) -> pd.DataFrame | None:
    """P(col | parent) using only cells backed by >= k households; None if no cell qualifies.

    Why: a pairwise cell with fewer than k households would let a synthetic row echo a rare real
    combination. Such cells are zeroed and their mass goes back to the row in proportion to the
    column's marginal restricted to the zeroed cells; parent values with fewer than k households
    use the marginal outright.
    """
    counts = pd.crosstab(df[parent], df[col]).astype(float)
    marginal = df[col].value_counts(normalize=True).reindex(counts.columns, fill_value=0.0)
    if not (counts >= k).to_numpy().any():
        return None
    rows = {}
    for pv, row in counts.iterrows():
        total = row.sum()
        if total < k:
            rows[pv] = marginal
            continue
        small = row < k
        kept = row.where(~small, 0.0)
        lost = total - kept.sum()
        refill = marginal.where(small, 0.0)
        if lost > 0 and refill.sum() > 0:
            kept = kept + lost * refill / refill.sum()
        rows[pv] = kept / kept.sum()
    return pd.DataFrame(rows).T


def _draw_categorical(df: pd.DataFrame, n: int, k: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    out: dict[str, np.ndarray] = {}
    used: dict[str, str | None] = {}
    for col, parent in _PARENTS.items():
        vals = df[col].astype(str)
        tab = _conditional_table(df.assign(**{col: vals}), col, parent, k) if parent else None
        if tab is not None and parent is not None:
            used[col] = parent
            drawn = np.empty(n, dtype=object)
            for pv in np.unique(out[parent]):
                idx = np.flatnonzero(out[parent] == pv)
                drawn[idx] = rng.choice(tab.columns.to_numpy(), size=len(idx), p=tab.loc[pv].to_numpy())
            out[col] = drawn
        else:
            used[col] = None
            freq = vals.value_counts(normalize=True)
            out[col] = rng.choice(freq.index.to_numpy(), size=n, p=freq.to_numpy())
    return pd.DataFrame(out), used


def _draw_numeric(df: pd.DataFrame, cat: pd.DataFrame, k: int, rng: np.random.Generator,
                  cond_col: str = "occupants") -> tuple[pd.DataFrame, str | None]:
    """Log-normal (multivariate over months) per occupant group if every group has >= k rows.

    Why log space and a shared covariance: monthly kWh is skewed and strongly correlated month to
    month; a per-group mean shift keeps the kWh-occupants relation, the pooled covariance keeps the
    months' joint shape without fitting anything to small groups.
    """
    cols = _numeric_cols(df)
    if not cols:
        return pd.DataFrame(index=cat.index), None
    x = np.log1p(df[cols].to_numpy(dtype=float).clip(min=0))
    groups = df[cond_col].astype(str)
    use_groups = bool(groups.value_counts().min() >= k) and groups.nunique() > 1
    means = {g: x[(groups == g).to_numpy()].mean(axis=0) for g in groups.unique()} if use_groups else {}
    resid = x - (np.vstack([means[g] for g in groups]) if use_groups else x.mean(axis=0))
    cov = np.atleast_2d(np.cov(resid, rowvar=False)) if len(x) > 1 else np.zeros((len(cols), len(cols)))
    mu = np.vstack([means.get(str(g), x.mean(axis=0)) for g in cat[cond_col]]) if use_groups \
        else np.tile(x.mean(axis=0), (len(cat), 1))
    one_spread = len(cols) == 1 and cov[0, 0] > 0  # cholesky fails on a constant column
    z = rng.multivariate_normal(np.zeros(len(cols)), cov, size=len(cat), method="cholesky" if one_spread else "svd")
    vals = np.expm1(mu + z).clip(min=0)
    decimals = _decimals(df[cols])
    out = pd.DataFrame(np.round(vals, decimals), columns=cols)
    if decimals == 0:  # whole kWh like the real table ("312", not "312.0")
        out = out.astype("int64")
    return out, (cond_col if use_groups else None)


def _decimals(df: pd.DataFrame) -> int:
    """Decimal places the real numeric columns are given with (so synthetic values look alike)."""
    v = df.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    for d in range(0, 4):
        if np.allclose(v, np.round(v, d)):
            return d
    return 3


def _row_keys(df: pd.DataFrame, numeric: list[str], decimals: int) -> list[tuple]:
    """Comparable identity of every row: categorical values as text, numbers as floats rounded to
    the precision the table is released with.

    Why numbers are not compared as text: real kWh read as int print "312", synthetic ones drawn
    as float print "312.0"; as text they never match and a copy of a real row would pass as new.
    Rounding to `decimals` also makes 0.1 + 0.2 equal 0.3. NaN compares equal to NaN here.
    """
    out: list[list] = []
    for c in df.columns:
        if c in numeric:
            v = np.round(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float), decimals) + 0.0  # -0.0 -> 0.0
            out.append([None if np.isnan(x) else float(x) for x in v])
        else:
            out.append(df[c].astype(str).tolist())
    return list(zip(*out, strict=True))


def synthesize(df: pd.DataFrame, n: int, k: int = 5, seed: int | None = None, max_redraw: int = 20) -> SynthResult:
    """n synthetic households preserving marginals and the safe pairwise relations of df.

    Any synthetic row identical to a real row on every column (kWh compared numerically at the real
    table's precision, so 312 and 312.0 are the same) is redrawn (up to max_redraw rounds);
    ``copies`` reports what remains (0 in practice, checked by the caller, which refuses otherwise).
    """
    if n < 1 or len(df) < 2:
        raise ValueError("need n >= 1 and at least 2 real rows")
    rng = np.random.default_rng(seed)
    cols = list(QUASI_IDENTIFIERS) + _numeric_cols(df)
    real = df[cols].copy()
    real["occupants"] = real["occupants"].astype(str)

    def draw(count: int) -> tuple[pd.DataFrame, dict, str | None]:
        cat, used = _draw_categorical(real, count, k, rng)
        num, cond = _draw_numeric(real, cat, k, rng)
        return pd.concat([cat.reset_index(drop=True), num.reset_index(drop=True)], axis=1)[cols], used, cond

    synth, used, cond = draw(n)
    numeric = _numeric_cols(real)
    decimals = _decimals(real[numeric]) if numeric else 0
    real_keys = set(_row_keys(real, numeric, decimals))

    def copied() -> np.ndarray:
        return np.array([key in real_keys for key in _row_keys(synth, numeric, decimals)], dtype=bool)

    redraws = 0
    for _ in range(max_redraw):
        dup = copied()
        if not dup.any():
            break
        redraws += int(dup.sum())
        fresh, _, _ = draw(int(dup.sum()))
        for c in cols:  # column by column: keeps each column's dtype
            synth.loc[dup, c] = fresh[c].to_numpy()
    copies = int(copied().sum())
    model = {"pairwise": {c: p for c, p in used.items() if p}, "kwh_conditioned_on": cond}
    return SynthResult(table=synth, utility=utility_report(real, synth), copies=copies, redraws=redraws, model=model)


# -- utility -------------------------------------------------------------------------------------
def tvd(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance between two categorical distributions (0 = same, 1 = disjoint)."""
    pa, pb = a.astype(str).value_counts(normalize=True), b.astype(str).value_counts(normalize=True)
    idx = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(idx, fill_value=0) - pb.reindex(idx, fill_value=0)).sum())


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance between empirical CDFs)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate((a, b))
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two 1-D samples (same units as the data), via quantiles."""
    q = np.linspace(0, 1, 201)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def utility_report(real: pd.DataFrame, synth: pd.DataFrame) -> dict[str, Any]:
    """Distances between real and synthetic: marginals (TVD / KS / W1), pairs (TVD), correlations."""
    rep: dict[str, Any] = {"marginal_tvd": {}, "pairwise_tvd": {}, "numeric": {}}
    for c in QUASI_IDENTIFIERS:
        rep["marginal_tvd"][c] = round(tvd(real[c], synth[c]), 4)
    for a, b in itertools.combinations(QUASI_IDENTIFIERS, 2):
        rep["pairwise_tvd"][f"{a}x{b}"] = round(tvd(real[a].astype(str) + "|" + real[b].astype(str),
                                                    synth[a].astype(str) + "|" + synth[b].astype(str)), 4)
    num = _numeric_cols(real)
    for c in num:
        r, s = real[c].to_numpy(float), synth[c].to_numpy(float)
        rep["numeric"][c] = {"ks": round(ks_statistic(r, s), 4), "w1_kwh": round(wasserstein1(r, s), 3),
                             "mean_real": round(float(r.mean()), 3), "mean_synth": round(float(s.mean()), 3)}
    if num:
        occ_r = pd.to_numeric(real["occupants"], errors="coerce")
        occ_s = pd.to_numeric(synth["occupants"], errors="coerce")
        rep["corr_kwh_occupants"] = {"real": _corr(occ_r, real[num].mean(axis=1)),
                                     "synth": _corr(occ_s, synth[num].mean(axis=1))}
    return rep


def _corr(a: pd.Series, b: pd.Series) -> float | None:
    """Pearson correlation rounded to 3 places; None when either side is constant (undefined)."""
    x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    if len(x) < 2 or not np.std(x) > 0 or not np.std(y) > 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 3)
