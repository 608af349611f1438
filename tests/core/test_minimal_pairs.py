"""The minimal-pair task: its family design on the organism's held-out pairs, encoding on the
character tokenizer, and the metric's position."""
import pandas as pd
import pytest
import torch

from mechlib.core import minimal_pairs as mp
from mechlib.core.char_tokenizer import build_char_tokenizer
from mechlib.core.organism import OrganismRecipe, split_pairs


@pytest.fixture(scope="module")
def pairs():
    return mp.minimal_pairs(mp.PairConfig(n_pairs=40), OrganismRecipe())


def test_minimal_pairs_follow_their_family_design(pairs):
    held = {tuple(p) for p in split_pairs(OrganismRecipe())[1].tolist()}
    assert set(pairs.family) == set(mp.FAMILIES) and (pairs.groupby("family").size() == 40).all()
    assert all((a, b) in held for a, b in zip(pairs.a, pairs.b))  # clean problems were never trained on
    assert (pairs.a >= 10).all() and (pairs.b >= 10).all() and (pairs.answer <= 99).all() and (pairs.answer_corrupt <= 99).all()
    assert (pairs.answer_corrupt == pairs.a_corrupt + pairs.b_corrupt).all()
    on_a = pairs.route == "a"
    assert (pairs.b[on_a] == pairs.b_corrupt[on_a]).all() and (pairs.a[~on_a] == pairs.a_corrupt[~on_a]).all()
    assert on_a.any() and (~on_a).any()  # both routes are in the mix
    x, x2 = pairs.a.where(on_a, pairs.b), pairs.a_corrupt.where(on_a, pairs.b_corrupt)  # the corrupted operand
    units = x // 10 == x2 // 10
    tens = x % 10 == x2 % 10
    assert (units ^ tens).all()  # exactly one digit of one operand changes
    fam = pairs.family
    assert units[fam.str.startswith("units") | (fam == "carry_flip")].all() and tens[fam.str.startswith("tens")].all()
    assert (~pairs.carry & ~pairs.carry_corrupt)[fam.str.endswith("nocarry")].all()
    assert (pairs.carry & pairs.carry_corrupt)[fam.isin(["units_carry", "tens_carry"])].all()
    assert (pairs.carry != pairs.carry_corrupt)[fam == "carry_flip"].all()
    assert set(pairs.split) == {"discovery", "test"}


def test_encoding_reads_each_family_at_its_answer_digit(pairs):
    tok = build_char_tokenizer()
    enc, clean, corrupt = mp.encode_pairs(pairs, tok, "bare")
    assert len(enc) == len(pairs) and clean.shape == corrupt.shape == (len(pairs), 9)
    labels = mp.position_labels(tok, "bare", clean.shape[1])
    assert labels == ["BOS", "1:a₁", "2:a₀", "3:+", "4:b₁", "5:b₀", "6:=", "7:s₁", "8:s₀"]
    at = dict(zip(enc.family, enc.position))
    assert at["units_nocarry"] == at["units_carry"] == 7 and at["tens_nocarry"] == at["tens_carry"] == at["carry_flip"] == 6
    row = enc.iloc[0]
    digit = str(row.answer)[mp.ANSWER_DIGIT[row.family]]
    assert tok.decode([int(row.token)]) == digit and clean[0, row.position + 1].item() == row.token
    # the corrupted sequence differs from the clean one only in the changed operand digit
    assert ((clean != corrupt).sum(1) == 1).all()
    # the carry_flip answers differ by one in the tens digit
    flip = enc[enc.family == "carry_flip"]
    assert (abs(flip.answer // 10 - flip.answer_corrupt // 10) == 1).all()


def test_metric_and_accuracy_read_the_right_position():
    pairs = pd.DataFrame({"position": [1, 2], "token": [3, 4], "token_corrupt": [5, 6]})
    logits = torch.zeros((2, 4, 8))
    logits[0, 1, 3], logits[0, 1, 5] = 2.0, 0.5
    logits[1, 2, 6] = 1.0
    task = mp.pair_task(pairs, torch.zeros((2, 4), dtype=torch.long), torch.zeros((2, 4), dtype=torch.long))
    assert task.metric(logits).tolist() == [1.5, -1.0]
    assert mp.correct(logits, pairs).tolist() == [True, False]




def test_a_pair_config_refuses_an_unknown_family():
    with pytest.raises(ValueError, match="families.*borrow"):
        mp.PairConfig(families=("units_carry", "borrow"))


def test_the_halves_share_no_clean_problem_in_either_operand_order(pairs):
    problem = [(min(a, b), max(a, b)) for a, b in zip(pairs.a, pairs.b)]
    sides = pd.DataFrame({"problem": problem, "split": pairs.split}).groupby("problem").split.nunique()
    assert (sides == 1).all()  # every clean problem, in every family, on one side only
    assert 0.35 < (pairs.split == "discovery").mean() < 0.65
