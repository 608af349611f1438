"""Chapter 3, teaching the missing skill with LoRA: fine-tune (or find the cached
fine-tune), then compare the model before and after on held-out problems; then the same for
a pretrained model taught to multiply (:mod:`mechlib.core.lora_study`)."""
from __future__ import annotations

import dataclasses

import pandas as pd

from ..core import lora as ft
from ..core import lora_study
from ..core.lora import BOUNDS
from ..core.model_jobs import MAX_BATCH
from ..core.models import load_model, resolve_device
from ..core.parallel import beside
from ..core.shipped import shipped
from ..core.stats import fmt_interval, proportion
from ..views.gains import gain_cost_findings
from ..views.quiet import quiet
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
    real_model: str = param("smollm2-135m-instruct", lambda v: v == "" or is_str(v), "a model name or path, or '' for none",
                            "a pretrained model taught to multiply (the chapter's second part)")
    real_steps: int = param(150, is_int(1, 5000), "an integer in 1..5000")
    real_lora_batch_size: int = param(16, is_int(1, 256), "an integer in 1..256")
    real_lr: float = param(0.002, *_num("lr"))
    real_rank: int = param(16, is_int(1, 256), "an integer in 1..256 (LoRA alpha is twice the rank)")
    real_n_per_cell: int = param(100, is_int(1, 10_000), "an integer in 1..10000",
                                 "held-out problems scored per cell before and after (all, where a cell has fewer)")
    real_workers: int = param(2, is_int(1, 2), "1 or 2", "2: the pretrained model's part runs in its own process, beside the organism's")

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
    real: dict | None = None  # the pretrained model's part (lora_study.study); None when real_model is ''


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
    preflight.pretrained_part(params, real_config)


def ensure(params: Params) -> str:
    """The fine-tune's checkpoint directory, trained first when the cache lacks this recipe."""
    return str(ft.ensure_finetuned(recipe(params), params.finetuned_name, progress=False, device=resolve_device(params.device)))


def real_config(params: Params) -> lora_study.RealLoraConfig | None:
    if not params.real_model:
        return None
    return lora_study.RealLoraConfig(model=params.real_model, steps=params.real_steps, batch_size=params.real_lora_batch_size,
                                     lr=params.real_lr, rank=params.real_rank, n_per_cell=params.real_n_per_cell, seed=params.seed,
                                     device=resolve_device(params.device), eval_batch=min(params.batch_size, MAX_BATCH))


def run(params: Params) -> Result:
    check(params)
    config = real_config(params)

    def organism_part():
        path = ensure(params)
        before, _ = load_model(params.model, device=params.device)
        after, _ = load_model(params.finetuned_name, device=params.device)
        heldout = ft.load_heldout(path)
        return path, heldout, ft.before_after({"before": before, "after": after}, heldout, batch_size=params.batch_size)

    # one torch thread each in two processes: the chapter takes the slower part's time
    (path, heldout, results), real = beside(organism_part, lora_study.study if config else None, (config, quiet), params.real_workers)
    return Result(params, results, ft.load_history(path), heldout, path, {"train_seconds": round(ft.train_seconds(path), 1)}, real)


def heldout_curves(result: Result) -> pd.DataFrame:
    """Held-out accuracy during training in long form, with Wilson 95% intervals."""
    is_new = result.heldout.op.isin(result.params.operators)
    return ft.heldout_curves(result.history, {"heldout_acc_new": int(is_new.sum()), "heldout_acc_old": int((~is_new).sum())},
                             {"heldout_acc_new": "new skill (held-out)", "heldout_acc_old": "replayed skill (held-out)"})


def real_results(result: Result) -> pd.DataFrame:
    """The pretrained model's answers in the three conditions (empty when none ran)."""
    return result.real["results"] if result.real is not None else pd.DataFrame()


def real_cells(result: Result) -> pd.DataFrame:
    """Accuracy per operator, difficulty and condition, with n and Wilson 95% intervals."""
    from ..core.evaluate import accuracy_cells

    res = real_results(result)
    if not len(res):
        return res
    return accuracy_cells(res, ["op", "difficulty", "model"], {"model": lora_study.CONDITIONS}).rename(columns={"model": "condition"})


def real_errors(result: Result) -> pd.DataFrame:
    """The two most common answer classes per condition and operator (empty when none ran)."""
    from ..core.evaluate import error_summary

    res = real_results(result)
    if not len(res):
        return res
    table = error_summary(res, by=["model", "op"]).rename(columns={"model": "condition"})
    order = {c: i for i, c in enumerate(lora_study.CONDITIONS)}
    return table.sort_values("condition", key=lambda col: col.map(order), kind="stable").reset_index(drop=True)


def real_source(result: Result) -> pd.DataFrame:
    res = real_results(result)
    return lora_study.against_source(res) if len(res) else res


def real_curves(result: Result) -> pd.DataFrame:
    """The pretrained model's held-out accuracy during training, with Wilson 95% intervals."""
    if result.real is None:
        return pd.DataFrame()
    return ft.heldout_curves(result.real["history"], result.real["curve_sizes"],
                             {"heldout_acc_new": "multiplication (held-out)", "heldout_acc_old": "addition (held-out)"})


def findings(result: Result) -> dict:
    out = gain_cost_findings(result.results, result.params.operators)
    out.update(steps=result.params.steps, n_heldout=int(len(result.heldout)), finetuned_name=result.params.finetuned_name)
    out.update(real_findings(result))
    return out


REAL_KEYS = ("real_model_text", "real_recipe_text", "real_time_text", "real_new_text", "real_old_text", "real_fewshot_text",
             "real_bare_text", "real_source_text", "real_best_text")


def real_findings(result: Result) -> dict:
    """The pretrained model's part as glued sentences; each names the model."""
    ranges = lora_study.SOURCE_RANGES
    out = {"real_placement_rule": lora_study.PLACEMENT_RULE,
           "real_source_ranges_text": "; ".join(f"{d} {stage}: {lo:.0%} to {hi:.0%}" for (d, stage), (lo, hi) in ranges.items())}
    real = result.real
    if real is None:
        none = "Not measured: this run fine-tuned no pretrained model (parameter real_model)."
        return {**out, **{k: none for k in REAL_KEYS}}
    res, recipe, p = real["results"], real["recipe"], result.params
    found = shipped(p.real_model)
    title = found.title if found else p.real_model
    new, old = res[res.op.isin(lora_study.NEW)], res[res.op.isin(lora_study.OLD)]

    def pooled(rows: pd.DataFrame, condition: str) -> str:
        st = proportion(rows[rows.model == condition].correct)
        return fmt_interval(st["p"], st["lo"], st["hi"], st["n"])

    def versus(a: str, b: str, ops) -> str:
        t = lora_study.paired(res, a, b, ops)
        return (f"on the same {t['n']} problems, {t['a_only']} are right only {a.split(',')[0]} fine-tuning and {t['b_only']} only "
                f"{b.split(',')[0]} it (McNemar p = {t['p']:.2g})")

    src = lora_study.against_source(res)
    placed = "; ".join(f"{r.difficulty} {r.stage}: {r.accuracy:.0%} [{r.lo * 100:.0f}, {r.hi * 100:.0f}], n = {r.n}, {r.placement} "
                       f"{r['source range']}" + ("" if r["enough items"] == "yes" else " (too few items for a claim)")
                       for _, r in src.iterrows())
    mult = new[new.model == lora_study.AFTER].groupby("difficulty").correct.agg(["mean", "size"])
    mult = mult[mult["size"] >= lora_study.SMALL]
    best = (f"{title}'s best multiplication cell with at least {lora_study.SMALL} held-out problems after fine-tuning is "
            f"{mult['mean'].idxmax()} at {mult['mean'].max():.0%}." if len(mult) else
            f"No multiplication cell of {title} has {lora_study.SMALL} held-out problems.")
    out.update(
        real_model_text=found.provenance if found else f"{p.real_model} (not a shipped model)",
        real_recipe_text=(f"LoRA of rank {recipe['rank']} (alpha {recipe['alpha']}) on {', '.join(real['targets'])}, "
                          f"{recipe['steps']} steps of {recipe['batch_size']} problems (a quarter of them replayed addition) at "
                          f"learning rate {recipe['lr']:g}, bare prompts; {real['n_train']['*']:,} multiplication and "
                          f"{real['n_train']['+']:,} addition problems to train on, and {recipe['heldout_fraction']:.0%} of the "
                          "problems (both operand orders together) held out"),
        real_time_text=(f"{title}'s fine-tune took {real['seconds']['train']:.0f} s for {recipe['steps']} steps "
                        f"({real['seconds']['train'] / recipe['steps']:.1f} s a step, with the held-out curve), on {real['where']}"),
        real_new_text=(f"On held-out multiplication, {title} went from {pooled(new, lora_study.BEFORE_FEWSHOT)} (few-shot, its best "
                       f"format) and {pooled(new, lora_study.BEFORE_BARE)} (bare) to {pooled(new, lora_study.AFTER)} after "
                       "fine-tuning (bare)."),
        real_fewshot_text=f"Against few-shot: {versus(lora_study.AFTER, lora_study.BEFORE_FEWSHOT, lora_study.NEW)}.",
        real_bare_text=f"Against the same bare prompts: {versus(lora_study.AFTER, lora_study.BEFORE_BARE, lora_study.NEW)}.",
        real_old_text=(f"On held-out addition, the replayed skill, {title} went from {pooled(old, lora_study.BEFORE_FEWSHOT)} "
                       f"(few-shot) and {pooled(old, lora_study.BEFORE_BARE)} (bare) to {pooled(old, lora_study.AFTER)}; "
                       f"against bare, {versus(lora_study.AFTER, lora_study.BEFORE_BARE, lora_study.OLD)}."),
        real_source_text=(f"{title} against the source's GPT-2 ranges: {placed}." if len(src) else
                          "No 1x1 or 2x2 multiplication cell was scored, so nothing is set against the source."),
        real_best_text=best,
    )
    return out
