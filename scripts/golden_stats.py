"""Golden numbers for src/eval/stats.rs (paired eval statistics).

Run from the repository root, in a venv made from scripts/requirements-golden.txt
(scipy/statsmodels are not part of the project's setup):
    python scripts/golden_stats.py
Writes tests/golden/stats_golden.json, read by the `stats_*` unit tests.

For each paired 2x2 table (a: 1->1, b: 1->0, c: 0->1, d: 0->0, before -> after):
  - mcnemar_p: statsmodels.stats.contingency_tables.mcnemar([[a, b], [c, d]],
    exact=True).pvalue, checked equal to scipy.stats.binomtest(min(b, c), b + c,
    0.5).pvalue (1 when b + c = 0);
  - lo, hi: Newcombe (1998, Stat Med 17:2635) method 10 interval for
    p_after - p_before at z = norm.ppf(0.975), from the Wilson intervals of
    statsmodels proportion_confint(method="wilson") and phi = (ad - bc) /
    sqrt((a+b)(c+d)(a+c)(b+d)) (0 when a margin is empty), clipped to [-1, 1];
  - lo_one_sided, hi_one_sided: the same at z = norm.ppf(0.95);
  - unpaired_lo, unpaired_hi: the same with phi = 0 (Newcombe 1998, Stat Med 17:873,
    method 10 for independent proportions) at z = norm.ppf(0.975).
"""
import json
import math
import os

from scipy.stats import binomtest, norm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (a, b, c, d): edge cases first, then small, medium and large counts.
CASES = [
    (0, 0, 0, 0),      # no pairs at all
    (0, 0, 0, 12),     # nothing changed, all zero
    (12, 0, 0, 0),     # nothing changed, all one
    (3, 0, 0, 9),      # b = c = 0 with both kinds of concordant pairs
    (0, 1, 0, 0),      # a single discordant pair
    (1, 2, 1, 8),      # the default run's small subsets
    (0, 5, 0, 7),      # one-directional change
    (36, 12, 2, 0),    # Newcombe (1998) worked example
    (5, 5, 5, 5),      # b = c
    (20, 15, 4, 61),   # n = 100, headline-suite size
    (60, 3, 14, 82),   # n = 159, HarmBench test standard
    (400, 450, 550, 600),  # large counts (binomial tail far from 0 and 1)
    (0, 0, 200, 300),  # large, one-directional (tiny p)
]


def wilson(k, n, z):
    if n == 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(k, n, alpha=2 * (1 - norm.cdf(z)), method="wilson")
    return max(0.0, float(lo)), min(1.0, float(hi))


def newcombe(k0, n0, k1, n1, phi, z):
    if n0 == 0 or n1 == 0:
        return -1.0, 1.0
    p0, p1 = k0 / n0, k1 / n1
    l0, u0 = wilson(k0, n0, z)
    l1, u1 = wilson(k1, n1, z)
    theta = p1 - p0
    d1, e1, d0, e0 = p1 - l1, u1 - p1, p0 - l0, u0 - p0
    lo = theta - math.sqrt(max(0.0, d1 * d1 - 2 * phi * d1 * e0 + e0 * e0))
    hi = theta + math.sqrt(max(0.0, e1 * e1 - 2 * phi * e1 * d0 + d0 * d0))
    return max(-1.0, lo), min(1.0, hi)


def phi_of(a, b, c, d):
    den = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return 0.0 if den == 0 else (a * d - b * c) / den


def main():
    z2 = float(norm.ppf(0.975))
    z1 = float(norm.ppf(0.95))
    cases = []
    for a, b, c, d in CASES:
        n = a + b + c + d
        if b + c == 0:
            p = 1.0
        else:
            p = float(mcnemar([[a, b], [c, d]], exact=True).pvalue)
            p_scipy = float(binomtest(min(b, c), b + c, 0.5).pvalue)
            assert abs(p - p_scipy) < 1e-12, (a, b, c, d, p, p_scipy)
        ph = phi_of(a, b, c, d)
        lo, hi = newcombe(a + b, n, a + c, n, ph, z2)
        lo1, hi1 = newcombe(a + b, n, a + c, n, ph, z1)
        ulo, uhi = newcombe(a + b, n, a + c, n, 0.0, z2)
        cases.append(dict(a=a, b=b, c=c, d=d, mcnemar_p=p, lo=lo, hi=hi, lo_one_sided=lo1,
                          hi_one_sided=hi1, unpaired_lo=ulo, unpaired_hi=uhi))
        print(f"{(a, b, c, d)}: p={p:.6g} diff={(c - b) / n if n else 0:+.4f} "
              f"[{lo:+.4f}, {hi:+.4f}] one-sided [{lo1:+.4f}, {hi1:+.4f}]")
    out = os.path.join(ROOT, "tests/golden/stats_golden.json")
    with open(out, "w") as f:
        json.dump({"generator": "scripts/golden_stats.py", "z95": z2, "z95_one_sided": z1,
                   "cases": cases}, f, indent=1)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
