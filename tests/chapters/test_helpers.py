"""The chapters' display helpers: every accuracy leaves them with n and its interval."""
import pandas as pd
import pytest

from mechlib.chapters import baseline, sae_delta
from mechlib.core.organism import OrganismRecipe
from mechlib.core.stats import wilson


def test_skill_accuracy_is_long_with_intervals_and_drops_empty_skills():
    lo, hi = wilson(8, 10)
    table = pd.DataFrame([{"layer": 1, "label": "raw", "alpha": None, "n_new": 10, "acc_new": 0.8, "new_lo": lo, "new_hi": hi,
                           "n_old": 0, "acc_old": float("nan"), "old_lo": float("nan"), "old_hi": float("nan")}])
    long = sae_delta.skill_accuracy(table)
    assert long.to_dict("records") == [{"layer": 1, "label": "raw", "alpha": None, "n": 10, "accuracy": 0.8, "lo": lo, "hi": hi,
                                        "skill": "new skill"}]
    assert sae_delta._interval_text(table.iloc[0], "new") == f"80.0% [{lo * 100:.1f}, {hi * 100:.1f}], n = 10"
    assert sae_delta._interval_text(table.iloc[0], "old") == "n/a"


def test_last_positions_come_from_the_tokenizer_and_the_recipe():
    longer = pd.DataFrame({"kind": ["longer_operands"], "prompt": ["999+999="], "target": ["1998"]})
    # <bos> 9 9 + 9 9 = 1 9 8 <eos> ends at position 10; <bos> 999+999= 1998 <eos> at 13
    assert baseline.last_positions(longer, OrganismRecipe()) == {"trained_longest": "99+99=198", "trained_last": 10, "longer_last": 13}


def test_kinds_table_orders_kinds_and_counts_cells():
    results = pd.DataFrame({"kind": ["new_operator", "trained", "trained"], "difficulty": ["1x1", "1x1", "2x2"],
                            "correct": [False, True, True]})
    table = baseline.kinds_table(results)
    assert list(table["kind of cell"]) == [baseline.KINDS["trained"], baseline.KINDS["new_operator"]]
    assert list(table.problems) == [2, 1] and list(table.cells) == [2, 1]


def test_heldout_curves_carry_wilson_bounds():
    from mechlib.chapters import finetune

    params = finetune.Params()
    heldout = pd.DataFrame({"op": ["-"] * 10 + ["+"] * 4})
    history = pd.DataFrame({"step": [0, 1, 2], "heldout_acc_new": [0.5, None, 1.0], "heldout_acc_old": [1.0, None, 0.75]})
    result = finetune.Result(params, pd.DataFrame(), history, heldout, "", {})
    curves = finetune.heldout_curves(result)
    row = curves[(curves.step == 0) & (curves.set == "heldout_acc_new")].iloc[0]
    assert row.n == 10 and (row.lo, row.hi) == pytest.approx(wilson(5, 10))
    assert len(curves) == 4 and set(curves.n) == {10, 4}


def test_per_layer_cells_has_one_column_per_name():
    from mechlib.chapters import layers

    summary = pd.DataFrame({"corruption": ["none", "skip:0"], "family": ["none", "skip"], "layer": [None, 0.0], "n": [5, 5],
                            "accuracy": [1.0, 0.2], "lo": [0.5, 0.03], "hi": [1.0, 0.6]})
    cells = layers.per_layer_cells(summary)
    assert list(cells.columns) == ["corruption", "layer", "n", "accuracy", "lo", "hi"]
    assert cells.to_dict("records") == [{"corruption": "skip", "layer": 0, "n": 5, "accuracy": 0.2, "lo": 0.03, "hi": 0.6}]
