import pytest

from mechlib.core.taxonomy import ERROR_CLASSES, classify, parse_answer


@pytest.mark.parametrize(
    "text,value",
    [("46", 46), (" 56\n", 56), ("-7", -7), (" 1,234.", 1234), ("12 apples", 12), ("", None), ("=4", None), ("abc", None), ("1,23", None), ("46, and", 46)],
)
def test_parse_answer(text, value):
    assert parse_answer(text) == value


@pytest.mark.parametrize(
    "a,op,b,pred,cls",
    [
        (12, "+", 34, 46, "correct"),
        (12, "+", 34, None, "malformed"),
        (12, "+", 34, 34, "copies_operand"),
        (57, "-", 23, 80, "wrong_operation"),  # added instead of subtracting
        (7, "*", 8, 15, "wrong_operation"),
        (12, "+", 34, 47, "off_by_small"),
        (48, "+", 37, 75, "carry_slip"),  # dropped the carry: 85 -> 75
        (480, "+", 370, 950, "carry_slip"),  # off by 100
        (12, "+", 34, 58, "right_length"),
        (12, "+", 34, 580, "wrong_length"),
    ],
)
def test_classify(a, op, b, pred, cls):
    assert cls in ERROR_CLASSES
    assert classify(a, op, b, pred) == cls
