"""Chapter 3, teaching the missing skill with LoRA: fine-tune (or find the cached
fine-tune), then compare the model before and after on held-out problems."""
from __future__ import annotations

import dataclasses

import pandas as pd

from ..core import lora as ft
from ..core.lora import BOUNDS
from ..core.models import load_model, resolve_device
from ..views.gains import gain_cost_findings
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_int,
    is_name,
    is_number,
    is_str,
    list_of,
    operators_field,
    param,
    prompt_format_field,
)

CHAPTER = "03_finetune"


def _int(name: str, what: str = ""):
    lo, hi = BOUNDS[name]
    return is_int(lo, hi), f"an integer in {lo}..{hi}{what}"


def _num(name: str, what: str = ""):
    lo, hi = BOUNDS[name]
    return is_number(lo, hi), f"a number in {lo:g}..{hi:g}{what}"


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    operators: tuple[str, ...] = operators_field(("-",))
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2"))
    prompt_format: str = prompt_format_field()
    replay_operators: tuple[str, ...] = operators_field(("+",), min_len=0)
    replay_fraction: float = param(0.5, *_num("replay_fraction", " (share of each batch from the replay operators)"))
    heldout_fraction: float = param(0.1, *_num("heldout_fraction", " (share of problems never trained on)"))
    steps: int = param(1600, *_int("steps"))
    lora_batch_size: int = param(128, *_int("batch_size"))
    lr: float = param(0.003, *_num("lr"))
    rank: int = param(32, *_int("rank"))
    alpha: int = param(64, *_int("alpha"))
    target_modules: tuple[str, ...] = param((), list_of(is_str, min_len=0),
                                            "a list of module names ([] for the model family's attention and MLP weights: "
                                            "c_attn, c_proj, c_fc for GPT-2; q/k/v/o_proj, gate/up/down_proj for Llama and Gemma 3)")
    eval_every: int = param(50, *_int("eval_every"))
    finetuned_name: str = param("arith-organism-lora-sub", is_name,
                                "a name of letters, digits, '-', '_' and '.' (where the fine-tune is cached)")

    def check(self):
        overlap = sorted(set(self.operators) & set(self.replay_operators))
        if overlap:
            self.fail("replay_operators", f"{overlap} are also in 'operators'; a replayed skill must be one the model already has")


@dataclasses.dataclass
class Result:
    params: Params
    results: pd.DataFrame  # before/after answers on the held-out problems, column ``model``
    history: pd.DataFrame  # loss per step; held-out accuracy every eval_every steps
    heldout: pd.DataFrame
    path: str
    timings: dict


def recipe(params: Params) -> ft.FinetuneRecipe:
    """The chapter's parameters as a training recipe."""
    return ft.FinetuneRecipe(
        base=params.model, operators=params.operators, difficulties=params.difficulties,
        replay_operators=params.replay_operators, replay_fraction=params.replay_fraction,
        prompt_format=params.prompt_format, heldout_fraction=params.heldout_fraction, steps=params.steps,
        batch_size=params.lora_batch_size, lr=params.lr, rank=params.rank, alpha=params.alpha,
        target_modules=params.target_modules, eval_every=params.eval_every, seed=params.seed,
    ).validate()


def check(params: Params):
    spec = preflight.model(params)
    ops = tuple(params.operators) + tuple(params.replay_operators)
    preflight.fits_context(spec, ops, params.difficulties, params.prompt_format, chapter=CHAPTER)
    if not ft.is_current(params.finetuned_name, recipe(params)):
        try:
            ft.check_name_free(params.finetuned_name, recipe(params))
        except ValueError as err:
            params.fail("finetuned_name", str(err))
        preflight.writable_cache(f"{CHAPTER}: the fine-tune {params.finetuned_name!r} must be trained and saved", "finetuned")


def ensure(params: Params) -> str:
    """The fine-tune's checkpoint directory, trained first when the cache lacks this recipe."""
    return str(ft.ensure_finetuned(recipe(params), params.finetuned_name, progress=False, device=resolve_device(params.device)))


def run(params: Params) -> Result:
    check(params)
    path = ensure(params)
    before, _ = load_model(params.model, device=params.device)
    after, _ = load_model(params.finetuned_name, device=params.device)
    heldout = ft.load_heldout(path)
    results = ft.before_after({"before": before, "after": after}, heldout, batch_size=params.batch_size)
    return Result(params, results, ft.load_history(path), heldout, path, {"train_seconds": round(ft.train_seconds(path), 1)})


def heldout_curves(result: Result) -> pd.DataFrame:
    """Held-out accuracy during training in long form, with Wilson 95% intervals."""
    is_new = result.heldout.op.isin(result.params.operators)
    return ft.heldout_curves(result.history, {"heldout_acc_new": int(is_new.sum()), "heldout_acc_old": int((~is_new).sum())},
                             {"heldout_acc_new": "new skill (held-out)", "heldout_acc_old": "replayed skill (held-out)"})


def findings(result: Result) -> dict:
    out = gain_cost_findings(result.results, result.params.operators)
    out.update(steps=result.params.steps, n_heldout=int(len(result.heldout)), finetuned_name=result.params.finetuned_name)
    return out
