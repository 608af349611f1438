"""Chapter 5's pieces without a trained model: parameters, the minimal-pair design, encoding on
the organism's tokenizer, roles and the glue helpers."""
import json

import numpy as np
import pandas as pd
import pytest

from mechlib.chapters import circuits
from mechlib.chapters.base import ParamError
from mechlib.core.faithfulness import edge_study
from mechlib.core.minimal_pairs import minimal_pairs, pair_pool_sizes
from mechlib.core.organism import OrganismRecipe
from mechlib.core.pair_patching import pair_study
from mechlib.views import circuit_views
from mechlib.views.real_circuit_views import REAL_KEYS


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


def test_roles_compare_columns_not_head_indices():
    roles = pd.DataFrame({"family": ["units_carry", "tens_nocarry", "carry_flip"], "digits_read": ["b₀", "a₁ b₁", "none"]})
    assert circuits.role_signature(roles) == {"units_carry": "units column", "tens_nocarry": "tens column",
                                              "carry_flip": "no operand digit"}


def test_findings_fill_every_part_2_key_even_without_pairs():
    """A run without minimal pairs still fills every glue name the page uses (as n/a)."""
    empty = pd.DataFrame()
    result = circuits.Result(params=circuits.Params(families=()), truth=empty, scores=empty, roc=empty, pairs=empty,
                             baseline=empty, residual=empty, nodes=empty, attention=empty, edges=empty, faithfulness=empty,
                             circuit={}, roles=empty, positions=[], timings={}, seed_circuits=empty)
    found = circuits.findings(result)
    assert set(circuits.PART2_KEYS) <= set(found) and found["verdict"].startswith("n/a")
    assert np.isnan(found["auroc_eap_zero"]) and found["truth_matches"].startswith("n/a")
    assert all(found[k].startswith("Not measured") for k in REAL_KEYS)  # part 3 ran no model


def test_duplicate_or_main_organism_seeds_and_oversized_pair_counts_are_refused_up_front():
    with pytest.raises(ParamError, match="'organism_seeds'.*more than once"):
        circuits.Params(organism_seeds=(1, 1))
    with pytest.raises(ParamError, match="'organism_seeds'.*seed 0 is the chapter's own organism"):
        circuits.Params(organism_seeds=(0, 2))
    sizes = pair_pool_sizes(circuits.Params().families, OrganismRecipe())
    with pytest.raises(ParamError, match=f"'n_pairs'.*2000 pairs per family asked.*use n_pairs <= {min(sizes.values())}"):
        circuits.check(circuits.Params(n_pairs=2000, organism_seeds=(), programs=()))
    pairs = minimal_pairs(circuits.Params(n_pairs=min(sizes.values()), organism_seeds=()).pairs(), OrganismRecipe())
    assert (pairs.groupby("family").size() == min(sizes.values())).all()  # the largest allowed n is met in every family


def test_the_faithfulness_verdict_can_say_no(tiny_gpt2_dir):
    """With one edge asked for and a 100% threshold, the whole graph (always on the curve)
    must not be named the circuit: the verdict says no, at the largest size asked."""
    from mechlib.core.models import load_model

    params = circuits.Params(model=str(tiny_gpt2_dir), device="cpu", programs=(), families=("units_nocarry", "tens_nocarry"),
                             n_pairs=8, top_k=(1,), faithful_share=1.0, organism_seeds=(), edge_scores="eap")
    model, tok = load_model(str(tiny_gpt2_dir), device="cpu")
    study = pair_study(params.pairs(), params.ablation, model, tok, None)
    _, curve, circuit = edge_study(params.faithfulness(), model, study)
    assert curve.k.max() == circuit["n_edges"]  # the reference point is drawn
    assert not circuit["found"] and circuit["k"] == 1 and circuit["recovered"] < 1.0


def test_the_faithfulness_verdict_names_where_the_size_was_chosen_and_judged():
    c = {"k": 20, "recovered": 0.79, "recovered_lo": 0.76, "recovered_hi": 0.82, "found": False, "reached_on_discovery": True}
    assert circuit_views.faithful_verdict(c, 0.8).startswith("no: the smallest top-k that reaches 80% on the discovery half (20 edges)")
    assert circuit_views.faithful_verdict({**c, "reached_on_discovery": False}, 0.8).startswith("no: even 20 edges, the largest size")
    assert circuit_views.faithful_verdict({**c, "recovered": 0.85, "found": True}, 0.8).startswith("yes: 20 edges recover 85%")
