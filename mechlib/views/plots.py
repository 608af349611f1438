"""Altair charts for the book, and a renderer that works offline.

The ``mechlib`` renderer emits the Vega-Lite JSON (JupyterLab draws it natively) and an
HTML snippet that calls ``window.vegaEmbed``. The built site loads one local Vega bundle
(see :mod:`mechlib.book`), so its charts need no network. Where no ``vegaEmbed`` is
loaded (Colab, a bare browser), the snippet falls back to the public Vega CDN.
"""
from __future__ import annotations

import html
import json
import math
import uuid

import altair as alt
import pandas as pd

from ..core.data import OPERATORS
from ..core.taxonomy import ERROR_CLASSES, ERROR_DESCRIPTIONS

CDN = "https://cdn.jsdelivr.net/npm/"
_FALLBACK = [f"vega@{alt.VEGA_VERSION}", f"vega-lite@{alt.VEGALITE_VERSION}", f"vega-embed@{alt.VEGAEMBED_VERSION}"]
VEGALITE_MIME = f"application/vnd.vegalite.{alt.SCHEMA_VERSION.split('.')[0]}+json"


def _html(spec: dict) -> str:
    div = f"vis-{uuid.uuid5(uuid.NAMESPACE_OID, json.dumps(spec, sort_keys=True)).hex[:12]}"
    scripts = json.dumps([CDN + lib for lib in _FALLBACK])
    return f"""<div id="{div}" class="mechlib-chart"></div>
<script type="text/javascript">
(function() {{
  var spec = {json.dumps(spec)};
  function draw() {{ window.vegaEmbed("#{div}", spec, {{"actions": false, "renderer": "svg"}}).catch(console.error); }}
  if (window.vegaEmbed) {{ draw(); return; }}
  var urls = {scripts}, i = 0;
  (function next() {{
    if (i === urls.length) {{ draw(); return; }}
    var s = document.createElement("script"); s.src = urls[i++]; s.onload = next;
    document.head.appendChild(s);
  }})();
}})();
</script>"""


def mechlib_renderer(spec: dict, **kwargs) -> dict:
    return {VEGALITE_MIME: spec, "text/html": _html(spec), "text/plain": "<Altair chart>"}


alt.renderers.register("mechlib", mechlib_renderer)


def enable() -> None:
    """Use the offline renderer and lift Altair's row cap. Chapters call this (through
    :func:`mechlib.book.notebook.run_chapter`); importing this module changes nothing."""
    alt.renderers.enable("mechlib")
    alt.data_transformers.disable_max_rows()


COLUMN_WIDTH = 640  # the book's text column is about 800 px; charts (with legends) stay inside it
OP_ORDER = list(OPERATORS)
# One colour per error class, the same in every chapter.
ERROR_COLOURS = {
    "correct": "#4c78a8",
    "empty": "#d8b5a5",
    "echoes_expression": "#72b7b2",
    "format_only": "#9d755d",
    "wrong_operation": "#e45756",
    "near_wrong_operation": "#ff9da6",
    "copies_operand": "#f58518",
    "off_by_small": "#54a24b",
    "carry_slip": "#b279a2",
    "right_length": "#eeca3b",
    "wrong_length": "#bab0ac",
}
KIND_COLOURS = {
    "trained": "#4c78a8",
    "longer_operands": "#f58518",
    "new_operator": "#bab0ac",
    "new_format": "#9d755d",
    "pretrained": "#54a24b",
}
KIND_NAMES = {"trained": "trained (held-out pairs)", "longer_operands": "longer operands", "new_operator": "new operator (control)",
              "new_format": "new format (control)", "pretrained": "pretrained"}
# Axis and legend titles for the data's column names; any other name is shown with spaces.
FIELD_NAMES = {
    "top1_first": "first answer token is top-1",
    "tf_correct": "whole answer is the argmax",
    "p_first": "p(first answer digit)",
    "answer_loss": "answer loss (nats)",
    "op": "operator",
}


def field_name(name: str) -> str:
    """The human name of a column for an axis or a legend title (never its snake_case)."""
    return FIELD_NAMES.get(name, name.replace("_", " "))


def _label_expr(names: dict) -> str:
    """A Vega expression showing each raw value by its name in ``names`` (others as they are)."""
    cases = " : ".join(f"datum.label == {json.dumps(k)} ? {json.dumps(v)}" for k, v in names.items())
    return f"{cases} : datum.label" if cases else "datum.label"


def number_text(v: float, decimals: int = 3) -> str:
    """A number with at most 3 significant digits and at most ``decimals`` decimals (1.016 ->
    1.02, 23.86 -> 23.9 at one decimal, 0.0123 -> 0.0123 at four)."""
    if v != v:
        return ""
    if v == 0:
        return "0"
    places = min(decimals, max(0, 2 - math.floor(math.log10(abs(v)))))
    return f"{v:.{places}f}"


def _title(text: str, caption: str | None):
    return alt.TitleParams(text, subtitle=caption, anchor="start") if caption else alt.TitleParams(text, anchor="start")


def accuracy_heatmap(table: pd.DataFrame, title: str = "Exact-match accuracy", caption: str | None = None,
                     counts: pd.DataFrame | None = None) -> alt.Chart:
    """Heat map of an accuracy table (rows x columns, values 0..1), annotated with the
    accuracy and, when ``counts`` (same shape) is given, n."""
    row_name = table.index.name or "row"
    col_name = table.columns.name or "column"
    long = table.reset_index().melt(id_vars=row_name, var_name=col_name, value_name="accuracy").dropna()
    if counts is not None:
        n = counts.reset_index().melt(id_vars=row_name, var_name=col_name, value_name="n")
        long = long.merge(n, on=[row_name, col_name], how="left")
        long["label"] = [f"{a:.0%} (n={int(k)})" for a, k in zip(long.accuracy, long.n)]
    else:
        long["label"] = [f"{a:.0%}" for a in long.accuracy]
    step = 78 if counts is not None else 52
    base = alt.Chart(long, title=_title(title, caption)).encode(
        x=alt.X(f"{col_name}:O", title=field_name(col_name), sort=list(table.columns), axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{row_name}:N", title=field_name(row_name), sort=list(table.index)),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="accuracy"),
        tooltip=[row_name, col_name, alt.Tooltip("accuracy:Q", format=".1%")] + (["n"] if counts is not None else []),
    )
    text = base.mark_text(fontSize=11).encode(
        text="label:N",
        color=alt.condition("datum.accuracy > 0.6", alt.value("black"), alt.value("white")),
    )
    width = min(COLUMN_WIDTH - 120, step * len(table.columns))
    return (rect + text).properties(width=width, height=alt.Step(30))


def interval_heatmap(cells: pd.DataFrame, row: str, col: str, title: str, caption: str | None = None,
                     row_sort: list | None = None, col_sort: list | None = None) -> alt.Chart:
    """Heat map of accuracies from a long table (columns ``row``, ``col``, n, accuracy, lo,
    hi): each cell shows the accuracy over its Wilson 95% interval; n is in the tooltip."""
    data = cells.copy()
    data["label"] = [f"{a:.0%}\n[{lo * 100:.0f}, {hi * 100:.0f}]" for a, lo, hi in zip(data.accuracy, data.lo, data.hi)]
    data["interval"] = [f"{a:.1%} [{lo:.1%}, {hi:.1%}], n = {n}" for a, lo, hi, n in zip(data.accuracy, data.lo, data.hi, data.n)]
    row_sort = row_sort or list(dict.fromkeys(data[row]))
    col_sort = col_sort or sorted(data[col].unique())
    base = alt.Chart(data).encode(
        x=alt.X(f"{col}:O", title=field_name(col), sort=col_sort, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{row}:N", title=field_name(row), sort=row_sort),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="accuracy"),
        tooltip=[row, col, "interval"],
    )
    text = base.mark_text(fontSize=10, lineBreak="\n").encode(
        text="label:N", color=alt.condition("datum.accuracy > 0.6", alt.value("black"), alt.value("white")))
    width = min(COLUMN_WIDTH - 160, 62 * len(col_sort))
    return (rect + text).properties(width=width, height=alt.Step(34), title=_title(title, caption + " Cells: accuracy [95% interval]."
                                                                                     if caption else "Cells: accuracy [95% interval]."))


def accuracy_intervals(cells: pd.DataFrame, title: str = "Accuracy with 95% intervals", caption: str | None = None,
                       x: str = "difficulty", color: str = "kind", row: str | None = "op") -> alt.Chart:
    """Points with Wilson 95% error bars (columns accuracy, lo, hi, n), one row of panels
    per operator (stacked, so the chart fits the column)."""
    data = cells.copy()
    data["interval"] = [f"{a:.1%} [{lo:.1%}, {hi:.1%}], n = {n}" for a, lo, hi, n in zip(data.accuracy, data.lo, data.hi, data.n)]
    colours = KIND_COLOURS if color == "kind" else None
    domain = [k for k in (colours or {}) if k in set(data[color])] or sorted(data[color].unique())
    scale = alt.Scale(domain=domain, range=[colours[k] for k in domain]) if colours else alt.Scale()
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:N", title=field_name(x), axis=alt.Axis(labelAngle=0)),
        color=alt.Color(f"{color}:N", scale=scale, title=field_name(color),
                        legend=alt.Legend(labelExpr=_label_expr(KIND_NAMES if color == "kind" else {}))),
        tooltip=[c for c in (row, x, color) if c] + ["interval"],
    )
    points = base.mark_point(filled=True, size=60).encode(y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")))
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title="exact-match accuracy"), y2="hi:Q")
    layer = (bars + points).properties(width=COLUMN_WIDTH - 200, height=110)
    if row:
        return layer.facet(row=alt.Row(f"{row}:N", sort=OP_ORDER if row == "op" else "ascending", title=None), title=_title(title, caption))
    return layer.properties(title=_title(title, caption))


def error_bars(results: pd.DataFrame, title: str = "How the answers go wrong", caption: str | None = None) -> alt.Chart:
    """Stacked bars: the share of each error class, per operator x difficulty; the same
    colour for a class in every chapter."""
    counts = results.groupby(["op", "difficulty", "error"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(["op", "difficulty"])["n"].transform("sum")
    counts["meaning"] = counts["error"].map(ERROR_DESCRIPTIONS)
    order = [c for c in ERROR_CLASSES if c in set(counts["error"])]
    return (
        alt.Chart(counts)
        .mark_bar()
        .encode(
            x=alt.X("difficulty:N", title="difficulty", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("share:Q", title="share of problems", axis=alt.Axis(format="%")),
            # the whole taxonomy as the domain: two charts side by side share one colour scale, and a
            # partial domain with a partial range would let a merged scale cycle colours between classes
            color=alt.Color("error:N", sort=list(ERROR_CLASSES),
                            scale=alt.Scale(domain=list(ERROR_CLASSES), range=[ERROR_COLOURS[c] for c in ERROR_CLASSES]),
                            title="answer class"),
            order=alt.Order("error_rank:Q"),
            column=alt.Column("op:N", title="operator", sort=OP_ORDER),
            tooltip=["op", "difficulty", "error", "meaning", "n", alt.Tooltip("share:Q", format=".1%")],
        )
        .transform_calculate(error_rank=f"indexof({json.dumps(order)}, datum.error)")
        .properties(width=alt.Step(26), height=180, title=_title(title, caption))
    )


def line_chart(df: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "", y_format: str | None = None,
               caption: str | None = None, integer_x: bool = False, band: tuple[str, str] | None = None,
               width: int = COLUMN_WIDTH - 180, rule: float | None = None, log2_x: bool = False,
               y_title: str | None = None) -> alt.Chart:
    """A line chart with points and tooltips; ``integer_x`` for layers (no 2.5 ticks),
    ``band`` = (lo, hi) columns for an interval band, ``rule`` a dashed baseline, ``log2_x``
    a base-2 log x axis (LoRA ranks)."""
    if not len(df):
        return not_measured(title)
    x_axis = alt.Axis(tickMinStep=1, format="d") if integer_x or log2_x else alt.Axis()
    x_scale = alt.Scale(type="log", base=2) if log2_x else alt.Scale()
    enc = {
        "x": alt.X(f"{x}:Q", title=field_name(x), axis=x_axis, scale=x_scale),
        "y": alt.Y(f"{y}:Q", title=y_title or field_name(y), axis=alt.Axis(format=y_format) if y_format else alt.Axis()),
        "tooltip": [c for c in (x, y, color) if c],
    }
    if color:
        legend = alt.Legend(orient="bottom", title=field_name(color), columns=3)  # below the plot, wrapped: never past the column
        enc["color"] = alt.Color(f"{color}:N", legend=legend)
        enc["shape"] = alt.Shape(f"{color}:N", legend=None)  # more than a few lines need more than colour; one legend
    chart = alt.Chart(df).mark_line(point=True).encode(**enc)
    if band:
        band_enc = {"x": alt.X(f"{x}:Q", scale=x_scale), "y": f"{band[0]}:Q", "y2": f"{band[1]}:Q"}
        if color:
            band_enc["color"] = alt.Color(f"{color}:N", legend=None)
        chart = alt.Chart(df).mark_area(opacity=0.15).encode(**band_enc) + chart
    if rule is not None:
        chart = chart + alt.Chart(pd.DataFrame({"y": [rule]})).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q")
    if not isinstance(chart, alt.LayerChart):
        # resolved on a plain line-with-points chart, the scales split between its line and its
        # points and the legend is drawn twice; a one-layer LayerChart keeps one legend
        chart = alt.layer(chart)
    # independent scales, so a chart concatenated with another keeps its own legend
    return chart.properties(width=width, height=220, title=_title(title, caption)).resolve_scale(color="independent", shape="independent")


def before_after_bars(results: pd.DataFrame, title: str = "Accuracy before and after fine-tuning", caption: str | None = None,
                      legend: str = "model") -> alt.Chart:
    """Grouped bars with Wilson 95% error bars: accuracy per difficulty, one bar per model
    (``legend`` names them; the legend sits below, so long labels fit the column), one panel
    per operator."""
    from ..core.stats import accuracy_by

    acc = accuracy_by(results, ["op", "difficulty", "model"])
    order = list(dict.fromkeys(results["model"]))
    base = alt.Chart(acc).encode(
        x=alt.X("difficulty:N", title="difficulty", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("model:N", sort=order),
        color=alt.Color("model:N", sort=order, title=legend, legend=alt.Legend(orient="bottom")),
        tooltip=["op", "difficulty", alt.Tooltip("model:N", title=legend), "n", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("lo:Q", format=".1%"),
                 alt.Tooltip("hi:Q", format=".1%")],
    )
    bars = base.mark_bar().encode(y=alt.Y("accuracy:Q", title="exact-match accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])))
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title="exact-match accuracy"), y2="hi:Q", color=alt.value("black"))
    return (bars + whiskers).properties(width=alt.Step(22), height=200).facet(
        column=alt.Column("op:N", title="operator", sort=OP_ORDER), title=_title(title, caption))


def condition_bars(long: pd.DataFrame, title: str, caption: str | None = None, x_title: str = "condition",
                   row_title: str = "layer", y_title: str = "accuracy") -> alt.Chart:
    """Bars with Wilson 95% error bars per condition label and skill, one panel per layer
    (stacked, in order of appearance, each with its own labels). ``long`` has columns
    layer, label, skill, n, accuracy, lo, hi; the skills keep their order of appearance."""
    order = list(dict.fromkeys(long["label"]))
    skills = list(dict.fromkeys(long["skill"]))
    base = alt.Chart(long).encode(
        x=alt.X("label:N", sort=order, title=x_title, axis=alt.Axis(labelAngle=-30, labelAlign="right")),
        xOffset=alt.XOffset("skill:N", sort=skills),
        color=alt.Color("skill:N", title="", sort=skills, legend=alt.Legend(orient="bottom")),  # below: never past the column
        tooltip=["layer", "label", "skill", "n", alt.Tooltip("accuracy:Q", format=".1%"), alt.Tooltip("lo:Q", format=".1%"),
                 alt.Tooltip("hi:Q", format=".1%")],
    )
    bars = base.mark_bar().encode(y=alt.Y("accuracy:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]), title=y_title))
    whiskers = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title=y_title), y2="hi:Q", color=alt.value("black"))
    rows = list(dict.fromkeys(long["layer"].astype(str)))
    return (bars + whiskers).properties(width=alt.Step(19), height=120).facet(
        row=alt.Row("layer:N", title=row_title, sort=rows), title=_title(title, caption)).resolve_scale(x="independent")


def value_bars(df: pd.DataFrame, x: str, y: str, color: str, title: str, caption: str | None = None,
               y_title: str | None = None) -> alt.Chart:
    """One bar per ``x`` (ordered as in the data: layers), its height ``y``, coloured by
    ``color`` (legend below), with tooltips. Column names must not hold an apostrophe: Vega
    reads field names inside expressions."""
    if not len(df):
        return not_measured(title)
    order = list(dict.fromkeys(df[x]))
    return alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:O", sort=order, title=field_name(x), axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{y}:Q", title=y_title or field_name(y)),
        color=alt.Color(f"{color}:N", title=field_name(color), legend=alt.Legend(orient="bottom")),
        tooltip=[x, alt.Tooltip(f"{y}:Q", format=".3f"), color],
    ).properties(width=COLUMN_WIDTH - 180, height=200, title=_title(title, caption))


TABLE_STYLE = [{"selector": "th, td", "props": "padding: 0.15em 0.7em;"}]


def interval_table(df: pd.DataFrame, keep: list[str], value: str = "accuracy", label: str = "accuracy [95% interval]"):
    """A narrow table: the ``keep`` columns, n, and accuracy with its interval in one column."""
    if not len(df):
        return pd.DataFrame({"note": ["not measured in this run"]}).style.hide(axis="index")
    out = df[keep].copy()
    out["n"] = df["n"].astype(int).map("{:,}".format)
    out[label] = [f"{a:.1%} [{lo * 100:.1f}, {hi * 100:.1f}]" for a, lo, hi in zip(df[value], df["lo"], df["hi"])]
    return out.style.hide(axis="index").set_table_styles(TABLE_STYLE)


def seeds_table(seeds: pd.DataFrame, counts: tuple[str, ...] = ()) -> pd.io.formats.style.Styler:
    """Seed-to-seed numbers, one column per organism seed (narrow), metrics as rows."""
    if not len(seeds):
        return pd.DataFrame({"note": ["no seeds were run"]}).style.hide(axis="index")
    wide = seeds.set_index("organism_seed").T
    wide.columns = [f"seed {c}" for c in wide.columns]
    wide.index.name = "metric"
    fmt = lambda v, name: f"{v:,.0f}" if name in counts or name.startswith(("n_", "most_needed")) else f"{v:.1%}"  # noqa: E731
    text = pd.DataFrame({c: [fmt(v, m) if v == v else "" for m, v in wide[c].items()] for c in wide.columns}, index=wide.index)
    text.index = [seed_metric_name(m) for m in text.index]
    text.index.name = "metric"
    return text.reset_index().style.hide(axis="index").set_table_styles(TABLE_STYLE)


def seed_metric_name(name: str) -> str:
    """A per-seed metric's row label: ``heldout_carries_0`` -> 'held-out addition, 0 carries'."""
    if name.startswith("heldout_carries_"):
        return f"held-out addition, {name.rsplit('_', 1)[1]} carries"
    names = {"heldout_addition": "held-out addition", "longer_operands": "longer operands", "clean": "no corruption",
             "most_needed_layer": "layer most needed"}
    return names.get(name, KIND_NAMES.get(name, field_name(name)))


def text_table(df: pd.DataFrame, wrap: list[str], decimals: int = 3, percent: tuple[str, ...] = (), min_width: str = "6em",
               max_width: str = "18em"):
    """A table with long text columns (``wrap``) that wrap within a bounded width (at least
    ``min_width``), numbers to at most 3 significant digits and ``decimals`` places, and
    ``percent`` columns as percentages, so it stays in the column."""
    wrap = [c for c in wrap if c in df.columns]  # a "not measured" note has none of them
    fmt = {c: (lambda v, d=decimals: number_text(v, d)) for c in df.columns if df[c].dtype.kind == "f" and c not in percent}
    fmt |= {c: "{:.1%}" for c in percent if c in df.columns}
    fmt |= {c: (lambda v: html.escape(str(v))) for c in df.columns if c not in fmt and df[c].dtype.kind == "O"}  # text, never HTML
    return (df.style.format(fmt, na_rep="").hide(axis="index").set_table_styles(TABLE_STYLE)
            .set_properties(subset=wrap, **{"white-space": "normal", "overflow-wrap": "anywhere", "min-width": min_width,
                                            "max-width": max_width}))  # a call has no space to break at


def percent_table(df: pd.DataFrame, percent: list[str] | None = None, counts: list[str] | None = None):
    """A table for the page: percentages as percentages (at most 3 significant digits),
    counts as integers, no pandas index."""
    percent = percent or [c for c in df.columns if df[c].dtype.kind == "f" and df[c].between(0, 1).all()]
    counts = counts or [c for c in df.columns if df[c].dtype.kind in "iu"]
    fmt = {c: "{:.1%}" for c in percent} | {c: "{:,.0f}" for c in counts}
    return df.style.format(fmt, na_rep="").hide(axis="index").set_table_styles(TABLE_STYLE)


def value_heatmap(long: pd.DataFrame, x: str, y: str, value: str, title: str, caption: str | None = None,
                  facet: str | None = None, columns: int = 3, domain: tuple[float, float] = (0, 1), fmt: str = ".2f",
                  x_sort: list | None = None, y_sort: list | None = None, facet_sort: list | None = None,
                  scheme: str = "viridis", cell: int = 30, labels: bool = True) -> alt.Chart:
    """A heat map of ``value`` over ``x`` and ``y`` with the value written in each cell,
    optionally faceted (wrapped into ``columns`` panels per row so it fits the column)."""
    if not len(long):
        return not_measured(title)
    data = long.copy()
    data["label"] = [_no_minus_zero(format(v, fmt)) if v == v else "" for v in data[value]]
    mid = (domain[0] + domain[1]) / 2
    base = alt.Chart(data).encode(
        x=alt.X(f"{x}:N", title=field_name(x), sort=x_sort or list(dict.fromkeys(data[x])), axis=alt.Axis(labelAngle=-40)),
        y=alt.Y(f"{y}:N", title=field_name(y), sort=y_sort or list(dict.fromkeys(data[y]))),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(domain=list(domain), scheme=scheme, clamp=True), title=field_name(value),
                        legend=alt.Legend(orient="bottom", gradientLength=160)),
        tooltip=[c for c in (facet, y, x) if c] + [alt.Tooltip(f"{value}:Q", format=fmt)],
    )
    layers = rect
    if labels:
        layers = rect + base.mark_text(fontSize=9).encode(
            text="label:N", color=alt.condition(f"datum['{value}'] > {mid}", alt.value("black"), alt.value("white")))
    n_x = data[x].nunique()
    chart = layers.properties(width=cell * n_x, height=alt.Step(18 if cell < 30 else 24))
    if facet:
        return chart.facet(facet=alt.Facet(f"{facet}:N", title=None, sort=facet_sort or list(dict.fromkeys(data[facet]))),
                           columns=columns, title=_title(title, caption))
    return chart.properties(title=_title(title, caption))


def not_measured(title: str) -> alt.Chart:
    """A placeholder chart for a part of a chapter that this run's parameters left out."""
    return alt.Chart(pd.DataFrame({"text": ["not measured in this run"]})).mark_text(align="left").encode(
        text="text:N").properties(width=300, height=20, title=_title(title, None))


def _no_minus_zero(text: str) -> str:
    """'-0%' and '-0.00' (a rounded tiny negative) read as '0%' and '0.00'."""
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text


def roc_chart(roc: pd.DataFrame, title: str, caption: str | None = None, columns: int = 3) -> alt.Chart:
    """ROC curves (columns program, method, fpr, tpr), one panel per program, the diagonal dashed."""
    if not len(roc):
        return not_measured(title)
    diag = pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})
    order = list(dict.fromkeys(roc["method"]))
    panels = []
    for program, group in roc.groupby("program", sort=False):
        lines = alt.Chart(group).mark_line(strokeWidth=1.8, point=alt.OverlayMarkDef(size=14)).encode(
            x=alt.X("fpr:Q", title="false-positive rate", scale=alt.Scale(domain=[-0.03, 1.03], nice=False)),
            y=alt.Y("tpr:Q", title="true-positive rate", scale=alt.Scale(domain=[-0.03, 1.03], nice=False)),
            color=alt.Color("method:N", sort=order, legend=alt.Legend(orient="bottom", columns=4, title="method")),
            strokeDash=alt.StrokeDash("method:N", sort=order, legend=None),
            tooltip=["method", "fpr", "tpr"])
        rule = alt.Chart(diag).mark_line(color="gray", strokeDash=[3, 3], strokeWidth=0.8).encode(x="fpr:Q", y="tpr:Q")
        panels.append((rule + lines).properties(width=150, height=150, title=program))
    rows = [alt.hconcat(*panels[i : i + columns]) for i in range(0, len(panels), columns)]
    return alt.vconcat(*rows, title=_title(title, caption))
