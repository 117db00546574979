"""Utility at a fixed guarantee: relative error of hourly and daily feeder sums, ours vs central DP.

    .venv/bin/python bench/privacy_utility.py --out bench/out/privacy_utility.json
    .venv/bin/python bench/privacy_utility.py --small      # CI-sized run (also used by tests)

Every mechanism gives the same guarantee: (epsilon, 1e-6)-DP per household-day (host/backoffice/dp.py;
a household's 96 readings of a day, each clamped to [0, clamp_wh], may change arbitrarily), checked
with the PLD accountant for each row. They differ in where the Gaussian noise comes from:
- central: a trusted curator adds N_Z(0, V) to each interval sum (V = dp.calibrate_total_variance),
  the smallest noise for the guarantee: the baseline;
- ours: each of N meters adds N_Z(0, ceil(V/m)), m = ceil((1 - gamma) N), gamma = 0.2 (so the
  guarantee holds with 20% of the feeder colluding); released as hourly sums (4 intervals, one
  decryption), all N reporting;
- ours_no_collusion_margin: the same with m = N (what the collusion margin costs);
- previous: the mechanism this replaced (discrete Laplace per reading, epsilon/96 per reading so a
  day costs epsilon by basic composition, shares for m = 0.9 N);
- local: each meter adds N_Z(0, V) itself (no aggregation trust).
Loads are 15-minute Wh from host/demo/profiles.py (a pool of household-days, weekdays and weekends;
a feeder of N meters = N household-days drawn from it). Relative MAE = sum |noise| / sum true load
over hours (or days) and trials. Summed noise is drawn with numpy as one Gaussian of the summed
variance (a sum of discrete Gaussians with share variance >= 4 is within 1e-9 of that, KLS 2021);
the firmware sampler itself (firmware/meter/privacy.py on CPython) draws one cell to check it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MECHANISMS = ("central", "ours", "ours_no_collusion_margin", "previous", "local")

FULL = {"n_list": [10, 30, 100, 300, 1000, 3000, 10000], "eps_list": [0.5, 1.0, 2.0], "clamp_list": [250, 400, 500, 1000],
        "gamma": 0.2, "pool_households": 300, "pool_days": 7, "trials": 20, "noise_reps": 50, "seed": 7,
        "firmware_cell": [100, 1.0, 500]}
SMALL = {"n_list": [10, 100, 1000], "eps_list": [1.0], "clamp_list": [500], "gamma": 0.2,
         "pool_households": 40, "pool_days": 2, "trials": 5, "noise_reps": 40, "seed": 7,
         "firmware_cell": [20, 1.0, 500]}


def load_firmware_privacy():
    """firmware/meter/privacy.py as a CPython module (it is MicroPython-compatible plain Python)."""
    path = REPO / "firmware" / "meter" / "privacy.py"
    spec = importlib.util.spec_from_file_location("meterveil_fw_privacy", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def household_day_pool(n_households: int, days: int, seed: int = 1,
                       start: datetime = datetime(2026, 1, 5, tzinfo=timezone.utc)) -> np.ndarray:
    """(n_households * days, 96) integer Wh per 15-minute interval from host/demo/profiles.py
    (2026-01-05 is a Monday: 7 days hold five weekdays and a weekend)."""
    from meterveil.host.demo import profiles

    rows = []
    for p in profiles.generate(n_households, start, days=days, base_seed=seed):
        w = np.asarray(p.watts, dtype=float).reshape(days, 96, 15)
        rows.append(np.floor(w.sum(axis=2) / 60.0))
    return np.concatenate(rows).astype(np.int64)


def interval_noise_var(mech: str, n: int, eps: float, clamp: int, gamma: float) -> float:
    """Variance of the noise on one 15-minute feeder sum of n meters (all reporting)."""
    from meterveil.host.backoffice import dp

    V = dp.calibrate_total_variance(eps, clamp)
    if mech == "central":
        return V
    if mech == "ours":
        return n * dp.share_variance(eps, clamp, dp.honest_m(n, gamma))
    if mech == "ours_no_collusion_margin":
        return n * dp.share_variance(eps, clamp, n)
    if mech == "local":
        return n * V
    if mech == "previous":  # DL(a) per reading at eps/96, shares for m = ceil(0.9 n): variance (n/m) 2a/(1-a)^2
        e = eps / dp.READINGS_PER_DAY
        a = math.exp(-e / clamp)
        m = math.ceil(0.9 * n)
        return (n / m) * 2 * a / (1 - a) ** 2
    raise ValueError(mech)


def guarantee(mech: str, n: int, eps: float, clamp: int, gamma: float) -> float:
    """Household-day epsilon of releasing every hour of a day, by the PLD accountant (ours: with gamma
    of the feeder colluding, i.e. only the honest shares count)."""
    from meterveil.host.backoffice import dp

    if mech == "previous":
        return eps  # pure DP, basic composition
    var = interval_noise_var(mech, n, eps, clamp, gamma)
    if mech.startswith("ours"):
        var = var * (n - dp.colluders(n, gamma)) / n
    if mech == "local":
        var = interval_noise_var("central", n, eps, clamp, gamma)  # the household's own noise alone
    return dp.household_day_epsilon(clamp, [(4, 4 * int(var))] * 24)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    rng = np.random.default_rng(cfg["seed"])
    pool = household_day_pool(cfg["pool_households"], cfg["pool_days"], seed=cfg["seed"])
    results = []
    for clamp in cfg["clamp_list"]:
        clamped_pool = np.clip(pool, 0, clamp)
        for n in cfg["n_list"]:
            feeders = [rng.integers(0, len(pool), n) for _ in range(cfg["trials"])]
            true_q = np.stack([pool[f].sum(axis=0) for f in feeders])  # (trials, 96)
            clamped_q = np.stack([clamped_pool[f].sum(axis=0) for f in feeders])
            true_h = true_q.reshape(len(feeders), 24, 4).sum(axis=2)
            for eps in cfg["eps_list"]:
                row: dict[str, Any] = {"clamp_wh": clamp, "n": n, "epsilon": eps, "delta": 1e-6,
                                       "mean_hourly_load_wh": round(float(true_h.mean()), 1),
                                       "clamp_bias": round(float(1 - clamped_q.sum() / true_q.sum()), 4)}
                for mech in MECHANISMS:
                    var_h = 4 * interval_noise_var(mech, n, eps, clamp, cfg["gamma"])
                    z = rng.normal(0.0, math.sqrt(var_h), (cfg["noise_reps"], len(feeders), 24))
                    row[f"{mech}_hourly"] = round(float(np.abs(z).sum() / (cfg["noise_reps"] * true_h.sum())), 5)
                    row[f"{mech}_daily"] = round(float(
                        np.abs(z.sum(axis=2)).sum() / (cfg["noise_reps"] * true_h.sum())), 5)
                    row[f"{mech}_epsilon_day"] = round(guarantee(mech, n, eps, clamp, cfg["gamma"]), 4)
                row["ours_over_central"] = round(row["ours_hourly"] / row["central_hourly"], 4)
                row["previous_over_ours"] = round(row["previous_hourly"] / row["ours_hourly"], 3)
                row["local_over_central"] = round(row["local_hourly"] / row["central_hourly"], 2)
                row["theory_ours_over_central"] = round(math.sqrt(
                    interval_noise_var("ours", n, eps, clamp, cfg["gamma"]) /
                    interval_noise_var("central", n, eps, clamp, cfg["gamma"])), 4)
                results.append(row)
    return {"config": cfg, "results": results, "firmware_cell": firmware_cell(*cfg["firmware_cell"], cfg["gamma"]),
            "seconds": round(time.time() - t0, 1)}


def firmware_cell(n: int, eps: float, clamp: int, gamma: float) -> dict[str, Any]:
    """n firmware shares per interval sum (the real sampler, provisioned variance), 4 x 200 sums:
    the empirical variance of an hourly sum against the one the table uses."""
    from meterveil.host.backoffice import dp

    fw = load_firmware_privacy()
    m = dp.honest_m(n, gamma)
    v = dp.share_variance(eps, clamp, m)
    fw.configure({"epsilon_milli": int(eps * 1000), "clamp_wh": clamp, "m": m, "noise_var": v})
    rb = random.Random(11).randbytes
    sums = np.array([sum(fw.noise_share(int(eps * 1000), clamp, m, rb) for _ in range(4 * n)) for _ in range(200)])
    want = 4 * interval_noise_var("ours", n, eps, clamp, gamma)
    return {"n": n, "epsilon": eps, "clamp_wh": clamp, "m": m, "share_var": v, "hourly_sums": len(sums),
            "var_firmware": round(float(sums.var(ddof=1)), 1), "var_table": round(want, 1),
            "ratio": round(float(sums.var(ddof=1)) / want, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--out", default="bench/out/privacy_utility.json")
    args = ap.parse_args(argv)
    res = run(dict(SMALL if args.small else FULL))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    cols = ("clamp_wh", "n", "epsilon", "mean_hourly_load_wh", "central_hourly", "ours_hourly", "ours_daily",
            "ours_over_central", "previous_over_ours", "ours_epsilon_day", "clamp_bias")
    print("  ".join(cols))
    for r in res["results"]:
        print("  ".join(str(r[c]) for c in cols))
    print(f"firmware cell: {res['firmware_cell']}")
    print(f"-> {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
