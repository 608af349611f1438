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
        (12, "+", 34, None, "format_only"),
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


@pytest.mark.parametrize(
    "a,op,b,pred,cls,also",
    [
        (60, "*", 1, 62, "near_wrong_operation", {"off_by_small"}),  # the sum (61) + 1, not "near 60"
        (6, "*", 0, 6, "wrong_operation", {"copies_operand"}),  # 6 + 0 = 6: the operation wins, the copy is listed
        (9, "-", 6, 14, "near_wrong_operation", set()),  # the sum minus one
        (8, "-", 8, 15, "near_wrong_operation", set()),
        (9, "*", 7, 15, "near_wrong_operation", set()),
        (2, "*", 2, 4, "correct", set()),  # the sum equals the product: right, not another operation
        (2, "*", 2, 5, "off_by_small", set()),  # 4 + 1, but the sum is the answer, so no other operation
        (12, "+", 34, 34, "copies_operand", set()),
    ],
)
def test_reviewed_cases_and_what_else_fits(a, op, b, pred, cls, also):
    from mechlib.core.taxonomy import classify_all

    fits = classify_all(a, op, b, pred)
    assert fits[0] == cls
    assert also <= set(fits[1:])
    assert fits[-1] in ("right_length", "wrong_length", "correct", "format_only") or fits[-1] == cls


@pytest.mark.parametrize(
    "a,op,b,text,cls,also",
    [
        (26, "+", 92, "", "empty", set()),
        (26, "+", 92, "  ", "empty", set()),
        (26, "+", 92, "26+92", "echoes_expression", {"copies_operand"}),  # its leading number is an operand
        (26, "+", 92, " 92 + 26 = 118", "echoes_expression", {"copies_operand"}),  # either order
        (34, "*", 6, "34 times 6", "echoes_expression", {"copies_operand"}),
        (34, "*", 6, "34 x 6 is", "echoes_expression", set()),
        (57, "-", 23, "57 minus 23", "echoes_expression", set()),
        (5, "+", 0, "5+0", "echoes_expression", set()),  # starts with the right number, but restates the problem
        (26, "+", 92, "26+921", "copies_operand", set()),  # 921 is not the operand 92: no echo
        (26, "+", 92, "The answer is", "format_only", set()),
        (26, "+", 92, "=118", "format_only", set()),
        (26, "+", 92, "118", "correct", set()),
        (26, "+", 92, "26", "copies_operand", set()),
        (7, "*", 8, "15", "wrong_operation", set()),
    ],
)
def test_answer_text_classes_come_first(a, op, b, text, cls, also):
    from mechlib.core.taxonomy import classify_all

    fits = classify_all(a, op, b, parse_answer(text), text)
    assert fits[0] == cls and cls in ERROR_CLASSES
    assert also <= set(fits[1:])


def test_copy_rate_baseline():
    import pandas as pd

    from mechlib.core.evaluate import baseline_rates

    df = pd.DataFrame({"a": [3, 5], "op": ["-", "-"], "b": [1, 2], "answer": [2, 3]})
    rates = baseline_rates(df)
    assert rates["copy_a"] == 0.0 and rates["sum"] == 0.0
