"""Chapter 4, where does the new skill live? A base dictionary trained on the base model is
frozen; small delta dictionaries are trained on the fine-tuned model so that base + delta
reconstructs it; then the fine-tuned model runs with the reconstruction spliced in."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd
from tqdm import tqdm

from ..core import data, sae
from ..core.cache import finetuned_dir
from ..core.evaluate import evaluate
from ..core.interventions import corrupted, parse_corruption
from ..core.stats import accuracy_by
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_int,
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


def _is_alphas(v) -> bool:
    return list_of(is_number(0, 100))(v) and {0, 1} <= set(v)


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    finetuned: str = param("arith-organism-lora-sub", is_str,
                           "the fine-tuned model: a name saved by chapter 3 (trained here if missing), or a checkpoint directory")
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
    alphas: tuple[float, ...] = param((0, 0.25, 0.5, 1, 1.5, 2), _is_alphas,
                                      "a list of numbers in 0..100 that includes 0 (no_delta) and 1 (full)")

    def check(self):
        if self.base_source == "train" and self.activation == "topk" and self.base_k > self.base_width:
            self.fail("base_k", f"TopK keeps k of the base's {self.base_width} latents ('base_width'), so k must be <= {self.base_width}")
        overlap = sorted(set(self.new_operators) & set(self.old_operators))
        if overlap:
            self.fail("old_operators", f"{overlap} are also in 'new_operators'")


@dataclasses.dataclass
class Result:
    params: Params
    ablation: pd.DataFrame
    table: pd.DataFrame
    sweep: pd.DataFrame
    base: pd.DataFrame
    best: pd.DataFrame
    focus_layer: int
    layer_results: list
    n_train: int
    n_eval: int
    timings: dict


def finetune_params(params: Params):
    """Chapter 3's parameters for the fine-tune this chapter studies (its recipe, with this
    chapter's model, operators, cells and name), used when that fine-tune is not cached."""
    from . import finetune

    return finetune.Params(model=params.model, device=params.device, seed=params.seed, batch_size=params.batch_size,
                           operators=params.new_operators, replay_operators=params.old_operators,
                           difficulties=params.difficulties, prompt_format=params.prompt_format,
                           finetuned_name=params.finetuned)


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


@dataclasses.dataclass
class LayerResult:
    layer: int
    base_metrics: dict  # reconstruction of the base model's and the fine-tuned model's activations
    sweep: pd.DataFrame  # one row per delta config: validation reconstruction
    best: dict  # the chosen delta config
    conditions: pd.DataFrame  # one row per (condition, problem)
    modules: dict  # "base" and "delta" (the chosen DeltaDictionary)


def eval_problems(finetuned: str, operators, difficulties, prompt_format: str, n_per_cell: int, seed: int) -> pd.DataFrame:
    """The fine-tune's own held-out problems when it has them (never trained on), else fresh ones."""
    path = finetuned_dir(finetuned)
    if (path / "heldout_new.parquet").is_file():
        from ..core.finetune import load_heldout

        held = load_heldout(path)
        held = held[held.op.isin(operators) & held.difficulty.isin(difficulties)]
        return held.groupby(["op", "difficulty"], group_keys=False).head(n_per_cell).reset_index(drop=True)
    return data.make_problems(operators, difficulties, n_per_cell, prompt_format, seed + 2).to_pandas()


def layer_ablation(model, problems: pd.DataFrame, n_layers: int, batch_size: int) -> pd.DataFrame:
    """Accuracy per operator when each layer's MLP output is zeroed (and clean)."""
    rows = []
    for spec in ["none"] + [f"ablate:mlp{layer}:zero" for layer in range(n_layers)]:
        c = parse_corruption(spec, n_layers)
        with corrupted(model, c) as forward:
            res = evaluate(model, problems, batch_size=batch_size, forward=forward)
        for row in accuracy_by(res, "op").to_dict("records"):
            rows.append({"condition": spec, "layer": c.layer, **row})
    return pd.DataFrame(rows)


def skill_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """The condition table in long form: one row per (layer, condition, skill) with n, the
    accuracy and its Wilson 95% interval; skills without problems are left out."""
    parts = []
    for skill, prefix, acc in (("new skill", "new", "acc_new"), ("old skill", "old", "acc_old")):
        part = table[["layer", "label", "alpha", f"n_{prefix}", acc, f"{prefix}_lo", f"{prefix}_hi"]].copy()
        part.columns = ["layer", "label", "alpha", "n", "accuracy", "lo", "hi"]
        parts.append(part.assign(skill=skill))
    long = pd.concat(parts, ignore_index=True)
    return long[long.n > 0].reset_index(drop=True)


def three_conditions(table: pd.DataFrame) -> pd.DataFrame:
    """raw, no_delta and full per layer and skill, with n and Wilson 95% intervals."""
    return skill_accuracy(table[table.label.isin(["raw", "no_delta", "full"])])


def dose_curves(table: pd.DataFrame) -> pd.DataFrame:
    """base + alpha x delta: per layer, skill and alpha, the accuracy with its interval, and
    a ``series`` label (skill and layer) for one line each."""
    doses = skill_accuracy(table[table.alpha.notna()])
    doses["series"] = doses.skill + " L" + doses.layer.astype(str)
    return doses


def study_layer(base_lm, ft_lm, layer: int, p: dict, train_problems: pd.DataFrame, val_problems: pd.DataFrame,
                evals: pd.DataFrame, progress: bool = False) -> LayerResult:
    in_name, out_name = sae.sites(p["kind"], layer)
    d_in, d_out = base_lm.cfg.d_model, base_lm.cfg.d_model
    stream = lambda lm, seed: sae.ActivationBuffer(
        lm, train_problems, in_name, out_name, p["n_tokens"], p["batch_tokens"], p["buffer_tokens"], seed
    )
    if p["base_source"] == "train":
        base = sae.Dictionary(d_in, d_out, p["base_width"], p["activation"], p["base_k"], seed=p["seed"])
        sae.train_dictionaries([base], stream(base_lm, p["seed"]), lr=p["lr"], l1=p["l1"])
    else:  # "saelens:RELEASE:ID" with {layer} in ID
        _, release, sae_id = p["base_source"].split(":", 2)
        base = sae.load_pretrained_base(release, sae_id.format(layer=layer), device=str(base_lm.cfg.device))
    for weight in base.parameters():
        weight.requires_grad_(False)

    configs = [(w, k) for w in p["delta_widths"] for k in p["delta_ks"]]
    deltas = [
        sae.DeltaDictionary(base, sae.Dictionary(d_in, d_out, w, p["activation"], min(k, w), seed=p["seed"] + 1 + i))
        for i, (w, k) in enumerate(configs)
    ]
    sae.train_dictionaries(deltas, stream(ft_lm, p["seed"] + 1), lr=p["lr"], l1=p["l1"])

    xb, yb = sae.collect(base_lm, val_problems, in_name, out_name)
    xf, yf = sae.collect(ft_lm, val_problems, in_name, out_name)
    base_metrics = {
        "base_on_base": sae.reconstruction_metrics(base, xb, yb),
        "base_on_finetuned": sae.reconstruction_metrics(base, xf, yf),
    }
    rows = []
    for (w, k), module in zip(configs, deltas):
        rows.append({"layer": layer, "delta_width": w, "delta_k": min(k, w), **sae.reconstruction_metrics(module, xf, yf)})
    sweep = pd.DataFrame(rows)
    best_i = int(sweep["explained_variance"].idxmax())
    best = sweep.loc[best_i].to_dict()
    chosen = deltas[best_i]

    xe, _ = sae.collect(ft_lm, evals, in_name, out_name)
    base_abs, delta_abs = sae.mean_abs_latents(chosen, xe)
    frames = []
    runs = [("raw", None), ("zero_ablation", None)] + [(f"alpha={a:g}", a) for a in p["alphas"]]
    for name, alpha in tqdm(runs, desc=f"layer {layer} conditions", disable=not progress):
        if name == "raw":
            hooks = []
        elif name == "zero_ablation":
            hooks = sae.zero_hooks(p["kind"], layer)
        else:
            chosen.alpha = alpha
            hooks = sae.splice_hooks(chosen, p["kind"], layer)
        res = sae.splice_eval(ft_lm, evals, hooks, p["batch_size"])
        res["condition"], res["alpha"], res["layer"] = name, alpha, layer
        res["mean_abs_base"] = base_abs if alpha is not None else float("nan")
        res["mean_abs_delta"] = delta_abs * alpha if alpha is not None else float("nan")
        frames.append(res)
    chosen.alpha = 1.0
    conditions = pd.concat(frames, ignore_index=True)
    return LayerResult(layer, base_metrics, sweep, best, conditions, {"base": base, "delta": chosen})


def condition_table(conditions: pd.DataFrame, new_ops) -> pd.DataFrame:
    """Per layer and condition: accuracy on the new and old skills, answer loss, CE score,
    mean |latent|. ``no_delta`` is alpha = 0 and ``full`` is alpha = 1."""
    from ..core.stats import proportion

    rows = []
    for (layer, cond), g in conditions.groupby(["layer", "condition"], sort=False):
        new, old = proportion(g[g.op.isin(new_ops)].correct), proportion(g[~g.op.isin(new_ops)].correct)
        rows.append({
            "layer": layer,
            "condition": cond,
            "alpha": g["alpha"].iloc[0],
            "n_new": new["n"],
            "acc_new": new["p"],
            "new_lo": new["lo"],
            "new_hi": new["hi"],
            "n_old": old["n"],
            "acc_old": old["p"],
            "old_lo": old["lo"],
            "old_hi": old["hi"],
            "answer_loss": float(g["answer_loss"].mean()),
            "mean_abs_base": float(g["mean_abs_base"].iloc[0]),
            "mean_abs_delta": float(g["mean_abs_delta"].iloc[0]),
        })
    table = pd.DataFrame(rows)
    for _, g in table.groupby("layer"):
        clean = g.loc[g.condition == "raw", "answer_loss"].iloc[0]
        ablated = g.loc[g.condition == "zero_ablation", "answer_loss"].iloc[0]
        table.loc[g.index, "ce_score"] = [sae.ce_recovered(clean, v, ablated) for v in g["answer_loss"]]
    names = {"alpha=0": "no_delta", "alpha=1": "full"}
    table["label"] = [names.get(c, c) for c in table["condition"]]
    return table


def study_findings(table: pd.DataFrame, focus_layer: int) -> dict:
    """Headline numbers at the focus layer: does removing the delta remove the new skill and
    keep the old, and does scaling it up help?"""
    g = table[table.layer == focus_layer].set_index("label")
    alphas = table[(table.layer == focus_layer) & table.alpha.notna()].sort_values("alpha")
    best_alpha = alphas.loc[alphas["acc_new"].idxmax()]
    return {
        "focus_layer": int(focus_layer),
        "raw_new": float(g.loc["raw", "acc_new"]),
        "raw_old": float(g.loc["raw", "acc_old"]),
        "no_delta_new": float(g.loc["no_delta", "acc_new"]),
        "no_delta_old": float(g.loc["no_delta", "acc_old"]),
        "full_new": float(g.loc["full", "acc_new"]),
        "full_old": float(g.loc["full", "acc_old"]),
        "full_ce_score": float(g.loc["full", "ce_score"]),
        "no_delta_ce_score": float(g.loc["no_delta", "ce_score"]),
        "best_alpha": float(best_alpha["alpha"]),
        "best_alpha_new": float(best_alpha["acc_new"]),
        "max_alpha": float(alphas["alpha"].max()),
        "max_alpha_new": float(alphas.iloc[-1]["acc_new"]),
        "max_alpha_old": float(alphas.iloc[-1]["acc_old"]),
        **{f"{label}_{skill}_text": _interval_text(g.loc[label], skill) for label in ("raw", "no_delta", "full") for skill in ("new", "old")},
        "best_alpha_new_text": _interval_text(best_alpha, "new"),
        "max_alpha_new_text": _interval_text(alphas.iloc[-1], "new"),
        "max_alpha_old_text": _interval_text(alphas.iloc[-1], "old"),
    }


def _interval_text(row, skill: str) -> str:
    """``83.5% [78.8, 87.4], n = 285`` for one skill of a condition-table row."""
    from ..core.stats import fmt_interval

    n = int(row[f"n_{skill}"])
    return fmt_interval(row[f"acc_{skill}"], row[f"{skill}_lo"], row[f"{skill}_hi"], n) if n else "n/a"


def pick_focus_layer(ablation: pd.DataFrame, new_ops, layers) -> int:
    """Among the studied layers, the one whose MLP the new skill depends on most *beyond*
    the old skill: the largest (drop in new-skill accuracy) - (drop in old-skill accuracy)
    when that MLP output is zeroed."""
    acc = ablation.assign(new=ablation.op.isin(new_ops)).groupby(["condition", "new"])["accuracy"].mean().unstack()
    clean = acc.loc["none"]
    layer_of = ablation.drop_duplicates("condition").set_index("condition")["layer"]
    best, best_score = None, -float("inf")
    for cond, row in acc.drop(index="none").iterrows():
        drop_new = clean[True] - row[True]
        drop_old = (clean[False] - row[False]) if False in acc.columns else 0.0
        if int(layer_of[cond]) in layers and drop_new - drop_old > best_score:
            best, best_score = int(layer_of[cond]), drop_new - drop_old
    return best


def _derived_from(name: str) -> str | None:
    """The base a mechlib fine-tune records in its metadata (None when it records none)."""
    import json
    from pathlib import Path

    for path in (finetuned_dir(name), Path(name).expanduser()):
        meta = path / "mechlib_source.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("base")
    return None


def run(params: Params, progress: bool = False) -> Result:
    """The whole study: tables, the chosen layer and the per-layer results."""
    check(params)
    start = time.perf_counter()
    if not _finetune_available(params.finetuned):
        from . import finetune

        finetune.ensure(finetune_params(params))
    study = run_study(params.to_dict(), progress)
    return Result(params=params, timings={"run_seconds": round(time.perf_counter() - start, 1)},
                  **{k: study[k] for k in ("ablation", "table", "sweep", "base", "best", "focus_layer", "n_train", "n_eval")},
                  layer_results=study["results"])


def findings(result: Result) -> dict:
    out = study_findings(result.table, result.focus_layer)
    out.update(n_train=result.n_train, n_eval=result.n_eval, kind=result.params.kind)
    return out


def run_study(p: dict, progress: bool = False) -> dict:
    """The study on a plain parameter dict."""
    from ..core.models import load_model

    base_lm, _ = load_model(p["model"], device=p["device"])
    ft_lm, _ = load_model(p["finetuned"], device=p["device"])
    ops = list(p["new_operators"]) + list(p["old_operators"])
    train = data.make_problems(ops, p["difficulties"], p["n_train_per_cell"], p["prompt_format"], p["seed"]).to_pandas()
    val = data.make_problems(ops, p["difficulties"], p["n_val_per_cell"], p["prompt_format"], p["seed"] + 1).to_pandas()
    evals = eval_problems(p["finetuned"], ops, p["difficulties"], p["prompt_format"], p["n_eval_per_cell"], p["seed"])
    n_layers = base_lm.cfg.n_layers
    layers = list(p["layers"]) if p["layers"] else list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers: {bad} out of range 0..{n_layers - 1} for model {p['model']!r}")
    ablation = layer_ablation(ft_lm, evals, n_layers, p["batch_size"])
    results = [study_layer(base_lm, ft_lm, layer, p, train, val, evals, progress) for layer in layers]
    table = pd.concat([condition_table(r.conditions, p["new_operators"]) for r in results], ignore_index=True)
    base_rows = [{"layer": r.layer, "data": k, **v} for r in results for k, v in r.base_metrics.items()]
    focus = pick_focus_layer(ablation, p["new_operators"], layers)
    return {
        "ablation": ablation,
        "table": table,
        "sweep": pd.concat([r.sweep for r in results], ignore_index=True),
        "base": pd.DataFrame(base_rows),
        "best": pd.DataFrame([r.best for r in results]).astype({"layer": int, "delta_width": int, "delta_k": int}),
        "focus_layer": focus,
        "results": results,
        "n_train": len(train),
        "n_eval": len(evals),
    }



def save_dictionaries(result: Result) -> list[str]:
    """Save each layer's base and chosen delta in SAELens's format under
    ``<cache>/dictionaries/<finetuned>/layer<L>/{base,delta}`` (SAEs only: SAELens SAEs read
    and write one site)."""
    from ..core.cache import cache_root

    p = result.params.to_dict()
    if p["kind"] != "sae":
        return []
    root = cache_root() / "dictionaries" / p["finetuned"].replace("/", "_")
    saved = []
    for r in result.layer_results:
        hook = sae.sites("sae", r.layer)[0]
        parts = {"delta": (r.modules["delta"].delta, p["finetuned"])}
        if isinstance(r.modules["base"], sae.Dictionary):
            parts["base"] = (r.modules["base"], p["model"])
        for name, (dictionary, model_name) in parts.items():
            extra = {"role": name, "combine": "recon = base(x) + alpha * delta(x)", "layer": r.layer, **r.best}
            saved.append(str(sae.save_saelens(dictionary, root / f"layer{r.layer}" / name, hook, model_name, extra)))
    return saved
