"""A preallocated key/value cache and the attention forward that reads it without copies.

TransformerLens's attention, given a cache, caches keys *before* the rotary embedding and
rotates the whole cache again at every decode step; with grouped-query attention it also
expands every cached key and value head with ``repeat_interleave``. On a CPU those copies
cost about a seventh of a few-shot decode. :class:`SlabEntry` holds keys already rotated,
in a buffer allocated once, and :func:`slab_attention` rotates only the new keys and
multiplies grouped queries against the shared key/value heads in place.

The hook points are TransformerLens's own and fire in the same order with the same shapes,
except ``hook_rot_k``, which sees only the new positions' keys (the cached ones were
rotated, and hooked, when they were new). :func:`enable` switches a model's attention
modules to subclasses that take this path for a :class:`SlabEntry` and TransformerLens's
own path for anything else; attention it does not cover (ALiBi, relative biases, attention
sinks, clipped or log-scaled queries, 4-bit weights) keeps TransformerLens's path and the
slab then holds keys unrotated, as TransformerLens expects. The tests check logits and
answers against a full forward on GPT-2-, Llama- and Gemma-3-shaped models.
"""
from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformer_lens.components import Attention, GroupedQueryAttention
from transformer_lens.utilities.activation_functions import apply_softcap


class SlabEntry:
    """One block's keys and values in a buffer allocated once for the whole decode:
    ``append`` writes in place (TransformerLens's own entry copies the whole cache with
    ``torch.cat`` at every step). Duck-types ``TransformerLensKeyValueCacheEntry``."""

    frozen = False

    def __init__(self, keys: Float[torch.Tensor, "batch capacity kv_heads d_head"],
                 values: Float[torch.Tensor, "batch capacity kv_heads d_head"], filled: int = 0):
        self.keys, self.values, self.filled = keys, values, filled

    @property
    def past_keys(self) -> Float[torch.Tensor, "batch filled kv_heads d_head"]:
        return self.keys[:, : self.filled]

    @property
    def past_values(self) -> Float[torch.Tensor, "batch filled kv_heads d_head"]:
        return self.values[:, : self.filled]

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.filled + new_keys.shape[1]
        if end > self.keys.shape[1]:
            raise ValueError(f"key/value cache overflow: {end} positions, capacity {self.keys.shape[1]}")
        self.keys[:, self.filled : end] = new_keys
        self.values[:, self.filled : end] = new_values
        self.filled = end
        return self.keys[:, :end], self.values[:, :end]


def covered(attn) -> bool:
    """Whether :func:`slab_attention` computes exactly what this attention module's own
    forward does (the variants it leaves out keep TransformerLens's path)."""
    cfg = attn.cfg
    return (
        type(attn) in (Attention, GroupedQueryAttention, SlabAttention, SlabGroupedQueryAttention)
        and cfg.positional_embedding_type in ("standard", "rotary", "shortformer")
        and (attn._attention_dir_override or cfg.attention_dir) == "causal"
        and not (cfg.use_attention_sinks or cfg.use_logn_attn or cfg.use_dynamic_ntk_rope or cfg.load_in_4bit)
        and cfg.clip_qkv is None
        and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
    )


def slab_attention(attn, query_input: Float[torch.Tensor, "batch pos d_model"], key_input, value_input,
                   entry: SlabEntry, attention_mask: Int[torch.Tensor, "batch kv_pos"] | None = None,
                   ) -> Float[torch.Tensor, "batch pos d_model"]:
    """TransformerLens's attention forward for unpadded rows continuing a slab: the new
    keys are rotated once and stored rotated; grouped queries read the shared heads."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("a slab cache holds unpadded rows; the attention mask must be all ones")
    cfg = attn.cfg
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    offset = entry.filled
    if cfg.positional_embedding_type == "rotary":
        q = attn.hook_rot_q(attn.apply_rotary(q, offset))
        k = attn.hook_rot_k(attn.apply_rotary(k, offset))
    keys, values = entry.append(k, v)
    batch, n, heads, d_head = q.shape
    groups, kv = keys.shape[2], keys.shape[1]
    per_group = heads // groups  # query head h reads key/value head h // per_group
    q_: Float[torch.Tensor, "batch groups rows d_head"] = q.permute(0, 2, 1, 3).reshape(batch, groups, per_group * n, d_head)
    scores = (q_ @ keys.permute(0, 2, 3, 1)).view(batch, heads, n, kv) / attn.attn_scale
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
    if n > 1 or (attn.attn_type == "local" and kv > cfg.window_size):
        scores = torch.where(attn._make_causal_mask(n, kv, offset, scores.device), scores, attn.IGNORE)
    pattern = attn.hook_pattern(F.softmax(attn.hook_attn_scores(scores), dim=-1))
    mixed = pattern.view(batch, groups, per_group * n, kv) @ values.permute(0, 2, 1, 3)
    z: Float[torch.Tensor, "batch pos heads d_head"] = attn.hook_z(mixed.view(batch, heads, n, d_head).transpose(1, 2))
    if not cfg.use_attn_result:
        w = einops.rearrange(attn.W_O, "head_index d_head d_model -> d_model (head_index d_head)")
        return F.linear(z.reshape(batch, n, heads * d_head), w, attn.b_O)
    result = attn.hook_result(torch.einsum("bphd,hdm->bphm", z, attn.W_O))
    return result.sum(2) + attn.b_O


def _forward(self, query_input, key_input, value_input, past_kv_cache_entry=None, additive_attention_mask=None,
             attention_mask=None, position_bias=None):
    """:func:`slab_attention` for a :class:`SlabEntry`, TransformerLens's forward otherwise."""
    if isinstance(past_kv_cache_entry, SlabEntry):
        if additive_attention_mask is not None or position_bias is not None:  # encoder and T5 inputs, never a decoder's
            raise ValueError("a slab cache serves causal decoders: no additive attention mask or position bias")
        return slab_attention(self, query_input, key_input, value_input, past_kv_cache_entry, attention_mask)
    return _PARENT[type(self)].forward(self, query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                                       additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                                       position_bias=position_bias)


# Plain subclasses (no mixin, no new state), so a module's class can be switched in place.
class SlabAttention(Attention):
    forward = _forward


class SlabGroupedQueryAttention(GroupedQueryAttention):
    forward = _forward


_PARENT = {SlabAttention: Attention, SlabGroupedQueryAttention: GroupedQueryAttention}
_SUBCLASS = {Attention: SlabAttention, GroupedQueryAttention: SlabGroupedQueryAttention}


def enable(model) -> None:
    """Give each covered attention module of ``model`` the slab path (idempotent; the
    weights, hooks and every other input are untouched). Call it before filling a slab:
    the slab's key format follows the attention modules."""
    for block in model.blocks:
        attn = block.attn
        if type(attn) in _SUBCLASS and covered(attn):
            attn.__class__ = _SUBCLASS[type(attn)]
