"""Chapter 6's pretrained-model part on the page: glued sentences, tables and chart data,
read off :func:`mechlib.core.tool_study.study`'s output (None when no model was fine-tuned)."""
from __future__ import annotations

import pandas as pd

from ..core import lora as ft
from ..core import tool_requests
from ..core import tool_study as ts
from ..core.shipped import shipped
from ..core.stats import fmt_interval
from ..core.tool_scoring import REQUEST_RULE

SUBSET_NAMES = {"tool": "arithmetic, held out", "copy": "copy, held out", "tool_ood": "arithmetic, out of distribution"}
METRIC_NAMES = {"tool_call_rate": "calls", "valid_tool_format_rate": "valid calls", "math_correct_rate": "correct end to end"}
KEYS = ("real_tool_model_text", "real_tool_recipe_text", "real_tool_time_text", "real_tool_verdict", "real_tool_verdict_text",
        "real_tool_headline_text", "real_tool_shown_text", "real_tool_copy_text", "real_tool_ood_text", "real_tool_errors_text")


def metrics_table(real: dict | None) -> pd.DataFrame:
    """One row per subset and metric, one column per condition: rate [95% interval]."""
    if real is None:
        return pd.DataFrame()
    rows = []
    for (subset, metric), g in real["metrics"].groupby(["subset", "metric"], sort=False):
        g = g.set_index("model")
        cells = {c: fmt_interval(g.loc[c, "rate"], g.loc[c, "lo"], g.loc[c, "hi"]) for c in ts.CONDITIONS if c in g.index}
        rows.append({"subset": SUBSET_NAMES[subset], "metric": METRIC_NAMES[metric], "n": int(g["n"].iloc[0]), **cells})
    return pd.DataFrame(rows)


def metric_bars(real: dict | None) -> pd.DataFrame:
    """Long form for :func:`mechlib.views.plots.condition_bars`: ``layer`` = subset, ``label``
    = metric, ``skill`` = condition."""
    if real is None:
        return pd.DataFrame()
    m = real["metrics"].rename(columns={"rate": "accuracy"})
    return m.assign(layer=m.subset.map(SUBSET_NAMES), label=m.metric.map(METRIC_NAMES), skill=m.model)


def curves(real: dict | None) -> pd.DataFrame:
    if real is None:
        return pd.DataFrame()
    return ft.heldout_curves(real["history"], real["curve_sizes"],
                             {"heldout_acc_new": "exact call (arithmetic)", "heldout_acc_old": "exact copy"})


def wrong_counts(real: dict | None) -> pd.DataFrame:
    """Why arithmetic requests go wrong, per condition and subset, with one example each."""
    if real is None or not len(real["wrong_calls"]):
        return pd.DataFrame()
    w = real["wrong_calls"]
    out = w.groupby(["model", "subset", "class"], sort=False).agg(n=("prompt", "size"), example=("output", "first")).reset_index()
    out["subset"] = out.subset.map(SUBSET_NAMES)
    return out.rename(columns={"model": "condition", "example": "example reply"})


def examples(real: dict | None, per_subset: int = 2) -> pd.DataFrame:
    """A few requests with every condition's reply, the first of each subset."""
    if real is None:
        return pd.DataFrame()
    a = real["answers"]
    first = a[a.model == ts.AFTER].groupby("subset", sort=False).head(per_subset).item
    rows = a[a.item.isin(first)].pivot_table(index=["item", "subset", "prompt"], columns="model", values="output", aggfunc="first")
    rows = rows.reset_index()[["subset", "prompt", *[c for c in ts.CONDITIONS if c in rows.columns]]]
    rows["prompt"] = rows.prompt.str.replace("Request: ", "", regex=False).str.replace("\nResponse:", "", regex=False)
    return rows.assign(subset=rows.subset.map(SUBSET_NAMES)).rename(columns={"prompt": "request"})


def real_title(model: str) -> str:
    """The model's name as the page writes it."""
    found = shipped(model)
    return found.title if found else model


def real_findings(real: dict | None, model: str) -> dict:
    """The part as glued sentences; each names the model."""
    (lo, hi), (ood_lo, ood_hi) = tool_requests.RANGES["train"], tool_requests.RANGES["ood"]
    out = {"real_tool_verdict_rule": ts.VERDICT_RULE, "real_tool_reading_rule": REQUEST_RULE,
           "real_tool_ranges_text": f"operands {ood_lo}-{ood_hi} (training saw {lo}-{hi})"}
    if real is None:
        none = "Not measured: this run fine-tuned no pretrained model to call the calculator (parameter real_model)."
        return {**out, **{k: none for k in KEYS}}
    found = shipped(model)
    title = found.title if found else model
    recipe, a, m = real["recipe"], real["answers"], real["metrics"].set_index(["model", "subset", "metric"])

    def rate(condition, subset, metric="math_correct_rate") -> str:
        r = m.loc[(condition, subset, metric)]
        return fmt_interval(r.rate, r.lo, r.hi, int(r.n))

    def versus(b: str, subset: str) -> str:
        t = ts.paired(a, ts.AFTER, b, subset)
        return (f"on the same {t['n']} requests, {t['a_only']} are answered correctly only after fine-tuning and {t['b_only']} "
                f"only before (McNemar p = {t['p']:.2g})")

    counts = wrong_counts(real)
    after = counts[counts.condition == ts.AFTER] if len(counts) else counts

    def classes(g: pd.DataFrame) -> str:
        return ", ".join(f"{c} {n}" for c, n in zip(g["class"], g.n))

    errors = "; ".join(f"{s}: {classes(g.sort_values('n', ascending=False))}" for s, g in after.groupby("subset", sort=False)) \
        if len(after) else "none"
    v = ts.verdict(real["metrics"])
    return {**out,
            "real_tool_model_text": found.provenance if found else f"{model} (not a shipped model)",
            "real_tool_recipe_text": (f"LoRA of rank {recipe['rank']} (alpha {recipe['alpha']}) on {', '.join(real['targets'])}, "
                                      f"{recipe['steps']} steps of {recipe['batch_size']} requests (a {recipe['replay_fraction']:.0%} "
                                      f"share of them copy requests) at learning rate {recipe['lr']:g}, the loss on the reply's "
                                      f"tokens only; {real['n_train']['calls']:,} arithmetic and {real['n_train']['copies']:,} copy "
                                      "requests to train on"),
            "real_tool_time_text": (f"{title}'s fine-tune took {real['seconds']['train']:.0f} s for {recipe['steps']} steps "
                                    f"({real['seconds']['train'] / recipe['steps']:.1f} s a step, with the held-out curve), on "
                                    f"{real['where']}; scoring both conditions took {real['seconds']['evaluate']:.0f} s with "
                                    f"{real['threads']} torch thread{'s' if real['threads'] > 1 else ''}"),
            "real_tool_verdict": v,
            "real_tool_verdict_text": f"Verdict for {title}: {v}.",
            "real_tool_headline_text": (f"On held-out arithmetic requests, {title} answers correctly end to end {rate(ts.AFTER, 'tool')} "
                                        f"after fine-tuning, against {rate(ts.BEFORE_SHOWN, 'tool')} before it, instructed with worked examples."),
            "real_tool_shown_text": f"Against the instructed base model: {versus(ts.BEFORE_SHOWN, 'tool')}.",
            "real_tool_copy_text": (f"On copy requests the fine-tune calls the calculator on "
                                    f"{rate(ts.AFTER, 'copy', 'tool_call_rate')} (the false-call rate) and copies correctly on "
                                    f"{rate(ts.AFTER, 'copy')}; instructed, the base model copies correctly on "
                                    f"{rate(ts.BEFORE_SHOWN, 'copy')}."),
            "real_tool_ood_text": (f"Out of distribution ({tool_requests.OOD_TEXT}), {title} answers correctly "
                                   f"{rate(ts.AFTER, 'tool_ood')} after fine-tuning, against {rate(ts.BEFORE_SHOWN, 'tool_ood')} "
                                   f"instructed before; {versus(ts.BEFORE_SHOWN, 'tool_ood')}."),
            "real_tool_errors_text": f"The fine-tune's wrong replies to arithmetic requests, by class: {errors}."}
