"""Where a model's arithmetic fails, from scored answers (:func:`~mechlib.core.evaluate.evaluate`
output): carries, operand order, answer length, and the place of the first wrong digit.

Each table is an accuracy (or a share) with n and a Wilson 95% interval per group, computed
within the groups given in ``by`` (say model and format), never pooled across them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .data import count_cascades, n_digits
from .stats import accuracy_by

PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands or more")
CARRY_GROUPS = ("no carry", "one carry", "two or more, none cascading", "cascading")


def carry_group(a: int, b: int, carries: int) -> str:
    """Addition by its carries: none, one, two or more, or a cascade (a column that carries
    only because a carry came in, as the tens of 99+1)."""
    if carries == 0:
        return CARRY_GROUPS[0]
    if count_cascades(a, b) > 0:
        return CARRY_GROUPS[3]
    return CARRY_GROUPS[1] if carries == 1 else CARRY_GROUPS[2]


def carry_table(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Addition accuracy by difficulty and carry group (:data:`CARRY_GROUPS`)."""
    add = results[results.op == "+"]
    if not len(add):
        return pd.DataFrame(columns=[*by, "difficulty", "carry", "n", "k", "accuracy", "lo", "hi"])
    add = add.assign(carry=[carry_group(a, b, c) for a, b, c in zip(add.a, add.b, add.carries)])
    table = accuracy_by(add, [*by, "difficulty", "carry"])
    table["carry"] = pd.Categorical(table["carry"], CARRY_GROUPS, ordered=True)
    return table.sort_values([*by, "difficulty", "carry"]).reset_index(drop=True).astype({"carry": str})


def order_table(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy on problems with operands of different lengths, by which comes first."""
    mixed = results[results.digits_a != results.digits_b]
    if not len(mixed):
        return pd.DataFrame(columns=[*by, "op", "difficulty", "order", "n", "k", "accuracy", "lo", "hi"])
    mixed = mixed.assign(order=np.where(mixed.digits_a > mixed.digits_b, "longer operand first", "shorter operand first"))
    return accuracy_by(mixed, [*by, "op", "difficulty", "order"])


def length_table(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy by the number of digits in the right answer, per operator."""
    lengths = results.assign(answer_digits=[n_digits(int(x)) for x in results.answer])
    return accuracy_by(lengths, [*by, "op", "answer_digits"])


def first_wrong_place(answer: int, pred: int) -> str | None:
    """The highest place value at which ``pred`` differs from ``answer`` (digits aligned by
    place, a missing digit counting as different); None when they are equal or of
    different sign."""
    if answer == pred or (answer < 0) != (pred < 0):
        return None
    a, p = str(abs(answer))[::-1], str(abs(pred))[::-1]
    width = max(len(a), len(p))
    a, p = a.ljust(width, " "), p.ljust(width, " ")
    place = max(i for i in range(width) if a[i] != p[i])
    return PLACES[min(place, len(PLACES) - 1)]


def first_error_table(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Among wrong answers that are a number of the answer's sign: the share whose first
    (highest) wrong digit is at each place, per group of ``by`` and operator, with n = those
    answers (pass ``by=["difficulty"]`` to keep answer lengths apart)."""
    wrong = results[~results.correct & results.pred.notna()]
    places = [first_wrong_place(int(a), int(p)) for a, p in zip(wrong.answer, wrong.pred)]
    wrong = wrong.assign(place=places).dropna(subset=["place"])
    rows = []
    for key, group in wrong.groupby([*by, "op"], sort=False):
        key = key if isinstance(key, tuple) else (key,)
        counts = group["place"].value_counts()
        for place in PLACES:
            if place in counts:
                rows.append({**dict(zip([*by, "op"], key)), "place": place, "n": int(len(group)), "k": int(counts[place]),
                             "share": float(counts[place] / len(group))})
    return pd.DataFrame(rows, columns=[*by, "op", "place", "n", "k", "share"])
