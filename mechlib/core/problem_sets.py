"""The evaluation problems, each labelled by what the model was taught about its cell. On
the organism a trained cell is scored on held-out pairs only; a new operator or format is a
control; longer operands test length generalisation. Any other model's cells are
``pretrained`` (its training data is unknown)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .char_tokenizer import build_char_tokenizer
from .data import make_problems, parse_difficulty, problem_row
from .organism import ORGANISM_NAME, OrganismRecipe, split_pairs


def cell_kind(model: str, op: str, difficulty: str, prompt_format: str) -> str:
    """What the model was taught about a cell: ``trained``, ``longer_operands``,
    ``new_operator``, ``new_format`` (the organism), or ``pretrained`` (any other model)."""
    if model != ORGANISM_NAME:
        return "pretrained"
    if prompt_format != "bare":
        return "new_format"
    if max(parse_difficulty(difficulty)) > 2:
        return "longer_operands"
    return "trained" if op == "+" else "new_operator"


def problem_set(params, recipe: OrganismRecipe | None = None) -> pd.DataFrame:
    """The problems of ``params`` (model, operators, difficulties, n_per_cell, prompt_format,
    seed), labelled by kind of cell. On the organism a trained cell holds up to
    ``n_per_cell`` of its *held-out* pairs (seeded), never a training pair."""
    problems = make_problems(params.operators, params.difficulties, params.n_per_cell, params.prompt_format, params.seed).to_pandas()
    problems["kind"] = [cell_kind(params.model, op, d, params.prompt_format) for op, d in zip(problems.op, problems.difficulty)]
    if params.model != ORGANISM_NAME or not (problems.kind == "trained").any():
        return problems
    heldout = heldout_addition_problems(recipe or OrganismRecipe())
    parts = [problems[problems.kind != "trained"]]
    for difficulty in problems.loc[problems.kind == "trained", "difficulty"].unique():
        cell = heldout[heldout.difficulty == difficulty]
        rng = np.random.default_rng([params.seed, 1, *parse_difficulty(difficulty)])
        parts.append(cell.iloc[rng.permutation(len(cell))[: params.n_per_cell]].assign(kind="trained"))
    return pd.concat(parts, ignore_index=True)


def heldout_addition_problems(recipe: OrganismRecipe) -> pd.DataFrame:
    """Every addition pair the organism never saw in training (in either order)."""
    _, held = split_pairs(recipe)
    return pd.DataFrame([problem_row(a, "+", b, "bare") for a, b in held.tolist()]).astype({"carries": int})


def last_positions(results: pd.DataFrame, recipe: OrganismRecipe) -> dict:
    """The last position the organism's longest training sequence reaches (BOS + a+b= +
    answer + EOS, counted from 0), and the last one the run's longer-operand problems need:
    positions past the first were never trained."""
    tok = build_char_tokenizer()
    top = recipe.max_operand
    length = lambda prompt, target: len(tok(prompt + target)["input_ids"]) + 1  # noqa: E731  (+ EOS)
    out = {"trained_longest": f"{top}+{top}={top + top}", "trained_last": length(f"{top}+{top}=", str(top + top)) - 1}
    longer = results[results.kind == "longer_operands"]
    if len(longer):
        out["longer_last"] = max(length(p, t) for p, t in zip(longer.prompt, longer.target)) - 1
    return out
