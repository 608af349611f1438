"""Run a TransformerLens model's own blocks in any order (gaps and repeats allowed),
with an optional key/value cache, without changing the model."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap


def unembed_residual(model, residual: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch d_vocab"]:
    """Final norm, unembedding and soft-cap: what the model does after its last block."""
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return apply_softcap(model.unembed(residual), model.cfg.output_logits_soft_cap)


class BlockOrder:
    """``forward(tokens) -> logits`` running ``order`` of the model's blocks. Hooks on the
    blocks fire on every run of a block, so ablations compose with any order."""

    def __init__(self, model, order: Sequence[int]):
        self.model, self.order = model, list(order)

    def __call__(self, tokens: Int[torch.Tensor, "batch seq"], cache: TransformerLensKeyValueCache | None = None,
                 keep: slice | None = None) -> Float[torch.Tensor, "batch kept d_vocab"]:
        """Logits at the positions ``keep`` selects (all by default). Only those positions
        are unembedded: with Gemma's 262,144-token vocabulary, full logits of a batch of
        prompts take gigabytes."""
        # With a cache, an explicit all-ones mask: prompts here are never padded, and the
        # tokenizer's guess (a pad token id at the start or end is padding) could be wrong.
        ones = torch.ones_like(tokens) if cache is not None else None
        residual, _, shortformer, mask = self.model.input_to_embed(tokens, attention_mask=ones, past_kv_cache=cache)
        for j, i in enumerate(self.order):
            residual = self.model.blocks[i](
                residual,
                past_kv_cache_entry=cache[j] if cache is not None else None,
                shortformer_pos_embed=shortformer,
                attention_mask=mask,
            )
        return unembed_residual(self.model, residual if keep is None else residual[:, keep])


# Each weight stored so that the view TransformerLens's forward takes of it is already
# contiguous: the gated MLP calls ``W.T.contiguous()`` and attention rearranges ``W_Q`` to
# ``(head d_head) d_model`` at every call, which otherwise copies every weight at every step.
_LAYOUTS = {  # parameter name -> the permutation the forward reads it through
    "W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0),  # gated MLPs only (see below)
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
    "W_U": (1, 0),  # the unembedding: 262,144 x 640 floats for Gemma 3, copied at every call
}


def read_layout(model) -> None:
    """Re-store the attention, gated-MLP and unembedding weights of ``model`` in the memory
    layout its forward reads them in. Values are unchanged and so are the results, bit for
    bit (the forward multiplied by the same contiguous copies before); only the copies go."""
    for block in model.blocks:
        gated = hasattr(block.mlp, "W_gate")
        for module in (block.attn, block.mlp):
            for name, param in module.named_parameters(recurse=False):
                order = _LAYOUTS.get(name)
                if order is None or (module is block.mlp and not gated):
                    continue
                inverse = [order.index(i) for i in range(len(order))]
                param.data = param.data.permute(*order).contiguous().permute(*inverse)
    unembed = model.unembed.W_U
    unembed.data = unembed.data.T.contiguous().T


_BELOW_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def cache_activations(model, tokens: Int[torch.Tensor, "batch seq"], names: Collection[str], **kwargs):
    """``run_with_cache`` of the named activations that stops after the last block they
    need: no final norm and no unembedding unless a name needs them (full logits of a batch
    at Gemma's 262,144-token vocabulary take gigabytes). Returns the ActivationCache."""
    names = set(names)
    layers = [int(n.split(".")[1]) for n in names if n.startswith("blocks.")]
    above = any(not n.startswith(("blocks.", *_BELOW_BLOCKS)) for n in names)
    stop = None if above else max(layers, default=0) + 1
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=stop, **kwargs)
    return cache
