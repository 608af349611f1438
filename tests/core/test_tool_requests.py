"""Calculator requests: the train, eval and out-of-distribution uses are disjoint in phrasing
and in operands, and replies are read by the stated rule."""
import pandas as pd
import pytest

from mechlib.core import tool_requests as tr
from mechlib.core.tool_scoring import read_requests


def test_templates_are_disjoint_across_uses():
    for op in (*tr.OPERATORS, tr.COPY):
        uses = [set(tr.TEMPLATES[u].get(op, ())) for u in ("train", "eval", "ood")]
        assert not (uses[0] & uses[1]) and not (uses[0] & uses[2]) and not (uses[1] & uses[2])


def test_splits_are_disjoint_in_operands_and_phrasing_and_fixed_by_the_seed():
    train_calls, held_calls, train_copies, held_copies = tr.training_splits(("*", "/"), 0.3, seed=0)
    assert not tr.keys(train_calls) & tr.keys(held_calls) and not tr.keys(train_copies) & tr.keys(held_copies)
    assert set(train_calls.template) <= set(tr.TEMPLATES["train"]["*"] + tr.TEMPLATES["train"]["/"])
    assert set(held_calls.template) <= set(tr.TEMPLATES["eval"]["*"] + tr.TEMPLATES["eval"]["/"])
    assert 0.2 < len(held_calls) / (len(held_calls) + len(train_calls)) < 0.4
    assert set(train_calls.op) == {"*", "/"} and set(train_copies.op) == {tr.COPY}
    ood = tr.ood_requests(("*", "/"), 50, seed=0)
    lo, hi = tr.RANGES["ood"]
    assert ood.a.between(lo, hi).all() and ood.b.between(lo, hi).all()  # a range never trained on
    assert train_calls.a.max() < lo and train_calls.a.min() >= 100 and len(ood) == 100 and len(tr.keys(ood)) == 100
    again = tr.training_splits(("*", "/"), 0.3, seed=0)[1]
    assert again.equals(held_calls) and not tr.training_splits(("*", "/"), 0.3, seed=1)[1].equals(held_calls)
    call = train_calls[train_calls.op == "/"].iloc[0]
    assert call.target == f" <tool_call>calculator({call.a}/{call.b})</tool_call>" and call.prompt.startswith("Request: ")


def test_the_fewshot_prefix_uses_operands_outside_every_scored_range():
    prefix = tr.fewshot_prefix(("*", "/"), seed=0)
    assert prefix.count("<tool_call>calculator(") == 3 and prefix.count("Request: ") == 3  # an instruction names the format too
    assert all(len(n) == 1 for n in __import__("re").findall(r"\d+", prefix))


@pytest.mark.parametrize("op,a,b,output,called,valid,right", [
    ("*", 37, 48, " <tool_call>calculator(37*48)</tool_call>", True, True, True),
    ("*", 37, 48, "<tool_call>calculator(37 * 48)</tool_call>", True, True, True),
    ("/", 649, 821, "<tool_call>calculator(649/821)</tool_call>", True, True, True),
    ("/", 649, 821, "<tool_call>calculator(821/649)</tool_call>", True, True, False),
    ("*", 37, 48, "<tool_call>calculator(37*48", True, False, False),
    ("*", 37, 48, "<tool_call>calculator(37x48)</tool_call>", True, False, False),
    ("*", 37, 48, " 1776", False, False, True),  # no call, its own number right
    ("/", 3, 4, " 0.75", False, False, True),
    ("/", 2, 3, " 0.666667", False, False, True),  # the 6-decimal rounding counts
    ("/", 2, 3, " 0.67", False, False, False),
    ("*", 37, 48, " The answer is 1775.", False, False, False),
    ("copy", 37, 48, " 37 48", False, False, True),
    ("copy", 37, 48, " <tool_call>calculator(37*48)</tool_call>", True, True, False),  # a false call
    ("copy", 37, 48, " 37, 48", False, False, False),
])
def test_replies_are_read_by_the_rule(op, a, b, output, called, valid, right):
    row = pd.DataFrame([{"a": a, "op": op, "b": b, "target": tr.target(a, op, b), "needs_call": op != tr.COPY}])
    got = read_requests(row, [output]).iloc[0]
    assert (got.called, got.valid, got.math_correct) == (called, valid, right)
