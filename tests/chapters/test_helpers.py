"""The chapters' display helpers: every accuracy leaves them with n and its interval."""
import pandas as pd
import pytest

from mechlib.chapters import baseline, sae_delta
from mechlib.core.organism import OrganismRecipe
from mechlib.core.problem_sets import last_positions
from mechlib.core.rank_sweep import choose_rank
from mechlib.core.stats import wilson


def test_long_table_has_intervals_and_drops_empty_skills():
    from mechlib.core import delta_study

    lo, hi = wilson(8, 10)
    table = pd.DataFrame([{"scope": "1", "label": "raw", "alpha": None, "n_new": 10, "acc_new": 0.8, "new_lo": lo, "new_hi": hi,
                           "n_old": 0, "acc_old": float("nan"), "old_lo": float("nan"), "old_hi": float("nan")}])
    long = delta_study.long_table(table)
    assert long.to_dict("records") == [{"scope": "1", "label": "raw", "alpha": None, "n": 10, "accuracy": 0.8, "lo": lo, "hi": hi,
                                        "skill": "new skill"}]


def test_choose_rank_is_the_lowest_rank_near_the_best():
    ranks = pd.DataFrame({"rank": [1, 2, 4, 8, 1, 2, 4, 8], "skill": ["new skill"] * 4 + ["old skill"] * 4,
                          "accuracy": [0.1, 0.5, 0.85, 0.9, 1, 1, 1, 1]})
    assert choose_rank(ranks, 0.8) == 4
    assert choose_rank(ranks, 1.0) == 8
    assert choose_rank(ranks, 0.1) == 1


def test_sweep_fine_tunes_keep_chapter_3s_recipe_and_alpha_ratio():
    params = sae_delta.Params()
    same, name = sae_delta.finetune_recipe(params)
    assert name == params.finetuned and (same.rank, same.alpha, same.steps) == (32, 64, 1600)
    small, small_name = sae_delta.finetune_recipe(params, 4, 400)
    assert small_name == f"{params.finetuned}-r4-s400" and (small.rank, small.alpha, small.steps) == (4, 8, 400)
    assert (small.lr, small.replay_fraction, small.operators) == (same.lr, same.replay_fraction, same.operators)
    tiny, _ = sae_delta.finetune_recipe(sae_delta.Params.from_set("tiny"))
    assert tiny.steps == 20 and tiny.rank == 4  # the recipe comes from the named parameter set


def test_last_positions_come_from_the_tokenizer_and_the_recipe():
    longer = pd.DataFrame({"kind": ["longer_operands"], "prompt": ["999+999="], "target": ["1998"]})
    # <bos> 9 9 + 9 9 = 1 9 8 <eos> ends at position 10; <bos> 999+999= 1998 <eos> at 13
    assert last_positions(longer, OrganismRecipe()) == {"trained_longest": "99+99=198", "trained_last": 10, "longer_last": 13}


def test_kinds_table_orders_kinds_and_counts_cells():
    """A cell is an (operator, difficulty) pair: - 1x1 and * 1x1 are two cells, not one."""
    results = pd.DataFrame({"kind": ["new_operator", "new_operator", "new_operator", "trained", "trained"],
                            "op": ["-", "*", "*", "+", "+"], "difficulty": ["1x1", "1x1", "1x1", "1x1", "2x2"],
                            "correct": [False, False, True, True, True]})
    table = baseline.kinds_table(results)
    assert list(table["kind of cell"]) == [baseline.KINDS["trained"], baseline.KINDS["new_operator"]]
    assert list(table.problems) == [2, 3] and list(table.cells) == [2, 2]


def test_heldout_curves_carry_wilson_bounds():
    from mechlib.chapters import finetune

    params = finetune.Params()
    heldout = pd.DataFrame({"op": ["-"] * 10 + ["+"] * 4})
    history = pd.DataFrame({"step": [0, 1, 2], "heldout_acc_new": [0.5, None, 1.0], "heldout_acc_old": [1.0, None, 0.75]})
    result = finetune.Result(params, pd.DataFrame(), history, heldout, "", {})
    curves = finetune.heldout_curves(result)
    row = curves[(curves.step == 0) & (curves.set == "new skill (held-out)")].iloc[0]
    assert row.n == 10 and (row.lo, row.hi) == pytest.approx(wilson(5, 10))
    assert len(curves) == 4 and set(curves.n) == {10, 4}


def test_per_layer_cells_has_one_column_per_name():
    from mechlib.chapters import layers

    summary = pd.DataFrame({"corruption": ["none", "skip:0"], "family": ["none", "skip"], "layer": [None, 0.0], "n": [5, 5],
                            "accuracy": [1.0, 0.2], "lo": [0.5, 0.03], "hi": [1.0, 0.6]})
    cells = layers.per_layer_cells(summary)
    assert list(cells.columns) == ["corruption", "layer", "n", "accuracy", "lo", "hi"]
    assert cells.to_dict("records") == [{"corruption": "skip", "layer": 0, "n": 5, "accuracy": 0.2, "lo": 0.03, "hi": 0.6}]


def test_each_corruption_is_tested_against_the_clean_model_on_the_same_problems():
    from mechlib.chapters import layers

    prompts = [f"{i}+1=" for i in range(20)]
    rows = []
    for name, family, right in (("none", "none", [True] * 20), ("skip:0", "skip", [False] * 12 + [True] * 8),
                                ("skip:1", "skip", [True] * 19 + [False])):
        rows += [{"corruption": name, "family": family, "layer": None if name == "none" else int(name[-1]), "prompt": p,
                  "correct": c, "answer_loss": 0.1, "p_first": 0.9} for p, c in zip(prompts, right)]
    table = layers.summarise(pd.DataFrame(rows)).set_index("corruption")
    assert pd.isna(table.loc["none", "p_vs_clean"])
    assert table.loc["skip:0", "p_vs_clean"] == pytest.approx(2 * 0.5**12)  # 12 problems right only when clean
    assert table.loc["skip:1", "p_vs_clean"] == pytest.approx(1.0)


def test_the_layer_tables_are_named_for_readers():
    from mechlib.chapters import layers

    summary = pd.DataFrame({"corruption": ["none", "skip:0"], "answer_loss": [0.012, 1.23456], "p_first": [0.98765, 0.5],
                            "p_vs_clean": [float("nan"), 0.000123]})
    view = layers.summary_view(summary)
    assert view["answer loss (nats)"].tolist() == ["0.012", "1.23"] and view["p(first digit)"].tolist() == ["0.988", "0.500"]
    assert view["paired p vs clean"].tolist() == ["", "0.00012"]
    stats = pd.DataFrame({"layer": [0], "resid_norm_mean": [1.0], "attn_norm_mean": [2.0], "mlp_norm_mean": [3.0]})
    assert layers.norms_long(stats).set_index("output").value.to_dict() == {"residual stream": 1.0, "attention": 2.0, "MLP": 3.0}


def test_no_chapter_shows_code_on_the_page():
    """Every code cell is the parameters cell, removed, or shown by its output only."""
    import nbformat

    from mechlib.book.paths import project_root

    for path in sorted((project_root() / "chapters").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        shown = [i for i, c in enumerate(cells) if c.cell_type == "code"
                 and not {"parameters", "remove-cell", "remove-input"} & set(c.metadata.get("tags", []))]
        assert not shown, f"{path.name}: code cells {shown} would show their code on the page"
