"""Altair charts for the book, and a renderer that works offline.

The ``mechlib`` renderer emits the Vega-Lite JSON (JupyterLab draws it natively) and an
HTML snippet that calls ``window.vegaEmbed``. The built site loads one local Vega bundle
(see :mod:`mechlib.book`), so its charts need no network. Where no ``vegaEmbed`` is
loaded (Colab, a bare browser), the snippet falls back to the public Vega CDN.
"""
from __future__ import annotations

import json
import uuid

import altair as alt
import pandas as pd

from .taxonomy import ERROR_CLASSES, ERROR_DESCRIPTIONS

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


def accuracy_heatmap(table: pd.DataFrame, title: str = "Exact-match accuracy") -> alt.Chart:
    """Heat map of an accuracy_table (rows x columns, values 0..1), annotated."""
    row_name = table.index.name or "row"
    col_name = table.columns.name or "column"
    long = table.reset_index().melt(id_vars=row_name, var_name=col_name, value_name="accuracy").dropna()
    base = alt.Chart(long, title=title).encode(
        x=alt.X(f"{col_name}:O", title=col_name, sort=list(table.columns)),
        y=alt.Y(f"{row_name}:N", title=row_name, sort=list(table.index)),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("accuracy:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="accuracy"),
        tooltip=[row_name, col_name, alt.Tooltip("accuracy:Q", format=".1%")],
    )
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text("accuracy:Q", format=".0%"),
        color=alt.condition("datum.accuracy > 0.6", alt.value("black"), alt.value("white")),
    )
    return (rect + text).properties(width=alt.Step(60), height=alt.Step(36))


def error_bars(results: pd.DataFrame, title: str = "How the answers go wrong") -> alt.Chart:
    """Stacked bars: the share of each error class, per operator x difficulty."""
    counts = results.groupby(["op", "difficulty", "error"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(["op", "difficulty"])["n"].transform("sum")
    counts["meaning"] = counts["error"].map(ERROR_DESCRIPTIONS)
    order = [c for c in ERROR_CLASSES if c in set(counts["error"])]
    return (
        alt.Chart(counts, title=title)
        .mark_bar()
        .encode(
            x=alt.X("difficulty:N", title="difficulty"),
            y=alt.Y("share:Q", title="share of problems", axis=alt.Axis(format="%")),
            color=alt.Color("error:N", sort=order, scale=alt.Scale(domain=order, scheme="tableau10"), title="answer class"),
            order=alt.Order("error_rank:Q"),
            column=alt.Column("op:N", title="operator"),
            tooltip=["op", "difficulty", "error", "meaning", "n", alt.Tooltip("share:Q", format=".1%")],
        )
        .transform_calculate(error_rank=f"indexof({json.dumps(order)}, datum.error)")
        .properties(width=alt.Step(28), height=220)
    )


def line_chart(df: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "", y_format: str | None = None) -> alt.Chart:
    """A plain line chart with points and tooltips."""
    enc = {
        "x": alt.X(f"{x}:Q", title=x),
        "y": alt.Y(f"{y}:Q", title=y, axis=alt.Axis(format=y_format) if y_format else alt.Axis()),
        "tooltip": [c for c in (x, y, color) if c],
    }
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    return alt.Chart(df, title=title).mark_line(point=True).encode(**enc).properties(width=420, height=240)


def before_after_bars(results: pd.DataFrame, title: str = "Accuracy before and after fine-tuning") -> alt.Chart:
    """Grouped bars: accuracy per difficulty, one bar per model, one panel per operator."""
    acc = results.groupby(["op", "difficulty", "model"], as_index=False)["correct"].mean()
    order = list(dict.fromkeys(results["model"]))
    return (
        alt.Chart(acc, title=title)
        .mark_bar()
        .encode(
            x=alt.X("difficulty:N", title="difficulty"),
            xOffset=alt.XOffset("model:N", sort=order),
            y=alt.Y("correct:Q", title="exact-match accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N", sort=order, title="model"),
            column=alt.Column("op:N", title="operator"),
            tooltip=["op", "difficulty", "model", alt.Tooltip("correct:Q", format=".1%")],
        )
        .properties(width=alt.Step(22), height=220)
    )


def condition_bars(table: pd.DataFrame, value_cols: list[str], title: str) -> alt.Chart:
    """Grouped bars of some columns per condition label, one panel per layer."""
    long = table.melt(id_vars=["layer", "label"], value_vars=value_cols, var_name="metric")
    order = list(dict.fromkeys(table["label"]))
    return (
        alt.Chart(long, title=title)
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=order, title="condition"),
            xOffset="metric:N",
            y=alt.Y("value:Q", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color=alt.Color("metric:N", title=""),
            column=alt.Column("layer:O", title="layer"),
            tooltip=["layer", "label", "metric", alt.Tooltip("value:Q", format=".1%")],
        )
        .properties(width=alt.Step(16), height=200)
    )
