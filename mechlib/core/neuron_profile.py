"""What each MLP neuron responds to, over an exhaustive table of operand pairs.

Nikankin et al. (2025) describe the neurons that carry arithmetic in pretrained LMs as
heuristics: each fires for an operand range, a result range, a result modulo 10, or a
pattern. Given a neuron's activation on every pair of the table, :func:`profile` asks which
property of the problem explains most of that activation's variance: the share of variance
between the property's groups (eta squared), adjusted for how many groups the property has
(a property with 19 values explains more by chance than one with 2). A neuron whose best
adjusted share falls below the threshold is ``mixed``; where several properties explain it
equally well (within :data:`TIE`), the one with the fewest values names it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# Properties of an addition problem a + b, as functions of the operand columns.
PROPERTIES = {
    "first operand": lambda a, b: a,
    "second operand": lambda a, b: b,
    "result": lambda a, b: a + b,
    "result mod 10": lambda a, b: (a + b) % 10,
    "carry": lambda a, b: ((a % 10) + (b % 10) >= 10).astype(int),
}
MIN_SHARE = 0.5  # a label needs at least half the variance explained (adjusted)
TIE = 0.02  # shares this close name the same neuron equally well


def adjusted_eta_squared(values: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of ``values`` between ``groups``, adjusted for the number of
    groups: 1 - (1 - eta²)(n - 1)/(n - k). 0 for a constant neuron."""
    values = np.asarray(values, dtype=float)
    total = ((values - values.mean()) ** 2).sum()
    if total <= 0:
        return 0.0
    frame = pd.DataFrame({"v": values, "g": groups})
    means = frame.groupby("g")["v"].transform("mean").to_numpy()
    eta2 = 1.0 - ((values - means) ** 2).sum() / total
    n, k = len(values), frame["g"].nunique()
    if n <= k:
        return float(eta2)
    return float(1.0 - (1.0 - eta2) * (n - 1) / (n - k))


def profile(activations: np.ndarray, a: np.ndarray, b: np.ndarray, names: list[str] | None = None,
            min_share: float = MIN_SHARE) -> pd.DataFrame:
    """One row per neuron (the columns of ``activations``, shape [pairs, neurons], one row per
    operand pair a, b): the adjusted share of its variance each property explains, the best
    property as its label (``mixed`` below ``min_share``) and that share."""
    activations = np.asarray(activations, dtype=float)
    a, b = np.asarray(a), np.asarray(b)
    if activations.ndim != 2 or activations.shape[0] != len(a) or len(a) != len(b):
        raise ValueError(f"activations must be [pairs, neurons] with one row per (a, b) pair; got {activations.shape} "
                         f"for {len(a)} and {len(b)} operands")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    names = names or [str(i) for i in range(activations.shape[1])]
    groups = {p: f(a, b) for p, f in PROPERTIES.items()}
    rows = []
    for j, name in enumerate(names):
        shares = {p: adjusted_eta_squared(activations[:, j], g) for p, g in groups.items()}
        top = max(shares.values())
        # Within TIE of the best, the coarsest property wins: results ending in 3 are also a
        # set of results, and "result mod 10" is the simpler description.
        best = min((p for p in shares if shares[p] >= top - TIE), key=lambda p: len(np.unique(groups[p])))
        rows.append({"neuron": name, **shares, "label": best if shares[best] >= min_share else "mixed",
                     "share": shares[best]})
    return pd.DataFrame(rows)
