"""Asking an instruction-tuned model in its own chat template, and reading the answer out of
its reply.

A chat reply is prose (``"3 + 8 = 11"``, ``"9 times 9 is 81."``, ``"To solve this problem,
we need..."``), not a completion that starts with the answer, so it gets its own reading
rule (:data:`RULE`), applied by :func:`reply_answer` and tested on hand-made replies.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from .data import OP_WORDS
from .taxonomy import classify_all

REQUEST = "What is {a} {word} {b}? Answer with the number only."
RULE = ("the answer is the first number that directly follows '=', 'equals', 'is', 'gives', 'gives you' or 'gives us' "
        "(a quote mark between them allowed); a reply with no such number has no answer")
_ANSWER = re.compile(r"(?:=|\bequals\b|\bis\b|\bgives(?:\s+(?:you|us))?\b)\s*[\"'“‘]?\s*(-?\d(?:[\d,]*\d)?)", re.IGNORECASE)


def has_chat(tokenizer) -> bool:
    """Does the model ship a chat template (an instruction-tuned release)?"""
    return bool(getattr(tokenizer, "chat_template", None))


def request(a: int, op: str, b: int) -> str:
    """The user's message for one problem."""
    return REQUEST.format(a=a, word=OP_WORDS[op], b=b)


def chat_prompts(tokenizer, messages: Sequence[str]) -> list[str]:
    """Each message as the model's own chat template renders a one-turn conversation, ready
    for the assistant's reply (the template's default system prompt included)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False, add_generation_prompt=True) for m in messages]


def reply_answer(reply: str) -> int | None:
    """The answer a reply gives, by :data:`RULE`."""
    m = _ANSWER.search(reply or "")
    return int(m.group(1).replace(",", "")) if m else None


def score_replies(df: pd.DataFrame, replies: Sequence[str]) -> pd.DataFrame:
    """Attach the reply, the answer read from it, correctness and error class (as
    :func:`~mechlib.core.evaluate.score_answers` does for completions). A restated problem
    is not an echo here: the rule reads the result after it."""
    out = df.copy()
    out["output"] = list(replies)
    preds = [reply_answer(t) for t in replies]
    out["pred"] = pd.array(preds, dtype="Int64")
    fits = [["empty"] if not t.strip() else classify_all(a, op, b, p) for a, op, b, p, t in zip(out["a"], out["op"], out["b"], preds, replies)]
    out["error"] = [f[0] for f in fits]
    out["also"] = [", ".join(c for c in f[1:] if c not in ("right_length", "wrong_length")) for f in fits]
    out["correct"] = out["error"] == "correct"
    return out
