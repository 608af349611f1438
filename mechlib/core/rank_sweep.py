"""How low a LoRA rank still learns the skill: one fine-tune per rank with the same recipe
and budget, each scored on its own held-out problems, and the smallest rank that reaches a
share of the best."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from . import lora as ft
from .cache import finetuned_dir
from .evaluate import evaluate
from .models import load_hf, load_model
from .parallel import process_pool
from .stats import proportion

Job = tuple[ft.FinetuneRecipe, str, str]  # recipe, cache name, device


def _train(job: Job, setup: Callable[[], None] | None = None) -> str:
    recipe, name, device = job
    if setup is not None:
        setup()
    return str(ft.ensure_finetuned(recipe, name, progress=False, device=device))


def train_missing(jobs: Sequence[Job], workers: int = 1, setup: Callable[[], None] | None = None) -> None:
    """Train every job whose fine-tune is not cached, in ``workers`` spawned processes when
    more than one is missing. ``setup`` runs first in each (a top-level function: a Jupyter
    kernel shows a worker's output in the cell that started it, so the book passes its quiet
    settings)."""
    todo = [job for job in jobs if not ft.is_current(job[1], job[0])]
    if workers > 1 and len(todo) > 1:
        with process_pool(min(workers, len(todo)), setup) as pool:
            list(pool.map(_train, todo))
    else:
        for job in todo:
            _train(job, setup)


def rank_sweep(base: str, jobs: dict[int, Job], new_operators: Sequence[str], batch_size: int = 512,
               workers: int = 1, setup: Callable[[], None] | None = None) -> pd.DataFrame:
    """Train (or find) one fine-tune per rank, and score each on its held-out problems: one
    row per (rank, skill) with n and the Wilson 95% interval, the trainable parameters and
    the base's."""
    train_missing(list(jobs.values()), workers, setup)
    hf, _, _ = load_hf(base)
    base_params = sum(p.numel() for p in hf.parameters())
    rows = []
    for rank, (recipe, name, device) in jobs.items():
        trainable = sum(p.numel() for p in ft.lora_model(load_hf(base)[0], recipe).parameters() if p.requires_grad)
        model, _ = load_model(name, device=device)
        res = evaluate(model, ft.load_heldout(finetuned_dir(name)), batch_size=batch_size)
        for skill, mask in (("new skill", res.op.isin(new_operators)), ("old skill", ~res.op.isin(new_operators))):
            if mask.any():
                st = proportion(res.loc[mask, "correct"])
                rows.append({"rank": rank, "skill": skill, "n": st["n"], "accuracy": st["p"], "lo": st["lo"], "hi": st["hi"],
                             "trainable": trainable, "base_params": base_params, "steps": recipe.steps})
    return pd.DataFrame(rows)


def choose_rank(ranks: pd.DataFrame, share: float) -> int:
    """The smallest rank whose held-out accuracy on the new skill reaches ``share`` of the best
    rank's: the lowest rank that learns the skill about as well as any."""
    new = ranks[ranks.skill == "new skill"].sort_values("rank")
    return int(new[new.accuracy >= share * new.accuracy.max()]["rank"].iloc[0])
