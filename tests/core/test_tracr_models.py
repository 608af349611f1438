"""tracr programs as HookedTransformers: they match the RASP evaluator, and their ground truth holds."""
import numpy as np
import pytest
import torch

from mechlib.core import circuit_graph as cg
from mechlib.core import tracr_models as tm
from mechlib.core.circuit_eval import auroc

PROGRAMS = ["frac_prevs", "reverse", "sort", "hist", "sort_freq", "length"]


@pytest.fixture(scope="module")
def compiled():
    torch.set_num_threads(1)
    return {name: tm.compile_program(name, max_seq_len=5) for name in PROGRAMS}


@pytest.mark.parametrize("name", PROGRAMS)
def test_converted_models_match_the_rasp_evaluator_on_padded_inputs(compiled, name):
    m = compiled[name]
    inputs = m.random_inputs(60, seed=1, min_len=1)
    ids, mask = m.encode(inputs)
    assert (mask.sum(1) - 1).tolist() == [len(x) for x in inputs] and len(set(mask.sum(1).tolist())) > 1
    ablated = cg.ablated_outputs(m.model, ids, mask, "zero")
    with torch.no_grad():
        logits = cg.run_ablated(m.model, ids, mask, ablated, torch.zeros(cg.graph_of(m.model).allowed.shape))
    got, ref = m.decode(logits, mask), m.evaluate(inputs)
    assert all(m.same(o, r, tol=1e-4) for o, r in zip(got, ref))


def test_the_weights_are_tracrs_own(compiled):
    """The same residual-space embedding and output projection as tracr's assembled model."""
    from tracr.compiler import compiling
    from tracr.rasp import rasp

    m = compiled["hist"]
    assembled = compiling.compile_rasp_to_model(m.program, vocab=set(m.vocab), max_seq_len=5, compiler_bos=tm.BOS)
    out = assembled.apply([tm.BOS, "a", "b", "b"])
    ids, mask = m.encode([["a", "b", "b"]])
    with torch.no_grad():
        resid = m.model.run_with_cache(ids)[1]["blocks.0.hook_resid_pre"][0, :4]
    assert np.allclose(resid.numpy(), np.asarray(out.input_embeddings[0]), atol=1e-6)
    assert out.decoded[1:] == rasp.evaluate(m.program, ["a", "b", "b"])


@pytest.mark.parametrize("name", ["reverse", "sort_freq"])
def test_non_circuit_edges_have_exactly_zero_effect_and_the_circuit_is_needed(compiled, name):
    m = compiled[name]
    task = tm.task(m, 40, seed=2)
    g = cg.graph_of(m.model)
    truth = tm.true_edges(m)
    assert 0 < truth.sum() < g.allowed.sum() and not (truth & ~g.allowed).any()
    for how in cg.ABLATIONS:
        ablated = task.ablated(m.model, how)
        with torch.no_grad():
            clean = cg.run_ablated(m.model, task.tokens, task.mask, ablated, torch.zeros(g.allowed.shape))
            off = torch.tensor(g.allowed & ~truth, dtype=torch.float32)  # every non-circuit edge at once
            out = cg.run_ablated(m.model, task.tokens, task.mask, ablated, off)
        real = task.mask.bool()[:, :, None]
        assert ((out - clean).abs() * real).max().item() == 0.0
    zero = task.ablated(m.model, "zero")
    with torch.no_grad():
        broken = cg.run_ablated(m.model, task.tokens, task.mask, zero, torch.tensor(truth, dtype=torch.float32))
    ref = m.evaluate(m.inputs_of(task.tokens, task.mask))
    assert np.mean([m.same(o, r) for o, r in zip(m.decode(broken, task.mask), ref)]) < 0.5


def test_exact_zero_patching_finds_the_truth_and_resample_finds_the_varying_part(compiled):
    m = compiled["sort"]
    task = tm.task(m, 60, seed=3)
    g = cg.graph_of(m.model)
    truth = g.edge_values(tm.true_edges(m))
    varying = g.edge_values(tm.varying_edges(m, task))
    assert varying.sum() < truth.sum() and not (varying & ~truth).any()
    assert auroc(cg.exact_edge_scores(m.model, task, "zero")[0], truth) == pytest.approx(1.0)
    resample = cg.exact_edge_scores(m.model, task, "resample")[0]
    among = ~truth | varying
    assert auroc(resample[among], varying[among]) == pytest.approx(1.0)
    assert auroc(resample, truth) < 0.95  # constant-signal circuit edges are invisible to resampling


def test_only_parameters_are_set_and_buffers_keep_transformer_lens_defaults(compiled):
    attn = compiled["reverse"].model.blocks[0].attn
    assert torch.isinf(attn.IGNORE) and attn.IGNORE < 0


def test_unknown_program_and_bad_input_fail_clearly(compiled):
    with pytest.raises(ValueError, match="tracr program 'nope' is not one of"):
        tm.compile_program("nope")
    with pytest.raises(ValueError, match="has length 7; allowed 1 to 5"):
        compiled["hist"].encode([["a"] * 7])
