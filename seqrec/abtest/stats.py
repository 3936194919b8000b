"""Statistics of the A/B test: intervals for conversion rates, the two-proportion test, the paired difference.

- `wilson`: the Wilson score interval for a binomial proportion x / n (Wilson 1927): it stays inside [0, 1] and
  keeps close to its nominal coverage for small n or rates near 0 or 1, where the Wald interval does not.
- `newcombe`: the interval for a difference of two independent proportions p2 - p1 from the two Wilson
  intervals (Newcombe 1998, method 10, the "hybrid score" interval).
- `two_proportion_z`: the pooled two-proportion z-test of p1 = p2 (two-sided), the test of Kristiana et al.
- `paired_difference`: mean and normal interval of per-customer differences, with its z-test. Both arms of
  the simulated test meet the same customers with the same random numbers, so the difference is better
  measured pair by pair; the independent-samples test above ignores that pairing and is then conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def z_value(level: float) -> float:
    """The two-sided normal quantile of a confidence level (1.959964 for 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _counts(x: int, n: int) -> None:
    if n < 1 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1; got {x} of {n}")


def wilson(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) for the proportion x / n."""
    _counts(x, n)
    z = z_value(level)
    p, z2 = x / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, level: float = 0.95) -> tuple[float, float, float]:
    """(p2 - p1, low, high): Newcombe's hybrid score interval for the difference of two independent proportions."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, level)
    l2, u2 = wilson(x2, n2, level)
    d = p2 - p1
    return d, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p-value) of the pooled z-test of p1 = p2; z > 0 when p2 > p1 (z = 0, p = 1 without variance)."""
    _counts(x1, n1)
    _counts(x2, n2)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x2 / n2 - x1 / n1) / se
    return z, two_sided_p(z)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-unit differences b - a with its normal interval and z-test."""

    mean: float
    low: float
    high: float
    z: float
    p_value: float
    n: int


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> PairedDifference:
    """Per-unit outcomes a (n,) and b (n,) of the same units under two arms -> the mean of b - a, its interval
    (normal, from the differences' standard error) and the two-sided z-test of a zero mean."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length 1-D arrays of at least 2 units; got {a.shape} and {b.shape}")
    d = b - a
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    if se > 0:
        z = mean / se
    else:                       # every difference equal: certain when non-zero
        z = math.copysign(math.inf, mean) if mean else 0.0
    half = z_value(level) * se
    return PairedDifference(mean, mean - half, mean + half, z, two_sided_p(z), len(d))


def rank_agreement(score: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean over rows of Spearman's rank correlation between score (B, P) and truth (B, P) over the entries of
    each row that `mask` (B, P) keeps; rows keeping fewer than 3 entries are left out (NaN when none is left)."""
    mask = np.asarray(mask, dtype=bool)
    kept = mask.sum(axis=1)

    def centred_ranks(x: np.ndarray) -> np.ndarray:
        r = np.argsort(np.argsort(np.where(mask, x, -np.inf), axis=1, kind="stable"), axis=1).astype(np.float64)
        mean = np.where(mask, r, 0.0).sum(axis=1, keepdims=True) / np.maximum(kept, 1)[:, None]
        return np.where(mask, r - mean, 0.0)

    a, b = centred_ranks(np.asarray(score, np.float64)), centred_ranks(np.asarray(truth, np.float64))
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    rows = (kept >= 3) & (den > 0)
    return float(((a * b).sum(axis=1)[rows] / den[rows]).mean()) if rows.any() else math.nan
