"""A pretrained model taught to multiply with LoRA: chapter 3's real-model part.

The recipe is chapter 3's (:mod:`mechlib.core.lora`): multiplication at 1x1, 1x2 and 2x2
with replayed addition, the loss on the answer tokens only, bare prompts (short, so a step is
cheap), the held-out problems never trained on in either operand order. The fine-tune is
cached under a name that holds the recipe's key, which covers the base's GGUF hash and the
training code's version.

The same held-out problems are then scored three ways: the base model in chapter 1's best
format (few-shot), the base model in the format it is trained in (bare), and the fine-tuned
model (bare). Paired tests compare them problem by problem, and the multiplication cells are
set against what the project's source expects of GPT-2 small (124M), which it fine-tunes.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from . import lora
from .evaluate import evaluate
from .format_study import render
from .models import load_model
from .stats import mcnemar, proportion

NEW, OLD = ("*",), ("+",)
BEFORE_FEWSHOT, BEFORE_BARE, AFTER = "before, few-shot", "before, bare", "after, bare"
CONDITIONS = (BEFORE_FEWSHOT, BEFORE_BARE, AFTER)
# What the project's source expects when it fine-tunes GPT-2 small to multiply (rough ranges).
SOURCE_RANGES = {("1x1", "before"): (0.60, 0.80), ("1x1", "after"): (0.95, 1.00),
                 ("2x2", "before"): (0.00, 0.05), ("2x2", "after"): (0.20, 0.60)}
PLACEMENT_RULE = ("a cell is inside the source's range when its accuracy lies in it, below or above otherwise; its 95% "
                  "interval overlaps the range when the two share any value. Before is the base model in its best "
                  "format (few-shot); after is the fine-tuned model")
SMALL = 30  # cells with fewer held-out problems carry no claim


@dataclasses.dataclass(frozen=True)
class RealLoraConfig:
    """The real-model fine-tune and its evaluation. ``curve_per_cell`` held-out problems per
    cell are scored during training; ``n_per_cell`` per cell (all, when a cell has fewer)
    before and after."""

    model: str
    steps: int = 150
    batch_size: int = 16
    lr: float = 2e-3
    rank: int = 16
    n_per_cell: int = 100
    curve_per_cell: int = 30
    heldout_fraction: float = 0.3
    shots: int = 3
    seed: int = 0
    eval_batch: int = 64
    device: str = "cpu"
    difficulties: tuple[str, ...] = ("1x1", "1x2", "2x2")

    def recipe(self) -> lora.FinetuneRecipe:
        return lora.FinetuneRecipe(
            base=self.model, operators=NEW, difficulties=self.difficulties, replay_operators=OLD, replay_fraction=0.25,
            prompt_format="bare", heldout_fraction=self.heldout_fraction, steps=self.steps, batch_size=self.batch_size,
            lr=self.lr, rank=self.rank, alpha=2 * self.rank, eval_every=max(1, self.steps // 4), seed=self.seed,
            curve_per_cell=self.curve_per_cell,
        ).validate()

    def name(self) -> str:
        """The cache name: one per recipe, so changed parameters never meet another recipe's weights."""
        recipe = self.recipe()
        return f"{lora.default_name(recipe)}-{recipe.key()[:10]}"


def study(config: RealLoraConfig, setup: Callable[[], None] | None = None) -> dict:
    """Fine-tune (or reuse the cached fine-tune), then score the same held-out problems in the
    three conditions. Returns the answers (column ``model``: the condition), the training
    history, the curve's held-out sizes, the recipe, the cache name and the timings."""
    if setup is not None:
        setup()
    recipe, name = config.recipe(), config.name()
    start = time.perf_counter()
    path = lora.ensure_finetuned(recipe, name, progress=False, device=config.device)
    ensure_seconds = time.perf_counter() - start
    problems = lora.per_cell_sample(lora.load_heldout(path), config.n_per_cell, config.seed)
    start = time.perf_counter()
    base, _ = load_model(config.model, device=config.device)
    shown = render(problems, "fewshot", config.shots, config.seed)
    frames = [evaluate(base, shown, batch_size=config.eval_batch).assign(model=BEFORE_FEWSHOT),
              evaluate(base, problems, batch_size=config.eval_batch).assign(model=BEFORE_BARE)]
    del base
    tuned, _ = load_model(name, device=config.device)
    frames.append(evaluate(tuned, problems, batch_size=config.eval_batch).assign(model=AFTER))
    results = pd.concat(frames, ignore_index=True)
    results["item"] = np.tile(np.arange(len(problems)), len(CONDITIONS))  # the same problem in every condition
    heldout = lora.load_heldout(path)
    curve = {"heldout_acc_new": lora.curve_rows(heldout[heldout.op.isin(NEW)], config.curve_per_cell),
             "heldout_acc_old": lora.curve_rows(heldout[~heldout.op.isin(NEW)], config.curve_per_cell)}
    return {"results": results, "history": lora.load_history(path), "curve_sizes": {k: len(v) for k, v in curve.items()},
            "recipe": dataclasses.asdict(recipe), "targets": list(recipe.targets()), "name": name, "n_train": _train_sizes(heldout, recipe),
            "where": lora.trained_where(path), "seconds": {"train": round(lora.train_seconds(path), 1), "ensure": round(ensure_seconds, 1),
                        "evaluate": round(time.perf_counter() - start, 1)}}


def _train_sizes(heldout: pd.DataFrame, recipe: lora.FinetuneRecipe) -> dict:
    """Problems trained on per operator: every problem of the cells less the held-out ones."""
    out = {}
    for ops in (NEW, OLD):
        every = lora.all_problems(ops, recipe.difficulties, recipe.prompt_format)
        out[ops[0]] = int(len(every) - heldout.op.isin(ops).sum())
    return out


def paired(results: pd.DataFrame, a: str, b: str, ops: tuple[str, ...]) -> dict:
    """McNemar's test of condition ``a`` against ``b`` on the same problems of ``ops``."""
    rows = results[results.op.isin(ops)]
    x = rows[rows.model == a].sort_values("item").correct.to_numpy()
    y = rows[rows.model == b].sort_values("item").correct.to_numpy()
    return {**mcnemar(x, y), "n": len(x)}


def against_source(results: pd.DataFrame) -> pd.DataFrame:
    """The multiplication cells the source gives ranges for, before (few-shot) and after,
    placed against its ranges by :data:`PLACEMENT_RULE`."""
    rows = []
    for (difficulty, stage), (lo_r, hi_r) in SOURCE_RANGES.items():
        condition = BEFORE_FEWSHOT if stage == "before" else AFTER
        cell = results[(results.op == "*") & (results.difficulty == difficulty) & (results.model == condition)]
        if not len(cell):
            continue
        st = proportion(cell.correct)
        where = "inside" if lo_r <= st["p"] <= hi_r else ("below" if st["p"] < lo_r else "above")
        rows.append({"difficulty": difficulty, "stage": stage, "n": st["n"], "accuracy": st["p"], "lo": st["lo"], "hi": st["hi"],
                     "source range": f"{lo_r:.0%} to {hi_r:.0%}", "placement": where,
                     "interval overlaps": "yes" if st["lo"] <= hi_r and st["hi"] >= lo_r else "no",
                     "enough items": "yes" if st["n"] >= SMALL else f"no (n < {SMALL})"})
    return pd.DataFrame(rows)
