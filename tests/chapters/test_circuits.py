"""Chapter 5's pieces without a trained model: parameters, the minimal-pair design, encoding on
the organism's tokenizer, roles and the glue helpers."""
import json

import numpy as np
import pandas as pd
import pytest

from mechlib.chapters import circuits
from mechlib.chapters.base import ParamError
from mechlib.core.char_tokenizer import build_char_tokenizer
from mechlib.core.organism import OrganismRecipe, split_pairs


def test_parameters_fail_fast_naming_the_field():
    with pytest.raises(ParamError, match="'programs'.*tracr programs from"):
        circuits.Params(programs=("frac_prevs", "nope"))
    with pytest.raises(ParamError, match="'families'"):
        circuits.Params(families=("units_nocarry", "borrow"))
    with pytest.raises(ParamError, match="'programs'.*at least one tracr program or one minimal-pair family"):
        circuits.Params(programs=(), families=())
    with pytest.raises(ParamError, match="'edge_scores'"):
        circuits.Params(edge_scores="acdc")
    assert circuits.Params(programs=()).families  # either part alone is allowed


def test_exact_patching_is_refused_on_a_model_with_too_many_edges(tmp_path):
    config = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
    (tmp_path / "config.json").write_text(json.dumps(config))
    params = circuits.Params(model=str(tmp_path), device="cpu", programs=())
    with pytest.raises(ParamError, match="'edge_scores'.*more than 5000 for exact patching.*eap-ig"):
        circuits.check(params)


@pytest.fixture(scope="module")
def pairs():
    return circuits.minimal_pairs(circuits.Params(n_pairs=40), OrganismRecipe())


def test_minimal_pairs_follow_their_family_design(pairs):
    held = {tuple(p) for p in split_pairs(OrganismRecipe())[1].tolist()}
    assert set(pairs.family) == set(circuits.FAMILIES) and (pairs.groupby("family").size() == 40).all()
    assert all((a, b) in held for a, b in zip(pairs.a, pairs.b))  # clean problems were never trained on
    assert (pairs.a >= 10).all() and (pairs.b >= 10).all() and (pairs.answer <= 99).all() and (pairs.answer_corrupt <= 99).all()
    units = pairs.a // 10 == pairs.a_corrupt // 10
    tens = pairs.a % 10 == pairs.a_corrupt % 10
    assert (units ^ tens).all()  # exactly one digit of a changes
    fam = pairs.family
    assert units[fam.str.startswith("units") | (fam == "carry_flip")].all() and tens[fam.str.startswith("tens")].all()
    assert (~pairs.carry & ~pairs.carry_corrupt)[fam.str.endswith("nocarry")].all()
    assert (pairs.carry & pairs.carry_corrupt)[fam.isin(["units_carry", "tens_carry"])].all()
    assert (pairs.carry != pairs.carry_corrupt)[fam == "carry_flip"].all()
    assert set(pairs.split) == {"discovery", "test"}


def test_encoding_reads_each_family_at_its_answer_digit(pairs):
    tok = build_char_tokenizer()
    enc, clean, corrupt = circuits.encode_pairs(pairs, tok, "bare")
    assert len(enc) == len(pairs) and clean.shape == corrupt.shape == (len(pairs), 9)
    labels = circuits.position_labels(tok, "bare", clean.shape[1])
    assert labels == ["BOS", "1:a₁", "2:a₀", "3:+", "4:b₁", "5:b₀", "6:=", "7:s₁", "8:s₀"]
    at = dict(zip(enc.family, enc.position))
    assert at["units_nocarry"] == at["units_carry"] == 7 and at["tens_nocarry"] == at["tens_carry"] == at["carry_flip"] == 6
    row = enc.iloc[0]
    digit = str(row.answer)[circuits.ANSWER_DIGIT[row.family]]
    assert tok.decode([int(row.token)]) == digit and clean[0, row.position + 1].item() == row.token
    # the corrupted sequence differs from the clean one only in the changed operand digit
    assert ((clean != corrupt).sum(1) == 1).all()
    # the carry_flip answers differ by one in the tens digit
    flip = enc[enc.family == "carry_flip"]
    assert (abs(flip.answer // 10 - flip.answer_corrupt // 10) == 1).all()


def test_metric_and_accuracy_read_the_right_position():
    import torch

    pairs = pd.DataFrame({"position": [1, 2], "token": [3, 4], "token_corrupt": [5, 6]})
    logits = torch.zeros((2, 4, 8))
    logits[0, 1, 3], logits[0, 1, 5] = 2.0, 0.5
    logits[1, 2, 6] = 1.0
    task = circuits.pair_task(pairs, torch.zeros((2, 4), dtype=torch.long), torch.zeros((2, 4), dtype=torch.long))
    assert task.metric(logits).tolist() == [1.5, -1.0]
    assert circuits.correct(logits, pairs).tolist() == [True, False]


def test_roles_compare_columns_not_head_indices():
    roles = pd.DataFrame({"family": ["units_carry", "tens_nocarry", "carry_flip"], "digits_read": ["b₀", "a₁ b₁", "none"]})
    assert circuits.role_signature(roles) == {"units_carry": "units column", "tens_nocarry": "tens column",
                                              "carry_flip": "no operand digit"}


def test_glue_helpers_never_produce_a_tuple_looking_list():
    assert circuits.and_list(["a", "b", "c"]) == "a, b and c" and circuits.and_list(["x"]) == "x" and circuits.and_list([]) == ""
    assert circuits.pct(-0.001) == "0%" and circuits.pct(0.456) == "46%" and circuits.pct(-0.2) == "-20%"
    assert np.isclose(circuits.FAITHFUL, 0.8)


def test_findings_fill_every_part_2_key_even_without_pairs():
    """A run without minimal pairs still fills every glue name the page uses (as n/a)."""
    empty = pd.DataFrame()
    result = circuits.Result(params=circuits.Params(families=()), truth=empty, scores=empty, roc=empty, pairs=empty,
                             baseline=empty, residual=empty, nodes=empty, attention=empty, edges=empty, faithfulness=empty,
                             circuit={}, roles=empty, positions=[], timings={}, seed_circuits=empty)
    found = circuits.findings(result)
    assert set(circuits.PART2_KEYS) <= set(found) and found["verdict"].startswith("n/a")
    assert np.isnan(found["auroc_eap_zero"]) and found["truth_matches"].startswith("n/a")


def test_duplicate_or_main_organism_seeds_and_oversized_pair_counts_are_refused_up_front():
    with pytest.raises(ParamError, match="'organism_seeds'.*listed more than once"):
        circuits.Params(organism_seeds=(1, 1))
    with pytest.raises(ParamError, match="'organism_seeds'.*seed 0 is the chapter's own organism"):
        circuits.Params(organism_seeds=(0, 2))
    sizes = circuits.pair_pool_sizes(circuits.Params().families, OrganismRecipe())
    with pytest.raises(ParamError, match=f"'n_pairs'.*2000 pairs per family asked.*use n_pairs <= {min(sizes.values())}"):
        circuits.check(circuits.Params(n_pairs=2000, organism_seeds=(), programs=()))
    pairs = circuits.minimal_pairs(circuits.Params(n_pairs=min(sizes.values()), organism_seeds=()), OrganismRecipe())
    assert (pairs.groupby("family").size() == min(sizes.values())).all()  # the largest allowed n is met in every family


def test_the_faithfulness_verdict_can_say_no(tiny_gpt2_dir):
    """With one edge asked for and a 100% threshold, the whole graph (always on the curve)
    must not be named the circuit: the verdict says no, at the largest size asked."""
    from mechlib.core.models import load_model

    params = circuits.Params(model=str(tiny_gpt2_dir), device="cpu", programs=(), families=("units_nocarry", "tens_nocarry"),
                             n_pairs=8, top_k=(1,), faithful_share=1.0, organism_seeds=(), edge_scores="eap")
    model, tok = load_model(str(tiny_gpt2_dir), device="cpu")
    study = circuits.organism_study(params, model, tok, None)
    _, curve, circuit = circuits.edge_study(params, model, study)
    assert curve.k.max() == circuit["n_edges"]  # the reference point is drawn
    assert not circuit["found"] and circuit["k"] == 1 and circuit["recovered"] < 1.0
