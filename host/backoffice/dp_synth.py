"""Differentially private synthetic households: noisy marginals on a public domain, then sampling.

Why not k-anonymous synthesis: a generator fitted to the real rows echoes outliers (one household
with 12 occupants gave 8 synthetic rows with 12 and moved the synthetic mean kWh by 4%). Here every
released number comes from an epsilon-DP measurement, so one household, whatever its values, changes
the output distribution by at most a factor e^epsilon.

Mechanism (a fixed-structure cousin of MST, McKenna, Miklau, Sheldon 2021; the structure is fixed
in advance instead of chosen from the data, so choosing it costs no budget):
1. Every column is put on a **public domain** fixed before looking at any data: the provisioning
   vocabularies of the attributes, occupants in buckets 1-2 / 3-4 / 5+, monthly kWh in KWH_WIDTH bins
   top-coded at KWH_TOP_KWH. Values outside cannot occur (provisioning checks them) or are top-coded.
2. **Measured marginals** along a tree: home_type; (home_type, occupants); (home_type, tariff_type);
   region; (occupants, first month's kWh); (month i-1, month i) kWh for each later month.
3. Under add/remove-one-household neighbours each marginal changes by 1 in one cell, so the t
   marginals together have L1 sensitivity t. Every cell gets independent **discrete Laplace** noise
   with scale t/epsilon (the difference of two geometric variables: integer counts, so no
   floating-point noise bits to attack): the whole measurement is (epsilon, 0)-DP.
4. Post-processing (no further privacy cost): negative counts clipped to 0, conditionals normalised
   (an all-zero row falls back to the child's noisy marginal), rows sampled root to leaves.

What it keeps: each measured marginal up to noise ~ t/epsilon households per cell; what it loses:
relations outside the tree (region is independent of the rest) and detail inside a kWh bin.
Interface: ``synthesize(df, n, epsilon=1.0, seed=None) -> SynthResult``.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from meterveil.host.backoffice.anonymize import (
    ATTRIBUTE_VALUES,
    HIERARCHIES,
    KWH,
    KWH_BIN_KWH,
    KWH_TOP_KWH,
    QUASI_IDENTIFIERS,
    kwh_columns,
)

KWH_WIDTH = 100  # one of anonymize.KWH_BIN_KWH: the synthetic table's bins read like the k-anonymous one's
OCCUPANT_BUCKETS = ("1-2", "3-4", "5+")
_kwh_label = HIERARCHIES[KWH][KWH_BIN_KWH.index(KWH_WIDTH)]
_occupant_label = HIERARCHIES["occupants"][1]


def kwh_domain() -> list[str]:
    return [_kwh_label(lo) for lo in range(0, KWH_TOP_KWH + 1, KWH_WIDTH)]


def discretise(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(df on the public domain, the domain of every column)."""
    months = kwh_columns(df)
    out = pd.DataFrame(index=df.index)
    domains: dict[str, list[str]] = {}
    for col in QUASI_IDENTIFIERS:
        if col == "occupants":
            out[col], domains[col] = df[col].map(_occupant_label), list(OCCUPANT_BUCKETS)
        else:
            vocab = list(ATTRIBUTE_VALUES[col])
            out[col] = df[col].astype(str).where(df[col].astype(str).isin(vocab), vocab[0])
            domains[col] = vocab
    for c in months:
        out[c], domains[c] = df[c].map(_kwh_label), kwh_domain()
    return out, domains


def tree(months: list[str]) -> list[tuple[str | None, str]]:
    """(parent, child) in sampling order; a None parent is a one-way marginal."""
    edges: list[tuple[str | None, str]] = [(None, "home_type"), ("home_type", "occupants"),
                                           ("home_type", "tariff_type"), (None, "region")]
    prev = "occupants"
    for c in months:
        edges.append((prev, c))
        prev = c
    return edges


def _discrete_laplace(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    # P(k) proportional to exp(-|k| / scale): difference of two geometric counts of failures.
    p = -math.expm1(-1.0 / scale)
    return (rng.geometric(p, size=shape) - rng.geometric(p, size=shape)).astype(np.int64)


@dataclass(frozen=True)
class SynthResult:
    table: pd.DataFrame
    epsilon: float
    utility: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"rows": len(self.table), "epsilon": self.epsilon, "delta": 0.0, "model": self.model,
                "utility": self.utility}


def synthesize(df: pd.DataFrame, n: int, epsilon: float = 1.0, seed: int | None = None) -> SynthResult:
    """n synthetic households from an epsilon-DP measurement of df's tree marginals.

    `seed` is for tests only: a known seed makes the noise known and the guarantee void."""
    if n < 1:
        raise ValueError("need n >= 1")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError("epsilon must be a positive number")
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(128))
    real, domains = discretise(df)
    edges = tree(kwh_columns(df))
    scale = len(edges) / epsilon
    noisy: dict[str, np.ndarray] = {}
    for parent, child in edges:
        cdom = domains[child]
        if parent is None:
            counts = real[child].value_counts().reindex(cdom, fill_value=0).to_numpy()
        else:
            counts = pd.crosstab(real[parent], real[child]).reindex(
                index=domains[parent], columns=cdom, fill_value=0).to_numpy()
        noisy[child] = np.clip(counts + _discrete_laplace(counts.shape, scale, rng), 0, None).astype(float)
    out: dict[str, np.ndarray] = {}
    for parent, child in edges:
        cdom = np.array(domains[child], dtype=object)
        m = noisy[child]
        if parent is None:
            out[child] = rng.choice(cdom, size=n, p=_normalise(m))
            continue
        fallback = _normalise(m.sum(axis=0))
        drawn = np.empty(n, dtype=object)
        pidx = {v: i for i, v in enumerate(domains[parent])}
        for pv in np.unique(out[parent]):
            rows = np.flatnonzero(out[parent] == pv)
            row = m[pidx[pv]]
            drawn[rows] = rng.choice(cdom, size=len(rows), p=_normalise(row) if row.sum() > 0 else fallback)
        out[child] = drawn
    cols = [*QUASI_IDENTIFIERS, *kwh_columns(df)]
    synth = pd.DataFrame(out)[cols]
    model = {"mechanism": "discrete Laplace on tree marginals over a public domain",
             "marginals": [f"{p}x{c}" if p else c for p, c in edges], "noise_scale_households": round(scale, 3),
             "domain": {"occupants": "buckets 1-2/3-4/5+",
                        "kwh": f"{KWH_WIDTH} kWh bins, top-coded at {KWH_TOP_KWH}+"}}
    # Utility against the *noisy* marginals (post-processing): a distance to the real table would be a
    # number measured without noise, beside a table that is supposed to be epsilon-DP.
    measured = {c: pd.Series(noisy[c] if p is None else noisy[c].sum(axis=0), index=domains[c]) for p, c in edges}
    utility = {"marginal_tvd_vs_measured": {c: round(_tvd_to(synth[c], measured[c]), 4) for c in cols}}
    return SynthResult(table=synth, epsilon=float(epsilon), utility=utility, model=model)


def _tvd_to(sample: pd.Series, weights: pd.Series) -> float:
    """Total variation distance between a sample's distribution and (unnormalised) weights."""
    p = sample.astype(str).value_counts(normalize=True).reindex(weights.index, fill_value=0.0)
    q = pd.Series(_normalise(weights.to_numpy()), index=weights.index)
    return float(0.5 * (p - q).abs().sum())


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    total = v.sum()
    return np.full(len(v), 1.0 / len(v)) if total <= 0 else v / total
