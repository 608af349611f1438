"""The sources' claims about pretrained models' arithmetic, as verdicts computed from scored
answers (:func:`~mechlib.core.evaluate.evaluate` output, one model and one prompt format).

The claims, as the project's sources state them about GPT-2 small:

1. "does not perform multi-digit arithmetic";
2. "copies the numbers";
3. "predicts formats, not answers".

Each function returns the numbers, the verdict (``holds``, ``false`` or ``unclear``) and the
rule it applied, with its thresholds, so a page can print the rule beside the verdict. All
intervals are Wilson 95% intervals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import n_digits
from .stats import proportion

# 1. A cell "performs" when its accuracy is credibly above this; "does not" when credibly below.
NEAR_ZERO = 0.05
MULTI_DIGIT = ("2x2", "3x3")
# 2. Copying is "the" failure when most wrong answers copy: credibly above this share.
MOST = 0.5
COPY_CLASSES = ("copies_operand", "echoes_expression")
# 3. Formats, not answers: answers credibly well-formed this often, credibly right at most this often.
WELL_FORMED = 0.8
RARELY_RIGHT = 0.2
NOT_A_NUMBER = ("empty", "echoes_expression", "format_only")
RULES = {
    "no_multi_digit": (f"holds for an operator when every multi-digit cell ({', '.join(MULTI_DIGIT)}) has a 95% upper bound "
                       f"below {NEAR_ZERO:.0%}; false when any has a lower bound above {NEAR_ZERO:.0%}; overall false if false "
                       "for any operator"),
    "copies_numbers": (f"holds when the share of wrong answers that copy an operand or restate the problem has a 95% lower "
                       f"bound above {MOST:.0%}; false when its upper bound is below {MOST:.0%}"),
    "formats_not_answers": (f"holds when the well-formed rate's 95% lower bound is above {WELL_FORMED:.0%} and the accuracy's "
                            f"upper bound is below {RARELY_RIGHT:.0%}; false when the well-formed rate's upper bound is below "
                            f"{WELL_FORMED:.0%} or the accuracy's lower bound is above {RARELY_RIGHT:.0%}"),
}


def interval_verdict(lo: float, hi: float, threshold: float, holds_below: bool) -> str:
    """holds / false / unclear from an interval against a threshold."""
    below, above = hi < threshold, lo > threshold
    if holds_below:
        return "holds" if below else "false" if above else "unclear"
    return "holds" if above else "false" if below else "unclear"


def no_multi_digit(results: pd.DataFrame) -> dict:
    """Claim 1, per operator: every multi-digit cell's accuracy credibly below NEAR_ZERO
    (holds), some multi-digit cell credibly above it (false), else unclear; 1x1 beside it."""
    rows = []
    for op, group in results.groupby("op", sort=False):
        one = proportion(group.loc[group.difficulty == "1x1", "correct"])
        cells = [(d, proportion(group.loc[group.difficulty == d, "correct"])) for d in MULTI_DIGIT if (group.difficulty == d).any()]
        if not cells:
            continue
        verdicts = [interval_verdict(s["lo"], s["hi"], NEAR_ZERO, holds_below=True) for _, s in cells]
        verdict = "false" if "false" in verdicts else "holds" if all(v == "holds" for v in verdicts) else "unclear"
        rows.append({"op": op, "verdict": verdict, "one_digit": one["p"], "one_digit_n": one["n"],
                     **{f"acc_{d}": s["p"] for d, s in cells}, **{f"lo_{d}": s["lo"] for d, s in cells},
                     **{f"hi_{d}": s["hi"] for d, s in cells}, **{f"n_{d}": s["n"] for d, s in cells}})
    table = pd.DataFrame(rows)
    overall = "false" if (table.verdict == "false").any() else "holds" if (table.verdict == "holds").all() else "unclear"
    return {"verdict": overall, "by_op": table, "rule": RULES["no_multi_digit"]}


def copy_chance(a: int, b: int, pred: int) -> float:
    """The chance that a random number with ``pred``'s digit count equals an operand."""
    digits = n_digits(pred)
    size = 10 if digits == 1 else 9 * 10 ** (digits - 1)
    return len({x for x in (a, b) if n_digits(x) == digits and (x < 0) == (pred < 0)}) / size


def copies_numbers(results: pd.DataFrame) -> dict:
    """Claim 2: the share of wrong answers that copy an operand or echo the expression
    (first class or listed in ``also``), against what random numbers of the same length
    would give. Holds when credibly above MOST, false when credibly below."""
    wrong = results[~results.correct]
    also = wrong["also"].fillna("").str.split(", ")
    copied = np.array([e in COPY_CLASSES or any(c in COPY_CLASSES for c in more) for e, more in zip(wrong.error, also)], dtype=bool)
    stat = proportion(copied)
    numbered = wrong[wrong.pred.notna()]
    chance = float(np.mean([copy_chance(int(a), int(b), int(p)) for a, b, p in zip(numbered.a, numbered.b, numbered.pred)])) \
        if len(numbered) else float("nan")
    return {"verdict": interval_verdict(stat["lo"], stat["hi"], MOST, holds_below=False) if stat["n"] else "unclear",
            "share": stat["p"], "lo": stat["lo"], "hi": stat["hi"], "n_wrong": stat["n"], "chance": chance, "rule": RULES["copies_numbers"]}


def formats_not_answers(results: pd.DataFrame) -> dict:
    """Claim 3: answers well-formed (a number first) credibly at least WELL_FORMED of the
    time while credibly right at most RARELY_RIGHT of the time (holds); false when either
    is credibly on the other side."""
    formed = proportion(~results.error.isin(NOT_A_NUMBER))
    right = proportion(results.correct)
    if formed["lo"] > WELL_FORMED and right["hi"] < RARELY_RIGHT:
        verdict = "holds"
    elif formed["hi"] < WELL_FORMED or right["lo"] > RARELY_RIGHT:
        verdict = "false"
    else:
        verdict = "unclear"
    return {"verdict": verdict, "well_formed": formed["p"], "formed_lo": formed["lo"], "formed_hi": formed["hi"],
            "accuracy": right["p"], "acc_lo": right["lo"], "acc_hi": right["hi"], "n": right["n"], "rule": RULES["formats_not_answers"]}
