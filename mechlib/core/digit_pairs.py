"""Minimal pairs of one-digit additions for a real model, on its digit-split tokens.

The real models of the book solve few-shot 1-digit + 1-digit addition often enough to study
(chapter 1); two-digit addition they mostly fail. A one-digit sum has one or two answer
digits, the first of them the carry. The organism's families that exist here:

* ``units_nocarry``: one operand changes, both sums below 10: the only answer digit changes;
* ``units_carry``: one operand changes, both sums 10 or more: the first digit (1) stays, the
  second changes (scored given the clean first digit, teacher forced);
* ``carry_flip``: one operand changes so that the carry appears or vanishes: the first answer
  digit changes.

Only problems the model answers correctly, clean and corrupted, make pairs. Every suffix is
``a + b = d`` (d the clean first answer digit), five tokens in both tokenizers, so every pair
runs in one batch; the metric is read where the two answers first differ: at ``=`` or at d.
Discovery and test halves are split by clean problem, both operand orders together.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .evaluate import encode

FAMILIES = ("units_nocarry", "units_carry", "carry_flip")
POSITIONS = ("a", "+", "b", "=", "s₁")  # suffix positions: the operands, the sign, '=' and the first answer digit
ROUTES = ("a", "b")


def family(a: int, b: int, a2: int, b2: int) -> str | None:
    """The family of a clean a + b and a corrupted a2 + b2 (one operand changed), or None
    when the carry flips but the first digits agree (1 against 10 to 19: the answers differ
    only in their length)."""
    big, big2 = a + b >= 10, a2 + b2 >= 10
    if big != big2:
        return "carry_flip" if str(a + b)[0] != str(a2 + b2)[0] else None
    return "units_carry" if big else "units_nocarry"


def one_digit_pairs(correct: set[tuple[int, int]], families=FAMILIES, n_pairs: int = 60, seed: int = 0,
                    routes=ROUTES) -> pd.DataFrame:
    """Up to ``n_pairs`` pairs per family whose clean and corrupted problems are both in
    ``correct`` (answered right). Every corruption of each clean problem is a candidate; a
    seeded draw keeps ``n_pairs``. Columns as the organism's pairs, plus ``split``."""
    problems = sorted({(min(a, b), max(a, b)) for a, b in correct})
    order = np.random.default_rng([seed, 1]).permutation(len(problems))
    side = {problems[i]: ("discovery", "test")[rank % 2] for rank, i in enumerate(order)}
    candidates = {f: [] for f in families}
    for a, b in sorted(correct):
        for a2, b2, route in [(d, b, "a") for d in range(10)] + [(a, d, "b") for d in range(10)]:
            if route not in routes or (a2, b2) == (a, b) or (a2, b2) not in correct:
                continue
            f = family(a, b, a2, b2)
            if f in candidates:
                candidates[f].append((a, b, a2, b2, route))
    rng = np.random.default_rng(seed)
    rows = []
    for f in families:
        found = candidates[f]
        for i in sorted(rng.permutation(len(found))[:n_pairs]):
            a, b, a2, b2, route = found[i]
            rows.append({"family": f, "route": route, "split": side[(min(a, b), max(a, b))], "a": a, "b": b,
                         "a_corrupt": a2, "b_corrupt": b2, "answer": a + b, "answer_corrupt": a2 + b2,
                         "carry": a + b >= 10, "carry_corrupt": a2 + b2 >= 10})
    return pd.DataFrame(rows, columns=["family", "route", "split", "a", "b", "a_corrupt", "b_corrupt", "answer",
                                       "answer_corrupt", "carry", "carry_corrupt"])


def suffix_ids(model, shots: str, texts: list[str]) -> tuple[list[int], list[list[int]]]:
    """The prefix (``shots``, with BOS where the model prepends one) and each text's tokens
    after it. Fails if a text does not tokenize as the prefix followed by its own tokens."""
    prefix = encode(model, [shots])[0]
    rows = encode(model, [shots + t for t in texts])
    for text, row in zip(texts, rows):
        if row[:len(prefix)] != prefix:
            raise ValueError(f"the worked examples do not end on a token boundary before {text!r}")
    return prefix, [row[len(prefix):] for row in rows]


def encode_pairs(model, shots: str, pairs: pd.DataFrame) -> tuple[list[int], pd.DataFrame, torch.Tensor, torch.Tensor]:
    """(prefix ids, pairs with ``position``/``token``/``token_corrupt``, clean and corrupted
    suffixes [pairs, 5]). Clean: ``a+b=d``; corrupted: ``a'+b'=d`` with the clean digit d."""
    first = [str(s)[0] for s in pairs.answer]
    prefix, clean = suffix_ids(model, shots, [f"{a}+{b}={d}" for a, b, d in zip(pairs.a, pairs.b, first)])
    _, corrupt = suffix_ids(model, shots, [f"{a}+{b}={d}" for a, b, d in zip(pairs.a_corrupt, pairs.b_corrupt, first)])
    _, clean_full = suffix_ids(model, shots, [f"{a}+{b}={a + b}" for a, b in zip(pairs.a, pairs.b)])
    _, corrupt_full = suffix_ids(model, shots, [f"{a}+{b}={a + b}" for a, b in zip(pairs.a_corrupt, pairs.b_corrupt)])
    if any(len(r) != len(POSITIONS) for r in clean + corrupt):
        raise ValueError(f"expected one token per digit and sign ({len(POSITIONS)} suffix tokens); got lengths "
                         f"{sorted({len(r) for r in clean + corrupt})}: this tokenizer does not split digits")
    positions, good, bad = [], [], []
    for c, x in zip(clean_full, corrupt_full):
        i = _first_difference(c, x)
        positions.append(i - 1)  # read one step before the differing answer digit
        good.append(c[i])
        bad.append(x[i])
    pairs = pairs.assign(position=positions, token=good, token_corrupt=bad)
    return prefix, pairs, torch.tensor(clean), torch.tensor(corrupt)


def _first_difference(clean: list[int], corrupt_answer: list[int]) -> int:
    """The first answer position (after '=', among the first two digits) where the clean and
    corrupted answers differ."""
    for j in range(4, min(len(clean), len(corrupt_answer), len(POSITIONS) + 1)):
        if clean[j] != corrupt_answer[j]:
            return j
    raise ValueError("the clean and corrupted answers agree on every scored digit")
