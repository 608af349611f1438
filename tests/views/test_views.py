"""Views turn numbers into words and narrow tables: they must read the numbers they are given."""
import pandas as pd
import pytest

from mechlib.views.circuit_views import columns_read
from mechlib.views.delta_summary import localisation_sentence, seed_findings, verdict_sentence
from mechlib.views.gains import gain_cost_findings
from mechlib.views.narrative import and_list, pct


def test_glue_helpers_never_produce_a_tuple_looking_list():
    assert and_list(["a", "b", "c"]) == "a, b and c" and and_list(["x"]) == "x" and and_list([]) == ""
    assert pct(-0.001) == "0%" and pct(0.456) == "46%" and pct(-0.2) == "-20%"


def test_localisation_sentence_reads_the_numbers():
    def loc(only, but):
        rows = [("base", "none", 0.0), ("fine-tuned", "all", 0.9)]
        rows += [("only", f"L{i}", a) for i, a in enumerate(only)] + [("all but", f"L{i}", a) for i, a in enumerate(but)]
        return pd.DataFrame([{"design": d, "which": w, "skill": "new skill", "accuracy": a} for d, w, a in rows])

    assert "localised there" in localisation_sentence(loc([0.8, 0.0], [0.1, 0.9]))
    assert "several layers together" in localisation_sentence(loc([0.1, 0.1], [0.1, 0.8]))
    assert "spread and redundant" in localisation_sentence(loc([0.1, 0.1], [0.8, 0.8]))


def test_columns_read_names_the_operand_columns():
    assert columns_read("a₀ b₀") == "units column"
    assert columns_read("a₁ b₀") == "tens column and units column"
    assert columns_read("none") == "no operand digit"


def test_seed_findings_say_when_the_verdict_changes_with_the_seed():
    same = pd.DataFrame({"dictionary_seed": [0, 1], "cost_new": [10.0, 14.0], "verdict": ["in the delta"] * 2})
    assert seed_findings(same)["seed_sentence"] == "The verdict is 'in the delta' for every dictionary seed."
    assert seed_findings(same)["seed_cost_text"] == "10.0 to 14.0 points over 2 seeds (mean 12.0)"
    split = same.assign(verdict=["in the delta", "not in the delta"])
    assert "not robust" in seed_findings(split)["seed_sentence"] and seed_findings(split)["seed_list"] == "0 and 1"
    assert verdict_sentence("not in the delta").startswith("The data go against the hypothesis")


def test_gains_and_costs_rest_only_on_cells_with_enough_problems():
    rows = []
    for model, right in (("before", 0), ("after", 1)):
        rows += [{"op": "-", "difficulty": "1x1", "model": model, "correct": bool(right)} for _ in range(40)]
        rows += [{"op": "-", "difficulty": "2x2", "model": model, "correct": bool(right)} for _ in range(5)]  # too small
        rows += [{"op": "+", "difficulty": "1x1", "model": model, "correct": i < 40 - 8 * right} for i in range(40)]
    found = gain_cost_findings(pd.DataFrame(rows), ["-"])
    assert found["best_gain_cell"] == "- 1x1" and found["best_gain_points"] == 100.0
    assert found["worst_cost_cell"] == "+ 1x1" and found["worst_cost_points"] == pytest.approx(20.0)
    assert found["small_cells"] == "- 2x2 (n = 5)"


def test_before_and_after_are_compared_problem_by_problem():
    rows = [{"op": "-", "difficulty": "1x1", "model": m, "correct": c}
            for m, cs in (("before", [False] * 30 + [True] * 10), ("after", [True] * 30 + [True] * 10)) for c in cs]
    found = gain_cost_findings(pd.DataFrame(rows), ["-"])
    assert found["new_paired_text"].startswith("paired on the same 40 problems: 30 right only after, 0 right only before")
    assert found["old_paired_text"].startswith("n/a")


def test_a_line_chart_draws_one_legend_and_titles_its_axes_for_readers():
    import vl_convert

    from mechlib.views import plots

    df = pd.DataFrame({"layer": [0, 1, 0, 1], "top1_first": [0.1, 0.2, 0.3, 0.4], "difficulty": ["1x1", "1x1", "2x2", "2x2"]})
    svg = vl_convert.vegalite_to_svg(plots.line_chart(df, "layer", "top1_first", "difficulty", "lens").to_dict())
    assert svg.count("role-legend-title") == 1  # not one for the lines and another for the points
    assert ">first answer token is top-1<" in svg  # the axis title


def test_text_tables_show_markup_as_text():
    """A reply such as <tool_call>calculator(1*2)</tool_call> is shown, not read as an HTML tag."""
    import pandas as pd

    from mechlib.views import plots

    df = pd.DataFrame({"reply": ["<tool_call>calculator(1*2)</tool_call>", None], "share": [0.12345, 1.0], "n": [1, 2]})
    html = plots.text_table(df, ["reply"]).to_html()
    assert "&lt;tool_call&gt;calculator(1*2)&lt;/tool_call&gt;" in html and "<tool_call>" not in html and "0.123" in html


def test_the_loss_sentence_reads_the_share_of_the_gap_closed():
    from mechlib.views.real_delta_views import loss_sentence

    table = pd.DataFrame({"label": ["raw", "no_delta", "full"], "answer_loss": [0.5, 4.5, 1.5]})
    assert "closes 75% of the gap" in loss_sentence(table)
    table.loc[1, "answer_loss"] = 0.4
    assert "no gap to close" in loss_sentence(table)


def test_value_bars_keep_the_data_order_and_title_their_axes():
    from mechlib.views import plots

    df = pd.DataFrame({"layer": [0, 1, 2], "opening loss": [3.0, 1.0, 2.0], "chosen": ["not studied", "studied", "not studied"]})
    spec = plots.value_bars(df, "layer", "opening loss", "chosen", "Weight patching", y_title="loss (nats)").to_dict()
    assert spec["encoding"]["x"]["sort"] == [0, 1, 2] and spec["encoding"]["y"]["title"] == "loss (nats)"
    assert spec["encoding"]["color"]["title"] == "chosen"
    assert plots.value_bars(df.iloc[:0], "layer", "opening loss", "chosen", "Empty").to_dict()["mark"]["type"] == "text"
def test_quiet_silences_transformers_own_progress_bars(tmp_path, capfd, tiny_gpt2_dir):
    """save_pretrained draws 'Writing model shards' on stderr, which a page shows: quiet() stops it."""
    from transformers import GPT2LMHeadModel

    from mechlib.views.quiet import quiet

    quiet()
    GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).save_pretrained(tmp_path / "m")
    assert "Writing model shards" not in capfd.readouterr().err
