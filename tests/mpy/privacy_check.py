# Statistical check of privacy.discrete_gaussian / noise_share against the exact discrete Gaussian
# pmf, for MicroPython (the unix port, called from tests/test_fw_privacy.py) and CPython (same
# numbers for the same seed).
# usage: privacy_check.py SPEC_FILE (JSON)  SPEC = {"seed": s, "n": draws, "keep": k, "cases":
#        [[name, share_var, m_sum, target_var], ...]}; prints one JSON line of results.
#   Each draw is the sum of m_sum shares N_Z(0, share_var); the target is N_Z(0, target_var).
#   target_var == m_sum * share_var is the correct configuration, anything else a negative control.
#   share_var == 0 means "through noise_share(eps, clamp, m)" with a configured variance (case
#   name "ns:EPS:CLAMP:M:VAR").
import hashlib
import json
import math
import sys

from detrand import CounterRandom
from meter import privacy


def _weight(k, var):
    return math.exp(-(k * k) / (2.0 * var))


def ks_chi(sorted_x, var):
    # KS distance and chi-square against the exact N_Z(0, var) pmf, streamed over [-w, w] (the mass
    # beyond 14 sd is below 1e-40) without building the pmf (the unix port's default heap is small).
    w = int(14 * math.sqrt(var)) + 2
    total = 0.0
    for k in range(-w, w + 1):
        total += _weight(k, var)
    n = len(sorted_x)
    counts = {}
    for x in sorted_x:
        counts[x] = counts.get(x, 0) + 1
    d, cdf, seen = 0.0, 0.0, 0
    chi, bins, e_acc, o_acc = 0.0, 0, 0.0, 0  # bins of expected count >= 50 (adjacent values merged)
    for k in range(-w, w + 1):
        p = _weight(k, var) / total
        c = counts.get(k, 0)
        cdf += p
        seen += c
        d = max(d, abs(seen / n - cdf))
        e_acc += p * n
        o_acc += c
        if e_acc >= 50 and (1.0 - cdf) * n >= 50:
            chi += (o_acc - e_acc) ** 2 / e_acc
            bins += 1
            e_acc, o_acc = 0.0, 0
    chi += (o_acc - e_acc) ** 2 / e_acc
    bins += 1
    outside = sum(1 for x in sorted_x if x < -w or x > w)
    return d, chi, bins, outside


def main():
    # A file, not argv: the pip-installed unix port aborts on arguments longer than ~256 bytes.
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = []
    for name, share_var, m_sum, target_var in spec["cases"]:
        rb = CounterRandom(spec["seed"] + "/" + name)
        params = None
        if share_var == 0:
            params = [int(x) for x in name.split(":")[1:]]
            privacy.configure({"epsilon_milli": params[0], "clamp_wh": params[1], "m": params[2],
                               "noise_var": params[3]})
        n = spec["n"]
        keep = spec.get("keep", 0)
        sums, first = [], []
        h = hashlib.sha256()
        n_shares = 0
        for _ in range(n):
            s = 0
            for _ in range(m_sum):
                if params is None:
                    x = privacy.discrete_gaussian(share_var, rb)
                else:
                    x = privacy.noise_share(params[0], params[1], params[2], rb)
                if not isinstance(x, int):
                    raise TypeError("share not an int")
                if n_shares < keep:
                    first.append(x)
                    h.update(str(x).encode() + b",")
                n_shares += 1
                s += x
            sums.append(s)
        mean = sum(sums) / n
        var = sum((x - mean) ** 2 for x in sums) / (n - 1)
        sums.sort()
        d, chi, bins, outside = ks_chi(sums, target_var)
        out.append({
            "name": name, "n": n, "ks": d, "chi2": chi, "bins": bins, "outside": outside, "mean": mean,
            "var": var, "var_target": target_var,
            "pos": sum(1 for x in first if x > 0), "neg": sum(1 for x in first if x < 0),
            "first": first[:20], "hash": "".join("%02x" % b for b in h.digest()), "bytes": rb.used,
        })
    print(json.dumps(out))


main()
