"""Llama (SmolLM2): rotary positions, RMSNorm, gated SiLU MLP, grouped-query attention.

TransformerLens has no entry for SmolLM2, so the config is built from the Hugging Face
config and the weights converted with TransformerLens's own Llama conversion."""
from __future__ import annotations

from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

from .base import Family, rotary_rms_fields


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def hooked_config(hf_config, model_name: str, prepend_bos: bool = False) -> HookedTransformerConfig:
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ValueError(f"model {model_name!r}: Llama checkpoints with attention or MLP biases are not supported")
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    kv = hf_config.num_key_value_heads
    return HookedTransformerConfig(
        **rotary_rms_fields(hf_config, model_name, prepend_bos, d_head, hf_config.hidden_act),
        rotary_base=_rope_theta(hf_config),
        rotary_adjacent_pairs=False,  # Hugging Face's Llama rotates halves, not adjacent pairs
        n_key_value_heads=kv if kv != hf_config.num_attention_heads else None,
        original_architecture="LlamaForCausalLM",
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
