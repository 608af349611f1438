"""Does a fine-tuned skill live in a delta dictionary? The machinery behind chapter 4, on
any base/fine-tune pair and any split of problems into a new and an old skill.

Per studied layer: a base dictionary trained on the base model and frozen, a sweep of delta
dictionaries trained on the fine-tune (base + delta reconstructs it), the delta chosen by
validation reconstruction, three controls that enter the verdict, and one reference that
does not:

* ``random_delta``: the chosen delta's shape with Gaussian weights of the same norms;
* ``base_delta``: a delta of the same width and k trained on the *base* model's activations
  (what extra width alone buys);
* ``old_delta``: a delta of the same width and k trained on the *fine-tuned* model's
  activations on the old skill's problems only (fidelity to the fine-tune, without the new
  skill's activations);
* ``wide_base`` (a reference, not a control): one dictionary of the base's plus the delta's
  width (and k) trained on the fine-tune's activations with no base/delta split. It sees the
  new skill's activations, so it is the fidelity an unsplit dictionary of that size reaches:
  the verdict reports how much of it base + delta keeps, and never counts it as a control.

Conditions splice reconstructions into the fine-tuned model at one layer or at every studied
layer at once (scope ``all``). :func:`verdict` turns the numbers into an answer with stated
thresholds.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import sae
from .stats import mcnemar, proportion

ALL = "all"
# The order of the conditions in tables and charts.
LABELS = ("raw", "no_delta", "full", "full+error", "random_delta", "base_delta", "old_delta", "wide_base", "zero_ablation")
CONTROLS = ("random_delta", "base_delta", "old_delta")  # every one enters the verdict
REFERENCE = "wide_base"  # the fidelity of an unsplit dictionary of the same width: reported, never a control


@dataclasses.dataclass(frozen=True)
class DeltaConfig:
    """Everything that decides a delta study's dictionaries, splices and described latents:
    shared by every chapter that runs one (chapter 4 on a LoRA fine-tune, chapter 6 on a
    tool-use fine-tune)."""

    new_operators: tuple[str, ...]  # the skill the fine-tune added; the rest is the old skill
    kind: str = "sae"  # "sae" (MLP output from itself) or "transcoder" (MLP output from its input)
    activation: str = "topk"  # or "relu" with an L1 penalty
    base_source: str = "train"  # or "saelens:RELEASE:ID" with {layer} in ID
    base_width: int = 256
    base_k: int = 16
    delta_widths: tuple[int, ...] = (32, 64, 128)
    delta_ks: tuple[int, ...] = (4, 8)
    delta_tolerance: float = 0.005  # the narrowest, sparsest delta within this much EV of the best
    l1: float = 0.0
    lr: float = 0.003
    n_tokens: int = 60000  # activation rows per dictionary
    batch_tokens: int = 512
    buffer_tokens: int = 8192  # rows held in memory; training problems that fit are collected once
    alphas: tuple[float, ...] = (0, 0.25, 0.5, 1, 1.5, 2)  # doses of the delta (0: no_delta, 1: full)
    dictionary_seeds: tuple[int, ...] = (1, 2)  # the headline test repeated with these seeds
    n_latents: int = 5  # delta latents described
    n_base_latents: int = 3  # base latents described, for comparison
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("sae", "transcoder"):
            raise ValueError(f"kind: 'sae' or 'transcoder', got {self.kind!r}")
        if self.activation not in ("topk", "relu"):
            raise ValueError(f"activation: 'topk' or 'relu', got {self.activation!r}")
        if not self.new_operators:
            raise ValueError("new_operators: name at least one operator of the new skill")


@dataclasses.dataclass
class Site:
    """The dictionaries of one layer."""

    layer: int
    base: torch.nn.Module
    delta: sae.DeltaDictionary  # the chosen one
    sweep: pd.DataFrame  # every delta config, scored on validation activations
    best: dict  # the chosen config's row
    controls: dict  # "random_delta", "base_delta", "old_delta" (DeltaDictionary), "wide_base" (Dictionary)
    base_metrics: dict
    losses: dict  # training losses per dictionary


def choose_delta(sweep: pd.DataFrame, tolerance: float) -> int:
    """The index of the narrowest, then sparsest, delta whose validation explained variance is
    within ``tolerance`` of the best: parsimony among configs that reconstruct equally well."""
    best = sweep["explained_variance"].max()
    ok = sweep[sweep["explained_variance"] >= best - tolerance]
    return int(ok.sort_values(["delta_width", "delta_k"]).index[0])


def train_site(layer: int, rows_base, rows_ft, val_base, val_ft, config: DeltaConfig, base=None, rows_ft_old=None) -> Site:
    """Train one layer's dictionaries. ``rows_*`` make fresh (x, y) minibatch iterators
    (``rows(seed)``) from the base or the fine-tuned model (``rows_ft_old``: the fine-tuned
    model on the old skill's problems only, for ``old_delta``; None when there is no old
    skill); ``val_*`` are (x, y) validation rows. ``base`` is a pretrained base dictionary,
    or None to train one."""
    d_in, d_out = val_ft[0].shape[1], val_ft[1].shape[1]
    seed, act, lr, l1 = config.seed, config.activation, config.lr, config.l1
    losses = {}
    if base is None:
        base = sae.Dictionary(d_in, d_out, config.base_width, act, config.base_k, seed=seed)
        losses["base"] = sae.train_dictionaries([base], rows_base(seed), lr=lr, l1=l1)[0]
    base.requires_grad_(False)
    configs = [(w, min(k, w)) for w in config.delta_widths for k in config.delta_ks]
    configs = list(dict.fromkeys(configs))
    deltas = [sae.DeltaDictionary(base, sae.Dictionary(d_in, d_out, w, act, k, seed=seed + 1 + i))
              for i, (w, k) in enumerate(configs)]
    for (w, k), log in zip(configs, sae.train_dictionaries(deltas, rows_ft(seed + 1), lr=lr, l1=l1)):
        losses[f"delta w{w} k{k}"] = log
    sweep = pd.DataFrame([{"layer": layer, "delta_width": w, "delta_k": k, **sae.reconstruction_metrics(m, *val_ft)}
                          for (w, k), m in zip(configs, deltas)])
    best_i = choose_delta(sweep, config.delta_tolerance)
    chosen = deltas[best_i]
    w, k = configs[best_i]
    sweep["chosen"] = sweep.index == best_i

    base_delta = sae.DeltaDictionary(base, sae.Dictionary(d_in, d_out, w, act, k, seed=seed + 101))
    wide = sae.Dictionary(d_in, d_out, base.d_sae + w, act, (config.base_k + k) if act == "topk" else 1, seed=seed + 102)
    losses["base_delta"] = sae.train_dictionaries([base_delta], rows_base(seed + 2), lr=lr, l1=l1)[0]
    losses["wide_base"] = sae.train_dictionaries([wide], rows_ft(seed + 3), lr=lr, l1=l1)[0]
    controls = {
        "random_delta": sae.DeltaDictionary(base, sae.random_like(chosen.delta, seed=seed + 103)),
        "base_delta": base_delta,
        "wide_base": wide.requires_grad_(False),
    }
    if rows_ft_old is not None:
        old_delta = sae.DeltaDictionary(base, sae.Dictionary(d_in, d_out, w, act, k, seed=seed + 104))
        losses["old_delta"] = sae.train_dictionaries([old_delta], rows_ft_old(seed + 4), lr=lr, l1=l1)[0]
        controls["old_delta"] = old_delta
    metrics = {
        "base on base": sae.reconstruction_metrics(base, *val_base),
        "base on fine-tuned": sae.reconstruction_metrics(base, *val_ft),
        "base + delta on fine-tuned": sae.reconstruction_metrics(chosen, *val_ft),
        "base + random_delta on fine-tuned": sae.reconstruction_metrics(controls["random_delta"], *val_ft),
        "base + base_delta on fine-tuned": sae.reconstruction_metrics(base_delta, *val_ft),
        "wide_base on fine-tuned": sae.reconstruction_metrics(wide, *val_ft),
    }
    if "old_delta" in controls:
        metrics["base + old_delta on fine-tuned"] = sae.reconstruction_metrics(controls["old_delta"], *val_ft)
    return Site(layer, base, chosen, sweep, sweep.loc[best_i].to_dict(), controls, metrics, losses)


# ---------------------------------------------------------------- conditions


def condition_hooks(sites: Sequence[Site], label: str, kind: str, alpha: float | None = None) -> list:
    """Hooks for one condition at every site given (one layer, or all at once)."""
    hooks = []
    for site in sites:
        if label == "zero_ablation":
            hooks += sae.zero_hooks(kind, site.layer)
            continue
        if label in (*CONTROLS, REFERENCE):
            module = site.controls[label]
        else:
            module = site.delta
            module.alpha = alpha
        hooks += sae.splice_hooks(module, kind, site.layer, add_error=label == "full+error")
    return hooks


def exact_output(res: pd.DataFrame) -> pd.Series:
    """Correct when the output is the target text exactly (for targets that are not numbers,
    such as tool calls)."""
    return res["output"].str.strip() == res["target"].str.strip()


def run_conditions(model, problems: pd.DataFrame, sites: Sequence[Site], kind: str, alphas: Sequence[float],
                   batch_size: int = 512, scopes: Sequence | None = None, sanity: bool = True, score=None,
                   splice=None, ce: bool = True) -> pd.DataFrame:
    """Answers and answer loss of the fine-tuned model under every condition, per scope
    (each layer alone, then all of them at once): one row per (scope, condition, problem).
    ``sanity=False`` skips the full+error check (for repeats with other seeds); ``score``
    (results -> bool Series) replaces numeric answer checking, e.g. :func:`exact_output`;
    ``splice`` (model, problems, hooks, batch_size -> results) replaces decoding with
    :func:`~mechlib.core.sae.splice_eval`, e.g. :func:`~mechlib.core.sae.splice_scores`
    (teacher-forced) or :meth:`mechlib.core.resume.Resumed.splice`; ``ce=False`` skips the
    zeroed-MLP run that only the CE-loss score needs."""
    by_layer = {s.layer: s for s in sites}
    scopes = list(scopes) if scopes is not None else [s.layer for s in sites] + ([ALL] if len(sites) > 1 else [])
    splice = splice or sae.splice_eval
    raw = splice(model, problems, [], batch_size)
    if score is not None:
        raw["correct"] = score(raw).to_numpy()
    frames = []
    for scope in scopes:
        chosen = list(sites) if scope == ALL else [by_layer[scope]]
        runs = [("raw", None, False)] + ([("zero_ablation", None, False)] if ce else []) + ([("full+error", 1.0, False)] if sanity else [])
        present = [c for c in (*CONTROLS, REFERENCE) if all(c in site.controls for site in chosen)]
        runs += [(c, None, False) for c in present] + [(_alpha_label(a), float(a), True) for a in alphas]
        for label, alpha, dose in runs:
            if label == "raw":
                res = raw.copy()
            else:
                res = splice(model, problems, condition_hooks(chosen, label, kind, alpha), batch_size)
                if score is not None:
                    res["correct"] = score(res).to_numpy()
            frames.append(res.assign(scope=str(scope), condition=label, alpha=alpha if dose else np.nan))
        for site in chosen:
            site.delta.alpha = 1.0
    return pd.concat(frames, ignore_index=True)


def error_check(conditions: pd.DataFrame) -> dict:
    """Per scope, in words: does ``full+error`` (the splice plus its reconstruction error)
    give the same output and the same answer loss as ``raw`` on every problem, as it must?"""
    out = {}
    for scope, g in conditions.groupby("scope", sort=False):
        raw, fe = g[g.condition == "raw"], g[g.condition == "full+error"]
        decoded = (raw.output != "").any()  # teacher-forced conditions decode nothing: their verdicts are compared
        what = raw.output if decoded else raw.correct
        same_out = (what.to_numpy() == fe[what.name].to_numpy()).all()
        same_loss = (raw.answer_loss.to_numpy() == fe.answer_loss.to_numpy()).all()
        things = "outputs" if decoded else "teacher-forced verdicts"
        out[scope] = (f"identical {things} and answer losses on all {len(raw)} problems" if same_out and same_loss else
                      f"NOT identical: {int((what.to_numpy() != fe[what.name].to_numpy()).sum())} {things} and "
                      f"{int((raw.answer_loss.to_numpy() != fe.answer_loss.to_numpy()).sum())} answer losses differ")
    return out


def _alpha_label(a: float) -> str:
    return {0: "no_delta", 1: "full"}.get(float(a), f"alpha={a:g}")


def condition_table(conditions: pd.DataFrame, new_ops: Sequence[str]) -> pd.DataFrame:
    """Per scope and condition: accuracy on the new and old skill (n, Wilson interval) and
    the mean answer loss, with the CE-loss score against a zeroed MLP."""
    rows = []
    for (scope, label), g in conditions.groupby(["scope", "condition"], sort=False):
        row = {"scope": scope, "label": label, "alpha": g["alpha"].iloc[0], "answer_loss": float(g["answer_loss"].mean())}
        for prefix, mask in (("new", g.op.isin(new_ops)), ("old", ~g.op.isin(new_ops))):
            st = proportion(g.loc[mask, "correct"])
            row.update({f"n_{prefix}": st["n"], f"acc_{prefix}": st["p"], f"{prefix}_lo": st["lo"], f"{prefix}_hi": st["hi"]})
        rows.append(row)
    table = pd.DataFrame(rows)
    for scope, g in conditions.groupby("scope", sort=False):  # full against no_delta, problem by problem
        if {"full", "no_delta"} <= set(g.condition):
            full, none = g[g.condition == "full"], g[g.condition == "no_delta"]
            for prefix, mask in (("new", full.op.isin(new_ops).to_numpy()), ("old", ~full.op.isin(new_ops).to_numpy())):
                test = mcnemar(full.correct.to_numpy()[mask], none.correct.to_numpy()[mask])
                at = (table.scope == scope) & (table.label == "full")
                table.loc[at, f"paired_p_{prefix}"] = test["p"]
                table.loc[at, f"full_only_{prefix}"] = test["a_only"]
                table.loc[at, f"no_delta_only_{prefix}"] = test["b_only"]
    table["ce_score"] = np.nan  # needs the zeroed-MLP run
    for _, g in table.groupby("scope"):
        if "zero_ablation" not in set(g.label):
            continue
        clean = g.loc[g.label == "raw", "answer_loss"].iloc[0]
        ablated = g.loc[g.label == "zero_ablation", "answer_loss"].iloc[0]
        table.loc[g.index, "ce_score"] = [sae.ce_recovered(clean, v, ablated) for v in g["answer_loss"]]
    return table


def long_table(table: pd.DataFrame, labels: Sequence[str] = LABELS[:-1]) -> pd.DataFrame:
    """Chosen conditions in long form: one row per (scope, label, skill) with n and interval."""
    parts = []
    for skill, prefix in (("new skill", "new"), ("old skill", "old")):
        part = table[table.label.isin(labels)][["scope", "label", "alpha", f"n_{prefix}", f"acc_{prefix}", f"{prefix}_lo", f"{prefix}_hi"]]
        part = part.set_axis(["scope", "label", "alpha", "n", "accuracy", "lo", "hi"], axis=1)
        parts.append(part.assign(skill=skill))
    long = pd.concat(parts, ignore_index=True)
    order = {lab: i for i, lab in enumerate(LABELS)}
    long = long[long.n > 0].assign(_o=long.label.map(order).fillna(len(order)))
    return long.sort_values(["scope", "_o", "skill"], kind="stable").drop(columns="_o").reset_index(drop=True)


# ---------------------------------------------------------------- the verdict

# Points are accuracy points (0-100). "Share" is the part of what fine-tuning added to the new
# skill (raw minus the base model) that removing the delta takes away.
THRESHOLDS = {
    "min_fidelity": 0.5,  # full must keep this share of the added skill, or the test is inconclusive
    "in_share": 0.5,  # removing the delta takes at least half the added skill ...
    "in_points": 10.0,  # ... costs the new skill this many points more than the old, and more than any control
    "partly_share": 0.15,
    "partly_points": 5.0,
    "paired_p": 0.05,  # full beats no_delta on the new skill in a paired (McNemar) test at this level
}


def removal_numbers(table: pd.DataFrame, scope, base_new: float) -> dict:
    """The verdict's inputs at one scope, in points: what removing the delta costs the new and
    the old skill, what each control's delta buys over the base alone, the paired test of
    full against no_delta on the new skill, and the unsplit reference's accuracy."""
    g = table[table.scope == str(scope)].set_index("label")
    pts = lambda label, skill: 100 * float(g.loc[label, f"acc_{skill}"])
    has_old = int(g.loc["full", "n_old"]) > 0
    return {
        "scope": str(scope),
        "raw_new": pts("raw", "new"),
        "base_model_new": 100 * base_new,
        "full_new": pts("full", "new"),
        "no_delta_new": pts("no_delta", "new"),
        "cost_new": pts("full", "new") - pts("no_delta", "new"),
        "cost_old": (pts("full", "old") - pts("no_delta", "old")) if has_old else 0.0,
        "control_gain": {c: pts(c, "new") - pts("no_delta", "new") for c in CONTROLS if c in g.index},
        "reference_new": pts(REFERENCE, "new") if REFERENCE in g.index else float("nan"),
        "paired_p": float(g.loc["full", "paired_p_new"]),
        "full_better": bool(g.loc["full", "full_only_new"] > g.loc["full", "no_delta_only_new"]),
    }


def verdict(numbers: dict, thresholds: dict = THRESHOLDS) -> tuple[str, str]:
    """("in the delta" | "partly in the delta" | "not in the delta" | "inconclusive", the
    reason in words), from :func:`removal_numbers`'s dict and the thresholds."""
    t = thresholds
    added = numbers["raw_new"] - numbers["base_model_new"]
    if added <= 0:
        return "inconclusive", "the fine-tuned model is no better at the new skill than the base, so there is nothing to localise"
    fidelity = (numbers["full_new"] - numbers["base_model_new"]) / added
    if fidelity < t["min_fidelity"]:
        return "inconclusive", (f"the spliced model (full) keeps only {fidelity:.0%} of what fine-tuning added to the new skill "
                                f"(below {t['min_fidelity']:.0%}), so the splice itself destroys the skill")
    share = numbers["cost_new"] / added
    specific = numbers["cost_new"] - numbers["cost_old"]
    control = max(numbers["control_gain"].values(), default=0.0)
    beyond = numbers["cost_new"] - control
    paired = numbers["full_better"] and numbers["paired_p"] < t["paired_p"]
    facts = (f"removing the delta takes {share:.0%} of the added skill ({numbers['cost_new']:.1f} points; paired test "
             f"p = {numbers['paired_p']:.2g}), {specific:.1f} points more than it costs the old skill and {beyond:.1f} points more "
             "than the best control's delta buys")
    ceiling = numbers["reference_new"] - numbers["no_delta_new"]
    if ceiling == ceiling and ceiling > 0:  # the unsplit reference restores something over the base alone
        facts += (f"; an unsplit dictionary of the same width (wide_base, a reference) restores {ceiling:.1f} points over "
                  f"no_delta, and base + delta {numbers['cost_new'] / ceiling:.0%} of that")
    for name, share_t, pts_t in (("in the delta", t["in_share"], t["in_points"]), ("partly in the delta", t["partly_share"], t["partly_points"])):
        if share >= share_t and specific >= pts_t and beyond >= pts_t and paired:
            return name, facts
    return "not in the delta", facts
