"""Charts and tables of pretrained models broken layer by layer (:mod:`mechlib.core.layer_study`),
models by their titles."""
from __future__ import annotations

import re

import altair as alt
import pandas as pd

from ..core import layer_study
from ..core.format_summary import title
from ..core.stats import bootstrap_mean
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


OPERATOR_NAMES = {"+": "addition", "-": "subtraction", "*": "multiplication"}
LENS_NAMES = {"logit": "logit lens", "tuned": "tuned lens"}


def _facet_rows(real: dict):
    return alt.Row("model:N", title=None, sort=[title(m) for m in dict.fromkeys(real["lens"].model)],
                   header=alt.Header(labelAngle=0, labelAlign="left", labelOrient="top"))


def lens_chart(real: dict) -> alt.Chart:
    """Both lenses per model: top-1 accuracy on the first answer digit by layer, per operator
    (colour) and lens (solid: logit, dashed: tuned)."""
    if not real:
        return plots.not_measured("No pretrained model was read")
    lens = real["lens"]
    curves = pd.concat([layer_study.lens_curve(lens, op, which).assign(operator=OPERATOR_NAMES[op], lens=LENS_NAMES[which])
                        for op in OPERATOR_NAMES if (lens.op == op).any() for which in LENS_NAMES])
    curves["model"] = curves.model.map(title)
    curves["interval"] = [f"{a:.1%} [{lo:.1%}, {hi:.1%}], n = {n}" for a, lo, hi, n in zip(curves.top1, curves.lo, curves.hi, curves.n)]
    curves["median rank"] = curves["rank"].map("{:g}".format)  # of the right digit among all tokens; 1 = top
    base = alt.Chart(curves).encode(x=alt.X("layer:Q", title="layer (−1: the embedding)", axis=alt.Axis(tickMinStep=1)),
                                    color=alt.Color("operator:N", title="operator"),
                                    strokeDash=alt.StrokeDash("lens:N", sort=list(LENS_NAMES.values()), legend=None),  # the caption says which is dashed
                                    tooltip=["model", "lens", "operator", "layer", "interval", "median rank"])
    band = base.mark_area(opacity=0.12).encode(y=alt.Y("lo:Q", title="first answer digit is top-1"), y2="hi:Q", detail="lens:N")
    line = base.mark_line(point=True).encode(y=alt.Y("top1:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])))
    return (band + line).properties(width=plots.COLUMN_WIDTH - 220, height=140).facet(
        row=_facet_rows(real), title=plots._title("Logit lens and tuned lens on the pretrained models",
                                                  "Solid: logit lens; dashed: tuned lens. Shaded: Wilson 95% intervals.")
    ).resolve_scale(x="independent")


def kl_chart(real: dict) -> alt.Chart:
    """Mean KL from the model's output to each lens at the first answer digit, by layer, with a
    bootstrap 95% interval (all problems; the last layer, zero by definition, left out)."""
    if not real:
        return plots.not_measured("No pretrained model was read")
    rows = []
    for (name, which, layer), group in real["lens"].groupby(["model", "lens", "layer"], sort=False):
        if layer < real["scores"][real["scores"].model == name].n_layers.iloc[0] - 1:
            mean, lo, hi = bootstrap_mean(group.kl_final.values)
            rows.append({"model": title(name), "lens": LENS_NAMES[which], "layer": int(layer), "kl": mean, "lo": lo, "hi": hi,
                         "interval": f"{mean:.2f} [{lo:.2f}, {hi:.2f}] nats, n = {len(group)}"})
    table = pd.DataFrame(rows)
    scale = alt.Scale(type="log")
    base = alt.Chart(table).encode(x=alt.X("layer:Q", title="layer (−1: the embedding)", axis=alt.Axis(tickMinStep=1)),
                                   color=alt.Color("lens:N", title="lens", sort=list(LENS_NAMES.values())),
                                   tooltip=["model", "lens", "layer", "interval"])
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title="KL to the output (nats)", scale=scale), y2="hi:Q")
    line = base.mark_line(point=True).encode(y=alt.Y("kl:Q", scale=scale))
    return (band + line).properties(width=plots.COLUMN_WIDTH - 220, height=140).facet(
        row=_facet_rows(real), title=plots._title("How far each lens is from the model's own output",
                                                  "At the first answer digit; log axis; shaded: bootstrap 95% intervals.")
    ).resolve_scale(x="independent")


def lens_table(real: dict):
    """Per model and operator: the layer each lens first reads the answer from, and whether
    the lenses disagree."""
    if not real:
        return plots.interval_table(pd.DataFrame(), [])
    table = layer_study.lens_table(real)
    out = pd.DataFrame({"model": table.model.map(title), "operator": table.op.map({"+": "+", "-": "−", "*": "×"}),
                        "logit lens reads from layer": [layer_study.layer_text(x) for x in table.logit],
                        "tuned lens reads from layer": [layer_study.layer_text(x) for x in table.tuned],
                        "lenses": table.verdict,
                        "last layer top-1 (commonest digit)": [f"{a:.0%} ({m:.0%})" for a, m in zip(table.last_top1, table.majority)],
                        "n": table.n})
    return plots.text_table(out, wrap=["model", "lenses", "last layer top-1 (commonest digit)"])  # the layers' range is in the text above


def claims(real: dict):
    """The sources' claims about layers: one row per model and claim."""
    if not real:
        return plots.interval_table(pd.DataFrame(), [])
    table = layer_study.verdicts(real)
    lenses_split = (table.claim == "last_layer") & (table.verdict == "unclear")  # its rule's "unclear" is not an interval's
    table["model"], table["claim"] = table.model.map(title), table.claim.map(layer_study.CLAIMS)
    table["verdict"] = table.verdict.map(VERDICT_NAMES).where(~lenses_split, "unclear: the lenses do not agree on a layer, or do not read it")
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
