"""Chapter 4, where does the new skill live? A base dictionary trained on the base model is
frozen; small delta dictionaries are trained on the fine-tuned model so that base + delta
reconstructs it; then the fine-tuned model runs with the reconstruction spliced in."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd

from ..core import data, delta_study, sae
from ..core import lora as ft
from ..core.cache import finetuned_dir, is_checkpoint, source_record
from ..core.delta_latents import TOP_ROWS, describe
from ..core.delta_sites import collect_rows, pick_focus_layer, seed_repeats, train_sites, verdict_table
from ..core.delta_study import DeltaConfig
from ..core.models import resolve_device
from ..core.rank_sweep import choose_rank, rank_sweep
from ..core.stats import fmt_interval
from ..views.delta_summary import count_text, localisation_sentence, reference_sentence, row_text, seed_findings, verdict_sentence
from ..views.quiet import quiet
from . import preflight
from .base import (
    PARAMSETS_DIR,
    ModelParams,
    ParamError,
    difficulties_field,
    is_alphas,
    is_int,
    is_name,
    is_number,
    is_str,
    list_of,
    load_param_set,
    one_of,
    operators_field,
    param,
    prompt_format_field,
)

CHAPTER = "04_sae_delta"


def _is_base_source(v) -> bool:
    return v == "train" or (isinstance(v, str) and v.startswith("saelens:") and v.count(":") >= 2 and "{layer}" in v)


def _is_param_set(v) -> bool:
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

    def delta(self) -> DeltaConfig:
        """The delta study's configuration (the fields it shares with this chapter)."""
        fields = {f.name for f in dataclasses.fields(DeltaConfig)}
        return DeltaConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})


def finetune_recipe(params: Params, rank: int | None = None, steps: int | None = None) -> tuple[ft.FinetuneRecipe, str]:
    """Chapter 3's LoRA recipe (its section of the ``finetune_set`` parameter set, over the
    recipe's defaults) with this chapter's model, operators and cells, and its cache name;
    at ``rank`` (alpha keeps the recipe's alpha/rank ratio) and ``steps`` when given. The
    set's own rank and steps keep the name ``finetuned``; others are named
    ``<finetuned>-r<rank>-s<steps>``."""
    section = load_param_set(params.finetune_set).get("03_finetune") or {}
    try:
        recipe = ft.recipe_from_params({**section, "model": params.model, "operators": params.new_operators,
                                        "replay_operators": params.old_operators, "difficulties": params.difficulties,
                                        "prompt_format": params.prompt_format, "seed": params.seed,
                                        "lora_batch_size": section.get("lora_batch_size", ft.FinetuneRecipe.batch_size)})
    except (TypeError, ValueError) as err:
        raise ParamError(f"finetune_set {params.finetune_set!r}: its 03_finetune section is not a valid recipe ({err})") from None
    rank = recipe.rank if rank is None else rank
    steps = recipe.steps if steps is None else steps
    if (rank, steps) == (recipe.rank, recipe.steps):
        return recipe, params.finetuned
    varied = dataclasses.replace(recipe, rank=rank, alpha=max(1, round(recipe.alpha * rank / recipe.rank)), steps=steps,
                                 eval_every=min(recipe.eval_every, steps))
    return varied.validate(), f"{params.finetuned}-r{rank}-s{steps}"


def _check_finetune(params: Params, recipe: ft.FinetuneRecipe, name: str) -> None:
    """A fine-tune this chapter may train: its name free (or holding this recipe) and the cache writable."""
    if not ft.is_current(name, recipe):
        try:
            ft.check_name_free(name, recipe)
        except ValueError as err:
            params.fail("finetuned", str(err))
        preflight.writable_cache(f"{CHAPTER}: the fine-tune {name!r} must be trained and saved", "finetuned")


def _ensure_finetune(params: Params, recipe: ft.FinetuneRecipe, name: str) -> str:
    return str(ft.ensure_finetuned(recipe, name, progress=False, device=resolve_device(params.device)))


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
        for rank in params.ranks:
            _check_finetune(params, *finetune_recipe(params, rank, params.sweep_steps))
        return
    if is_checkpoint(params.finetuned):
        ft_spec = preflight.model(params, "finetuned")
        if (ft_spec.n_layers, ft_spec.n_ctx) != (spec.n_layers, spec.n_ctx):
            params.fail("finetuned", f"has {ft_spec.n_layers} layers and context {ft_spec.n_ctx}, but 'model' "
                                     f"{params.model!r} has {spec.n_layers} and {spec.n_ctx}: it cannot be a fine-tune of it")
        derived = (source_record(params.finetuned) or {}).get("base")
        if derived is not None and derived != params.model:
            params.fail("finetuned", f"was fine-tuned from {derived!r}, not from 'model' {params.model!r}")
    else:
        _check_finetune(params, *finetune_recipe(params))


def eval_problems(finetuned: str, operators, difficulties, prompt_format: str, n_per_cell: int, seed: int) -> pd.DataFrame:
    """The fine-tune's own held-out problems when it has them (never trained on), else fresh ones."""
    path = finetuned_dir(finetuned)
    if (path / "heldout_new.parquet").is_file():
        held = ft.load_heldout(path)
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
        device = resolve_device(params.device)
        jobs = {r: (*finetune_recipe(params, r, params.sweep_steps), device) for r in params.ranks}
        ranks = rank_sweep(params.model, jobs, params.new_operators, params.batch_size, params.workers, setup=quiet)
        chosen = choose_rank(ranks, params.rank_share)
        name = finetune_recipe(params, chosen)[1]
        timings["rank_sweep_seconds"] = round(time.perf_counter() - start, 1)
    if params.ranks or not is_checkpoint(params.finetuned):
        _ensure_finetune(params, *finetune_recipe(params, chosen))
    timings["finetune_seconds"] = round(time.perf_counter() - start, 1) - timings.get("rank_sweep_seconds", 0)
    p = params.to_dict()
    config = params.delta()
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
    rows = collect_rows(base_lm, ft_lm, layers, config, train, val)
    sites = train_sites(base_lm, ft_lm, layers, config, train, val, rows)
    timings["dictionary_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    conditions = delta_study.run_conditions(ft_lm, evals, sites, p["kind"], p["alphas"], p["batch_size"])
    table = delta_study.condition_table(conditions, p["new_operators"])
    sanity = delta_study.error_check(conditions)
    timings["condition_seconds"] = round(time.perf_counter() - t, 1)
    base_new = float(localisation[(localisation.design == "base") & (localisation.skill == "new skill")].accuracy.iloc[0])
    verdicts = verdict_table(table, base_new)
    t = time.perf_counter()
    seeds = seed_repeats(base_lm, ft_lm, layers, config, train, val, evals, verdicts, base_new, rows=rows)
    timings["seed_repeat_seconds"] = round(time.perf_counter() - t, 1)
    focus = pick_focus_layer(verdicts, layers)
    t = time.perf_counter()
    latents = describe(ft_lm, evals, sites[layers.index(focus)], config)
    timings["latent_seconds"] = round(time.perf_counter() - t, 1)
    timings["run_seconds"] = round(time.perf_counter() - start, 1)
    base_rows = [{"layer": s.layer, "dictionary": k, **v} for s in sites for k, v in s.base_metrics.items()]
    return Result(params=params, ranks=ranks, chosen_rank=chosen, finetuned=name, localisation=localisation, table=table,
                  sweep=pd.concat([s.sweep for s in sites], ignore_index=True), base=pd.DataFrame(base_rows),
                  focus_layer=focus, latents=latents, verdicts=verdicts, seeds=seeds, sanity=sanity, n_train=len(train), n_eval=len(evals),
                  sites=sites, timings=timings)


def findings(result: Result) -> dict:
    """The glued numbers: the chosen rank, the localisation, the conditions at the focus
    layer and at all layers, the controls and the verdicts with their thresholds."""
    out = {"n_train": result.n_train, "n_eval": result.n_eval, "kind": result.params.kind,
           "focus_layer": result.focus_layer, "finetuned_studied": result.finetuned,
           **{f"threshold_{k}": v for k, v in delta_study.THRESHOLDS.items()}}
    out.update({f"{k}_text": f"{v:.0%}" if k.endswith(("share", "fidelity")) else f"{v:g}" if k == "paired_p" else f"{v:g} points"
                for k, v in delta_study.THRESHOLDS.items()})
    ch3 = finetune_recipe(result.params)[0]
    out.update(delta_tolerance=result.params.delta_tolerance, rank_share=f"{result.params.rank_share:.0%}",
               sweep_steps=result.params.sweep_steps, ch3_rank=ch3.rank, ch3_steps=ch3.steps,
               sweep_budget=f"{result.params.sweep_steps / ch3.steps:.0%}", latent_top_rows=TOP_ROWS)
    if result.chosen_rank is not None:
        new = result.ranks[result.ranks.skill == "new skill"].set_index("rank")
        best = new.accuracy.idxmax()
        out.update(chosen_rank=result.chosen_rank, best_rank=int(best), best_rank_text=row_text(new.loc[best]),
                   chosen_rank_text=row_text(new.loc[result.chosen_rank]),
                   chosen_trainable=count_text(new.loc[result.chosen_rank, "trainable"]),
                   base_params=count_text(new.base_params.iloc[0]), max_trainable=count_text(new.trainable.max()))
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
            out[f"loc_{key}_new_text"] = row_text(loc.loc[(design, which, "new skill")])
    only = result.localisation[(result.localisation.design == "only") & result.localisation.which.str.fullmatch(r"L\d+")
                               & (result.localisation.skill == "new skill")]
    but = result.localisation[(result.localisation.design == "all but") & (result.localisation.skill == "new skill")]
    if len(only):
        top = only.loc[only.accuracy.idxmax()]
        worst = but.loc[but.accuracy.idxmin()]
        out.update(loc_best_only=top.which, loc_best_only_text=row_text(top), loc_worst_but=worst.which, loc_worst_but_text=row_text(worst))
    out["loc_sentence"] = localisation_sentence(result.localisation)
    g = result.table.set_index(["scope", "label"])
    for scope, tag in ((str(result.focus_layer), "focus"), (delta_study.ALL, "all")):
        if (scope, "raw") not in g.index:
            continue
        for label in ("raw", "no_delta", "full", "full+error", *delta_study.CONTROLS, delta_study.REFERENCE):
            for skill in ("new", "old"):
                n = int(g.loc[(scope, label), f"n_{skill}"]) if (scope, label) in g.index else 0
                row = g.loc[(scope, label)] if n else None
                text = fmt_interval(row[f"acc_{skill}"], row[f"{skill}_lo"], row[f"{skill}_hi"], n) if n else "n/a"
                out[f"{tag}_{label.replace('+', '_')}_{skill}_text"] = text
        out[f"{tag}_full_error_check"] = result.sanity[scope]
    v = result.verdicts.set_index("scope")
    headline = delta_study.ALL if delta_study.ALL in v.index else str(result.focus_layer)
    out.update(seed_findings(result.seeds))
    out["reference_sentence"] = reference_sentence(v.loc[headline])
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
