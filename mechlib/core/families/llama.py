"""Llama (SmolLM2): rotary positions, RMSNorm, gated SiLU MLP, grouped-query attention.

TransformerLens has no entry for SmolLM2, so the config is built from the Hugging Face
config and the weights converted with TransformerLens's own Llama conversion."""
from __future__ import annotations

from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

from . import CONTEXT_CAP, Family


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def hooked_config(hf_config, model_name: str, prepend_bos: bool = False) -> HookedTransformerConfig:
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ValueError(f"model {model_name!r}: Llama checkpoints with attention or MLP biases are not supported")
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return HookedTransformerConfig(
        model_name=model_name,
        d_model=hf_config.hidden_size,
        d_head=d_head,
        n_heads=hf_config.num_attention_heads,
        d_mlp=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_ctx=min(hf_config.max_position_embeddings, CONTEXT_CAP),
        eps=hf_config.rms_norm_eps,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.hidden_act,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=_rope_theta(hf_config),
        rotary_adjacent_pairs=False,  # Hugging Face's Llama rotates halves, not adjacent pairs
        n_key_value_heads=hf_config.num_key_value_heads if hf_config.num_key_value_heads != hf_config.num_attention_heads else None,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=prepend_bos,
        tokenizer_prepends_bos=prepend_bos,
    )


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    architecture="LlamaForCausalLM",
    hooked_config=hooked_config,
    convert_weights=convert_llama_weights,
    norm="rmsnorm",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    fan_in_fan_out=False,
    embed_module="embed_tokens",
    position_module=None,
)
