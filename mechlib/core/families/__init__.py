"""The model-family layer: what differs between architectures lives here, once.

Chapters and the core ask a model's :class:`Family` what they need to know (how to convert
it to TransformerLens, which modules LoRA adapts, which norm it uses, whether per-head
outputs add up to what attention writes), never the model's name. One module per family:
:mod:`.gpt2`, :mod:`.llama`, :mod:`.gemma3`.
"""
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

    def starts_with_bos(self, tokenizer) -> bool:
        """Does a prompt start with BOS? GPT-2 models get one that TransformerLens prepends
        (the organism was trained so); other families do what their own tokenizer does
        (Gemma's adds ``<bos>``, SmolLM2's adds nothing)."""
        if self.name == "gpt2":
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


def _families() -> list[Family]:
    from . import gemma3, gpt2, llama

    return [gpt2.FAMILY, llama.FAMILY, gemma3.FAMILY]


def family_of(model_type: str) -> Family:
    """The family of a Hugging Face ``model_type``; an unknown one fails naming those known."""
    for family in _families():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in _families() for t in f.model_types)
    raise ValueError(f"model_type {model_type!r} has no model family in mechlib; known: {known}")


def family_named(name: str) -> Family:
    """A family by its mechlib name (``gpt2``, ``llama``, ``gemma3``)."""
    for family in _families():
        if family.name == name:
            return family
    raise ValueError(f"model family {name!r} is not one of {names()}")


def known_family(model_type: str) -> Family | None:
    """The family of a ``model_type``, or None when mechlib has none for it."""
    return next((f for f in _families() if model_type in f.model_types), None)


def family_of_config(hf_config) -> Family:
    return family_of(hf_config.model_type)


def family_of_hooked(model) -> Family:
    """The family of a converted HookedTransformer, from its original architecture."""
    arch = model.cfg.original_architecture
    for family in _families():
        if arch == family.architecture:
            return family
    raise ValueError(f"model {model.cfg.model_name!r} (architecture {arch!r}) has no model family in mechlib")


def additive_heads(model) -> bool:
    """Do per-head outputs add up to the attention block's write, for this converted model?
    Its family says; a model of no family (tracr, hand-built) is checked on its config."""
    try:
        return family_of_hooked(model).additive_heads
    except ValueError:
        return not getattr(model.cfg, "use_normalization_before_and_after", False)


def names() -> list[str]:
    return [f.name for f in _families()]


__all__ = ["CONTEXT_CAP", "Family", "additive_heads", "family_named", "family_of", "family_of_config", "family_of_hooked",
           "known_family", "names", "rotary_rms_fields"]
