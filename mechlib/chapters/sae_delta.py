"""Chapter 4, where does the new skill live? A base dictionary trained on the base model is
frozen; small delta dictionaries are trained on the fine-tuned model so that base + delta
reconstructs it; then the fine-tuned model runs with the reconstruction spliced in."""
from __future__ import annotations

import dataclasses
import re
import time

import pandas as pd
import torch

from ..core import data, delta_study, sae
from ..core.cache import finetuned_dir
from ..core.evaluate import evaluate
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_alphas,
    is_int,
    is_name,
    is_number,
    is_str,
    list_of,
    one_of,
    operators_field,
    param,
    prompt_format_field,
)

CHAPTER = "04_sae_delta"


def _is_base_source(v) -> bool:
    return v == "train" or (isinstance(v, str) and v.startswith("saelens:") and v.count(":") >= 2 and "{layer}" in v)


def _is_param_set(v) -> bool:
    from .base import PARAMSETS_DIR

    return is_name(v) and (PARAMSETS_DIR / f"{v}.yaml").is_file()


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    finetuned: str = param("arith-organism-lora-sub", is_str,
                           "the fine-tuned model: chapter 3's name (with a rank sweep, the chosen rank's fine-tune is trained "
                           "with chapter 3's recipe under this name plus '-r<rank>'; trained here if missing), or a checkpoint "
                           "directory (with ranks [])")
    new_operators: tuple[str, ...] = operators_field(("-",))
    old_operators: tuple[str, ...] = operators_field(("+",), min_len=0)
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2"))
    prompt_format: str = prompt_format_field()
    n_train_per_cell: int = param(600, is_int(1, 100_000), "an integer in 1..100000")
    n_val_per_cell: int = param(100, is_int(1, 100_000), "an integer in 1..100000")
    n_eval_per_cell: int = param(200, is_int(1, 100_000), "an integer in 1..100000")
    layers: tuple[int, ...] = param((), list_of(is_int(0, 1000), min_len=0), "a list of layer indices; [] means every layer")
    kind: str = param("sae", one_of("sae", "transcoder"), "'sae' (MLP output from itself) or 'transcoder' (MLP output from its input)")
    activation: str = param("topk", one_of("topk", "relu"), "'topk' or 'relu' (with an L1 penalty)")
    base_source: str = param("train", _is_base_source,
                             "'train', or 'saelens:RELEASE:ID' with {layer} in ID (a pretrained SAELens dictionary; needs the Hub)")
    base_width: int = param(256, is_int(1, 10_000_000), "an integer in 1..10000000 (base dictionary latents)")
    base_k: int = param(16, is_int(1, 100_000), "an integer in 1..100000 (TopK's k for the base)")
    delta_widths: tuple[int, ...] = param((32, 64, 128), list_of(is_int(1, 1_000_000)), "a non-empty list of integers (delta dictionary widths)")
    delta_ks: tuple[int, ...] = param((4, 8), list_of(is_int(1, 100_000)), "a non-empty list of integers (TopK's k for the delta)")
    l1: float = param(0.0, is_number(0, 1000), "a number in 0..1000 (L1 coefficient, used by 'relu')")
    lr: float = param(0.003, is_number(1e-6, 1), "a number in 1e-06..1")
    n_tokens: int = param(60000, is_int(1, 10**9), "an integer in 1..1000000000 (activation rows per dictionary)")
    batch_tokens: int = param(512, is_int(1, 1_000_000), "an integer in 1..1000000")
    buffer_tokens: int = param(8192, is_int(2, 100_000_000), "an integer in 2..100000000 (activation rows held in memory)")
    alphas: tuple[float, ...] = param((0, 0.25, 0.5, 1, 1.5, 2), is_alphas,
                                      "a list of numbers in 0..100 that includes 0 (no_delta) and 1 (full)")
    ranks: tuple[int, ...] = param((1, 2, 4, 8, 16, 32), list_of(is_int(1, 1024), min_len=0),
                                   "a list of LoRA ranks in 1..1024 for the rank sweep; [] studies 'finetuned' as it is")
    finetune_set: str = param("default", _is_param_set, "the name of a parameter set in params/ whose chapter 3 section is "
                              "the LoRA recipe of every fine-tune this chapter trains (e.g. 'default', 'gpt2-small')")
    sweep_steps: int = param(400, is_int(1, 1_000_000), "an integer in 1..1000000 (training steps per rank in the sweep)")
    rank_share: float = param(0.8, is_number(0.01, 1), "a number in 0.01..1 (a rank learns the skill when its held-out "
                              "accuracy on it reaches this share of the best rank's)")
    workers: int = param(2, is_int(1, 64), "an integer in 1..64 (processes training the sweep's fine-tunes)")
    delta_tolerance: float = param(0.005, is_number(0, 1), "a number in 0..1 (the narrowest, sparsest delta within this "
                                   "much validation explained variance of the best is chosen)")
    dictionary_seeds: tuple[int, ...] = param((1, 2), list_of(is_int(0, 2**31 - 1), min_len=0),
                                              "a list of seeds (possibly empty): the headline test is repeated with dictionaries "
                                              "trained from each, for the seed-to-seed spread")
    n_latents: int = param(5, is_int(1, 100), "an integer in 1..100 (delta latents described)")
    n_base_latents: int = param(3, is_int(0, 100), "an integer in 0..100 (base latents described, for comparison)")

    def check(self):
        if self.base_source == "train" and self.activation == "topk" and self.base_k > self.base_width:
            self.fail("base_k", f"TopK keeps k of the base's {self.base_width} latents ('base_width'), so k must be <= {self.base_width}")
        overlap = sorted(set(self.new_operators) & set(self.old_operators))
        if overlap:
            self.fail("old_operators", f"{overlap} are also in 'new_operators'")
        if self.ranks and not is_name(self.finetuned):
            self.fail("finetuned", "a rank sweep names its fine-tunes after 'finetuned', so it must be a name of letters, "
                                   "digits, '-', '_' and '.'; to study a checkpoint directory, set ranks: []")


def finetune_params(params: Params, rank: int | None = None, steps: int | None = None):
    """Chapter 3's parameters (from the ``finetune_set`` parameter set) for a fine-tune this
    chapter needs, with this chapter's model, operators and cells; at ``rank`` (alpha keeps
    chapter 3's alpha/rank ratio) and ``steps`` when given. Chapter 3's own rank and steps
    keep the name ``finetuned``; others are named ``<finetuned>-r<rank>-s<steps>``."""
    from . import finetune

    ch3 = finetune.Params.from_set(params.finetune_set, {
        "model": params.model, "device": params.device, "seed": params.seed, "batch_size": params.batch_size,
        "operators": params.new_operators, "replay_operators": params.old_operators, "difficulties": params.difficulties,
        "prompt_format": params.prompt_format, "finetuned_name": params.finetuned})
    rank = ch3.rank if rank is None else rank
    steps = ch3.steps if steps is None else steps
    if (rank, steps) == (ch3.rank, ch3.steps):
        return ch3
    return dataclasses.replace(ch3, rank=rank, alpha=max(1, round(ch3.alpha * rank / ch3.rank)), steps=steps,
                               finetuned_name=f"{params.finetuned}-r{rank}-s{steps}", eval_every=min(ch3.eval_every, steps))


def _finetune_available(name: str) -> bool:
    from pathlib import Path

    return (finetuned_dir(name) / "config.json").is_file() or (Path(name).expanduser() / "config.json").is_file()


def check(params: Params) -> None:
    spec = preflight.model(params)
    ops = tuple(params.new_operators) + tuple(params.old_operators)
    preflight.fits_context(spec, ops, params.difficulties, params.prompt_format, chapter=CHAPTER)
    if spec.n_layers is not None:
        bad = [layer for layer in params.layers if layer >= spec.n_layers]
        if bad:
            params.fail("layers", f"{bad} out of range: model {params.model!r} has layers 0..{spec.n_layers - 1}")
    if params.base_source != "train":
        from ..core.hub import hub_reachable

        if not hub_reachable():
            params.fail("base_source", "a pretrained SAELens dictionary comes from the Hugging Face Hub, which is not reachable "
                                       "from this machine; use base_source 'train' offline")
    if params.kind == "sae":
        preflight.writable_cache(f"{CHAPTER}: the dictionaries are saved in SAELens's format at the end", "dictionaries")
    if params.ranks:
        from . import finetune

        for rank in params.ranks:
            finetune.check(finetune_params(params, rank, params.sweep_steps))
        return
    if _finetune_available(params.finetuned):
        ft_spec = preflight.model(params, "finetuned")
        if (ft_spec.n_layers, ft_spec.n_ctx) != (spec.n_layers, spec.n_ctx):
            params.fail("finetuned", f"has {ft_spec.n_layers} layers and context {ft_spec.n_ctx}, but 'model' "
                                     f"{params.model!r} has {spec.n_layers} and {spec.n_ctx}: it cannot be a fine-tune of it")
        derived = _derived_from(params.finetuned)
        if derived is not None and derived != params.model:
            params.fail("finetuned", f"was fine-tuned from {derived!r}, not from 'model' {params.model!r}")
    else:
        from . import finetune

        finetune.check(finetune_params(params))


def eval_problems(finetuned: str, operators, difficulties, prompt_format: str, n_per_cell: int, seed: int) -> pd.DataFrame:
    """The fine-tune's own held-out problems when it has them (never trained on), else fresh ones."""
    path = finetuned_dir(finetuned)
    if (path / "heldout_new.parquet").is_file():
        from ..core.finetune import load_heldout

        held = load_heldout(path)
        held = held[held.op.isin(operators) & held.difficulty.isin(difficulties)]
        return held.groupby(["op", "difficulty"], group_keys=False).head(n_per_cell).reset_index(drop=True)
    return data.make_problems(operators, difficulties, n_per_cell, prompt_format, seed + 2).to_pandas()


@dataclasses.dataclass
class Result:
    params: Params
    ranks: pd.DataFrame  # the rank sweep: held-out accuracy per rank and skill (empty without a sweep)
    chosen_rank: int | None
    finetuned: str  # the fine-tune under study
    localisation: pd.DataFrame  # weight patching: accuracy per design and skill
    table: pd.DataFrame  # per scope and condition: accuracies, intervals, answer loss, CE score
    sweep: pd.DataFrame  # every delta config per layer (validation reconstruction)
    base: pd.DataFrame  # reconstruction metrics per layer and dictionary
    focus_layer: int
    latents: pd.DataFrame  # the described latents at the focus layer
    verdicts: pd.DataFrame  # one verdict per scope
    seeds: pd.DataFrame  # the headline verdict per dictionary seed
    sanity: dict  # per scope: does full + error reproduce raw exactly?
    n_train: int
    n_eval: int
    sites: list
    timings: dict


def _train_rank(fp) -> str:
    """One rank of the sweep (a process of its own when workers > 1, quiet: a Jupyter kernel
    shows a worker's output in the cell that started it)."""
    from ..core.quiet import quiet
    from . import finetune

    quiet()
    return finetune.ensure(fp)


def rank_sweep(params: Params) -> pd.DataFrame:
    """Train (or find) one fine-tune per rank with chapter 3's recipe on ``sweep_steps``
    steps, and score each on its held-out problems: one row per (rank, skill) with n and the
    Wilson 95% interval, plus the trainable parameters and the base's."""
    from ..core import finetune as ft
    from ..core.models import load_hf, load_model
    from ..core.stats import proportion

    fps = [finetune_params(params, r, params.sweep_steps) for r in params.ranks]
    todo = [fp for fp in fps if not ft.is_current(fp.finetuned_name, _recipe(fp))]
    if params.workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from ..core.quiet import quiet

        with ProcessPoolExecutor(min(params.workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=quiet) as pool:
            list(pool.map(_train_rank, todo))
    else:
        for fp in todo:
            _train_rank(fp)
    hf, _, _ = load_hf(params.model)
    base_params = sum(p.numel() for p in hf.parameters())
    rows = []
    for rank, fp in zip(params.ranks, fps):
        path = finetuned_dir(fp.finetuned_name)
        trainable = sum(p.numel() for p in ft.lora_model(load_hf(params.model)[0], _recipe(fp)).parameters() if p.requires_grad)
        model, _ = load_model(fp.finetuned_name, device=params.device)
        res = evaluate(model, ft.load_heldout(path), batch_size=params.batch_size)
        for skill, mask in (("new skill", res.op.isin(params.new_operators)), ("old skill", ~res.op.isin(params.new_operators))):
            if mask.any():
                st = proportion(res.loc[mask, "correct"])
                rows.append({"rank": rank, "skill": skill, "n": st["n"], "accuracy": st["p"], "lo": st["lo"], "hi": st["hi"],
                             "trainable": trainable, "base_params": base_params, "steps": params.sweep_steps})
    return pd.DataFrame(rows)


def _recipe(fp):
    from . import finetune

    return finetune.recipe(fp)


def choose_rank(ranks: pd.DataFrame, share: float) -> int:
    """The smallest rank whose held-out accuracy on the new skill reaches ``share`` of the best
    rank's: the lowest rank that learns the skill about as well as any."""
    new = ranks[ranks.skill == "new skill"].sort_values("rank")
    return int(new[new.accuracy >= share * new.accuracy.max()]["rank"].iloc[0])


def run(params: Params) -> Result:
    """The whole study: rank sweep, the chosen fine-tune, weight patching, dictionaries,
    conditions with controls, latents and the verdict."""
    from ..core.models import load_model
    from ..core.weight_patch import localise

    check(params)
    timings = {}
    start = time.perf_counter()
    ranks, chosen = pd.DataFrame(), None
    name = params.finetuned
    if params.ranks:
        ranks = rank_sweep(params)
        chosen = choose_rank(ranks, params.rank_share)
        name = finetune_params(params, chosen).finetuned_name
        timings["rank_sweep_seconds"] = round(time.perf_counter() - start, 1)
    if params.ranks or not _finetune_available(params.finetuned):
        from . import finetune

        finetune.ensure(finetune_params(params, chosen))
    timings["finetune_seconds"] = round(time.perf_counter() - start, 1) - timings.get("rank_sweep_seconds", 0)
    p = params.to_dict()
    base_lm, _ = load_model(p["model"], device=p["device"])
    ft_lm, _ = load_model(name, device=p["device"])
    ops = list(p["new_operators"]) + list(p["old_operators"])
    train = data.make_problems(ops, p["difficulties"], p["n_train_per_cell"], p["prompt_format"], p["seed"]).to_pandas()
    val = data.make_problems(ops, p["difficulties"], p["n_val_per_cell"], p["prompt_format"], p["seed"] + 1).to_pandas()
    evals = eval_problems(name, ops, p["difficulties"], p["prompt_format"], p["n_eval_per_cell"], p["seed"])
    t = time.perf_counter()
    localisation = localise(base_lm, ft_lm, evals, p["new_operators"], p["batch_size"])
    timings["localisation_seconds"] = round(time.perf_counter() - t, 1)
    layers = list(p["layers"]) or list(range(base_lm.cfg.n_layers))
    t = time.perf_counter()
    sites = train_sites(base_lm, ft_lm, layers, p, train, val)
    timings["dictionary_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    conditions = delta_study.run_conditions(ft_lm, evals, sites, p["kind"], p["alphas"], p["batch_size"])
    table = delta_study.condition_table(conditions, p["new_operators"])
    sanity = delta_study.error_check(conditions)
    timings["condition_seconds"] = round(time.perf_counter() - t, 1)
    base_new = float(localisation[(localisation.design == "base") & (localisation.skill == "new skill")].accuracy.iloc[0])
    verdicts = verdict_table(table, base_new)
    t = time.perf_counter()
    seeds = seed_repeats(base_lm, ft_lm, layers, p, train, val, evals, verdicts, base_new)
    timings["seed_repeat_seconds"] = round(time.perf_counter() - t, 1)
    focus = pick_focus_layer(verdicts, layers)
    t = time.perf_counter()
    latents = describe(ft_lm, evals, sites[layers.index(focus)], p)
    timings["latent_seconds"] = round(time.perf_counter() - t, 1)
    timings["run_seconds"] = round(time.perf_counter() - start, 1)
    base_rows = [{"layer": s.layer, "dictionary": k, **v} for s in sites for k, v in s.base_metrics.items()]
    return Result(params=params, ranks=ranks, chosen_rank=chosen, finetuned=name, localisation=localisation, table=table,
                  sweep=pd.concat([s.sweep for s in sites], ignore_index=True), base=pd.DataFrame(base_rows),
                  focus_layer=focus, latents=latents, verdicts=verdicts, seeds=seeds, sanity=sanity, n_train=len(train), n_eval=len(evals),
                  sites=sites, timings=timings)


def train_sites(base_lm, ft_lm, layers, p: dict, train: pd.DataFrame, val: pd.DataFrame) -> list:
    """Every studied layer's dictionaries. The models are frozen, so every pass over the
    training problems yields the same rows: when they fit ``buffer_tokens`` they are collected
    once for all layers and reshuffled each pass; otherwise they are streamed per layer."""
    names = {layer: sae.sites(p["kind"], layer) for layer in layers}
    hooks = sorted({n for pair in names.values() for n in pair})
    val_base = sae.collect_rows(base_lm, val, hooks)[0]
    val_ft = sae.collect_rows(ft_lm, val, hooks)[0]
    collected = sae.answer_rows(ft_lm, train) <= p["buffer_tokens"]
    if collected:
        rows_base = sae.collect_rows(base_lm, train, hooks)[0]
        rows_ft = sae.collect_rows(ft_lm, train, hooks)[0]
    sites = []
    for layer in layers:
        i, o = names[layer]

        def source(lm, rows):
            if collected:
                return lambda seed: sae.shuffled_batches(rows[i], rows[o], p["n_tokens"], p["batch_tokens"], seed)
            return lambda seed: sae.ActivationBuffer(lm, train, i, o, p["n_tokens"], p["batch_tokens"], p["buffer_tokens"], seed)

        base = None
        if p["base_source"] != "train":  # "saelens:RELEASE:ID" with {layer} in ID
            _, release, sae_id = p["base_source"].split(":", 2)
            base = sae.load_pretrained_base(release, sae_id.format(layer=layer), device=str(base_lm.cfg.device))
        sites.append(delta_study.train_site(
            layer, source(base_lm, rows_base if collected else None), source(ft_lm, rows_ft if collected else None),
            (val_base[i], val_base[o]), (val_ft[i], val_ft[o]), p, base=base))
    return sites


def headline_scope(layers) -> str:
    """All studied layers at once when there are several, else the one layer."""
    return delta_study.ALL if len(layers) > 1 else str(layers[0])


def seed_repeats(base_lm, ft_lm, layers, p: dict, train, val, evals, verdicts: pd.DataFrame, base_new: float,
                 score=None) -> pd.DataFrame:
    """The headline test repeated with dictionaries trained from each of ``dictionary_seeds``
    (same problems, same fine-tune): one row per seed, the run's own seed first."""
    scope = headline_scope(layers)
    rows = [verdicts[verdicts.scope == scope].assign(dictionary_seed=p["seed"])]
    for seed in p["dictionary_seeds"]:
        if seed == p["seed"]:
            continue
        sites = train_sites(base_lm, ft_lm, layers, {**p, "seed": seed}, train, val)
        scopes = [delta_study.ALL] if scope == delta_study.ALL else [int(scope)]
        cond = delta_study.run_conditions(ft_lm, evals, sites, p["kind"], (0, 1), p["batch_size"], scopes=scopes, sanity=False,
                                          score=score)
        table = delta_study.condition_table(cond, p["new_operators"])
        rows.append(verdict_table(table, base_new).assign(dictionary_seed=seed))
    return pd.concat(rows, ignore_index=True)


def verdict_table(table: pd.DataFrame, base_new: float) -> pd.DataFrame:
    """The verdict at every scope, with the numbers it rests on."""
    rows = []
    for scope in table.scope.unique():
        nums = delta_study.removal_numbers(table, scope, base_new)
        v, why = delta_study.verdict(nums)
        rows.append({"scope": scope, "verdict": v, "reason": why, **{k: v for k, v in nums.items() if k != "control_gain"},
                     **{f"gain_{c}": g for c, g in nums["control_gain"].items()}})
    return pd.DataFrame(rows)


def pick_focus_layer(verdicts: pd.DataFrame, layers) -> int:
    """The layer where removing the delta costs the new skill most beyond the old."""
    single = verdicts[verdicts.scope != delta_study.ALL]
    gap = single.cost_new - single.cost_old
    return int(single.loc[gap.idxmax(), "scope"]) if len(single) else int(layers[0])


def describe(ft_lm, evals: pd.DataFrame, site, p: dict) -> pd.DataFrame:
    """The delta latents that matter most for the new skill (by ablation), and a few base
    latents for comparison, each with a description derived from its activations."""
    i, o = sae.sites(p["kind"], site.layer)
    rows, meta = sae.collect_rows(ft_lm, evals, (i, o))
    x = rows[i]
    with torch.no_grad():
        delta_acts, base_acts = site.delta.delta.encode(x), site.delta.base.encode(x)
    is_new = torch.from_numpy(evals.op.isin(p["new_operators"]).to_numpy()[meta.problem.to_numpy()])
    sub = evals.groupby("op", group_keys=False).head(300).reset_index(drop=True)
    live = [int(j) for j in (delta_acts > 0).any(0).nonzero().flatten()]
    effects = delta_study.latent_effects(ft_lm, sub, site, p["kind"], "delta", live, p["new_operators"], p["batch_size"])
    frames = []
    if len(effects):
        top = effects.sort_values("loss_rise_new", ascending=False).head(p["n_latents"])
        frames.append(_described(ft_lm, top, delta_acts, site.delta.delta.W_dec, meta, evals, p))
    if p["n_base_latents"] and is_new.any():
        by_use = base_acts[is_new].mean(0).topk(min(4 * p["n_base_latents"], base_acts.shape[1])).indices.tolist()
        base_fx = delta_study.latent_effects(ft_lm, sub, site, p["kind"], "base", by_use, p["new_operators"], p["batch_size"])
        top = base_fx.sort_values("loss_rise_new", ascending=False).head(p["n_base_latents"])
        w_dec = site.delta.base.W_dec if hasattr(site.delta.base, "W_dec") else site.delta.base.sae.W_dec
        frames.append(_described(ft_lm, top, base_acts, w_dec, meta, evals, p))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _described(model, effects: pd.DataFrame, acts, w_dec, meta, evals, p) -> pd.DataFrame:
    latents = effects.latent.tolist()
    push = delta_study.logit_push(model, w_dec.detach(), latents, among=meta.next_id.unique())
    decode = lambda t: model.tokenizer.decode([t], skip_special_tokens=True)
    desc = delta_study.describe_latents(acts, meta, evals, latents, push, p["new_operators"], decode)
    return effects.merge(desc, on="latent")


def findings(result: Result) -> dict:
    """The glued numbers: the chosen rank, the localisation, the conditions at the focus
    layer and at all layers, the controls and the verdicts with their thresholds."""
    from ..core.stats import fmt_interval

    out = {"n_train": result.n_train, "n_eval": result.n_eval, "kind": result.params.kind,
           "focus_layer": result.focus_layer, "finetuned_studied": result.finetuned,
           **{f"threshold_{k}": v for k, v in delta_study.THRESHOLDS.items()}}
    out.update({f"{k}_text": f"{v:.0%}" if k.endswith(("share", "fidelity")) else f"{v:g} points"
                for k, v in delta_study.THRESHOLDS.items()})
    ch3 = finetune_params(result.params)
    out.update(delta_tolerance=result.params.delta_tolerance, rank_share=f"{result.params.rank_share:.0%}",
               sweep_steps=result.params.sweep_steps, ch3_rank=ch3.rank, ch3_steps=ch3.steps,
               sweep_budget=f"{result.params.sweep_steps / ch3.steps:.0%}", latent_top_rows=delta_study.TOP_ROWS)
    if result.chosen_rank is not None:
        new = result.ranks[result.ranks.skill == "new skill"].set_index("rank")
        best = new.accuracy.idxmax()
        out.update(chosen_rank=result.chosen_rank, best_rank=int(best), best_rank_text=_row_text(new.loc[best]),
                   chosen_rank_text=_row_text(new.loc[result.chosen_rank]),
                   chosen_trainable=_count(new.loc[result.chosen_rank, "trainable"]),
                   base_params=_count(new.base_params.iloc[0]), max_trainable=_count(new.trainable.max()))
        top_rank = int(new.index.max())
        out["rank_sentence"] = (
            f"No lower rank reaches {result.params.rank_share:.0%} of rank {top_rank}'s accuracy at this budget, so the study keeps "
            f"rank {top_rank}: on this evidence the skill does not fit a lower-rank update as well." if result.chosen_rank == top_rank else
            f"Rank {result.chosen_rank} is the lowest that does, with {int(new.loc[result.chosen_rank, 'trainable']):,} trainable "
            f"parameters against {int(new.loc[top_rank, 'trainable']):,} at rank {top_rank}.")
    else:
        none = "n/a (no rank sweep in this run)"
        out["rank_sentence"] = "This run has no rank sweep; it studies the fine-tune it was given."
        out.update(chosen_rank=none, best_rank=none, best_rank_text=none, chosen_rank_text=none, chosen_trainable=none,
                   base_params=none, max_trainable=none)
    loc = result.localisation.set_index(["design", "which", "skill"])
    for key, (design, which) in {"base": ("base", "none"), "ft": ("fine-tuned", "all"), "attn_only": ("only", "attn (all layers)"),
                                 "mlp_only": ("only", "mlp (all layers)")}.items():
        if (design, which, "new skill") in loc.index:
            out[f"loc_{key}_new_text"] = _row_text(loc.loc[(design, which, "new skill")])
    only = result.localisation[(result.localisation.design == "only") & result.localisation.which.str.fullmatch(r"L\d+")
                               & (result.localisation.skill == "new skill")]
    but = result.localisation[(result.localisation.design == "all but") & (result.localisation.skill == "new skill")]
    if len(only):
        top = only.loc[only.accuracy.idxmax()]
        worst = but.loc[but.accuracy.idxmin()]
        out.update(loc_best_only=top.which, loc_best_only_text=_row_text(top), loc_worst_but=worst.which, loc_worst_but_text=_row_text(worst))
    out["loc_sentence"] = localisation_sentence(result.localisation)
    g = result.table.set_index(["scope", "label"])
    for scope, tag in ((str(result.focus_layer), "focus"), (delta_study.ALL, "all")):
        if (scope, "raw") not in g.index:
            continue
        for label in ("raw", "no_delta", "full", "full+error", "random_delta", "base_delta", "wide_base"):
            for skill in ("new", "old"):
                row = g.loc[(scope, label)]
                n = int(row[f"n_{skill}"])
                text = fmt_interval(row[f"acc_{skill}"], row[f"{skill}_lo"], row[f"{skill}_hi"], n) if n else "n/a"
                out[f"{tag}_{label.replace('+', '_')}_{skill}_text"] = text
        out[f"{tag}_full_error_check"] = result.sanity[scope]
    if (delta_study.ALL, "wide_base") in g.index:
        wide, full = g.loc[(delta_study.ALL, "wide_base")], g.loc[(delta_study.ALL, "full")]
        if wide.new_lo > full.new_hi:
            out["wide_sentence"] = ("One dictionary of the same total width trained on the fine-tuned activations (wide_base) keeps "
                                    "more of the new skill than base + delta: the frozen base's split itself costs fidelity.")
        elif wide.new_hi < full.new_lo:
            out["wide_sentence"] = "One dictionary of the same total width (wide_base) keeps less of the new skill than base + delta."
        else:
            out["wide_sentence"] = "One dictionary of the same total width (wide_base) keeps about as much of the new skill as base + delta."
    else:
        out["wide_sentence"] = ""
    v = result.verdicts.set_index("scope")
    headline = delta_study.ALL if delta_study.ALL in v.index else str(result.focus_layer)
    out.update(seed_findings(result.seeds))
    out.update(headline_scope="all studied layers at once" if headline == delta_study.ALL else f"layer {headline}",
               verdict=v.loc[headline, "verdict"], verdict_reason=v.loc[headline, "reason"],
               focus_verdict=v.loc[str(result.focus_layer), "verdict"], focus_verdict_reason=v.loc[str(result.focus_layer), "reason"],
               cost_new=float(v.loc[headline, "cost_new"]), cost_old=float(v.loc[headline, "cost_old"]),
               verdict_sentence=verdict_sentence(v.loc[headline, "verdict"]))
    if len(result.latents):
        d = result.latents[result.latents.which == "delta"]
        out["top_latent"] = int(d.latent.iloc[0]) if len(d) else -1
        out["top_latent_description"] = d.description.iloc[0] if len(d) else "none"
        out["top_latent_loss_rise"] = float(d.loss_rise_new.iloc[0]) if len(d) else 0.0
        drop = 100 * float(d.acc_drop_new.iloc[0]) if len(d) else 0.0
        focus_cost = float(v.loc[str(result.focus_layer), "cost_new"])
        out["latent_sentence"] = (
            f"Switching it off costs {drop:.1f} points of teacher-forced accuracy on the new skill, against {focus_cost:.1f} points "
            "for removing the whole delta at this layer: " + ("no single latent carries the skill." if drop < 0.5 * focus_cost
                                                              else "this one latent carries much of what the delta does."))
    else:
        out.update(top_latent=-1, top_latent_description="none", top_latent_loss_rise=0.0,
                   latent_sentence="No delta latent fired on the evaluation problems.")
    return out


def seed_findings(seeds: pd.DataFrame) -> dict:
    """The headline cost and verdict across dictionary seeds, in words."""
    from ..core.stats import seed_spread

    names = [str(s) for s in seeds.dictionary_seed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]  # never "0, 1, 2": it glues as a tuple
    cost = seed_spread(seeds.cost_new.tolist())
    verdicts = seeds.verdict.tolist()
    same = len(set(verdicts)) == 1
    return {
        "seed_list": listed,
        "seed_cost_text": (f"{cost['mean']:.1f} points on average (range {cost['min']:.1f} to {cost['max']:.1f}, sd {cost['sd']:.1f})"
                           if len(seeds) > 1 else f"{cost['mean']:.1f} points (one seed only)"),
        "seed_sentence": (f"The verdict is '{verdicts[0]}' for every dictionary seed." if same and len(seeds) > 1 else
                          f"The verdict is '{verdicts[0]}' (one dictionary seed only)." if same else
                          "The verdict changes with the dictionary seed (" + ", ".join(
                              f"seed {s}: {v}" for s, v in zip(seeds.dictionary_seed, verdicts)) + "), so it is not robust."),
    }


def localisation_sentence(loc: pd.DataFrame) -> str:
    """Where the update matters, in words, from the weight-patching numbers: the share of the
    added skill that one layer's update gives alone, and that removing one layer's costs."""
    new = loc[loc.skill == "new skill"].set_index(["design", "which"]).accuracy
    base, tuned = new[("base", "none")], new[("fine-tuned", "all")]
    added = tuned - base
    if added <= 0:
        return "The fine-tune is no better than the base at the new skill, so there is nothing to localise."
    only = {w: (a - base) / added for (d, w), a in new.items() if d == "only" and re.fullmatch(r"L\d+", w)}
    but = {w: (a - base) / added for (d, w), a in new.items() if d == "all but"}
    best = max(only, key=only.get)
    if only[best] >= 0.5:
        return f"The update in {best} alone gives {only[best]:.0%} of the added skill: the skill is localised there."
    needed = [w for w, share in sorted(but.items()) if share < 0.5]
    if needed:
        return (f"No single layer's update does the skill on its own (the best, {best}, gives {only[best]:.0%} of the added skill), "
                f"and removing the update from any one of {', '.join(needed)} leaves less than half of it: the skill needs the "
                "update in several layers together.")
    return (f"No single layer's update does the skill on its own (the best, {best}, gives {only[best]:.0%} of the added skill), "
            "yet no single layer is indispensable either: the update is spread and redundant.")


# ---------------------------------------------------------------- views for the page


def scope_name(scope) -> str:
    return "all layers" if str(scope) == delta_study.ALL else f"layer {scope}"


def conditions_long(table: pd.DataFrame, focus_layer, scopes=None, labels=delta_study.LABELS[:-1]) -> pd.DataFrame:
    """The conditions in long form (scope, label, skill, n, accuracy, interval) at the given
    scopes (default: the focus layer and all layers at once), with a ``layer`` column for charts."""
    scopes = [str(s) for s in (scopes or [focus_layer, delta_study.ALL])]
    long = delta_study.long_table(table, labels)
    long = long[long.scope.isin(scopes)].copy()
    long["layer"] = long.scope.map(scope_name)
    return long.reset_index(drop=True)


def dose_long(result: Result, every_layer: bool = False) -> pd.DataFrame:
    """base + alpha x delta per scope and skill (the focus layer and all layers at once, or
    ``every_layer``), with a ``series`` label for one line each."""
    doses = delta_study.long_table(result.table[result.table.alpha.notna()], list(result.table.label.unique()))
    if not every_layer:
        doses = doses[doses.scope.isin([str(result.focus_layer), delta_study.ALL])]
    doses["series"] = doses.skill + ", " + doses.scope.map(scope_name)
    return doses.reset_index(drop=True)


def localisation_long(result: Result, per_layer: bool = True) -> pd.DataFrame:
    """Weight patching in long form; ``per_layer`` keeps the two ends and whole layers (for the
    chart), else the component designs."""
    loc = result.localisation
    whole = loc.which.str.fullmatch(r"L\d+") | loc.design.isin(["base", "fine-tuned"])
    out = loc[whole if per_layer else ~whole].copy()
    out["layer"] = out.design.map({"base": "ends", "fine-tuned": "ends"}).fillna(out.design)
    out["label"] = out.which.map({"none": "base", "all": "fine-tuned"}).fillna(out.which)
    return out.reset_index(drop=True)


def verdict_view(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per scope: the verdict and the numbers it rests on, in accuracy points on the new skill
    (cost = full - no_delta; a control's gain = control - no_delta)."""
    v = verdicts
    out = pd.DataFrame({"scope": v.scope.map(scope_name), "verdict": v.verdict, "full": v.full_new, "no_delta": v.no_delta_new,
                        "cost new": v.cost_new, "cost old": v.cost_old})
    for c, short in (("random_delta", "gain random"), ("base_delta", "gain base-trained")):
        if f"gain_{c}" in v:
            out[short] = v[f"gain_{c}"]
    return out


def latent_view(result: Result) -> pd.DataFrame:
    """The described latents: effects (nats of answer loss when switched off) and description."""
    if not len(result.latents):
        return pd.DataFrame({"note": ["no latent fired on the evaluation problems"]})
    lat = result.latents
    return pd.DataFrame({"dict": lat.which, "latent": lat.latent, "+loss new": lat.loss_rise_new,
                         "+loss old": lat.get("loss_rise_old", float("nan")), "fires": lat.fire_rate,
                         "description": lat.description, "strongest rows": lat.get("top_examples", "")})


def seeds_view(result: Result) -> pd.DataFrame:
    """The headline test per dictionary seed, in points on the new skill."""
    v = result.seeds
    return pd.DataFrame({"dictionary seed": v.dictionary_seed, "verdict": v.verdict, "full": v.full_new, "no_delta": v.no_delta_new,
                         "cost new": v.cost_new, "cost old": v.cost_old})


def sweep_view(result: Result) -> pd.DataFrame:
    """The delta sweep, narrow: layer, width, k, validation EV, NMSE, dead share, chosen."""
    s = result.sweep
    return pd.DataFrame({"layer": s.layer, "width": s.delta_width, "k": s.delta_k, "EV": s.explained_variance, "NMSE": s.nmse,
                         "dead": s.dead_fraction, "chosen": s.chosen.map({True: "yes", False: ""})})


def reconstruction_view(result: Result) -> pd.DataFrame:
    b = result.base
    return pd.DataFrame({"layer": b.layer, "dictionary": b.dictionary, "EV": b.explained_variance, "NMSE": b.nmse, "L0": b.l0})


def _count(n) -> str:
    """An integer with thin spaces between thousands (``208 512``): a comma would make the
    glued text read as a Python tuple."""
    return f"{int(n):,}".replace(",", "\u202f")


def _row_text(row) -> str:
    from ..core.stats import fmt_interval

    return fmt_interval(row["accuracy"], row["lo"], row["hi"], int(row["n"]))


def verdict_sentence(verdict: str, skill: str = "the new skill") -> str:
    """The verdict in one plain sentence about ``skill``."""
    return {
        "in the delta": f"The data support the hypothesis: {skill} lives in the delta.",
        "partly in the delta": f"The data support the hypothesis only in part: the delta carries some of {skill}, and the rest lives elsewhere.",
        "not in the delta": f"The data go against the hypothesis: removing the delta does not remove {skill}.",
        "inconclusive": f"The data cannot answer the question: the splice itself breaks {skill}.",
    }[verdict]


def _derived_from(name: str) -> str | None:
    """The base a mechlib fine-tune records in its metadata (None when it records none)."""
    import json
    from pathlib import Path

    for path in (finetuned_dir(name), Path(name).expanduser()):
        meta = path / "mechlib_source.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("base")
    return None


def save_dictionaries(result: Result) -> list[str]:
    """Save each layer's base and chosen delta in SAELens's format under
    ``<cache>/dictionaries/<finetuned>/layer<L>/{base,delta}`` (SAEs only: SAELens SAEs read
    and write one site)."""
    from ..core.cache import cache_root

    p = result.params.to_dict()
    if p["kind"] != "sae":
        return []
    root = cache_root() / "dictionaries" / result.finetuned.replace("/", "_")
    saved = []
    for site in result.sites:
        hook = sae.sites("sae", site.layer)[0]
        parts = {"delta": (site.delta.delta, result.finetuned)}
        if isinstance(site.base, sae.Dictionary):
            parts["base"] = (site.base, p["model"])
        for name, (dictionary, model_name) in parts.items():
            extra = {"role": name, "combine": "recon = base(x) + alpha * delta(x)", "layer": site.layer,
                     **{k: (bool(v) if k == "chosen" else v) for k, v in site.best.items()}}
            saved.append(str(sae.save_saelens(dictionary, root / f"layer{site.layer}" / name, hook, model_name, extra)))
    return saved
