"""Run a TransformerLens model's own blocks in any order (gaps and repeats allowed),
with an optional key/value cache, without changing the model."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry
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
        residual, _, shortformer, mask = self.model.input_to_embed(tokens, past_kv_cache=cache)
        for j, i in enumerate(self.order):
            residual = self.model.blocks[i](
                residual,
                past_kv_cache_entry=cache[j] if cache is not None else None,
                shortformer_pos_embed=shortformer,
                attention_mask=mask,
            )
        return unembed_residual(self.model, residual if keep is None else residual[:, keep])

    def new_cache(self, batch: int) -> TransformerLensKeyValueCache:
        """A key/value cache with one entry per block run (a repeated block gets two)."""
        cfg, device = self.model.cfg, self.model.cfg.device
        cache = TransformerLensKeyValueCache.init_cache(cfg, device, batch)
        cache.entries = [TransformerLensKeyValueCacheEntry.init_cache_entry(cfg, device, batch) for _ in self.order]
        return cache
