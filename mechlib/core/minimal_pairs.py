"""Minimal pairs for two-digit addition: a clean and a corrupted prompt that differ in one
digit of a, so the answer changes in one known way (the family). The task the circuits
chapter studies, on any model: pairs, their tokens, the metric (logit difference at the
answer token where the two answers first differ) and the position labels.

Clean problems have two-digit operands and a two-digit sum. For the organism they are its
held-out pairs (never trained on)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from . import circuit_graph as cg
from . import data
from .organism import OrganismRecipe, split_pairs
from .tokens import with_bos

FAMILIES = {
    "units_nocarry": "an operand's units digit changes, no carry in either prompt: the units answer changes",
    "units_carry": "an operand's units digit changes, a carry in both prompts: the units answer changes",
    "tens_nocarry": "an operand's tens digit changes, no carry: the tens answer changes",
    "tens_carry": "an operand's tens digit changes, a carry in both: the tens answer changes",
    "carry_flip": "an operand's units digit changes so that the carry appears or vanishes: the tens answer changes by one",
}
# Which answer digit each family changes (0: tens, 1: units), counted from the answer's first digit.
# The metric is read where the clean and corrupted answers first differ; this is the fallback.
ANSWER_DIGIT = {"units_nocarry": 1, "units_carry": 1, "tens_nocarry": 0, "tens_carry": 0, "carry_flip": 0}


ROUTES = ("a", "b")  # which operand's digit the corruption changes


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """Which pairs: the families, how many per family, which operands may be corrupted (the
    routes), the prompt format and the seed."""
    families: tuple[str, ...] = tuple(FAMILIES)
    n_pairs: int = 100
    prompt_format: str = "bare"
    seed: int = 0
    routes: tuple[str, ...] = ROUTES

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"families: {unknown} are not among {list(FAMILIES)}")
        if not self.routes or any(r not in ROUTES for r in self.routes):
            raise ValueError(f"routes: a non-empty list from {list(ROUTES)}, got {list(self.routes)}")
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs: at least 1, got {self.n_pairs}")


def clean_pool(recipe: OrganismRecipe | None) -> list[tuple[int, int]]:
    """Clean 2-digit additions with 2-digit sums: the organism's held-out pairs (never
    trained on) when ``recipe`` is given, otherwise every such pair."""
    if recipe is not None:
        pool = [tuple(p) for p in split_pairs(recipe)[1].tolist()]
    else:
        pool = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return [(a, b) for a, b in pool if a >= 10 and b >= 10 and a + b <= 99]


def pair_pool_sizes(families, recipe: OrganismRecipe | None, routes=ROUTES) -> dict[str, int]:
    """How many minimal pairs each family can have: clean problems with a corruption of its kind."""
    pool = clean_pool(recipe)
    return {f: sum(1 for a, b in pool if _options(a, b, f, routes)) for f in families}


def _options(a: int, b: int, family: str, routes) -> list[tuple[int, int, str]]:
    """Every corrupted (a', b', route) of this family: one digit of a, or one digit of b (the
    family's conditions hold with the operands' roles swapped, since a + b = b + a)."""
    out = [(a2, b, "a") for a2 in _corruptions(a, b, family)] if "a" in routes else []
    return out + ([(a, b2, "b") for b2 in _corruptions(b, a, family)] if "b" in routes else [])


def minimal_pairs(config: PairConfig, recipe: OrganismRecipe | None) -> pd.DataFrame:
    """Clean and corrupted 2-digit additions with 2-digit sums that differ in one digit of one
    operand (a or b: ``config.routes``), ``config.n_pairs`` per family. Clean problems are the organism's held-out pairs when the model is
    the organism (never trained on), otherwise any such pair.

    The discovery and test halves are split by clean problem, both operand orders together
    (a+b and b+a are one problem): no clean problem, in any family, is on both sides."""
    pool = clean_pool(recipe)
    problems = sorted({(min(a, b), max(a, b)) for a, b in pool})
    order = np.random.default_rng([config.seed, 1]).permutation(len(problems))
    side = {problems[i]: ("discovery", "test")[rank % 2] for rank, i in enumerate(order)}
    rng = np.random.default_rng(config.seed)
    rows = []
    for family in config.families:
        found = []
        for i in rng.permutation(len(pool)):
            a, b = pool[i]
            options = _options(a, b, family, config.routes)
            if options:
                found.append((a, b, *options[rng.integers(len(options))]))
            if len(found) == config.n_pairs:
                break
        for a, b, a2, b2, route in found:
            rows.append({"family": family, "route": route, "split": side[(min(a, b), max(a, b))], "a": a, "b": b,
                         "a_corrupt": a2, "b_corrupt": b2, "answer": a + b, "answer_corrupt": a2 + b2,
                         "carry": (a % 10 + b % 10) >= 10, "carry_corrupt": (a2 % 10 + b2 % 10) >= 10})
    return pd.DataFrame(rows)


def _corruptions(a: int, b: int, family: str) -> list[int]:
    carry = lambda x: (x % 10 + b % 10) >= 10  # noqa: E731
    out = []
    if family.startswith("units") or family == "carry_flip":
        for d in range(10):
            a2 = a // 10 * 10 + d
            if a2 == a or a2 + b > 99:
                continue
            want = {"units_nocarry": not carry(a) and not carry(a2), "units_carry": carry(a) and carry(a2),
                    "carry_flip": carry(a) != carry(a2)}[family]
            if want:
                out.append(a2)
    else:
        for d in range(1, 10):
            a2 = d * 10 + a % 10
            if a2 == a or a2 + b > 99:
                continue
            if (family == "tens_carry") == carry(a):
                out.append(a2)
    return out


def encode_pairs(pairs: pd.DataFrame, tokenizer, prompt_format: str):
    """Token ids of clean and corrupted sequences (prompt + the clean answer, teacher forced),
    each family's metric position and the clean and corrupted answer tokens there. Pairs whose
    sequences do not share the modal length are dropped."""
    clean, corrupt, keep = [], [], []
    for a, b, a2, b2 in zip(pairs.a, pairs.b, pairs.a_corrupt, pairs.get("b_corrupt", pairs.b)):
        p, t = data.format_prompt(a, "+", b, prompt_format)
        p2, t2 = data.format_prompt(a2, "+", b2, prompt_format)
        ids = tokenizer(p + t)["input_ids"]
        ids2 = tokenizer(p2 + t)["input_ids"]
        ans2 = tokenizer(p2 + t2)["input_ids"]
        added = len(with_bos(tokenizer, ids)) - len(ids)  # 1 where BOS is prepended
        clean.append(with_bos(tokenizer, ids))
        corrupt.append(ids2 if added == 0 else with_bos(tokenizer, ids2))
        keep.append((ans2 if added == 0 else with_bos(tokenizer, ans2), added + len(tokenizer(p)["input_ids"])))
    lengths = pd.Series([len(c) for c in clean])
    modal = int(lengths.mode().iloc[0])
    ok = [len(c) == modal == len(x) == len(k[0]) for c, x, k in zip(clean, corrupt, keep)]
    pairs = pairs[ok].reset_index(drop=True)
    clean = [c for c, o in zip(clean, ok) if o]
    corrupt = [c for c, o in zip(corrupt, ok) if o]
    keep = [k for k, o in zip(keep, ok) if o]
    positions, tok_clean, tok_corrupt = [], [], []
    for fam, c, (ans2, start) in zip(pairs.family, clean, keep):
        # The answer token where clean and corrupted answers first differ, read one step before.
        diff = [i for i in range(start, modal) if c[i] != ans2[i]]
        i = diff[0] if diff else start + ANSWER_DIGIT[fam]
        positions.append(i - 1)
        tok_clean.append(c[i])
        tok_corrupt.append(ans2[i])
    pairs = pairs.assign(position=positions, token=tok_clean, token_corrupt=tok_corrupt)
    return pairs, torch.tensor(clean), torch.tensor(corrupt)


def pair_task(pairs: pd.DataFrame, clean: torch.Tensor, corrupt: torch.Tensor) -> cg.Task:
    """Logit difference (clean answer token minus corrupted one) at each pair's position."""
    rows = torch.arange(len(pairs))
    pos = torch.tensor(pairs.position.tolist())
    good, bad = torch.tensor(pairs.token.tolist()), torch.tensor(pairs.token_corrupt.tolist())

    def metric(logits: torch.Tensor) -> torch.Tensor:
        r = rows.to(logits.device)
        at = logits[r, pos.to(logits.device)]
        return at[r, good.to(logits.device)] - at[r, bad.to(logits.device)]

    return cg.Task(tokens=clean, metric=metric, corrupt=corrupt)


def correct(logits: torch.Tensor, pairs: pd.DataFrame) -> np.ndarray:
    """Whether the top token at each pair's position is the clean answer token."""
    rows = torch.arange(len(pairs), device=logits.device)
    top = logits[rows, torch.tensor(pairs.position.tolist(), device=logits.device)].argmax(-1)
    return cg.numpy(top == torch.tensor(pairs.token.tolist(), device=logits.device))


def position_labels(tokenizer, prompt_format: str, length: int) -> list[str]:
    """Role labels of each position, read off the template 12+35=47 whose digits are distinct."""
    roles = {"1": "a₁", "2": "a₀", "3": "b₁", "5": "b₀", "4": "s₁", "7": "s₀"}
    p, t = data.format_prompt(12, "+", 35, prompt_format)
    ids = tokenizer(p + t)["input_ids"]
    ids = with_bos(tokenizer, ids)
    labels = []
    for i, tok in enumerate(ids[:length]):
        text = tokenizer.decode([tok])
        if i == 0 and tok == tokenizer.bos_token_id:
            labels.append("BOS")
            continue
        role = "".join(roles.get(ch, "") for ch in text)
        labels.append(f"{i}:{role or text.strip() or '␣'}")
    return labels
