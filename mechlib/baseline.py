"""Chapter 1, baseline arithmetic: evaluate a model on a grid of problems and summarise."""
from __future__ import annotations

import pandas as pd

from .data import make_problems, problem_row, FEATURES
from .evaluate import accuracy_table, evaluate
from .models import load_model
from .organism import ORGANISM_NAME, OrganismRecipe, organism_dir, split_pairs, training_info


def run(params: dict, progress: bool = False) -> tuple[pd.DataFrame, object]:
    """(one row per problem with its answer and error class, the loaded model)."""
    model, _ = load_model(params["model"], device=params["device"])
    problems = make_problems(
        params["operators"], params["difficulties"], params["n_per_cell"], params["prompt_format"], params["seed"]
    )
    return evaluate(model, problems, batch_size=params["batch_size"], progress=progress), model


def headline(results: pd.DataFrame) -> dict:
    """The numbers the chapter's prose quotes, all computed from the results."""
    acc = accuracy_table(results)
    cells = acc.stack().rename("accuracy").reset_index()
    cells["cell"] = cells["op"] + " " + cells["difficulty"]
    best = cells.sort_values(["accuracy", "cell"], ascending=[False, True]).iloc[0]
    worst = cells.sort_values(["accuracy", "cell"], ascending=[True, True]).iloc[0]
    wrong = results[~results["correct"]]
    shares = wrong["error"].value_counts(normalize=True)
    top = shares.sort_values(ascending=False).index[0] if len(shares) else "none"
    return {
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
