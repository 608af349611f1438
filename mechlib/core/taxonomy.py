"""The error taxonomy: one class for every answer, right or wrong.

Classes are tried in the order of :data:`ERROR_CLASSES`; the first that fits wins.
"""
from __future__ import annotations

import re

from .data import OPERATORS, apply_op

ERROR_CLASSES = (
    "correct",
    "malformed",  # no number at the start of the answer
    "copies_operand",  # the answer is one of the operands
    "wrong_operation",  # the answer is another operator's result on the same operands
    "off_by_small",  # within SMALL of the right answer
    "carry_slip",  # off by exactly 10, 100, ...: one digit place wrong by one
    "right_length",  # right number of digits (and sign), otherwise wrong
    "wrong_length",  # any other number
)
ERROR_DESCRIPTIONS = {
    "correct": "exactly right",
    "malformed": "not a number",
    "copies_operand": "repeats an operand",
    "wrong_operation": "result of another operation (e.g. adds when asked to subtract)",
    "off_by_small": "off by 1 or 2",
    "carry_slip": "off by exactly 10, 100, ... (a dropped or spurious carry)",
    "right_length": "right number of digits, wrong digits",
    "wrong_length": "wrong number of digits",
}
SMALL = 2
_NUMBER = re.compile(r"^\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+))(?!\d|,\d)")


def parse_answer(text: str) -> int | None:
    """The integer a completion starts with (``' 1,234.'`` -> 1234), or None."""
    m = _NUMBER.match(text or "")
    return int(m.group(1).replace(",", "")) if m else None


def classify(a: int, op: str, b: int, pred: int | None) -> str:
    answer = apply_op(a, op, b)
    if pred is None:
        return "malformed"
    if pred == answer:
        return "correct"
    if pred in (a, b):
        return "copies_operand"
    others = {apply_op(a, o, b) for o in OPERATORS if o != op} | {apply_op(b, o, a) for o in OPERATORS if o != op}
    if pred in others:
        return "wrong_operation"
    err = abs(pred - answer)
    if err <= SMALL:
        return "off_by_small"
    if err >= 10 and str(err).rstrip("0") == "1":
        return "carry_slip"
    if len(str(pred)) == len(str(answer)):
        return "right_length"
    return "wrong_length"
