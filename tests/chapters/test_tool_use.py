"""Chapter 6's pieces on hand-made data: subsets, reading outputs through the tool, metrics
and the classes of wrong calls."""
import pandas as pd
import pytest

from mechlib.chapters import tool_use
from mechlib.core import data, tool_scoring
from mechlib.core import lora as ft


def outputs(rows):
    """A results table as ``evaluate`` returns it, from (subset, a, op, b, output) rows."""
    frame = pd.DataFrame(rows, columns=["subset", "a", "op", "b", "output"])
    frame["answer"] = [data.apply_op(a, op, b) for a, op, b in zip(frame.a, frame.op, frame.b)]
    frame["pred"] = pd.array([int(o) if o.lstrip("-").isdigit() else None for o in frame.output], dtype="Int64")
    frame["needs_call"] = frame.subset != "copy"
    frame["prompt"] = [f"{a}{op}{b}=" for a, op, b in zip(frame.a, frame.op, frame.b)]
    frame["target"] = ""
    return frame


def test_metrics_on_hand_made_outputs():
    res = outputs([
        ("tool", 7, "*", 8, "[7*8]"),  # right call
        ("tool", 12, "*", 3, "[12*3"),  # truncated call
        ("tool", 6, "*", 6, "36"),  # answers itself, correctly
        ("tool", 9, "*", 9, "[9*8]"),  # wrong operand copied
        ("copy", 2, "+", 2, "4"),
        ("copy", 5, "+", 1, "[5+1]"),  # a false call, yet right end to end
        ("tool_ood", 9, "-", 4, "[9*4]"),  # wrong operator
    ])
    read = tool_scoring.read_answers(res, "short").assign(model="after")
    m = tool_scoring.metrics(read).set_index(["subset", "metric"])
    assert m.loc[("tool", "tool_call_rate"), "rate"] == 0.75 and m.loc[("tool", "tool_call_rate"), "n"] == 4
    assert m.loc[("tool", "valid_tool_format_rate"), "rate"] == 0.5
    assert m.loc[("tool", "math_correct_rate"), "rate"] == 0.5
    assert m.loc[("copy", "tool_call_rate"), "rate"] == 0.5  # the false-call rate
    assert m.loc[("copy", "math_correct_rate"), "rate"] == 1.0
    assert (m.lo <= m.rate).all() and (m.rate <= m.hi).all()
    classes = tool_scoring.wrong_calls(read).set_index("prompt")["class"].to_dict()
    assert classes == {"12*3=": "truncated call", "9*9=": "wrong operand copied", "9-4=": "wrong operator"}


@pytest.mark.parametrize("output, cls", [("[7+8]", "wrong operator"), ("[7*9]", "wrong operand copied"), ("[7*8", "truncated call"),
                                         ("[7**8]", "malformed call"), ("[7*8]", "right call"), ("[(7)*8]", "other")])
def test_call_classes(output, cls):
    row = tool_scoring.read_answers(outputs([("tool", 7, "*", 8, output)]), "short").iloc[0]
    assert tool_scoring.classify_call(row) == cls


def test_subsets_are_disjoint_from_each_other_and_from_training():
    params = tool_use.Params.from_set("tiny")
    recipe = tool_use.recipe(params)
    calls = ft.as_calls(ft.all_problems(recipe.operators, recipe.difficulties, recipe.prompt_format))
    train_calls, held_calls = ft.split_heldout(calls, recipe.heldout_fraction, recipe.seed)
    adds = ft.all_problems(recipe.replay_operators, recipe.difficulties, recipe.prompt_format)
    train_adds, held_adds = ft.split_heldout(adds, recipe.heldout_fraction, recipe.seed, fixed=ft.base_heldout(recipe.base))
    evals = tool_use.eval_set(params, pd.concat([held_calls, held_adds], ignore_index=True)).to_pandas()
    assert set(evals.subset) == {"tool", "copy", "tool_ood"}
    key = lambda f: {data.pair_key(a, op, b) for a, op, b in zip(f.a, f.op, f.b)}  # noqa: E731
    by = {s: key(g) for s, g in evals.groupby("subset")}
    assert not (by["tool"] & by["copy"]) and not (by["tool"] & by["tool_ood"]) and not (by["copy"] & by["tool_ood"])
    trained = key(train_calls) | key(train_adds)
    assert not (by["tool"] & trained) and not (by["copy"] & trained) and not (by["tool_ood"] & trained)
    assert evals[evals.subset != "copy"].target.str.fullmatch(r"\[\d+[*-]\d+\]").all()
    assert evals.needs_call.tolist() == (evals.subset != "copy").tolist()


def test_operators_cannot_be_shared_between_subsets():
    from mechlib.chapters.base import ParamError

    with pytest.raises(ParamError, match="ood_operators"):
        tool_use.Params(ood_operators=("*",))


def test_the_operator_copying_finding_counts_calls_that_write_the_trained_operator():
    from types import SimpleNamespace

    answers = pd.DataFrame({
        "model": "after", "subset": "tool_ood", "needs_call": True, "math_correct": False, "called": True, "valid": True,
        "a": [8, 9, 7, 6], "b": [4, 2, 3, 5], "call_expression": ["8*4", "9*2", "7-4", "6+5"]})
    result = SimpleNamespace(answers=answers, params=tool_use.Params())  # tool operator '*'
    found = tool_use.operator_copying(result)
    assert (found["ood_failed_calls"], found["ood_trained_operator_calls"]) == (4, 2)
    assert found["ood_operator_sentence"].startswith("In 2 of 4 valid but wrong calls")
    assert tool_scoring.call_operator("12 * 3") == "*" and tool_scoring.call_operator("[12*3") is None
