"""Direct logit attribution adds up to the logit difference under LayerNorm (GPT-2-shaped)
and RMSNorm (Llama-shaped, grouped-query; Gemma-3-shaped, grouped-query with a
post-attention norm over the summed heads), and each head's share is TransformerLens's own
per-head result read through the frozen norms. And the circuit graph's node patching and EAP
on a real tokenizer and layout, the pieces a real-model circuit study stands on."""
import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mechlib.core import circuit_graph as cg
from mechlib.core.dla import direct_logit_attribution
from mechlib.core.models import load_model

TEXT = ["12+34=46\n57+21=78\n7+8=1", "3+45=48\n9*9=81\n61+39=10"]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def shaped(request, tiny_gpt2_dir, llama_shaped_dir, gemma_shaped_dir):
    path = {"gpt2": tiny_gpt2_dir, "llama": llama_shaped_dir, "gemma3": gemma_shaped_dir}[request.param]
    model, _ = load_model(str(path), device="cpu")
    return model


def scored(model):
    ids = [model.tokenizer(t)["input_ids"] for t in TEXT]
    n = min(map(len, ids))
    tokens = torch.tensor([row[:n] for row in ids])
    positions = torch.tensor([n - 2, n - 5])  # a different scored position per row
    digits = model.tokenizer(["5", "3"], add_special_tokens=False)["input_ids"]
    good, bad = torch.tensor([digits[0][-1]] * 2), torch.tensor([digits[1][-1]] * 2)
    return tokens, positions, good, bad


def test_the_parts_add_up_to_the_logit_difference(shaped):
    tokens, positions, good, bad = scored(shaped)
    attribution = direct_logit_attribution(shaped, tokens, positions, good, bad)
    with torch.no_grad():
        logits = shaped(tokens)[torch.arange(2), positions]
    want = logits[torch.arange(2), good] - logits[torch.arange(2), bad]
    torch.testing.assert_close(attribution.total(), want, atol=1e-4, rtol=1e-4)
    cfg = shaped.cfg
    assert attribution.heads.shape == (2, cfg.n_layers, cfg.n_heads)  # query heads, with grouped key/value heads
    assert attribution.mlps.shape == (2, cfg.n_layers) and attribution.attn_biases.shape == (2, cfg.n_layers)
    assert attribution.heads.abs().sum() > 0 and attribution.mlps.abs().sum() > 0


def test_each_head_is_its_own_result_read_through_the_frozen_norms(shaped):
    """Independently of the attribution's einsum: TransformerLens's per-head ``hook_result``
    (use_attn_result), scaled by a post-attention norm's clean ``w / scale`` where the model
    has one, then read through the final norm with its clean scale."""
    tokens, positions, good, bad = scored(shaped)
    attribution = direct_logit_attribution(shaped, tokens, positions, good, bad)
    cfg, rows, last = shaped.cfg, torch.arange(2), shaped.cfg.n_layers - 1
    shaped.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = shaped.run_with_cache(tokens)
    finally:
        shaped.set_use_attn_result(False)
    resid = cache[f"blocks.{last}.hook_resid_post"][rows, positions]
    if cfg.normalization_type in ("LN", "LNPre"):
        resid = resid - resid.mean(-1, keepdim=True)
    scale = cache["ln_final.hook_scale"][rows, positions]
    torch.testing.assert_close(scale, (resid.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt())
    direction = (shaped.W_U[:, good] - shaped.W_U[:, bad]).T
    w = getattr(shaped.ln_final, "w", torch.ones(cfg.d_model))
    for layer in range(cfg.n_layers):
        result = cache[f"blocks.{layer}.attn.hook_result"][rows, positions]  # (batch, head, d_model)
        if cfg.use_normalization_before_and_after:
            norm = shaped.blocks[layer].ln1_post
            result = result * (norm.w / cache[f"blocks.{layer}.ln1_post.hook_scale"][rows, positions])[:, None]
        if cfg.normalization_type in ("LN", "LNPre"):
            result = result - result.mean(-1, keepdim=True)
        want = (result / scale[:, None] * w * direction[:, None]).sum(-1)
        torch.testing.assert_close(attribution.heads[:, layer], want, atol=1e-4, rtol=1e-4)


def test_soft_capped_logits_are_refused():
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=2, n_heads=4, d_vocab=10, act_fn="relu",
                                  normalization_type="RMS", output_logits_soft_cap=30.0)
    with pytest.raises(ValueError, match="soft-caps"):
        direct_logit_attribution(HookedTransformer(cfg), torch.zeros(1, 3, dtype=torch.long), torch.tensor([2]),
                                 torch.tensor([1]), torch.tensor([2]))


def test_node_patching_and_attribution_on_a_real_tokenizer_and_layout(llama_shaped_dir):
    """On the Llama-shaped model (SmolLM2's tokenizer, RMSNorm with weights, grouped-query
    attention): resample-ablating a node through the graph equals a hand-written hook that
    puts its corrupted output in place, and EAP-IG with one step is EAP."""
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    tokens, positions, good, bad = scored(model)
    corrupt = tokens.clone()
    corrupt[:, 1] = tokens[:, 2]  # one operand token changed

    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return logits[rows, positions, good] - logits[rows, positions, bad]

    cg.prepare(model)
    task = cg.Task(tokens=tokens, metric=metric, corrupt=corrupt)
    scores = cg.exact_node_scores(model, task, "resample", ["m1", "a0.3"])
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupt)
        clean = metric(model(tokens))

        def put(name, head=None):
            def hook(x, hook):
                x = x.clone()
                if head is None:
                    x[:] = cache[name]
                else:
                    x[:, :, head] = cache[name][:, :, head]
                return x
            return hook

        mlp = metric(model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", put("blocks.1.hook_mlp_out"))]))
        head = metric(model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", put("blocks.0.attn.hook_z", 3))]))
    np.testing.assert_allclose(scores["m1"], (mlp - clean).numpy(), atol=1e-4)
    np.testing.assert_allclose(scores["a0.3"], (head - clean).numpy(), atol=1e-4)
    assert np.abs(scores["m1"]).max() > 1e-3
    np.testing.assert_allclose(cg.eap_scores(model, task, "resample", steps=1), cg.eap_scores(model, task, "resample"),
                               atol=1e-5)
