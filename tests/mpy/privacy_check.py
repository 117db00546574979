# Statistical check of privacy.noise_share against the exact discrete Laplace, for MicroPython
# (the unix port, called from tests/test_fw_privacy.py) and CPython (same numbers, same seed).
# usage: privacy_check.py SPEC_FILE (JSON)    SPEC = {"seed": s, "n": sums, "cases": [[name, eps_milli,
#        clamp_wh, m_share, m_sum, target_m], ...], "keep": k}; prints one JSON line of results.
#   Shares are drawn calibrated for m_share and summed m_sum at a time; the target is DL(a) with
#   a = exp(-eps/clamp) times (m_sum / target_m) in shares; target_m == m_share == m_sum is the
#   correct configuration, anything else is a negative control that must fail.
import hashlib
import json
import math
import sys

from detrand import CounterRandom
from meter import privacy


def dl_cdf(k, a):
    # exact discrete Laplace CDF, P(X <= k)
    if k < 0:
        return math.pow(a, -k) / (1.0 + a)
    return 1.0 - math.pow(a, k + 1) / (1.0 + a)


def dl_moments(a):
    # exact variance and 4th moment of DL(a) = G1 - G2 (closed forms of sum k^2 a^k, sum k^4 a^k)
    m2 = 2.0 * a / ((1.0 - a) ** 2)
    m4 = 2.0 * a * (1.0 + 11.0 * a + 11.0 * a * a + a ** 3) / ((1.0 + a) * (1.0 - a) ** 4)
    return m2, m4


def ks(sorted_x, a):
    n = len(sorted_x)
    d = 0.0
    i = 0
    while i < n:
        k = sorted_x[i]
        j = i
        while j < n and sorted_x[j] == k:
            j += 1
        # just below k (F_n constant on [prev, k-1]) and at k
        d = max(d, abs(i / n - dl_cdf(k - 1, a)), abs(j / n - dl_cdf(k, a)))
        i = j
    return d


def run_case(rb, n, eps, clamp, m_share, m_sum, keep):
    sums = []
    first = []
    h = hashlib.sha256()
    n_shares = 0
    for _ in range(n):
        s = 0
        for _ in range(m_sum):
            x = privacy.noise_share(eps, clamp, m_share, rb)
            if not isinstance(x, int):
                raise TypeError("share not an int")
            if n_shares < keep:
                first.append(x)
                h.update(str(x).encode() + b",")
            n_shares += 1
            s += x
        sums.append(s)
    return sums, first, h


def main():
    # A file, not argv: the pip-installed unix port aborts on arguments longer than ~256 bytes.
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = []
    for name, eps, clamp, m_share, m_sum, _target_m in spec["cases"]:
        rb = CounterRandom(spec["seed"] + "/" + name)
        n = spec["n"]
        sums, first, h = run_case(rb, n, eps, clamp, m_share, m_sum, spec.get("keep", 0))
        a = math.exp(-eps / (1000.0 * clamp))
        var_t, m4_t = dl_moments(a)
        mean = sum(sums) / n
        var = sum((x - mean) ** 2 for x in sums) / (n - 1)
        sums.sort()
        out.append({
            "name": name, "n": n, "a": a, "ks": ks(sums, a), "mean": mean, "var": var,
            "var_target": var_t, "kurt_target": m4_t / (var_t * var_t),
            "pos": sum(1 for x in first if x > 0), "neg": sum(1 for x in first if x < 0),
            "first": first[:20], "hash": h.hexdigest() if hasattr(h, "hexdigest") else
            "".join("%02x" % b for b in h.digest()), "bytes": rb.used,
        })
    print(json.dumps(out))


main()
