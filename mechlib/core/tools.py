"""A calculator tool for the model to call: call parsing and a safe arithmetic evaluator.

A call is ``[EXPR]`` (the organism's character tokenizer has ``[`` and ``]``, and its context
is short), or the long form ``<tool_call>calculator(EXPR)</tool_call>`` for BPE models. The
expression is read by a small recursive-descent parser over digits, ``+ - * /`` and
parentheses, with exact rational arithmetic; nothing is ever passed to ``eval``. Limits on
length, nesting and the size of intermediate numbers keep hostile input from hanging it.
"""
from __future__ import annotations

import dataclasses
import operator
import re
from fractions import Fraction

MAX_CHARS = 200  # an expression longer than this is refused before parsing
MAX_DEPTH = 32  # parentheses and unary minus nest at most this deep
MAX_DIGITS = 60  # no literal or intermediate result may have more digits than this

SHORT = re.compile(r"\[([^\[\]]*)\]")
LONG = re.compile(r"<tool_call>\s*calculator\((.*?)\)\s*</tool_call>", re.S)
OPENERS = ("[", "<tool_call>")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


class ToolError(ValueError):
    """A malformed expression or call: a format error, never a crash."""


def _check_size(value: Fraction) -> Fraction:
    if max(len(str(abs(value.numerator))), len(str(value.denominator))) > MAX_DIGITS:
        raise ToolError(f"a number exceeds {MAX_DIGITS} digits")
    return value


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := '-' factor | '(' expr ')' | digits"""

    def __init__(self, text: str):
        self.text, self.i, self.depth = text.replace(" ", ""), 0, 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def parse(self) -> Fraction:
        if not self.text:
            raise ToolError("empty expression")
        value = self.expr()
        if self.i != len(self.text):
            raise ToolError(f"unexpected {self.peek()!r} at position {self.i}")
        return value

    def expr(self) -> Fraction:
        return self._chain(self.term, "+-")

    def term(self) -> Fraction:
        return self._chain(self.factor, "*/")

    def _chain(self, operand, ops: str) -> Fraction:
        """operand (op operand)*, left to right, for the operators in ``ops``."""
        value = operand()
        while self.peek() and self.peek() in ops:
            op = self.text[self.i]
            self.i += 1
            right = operand()
            if op == "/" and right == 0:
                raise ToolError("division by zero")
            value = _check_size(_OPS[op](value, right))
        return value

    def factor(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ToolError(f"nesting deeper than {MAX_DEPTH}")
        try:
            c = self.peek()
            if c == "-":
                self.i += 1
                return -self.factor()
            if c == "(":
                self.i += 1
                value = self.expr()
                if self.peek() != ")":
                    raise ToolError(f"missing ')' at position {self.i}")
                self.i += 1
                return value
            start = self.i
            while self.peek().isdigit() and self.peek().isascii():
                self.i += 1
            if start == self.i:
                raise ToolError(f"expected a number at position {start}, got {c!r}" if c else "expression ends too early")
            digits = self.text[start : self.i]
            if len(digits) > MAX_DIGITS:
                raise ToolError(f"a number exceeds {MAX_DIGITS} digits")
            return Fraction(int(digits))
        finally:
            self.depth -= 1


def evaluate_expression(text: str) -> Fraction:
    """The exact value of an arithmetic expression over integers, ``+ - * /`` and
    parentheses. Anything else, and any input past the limits, raises :class:`ToolError`."""
    if not isinstance(text, str):
        raise ToolError("the expression must be text")
    if len(text) > MAX_CHARS:
        raise ToolError(f"expression longer than {MAX_CHARS} characters")
    bad = sorted(set(text) - set("0123456789+-*/() "))
    if bad:
        raise ToolError(f"characters not allowed: {''.join(bad)!r}")
    split = re.search(r"\d\s+\d", text)
    if split:
        raise ToolError(f"a space inside a number at position {split.start() + 1} ({split.group()!r}): write numbers without spaces")
    return _Parser(text).parse()


def format_value(value: Fraction) -> str:
    """An integer as digits; a fraction as a decimal rounded to 6 places."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


@dataclasses.dataclass(frozen=True)
class Reading:
    """What a model's output says: whether it opened a call, the call's expression when it
    parses, its value, and a format error otherwise."""

    called: bool
    expression: str | None = None
    value: Fraction | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.called and self.error is None


def read_output(output: str, style: str = "short") -> Reading:
    """Read one model output. A call counts as emitted when the output starts with the call's
    opener (``[`` or ``<tool_call>``); it is valid when the whole call is there and its
    expression parses and evaluates."""
    text = output.strip()
    opener = OPENERS[0] if style == "short" else OPENERS[1]
    if not text.startswith(opener):
        return Reading(called=False)
    match = (SHORT if style == "short" else LONG).match(text)
    if not match:
        return Reading(called=True, error="truncated or malformed call")
    expr = match.group(1)
    try:
        return Reading(called=True, expression=expr, value=evaluate_expression(expr))
    except ToolError as err:
        return Reading(called=True, expression=expr, error=str(err))


def call_text(expression: str, style: str = "short") -> str:
    """The call a model should emit for an expression."""
    return f"[{expression}]" if style == "short" else f"<tool_call>calculator({expression})</tool_call>"
