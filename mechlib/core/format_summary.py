"""The numbers a page quotes about pretrained models in several prompt formats
(:func:`~mechlib.core.format_study.format_study` output), as sentences that name each model:
headline cells, the paired format effect, the spread over pools of worked examples, the
claims' verdicts, carries, operand order and the first wrong digit. Nothing is pooled across
models or formats."""
from __future__ import annotations

import pandas as pd

from . import claims, failures
from .format_study import CLAIMS, claim_table, main_rows, pool_table, shared_rows
from .shipped import shipped
from .stats import fmt_interval, mcnemar, proportion
from .taxonomy import ERROR_DESCRIPTIONS

FORMAT_NAMES = {"bare": "bare", "fewshot": "few-shot", "qa": "Q/A", "chat": "chat template"}
OP_NAMES = {"+": "addition", "-": "subtraction", "*": "multiplication"}


def title(name: str) -> str:
    """What a page calls a model: a shipped model's title, else its name."""
    real = shipped(name)
    return real.title if real else name


def _join(parts: list[str], empty: str) -> str:
    return "; ".join(parts) + "." if parts else empty


def headline(results: pd.DataFrame, fmt: str, difficulties: tuple[str, ...] = ("1x1", "2x2")) -> str:
    """Per model and operator, the accuracy in format ``fmt`` at each of ``difficulties``."""
    main = main_rows(results)
    main = main[main.difficulty.isin(difficulties)]
    parts = []
    for name, group in main[main.format == fmt].groupby("model", sort=False):
        cells = []
        for op, by_op in group.groupby("op", sort=False):
            accs = ", ".join(f"{d} {fmt_interval(s['p'], s['lo'], s['hi'], s['n'])}"
                             for d, cell in by_op.groupby("difficulty") for s in [proportion(cell.correct)])
            cells.append(f"{OP_NAMES[op]} {accs}")
        parts.append(f"{title(name)}: " + "; ".join(cells))
    return _join(parts, "No pretrained model was run.")


def format_effect(results: pd.DataFrame, fmt: str, against: str) -> str:
    """Per model, ``fmt`` against ``against`` on the problems both asked, with McNemar's exact test."""
    shared = shared_rows(results)
    parts = []
    for name, group in shared.groupby("model", sort=False):
        a = group[group.format == fmt]
        b = group[group.format == against]
        a, b = a[a.item.isin(b.item)].sort_values("item"), b[b.item.isin(a.item)].sort_values("item")
        if not len(a):
            continue
        sa, sb, test = proportion(a.correct), proportion(b.correct), mcnemar(a.correct.values, b.correct.values)
        parts.append(f"{title(name)}: {FORMAT_NAMES[fmt]} {fmt_interval(sa['p'], sa['lo'], sa['hi'])} against {FORMAT_NAMES[against]} "
                     f"{fmt_interval(sb['p'], sb['lo'], sb['hi'])} on the same {sa['n']:,} problems (right in {FORMAT_NAMES[fmt]} only: "
                     f"{test['a_only']}, in {FORMAT_NAMES[against]} only: {test['b_only']}; McNemar p = {test['p']:.2g})")
    return _join(parts, "Not measured: the two formats were not both run.")


def pool_spread(results: pd.DataFrame) -> str:
    """Per model, the cell whose accuracy moves most between pools of worked examples."""
    table = pool_table(results)
    parts = []
    for name in dict.fromkeys(results.model):
        group = table[table.model == name]
        if not len(group):
            continue
        ranges = group.groupby(["op", "difficulty"], sort=False).agg(lo=("accuracy", "min"), hi=("accuracy", "max"),
                                                                     pools=("pool", "size"), n=("n", "first"))
        op, difficulty = (ranges["hi"] - ranges["lo"]).idxmax()
        row = ranges.loc[(op, difficulty)]
        parts.append(f"{title(name)}: {OP_NAMES[op]} {difficulty} from {row['lo']:.1%} to {row['hi']:.1%} over {int(row['pools'])} pools "
                     f"(n = {int(row['n'])} problems each)")
    return _join(parts, "Only one pool of worked examples was run, so no spread between pools is measured.")


def verdicts(results: pd.DataFrame) -> dict:
    """Per claim: where it holds, where the data go against it, and its rule."""
    table = claim_table(results)
    out = {}
    for key, claim in CLAIMS.items():
        rows = table[table.claim == claim]
        for verdict in ("holds", "false", "unclear"):
            hit = rows[rows.verdict == verdict]
            where = ", ".join(f"{title(r.model)} ({FORMAT_NAMES[r.format]})" for r in hit.itertuples())
            out[f"{key}_{verdict}"] = where or ("nowhere" if len(table) else "not measured (no multi-digit cell was run)")
    out.update({f"rule_{key}": claims.RULES[key] for key in CLAIMS})
    return out


def carries(results: pd.DataFrame, fmt: str) -> str:
    """Per model, addition without a carry against with one, per multi-digit difficulty."""
    main = main_rows(results)
    parts = []
    for name, group in main[main.format == fmt].groupby("model", sort=False):
        cells = []
        for difficulty, cell in group[(group.op == "+") & (group.difficulty != "1x1")].groupby("difficulty"):
            none, some = proportion(cell.correct[cell.carries == 0]), proportion(cell.correct[cell.carries > 0])
            if none["n"] and some["n"]:
                cells.append(f"{difficulty} no carry {fmt_interval(none['p'], none['lo'], none['hi'], none['n'])}, with a carry "
                             f"{fmt_interval(some['p'], some['lo'], some['hi'], some['n'])}")
        if cells:
            parts.append(f"{title(name)}: " + "; ".join(cells))
    return _join(parts, "No multi-digit addition was run.")


def order(results: pd.DataFrame, fmt: str) -> str:
    """Per model and operator, 1x2 accuracy with the longer operand first against second."""
    main = main_rows(results)
    parts = []
    for name, group in main[main.format == fmt].groupby("model", sort=False):
        table = failures.order_table(group[group.difficulty == "1x2"])
        cells = []
        for op, by_op in table.groupby("op", sort=False):
            text = {r.order: fmt_interval(r.accuracy, r.lo, r.hi, r.n) for r in by_op.itertuples()}
            if len(text) == 2:
                cells.append(f"{OP_NAMES[op]}: longer first {text['longer operand first']}, shorter first {text['shorter operand first']}")
        if cells:
            parts.append(f"{title(name)}, " + "; ".join(cells))
    return _join(parts, "No 1x2 problems were run.")


def first_error(results: pd.DataFrame, fmt: str, difficulty: str = "2x2") -> str:
    """Per model and operator, where the first wrong digit most often sits among wrong
    numeric answers at ``difficulty``."""
    main = main_rows(results)
    parts = []
    for name, group in main[(main.format == fmt) & (main.difficulty == difficulty)].groupby("model", sort=False):
        table = failures.first_error_table(group)
        for op, by_op in table.groupby("op", sort=False):
            top = by_op.sort_values("share", ascending=False).iloc[0]
            parts.append(f"{title(name)}, {difficulty} {OP_NAMES[op]}: {top.place} ({top.share:.0%} of {int(top.n)})")
    return _join(parts, "No wrong numeric answers to place.")


def top_errors(results: pd.DataFrame, fmt: str) -> str:
    """Per model and operator, the most common class of wrong answer in format ``fmt``."""
    main = main_rows(results)
    wrong = main[(main.format == fmt) & ~main.correct]
    parts = []
    for (name, op), group in wrong.groupby(["model", "op"], sort=False):
        shares = group.error.value_counts(normalize=True)
        parts.append(f"{title(name)}, {OP_NAMES[op]}: {ERROR_DESCRIPTIONS[shares.index[0]]} ({shares.iloc[0]:.0%} of {len(group)})")
    return _join(parts, "No wrong answers.")
