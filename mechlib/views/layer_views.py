"""Charts and tables of pretrained models broken layer by layer (:mod:`mechlib.core.layer_study`),
models by their titles."""
from __future__ import annotations

import re

import altair as alt
import pandas as pd

from ..core import layer_study
from ..core.format_summary import title
from . import plots
from .format_views import VERDICT_NAMES

FAMILY_NAMES = {"skip": "layer skipped", "mean-ablate attn": "attention mean-ablated", "mean-ablate mlp": "MLP mean-ablated"}


def describe(spec: str, n_layers: int) -> str:
    """A corruption in words: ``skip_first:2`` -> 'first 2 layers skipped'."""
    if spec == "none":
        return "intact model"
    if spec == f"skip_range:1-{n_layers - 1}":
        return "layer 0 alone"
    patterns = [(r"skip_first:(\d+)", "first {} layers skipped"), (r"skip_last:(\d+)", "last {} layers skipped"),
                (r"skip_range:(\d+)-(\d+)", "layers {} to {} skipped"), (r"repeat:(\d+)x2", "layer {} run twice"),
                (r"skip:(\d+)", "layer {} skipped")]
    for pattern, words in patterns:
        m = re.fullmatch(pattern, spec)
        if m:
            return words.format(*m.groups())
    if spec.startswith("permute:"):
        order = [int(x) for x in spec.split(":")[1].split(",")]
        swapped = [i for i, x in enumerate(order) if i != x]
        return f"layers {swapped[0]} and {swapped[1]} swapped" if len(swapped) == 2 else "layers reordered"
    return spec


def strips(real: dict) -> alt.Chart:
    """Teacher-forced accuracy with each layer skipped, its attention or its MLP mean-ablated:
    one strip of three rows per model."""
    if not real:
        return plots.not_measured("No pretrained model was broken")
    table = layer_study.summary(real["scores"])
    per = table[table.family.isin(FAMILY_NAMES) & table.layer.notna()].copy()
    per["corruption"], per["model"] = per.family.map(FAMILY_NAMES), per.model.map(title)
    per["layer"] = per.layer.astype(int)
    layers = sorted(per.layer.unique())
    return plots.value_heatmap(per, "layer", "corruption", "accuracy", "Accuracy with one layer broken",
                               "Teacher-forced exact match on the same problems; dark cells are blocks the answer needs.",
                               facet="model", columns=1, fmt=".0%", x_sort=layers, y_sort=list(FAMILY_NAMES.values()), cell=17,
                               labels=False, facet_sort=[title(m) for m in dict.fromkeys(table.model)])


def multi_layer(real: dict):
    """The corruptions of several layers, per model: accuracy, answer loss, p(first digit)."""
    if not real:
        return plots.interval_table(pd.DataFrame(), [])
    table = layer_study.summary(real["scores"])
    rows = table[~(table.family.isin(FAMILY_NAMES) & table.layer.notna())].copy()  # what the strips do not show
    rows["corruption"] = [describe(s, n) for s, n in zip(rows.corruption, rows.n_layers)]
    rows["model"] = rows.model.map(title)
    rows["answer loss (nats)"] = rows.answer_loss.map(plots.number_text)
    rows["p(first digit)"] = rows.p_first.map(plots.number_text)
    return plots.interval_table(rows, ["model", "corruption", "answer loss (nats)", "p(first digit)"])


def lens_chart(real: dict) -> alt.Chart:
    """The logit lens per model: top-1 accuracy on the first answer digit by layer, per operator."""
    if not real:
        return plots.not_measured("No pretrained model was read")
    curves = pd.concat([layer_study.lens_curve(real["lens"], op).assign(operator=name)
                        for op, name in (("+", "addition"), ("-", "subtraction"), ("*", "multiplication")) if (real["lens"].op == op).any()])
    curves["model"] = curves.model.map(title)
    curves["interval"] = [f"{a:.1%} [{lo:.1%}, {hi:.1%}], n = {n}" for a, lo, hi, n in zip(curves.top1, curves.lo, curves.hi, curves.n)]
    base = alt.Chart(curves).encode(x=alt.X("layer:Q", title="layer (−1: the embedding)", axis=alt.Axis(tickMinStep=1)),
                                    color=alt.Color("operator:N", title="operator"), tooltip=["model", "operator", "layer", "interval"])
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title="first answer digit is top-1"), y2="hi:Q")
    line = base.mark_line(point=True).encode(y=alt.Y("top1:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])))
    return (band + line).properties(width=plots.COLUMN_WIDTH - 200, height=140).facet(
        row=alt.Row("model:N", title=None, sort=[title(m) for m in dict.fromkeys(real["lens"].model)],
                    header=alt.Header(labelAngle=0, labelAlign="left", labelOrient="top")),
        title=plots._title("Logit lens on the pretrained models", "Shaded: Wilson 95% intervals."))


def claims(real: dict):
    """The sources' claims about layers: one row per model and claim."""
    if not real:
        return plots.interval_table(pd.DataFrame(), [])
    table = layer_study.verdicts(real)
    table["model"], table["claim"] = table.model.map(title), table.claim.map(layer_study.CLAIMS)
    table["verdict"] = table.verdict.map(VERDICT_NAMES)
    return plots.text_table(table, wrap=["claim", "verdict", "evidence"])


def speech(real: dict):
    """Continuations of the source prompts under corruptions, per model (repr: spaces and
    newlines visible)."""
    if not real or not len(real["speech"]):
        return plots.interval_table(pd.DataFrame(), [])
    table = real["speech"].copy()
    table["condition"] = [describe(s, n) for s, n in zip(table.corruption, table.n_layers)]
    table["model"], table["continuation"] = table.model.map(title), table.continuation.map(repr)
    return plots.text_table(table[["model", "prompt", "condition", "continuation"]], wrap=["prompt", "continuation"])
