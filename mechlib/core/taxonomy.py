"""The error taxonomy: one class for every answer, right or wrong, plus the other classes
that also fit it.

Classes are tried in the order of :data:`ERROR_CLASSES`; the first that fits wins, and
:func:`classify_all` lists every class that fits, so a table can report the ambiguous
cases too. The order puts *another operation's result* (exact, then off by one) before
the generic classes, because that is the organism's characteristic failure: asked ``9-6``
it answers the sum (``15``) or the sum minus one (``14``). Where one operand is 0 or 1,
another operation's result can equal an operand (``6*0 = 6`` is also ``6+0``): it is
classed ``wrong_operation`` and ``copies_operand`` is listed in ``also``. Another
operation's result that equals the right answer (``2*2`` and ``2+2``) never counts as
another operation: the answer is simply right.
"""
from __future__ import annotations

import re

from .data import OPERATORS, apply_op

ERROR_CLASSES = (
    "correct",
    "empty",  # nothing before the stop (end of text or a newline)
    "echoes_expression",  # restates the problem: an operand, the operator (sign or word), the other operand
    "format_only",  # text, but no number at its start
    "wrong_operation",  # exactly another operator's result on the same operands
    "near_wrong_operation",  # another operator's result off by one (the sum minus one, say)
    "copies_operand",  # the answer is one of the operands
    "off_by_small",  # within SMALL of the right answer
    "carry_slip",  # off by exactly 10, 100, ...: one digit place wrong by one
    "right_length",  # right number of digits (and sign), otherwise wrong
    "wrong_length",  # any other number
)
ERROR_DESCRIPTIONS = {
    "correct": "exactly right",
    "empty": "no answer",
    "echoes_expression": "restates the problem (26+92, 34 times 6)",
    "format_only": "text with no number at its start",
    "wrong_operation": "result of another operation (e.g. the sum when asked for a difference)",
    "near_wrong_operation": "another operation's result off by one (e.g. the sum minus one)",
    "copies_operand": "repeats an operand",
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


def other_results(a: int, op: str, b: int) -> set[int]:
    """Results of the other operators on the same operands, in either order, leaving out
    any that equal the right answer (those cannot be told apart from a right answer)."""
    answer = apply_op(a, op, b)
    others = {apply_op(x, o, y) for o in OPERATORS if o != op for x, y in ((a, b), (b, a))}
    return others - {answer}


_OP_TEXT = {"+": r"(?:\+|plus|and)", "-": r"(?:-|−|minus)", "*": r"(?:\*|x|×|times|multiplied by)"}


def echoes(text: str, a: int, op: str, b: int) -> bool:
    """Does the text start by restating the problem, operands in either order, operator as
    a sign or a word (``26+92``, ``26 + 92``, ``34 times 6``)?"""
    sign = _OP_TEXT[op]
    return any(re.match(rf"^\s*{x}\s*{sign}\s*{y}(?!\d)", text, flags=re.IGNORECASE) for x, y in ((a, b), (b, a)))


def classify_all(a: int, op: str, b: int, pred: int | None, text: str | None = None) -> list[str]:
    """Every class that fits, in precedence order (the first is the class). With the
    answer's ``text``, the text-based classes (empty, echo) are tried first."""
    answer = apply_op(a, op, b)
    if text is not None and not text.strip():
        return ["empty"]
    if pred == answer and not (text is not None and echoes(text, a, op, b)):
        return ["correct"]
    fits = ["echoes_expression"] if text is not None and echoes(text, a, op, b) else []
    if pred is None:
        return fits or ["format_only"]
    others = other_results(a, op, b)
    if pred in others:
        fits.append("wrong_operation")
    elif any(abs(pred - o) == 1 for o in others):
        fits.append("near_wrong_operation")
    if pred in (a, b):
        fits.append("copies_operand")
    err = abs(pred - answer)
    if err <= SMALL:
        fits.append("off_by_small")
    if err >= 10 and str(err).rstrip("0") == "1":
        fits.append("carry_slip")
    fits.append("right_length" if len(str(pred)) == len(str(answer)) else "wrong_length")
    return fits


def classify(a: int, op: str, b: int, pred: int | None, text: str | None = None) -> str:
    return classify_all(a, op, b, pred, text)[0]
