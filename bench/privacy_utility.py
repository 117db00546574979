"""Utility vs privacy: relative error of DP feeder sums for distributed, local and central DP.

    .venv/bin/python bench/privacy_utility.py --out bench/out/privacy_utility.json --png bench/out/privacy_utility.png
    .venv/bin/python bench/privacy_utility.py --small      # CI-sized run (also used by tests)

Why this shape: the three mechanisms differ only in where the discrete Laplace noise comes from, so
they are compared on the same true sums. Loads are 15-minute Wh from host/demo/profiles.py (stochastic,
occupancy-driven households): a pool of household-days is simulated once and a feeder of N meters is
N household-days drawn from the pool (with replacement when N exceeds the pool). Readings are
clamped to [0, clamp_wh] for every mechanism (same sensitivity), so the noise error is measured
against the clamped sum and the clamping bias is reported separately.

Mechanisms (a = exp(-epsilon/clamp_wh)):
- central: one DL(a) draw on the true sum (the optimum for epsilon-DP per reading);
- distributed: each meter adds NB(1/m, a) - NB(1/m, a) with m = ceil(m_frac * N) (provisioned below
  the feeder size for a dropout margin), all N report: the sum carries NB(N/m) - NB(N/m);
- distributed_m_kmin: the same with m = k_min = 5 whatever N is (what bad provisioning costs);
- local: each meter adds a full DL(a) draw.
Summed noise is drawn with numpy through its exact sum distribution (see `noise`). The firmware's own sampler
(firmware/meter/privacy.py, imported on CPython) is checked against it distributionally (KS
statistic, P(0), variance) and used directly for one (N, epsilon) cell; both are in the JSON.
Error: relative MAE = sum_t |noisy_t - clamped_t| / sum_t true_t over the 96 intervals of a day and all trials.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
K_MIN = 5
MECHANISMS = ("central", "distributed", "distributed_m_kmin", "local")

FULL = {"n_list": [10, 30, 100, 300, 1000, 3000, 10000], "eps_list": [0.1, 0.3, 1.0, 3.0, 10.0],
        "clamp_wh": 1000, "m_frac": 0.9, "pool_households": 400, "pool_days": 7, "trials": 10, "noise_reps": 50, "seed": 7,
        "firmware_cell": [1000, 1.0], "firmware_check_draws": 20000}
SMALL = {"n_list": [10, 100, 1000], "eps_list": [0.1, 1.0, 10.0], "clamp_wh": 1000, "m_frac": 0.9,
         "pool_households": 60, "pool_days": 2, "trials": 5, "noise_reps": 60, "seed": 7, "firmware_cell": [100, 1.0],
         "firmware_check_draws": 4000}


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
    """(n_households * days, 96) integer Wh per 15-minute interval from host/demo/profiles.py."""
    from meterveil.host.demo import profiles

    rows = []
    for p in profiles.generate(n_households, start, days=days, base_seed=seed):
        w = np.asarray(p.watts, dtype=float).reshape(days, 96, 15)
        rows.append(np.floor(w.sum(axis=2) / 60.0))  # Wh per interval (meter keeps whole Wh)
    return np.concatenate(rows).astype(np.int64)


def np_share(rng: np.random.Generator, eps: float, clamp: int, m: int, size) -> np.ndarray:
    """Vectorised NB(1/m, a) - NB(1/m, a); numpy's NB(n, p) counts failures, so p = 1 - a."""
    p = -math.expm1(-eps / clamp)
    return rng.negative_binomial(1.0 / m, p, size) - rng.negative_binomial(1.0 / m, p, size)


def np_dl(rng: np.random.Generator, eps: float, clamp: int, size) -> np.ndarray:
    """DL(a) as the difference of two geometric variables (NB(1, a); numpy's geometric is slow for small p)."""
    p = -math.expm1(-eps / clamp)
    return rng.negative_binomial(1.0, p, size) - rng.negative_binomial(1.0, p, size)


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate((a, b))
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def sampler_check(eps: float, clamp: int, m: int, draws: int, seed: int) -> dict[str, Any]:
    """Firmware sampler vs numpy equivalent vs theory for one share."""
    from meterveil.host.backoffice import dp

    fw = load_firmware_privacy()
    rb = random.Random(seed).randbytes
    a = np.array([fw.noise_share(int(round(eps * 1000)), clamp, m, rb) for _ in range(draws)])
    b = np_share(np.random.default_rng(seed), eps, clamp, m, draws)
    ks = ks_two_sample(a, b)
    return {"epsilon": eps, "clamp_wh": clamp, "m": m, "draws": draws, "ks": round(ks, 4),
            "ks_crit_1pct": round(1.63 * math.sqrt(2 / draws), 4),
            "p0_firmware": round(float((a == 0).mean()), 4), "p0_numpy": round(float((b == 0).mean()), 4),
            "p0_lower_bound": round(dp.share_zero_probability(eps, clamp, m), 4),
            "var_firmware": round(float(a.var()), 1), "var_numpy": round(float(b.var()), 1),
            "var_theory": round(dp.share_variance(eps, clamp, m), 1)}


def noise(mech: str, rng: np.random.Generator, n: int, eps: float, clamp: int, m_frac: float, shape) -> np.ndarray:
    """Total noise on each feeder sum (array of `shape`) for n meters.

    Summed per-meter noise is drawn through its exact sum distribution (infinite divisibility):
    n shares NB(1/m) - NB(1/m) sum to NB(n/m) - NB(n/m); n local DL draws sum to NB(n) - NB(n).
    Drawing n values per sum is the same distribution but ~n times slower (tests check the identity).
    """
    p = -math.expm1(-eps / clamp)
    if mech == "central":
        r = 1.0
    elif mech == "local":
        r = float(n)
    else:
        m = K_MIN if mech == "distributed_m_kmin" else max(K_MIN, math.ceil(m_frac * n))
        r = n / min(m, n)
    return rng.negative_binomial(r, p, shape) - rng.negative_binomial(r, p, shape)


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from meterveil.host.backoffice import dp

    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    pool = household_day_pool(cfg["pool_households"], cfg["pool_days"], seed=cfg["seed"])
    clamp = cfg["clamp_wh"]
    trials = cfg["trials"]
    results = []
    for n in cfg["n_list"]:
        idx = np.stack([rng.choice(len(pool), size=n, replace=n > len(pool)) for _ in range(trials)])
        raw = pool[idx].sum(axis=1)  # (trials, 96) true sums
        clamped = np.clip(pool[idx], 0, clamp).sum(axis=1)
        truth = float(raw.sum())
        clamp_bias = float(np.abs(raw - clamped).sum()) / truth
        reps = cfg["noise_reps"]
        for eps in cfg["eps_list"]:
            row: dict[str, Any] = {"n": n, "epsilon": eps, "mean_true_sum_wh": round(truth / raw.size, 1),
                                   "clamp_bias": round(clamp_bias, 5), "noise_samples": raw.size * reps}
            for mech in MECHANISMS:
                z = noise(mech, rng, n, eps, clamp, cfg["m_frac"], (reps, *raw.shape))
                row[mech] = float(np.abs(z).sum()) / (truth * reps)
            row["distributed_over_central"] = round(row["distributed"] / row["central"], 4)
            row["local_over_central"] = round(row["local"] / row["central"], 3)
            m = min(n, max(K_MIN, math.ceil(cfg["m_frac"] * n)))
            row["m"] = m
            row["theory_rms_distributed_over_central"] = round(math.sqrt(n / m), 4)
            row["theory_rel_mae_central"] = round(dp.dl_mean_abs(eps, clamp) / (truth / raw.size), 6)
            for mech in MECHANISMS:
                row[mech] = round(row[mech], 6)
            results.append(row)
    n_fw, eps_fw = cfg["firmware_cell"]
    fw = firmware_cell(pool, int(n_fw), float(eps_fw), clamp, cfg["m_frac"], cfg["seed"])
    check = sampler_check(1.0, clamp, 10, cfg["firmware_check_draws"], cfg["seed"])
    return {"benchmark": "privacy_utility", "config": cfg, "pool_household_days": len(pool),
            "results": results, "firmware_cell": fw, "sampler_check": check,
            "seconds": round(time.perf_counter() - t_start, 2)}


def firmware_cell(pool: np.ndarray, n: int, eps: float, clamp: int, m_frac: float, seed: int) -> dict[str, Any]:
    """One cell with the firmware's sampler itself (one day, n meters) vs the numpy equivalent."""
    fw = load_firmware_privacy()
    rb = random.Random(seed + 1).randbytes
    rng = np.random.default_rng(seed + 1)
    m = min(n, max(K_MIN, math.ceil(m_frac * n)))
    idx = rng.choice(len(pool), size=n, replace=n > len(pool))
    truth = float(pool[idx].sum())
    eps_milli = int(round(eps * 1000))
    z_fw = np.array([sum(fw.noise_share(eps_milli, clamp, m, rb) for _ in range(n)) for _ in range(96)])
    z_np = np_share(rng, eps, clamp, m, (96, n)).sum(axis=1)
    return {"n": n, "epsilon": eps, "m": m, "rel_mae_firmware": round(float(np.abs(z_fw).sum()) / truth, 6),
            "rel_mae_numpy": round(float(np.abs(z_np).sum()) / truth, 6)}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_list = res["config"]["eps_list"]
    fig, axes = plt.subplots(1, len(eps_list), figsize=(4 * len(eps_list), 3.8), sharey=True)
    styles = {"central": ("k", "-", "central (one draw)"), "distributed": ("C0", "--", "distributed, m=0.9N"),
              "distributed_m_kmin": ("C2", ":", "distributed, m=5"), "local": ("C3", "-.", "local DP")}
    for ax, eps in zip(np.atleast_1d(axes), eps_list, strict=True):
        rows = [r for r in res["results"] if r["epsilon"] == eps]
        ns = [r["n"] for r in rows]
        for mech, (c, ls, label) in styles.items():
            ax.loglog(ns, [r[mech] for r in rows], color=c, linestyle=ls, marker="o", ms=3, label=label)
        ax.loglog(ns, [r["clamp_bias"] for r in rows], color="0.6", lw=0.8, label="clamp bias")
        ax.set_title(f"epsilon = {eps:g} per reading")
        ax.set_xlabel("meters on the feeder (N)")
        ax.grid(True, which="both", lw=0.3)
    np.atleast_1d(axes)[0].set_ylabel("relative MAE of 15-min feeder sum")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"DP feeder sums, clamp {res['config']['clamp_wh']} Wh, profiles from host/demo/profiles.py")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CI-sized configuration")
    ap.add_argument("--out", default="bench/out/privacy_utility.json")
    ap.add_argument("--png", default="bench/out/privacy_utility.png")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = dict(SMALL if args.small else FULL)
    if args.seed is not None:
        cfg["seed"] = args.seed
    res = run(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    plot(res, Path(args.png))
    print(f"{'N':>6} {'eps':>5} {'central':>9} {'distrib':>9} {'dist/cen':>8} {'m=5':>9} {'local':>9} {'loc/cen':>8}")
    for r in res["results"]:
        print(f"{r['n']:>6} {r['epsilon']:>5g} {r['central']:>9.4f} {r['distributed']:>9.4f} "
              f"{r['distributed_over_central']:>8.3f} {r['distributed_m_kmin']:>9.4f} {r['local']:>9.4f} "
              f"{r['local_over_central']:>8.1f}")
    print("sampler check:", res["sampler_check"])
    print("firmware cell:", res["firmware_cell"])
    print(f"-> {out}, {args.png} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
