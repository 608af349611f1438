"""Chapter 1, baseline arithmetic: evaluate a model on a grid of problems and classify
every wrong answer."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd

from ..core.data import FEATURES, make_problems, problem_row
from ..core.evaluate import accuracy_table, evaluate
from ..core.models import load_model
from ..core.organism import ORGANISM_NAME, OrganismRecipe, organism_dir, split_pairs, training_info
from . import preflight
from .base import (
    ChapterParams,
    batch_size_field,
    device_field,
    difficulties_field,
    is_int,
    model_field,
    operators_field,
    param,
    prompt_format_field,
    seed_field,
)

CHAPTER = "01_baseline"


@dataclasses.dataclass(frozen=True)
class Params(ChapterParams):
    chapter = CHAPTER
    model: str = model_field()
    device: str = device_field()
    seed: int = seed_field()
    batch_size: int = batch_size_field()
    operators: tuple[str, ...] = operators_field(("+", "-", "*"))
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2", "3x3"))
    n_per_cell: int = param(200, is_int(1, 100_000), "an integer in 1..100000 (problems per operator x difficulty cell)")
    prompt_format: str = prompt_format_field()


@dataclasses.dataclass
class Result:
    params: Params
    results: pd.DataFrame  # one row per problem: its columns plus output, pred, error, correct
    model_note: str
    timings: dict


def check(params: Params) -> None:
    """Everything that can be checked without weights: the model exists, the device, the
    cache, and that every prompt plus its answer fits the model's context."""
    spec = preflight.model(params, "model")
    preflight.fits_context(spec, params.operators, params.difficulties, params.prompt_format, chapter=CHAPTER)


def run(params: Params) -> Result:
    check(params)
    start = time.perf_counter()
    model, _ = load_model(params.model, device=params.device)
    problems = make_problems(params.operators, params.difficulties, params.n_per_cell, params.prompt_format, params.seed)
    results = evaluate(model, problems, batch_size=params.batch_size)
    note = model_note(params.model, model)
    return Result(params, results, note, {"run_seconds": round(time.perf_counter() - start, 2)})


def findings(result: Result) -> dict:
    """The numbers the chapter's prose quotes, all computed from the results."""
    results = result.results
    acc = accuracy_table(results)
    cells = acc.stack().rename("accuracy").reset_index()
    cells["cell"] = cells["op"] + " " + cells["difficulty"]
    best = cells.sort_values(["accuracy", "cell"], ascending=[False, True]).iloc[0]
    worst = cells.sort_values(["accuracy", "cell"], ascending=[True, True]).iloc[0]
    wrong = results[~results["correct"]]
    shares = wrong["error"].value_counts(normalize=True)
    top = shares.sort_values(ascending=False).index[0] if len(shares) else "none"
    return {
        "model_note": result.model_note,
        "seed": result.params.seed,
        "n_per_cell": result.params.n_per_cell,
        "n_problems": int(len(results)),
        "n_wrong": int(len(wrong)),
        "acc_total": float(results["correct"].mean()),
        "acc_by_op": {op: float(v) for op, v in results.groupby("op")["correct"].mean().items()},
        "acc_by_cell": {c: float(a) for c, a in zip(cells["cell"], cells["accuracy"])},
        "best_cell": best["cell"],
        "best_acc": float(best["accuracy"]),
        "worst_cell": worst["cell"],
        "worst_acc": float(worst["accuracy"]),
        "top_error": top,
        "top_error_share": float(shares.get(top, 0.0)),
        "wrong_operation_share": float(shares.get("wrong_operation", 0.0)),
        "malformed_share": float(shares.get("malformed", 0.0)),
    }


def model_note(name: str, model) -> str:
    """One sentence on the model, with the organism's held-out accuracy when it is the organism."""
    cfg = model.cfg
    shape = f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads"
    if name != ORGANISM_NAME:
        return f"Model {name} ({shape})."
    from datasets import Dataset

    info = training_info(organism_dir())
    _, held = split_pairs(OrganismRecipe(**info["recipe"]))
    ds = Dataset.from_list([problem_row(a, "+", b, "bare") for a, b in held.tolist()], features=FEATURES)
    acc = evaluate(model, ds)["correct"].mean()
    return (
        f"Model {name}, the embedded organism ({shape}), trained by mechlib "
        f"on {info['n_train_pairs']} addition problems with operands 0-99. On the {len(ds)} held-out problems "
        f"(never seen in either operand order) it is exactly right {acc:.1%} of the time."
    )
