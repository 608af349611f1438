"""The sources' claims as verdicts, on answers the tests write by hand."""
import pandas as pd
import pytest

from mechlib.core import claims, data
from mechlib.core.evaluate import score_answers


def scored(op: str, difficulty: str, n: int, answer) -> pd.DataFrame:
    """n problems of one cell, each answered by ``answer(a, b, right)`` (a string)."""
    problems = data.make_problems([op], [difficulty], n, seed=0).to_pandas()
    outputs = [answer(a, b, r) for a, b, r in zip(problems.a, problems.b, problems.answer)]
    return score_answers(problems, outputs)


def right(a, b, r):
    return str(r)


def copy_a(a, b, r):
    return str(a) if a != r else str(a + 1)


def test_multi_digit_claim_holds_fails_or_stays_unclear_by_the_stated_rule():
    never = pd.concat([scored("+", "1x1", 100, right), scored("+", "2x2", 200, copy_a), scored("+", "3x3", 200, copy_a)])
    result = claims.no_multi_digit(never)
    assert result["verdict"] == "holds" and result["by_op"].one_digit.iloc[0] == 1.0
    half = scored("+", "2x2", 200, lambda a, b, r: right(a, b, r) if a % 2 else copy_a(a, b, r))
    assert claims.no_multi_digit(pd.concat([never[never.difficulty != "2x2"], half]))["verdict"] == "false"
    few = scored("+", "2x2", 40, lambda a, b, r: right(a, b, r) if a < 13 else copy_a(a, b, r))  # ~3 of 40 right
    assert claims.no_multi_digit(pd.concat([never[never.difficulty == "1x1"], few]))["verdict"] == "unclear"
    assert "5%" in result["rule"]


def test_copying_is_measured_against_chance_and_counts_echoes():
    copies = scored("+", "2x2", 200, copy_a)
    result = claims.copies_numbers(copies)
    assert result["verdict"] == "holds" and result["share"] == 1.0 and result["chance"] == pytest.approx(2 / 90, rel=0.01)  # both operands have 2 digits
    echoes = claims.copies_numbers(scored("*", "2x2", 100, lambda a, b, r: f"{a} times {b}"))
    assert echoes["verdict"] == "holds" and echoes["share"] == 1.0
    off = claims.copies_numbers(scored("+", "2x2", 200, lambda a, b, r: str(r + 2)))
    assert off["verdict"] == "false" and off["share"] == 0.0


def test_formats_not_answers_needs_well_formed_and_wrong():
    assert claims.formats_not_answers(scored("+", "2x2", 200, copy_a))["verdict"] == "holds"
    assert claims.formats_not_answers(scored("+", "2x2", 200, right))["verdict"] == "false"
    words = claims.formats_not_answers(scored("+", "2x2", 200, lambda a, b, r: "The answer is"))
    assert words["verdict"] == "false" and words["well_formed"] == 0.0


def test_copy_chance_counts_operands_of_the_answers_length():
    assert claims.copy_chance(12, 34, 56) == pytest.approx(2 / 90)
    assert claims.copy_chance(12, 3, 56) == pytest.approx(1 / 90)
    assert claims.copy_chance(3, 4, 5) == pytest.approx(2 / 10)
    assert claims.copy_chance(12, 34, -5) == 0.0
