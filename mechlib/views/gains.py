"""A fine-tune's gains and costs as the chapter quotes them: per-cell changes in points,
with n and Wilson intervals, and the sentences that carry the headline claims."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..core.stats import accuracy_by, fmt_interval, mcnemar, proportion


def gain_cost_findings(results: pd.DataFrame, new_ops: Sequence[str], before: str = "before", after: str = "after", min_n: int = 30) -> dict:
    """Gains on the new skill and costs on the old ones, per cell, in points (0..100), with n
    and Wilson 95% intervals. Only cells with at least ``min_n`` held-out problems carry a
    headline claim (best gain, worst cost); the pooled numbers pool one kind only (held-out
    problems of the new skill, or of the old)."""
    cells = accuracy_by(results, ["op", "difficulty", "model"])
    wide = cells.pivot_table(index=["op", "difficulty"], columns="model", values=["accuracy", "n"])
    delta = (wide["accuracy"][after] - wide["accuracy"][before]) * 100
    n = wide["n"][after]
    is_new = delta.index.get_level_values("op").isin(new_ops)
    headline = n >= min_n
    new, old = delta[is_new & headline], delta[~is_new & headline]

    def pooled(model: str, new_skill: bool) -> str:
        rows = results[(results.model == model) & (results.op.isin(new_ops) == new_skill)]
        st = proportion(rows["correct"])
        return fmt_interval(st["p"], st["lo"], st["hi"], st["n"])

    def paired(new_skill: bool) -> str:
        """McNemar's test of after against before on the same held-out problems."""
        rows = results[results.op.isin(new_ops) == new_skill]
        rb, ra = rows[rows.model == before], rows[rows.model == after]
        b, a = rb.correct.to_numpy(), ra.correct.to_numpy()
        same = len(a) == len(b) and ("prompt" not in rows or (rb.prompt.to_numpy() == ra.prompt.to_numpy()).all())
        if not len(a) or not same:
            return "no paired test (the two models were not scored on the same problems)"
        t = mcnemar(a, b)
        return (f"paired on the same {len(a)} problems: {t['a_only']} right only after, {t['b_only']} right only before, "
                f"McNemar p = {t['p']:.2g}")

    def cell_text(key, model):
        r = cells[(cells.op == key[0]) & (cells.difficulty == key[1]) & (cells.model == model)].iloc[0]
        return fmt_interval(r.accuracy, r.lo, r.hi, int(r.n))

    out = {
        "old_before_text": "n/a (no replayed skill)",
        "old_after_text": "n/a (no replayed skill)",
        "min_n": min_n,
        "small_cells": ", ".join(f"{op} {d} (n = {int(k)})" for (op, d), k in n[~headline].items()) or "none",
        "new_before_text": pooled(before, True),
        "new_after_text": pooled(after, True),
        "new_acc_before": float(results[(results.model == before) & results.op.isin(new_ops)].correct.mean()),
        "new_acc_after": float(results[(results.model == after) & results.op.isin(new_ops)].correct.mean()),
        "new_paired_text": paired(True),
        "old_paired_text": paired(False) if (~results.op.isin(new_ops)).any() else "n/a (no replayed skill)",
    }
    out["gain_sentence"] = f"No cell of the new skill has {min_n} held-out problems, so none carries a headline claim."
    out["cost_sentence"] = "No replayed skill was measured." if not (~is_new).any() else (
        f"No cell of the replayed skill has {min_n} held-out problems, so none carries a headline claim.")
    if len(new):
        best = new.idxmax()
        out["gain_sentence"] = (f"Among cells with at least {min_n} held-out problems, the largest gain is {new.max():.1f} points, on "
                                f"{' '.join(best)} ({cell_text(best, before)} before, {cell_text(best, after)} after).")
        out.update(best_gain_points=float(new.max()), best_gain_cell=" ".join(best),
                   best_gain_before_text=cell_text(best, before), best_gain_after_text=cell_text(best, after))
    if len(old):
        worst = old.idxmin()
        out["cost_sentence"] = (f"The largest drop in a cell with at least {min_n} problems is {-old.min() + 0.0:.1f} points, on "
                                f"{' '.join(worst)} ({cell_text(worst, before)} before, {cell_text(worst, after)} after).")
        out.update(
            worst_cost_points=float(-old.min()) + 0.0,  # + 0.0 turns -0.0 into 0.0
            worst_cost_cell=" ".join(worst),
            worst_cost_before_text=cell_text(worst, before),
            worst_cost_after_text=cell_text(worst, after),
            old_before_text=pooled(before, False),
            old_after_text=pooled(after, False),
            old_acc_before=float(results[(results.model == before) & ~results.op.isin(new_ops)].correct.mean()),
            old_acc_after=float(results[(results.model == after) & ~results.op.isin(new_ops)].correct.mean()),
        )
    return out


def source_table(placed: pd.DataFrame):
    """The cells set against the source's ranges (:func:`mechlib.core.lora_study.against_source`),
    narrow: accuracy and its interval in one column."""
    from .plots import TABLE_STYLE

    if not len(placed):
        return pd.DataFrame({"note": ["not measured in this run"]}).style.hide(axis="index")
    out = placed[["difficulty", "stage", "n"]].copy()
    out["accuracy [95% interval]"] = [fmt_interval(p, lo, hi) for p, lo, hi in zip(placed.accuracy, placed.lo, placed.hi)]
    out["source range"] = placed["source range"]
    out["placement"] = [f"{p}; interval {'overlaps' if o == 'yes' else 'outside'}" for p, o in zip(placed.placement, placed["interval overlaps"])]
    return out.style.hide(axis="index").set_table_styles(TABLE_STYLE)
