"""Chapter 6's tables and chart data, read off a run's result."""
from __future__ import annotations

import pandas as pd

from ..core import lora as ft
from ..core.stats import fmt_interval
from .delta_summary import conditions_long
from .delta_summary import verdict_view as delta_verdict_view


def before_after(result) -> pd.DataFrame:
    """One row per subset and metric: before and after, each with n and interval, as text."""
    m = result.metrics
    rows = []
    for (subset, metric), g in m.groupby(["subset", "metric"], sort=False):
        g = g.set_index("model")
        text = {k: fmt_interval(g.loc[k, "rate"], g.loc[k, "lo"], g.loc[k, "hi"]) for k in ("before", "after") if k in g.index}
        rows.append({"subset": subset, "metric": metric, "n": int(g["n"].iloc[0]), **text})
    return pd.DataFrame(rows)


def metric_bars(result) -> pd.DataFrame:
    """The metrics in long form for a bar chart: ``layer`` = subset, ``label`` = metric,
    ``skill`` = before/after (the columns :func:`mechlib.views.plots.condition_bars` reads)."""
    m = result.metrics.rename(columns={"rate": "accuracy"})
    short = {"tool_call_rate": "call", "valid_tool_format_rate": "valid call", "math_correct_rate": "correct"}
    return m.assign(layer=m.subset, label=m.metric.map(short), skill=m.model)


def wrong_call_counts(result) -> pd.DataFrame:
    w = result.wrong_calls
    if not len(w):
        return pd.DataFrame({"subset": [], "class": [], "n": [], "example": []})
    counts = w.groupby(["subset", "class"]).agg(n=("prompt", "size"), example=("output", "first"),
                                                 prompt=("prompt", "first")).reset_index()
    counts["example"] = counts.prompt + counts.example
    return counts.drop(columns="prompt").sort_values(["subset", "n"], ascending=[True, False])


def loss_curve(result) -> pd.DataFrame:
    """The training loss per step (cross-entropy on the answer or call tokens)."""
    return result.history.dropna(subset=["loss"])[["step", "loss"]].assign(series="training loss")


def heldout_curves(result) -> pd.DataFrame:
    """Held-out teacher-forced exactness during training (calls on ``tool``, answers on
    ``copy``) with Wilson 95% intervals from each set's size."""
    sizes = {"heldout_acc_new": int((result.evals.subset == "tool").sum()), "heldout_acc_old": int((result.evals.subset == "copy").sum())}
    return ft.heldout_curves(result.history, sizes, {"heldout_acc_new": "exact call (tool)", "heldout_acc_old": "exact answer (copy)"})


def delta_long(result) -> pd.DataFrame:
    """The splice conditions at the focus layer and all layers at once, in long form."""
    long = conditions_long(result.delta["table"], result.delta["focus_layer"])
    long["skill"] = long.skill.map({"new skill": "exact call (tool)", "old skill": "exact answer (copy)"})
    return long


def verdict_view(result) -> pd.DataFrame:
    return delta_verdict_view(result.delta["verdicts"])


def latent_view(result) -> pd.DataFrame:
    lat = result.delta["latents"]
    if not len(lat):
        return pd.DataFrame({"note": ["no latent fired on the evaluation problems"]})
    return pd.DataFrame({"dict": lat.which, "latent": lat.latent, "+loss call": lat.loss_rise_new, "+loss answer": lat.loss_rise_old,
                         "on call": lat.mean_new, "on answer": lat.mean_old, "description": lat.description})
