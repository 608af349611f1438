"""Charts and tables of pretrained models in several prompt formats (the format study of
:mod:`mechlib.core.format_study`): models by their titles, formats by their names."""
from __future__ import annotations

import altair as alt
import pandas as pd

from ..core import failures
from ..core.evaluate import accuracy_cells
from ..core.format_study import FORMATS, cell_table, claim_table, main_rows, pool_table, shared_rows
from ..core.format_summary import FORMAT_NAMES, title
from . import plots

FORMAT_COLOURS = {"bare": "#bab0ac", "fewshot": "#4c78a8", "qa": "#f58518", "chat": "#54a24b"}
VERDICT_NAMES = {"holds": "holds", "false": "false: the data go against it", "unclear": "unclear: the interval spans the threshold"}


def _named(df: pd.DataFrame, order: pd.Series | None = None) -> pd.DataFrame:
    """Models by title (in the order they appear in ``order``), formats by name."""
    out = df.copy()
    if "model" in out:
        if order is not None:
            rank = {m: i for i, m in enumerate(dict.fromkeys(order))}
            out = out.sort_values("model", key=lambda s: s.map(rank), kind="stable")
        out["model"] = out["model"].map(title)
    if "format" in out:
        out["format"] = out["format"].map(FORMAT_NAMES)
    return out


def format_chart(results: pd.DataFrame, caption: str | None = None) -> alt.Chart:
    """Exact match with Wilson 95% intervals on the problems every format asked: one panel per
    model and operator, formats side by side in each difficulty."""
    if not len(results):
        return plots.not_measured("No pretrained model was run")
    cells = _named(cell_table(shared_rows(results)))
    models = [title(m) for m in dict.fromkeys(results.model)]
    cells["interval"] = [f"{a:.1%} [{lo:.1%}, {hi:.1%}], n = {n}" for a, lo, hi, n in zip(cells.accuracy, cells.lo, cells.hi, cells.n)]
    domain = [FORMAT_NAMES[f] for f in FORMATS if FORMAT_NAMES[f] in set(cells.format)]
    colours = [FORMAT_COLOURS[f] for f in FORMATS if FORMAT_NAMES[f] in set(cells.format)]
    base = alt.Chart(cells).encode(
        x=alt.X("difficulty:N", title="difficulty", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("format:N", sort=domain),
        color=alt.Color("format:N", sort=domain, scale=alt.Scale(domain=domain, range=colours), title="prompt format"),
        tooltip=["model", "op", "difficulty", "format", "interval"],
    )
    points = base.mark_point(filled=True, size=40).encode(y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                                                                  title="exact match"))
    bars = base.mark_errorbar(ticks=False).encode(y=alt.Y("lo:Q", title="exact match"), y2="hi:Q")
    width = max(150, (plots.COLUMN_WIDTH - 200) // max(1, len(models)) - 20)
    return (bars + points).properties(width=width, height=110).facet(
        column=alt.Column("model:N", title=None, sort=models),
        row=alt.Row("op:N", title=None, sort=plots.OP_ORDER, header=alt.Header(labelAngle=0, labelFontSize=14)),
        title=plots._title("The same problems in each prompt format", caption))


def headline_heatmaps(results: pd.DataFrame, fmt: str) -> alt.Chart:
    """The main table in format ``fmt``: one heat map per model, operator by difficulty."""
    if not len(results):
        return plots.not_measured("No pretrained model was run")
    cells = accuracy_cells(_headline(results, fmt), ["model", "op", "difficulty"])
    charts = [plots.interval_heatmap(group, "op", "difficulty", f"{title(name)}, {FORMAT_NAMES[fmt]} prompts",
                                     f"Problems per cell: {group.n.min()} to {group.n.max()}.", row_sort=plots.OP_ORDER)
              for name in dict.fromkeys(results.model) for group in [cells[cells.model == name]] if len(group)]
    return alt.vconcat(*charts)


def claims(results: pd.DataFrame):
    """The sources' claims: one row per model, format and claim, with the evidence."""
    if not len(results):
        return plots.interval_table(pd.DataFrame(), [])
    table = _named(claim_table(results), results.model)
    table["verdict"] = table["verdict"].map(VERDICT_NAMES)
    return plots.text_table(table[["model", "format", "claim", "verdict", "evidence"]], wrap=["claim", "verdict", "evidence"])


def pools(results: pd.DataFrame):
    """Accuracy per pool of worked examples, one column per pool, on the same problems."""
    table = pool_table(results) if len(results) else pd.DataFrame()
    if not len(table):
        return plots.interval_table(table, [])
    table = _named(table, results.model)
    table["text"] = [f"{a:.1%} [{lo * 100:.1f}, {hi * 100:.1f}]" for a, lo, hi in zip(table.accuracy, table.lo, table.hi)]
    wide = table.pivot_table(index=["model", "op", "difficulty", "n"], columns="pool", values="text", aggfunc="first", sort=False)
    wide.columns = [f"pool {c}" for c in wide.columns]
    return wide.reset_index().rename(columns={"op": "operator"}).style.hide(axis="index").set_table_styles(plots.TABLE_STYLE)


def _headline(results: pd.DataFrame, fmt: str) -> pd.DataFrame:
    main = main_rows(results)
    return main[main.format == fmt]


def carries(results: pd.DataFrame, fmt: str):
    """Addition by carries, per model and difficulty, in format ``fmt``."""
    if not len(results):
        return plots.interval_table(pd.DataFrame(), [])
    return plots.interval_table(_named(failures.carry_table(_headline(results, fmt), by=["model"]), results.model),
                                ["model", "difficulty", "carry"])


def order(results: pd.DataFrame, fmt: str):
    """Operand order on problems with operands of different lengths, in format ``fmt``."""
    if not len(results):
        return plots.interval_table(pd.DataFrame(), [])
    table = _named(failures.order_table(_headline(results, fmt), by=["model"]), results.model).rename(columns={"op": "operator"})
    return plots.interval_table(table, ["model", "operator", "difficulty", "order"])


def lengths(results: pd.DataFrame, fmt: str):
    """Accuracy by the right answer's number of digits, in format ``fmt``."""
    if not len(results):
        return plots.interval_table(pd.DataFrame(), [])
    table = _named(failures.length_table(_headline(results, fmt), by=["model"]), results.model)
    table = table.rename(columns={"answer_digits": "digits in the answer", "op": "operator"})
    return plots.interval_table(table, ["model", "operator", "digits in the answer"])


def first_error_chart(results: pd.DataFrame, fmt: str) -> alt.Chart:
    """Where the first wrong digit sits, per model and operator, among wrong numeric answers."""
    if not len(results):
        return plots.not_measured("No pretrained model was run")
    table = _named(failures.first_error_table(_headline(results, fmt), by=["model", "difficulty"]), results.model)
    if not len(table):
        return plots.not_measured("No wrong numeric answers")
    table["label"] = [f"{s:.0%} of {n}" for s, n in zip(table.share, table.n)]
    table["cell"] = [f"{op} {d}" for op, d in zip(table.op, table.difficulty)]
    cells = [f"{op} {d}" for op in plots.OP_ORDER for d in sorted(set(table.difficulty))]
    places = list(failures.PLACES)
    return alt.Chart(table).mark_bar().encode(
        x=alt.X("share:Q", title="share of wrong numeric answers", axis=alt.Axis(format="%"), stack="zero"),
        y=alt.Y("cell:N", title="cell", sort=cells),
        color=alt.Color("place:N", sort=places, title="first wrong digit", scale=alt.Scale(domain=places, scheme="viridis")),
        order=alt.Order("rank:Q"),
        row=alt.Row("model:N", title=None, sort=[title(m) for m in dict.fromkeys(results.model)],
                    header=alt.Header(labelAngle=0, labelAlign="left", labelOrient="top")),
        tooltip=["model", "cell", "place", "label"],
    ).transform_calculate(rank=f"indexof({places!r}, datum.place)").properties(
        width=plots.COLUMN_WIDTH - 260, height=alt.Step(22),
        title=plots._title("Where the first wrong digit is", f"{FORMAT_NAMES[fmt]} prompts; n per bar in the tooltip."))


def error_charts(results: pd.DataFrame, fmt: str) -> alt.Chart:
    """How the answers go wrong in format ``fmt``: one chart per model, classes coloured as
    in every chapter."""
    rows = _headline(results, fmt) if len(results) else results
    if not len(rows):
        return plots.not_measured("No pretrained model was run")
    return alt.vconcat(*[plots.error_bars(group, title=f"How {title(name)}'s answers go wrong ({FORMAT_NAMES[fmt]} prompts)")
                         for name, group in rows.groupby("model", sort=False)])
