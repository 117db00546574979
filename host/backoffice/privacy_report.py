"""What the store's readings and the releases so far cost in privacy, per feeder per day.

Why a separate module: `meterveil privacy-report` prints it, tests and the demo
read the same dict. Nothing here needs a key: it reads only metadata (DP parameters, counts,
contributors, the release ledger), never a ciphertext.

Interface: ``build_report(db_path, daily_budget=None, delta=1e-6) -> dict`` (JSON-ready) and
``format_report(report) -> str``.
"""

from __future__ import annotations

import calendar
import math
import sqlite3
from pathlib import Path
from typing import Any

from meterveil.host.backoffice import dp


def _params(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Distinct (feeder, epsilon, clamp, m) with what they imply for one released interval."""
    out = []
    for feeder, eps_milli, clamp, m, meters in conn.execute(
            "SELECT feeder, epsilon_milli, clamp_wh, m, COUNT(DISTINCT meter_id) FROM readings "
            "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"):
        eps = eps_milli / 1000
        day = dp.compose(eps, dp.READINGS_PER_DAY)
        month = dp.compose(eps, dp.READINGS_PER_DAY * 30)
        out.append({
            "feeder": feeder, "epsilon": eps, "clamp_wh": clamp, "m": m, "meters": meters,
            "noise_std_wh_at_m": round(math.sqrt(dp.dl_variance(eps, clamp)), 1),
            "noise_std_wh_all_meters": round(math.sqrt(dp.sum_variance(eps, clamp, m, max(meters, m))), 1),
            "epsilon_per_day": {"basic": round(day.basic, 3), "advanced": round(day.advanced, 3), "delta": day.delta},
            "epsilon_per_30_days": {"basic": round(month.basic, 3), "advanced": round(month.advanced, 3),
                                    "delta": month.delta},
            "single_value_exact_probability": round(dp.share_zero_probability(eps, clamp, m), 4),
            "effective_epsilon_one_meter": _eff(eps, clamp, m, 1),
        })
    return out


def _eff(eps: float, clamp: int, m: int, n: int) -> float | None:
    try:
        return round(dp.effective_epsilon(eps, clamp, m, n), 3)
    except ValueError:  # support too wide for the exact pmf
        return None


def _meter_status(conn: sqlite3.Connection) -> dict[str, Any]:
    """Meters' own spend counters from their latest status frames (dp_spend_milli, readings_today)."""
    import json

    try:
        rows = conn.execute("SELECT status_json FROM meter_status").fetchall()
    except sqlite3.OperationalError:
        return {"meters": 0}
    spends = [json.loads(r[0]).get("dp_spend_milli", 0) / 1000 for r in rows]
    return {"meters": len(spends), "max_dp_spend_today": max(spends, default=0.0)}


def build_report(db_path: str | Path, daily_budget: float | None = None, delta: float = dp.DEFAULT_DELTA,
                 released: dict[tuple[str, str], tuple[int, float]] | None = None) -> dict[str, Any]:
    """The privacy report for one store (read-only); `released` is what the decryption role's audit
    log says was released ((feeder, UTC day) -> (intervals, epsilon); none if not given)."""
    p = Path(db_path)
    if not p.exists():
        raise FileNotFoundError(f"store {p} does not exist")
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        days = dp.ledger(conn, daily_budget=daily_budget, released=released)
        params = _params(conn)
        status = _meter_status(conn)
    finally:
        conn.close()
    rows = []
    for d in days:
        row = d.as_dict()
        eps = max(d.epsilon_values, default=0.0)
        row["released_advanced"] = round(dp.compose(eps, d.released_intervals, delta).advanced, 3) if eps else 0.0
        if d.intervals_below_m and eps and d.min_contributors >= 1:
            clamp = next((q["clamp_wh"] for q in params if q["feeder"] == d.feeder), None)
            row["effective_epsilon_at_min_contributors"] = (
                _eff(eps, clamp, d.m_max, d.min_contributors) if clamp else None)
        rows.append(row)
    months: dict[tuple[str, str], float] = {}
    for d in days:
        key = (d.feeder, d.day[:7])
        months[key] = months.get(key, 0.0) + d.released_epsilon
    return {
        "delta": delta, "daily_budget": daily_budget, "readings_per_day": dp.READINGS_PER_DAY,
        "parameters": params, "feeder_days": rows,
        "released_per_month": [{"feeder": f, "month": mo, "released_epsilon": round(v, 3),
                                "days_in_month": calendar.monthrange(int(mo[:4]), int(mo[5:7]))[1]}
                               for (f, mo), v in sorted(months.items())],
        "meter_status": status,
        "guarantee": ("event-level: each released feeder interval is epsilon-DP for any one household's reading "
                      "(changed by up to clamp_wh) when >= m meters contributed; a household's readings compose "
                      "across released intervals (column released_epsilon per day). Bills are exact by design "
                      "and not covered. See docs/PRIVACY.md."),
    }


def format_report(rep: dict[str, Any]) -> str:
    """Readable tables (pandas) for the terminal."""
    import pandas as pd

    lines = ["DP parameters per feeder (one released interval):"]
    if rep["parameters"]:
        t = pd.DataFrame([{
            "feeder": q["feeder"], "eps": q["epsilon"], "clamp_wh": q["clamp_wh"], "m": q["m"], "meters": q["meters"],
            "noise_sd_wh": q["noise_std_wh_at_m"], "eps/day basic": q["epsilon_per_day"]["basic"],
            f"eps/day adv (d={rep['delta']:g})": q["epsilon_per_day"]["advanced"],
            "1-meter exact p": q["single_value_exact_probability"],
            "1-meter eps": q["effective_epsilon_one_meter"]} for q in rep["parameters"]])
        lines.append(t.to_string(index=False))
    else:
        lines.append("  (no readings)")
    lines.append("")
    budget = rep["daily_budget"]
    lines.append("Spend per feeder per UTC day (collected = if every stored interval were released; "
                 f"released = spent by the decryption role; budget = {budget if budget is not None else 'none'}):")
    if rep["feeder_days"]:
        t = pd.DataFrame([{
            "feeder": r["feeder"], "day": r["day"], "meters": r["meters"], "intervals": r["intervals"],
            "below_m": r["intervals_below_m"], "min_contrib": r["min_contributors"], "m": r["m_max"],
            "collected_eps": round(r["collected_epsilon"], 3), "released": r["released_intervals"],
            "released_eps": round(r["released_epsilon"], 3), "released_adv": r["released_advanced"],
            "remaining": "" if r["remaining"] is None else round(r["remaining"], 3)} for r in rep["feeder_days"]])
        lines.append(t.to_string(index=False))
        below = [r for r in rep["feeder_days"] if r["intervals_below_m"]]
        for r in below:
            lines.append(f"  {r['feeder']} {r['day']}: {r['intervals_below_m']} intervals had < m={r['m_max']} "
                         f"contributors (refused if queried; had they been released with {r['min_contributors']}, "
                         f"epsilon would be {r.get('effective_epsilon_at_min_contributors')})")
    else:
        lines.append("  (none)")
    lines.append("")
    lines.append(rep["guarantee"])
    return "\n".join(lines)
