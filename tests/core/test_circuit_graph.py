"""The circuit graph and its scores, against forward passes computed by hand."""
import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechlib.core import circuit_graph as cg


def tiny(normalization=None, seed=0, dtype=torch.float64, attention_dir="causal", n_key_value_heads=None):
    """Two layers of two heads; ``n_key_value_heads=1`` makes them share one key/value head
    (grouped-query attention, as in SmolLM2 and Gemma 3)."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=6, d_head=4, n_heads=2, d_mlp=12, d_vocab=7, act_fn="relu",
                                  normalization_type=normalization, attention_dir=attention_dir, dtype=dtype, seed=seed,
                                  n_key_value_heads=n_key_value_heads)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # non-zero biases too
    return cg.prepare(model.eval())


def metric_last(logits):
    return logits[:, -1, 0] - logits[:, -1, 1]


def hand_forward(model, tokens, replace: dict | None = None):
    """The model's forward pass written out for normalization None: every reader's input is the
    embeddings plus every earlier writer's output plus biases; ``replace[(source, dest)]`` gives
    a tensor to use instead of that source's output in that reader's input only."""
    replace = replace or {}
    W = model
    x = W.W_E[tokens] + W.W_pos[: tokens.shape[1]][None]
    outputs = {"embed": x}
    resid = x
    biases = torch.zeros_like(x)

    def reader_input(dest):
        total = resid.clone()
        for (s, d), value in replace.items():
            if d == dest:
                total = total - outputs[s] + value
        return total

    T = tokens.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for layer in range(model.cfg.n_layers):
        heads = []
        for h in range(model.cfg.n_heads):
            q = reader_input(f"a{layer}.{h}.q") @ W.W_Q[layer, h] + W.b_Q[layer, h]
            k = reader_input(f"a{layer}.{h}.k") @ W.W_K[layer, h] + W.b_K[layer, h]
            v = reader_input(f"a{layer}.{h}.v") @ W.W_V[layer, h] + W.b_V[layer, h]
            scores = (q @ k.transpose(-1, -2)) / model.cfg.d_head ** 0.5
            scores = scores.masked_fill(~causal, float("-inf"))
            z = scores.softmax(-1) @ v
            heads.append(z @ W.W_O[layer, h])
        for h, out in enumerate(heads):
            outputs[f"a{layer}.{h}"] = out
        resid = resid + sum(heads) + W.b_O[layer]
        biases = biases + W.b_O[layer]
        mlp = torch.relu(reader_input(f"m{layer}") @ W.W_in[layer] + W.b_in[layer]) @ W.W_out[layer] + W.b_out[layer]
        outputs[f"m{layer}"] = mlp
        resid = resid + mlp
    return reader_input("end") @ W.W_U + W.b_U


def test_the_graph_has_every_writer_before_every_reader():
    g = cg.Graph(2, 2)
    assert len(g.sources) == 1 + 2 * 3 and len(g.destinations) == 2 * (6 + 1) + 1
    assert ("a0.1", "m0") in g.edges and ("m0", "a1.0.q") in g.edges and ("a1.0", "a1.1.v") not in g.edges
    assert ("m1", "end") in g.edges and ("m1", "m1") not in g.edges and ("a1.1", "m0") not in g.edges
    # embed: all 15 readers; a layer-0 head: m0, layer 1's 7 and end; m0: layer 1's 7 and end;
    # a layer-1 head: m1 and end; m1: end
    assert len(g.edges) == 15 + 2 * 9 + 8 + 2 * 2 + 1
    matrix = g.edge_matrix({("a0.1", "m0"): 2.0})
    assert g.edge_values(matrix).sum() == 2.0 and matrix[g.destinations.index("m0"), g.sources.index("a0.1")] == 2.0


def test_unablated_run_is_the_model_and_the_hand_forward():
    model = tiny()
    tokens = torch.randint(0, 7, (3, 5))
    ablated = cg.ablated_outputs(model, tokens, None, "zero")
    out = cg.run_ablated(model, tokens, None, ablated, torch.zeros(cg.graph_of(model).allowed.shape))
    assert torch.allclose(out, model(tokens), atol=1e-10)
    assert torch.allclose(hand_forward(model, tokens), model(tokens), atol=1e-10)


@pytest.mark.parametrize("edge", [("embed", "a1.0.k"), ("a0.1", "a1.1.q"), ("a0.0", "m0"), ("m0", "a1.0.v"), ("a1.1", "end")])
@pytest.mark.parametrize("how", ["zero", "mean", "resample"])
@pytest.mark.parametrize("kv_heads", [None, 1], ids=["mha", "gqa"])
def test_exact_edge_patching_equals_the_hand_computed_forward(edge, how, kv_heads):
    """With grouped-query attention each query head still has its own K and V readers: the
    hand forward gives head h the shared key/value weights, read from h's own input."""
    model = tiny(n_key_value_heads=kv_heads)
    if kv_heads:
        assert model.blocks[0].attn._W_K.shape[0] == 1 and model.cfg.ungroup_grouped_query_attention
    g = cg.graph_of(model)
    tokens, corrupt = torch.randint(0, 7, (4, 5)), torch.randint(0, 7, (4, 5))
    ablated = cg.ablated_outputs(model, tokens, None, how, corrupt)
    s, d = edge
    i = g.sources.index(s)
    value = ablated[:, :, i]
    ablate = torch.zeros(g.allowed.shape)
    ablate[g.destinations.index(d), i] = 1.0
    got = cg.run_ablated(model, tokens, None, ablated, ablate)
    want = hand_forward(model, tokens, {edge: value})
    assert torch.allclose(got, want, atol=1e-9)
    assert not torch.allclose(got, model(tokens), atol=1e-6)  # the edge mattered
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    scores, signed = cg.exact_edge_scores(model, task, how)
    k = g.edges.index(edge)
    assert scores[k] == pytest.approx((metric_last(want) - metric_last(model(tokens))).abs().mean().item(), abs=1e-9)
    assert signed[k] == pytest.approx((metric_last(want) - metric_last(model(tokens))).mean().item(), abs=1e-9)


def test_eap_is_the_first_order_term():
    """EAP's score of an edge is |(ablated - clean) . grad|: the derivative of the metric along the
    edge's mixing weight at 0, checked by a central finite difference, one example at a time."""
    model = tiny(normalization="LN")
    g = cg.graph_of(model)
    tokens, corrupt = torch.randint(0, 7, (1, 5)), torch.randint(0, 7, (1, 5))
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    eap = cg.eap_scores(model, task, "resample")
    ablated = task.ablated(model, "resample")
    eps = 1e-5
    for k in [0, 7, len(g.edges) // 2, len(g.edges) - 1]:
        j, i = np.argwhere(g.allowed)[k]
        w = torch.zeros(g.allowed.shape)
        w[j, i] = eps
        with torch.no_grad():
            up = metric_last(cg.run_ablated(model, tokens, None, ablated, w))
            down = metric_last(cg.run_ablated(model, tokens, None, ablated, -w))
        assert eap[k] == pytest.approx(((up - down) / (2 * eps)).abs().item(), rel=1e-4, abs=1e-8)


def test_eap_ig_with_one_step_is_eap_and_more_steps_differ():
    model = tiny(normalization="LN", seed=1)
    tokens, corrupt = torch.randint(0, 7, (3, 5)), torch.randint(0, 7, (3, 5))
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    eap = cg.eap_scores(model, task, "resample")
    assert np.allclose(cg.eap_scores(model, task, "resample", steps=1), eap)  # one step: the clean point
    assert not np.allclose(cg.eap_scores(model, task, "resample", steps=5), eap)


def test_padding_is_masked_in_bidirectional_attention():
    """The outputs at real positions do not depend on what the padding holds or how long it is."""
    model = tiny(attention_dir="bidirectional")
    tokens = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 2, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    other = tokens.clone()
    other[0, 3:] = torch.tensor([6, 6, 6])
    none = torch.zeros(cg.graph_of(model).allowed.shape)
    abl = cg.ablated_outputs(model, tokens, mask, "zero")
    a = cg.run_ablated(model, tokens, mask, abl, none)
    b = cg.run_ablated(model, other, mask, abl, none)
    short = cg.run_ablated(model, tokens[:1, :3], mask[:1, :3], abl[:1, :3], none)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-10) and torch.allclose(a[0, :3], short[0], atol=1e-10)
    assert not torch.allclose(model(tokens)[0, :3], a[0, :3])  # without the mask, padding leaks in


def test_keeping_every_edge_is_the_clean_model_and_keeping_none_is_fully_ablated():
    model = tiny(seed=2)
    g = cg.graph_of(model)
    tokens = torch.randint(0, 7, (5, 5))
    task = cg.Task(tokens=tokens, metric=metric_last)
    scores = np.random.default_rng(0).random(len(g.edges))
    every, nothing = cg.top_k_masks(g, scores, [len(g.edges), 0])
    assert torch.allclose(cg.circuit_metric(model, task, "mean", every), metric_last(model(tokens)), atol=1e-10)
    ablated = task.ablated(model, "mean")
    all_off = cg.run_ablated(model, tokens, None, ablated, torch.tensor(g.allowed, dtype=torch.float64))
    assert torch.allclose(cg.circuit_metric(model, task, "mean", nothing), metric_last(all_off), atol=1e-10)
    top3 = cg.top_k_masks(g, scores, [3])[0]
    assert top3.sum() == 3 and all(top3[g.destinations.index(d), g.sources.index(s)]
                                   for s, d in np.array(g.edges, dtype=object)[np.argsort(-scores)[:3]])


def test_node_ablation_equals_ablating_all_its_edges():
    model = tiny(seed=3)
    g = cg.graph_of(model)
    tokens, corrupt = torch.randint(0, 7, (4, 5)), torch.randint(0, 7, (4, 5))
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    effects = cg.exact_node_scores(model, task, "resample", ["a0.1", "m0"])
    ablated = task.ablated(model, "resample")
    for node in ("a0.1", "m0"):
        # the node's own output swapped in its own hook: head 1's z from the corrupted run, or the MLP's ablated output
        i = g.sources.index(node)
        name = "blocks.0.attn.hook_z" if node.startswith("a") else "blocks.0.hook_mlp_out"
        if node.startswith("a"):
            z_corrupt = {}
            model.run_with_hooks(corrupt, fwd_hooks=[(name, lambda x, hook: z_corrupt.setdefault("z", x.clone()))])

            def hook(x, hook):
                x = x.clone()
                x[:, :, 1] = z_corrupt["z"][:, :, 1]
                return x
        else:
            def hook(x, hook):
                return ablated[:, :, i]
        want = metric_last(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])) - metric_last(model(tokens))
        assert np.allclose(effects[node], want.detach().numpy(), atol=1e-9)


def test_interpbench_hook_names_map_onto_edges():
    g = cg.Graph(2, 2)
    pairs = [("blocks.0.hook_mlp_out", "blocks.1.hook_v_input[1]"), ("blocks.0.hook_resid_pre", "blocks.0.hook_q_input[0]"),
             ("blocks.1.attn.hook_result[0]", "blocks.1.hook_resid_post")]
    assert g.edges_from_hook_names(pairs) == {("m0", "a1.1.v"), ("embed", "a0.0.q"), ("a1.0", "end")}
    with pytest.raises(ValueError, match="hooks this graph does not have"):
        g.edges_from_hook_names([("blocks.3.hook_mlp_out", "blocks.4.hook_mlp_in")])


def test_direct_effects_sum_to_the_logit_difference_without_layer_norm():
    model = tiny(seed=4)
    tokens = torch.randint(0, 7, (3, 5))
    direction = (model.W_U[:, 0] - model.W_U[:, 1]).detach().expand(3, -1)
    effects = cg.direct_effects(model, tokens, direction, position=4)
    total = sum(effects.values())
    biases = model.b_O.sum(0) @ direction[0] + (model.b_U[0] - model.b_U[1])  # b_out is part of each MLP output
    assert np.allclose(total + biases.item(), metric_last(model(tokens)).detach().numpy(), atol=1e-9)


def test_bad_ablation_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="ablation 'noise'"):
        cg.ablated_outputs(model, torch.zeros((1, 3), dtype=torch.long), None, "noise")
    with pytest.raises(ValueError, match="resample ablation needs corrupted inputs"):
        cg.ablated_outputs(model, torch.zeros((1, 3), dtype=torch.long), None, "resample")


def test_eap_works_on_a_frozen_model():
    model = tiny(seed=5)
    tokens, corrupt = torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (2, 5))
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    before = cg.eap_scores(model, task, "resample")
    for p in model.parameters():
        p.requires_grad_(False)
    assert np.allclose(cg.eap_scores(model, task, "resample"), before)


def test_residual_patching_patches_one_layer_and_position_at_a_time():
    model = tiny(seed=6)
    tokens, corrupt = torch.randint(0, 7, (3, 5)), torch.randint(0, 7, (3, 5))
    task = cg.Task(tokens=tokens, metric=metric_last, corrupt=corrupt)
    out = cg.residual_patching(model, task)
    assert out.shape == (3, 5, 3)
    _, cache = model.run_with_cache(corrupt)
    layer, pos = 1, 2

    def hook(x, hook):
        x = x.clone()
        x[:, pos] = cache[hook.name][:, pos]
        return x
    want = metric_last(model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", hook)]))
    assert np.allclose(out[layer, pos], want.detach().numpy())
    assert np.allclose(out[2, 4], metric_last(model(corrupt)).detach().numpy())  # the final residual at the last position


def test_parallel_blocks_are_refused():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_mlp=8, d_vocab=5, act_fn="relu",
                                  parallel_attn_mlp=True)
    with pytest.raises(NotImplementedError, match="parallel blocks"):
        cg.prepare(HookedTransformer(cfg))


def test_direct_effects_sum_to_the_logit_difference_under_rms_norm():
    """RMSNorm scales without centring (SmolLM2, Gemma): the sources' direct effects through
    the frozen final scale add up to the logit difference. Centring them, as LayerNorm
    would, breaks the sum."""
    model = tiny(normalization="RMSPre", seed=5, n_key_value_heads=1)
    tokens = torch.randint(0, 7, (3, 5))
    direction = (model.W_U[:, 0] - model.W_U[:, 1]).detach().expand(3, -1)
    effects = cg.direct_effects(model, tokens, direction, position=4)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "ln_final.hook_scale")
    scale = cache["ln_final.hook_scale"][:, 4, 0]
    biases = (model.b_O.sum(0) @ direction[0]) / scale + (model.b_U[0] - model.b_U[1])
    total = sum(effects.values()) + biases.detach().numpy()
    assert np.allclose(total, metric_last(model(tokens)).detach().numpy(), atol=1e-9)


def test_per_head_scores_are_refused_when_a_norm_follows_the_head_sum():
    """Gemma 3 normalises the sum of the heads: per-head outputs do not add up to the block's write."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=6, d_head=4, n_heads=2, d_mlp=12, d_vocab=7, act_fn="relu",
                                  normalization_type="RMS", use_normalization_before_and_after=True)
    with pytest.raises(NotImplementedError, match="post-attention RMSNorm"):
        cg.prepare(HookedTransformer(cfg))
