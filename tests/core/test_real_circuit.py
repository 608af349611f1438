"""Part 3's tools on small random Llama- and Gemma-shaped models with the real tokenizers:
the shared-prefix forward, node patching against hand-written hooks on a full forward,
EAP against finite differences, mean ablation, pairs, and the adder checks."""
import numpy as np
import pandas as pd
import pytest
import torch

from mechlib.core import adder_signature as sig
from mechlib.core import digit_pairs as dp
from mechlib.core import node_circuit as nc
from mechlib.core import node_patching as npch
from mechlib.core.models import load_model
from mechlib.core.prefixed import Prefixed
from mechlib.core.real_circuit import RealCircuitConfig, shots_for, study, table

SHOTS = "12+34=46\n5+61=66\n"


@pytest.fixture(scope="module", params=["llama", "gemma"])
def setup(request, llama_shaped_dir, gemma_shaped_dir):
    path = llama_shaped_dir if request.param == "llama" else gemma_shaped_dir
    model, _ = load_model(str(path), device="cpu")
    pool = set(table())
    pairs = dp.one_digit_pairs(pool, n_pairs=4, seed=0)
    prefix, pairs, clean, corrupt = dp.encode_pairs(model, SHOTS, pairs)
    p = npch.Pairs(clean, corrupt, torch.tensor(pairs.position.to_numpy()), torch.tensor(pairs.token.to_numpy()),
                   torch.tensor(pairs.token_corrupt.to_numpy()))
    pre = Prefixed(model, prefix)
    return model, prefix, pairs, p, pre


def full(prefix, suffix):
    return torch.cat([torch.tensor([prefix] * len(suffix), dtype=torch.long).view(len(suffix), -1), suffix], 1)


def test_prefixed_forward_matches_a_full_forward(setup):
    model, prefix, pairs, p, pre = setup
    with torch.no_grad():
        logits = model(full(prefix, p.clean))
        final = pre.residual(p.clean)
        rows = torch.arange(len(p.positions))
        at = logits[rows, len(prefix) + p.positions]
        torch.testing.assert_close(pre.logit_diff(final, p.positions, p.good, p.bad), at[rows, p.good] - at[rows, p.bad],
                                   atol=1e-4, rtol=1e-4)
        assert torch.equal(pre.top(final, p.positions, chunk=3), at.argmax(-1))


def test_node_patching_equals_hand_written_hooks_on_a_full_forward(setup):
    """A head sharing its key/value head with others (grouped queries), and an MLP."""
    model, prefix, pairs, p, pre = setup
    clean, corrupt = npch.activations(pre, p.clean, p), npch.activations(pre, p.corrupt, p)
    nodes = ["a1.3", "m1"]
    got = npch.exact_nodes(pre, p, clean, corrupt, nodes)
    n = len(prefix)
    _, store = model.run_with_cache(full(prefix, p.corrupt), names_filter=lambda x: x in {"blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"})
    rows = torch.arange(len(p.positions))
    for node in nodes:
        layer, name, head = npch.hook_of(node)

        def put(act, hook, name=name, head=head):
            act = act.clone()
            if head is None:
                act[:, n:] = store[name][:, n:]
            else:
                act[:, n:, head] = store[name][:, n:, head]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(full(prefix, p.clean), fwd_hooks=[(name, put)])
        at = logits[rows, n + p.positions]
        want = (at[rows, p.good] - at[rows, p.bad]).numpy() - clean["ld"].numpy()
        np.testing.assert_allclose(got[node], want, atol=2e-4)
        assert np.abs(want).max() > 1e-4  # the patch does something


def test_eap_is_the_gradient_and_ig_with_one_step_is_eap(setup):
    model, prefix, pairs, p, pre = setup
    clean, corrupt = npch.activations(pre, p.clean, p), npch.activations(pre, p.corrupt, p)
    nodes = ["a0.1", "m0", "m2"]
    eap = npch.eap_nodes(pre, p, clean, corrupt, nodes, steps=1)
    ig1 = npch.eap_nodes(pre, p, clean, corrupt, nodes, steps=1)
    for node in nodes:
        np.testing.assert_array_equal(eap[node], ig1[node])
        layer, name, head = npch.hook_of(node)
        eps = 1e-2
        step = clean[name] + eps * (corrupt[name] - clean[name])
        with torch.no_grad():
            ld = pre.logit_diff(npch.patched(pre, p, clean, {node: step if head is None else step[:, :, head]}),
                                p.positions, p.good, p.bad)
        finite = (ld - clean["ld"]).numpy() / eps
        np.testing.assert_allclose(eap[node], finite, rtol=0.05, atol=0.05 * np.abs(finite).max() + 1e-4)
    ig = npch.eap_nodes(pre, p, clean, corrupt, nodes, steps=4)
    assert all(ig[n].shape == (len(p.positions),) for n in nodes)


def test_mean_ablation_keeps_clean_when_everything_is_kept(setup):
    model, prefix, pairs, p, pre = setup
    nodes = npch.node_names(model.cfg)
    assert len(nodes) == model.cfg.n_layers * (model.cfg.n_heads + 1)
    clean = npch.activations(pre, p.clean, p)
    names = sorted({npch.hook_of(x)[1] for x in nodes}) + [f"blocks.{i}.mlp.hook_post" for i in range(model.cfg.n_layers)]
    mean = nc.means(pre, p.corrupt, names)
    ld_all, _ = nc.run_kept(pre, p, set(nodes), nodes, mean)
    np.testing.assert_allclose(ld_all, clean["ld"].numpy(), atol=1e-4)
    ld_none, _ = nc.run_kept(pre, p, set(), nodes, mean)
    assert np.abs(ld_none - ld_all).max() > 1e-3
    d = model.cfg.d_mlp
    ld_n, _ = nc.run_neurons(pre, p, {1: np.arange(d)}, mean)
    np.testing.assert_allclose(ld_n, clean["ld"].numpy(), atol=1e-4)
    assert np.abs(nc.run_neurons(pre, p, {1: []}, mean)[0] - ld_n).max() > 1e-5
    assert nc.recovered(ld_all, ld_none, clean["ld"].numpy()) == pytest.approx(1.0)


def test_pairs_families_positions_and_disjoint_halves(setup):
    model, prefix, pairs, p, pre = setup
    assert set(pairs.family) == set(dp.FAMILIES)
    for r in pairs.itertuples():
        assert (r.a, r.b) != (r.a_corrupt, r.b_corrupt) and (r.a == r.a_corrupt or r.b == r.b_corrupt)
        assert r.position == (4 if r.family == "units_carry" else 3)
        if r.family == "units_carry":
            assert r.answer >= 10 and r.answer_corrupt >= 10
    tok = model.tokenizer
    r = pairs.iloc[0]
    assert tok.decode([int(r.token)]) == str(r.answer)[r.position - 3]
    key = lambda a, b: (min(a, b), max(a, b))  # noqa: E731
    sides = pairs.groupby(pairs.apply(lambda r: key(r.a, r.b), axis=1)).split.nunique()
    assert (sides == 1).all()
    assert dp.family(1, 9, 1, 0) is None  # 10 against 1: only the length differs


def test_shots_avoid_the_table():
    shots = shots_for(RealCircuitConfig(model="x"))
    lines = [x for x in shots.splitlines() if x]
    assert len(lines) == 3
    for line in lines:
        a, rest = line.split("+")
        b = rest.split("=")[0]
        assert not (int(a) < 10 and int(b) < 10)


def _tables(move_at: int, head_attention: float, mlp: float, carry: float):
    residual = pd.DataFrame([{"family": f, "layer": layer, "answer": True, "removed": 1.0 if layer >= move_at else 0.0}
                             for f in ("units_nocarry", "carry_flip") for layer in range(5)])
    nodes = pd.DataFrame([{"family": f, "node": n, "removed": v} for f in ("units_nocarry", "carry_flip")
                          for n, v in (("a0.0", 0.5), ("m3", mlp), ("a3.1", 0.1 + (carry if f == "carry_flip" else 0)))])
    attention = pd.DataFrame([{"head": "a0.0", "query": "=", "key": "a", "attention": head_attention},
                              {"head": "a0.0", "query": "=", "key": "examples", "attention": 1 - head_attention}])
    return residual, nodes, attention


def test_adder_checks_and_verdict_follow_the_thresholds():
    q = {"units_nocarry": "=", "carry_flip": "="}
    yes = sig.signature(*_tables(1, 0.6, 0.9, 0.5), 4, ("a", "b"), q)
    assert (yes["move_layer"], yes["verdict"], yes["checks_held"]) == (1, "yes", 3) and yes["carry_node"] == "a3.1"
    late = sig.signature(*_tables(3, 0.6, 0.9, 0.0), 4, ("a", "b"), q)
    assert not late["moved_by_attention"] and not late["distinct_carry"] and late["verdict"] == "partly"
    none = sig.signature(*_tables(9, 0.1, 0.0, 0.0), 4, ("a", "b"), q)
    assert none["move_layer"] is None and none["verdict"] == "no"


@pytest.mark.slow
def test_study_runs_on_a_gemma_shaped_model(gemma_shaped_dir):
    out = study(RealCircuitConfig(model=str(gemma_shaped_dir), n_pairs=4, correct_only=False, ig_steps=2, top_k=(2,),
                                  neuron_counts=(2,), n_profile=3))
    n_nodes = out["n_layers"] * (out["n_heads"] + 1)
    assert out["circuit"]["n_nodes"] == n_nodes and 1 <= out["circuit"]["k"] <= n_nodes
    assert set(out["curve"].k) == {2, n_nodes} and len(out["profile"]) == 3
    assert set(out["residual"].position) == set(dp.POSITIONS)
    assert out["nodes"].direct.notna().all()
