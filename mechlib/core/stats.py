"""Statistics every number in the book carries: counts, Wilson 95% intervals for
proportions, bootstrap intervals for means, and seed-to-seed spread.

Wilson (1927): for k successes in n trials and z = 1.96,
centre = (p + z^2/2n) / (1 + z^2/n), half-width = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
It stays inside [0, 1] and is honest for small n and for p near 0 or 1, where the normal
approximation is not.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) for k successes in n trials; (nan, nan) if n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} must be in 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: Sequence[bool] | pd.Series) -> dict:
    """{"k", "n", "p", "lo", "hi"} for a vector of booleans."""
    values = np.asarray(successes, dtype=bool)
    n, k = int(values.size), int(values.sum())
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "p": k / n if n else float("nan"), "lo": lo, "hi": hi}


def accuracy_by(results: pd.DataFrame, by: Sequence[str] | str, value: str = "correct") -> pd.DataFrame:
    """One row per group: n, k (correct), accuracy and its Wilson 95% interval."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in results.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        stat = proportion(group[value])
        rows.append({**dict(zip(by, key)), "n": stat["n"], "k": stat["k"], "accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"]})
    return pd.DataFrame(rows)


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and a percentile bootstrap 95% interval, seeded."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def seed_spread(values: Sequence[float]) -> dict:
    """Across seeds: mean, standard deviation (ddof 1), min, max and the number of seeds."""
    x = np.asarray(values, dtype=float)
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
        "min": float(x.min()),
        "max": float(x.max()),
        "n_seeds": int(x.size),
    }


def fmt_interval(p: float, lo: float, hi: float, n: int | None = None) -> str:
    """``92.4% [88.1, 95.2], n = 1580`` for prose and tables."""
    if p != p:  # nan
        return "n/a"
    text = f"{p:.1%} [{lo * 100:.1f}, {hi * 100:.1f}]"
    return text + (f", n = {n}" if n is not None else "")


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """The exact McNemar test of two conditions scored on the same items: ``a_only`` and
    ``b_only`` (the discordant items) and the two-sided p-value (binomial, p = 1/2, on the
    discordant pairs). Paired, so it uses what two overlapping intervals throw away."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: the two conditions must score the same items, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}
