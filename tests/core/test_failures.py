"""Where answers fail: carries, operand order, answer length, first wrong place, on answers
the tests write by hand."""
import pandas as pd

from mechlib.core import data, failures
from mechlib.core.evaluate import score_answers


def scored(rows: list[tuple[int, str, int, str]]) -> pd.DataFrame:
    """Problems (a, op, b) answered by the given text."""
    problems = pd.DataFrame([data.problem_row(a, op, b, "bare") for a, op, b, _ in rows])
    return score_answers(problems, [text for *_, text in rows])


def test_carry_groups_separate_cascades_from_independent_carries():
    assert failures.carry_group(12, 34, data.count_carries(12, "+", 34)) == "no carry"
    assert failures.carry_group(15, 7, data.count_carries(15, "+", 7)) == "one carry"
    assert failures.carry_group(55, 55, data.count_carries(55, "+", 55)) == "two or more, none cascading"
    assert failures.carry_group(99, 1, data.count_carries(99, "+", 1)) == "cascading"
    table = failures.carry_table(scored([(12, "+", 34, "46"), (15, "+", 7, "21"), (99, "+", 1, "100"), (91, "+", 9, "90"), (7, "*", 8, "56")]))
    assert set(table.carry) == {"no carry", "one carry", "cascading"}  # multiplication is left out
    cascade = table[table.carry == "cascading"].iloc[0]
    assert (cascade.n, cascade.k) == (2, 1)
    keys = [(d, failures.CARRY_GROUPS.index(c)) for d, c in zip(table.difficulty, table.carry)]
    assert keys == sorted(keys)  # by difficulty, then carry groups in their stated order


def test_operand_order_and_answer_length():
    results = scored([(12, "+", 3, "15"), (45, "+", 6, "51"), (3, "+", 12, "14"), (6, "+", 45, "50"), (2, "+", 3, "5")])
    order = failures.order_table(results).set_index("order")
    assert order.loc["longer operand first", "accuracy"] == 1.0 and order.loc["shorter operand first", "accuracy"] == 0.0
    assert order["n"].sum() == 4  # 2+3 has operands of one length
    length = failures.length_table(results).set_index("answer_digits")
    assert length.loc[1, "n"] == 1 and length.loc[2, "n"] == 4 and length.loc[2, "k"] == 2


def test_first_wrong_place_reads_digits_by_place_value():
    assert failures.first_wrong_place(46, 56) == "tens"
    assert failures.first_wrong_place(46, 47) == "ones"
    assert failures.first_wrong_place(107, 17) == "hundreds"  # a missing digit is a wrong one
    assert failures.first_wrong_place(46, 460) == "hundreds"
    assert failures.first_wrong_place(123456, 23456) == "ten-thousands or more"
    assert failures.first_wrong_place(46, 46) is None and failures.first_wrong_place(4, -4) is None
    table = failures.first_error_table(scored([(12, "+", 34, "56"), (12, "+", 34, "47"), (12, "+", 34, "45"), (12, "+", 34, "46"),
                                              (12, "+", 34, "twelve")]))
    shares = table.set_index("place")
    assert shares.loc["ones", "k"] == 2 and shares.loc["tens", "k"] == 1 and (table.n == 3).all()  # right and non-numbers left out
    assert abs(table.share.sum() - 1) < 1e-9
