"""The copy-free slab attention: the same logits, hook values and interventions as
TransformerLens's own attention, on GPT-2-, Llama- (grouped-query) and Gemma-3-shaped
(grouped-query, sliding window of 4, q/k norms) models; attention it does not cover keeps
TransformerLens's path."""
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig, TransformerLensKeyValueCache

from mechlib.core import decode, kv_slab
from mechlib.core.blocks import BlockOrder
from mechlib.core.models import load_model

TEXT = ["12+34=46\n57+21=78\n7+8=", "3+45=48\n9*9=81\n61+39="]
HOOKS = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def shaped(request, tiny_gpt2_dir, llama_shaped_dir, gemma_shaped_dir):
    path = {"gpt2": tiny_gpt2_dir, "llama": llama_shaped_dir, "gemma3": gemma_shaped_dir}[request.param]
    model, _ = load_model(str(path), device="cpu")
    return model


def tokens_of(model) -> torch.Tensor:
    ids = [model.tokenizer(t)["input_ids"] for t in TEXT]
    n = min(map(len, ids))
    return torch.tensor([row[:n] for row in ids])


def slab_steps(model, tokens: torch.Tensor, start: int, hooks=()) -> list[torch.Tensor]:
    """Logits at each position from ``start`` on: ``start`` tokens at once, then one a step."""
    forward = BlockOrder(model, range(model.cfg.n_layers))
    cache = decode.slab_cache(model, model.cfg.n_layers, tokens.shape[0], tokens.shape[1])
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        out = [forward(tokens[:, :start], cache=cache)[:, -1]]
        out += [forward(tokens[:, t : t + 1], cache=cache)[:, -1] for t in range(start, tokens.shape[1] - 1)]
    return out


def tl_steps(model, tokens: torch.Tensor, start: int, hooks=()) -> list[torch.Tensor]:
    """The same through TransformerLens's own key/value cache."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        out = [model(tokens[:, :start], past_kv_cache=cache)[:, -1]]
        out += [model(tokens[:, t : t + 1], past_kv_cache=cache)[:, -1] for t in range(start, tokens.shape[1] - 1)]
    return out


def test_covered_models_take_the_slab_path(shaped):
    decode.slab_cache(shaped, 1, 1, 1)  # a slab switches the model to the slab path
    assert all(isinstance(b.attn, (kv_slab.SlabAttention, kv_slab.SlabGroupedQueryAttention)) for b in shaped.blocks)
    assert all(kv_slab.covered(b.attn) for b in shaped.blocks)


def test_decoding_through_the_slab_equals_a_full_forward_at_every_step(shaped):
    """Prefix of 3 tokens (a causal mask inside the chunk), then one token a step well past
    Gemma's sliding window of 4 (the local mask on single-token steps)."""
    tokens = tokens_of(shaped)
    assert tokens.shape[1] > 8
    with torch.no_grad():
        full = shaped(tokens)
    for t, got in enumerate(slab_steps(shaped, tokens, 3), start=2):
        torch.testing.assert_close(got, full[:, t], atol=1e-4, rtol=1e-4)


def test_hooks_see_and_change_what_transformer_lens_sees(shaped):
    """Every attention hook gets the same values as on TransformerLens's own cached path, and
    an intervention on hook_z (one head zeroed) changes the logits the same way."""
    tokens = tokens_of(shaped)
    seen: dict = {"slab": {}, "tl": {}}

    def record(which):
        def hook(x, hook):
            seen[which][hook.name] = x.clone()
        return hook

    names = [f"blocks.{layer}.attn.{h}" for layer in range(shaped.cfg.n_layers) for h in HOOKS]
    slab = slab_steps(shaped, tokens, 3, [(n, record("slab")) for n in names])
    tl = tl_steps(shaped, tokens, 3, [(n, record("tl")) for n in names])
    for a, b in zip(slab, tl):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for name in names:  # the last step's values
        torch.testing.assert_close(seen["slab"][name], seen["tl"][name], atol=1e-4, rtol=1e-4, msg=name)

    def zero_head(z, hook):
        z[:, :, 0] = 0.0
        return z

    hooked = [("blocks.0.attn.hook_z", zero_head)]
    ablated = slab_steps(shaped, tokens, 3, hooked)
    for a, b in zip(ablated, tl_steps(shaped, tokens, 3, hooked)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ablated[-1], slab[-1], atol=1e-4)


def test_per_head_results_when_the_model_keeps_them(llama_shaped_dir):
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    model.set_use_attn_result(True)
    tokens = tokens_of(model)
    results = []
    slab = slab_steps(model, tokens, 3, [("blocks.1.attn.hook_result", lambda x, hook: results.append(x.shape))])
    with torch.no_grad():
        full = model(tokens)
    torch.testing.assert_close(slab[-1], full[:, -2], atol=1e-4, rtol=1e-4)
    assert results[-1] == (2, 1, model.cfg.n_heads, model.cfg.d_model)


def test_attention_it_does_not_cover_keeps_transformer_lens_path():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=20, act_fn="relu",
                                  positional_embedding_type="alibi", seed=0)
    model = HookedTransformer(cfg)
    decode.slab_cache(model, 1, 1, 1)
    assert type(model.blocks[0].attn).__name__ == "Attention" and not kv_slab.covered(model.blocks[0].attn)
    tokens = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
    for t, got in enumerate(slab_steps(model, tokens, 3), start=2):
        torch.testing.assert_close(got, full[:, t], atol=1e-4, rtol=1e-4)


def test_padded_rows_are_refused(llama_shaped_dir):
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    entry = decode.slab_cache(model, 1, 1, 4)[0]  # switches the model to the slab path
    x = torch.zeros(1, 2, model.cfg.d_model)
    with pytest.raises(ValueError, match="unpadded"):
        model.blocks[0].attn(x, x, x, past_kv_cache_entry=entry, attention_mask=torch.tensor([[0, 1]]))
