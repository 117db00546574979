"""Inference attacks on what leaves the decryption role, measured against the strongest calendar baseline.

    .venv/bin/python bench/attacks.py --out bench/out/attacks.json
    .venv/bin/python bench/attacks.py --small          # CI-sized run (also used by tests)

Targets: (1) someone at home and awake during a 15-minute interval; (2) an away day: nobody active
10:00-16:00 (household-day label). Labels come from host/demo/profiles.py's simulated occupancy,
weekdays and weekends (days start on a Monday). Baselines use no data: a logistic model on time of
day and the slot x weekday rate table fitted on training households (the stronger one is "the best
baseline"); every attacker also gets the rate table as a feature, so what it gains over the
baseline is what the output leaks, not the calendar.

Attackers are logistic regressions (numpy, IRLS), truth-trained and adaptive (trained on the output
with training labels); AUC is the better of the two. Outputs: (a) raw readings; (c) the DP hourly
feeder sum of the household's feeder (shares calibrated for m = ceil(0.8 N), as released); (e) the
DP adversary who knows every other household's readings and the colluders' shares: the household's
own hourly value plus the honest shares' noise. Policy-level attacks run the real decryption role:
differencing a feeder interval, dummy meters beside one household, nightly interim bills.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
FULL = {"households": 160, "days": 14, "feeder_size": 40, "epsilon": 1.0, "clamp_wh": 500, "gamma": 0.2,
        "seed": 11}
SMALL = {"households": 40, "days": 7, "feeder_size": 20, "epsilon": 1.0, "clamp_wh": 500, "gamma": 0.2,
         "seed": 11}


def share_noise(rng: np.random.Generator, var: float, shape) -> np.ndarray:
    """Summed discrete Gaussian noise of the given variance (a rounded Gaussian at these scales)."""
    return np.rint(rng.normal(0.0, math.sqrt(var), shape)).astype(np.int64)


def simulate(households: int, days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, T) Wh per 15 min and (H, T) 0/1 'someone home and awake' labels."""
    from meterveil.host.demo import profiles

    start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    wh, lab = [], []
    for p in profiles.generate(households, start, days=days, base_seed=seed):
        w = np.asarray(p.watts).reshape(-1, 15)
        wh.append(np.floor(w.sum(axis=1) / 60.0))
        lab.append((np.asarray(p.active).reshape(-1, 15) > 0).mean(axis=1) >= 0.5)
    return np.asarray(wh, dtype=np.int64), np.asarray(lab, dtype=np.int8)


def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def features(x: np.ndarray, with_values: bool = True, clamp: int = 500,
             prior: np.ndarray | None = None) -> np.ndarray:
    """Per-interval features of each row of x (H, T) -> (H*T, F): time of day, the calendar prior
    (slot x weekday rate, if given), and the value with its neighbourhood."""
    h, t = x.shape
    tod = (np.arange(t) % 96) / 96.0
    cols = [np.tile(np.sin(2 * np.pi * k * tod), (h, 1)) for k in (1, 2)]
    cols += [np.tile(np.cos(2 * np.pi * k * tod), (h, 1)) for k in (1, 2)]
    if prior is not None:
        p = np.clip(prior, 1e-3, 1 - 1e-3)
        cols.append(np.tile(np.log(p / (1 - p)), (h, 1)))
    if with_values:
        s = _slog(x.astype(float))
        pad = np.pad(s, ((0, 0), (2, 2)), mode="edge")
        win = np.stack([pad[:, i:i + t] for i in range(5)])
        cols += [s, win[1], win[3], win.max(axis=0), win.min(axis=0), win.std(axis=0)]
        inr = (x >= 0) & (x <= clamp)
        pin = np.pad(np.where(inr, s, 0.0), ((0, 0), (2, 2)))
        cols += [inr.astype(float), np.where(inr, s, 0.0), sum(pin[:, i:i + t] for i in range(5))]
    return np.stack([c.reshape(-1) for c in cols], axis=1)


class Logistic:
    """L2-regularised logistic regression by Newton-Raphson (IRLS): small, deterministic, numpy only."""

    def __init__(self, l2: float = 1e-3, iters: int = 25):
        self.l2, self.iters = l2, iters

    def fit(self, x: np.ndarray, y: np.ndarray) -> Logistic:
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = np.hstack([np.ones((len(x), 1)), (x - self.mu) / self.sd])
        w = np.zeros(z.shape[1])
        reg = self.l2 * len(x) * np.eye(z.shape[1])
        reg[0, 0] = 0
        for _ in range(self.iters):
            p = 1 / (1 + np.exp(-np.clip(z @ w, -30, 30)))
            g = z.T @ (p - y) + reg @ w
            hess = (z * (p * (1 - p))[:, None]).T @ z + reg
            step = np.linalg.solve(hess, g)
            w -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        self.w = w
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([np.ones((len(x), 1)), (x - self.mu) / self.sd])
        return z @ self.w


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties get average ranks)."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return float(((s > 0) == y.astype(bool)).mean())


WINDOWS = {"all_day": (0, 96), "daytime_08_20": (32, 80)}  # interval-of-day ranges evaluated


def _rows(shape: tuple[int, int], window: tuple[int, int]) -> np.ndarray:
    """Flat row mask (H*T) selecting intervals of day in [lo, hi)."""
    tod = np.arange(shape[1]) % 96
    return np.tile((tod >= window[0]) & (tod < window[1]), shape[0])


def rate_table(y: np.ndarray) -> np.ndarray:
    """Slot x weekday rate of the label over training households, as a (T,) prior series."""
    t = y.shape[1]
    slot, wd = np.arange(t) % 96, (np.arange(t) // 96) % 7
    table = np.zeros((7, 96))
    for d in range(7):
        for k in range(96):
            sel = (wd == d) & (slot == k)
            table[d, k] = y[:, sel].mean() if sel.any() else y.mean()
    return table[wd, slot]


def attack(name: str, train_raw: np.ndarray, train_out: np.ndarray, test_out: np.ndarray,
           y_train: np.ndarray, y_test: np.ndarray, with_values: bool = True,
           prior: np.ndarray | None = None) -> dict[str, Any]:
    """Truth-trained and adaptive attacker on one output, per time window, on held-out households."""
    f_raw, f_out = features(train_raw, with_values, prior=prior), features(train_out, with_values, prior=prior)
    xt = features(test_out, with_values, prior=prior)
    res: dict[str, Any] = {"output": name}
    for wname, win in WINDOWS.items():
        rtr, rte = _rows(train_raw.shape, win), _rows(test_out.shape, win)
        ytr, yt = y_train.reshape(-1)[rtr], y_test.reshape(-1)[rte]
        s_truth = Logistic().fit(f_raw[rtr], ytr).score(xt[rte])
        s_adapt = Logistic().fit(f_out[rtr], ytr).score(xt[rte])
        a_t, a_a = auc(yt, s_truth), auc(yt, s_adapt)
        res[wname] = {"auc": round(max(a_t, a_a), 4), "auc_truth_trained": round(a_t, 4), "auc_adaptive": round(a_a, 4),
                      "acc": round(max(accuracy(yt, s_truth), accuracy(yt, s_adapt)), 4),
                      "prevalence": round(float(yt.mean()), 4)}
    return res


def feeder_hourly(wh: np.ndarray, feeder_size: int, rng: np.random.Generator, var_hour: float,
                  clamp: int) -> np.ndarray:
    """Each household's view (H, T): its feeder's DP hourly sum (consecutive households form a
    feeder), spread over the hour's four intervals."""
    h, t = wh.shape
    out = np.empty(wh.shape, dtype=np.int64)
    for f0 in range(0, h, feeder_size):
        hours = np.clip(wh[f0:f0 + feeder_size], 0, clamp).sum(axis=0).reshape(t // 4, 4).sum(axis=1)
        noisy = hours + share_noise(rng, var_hour, hours.shape)
        out[f0:f0 + feeder_size] = np.repeat(noisy // 4, 4)
    return out


def knows_others(wh: np.ndarray, rng: np.random.Generator, var_hour: float, clamp: int) -> np.ndarray:
    """The DP adversary who knows every other household's readings (and the colluders' shares):
    subtracting them leaves the household's own clamped hourly value plus the honest shares' noise."""
    h, t = wh.shape
    hours = np.clip(wh, 0, clamp).reshape(h, t // 4, 4).sum(axis=2)
    return np.repeat((hours + share_noise(rng, var_hour, hours.shape)) // 4, 4, axis=1)


def away_days(lab: np.ndarray) -> np.ndarray:
    """(H, D) 1 if nobody was home and awake 10:00-16:00 that day."""
    h, t = lab.shape
    return (lab.reshape(h, t // 96, 96)[:, :, 40:64].mean(axis=2) < 0.1).astype(np.int8)


def away_attack(name: str, out: np.ndarray, y: np.ndarray, tr: slice, te: slice) -> dict[str, Any]:
    """Away-day attack: logistic on the output's 10-16 h energy (log) and the weekday prior."""
    h, t = out.shape
    days = t // 96
    day_energy = out.reshape(h, days, 96)[:, :, 40:64].sum(axis=2).astype(float)
    wd = np.tile(np.arange(days) % 7, (h, 1))
    prior_tab = np.array([y[tr][wd[tr] == d].mean() if (wd[tr] == d).any() else y[tr].mean() for d in range(7)])
    prior = np.clip(prior_tab[wd], 1e-3, 1 - 1e-3)
    x = np.stack([np.log(prior / (1 - prior)), _slog(day_energy)], axis=2)
    base = auc(y[te].reshape(-1), prior[te].reshape(-1)) if 0 < y[te].mean() < 1 else float("nan")
    model = Logistic().fit(x[tr].reshape(-1, 2), y[tr].reshape(-1))
    a = auc(y[te].reshape(-1), model.score(x[te].reshape(-1, 2))) if 0 < y[te].mean() < 1 else float("nan")
    return {"output": name, "auc": round(a, 4), "baseline_weekday_auc": round(base, 4),
            "auc_minus_baseline": round(a - base, 4), "away_day_rate": round(float(y.mean()), 4)}


def policy_attacks(eps: float, clamp: int, seed: int) -> dict[str, Any]:
    """The attacks the decryption role must refuse, asked of the real role on real stores."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meterveil.host.audit.chain import AuditLog
    from meterveil.host.backoffice.tariff import parse_tariff
    from meterveil.host.common import packing
    from meterveil.host.common.registry import MeterRecord, MeterRegistry
    from meterveil.host.decryption.policy import Policy
    from meterveil.host.decryption.role import DecryptionRole
    from meterveil.host.decryption.secret_key import generate_keypair
    from meterveil.host.store.base import Batch, StoredReading, open_store

    pub, priv = generate_keypair(768)
    signer = Ed25519PrivateKey.generate()
    t0 = 1793491200  # 2026-11-01 00:00 UTC
    eps_milli = int(round(eps * 1000))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        reg = MeterRegistry(Path(d) / "registry" / "meters.json")
        for i in range(9):  # FD: 8 households and one late meter; FX: one household and 4 dummies
            reg.put(MeterRecord(f"d{i}", "FD", eps_milli, clamp, 6), save=False)
        for i in range(5):
            reg.put(MeterRecord(f"x{i}", "FX", eps_milli, clamp, 4), save=False)
        reg.save()
        store = open_store(Path(d) / "s.db")
        role = DecryptionRole(priv, AuditLog(Path(d) / "decryption.db", signer=signer), "attacker-analyst",
                              Policy(), registry=reg)

        def put(mid: str, feeder: str, t: int, wh: int, counter: int, m: int) -> None:
            c = pub.raw_encrypt(packing.pack(wh, wh))
            store.write_batch(Batch(readings=[StoredReading(mid, counter, feeder, t, 900, eps_milli, clamp, m, c)]))

        for i in range(8):
            put(f"d{i}", "FD", t0, 100 + i, 1, 6)
        first = role.feeder_load(store, "FD", t0, t0 + 900, release_s=900)[0]
        put("d8", "FD", t0, 999, 1, 6)  # a late reading: the pair would differ by exactly this meter
        second = role.feeder_load(store, "FD", t0, t0 + 900, release_s=900)[0]
        for i in range(5):
            put(f"x{i}", "FX", t0, 300 if i == 0 else 0, 1, 4)
        dummy = role.feeder_load(store, "FX", t0, t0 + 900, release_s=900)[0]
        out["differencing"] = {"first_query": first.status, "second_query_one_more_meter": second.status}
        out["dummy_meters"] = {"households": 1, "dummies": 4, "status": dummy.status}
        # nightly interim bills of one household under a 6-band tariff (4-hour blocks)
        six = parse_tariff({"name": "six", "currency": "INR", "minor_unit": "paise", "timezone": "UTC",
                            "bands": [{"name": f"b{h}", "price_minor_per_kwh": "1",
                                       "windows": [{"days": "all", "hours": f"{h:02d}-{h + 4:02d}"}]}
                                      for h in range(0, 24, 4)]})
        rng = np.random.default_rng(seed)
        batch = Batch(readings=[StoredReading("h1", i + 1, "FB", t0 + i * 900, 900, eps_milli, clamp, 6,
                                              pub.raw_encrypt(packing.pack(int(rng.integers(0, 400)), 0)))
                                for i in range(30 * 96)])
        store.write_batch(batch)
        windows = set()
        for night in range(1, 31):
            windows |= {t.expected_intervals // 96 for t in
                        role.household_totals(store, six, "2026-11", ["h1"], as_of=t0 + night * 86400 + 3600)}
        windows |= {t.expected_intervals // 96 for t in role.household_totals(store, six, "2026-11", ["h1"],
                                                                           as_of=t0 + 30 * 86400)}
        ends = sorted(windows)
        out["interim_bills"] = {"nightly_requests": 30, "windows_decrypted_days": ends,
                                "shortest_difference_days": min(b - a for a, b in zip([0, *ends], ends, strict=False))}
        out["refusals_audited"] = sum(e.decision == "refuse" for e in role.audit.entries())
        out["audit_chain_ok"] = role.audit.verify().ok
        out["refused"] = (not second.allowed) and (not dummy.allowed) and out["interim_bills"]["shortest_difference_days"] >= 7
        role.close()
        role.audit.close()
        store.close()
    return out


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from meterveil.host.backoffice import dp

    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    wh, lab = simulate(cfg["households"], cfg["days"], cfg["seed"])
    eps, clamp, fsize, gamma = cfg["epsilon"], cfg["clamp_wh"], cfg["feeder_size"], cfg["gamma"]
    half = (len(wh) // (2 * fsize)) * fsize or len(wh) // 2  # split on feeder boundaries
    tr, te = slice(0, half), slice(half, len(wh))
    y_tr, y_te = lab[tr], lab[te]
    prior = rate_table(y_tr)
    m = dp.honest_m(fsize, gamma)
    v = dp.share_variance(eps, clamp, m)
    honest = fsize - dp.colluders(fsize, gamma)

    results = [attack("baseline: time of day (no data)", wh[tr], wh[tr], wh[te], y_tr, y_te, with_values=False)]
    table = {"output": "baseline: slot x weekday rate table (no data)"}
    for wname, win in WINDOWS.items():
        rte = _rows(wh[te].shape, win)
        table[wname] = {"auc": round(auc(y_te.reshape(-1)[rte], np.tile(prior, len(wh[te]))[rte]), 4)}
    results.append(table)
    best = {w: max(r[w]["auc"] for r in results) for w in WINDOWS}
    results.append(attack("(a) raw 15-min readings", wh[tr], wh[tr], wh[te], y_tr, y_te, prior=prior))
    fs = feeder_hourly(wh, fsize, rng, 4 * fsize * v, clamp)
    results.append(attack(f"(c) DP hourly feeder sum, {fsize} households", wh[tr], fs[tr], fs[te], y_tr, y_te, prior=prior))
    ko = knows_others(wh, rng, 4 * honest * v, clamp)
    results.append(attack(f"(e) DP adversary knowing the other {fsize - 1} households and {fsize - honest} "
                          f"colluders' shares", wh[tr], ko[tr], ko[te], y_tr, y_te, prior=prior))
    for r in results:
        for w in WINDOWS:
            r[w]["auc_minus_best_baseline"] = round(r[w]["auc"] - best[w], 4)
    away = away_days(lab)
    away_res = [away_attack("(a) raw readings", wh, away, tr, te),
                away_attack("(e) DP adversary knowing every other household", ko, away, tr, te)]
    pol = policy_attacks(eps, clamp, cfg["seed"])
    return {"benchmark": "attacks", "config": cfg, "label_prevalence": round(float(lab.mean()), 4),
            "test_intervals": int(y_te.size), "best_baseline": best, "results": results, "away_day": away_res,
            "household_day_epsilon_adversary": round(dp.household_day_epsilon(clamp, [(4, 4 * honest * v)] * 24), 4),
            "policy": pol, "seconds": round(time.perf_counter() - t_start, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CI-sized configuration")
    ap.add_argument("--out", default="bench/out/attacks.json")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = dict(SMALL if args.small else FULL)
    if args.seed is not None:
        cfg["seed"] = args.seed
    res = run(cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"occupancy (home and awake) prevalence {res['label_prevalence']}, {res['test_intervals']} test intervals")
    print(f"  {'AUC all day':>11} {'- best':>7} {'AUC 08-20h':>10} {'- best':>7}  output")
    for r in res["results"]:
        a, d = r["all_day"], r["daytime_08_20"]
        print(f"  {a['auc']:>11.3f} {a.get('auc_minus_best_baseline', 0):>7.3f} {d['auc']:>10.3f} "
              f"{d.get('auc_minus_best_baseline', 0):>7.3f}  {r['output']}")
    for r in res["away_day"]:
        print(f"  away day: AUC {r['auc']:.3f} (weekday baseline {r['baseline_weekday_auc']:.3f})  {r['output']}")
    print("policy attacks via the decryption role:", json.dumps(res["policy"], indent=1))
    print(f"-> {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
