"""Few-shot prompts: k worked examples before each problem, drawn with a seed from a pool
disjoint from the problems they precede.

Each operator gets one fixed block of examples of that operator (drawn over the problems'
difficulties), so every problem of an operator shares the same prefix and the evaluator
computes it once (:mod:`mechlib.core.decode`). The draw of the block is the seed that
matters for a real model, whose weights are fixed: re-drawing it measures how much the
examples, not the problems, move the accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset

from .data import OPERATORS, format_prompt, make_problems, pair_key


def example_block(rows, prompt_format: str = "bare") -> str:
    """The worked examples, one per line: ``12+34=46\\n`` (or the ``qa`` form)."""
    lines = []
    for a, op, b in rows:
        prompt, target = format_prompt(a, op, b, prompt_format)
        lines.append(f"{prompt}{target}\n")
    return "".join(lines)


def draw_examples(op: str, difficulties, k: int, seed: int, exclude: set, prompt_format: str = "bare") -> list[tuple]:
    """k distinct (a, op, b) examples of ``op`` over ``difficulties`` (round-robin), none of
    them a problem in ``exclude`` (keys of :func:`~mechlib.core.data.pair_key`)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (the number of worked examples) must be a positive integer, got {k!r}")
    pool = make_problems([op], list(difficulties), n_per_cell=4 * k + 16, prompt_format=prompt_format,
                         seed=10_000 + int(seed)).to_pandas()  # another stream than the test problems' seeds
    pool = pool[[pair_key(a, o, b) not in exclude for a, o, b in zip(pool.a, pool.op, pool.b)]]
    rng = np.random.default_rng([int(seed), OPERATORS.index(op), k])
    by_cell = [g.iloc[rng.permutation(len(g))] for _, g in pool.groupby("difficulty", sort=True)]
    picked = []
    for i in range(max((len(g) for g in by_cell), default=0)):
        picked += [g.iloc[i] for g in by_cell if i < len(g)]
    if len(picked) < k:
        raise ValueError(f"only {len(picked)} worked examples of {op!r} are left outside the test problems; ask for fewer (k = {k})")
    return [(int(r.a), op, int(r.b)) for r in picked[:k]]


def with_examples(problems: Dataset, k: int, seed: int = 0, difficulties: Sequence[str] | None = None) -> Dataset:
    """The problems with k worked examples of their operator before each prompt (column
    ``shots`` holds the block). Examples are drawn outside these problems, in the problems'
    own prompt format, over ``difficulties`` (default: the problems' own; a cell whose every
    pair is a test problem, as an exhaustive 1x1 cell, has none left to give)."""
    df = problems.to_pandas()
    exclude = {pair_key(a, op, b) for a, op, b in zip(df.a, df.op, df.b)}
    blocks = {}
    for op, group in df.groupby("op", sort=False):
        fmt = group.prompt_format.iloc[0]
        cells = sorted(difficulties) if difficulties else sorted(group.difficulty.unique())
        blocks[op] = example_block(draw_examples(op, cells, k, seed, exclude, fmt), fmt)
    df["shots"] = df.op.map(blocks)
    df["prompt"] = df.shots + df.prompt
    return Dataset.from_pandas(df, preserve_index=False)
