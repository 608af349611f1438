"""The :class:`Family` record every family module fills in, and the fields the rotary,
RMSNorm families share."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from transformer_lens import HookedTransformerConfig

# TransformerLens allocates an n_ctx x n_ctx causal mask in every attention layer: at a
# real model's 8,192 or 32,768 positions that is gigabytes for prompts of a few dozen tokens.
# Real models run with at most this many positions; arithmetic prompts need far fewer.
CONTEXT_CAP = 2048


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture family and everything mechlib needs to know about it."""

    name: str
    model_types: tuple[str, ...]  # Hugging Face ``config.model_type`` values
    architecture: str  # TransformerLens ``cfg.original_architecture`` of a converted model
    hooked_config: Callable[..., HookedTransformerConfig]  # (hf_config, model_name, prepend_bos) -> cfg
    convert_weights: Callable  # (hf_model, cfg) -> TransformerLens state dict
    norm: str  # 'layernorm' (centres, then scales) or 'rmsnorm' (scales only)
    lora_targets: tuple[str, ...]  # peft target_modules for attention and MLP weights
    fan_in_fan_out: bool  # GPT-2's Conv1D stores weights transposed
    embed_module: str  # token embedding module name (peft trainable tokens)
    position_module: str | None  # learned position embeddings, or None (rotary)
    # Do per-head outputs z @ W_O add up to what the attention block writes to the residual
    # stream? Not when a norm is applied to their sum (Gemma's post-attention RMSNorm).
    additive_heads: bool = True
    center_writing_weights: bool = False  # TransformerLens processing (LayerNorm models only)
    # Prompts always start with BOS (TransformerLens prepends it for GPT-2, and the organism
    # was trained so); otherwise BOS is what the model's own tokenizer does.
    always_bos: bool = False

    def starts_with_bos(self, tokenizer) -> bool:
        """Does a prompt start with BOS? Always for :attr:`always_bos` families; otherwise
        as the model's own tokenizer does (Gemma's adds ``<bos>``, SmolLM2's adds nothing)."""
        if self.always_bos:
            return True
        ids = tokenizer("1")["input_ids"]
        return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def rotary_rms_fields(hf_config, model_name: str, prepend_bos: bool, d_head: int, act_fn: str) -> dict:
    """The HookedTransformerConfig fields Llama and Gemma 3 share: sizes from the HF config,
    RMSNorm with a final norm, a gated MLP, rotary positions over the whole head, the context
    capped at :data:`CONTEXT_CAP`, and BOS as the model's own tokenizer has it."""
    return dict(
        model_name=model_name, d_model=hf_config.hidden_size, d_head=d_head, n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size, n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, CONTEXT_CAP), eps=hf_config.rms_norm_eps, d_vocab=hf_config.vocab_size,
        act_fn=act_fn, normalization_type="RMS", final_rms=True, gated_mlp=True, positional_embedding_type="rotary",
        rotary_dim=d_head, default_prepend_bos=prepend_bos, tokenizer_prepends_bos=prepend_bos,
    )
