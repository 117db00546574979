"""Safe household tables for researchers: k-anonymity by generalisation + suppression.

Input is a clean DataFrame: one row per household, the quasi-identifier columns QUASI_IDENTIFIERS
(home_type, occupants, tariff_type, region) and monthly kWh columns (``kwh_2026-01``, ...). Monthly
kWh is a quasi-identifier too (whoever knows a household's bill knows its kWh), so it is released only
in bins, top-coded at KWH_TOP_KWH, and counts in the equivalence classes like the attributes. The
export never contains a meter id, and row order is shuffled.

Why levels can be fixed: the least-generalised levels depend on the population; two exports of
overlapping populations generalised differently can be intersected (a household in a class of 5 in
one and a different class of 5 in the other may share both with only one other household). The
decryption role therefore fixes the levels at a deployment's first export and passes each household's
earlier releases as ``history``, so a class is households with the same row now *and* the same rows in
every earlier export (host/decryption/export.py).

Interface:
- ``k_anonymize(df, k, max_suppress=0.05, seed=None, levels=None, history=None) -> KAnonResult``
- ``generalise(df, levels)``, ``equivalence_class_sizes(df, qis)``, ``kwh_columns(df)``
The differentially private synthetic table is host/backoffice/dp_synth.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

QUASI_IDENTIFIERS = ("home_type", "occupants", "tariff_type", "region")
KWH = "kwh"  # the level key shared by every monthly kWh column
# What provisioning may record for each quasi-identifier (`meterveil provision --attr`, checked in
# tools/provision.py): the values the generalisation hierarchies below know, so no provisioned value
# falls into "other". occupants is a whole number in OCCUPANTS_RANGE.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "home_type": ("flat", "terraced", "semi-detached", "detached"),
    "tariff_type": ("flat", "tou", "ev"),
    "region": ("north", "central", "south", "coast"),
}
OCCUPANTS_RANGE = (1, 20)
# Monthly kWh bins per level (kWh wide), top-coded: a household above KWH_TOP_KWH is "1000+" (the
# few very large consumers are the ones a bill identifies best).
KWH_BIN_KWH = (50, 100, 250, 500)
KWH_TOP_KWH = 1000


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


def _kwh(width: int) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        x = int(v)
        if x >= KWH_TOP_KWH:
            return f"{KWH_TOP_KWH}+"
        lo = max(0, x) // width * width
        return f"{lo}-{min(lo + width, KWH_TOP_KWH) - 1}"
    return f


def _mapper(groups: Mapping[str, str]) -> Callable[[Any], str]:
    return lambda v: groups.get(str(v), "other")


def _star(_: Any) -> str:
    return "*"


def _ident(v: Any) -> str:
    return str(v)


# Generalisation hierarchies: level 0 = as provisioned (kWh: the finest bin), last level = "*".
HIERARCHIES: dict[str, list[Callable[[Any], str]]] = {
    "occupants": [_occupants(0), _occupants(1), _occupants(2), _occupants(3)],
    "home_type": [_ident, _mapper({"flat": "flat", "terraced": "house", "semi-detached": "house",
                                   "detached": "house"}), _star],
    "tariff_type": [_ident, _mapper({"flat": "flat", "tou": "time-of-use", "ev": "time-of-use"}), _star],
    "region": [_ident, _mapper({"north": "north/central", "central": "north/central", "south": "south/coast",
                                "coast": "south/coast"}), _star],
    KWH: [*(_kwh(w) for w in KWH_BIN_KWH), _star],
}
LEVEL_KEYS = (*QUASI_IDENTIFIERS, KWH)


def kwh_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if str(c).startswith("kwh_")]


def generalise(df: pd.DataFrame, levels: Mapping[str, int]) -> pd.DataFrame:
    """Copy of df with each quasi-identifier (and every kWh column, by the ``kwh`` level) generalised."""
    out = df.copy()
    for col, lvl in levels.items():
        for c in (kwh_columns(df) if col == KWH else [col]):
            if c in df.columns:
                out[c] = df[c].map(HIERARCHIES[col][lvl]).astype(str)
    return out


def equivalence_class_sizes(df: pd.DataFrame, qis: tuple[str, ...] | list[str] = QUASI_IDENTIFIERS) -> pd.Series:
    """Size of the equivalence class of every row (rows sharing all quasi-identifier values)."""
    qis = list(qis)
    return df.groupby(qis, dropna=False)[qis[0]].transform("size")


@dataclass(frozen=True)
class KAnonResult:
    table: pd.DataFrame  # released rows, shuffled, no index
    released: pd.DataFrame  # the same rows keyed by the input's index (meter ids), for the export ledger
    k: int
    k_achieved: int  # smallest class in the released table (>= k unless nothing was released)
    levels: dict[str, int]
    generalised: dict[str, str]  # column -> human description of what was done
    suppressed: int
    classes: int
    info_loss: float
    fixed: bool  # levels given (the deployment's), not searched

    def report(self) -> dict[str, Any]:
        return {"k": self.k, "k_achieved": self.k_achieved, "rows": len(self.table), "suppressed": self.suppressed,
                "classes": self.classes, "levels": self.levels, "levels_fixed": self.fixed,
                "generalised": self.generalised, "info_loss": round(self.info_loss, 4)}


_LEVEL_TEXT = {
    "occupants": ["exact", "bucketed 1-2 / 3-4 / 5+", "bucketed 1-2 / 3+", "suppressed"],
    "home_type": ["exact", "flat / house", "suppressed"],
    "tariff_type": ["exact", "flat / time-of-use", "suppressed"],
    "region": ["exact", "north+central / south+coast", "suppressed"],
    KWH: [*(f"{w} kWh bins, top-coded at {KWH_TOP_KWH}+" for w in KWH_BIN_KWH), "suppressed"],
}


def _loss(levels: Mapping[str, int], suppressed: int, rows: int) -> float:
    return float(np.mean([lv / (len(HIERARCHIES[c]) - 1) for c, lv in levels.items()])) + suppressed / max(rows, 1)


def _level_codes(df: pd.DataFrame, keys: list[str], as_is: bool = False) -> dict[str, list[np.ndarray]]:
    """Integer codes of every key column at every level of its hierarchy (or, `as_is`, of the column
    as it is, as level 0): the lattice search compares codes, not strings."""
    out: dict[str, list[np.ndarray]] = {}
    for col in keys:
        h = HIERARCHIES[KWH if col.startswith("kwh_") else col]
        if as_is:
            out[col] = [pd.factorize(df[col].astype(str))[0]]
        else:
            out[col] = [pd.factorize(df[col].map(f).astype(str))[0] for f in h]
    return out


def _class_sizes(codes: dict[str, list[np.ndarray]], node: Mapping[str, int], keys: list[str],
                 hist: np.ndarray | None) -> np.ndarray:
    """Size of every row's class under `node` (rows equal on every key column and on history)."""
    cols = [codes[c][node[KWH if c.startswith("kwh_") else c]] for c in keys]
    if hist is not None:
        cols.append(hist)
    _, inverse, counts = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()]


def k_anonymize(df: pd.DataFrame, k: int, max_suppress: float = 0.05, seed: int | None = None,
                levels: Mapping[str, int] | None = None, history: pd.Series | None = None) -> KAnonResult:
    """k-anonymous version of df: with `levels`, those (suppressing every class below k, however many);
    else the least-generalised levels suppressing at most max_suppress of the rows.

    Search: full lattice (4*3*3*3*5 = 540 nodes); loss = mean normalised level + suppressed fraction
    (ties: more classes); if no node qualifies, everything is generalised to "*". `history` (one string
    per row, same index) splits classes by what earlier exports released about each household.
    Rows are shuffled with `seed` (None = fresh randomness): a known permutation of rows sorted by
    meter id would link rows back to meters, so production exports must not pass a seed.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    missing = [c for c in QUASI_IDENTIFIERS if c not in df.columns]
    if missing:
        raise ValueError(f"missing quasi-identifier columns {missing}")
    keys = [*QUASI_IDENTIFIERS, *kwh_columns(df)]
    hist = None if history is None else pd.factorize(history.reindex(df.index).fillna(""))[0]
    if levels is None:
        codes = _level_codes(df, keys)
        best: tuple[float, int, dict[str, int]] | None = None
        for combo in itertools.product(*(range(len(HIERARCHIES[c])) for c in LEVEL_KEYS)):
            node = dict(zip(LEVEL_KEYS, combo, strict=True))
            sizes = _class_sizes(codes, node, keys, hist)
            suppressed = int((sizes < k).sum())
            if suppressed > max_suppress * len(df):
                continue
            loss = _loss(node, suppressed, len(df))
            classes = int(round(float((1.0 / sizes[sizes >= k]).sum())))
            if best is None or (loss, -classes) < (best[0], -best[1]):
                best = (loss, classes, node)
        chosen = best[2] if best is not None else {c: len(HIERARCHIES[c]) - 1 for c in LEVEL_KEYS}
    else:
        chosen = {c: int(levels[c]) for c in LEVEL_KEYS}
    g = generalise(df, chosen)
    sizes = pd.Series(_class_sizes(_level_codes(g, keys, as_is=True), {c: 0 for c in LEVEL_KEYS}, keys, hist),
                      index=df.index)
    keep = g[sizes >= k]
    if len(keep) < k:  # fewer than k rows in total: nothing can be released
        keep = keep.iloc[0:0]
    out = keep.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    k_ach = int(sizes[keep.index].min()) if len(keep) else 0
    return KAnonResult(table=out, released=keep, k=k, k_achieved=k_ach, levels=chosen,
                       generalised={c: _LEVEL_TEXT[c][lv] for c, lv in chosen.items()},
                       suppressed=len(df) - len(out), classes=int(out[keys].drop_duplicates().shape[0]) if len(out) else 0,
                       info_loss=_loss(chosen, len(df) - len(out), len(df)), fixed=levels is not None)


# -- utility -------------------------------------------------------------------------------------
def tvd(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance between two categorical distributions (0 = same, 1 = disjoint)."""
    pa, pb = a.astype(str).value_counts(normalize=True), b.astype(str).value_counts(normalize=True)
    idx = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(idx, fill_value=0) - pb.reindex(idx, fill_value=0)).sum())
