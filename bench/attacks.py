"""Inference attacks on what leaves the gateway: occupancy from readings, analytics values, feeder sums.

    .venv/bin/python bench/attacks.py --out bench/out/attacks.json
    .venv/bin/python bench/attacks.py --small          # CI-sized run (also used by tests)

Why: "nobody can read a household's routine" has to be measured. Target: is someone at home and
awake during a 15-minute interval (label from host/demo/profiles.py's simulated occupancy, >= half the
minutes)? The attacker is a logistic regression (numpy, IRLS) on features of the series around the
interval (signed log of the value and its neighbours, local max and spread) plus the time of day.
Because time of day alone predicts sleep, the baseline is a model on time of day only: an output
leaks occupancy only as far as its AUC exceeds that baseline.

Two attackers per output: "truth-trained" (fit on raw readings of training households, applied to
the output) and "adaptive" (fit on the output itself with training labels, knowing the mechanism).
Outputs attacked, for held-out households:
  (a) raw 15-minute readings; (b) one meter's analytics value (clamp + its noise share) for
  several m; (c) the DP feeder sum of the household's feeder (and the same sum without noise, to
  separate aggregation from noise); (d) differencing: two feeder sums differing by one meter.
For (d) the real decryption role is asked for both sums on a real store: it must refuse the second.
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
from privacy_utility import np_dl, np_share  # noqa: E402

FULL = {"households": 160, "days": 14, "feeder_size": 40, "m_list": [5, 20, 100], "epsilon": 1.0,
        "clamp_wh": 1000, "seed": 11}
SMALL = {"households": 40, "days": 4, "feeder_size": 20, "m_list": [5, 20], "epsilon": 1.0,
         "clamp_wh": 1000, "seed": 11}


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


def features(x: np.ndarray, with_values: bool = True, clamp: int = 1000) -> np.ndarray:
    """Per-interval features of each row of x (H, T) -> (H*T, F).

    The in-range terms let a mechanism-aware attacker use the values a noise share left exact (a
    share is 0 with probability >= (1-a)^(2/m), and then the value lies in [0, clamp]).
    """
    h, t = x.shape
    tod = (np.arange(t) % 96) / 96.0
    cols = [np.tile(np.sin(2 * np.pi * k * tod), (h, 1)) for k in (1, 2)]
    cols += [np.tile(np.cos(2 * np.pi * k * tod), (h, 1)) for k in (1, 2)]
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


def attack(name: str, train_raw: np.ndarray, train_out: np.ndarray, test_out: np.ndarray,
           y_train: np.ndarray, y_test: np.ndarray, with_values: bool = True) -> dict[str, Any]:
    """Truth-trained and adaptive attacker on one output, per time window, on held-out households."""
    f_raw, f_out = features(train_raw, with_values), features(train_out, with_values)
    xt = features(test_out, with_values)
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


def analytics(wh: np.ndarray, rng: np.random.Generator, eps: float, clamp: int, m: int) -> np.ndarray:
    return np.clip(wh, 0, clamp) + np_share(rng, eps, clamp, m, wh.shape)


def feeder_series(wh: np.ndarray, feeder_size: int, rng: np.random.Generator, eps: float, clamp: int,
                  noisy: bool) -> np.ndarray:
    """Each household's view (H, T): the DP sum of its feeder (consecutive households form a feeder).

    The m used is the feeder size (all report), so the sum's noise is exactly DL (= central DP).
    """
    out = np.empty(wh.shape, dtype=np.int64)
    for f0 in range(0, len(wh), feeder_size):
        block = wh[f0:f0 + feeder_size]
        total = np.clip(block, 0, clamp).sum(axis=0)
        if noisy:
            total = total + np_dl(rng, eps, clamp, total.shape)
        out[f0:f0 + feeder_size] = total
    return out


def differencing_policy(eps: float, clamp: int, m: int, seed: int) -> dict[str, Any]:
    """Ask the real decryption role for one interval twice, before and after a late meter's reading."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meterveil.host.audit.chain import AuditLog
    from meterveil.host.backoffice import dp
    from meterveil.host.common import packing
    from meterveil.host.common.registry import MeterRecord, MeterRegistry
    from meterveil.host.decryption.policy import Policy
    from meterveil.host.decryption.role import DecryptionRole
    from meterveil.host.decryption.secret_key import generate_keypair
    from meterveil.host.store.base import Batch, StoredReading, open_store

    pub, priv = generate_keypair(512)
    signer = Ed25519PrivateKey.generate()  # the role's audit signing key (entries are signed)
    rng = np.random.default_rng(seed)
    t0 = 1793491200
    eps_milli = int(round(eps * 1000))
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "s.db"
        store = open_store(db)
        # feeder membership comes from the registry: FD lists the m meters and the late one, FE m - 1
        reg = MeterRegistry(Path(d) / "registry" / "meters.json")
        for i in range(m + 1):
            reg.put(MeterRecord(f"d{i}", "FD", eps_milli, clamp, m), save=False)
        for i in range(m - 1):
            reg.put(MeterRecord(f"e{i}", "FE", eps_milli, clamp, m), save=False)
        reg.save()
        # the audit log lives in the decryption role's own database, not in the ingest store
        role = DecryptionRole(priv, AuditLog(Path(d) / "decryption.db", signer=signer), "attacker-analyst",
                              Policy(k_min=5), registry=reg)

        def put(i: int) -> None:
            share = int(np_share(rng, eps, clamp, m, 1)[0])
            c = pub.raw_encrypt(packing.pack(100 + i, 100 + i + share))
            store.write_batch(Batch(readings=[StoredReading(f"d{i}", 1, "FD", t0, 900, eps_milli, clamp, m, c)]))

        for i in range(m):
            put(i)
        first = role.feeder_load(store, "FD", t0, t0 + 900)[0]
        put(m)  # a late reading for the same interval: the pair would differ by exactly this meter
        second = role.feeder_load(store, "FD", t0, t0 + 900)[0]
        # second variant: a feeder where one of the m meters is missing from the start
        store2_db = Path(d) / "s2.db"
        store2 = open_store(store2_db)
        role2 = DecryptionRole(priv, AuditLog(Path(d) / "decryption2.db", signer=signer), "attacker-analyst",
                               Policy(k_min=5), registry=reg)
        for i in range(m - 1):
            c = pub.raw_encrypt(packing.pack(100 + i, 100 + i))
            store2.write_batch(Batch(readings=[StoredReading(f"e{i}", 1, "FE", t0, 900, eps_milli, clamp, m, c)]))
        short = role2.feeder_load(store2, "FE", t0, t0 + 900)[0]
        audit_ok = role.audit.verify().ok and role2.audit.verify().ok
        refusals = sum(e.decision == "refuse" for e in role.audit.entries()) + \
            sum(e.decision == "refuse" for e in role2.audit.entries())
        for r in (role, role2):
            r.close()
            r.audit.close()
        store.close()
        store2.close()
    return {
        "m": m, "first_query": first.status, "second_query_one_more_meter": second.status,
        "query_with_m_minus_1": short.status, "refusals_audited": refusals, "audit_chain_ok": audit_ok,
        "refused": (not second.allowed) and (not short.allowed),
        "if_not_refused": {
            "difference_is": "clamped reading of the extra meter + its own noise share",
            "p_difference_exact": round(dp.share_zero_probability(eps, clamp, m), 4),
            "noise_std_wh": round(math.sqrt(dp.share_variance(eps, clamp, m)), 1),
            "effective_epsilon": round(dp.effective_epsilon(eps, clamp, m, 1), 3),
            "effective_epsilon_m_minus_1_sum": round(dp.effective_epsilon(eps, clamp, m, m - 1), 3),
        },
    }


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    wh, lab = simulate(cfg["households"], cfg["days"], cfg["seed"])
    eps, clamp, fsize = cfg["epsilon"], cfg["clamp_wh"], cfg["feeder_size"]
    half = (len(wh) // (2 * fsize)) * fsize or len(wh) // 2  # split on feeder boundaries
    tr, te = slice(0, half), slice(half, len(wh))
    y_tr, y_te = lab[tr], lab[te]

    results = [attack("time of day only (baseline, no data)", wh[tr], wh[tr], wh[te], y_tr, y_te, with_values=False)]
    results.append(attack("(a) raw 15-min readings", wh[tr], wh[tr], wh[te], y_tr, y_te))
    for m in cfg["m_list"]:
        out = analytics(wh, rng, eps, clamp, m)
        r = attack(f"(b) one meter's analytics value, m={m}", wh[tr], out[tr], out[te], y_tr, y_te)
        r["fraction_exact"] = round(float((out == np.clip(wh, 0, clamp)).mean()), 4)
        results.append(r)
    for noisy in (True, False):
        fs = feeder_series(wh, fsize, rng, eps, clamp, noisy)
        name = f"(c) feeder sum of {fsize} meters" + (", DP" if noisy else ", no noise (aggregation only)")
        results.append(attack(name, wh[tr], fs[tr], fs[te], y_tr, y_te))
    # (d) differencing: two DP feeder sums that differ by one meter, if the role allowed both
    m_d = fsize
    diff = np.clip(wh, 0, clamp) + np_share(rng, eps, clamp, m_d, wh.shape)
    r = attack(f"(d) difference of two feeder sums (one meter, m={m_d}), if released", wh[tr], diff[tr], diff[te], y_tr, y_te)
    results.append(r)
    pol = differencing_policy(eps, clamp, cfg["m_list"][0], cfg["seed"])
    return {"benchmark": "attacks", "config": cfg, "label_prevalence": round(float(lab.mean()), 4),
            "test_intervals": int(y_te.size), "results": results, "differencing_policy": pol,
            "seconds": round(time.perf_counter() - t_start, 2)}


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
    print(f"  {'AUC all day':>11} {'AUC 08-20h':>10}  output (AUC = best of truth-trained and adaptive attacker)")
    for r in res["results"]:
        print(f"  {r['all_day']['auc']:>11.3f} {r['daytime_08_20']['auc']:>10.3f}  {r['output']}")
    print("differencing via the decryption role:", json.dumps(res["differencing_policy"], indent=1))
    print(f"-> {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
