"""Chapter 4, where does the new skill live? A base dictionary trained on the base model is
frozen; small delta dictionaries are trained on the fine-tuned model so that base + delta
reconstructs it; then the fine-tuned model runs with the reconstruction spliced in."""
from __future__ import annotations

import dataclasses

import pandas as pd
from tqdm import tqdm

from . import data, sae
from .cache import finetuned_dir
from .evaluate import evaluate
from .interventions import corrupted, parse_corruption


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
        from .finetune import load_heldout

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
        for op, acc in res.groupby("op")["correct"].mean().items():
            rows.append({"condition": spec, "layer": c.layer, "op": op, "accuracy": float(acc)})
    return pd.DataFrame(rows)


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
    for param in base.parameters():
        param.requires_grad_(False)

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
    rows = []
    for (layer, cond), g in conditions.groupby(["layer", "condition"], sort=False):
        rows.append({
            "layer": layer,
            "condition": cond,
            "alpha": g["alpha"].iloc[0],
            "acc_new": float(g[g.op.isin(new_ops)].correct.mean()),
            "acc_old": float(g[~g.op.isin(new_ops)].correct.mean()) if (~g.op.isin(new_ops)).any() else float("nan"),
            "answer_loss": float(g["answer_loss"].mean()),
            "mean_abs_base": float(g["mean_abs_base"].iloc[0]),
            "mean_abs_delta": float(g["mean_abs_delta"].iloc[0]),
        })
    table = pd.DataFrame(rows)
    for layer, g in table.groupby("layer"):
        clean = g.loc[g.condition == "raw", "answer_loss"].iloc[0]
        ablated = g.loc[g.condition == "zero_ablation", "answer_loss"].iloc[0]
        table.loc[g.index, "ce_score"] = [sae.ce_recovered(clean, v, ablated) for v in g["answer_loss"]]
    names = {"alpha=0": "no_delta", "alpha=1": "full"}
    table["label"] = [names.get(c, c) for c in table["condition"]]
    return table


def findings(table: pd.DataFrame, focus_layer: int) -> dict:
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
    }


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


def run(p: dict, progress: bool = False) -> dict:
    """The whole study for a chapter's parameters: tables, chosen layer and findings."""
    from .models import load_model

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
        "best": pd.DataFrame([r.best for r in results]),
        "focus_layer": focus,
        "findings": findings(table, focus),
        "results": results,
        "n_train": len(train),
        "n_eval": len(evals),
    }



def save_dictionaries(study: dict, p: dict) -> list[str]:
    """Save each layer's base and chosen delta in SAELens's format under
    ``<cache>/dictionaries/<finetuned>/layer<L>/{base,delta}`` (SAEs only: SAELens SAEs read
    and write one site)."""
    from .cache import cache_root

    if p["kind"] != "sae":
        return []
    root = cache_root() / "dictionaries" / p["finetuned"].replace("/", "_")
    saved = []
    for r in study["results"]:
        hook = sae.sites("sae", r.layer)[0]
        parts = {"delta": (r.modules["delta"].delta, p["finetuned"])}
        if isinstance(r.modules["base"], sae.Dictionary):
            parts["base"] = (r.modules["base"], p["model"])
        for name, (dictionary, model_name) in parts.items():
            extra = {"role": name, "combine": "recon = base(x) + alpha * delta(x)", "layer": r.layer, **r.best}
            saved.append(str(sae.save_saelens(dictionary, root / f"layer{r.layer}" / name, hook, model_name, extra)))
    return saved
