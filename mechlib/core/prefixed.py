"""Forward passes of many short suffixes after one shared prefix, for patching real models.

Few-shot prompts put the same worked examples before every problem. Patching a clean
problem with a corrupted one changes nothing in that prefix, so :class:`Prefixed` runs the
prefix once (batch 1) and every later pass runs only the problem's own tokens, reading the
prefix's keys and values from a frozen TransformerLens cache. A pass may start at any
layer from a given residual stream (the clean run's, say), since the blocks below a patched
node compute what the clean run computed. Logits are read at one scored position per row
and only for the tokens asked (two unembedding columns for a logit difference; a full row
for the top token), never for every position: Gemma 3's vocabulary has 262,144 tokens.

The cache holds TransformerLens's own (unrotated) keys, so its attention path runs and
gradients flow through it (EAP). Every hook point fires on the suffix positions only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap


class Prefixed:
    """A model with one shared token prefix computed once; see the module docstring."""

    def __init__(self, model, prefix: Sequence[int]):
        self.model = model
        cfg = model.cfg
        self.n_prefix = len(prefix)
        self._entries = []
        if self.n_prefix:
            cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, batch_size=1)
            with torch.no_grad():
                self._blocks(torch.tensor([list(prefix)], device=cfg.device), cache, 0, None)
            self._entries = [(e.past_keys, e.past_values) for e in cache.entries]

    def cache(self, batch: int) -> TransformerLensKeyValueCache:
        """A frozen cache holding the prefix for ``batch`` rows (views, not copies)."""
        entries = [TransformerLensKeyValueCacheEntry(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), frozen=True)
                   for k, v in self._entries]
        mask = torch.ones((batch, self.n_prefix), dtype=torch.int, device=self.model.cfg.device)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask, frozen=True)

    def _blocks(self, tokens, cache, start: int, residual):
        ones = torch.ones_like(tokens) if cache is not None else None
        embedded, _, shortformer, mask = self.model.input_to_embed(tokens, attention_mask=ones, past_kv_cache=cache)
        x = embedded if residual is None else residual
        for i in range(start, self.model.cfg.n_layers):
            x = self.model.blocks[i](x, past_kv_cache_entry=cache[i] if cache is not None else None,
                                   shortformer_pos_embed=shortformer, attention_mask=mask)
        return x

    def residual(self, tokens: Int[torch.Tensor, "batch suffix"], start: int = 0,
                 residual: Float[torch.Tensor, "batch suffix d_model"] | None = None) -> Float[torch.Tensor, "batch suffix d_model"]:
        """The final residual stream of the suffixes ``tokens``, from block ``start`` on
        (fed ``residual``, the stream entering that block; the embeddings when None)."""
        cache = self.cache(tokens.shape[0]) if self.n_prefix else None
        return self._blocks(tokens, cache, start, residual)

    def final(self, residual: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch d_model"]:
        """The final norm of residual rows (read at the scored positions)."""
        return residual if self.model.cfg.normalization_type is None else self.model.ln_final(residual)

    def logit_diff(self, final_residual: Float[torch.Tensor, "batch suffix d_model"], positions: Int[torch.Tensor, " batch"],
                   good: Int[torch.Tensor, " batch"], bad: Int[torch.Tensor, " batch"]) -> Float[torch.Tensor, " batch"]:
        """``logit[good] - logit[bad]`` at one position per row, soft-cap included."""
        m = self.model
        x = self.final(final_residual[torch.arange(len(positions), device=positions.device), positions])
        cap = m.cfg.output_logits_soft_cap

        def logit(t):
            return apply_softcap((x * m.W_U[:, t].T).sum(-1) + m.b_U[t], cap)

        return logit(good) - logit(bad)

    def top(self, final_residual: Float[torch.Tensor, "batch suffix d_model"], positions: Int[torch.Tensor, " batch"],
            chunk: int = 64) -> Int[torch.Tensor, " batch"]:
        """The top token at one position per row (full rows, ``chunk`` rows at a time)."""
        x = self.final(final_residual[torch.arange(len(positions), device=positions.device), positions])
        return torch.cat([(x[i:i + chunk] @ self.model.W_U + self.model.b_U).argmax(-1) for i in range(0, len(x), chunk)])
