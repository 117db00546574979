"""What the releases so far cost each household, per feeder per UTC day, and what the parameters buy.

Why a separate module: `meterveil privacy-report` prints it, tests and the demo read the same dict.
Nothing here needs a key: it reads metadata (DP parameters, counts) from the store and the released
cells folded from the decryption role's signed audit log, never a ciphertext.

Interface: ``build_report(db_path, released=None, daily_budget=None, delta=1e-6, gamma=0.2) -> dict``
(JSON-ready; `released` = Ledger.released_cells()) and ``format_report(report) -> str``.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

from meterveil.host.backoffice import dp

GUARANTEE = (
    "Unit of privacy: the household-day. For every feeder and UTC day, epsilon_spent bounds (at delta) how "
    "much the released feeder sums can tell about any one household's readings of that day (all of them, "
    "each moved by up to clamp_wh), assuming up to gamma of the feeder's frozen households collude or are "
    "dummies; epsilon_nominal assumes none does. Days compose: k days of one household cost at most the sum. "
    "Bills are exact by design (never finer than a week, per band) and not covered; see docs/PRIVACY.md.")


def _params(conn: sqlite3.Connection, delta: float, gamma: float) -> list[dict[str, Any]]:
    out = []
    for feeder, eps_milli, clamp, m, ilen, meters in conn.execute(
            "SELECT feeder, epsilon_milli, clamp_wh, m, interval_len, COUNT(DISTINCT meter_id) FROM readings "
            "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"):
        eps = eps_milli / 1000
        v = dp.share_variance(eps, clamp, m, ilen, delta)
        per_hour = 3600 // ilen
        n = max(meters, m)
        bad = dp.colluders(n, gamma)
        full_day = [(per_hour, per_hour * (n - bad) * v)] * 24
        out.append({
            "feeder": feeder, "epsilon_target": eps, "clamp_wh": clamp, "m": m, "meters": meters,
            "interval_s": ilen, "share_variance": v,
            "hourly_noise_sd_wh": round(math.sqrt(per_hour * n * v), 1),
            "day_epsilon_all_hours_gamma": round(dp.household_day_epsilon(clamp, full_day, delta), 4),
            "m_for_gamma": dp.honest_m(n, gamma),
        })
    return out


def build_report(db_path: str | Path, released: dict[tuple[str, str], list[Any]] | None = None,
                 daily_budget: float | None = None, delta: float = dp.DEFAULT_DELTA,
                 gamma: float = dp.DEFAULT_GAMMA) -> dict[str, Any]:
    """The privacy report for one store (read-only) and the released cells per (feeder, UTC day)."""
    p = Path(db_path)
    if not p.exists():
        raise FileNotFoundError(f"store {p} does not exist")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        params = _params(conn, delta, gamma)
        days = {(f, d): (meters, readings) for f, d, meters, readings in conn.execute(
            "SELECT feeder, date(interval_start, 'unixepoch'), COUNT(DISTINCT meter_id), COUNT(*) "
            "FROM readings GROUP BY 1, 2 ORDER BY 1, 2")}
    finally:
        conn.close()
    released = released or {}
    budget = dp.DEFAULT_EPSILON_DAY if daily_budget is None else daily_budget
    rows = []
    for key in sorted(set(days) | set(released)):
        cells = released.get(key, [])
        meters, readings = days.get(key, (0, 0))
        clamp = max((c.clamp_wh for c in cells), default=0)
        spent = dp.household_day_epsilon(clamp, [(c.intervals, c.noise_var) for c in cells], delta) if cells else 0.0
        nominal = dp.household_day_epsilon(
            clamp, [(c.intervals, c.noise_var_nominal) for c in cells], delta) if cells else 0.0
        rows.append({"feeder": key[0], "day": key[1], "meters": meters, "readings": readings,
                     "released_cells": len(cells), "released_intervals": sum(c.intervals for c in cells),
                     "cell_lengths_s": sorted({c.cell_len for c in cells}),
                     "epsilon_spent": round(spent, 4), "epsilon_nominal": round(nominal, 4),
                     "budget": budget, "remaining": round(budget - spent, 4)})
    return {"delta": delta, "gamma": gamma, "daily_budget": budget, "parameters": params,
            "feeder_days": rows, "guarantee": GUARANTEE}


def format_report(rep: dict[str, Any]) -> str:
    """Readable tables (pandas) for the terminal."""
    import pandas as pd

    lines = [f"DP parameters per feeder (delta={rep['delta']:g}, gamma={rep['gamma']:g} colluding):"]
    if rep["parameters"]:
        t = pd.DataFrame([{
            "feeder": q["feeder"], "eps/day target": q["epsilon_target"], "clamp_wh": q["clamp_wh"], "m": q["m"],
            "meters": q["meters"], "share_var": q["share_variance"], "hour_noise_sd_wh": q["hourly_noise_sd_wh"],
            "eps/day all hours": q["day_epsilon_all_hours_gamma"], "m for gamma": q["m_for_gamma"]}
            for q in rep["parameters"]])
        lines.append(t.to_string(index=False))
    else:
        lines.append("  (no readings)")
    lines.append("")
    lines.append(f"Household-day epsilon spent per feeder per UTC day (budget {rep['daily_budget']:g}):")
    if rep["feeder_days"]:
        t = pd.DataFrame([{
            "feeder": r["feeder"], "day": r["day"], "meters": r["meters"], "released cells": r["released_cells"],
            "intervals": r["released_intervals"], f"eps (gamma={rep['gamma']:g})": r["epsilon_spent"],
            "eps (no collusion)": r["epsilon_nominal"], "remaining": r["remaining"]} for r in rep["feeder_days"]])
        lines.append(t.to_string(index=False))
    else:
        lines.append("  (none)")
    lines.append("")
    lines.append(rep["guarantee"])
    return "\n".join(lines)
