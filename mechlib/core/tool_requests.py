"""Natural-language calculator requests, after the source's Gemma tool-calling experiment.

A request that needs arithmetic ("I'd like to know the result of 649 / 821.") is to be
answered with a call, ``<tool_call>calculator(649/821)</tool_call>``; a copy request
("Repeat after me: 37 48") is to be answered directly (``37 48``), with no call. Requests are
generated from templates with a seed. The three uses are disjoint by construction:

- ``train``: the fine-tune's templates, three-digit operands (100..999);
- ``eval``: other templates, operand pairs never trained on (in either order), same range;
- ``ood``: other templates again, and operands of 1000..9999, a range never trained on.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import pair_key
from .tools import call_text

VERSION = 1  # bump when a template, a range or the prompt frame changes: fine-tunes are keyed on it
OPERATORS = ("*", "/")
COPY = "copy"
PROMPT = "Request: {request}\nResponse:"  # the frame every request is asked in
RANGES = {"train": (100, 999), "eval": (100, 999), "ood": (1000, 9999)}  # fixed widths: equal-length prompts batch together
OOD_TEXT = "new phrasings, operands {}-{}".format(*RANGES["ood"])  # how the page names the out-of-distribution subset
PAIRS_PER_KIND = 1200  # distinct operand pairs drawn per operator (and for copying) before the split

TEMPLATES = {
    "train": {
        "*": ("What do you get if you multiply {a} by {b}?", "Please compute {a} times {b}.", "Calculate {a} * {b}.",
              "How much is {a} multiplied by {b}?", "Multiply {a} and {b}."),
        "/": ("What is {a} divided by {b}?", "Please compute {a} / {b}.", "Calculate {a} divided by {b}.",
              "How much is {a} over {b}?", "Divide {a} by {b}."),
        COPY: ("Repeat after me: {a} {b}", "Say these numbers back: {a} {b}", "Echo this: {a} {b}"),
    },
    "eval": {
        "*": ("I'd like to know the result of {a} * {b}.", "Could you tell me the product of {a} and {b}?",
              "What's {a} times {b}?"),
        "/": ("I'd like to know the result of {a} / {b}.", "What's the quotient when {a} is divided by {b}?",
              "Could you tell me {a} divided by {b}?"),
        COPY: ("Copy these numbers exactly: {a} {b}", "Write back the following: {a} {b}"),
    },
    "ood": {
        "*": ("Find the product, please: {a} and {b}.", "A crate holds {b} items and there are {a} crates; how many items in all?",
              "Work out {a} x {b} for me."),
        "/": ("Share {a} equally among {b} people: how much does each get?", "Work out {a} ÷ {b} for me.",
              "Find the ratio of {a} to {b}, please."),
    },
}


def target(a: int, op: str, b: int) -> str:
    """What the model should answer: the call for an operator, the two numbers for a copy."""
    return f" {a} {b}" if op == COPY else " " + call_text(f"{a}{op}{b}", "long")


def render(pairs: np.ndarray, op: str, use: str, rng: np.random.Generator) -> pd.DataFrame:
    """One request per operand pair, each in a template of ``use`` drawn with ``rng``."""
    templates = TEMPLATES[use][op]
    lo, hi = RANGES[use]
    span = f"operands {lo}-{hi}"  # one cell per operator and range: the sampling weights are per cell
    chosen = rng.integers(0, len(templates), len(pairs))
    rows = [{"prompt": PROMPT.format(request=templates[t].format(a=a, b=b)), "target": target(a, op, b), "a": a, "op": op, "b": b,
             "difficulty": span, "template": templates[t], "use": use, "needs_call": op != COPY}
            for (a, b), t in zip(pairs.tolist(), chosen.tolist())]
    return pd.DataFrame(rows)


def draw_pairs(n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` operand pairs in ``lo..hi``, distinct up to order."""
    seen, out = set(), []
    while len(out) < n:
        a, b = (int(x) for x in rng.integers(lo, hi + 1, 2))
        if (min(a, b), max(a, b)) not in seen:
            seen.add((min(a, b), max(a, b)))
            out.append((a, b))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def training_splits(operators, heldout_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train calls, held-out calls, train copies, held-out copies): ``PAIRS_PER_KIND`` pairs
    per operator and for copying, ``heldout_fraction`` of them held out by unordered pair,
    trained pairs in ``train`` templates and held-out pairs in ``eval`` templates."""
    out = {True: [], False: []}
    for i, op in enumerate([*operators, COPY]):
        rng = np.random.default_rng([seed, i, 7])
        pairs = draw_pairs(PAIRS_PER_KIND, *RANGES["train"], rng)
        held = rng.random(len(pairs)) < heldout_fraction
        out[op != COPY].append((render(pairs[~held], op, "train", rng), render(pairs[held], op, "eval", rng)))
    calls, copies = out[True], out[False]
    join = lambda parts, k: pd.concat([p[k] for p in parts], ignore_index=True)  # noqa: E731
    return join(calls, 0), join(calls, 1), join(copies, 0), join(copies, 1)


def ood_requests(operators, n_per_operator: int, seed: int) -> pd.DataFrame:
    """Call requests in phrasings and an operand range never trained on."""
    parts = []
    for i, op in enumerate(operators):
        rng = np.random.default_rng([seed, i, 11])
        parts.append(render(draw_pairs(n_per_operator, *RANGES["ood"], rng), op, "ood", rng))
    return pd.concat(parts, ignore_index=True)


def fewshot_prefix(operators, seed: int) -> str:
    """An instruction and one worked example per operator and one copy, in ``train``
    templates with operands outside every range used for scoring: what a user would try
    before fine-tuning."""
    rng = np.random.default_rng([seed, 13])
    lines = ["Answer each request. For arithmetic, call the calculator as <tool_call>calculator(EXPRESSION)</tool_call>; "
             "otherwise answer directly.", ""]
    for op in [*operators, COPY]:
        a, b = (int(x) for x in rng.integers(1, 10, 2))  # one-digit operands: never an eval or ood operand
        lines.append(PROMPT.format(request=TEMPLATES["train"][op][0].format(a=a, b=b)) + target(a, op, b))
        lines.append("")
    return "\n".join(lines)


def keys(frame: pd.DataFrame) -> set:
    """The problems of a frame up to operand order, for disjointness checks."""
    return {pair_key(int(a), op, int(b)) for a, op, b in zip(frame.a, frame.op, frame.b)}
