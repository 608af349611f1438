"""The calculator tool: a safe evaluator on valid and hostile input, and call parsing."""
import re
import time
from fractions import Fraction

import pytest

from mechlib.core import tools


@pytest.mark.parametrize("text, value", [
    ("37*48", 1776), ("2+3*4", 14), ("(2+3)*4", 20), ("10-4-3", 3), ("8/4/2", 1), ("7/2", Fraction(7, 2)),
    ("-5+2", -3), ("-(2+3)", -5), ("--4", 4), (" 12 + 30 ", 42), ("0*999", 0),
])
def test_valid_expressions(text, value):
    assert tools.evaluate_expression(text) == value


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "not allowed"),
    ("2**10", "expected a number"),
    ("1/0", "division by zero"),
    ("5/(3-3)", "division by zero"),
    ("(" * 40 + "1" + ")" * 40, "nesting deeper"),
    ("-" * 40 + "1", "nesting deeper"),
    ("9" * 201, "longer than 200"),
    ("9" * 61, "exceeds 60 digits"),
    ("*".join(["99999999999"] * 16), "exceeds 60 digits"),
    ("", "empty expression"),
    ("3+", "ends too early"),
    ("(3+4", "missing ')'"),
    ("3)", "unexpected ')'"),
    ("٣+1", "not allowed"),  # an Arabic-Indic digit is not an ASCII digit
    ("1e9", "not allowed"),
    ("1 2", "a space inside a number"),  # was read as 12
    ("3 + 4 5", "a space inside a number"),
])
def test_hostile_or_malformed_input_is_a_clear_error(text, message):
    start = time.perf_counter()
    with pytest.raises(tools.ToolError, match=re.escape(message)):
        tools.evaluate_expression(text)
    assert time.perf_counter() - start < 0.5  # never hangs


def test_the_evaluator_never_calls_eval(monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval was called"))
    assert tools.evaluate_expression("6*7") == 42


@pytest.mark.parametrize("output, called, valid, value", [
    ("[37*48]", True, True, 1776),
    ("[37*48", True, False, None),  # truncated
    ("[3*]", True, False, None),  # parses badly
    ("[1/0]", True, False, None),
    ("[]", True, False, None),
    ("85", False, False, None),  # a direct answer
    ("", False, False, None),
    ("x[2*3]", False, False, None),  # a call must open the answer
])
def test_reading_outputs(output, called, valid, value):
    reading = tools.read_output(output)
    assert (reading.called, reading.valid) == (called, valid)
    assert reading.value == value
    if called and not valid:
        assert reading.error


def test_long_style_calls():
    good = tools.call_text("649/821", "long")
    assert good == "<tool_call>calculator(649/821)</tool_call>"
    assert tools.read_output(" " + good, "long").value == Fraction(649, 821)
    assert tools.read_output("<tool_call>calculator(649/821)", "long").error == "truncated or malformed call"
    assert tools.format_value(Fraction(1, 4)) == "0.25" and tools.format_value(Fraction(-12)) == "-12"
