"""Reading a model's outputs through the calculator: whether it called, whether the call
parses, the end-to-end answer, and why a call went wrong. Shared by chapter 6's organism
part (``[37*48]`` calls on arithmetic prompts) and its pretrained part (natural-language
requests, :mod:`mechlib.core.tool_requests`)."""
from __future__ import annotations

import re
from fractions import Fraction

import pandas as pd

from . import tools
from .stats import proportion


def read_answers(res: pd.DataFrame, style: str) -> pd.DataFrame:
    """Each output read through the tool: ``called``, ``valid``, the end-to-end answer (the
    tool's result when the model calls validly, else its own answer) and whether it is right."""
    readings = [tools.read_output(o, style) for o in res.output]
    out = res.copy()
    out["called"] = [r.called for r in readings]
    out["valid"] = [r.valid for r in readings]
    out["call_expression"] = [r.expression for r in readings]
    out["call_error"] = [r.error for r in readings]
    own = pd.to_numeric(out["pred"], errors="coerce")
    tool_value = [r.value if r.valid else None for r in readings]
    out["end_to_end"] = [v if v is not None else (None if c else (None if pd.isna(p) else int(p)))
                         for v, c, p in zip(tool_value, out.called, own)]
    out["math_correct"] = [v is not None and v == a for v, a in zip(out.end_to_end, out.answer)]
    return out


def metrics(answers: pd.DataFrame) -> pd.DataFrame:
    """Per model and subset: the call rate, the share of calls that parse (over all problems,
    as the seed experiment defines it), the end-to-end correct rate, each with n and a Wilson
    95% interval; on ``copy`` the call rate is the false-call rate."""
    rows = []
    for (model, subset), g in answers.groupby(["model", "subset"], sort=False):
        for metric, values in (("tool_call_rate", g.called), ("valid_tool_format_rate", g.valid), ("math_correct_rate", g.math_correct)):
            st = proportion(values)
            rows.append({"model": model, "subset": subset, "metric": metric, "n": st["n"], "rate": st["p"], "lo": st["lo"], "hi": st["hi"]})
    return pd.DataFrame(rows)


def classify_call(row) -> str:
    """Why a call does not give the right answer: a truncated or malformed call, a wrong
    operator, a wrong operand copied, or (for a correct-looking call) something else."""
    if not row.valid:
        return "truncated call" if "truncated" in (row.call_error or "") else "malformed call"
    expr = row.call_expression.replace(" ", "")
    want_ops = f"{row.a}{row.op}{row.b}"
    if expr == want_ops:
        return "right call"
    for op in "+-*/":
        left, sep, right = expr.partition(op)
        if sep and left.isdigit() and right.isdigit():
            if (int(left), int(right)) == (row.a, row.b):
                return "wrong operator"
            if op == row.op:
                return "wrong operand copied"
    return "other"


def call_operator(expr: str) -> str | None:
    """The operator of a call ``a OP b`` (both operands digits), or None for any other call."""
    expr = str(expr).replace(" ", "")
    for op in "+-*/":
        left, sep, right = expr.partition(op)
        if sep and left.isdigit() and right.isdigit():
            return op
    return None


def wrong_calls(answers: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuned model's calls on problems that need one and whose end-to-end answer is
    wrong, with their class; missing calls are counted as ``no call``."""
    after = answers[(answers.model == "after") & answers.needs_call & ~answers.math_correct].copy()
    after["class"] = [classify_call(r) if r.called else "no call" for r in after.itertuples()]
    return after[["subset", "prompt", "target", "output", "class"]]


FIRST_TOKENS = 12  # a reply that has not opened a call within this many tokens is read from them


def opens_call(reply: str) -> bool:
    return reply.strip().startswith(tools.OPENERS[1])


def own_number(output: str) -> Fraction | None:
    """The first number a direct answer gives (an integer or a decimal), exactly."""
    m = re.search(r"-?\d+(?:\.\d+)?", output or "")
    return Fraction(m.group()) if m else None


def read_requests(requests: pd.DataFrame, outputs) -> pd.DataFrame:
    """Each reply to a request read through the calculator (:data:`REQUEST_RULE`)."""
    out = requests.copy()
    out["output"] = list(outputs)
    readings = [tools.read_output(o, "long") for o in out.output]
    out["called"] = [r.called for r in readings]
    out["valid"] = [r.valid for r in readings]
    out["call_expression"] = [r.expression for r in readings]
    out["call_error"] = [r.error for r in readings]
    correct = []
    for row, r in zip(out.itertuples(), readings):
        if not row.needs_call:
            correct.append(not r.called and row.output.strip() == row.target.strip())
            continue
        truth = tools.evaluate_expression(f"{row.a}{row.op}{row.b}")
        value = r.value if r.valid else (None if r.called else own_number(row.output))
        correct.append(value is not None and (value == truth or tools.format_value(value) == tools.format_value(truth)))
    out["math_correct"] = correct
    return out


REQUEST_RULE = ("a reply calls the calculator when it starts with <tool_call>; the call is valid when the whole call is there "
                "and its expression parses; an arithmetic request is answered correctly when the calculator's result (or, "
                f"with no call, the first number within the reply's first {FIRST_TOKENS} tokens) equals the exact value, or its 6-decimal rounding; a copy "
                "request is answered correctly when the reply is exactly the two numbers, with no call")
