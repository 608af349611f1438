"""A pretrained model taught to call a calculator with LoRA: chapter 6's real-model part.

After the source's Gemma experiment: natural-language arithmetic requests are to be answered
with ``<tool_call>calculator(EXPR)</tool_call>`` and copy requests directly
(:mod:mechlib.core.tool_requests). The fine-tune is chapter 3's LoRA code with the loss on
the reply's tokens only, cached under a name that holds its recipe's key.

Three subsets are scored, as in the source: ``tool`` (held-out operand pairs in phrasings
never trained on), ``copy`` (the same for copy requests) and ``tool_ood`` (other phrasings
again, and four-digit operands). Each is scored two ways on the same requests: the base
model given an instruction and worked examples of the call format (what a user would try
before fine-tuning), and the fine-tuned model given the request alone. (The base model given
the request alone cannot know the format: a control by construction, so it is not
run: it would cost a third more decoding.)
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from . import decode, lora, tool_requests
from .evaluate import encode, encode_targets
from .models import load_model
from .stats import mcnemar
from .tool_scoring import FIRST_TOKENS, classify_call, metrics, opens_call, read_requests

BEFORE_SHOWN, AFTER = "before, instructed with examples", "after, request only"
CONDITIONS = (BEFORE_SHOWN, AFTER)


@dataclasses.dataclass(frozen=True)
class ToolLoraConfig:
    """The real-model tool fine-tune and its evaluation: ``n_per_operator`` requests per
    operator in ``tool`` and ``tool_ood``, and as many copy requests."""

    model: str
    operators: tuple[str, ...] = ("*", "/")
    steps: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    rank: int = 8
    copy_fraction: float = 0.5  # as in the organism's tool recipe
    heldout_fraction: float = 0.3
    n_per_operator: int = 50
    curve_per_cell: int = 12
    seed: int = 0
    eval_batch: int = 64
    device: str = "cpu"

    def recipe(self) -> lora.FinetuneRecipe:
        return lora.FinetuneRecipe(
            base=self.model, operators=self.operators, replay_operators=(), replay_fraction=self.copy_fraction,
            heldout_fraction=self.heldout_fraction, steps=self.steps, batch_size=self.batch_size, lr=self.lr, rank=self.rank,
            alpha=2 * self.rank, eval_every=max(1, self.steps // 4), seed=self.seed, task="requests", call_style="long",
            curve_per_cell=self.curve_per_cell,
        ).validate()

    def name(self) -> str:
        """The cache name: one per recipe, so changed parameters never meet another recipe's weights."""
        recipe = self.recipe()
        return f"{lora.default_name(recipe)}-{recipe.key()[:10]}"


def eval_requests(config: ToolLoraConfig, heldout: pd.DataFrame) -> pd.DataFrame:
    """The three subsets: held-out calls and copies (``n_per_operator`` per operator, and as
    many copies, drawn at random), and out-of-distribution calls."""
    held = lora.per_cell_sample(heldout, config.n_per_operator, config.seed)
    ood = tool_requests.ood_requests(config.operators, config.n_per_operator, config.seed)
    parts = [held[held.needs_call].assign(subset="tool"), held[~held.needs_call].assign(subset="copy"), ood.assign(subset="tool_ood")]
    return pd.concat(parts, ignore_index=True)


@torch.inference_mode()
def replies(model, prompts: list[str], targets: list[str], batch_size: int, goes_on: Callable[[str], bool] = opens_call) -> list[str]:
    """Greedy replies. Every reply gets :data:FIRST_TOKENS tokens; the ones that have not
    ended and that ``goes_on`` (by default: they open a call) go on to the longest expected
    reply and two tokens more. The tokens are those of one long greedy decode, without
    decoding a call's length for every reply that never calls: a decode step costs about the
    same at any batch size, since the weights (Gemma's 262,144-row unembedding above all) are
    read once per step."""
    tok = model.tokenizer
    longest = max(len(t) for t in encode_targets(model, targets)) + 2
    ids, stops = encode(model, prompts), decode.stop_ids(tok)
    first = min(FIRST_TOKENS, longest)
    out = decode.greedy_decode(model, ids, first, stops, batch_size)
    texts = tok.batch_decode(out, skip_special_tokens=True)
    going = [i for i, (row, text) in enumerate(zip(out, texts)) if len(row) == first and goes_on(text)]
    if going and longest > first:
        rest = decode.greedy_decode(model, [ids[i] + out[i] for i in going], longest - first, stops, batch_size)
        for i, more in zip(going, rest):
            out[i] = out[i] + more
    return tok.batch_decode(out, skip_special_tokens=True)


def finetune(config: ToolLoraConfig, setup: Callable[[], None] | None = None) -> float:
    """Train the fine-tune unless the cache holds it; the seconds this took."""
    if setup is not None:
        setup()
    start = time.perf_counter()
    lora.ensure_finetuned(config.recipe(), config.name(), progress=False, device=config.device)
    return round(time.perf_counter() - start, 1)


def load_pair(config: ToolLoraConfig) -> tuple:
    """(base model, fine-tuned model), the fine-tune trained first unless cached."""
    finetune(config)
    return load_model(config.model, device=config.device)[0], load_model(config.name(), device=config.device)[0]


def study(config: ToolLoraConfig, setup: Callable[[], None] | None = None, ensure_seconds: float | None = None,
          models: tuple | None = None) -> dict:
    """Fine-tune (or reuse the cached fine-tune), then score the three subsets in both
    conditions. Returns the read replies (column ``model``: the condition, ``item``: the
    request), the metrics, the training history, the recipe, the cache name and timings.
    ``models``: the (base, fine-tuned) pair already loaded (:func:`load_pair`), kept for
    later use; otherwise each is loaded here and dropped after its condition."""
    if ensure_seconds is None:
        ensure_seconds = finetune(config, setup)
    recipe, name = config.recipe(), config.name()
    path = lora.ensure_finetuned(recipe, name, progress=False, device=config.device)
    heldout = lora.load_heldout(path)
    requests = eval_requests(config, heldout)
    prompts, targets = requests.prompt.tolist(), requests.target.tolist()
    prefix = tool_requests.fewshot_prefix(config.operators, config.seed)
    start = time.perf_counter()
    base = models[0] if models else load_model(config.model, device=config.device)[0]
    frames = [read_requests(requests, replies(base, [prefix + p for p in prompts], targets, config.eval_batch)).assign(model=BEFORE_SHOWN)]
    del base
    tuned = models[1] if models else load_model(name, device=config.device)[0]
    frames.append(read_requests(requests, replies(tuned, prompts, targets, config.eval_batch)).assign(model=AFTER))
    answers = pd.concat(frames, ignore_index=True)
    answers["item"] = np.tile(np.arange(len(requests)), len(CONDITIONS))
    train_new, _, train_old, _ = lora.splits(recipe)
    curve = {"heldout_acc_new": lora.curve_rows(heldout[heldout.needs_call], config.curve_per_cell),
             "heldout_acc_old": lora.curve_rows(heldout[~heldout.needs_call], config.curve_per_cell)}
    return {"answers": answers, "metrics": metrics(answers), "wrong_calls": wrong_calls(answers), "prefix": prefix,
            "history": lora.load_history(path), "curve_sizes": {k: len(v) for k, v in curve.items()},
            "recipe": dataclasses.asdict(recipe), "targets": list(recipe.targets()), "name": name,
            "n_train": {"calls": len(train_new), "copies": len(train_old)}, "where": lora.trained_where(path),
            "threads": torch.get_num_threads(),
            "seconds": {"train": round(lora.train_seconds(path), 1), "ensure": ensure_seconds,
                        "evaluate": round(time.perf_counter() - start, 1)}}


def wrong_calls(answers: pd.DataFrame) -> pd.DataFrame:
    """Each condition's replies to arithmetic requests that are not answered correctly, with
    their class (a missing call is ``no call``)."""
    wrong = answers[answers.needs_call & ~answers.math_correct].copy()
    wrong["class"] = [classify_call(r) if r.called else "no call" for r in wrong.itertuples()]
    return wrong[["model", "subset", "prompt", "target", "output", "class"]]


def paired(answers: pd.DataFrame, a: str, b: str, subset: str, column: str = "math_correct") -> dict:
    """McNemar's test of condition ``a`` against ``b`` on the same requests of ``subset``."""
    rows = answers[answers.subset == subset]
    x = rows[rows.model == a].sort_values("item")[column].to_numpy()
    y = rows[rows.model == b].sort_values("item")[column].to_numpy()
    return {**mcnemar(x, y), "n": len(x)}


MIN_CALLED, MAX_FALSE_CALLS = 0.8, 0.1
VERDICT_RULE = (f"learned: on the tool subset the fine-tune's end-to-end correct rate has the lower end of its 95% interval at or above "
                f"{MIN_CALLED:.0%}, and on the copy subset its false-call rate has the upper end at or below {MAX_FALSE_CALLS:.0%}; carried "
                f"over: the same lower bound of {MIN_CALLED:.0%} on the tool_ood subset too; a fine-tune that fails the first test is "
                "'not shown to have learned'")


def verdict(table: pd.DataFrame) -> str:
    """:data:`VERDICT_RULE` applied to the fine-tuned model's rows of :func:`metrics`."""
    m = table[table.model == AFTER].set_index(["subset", "metric"])

    def row(subset, metric):
        return m.loc[(subset, metric)] if (subset, metric) in m.index else None

    tool, copy, ood = row("tool", "math_correct_rate"), row("copy", "tool_call_rate"), row("tool_ood", "math_correct_rate")
    if tool is None or copy is None or tool.lo < MIN_CALLED or copy.hi > MAX_FALSE_CALLS:
        return "not shown to have learned"
    if ood is not None and ood.lo >= MIN_CALLED:
        return f"learned, and carried over ({tool_requests.OOD_TEXT})"
    return f"learned, but not shown to carry over ({tool_requests.OOD_TEXT})"
