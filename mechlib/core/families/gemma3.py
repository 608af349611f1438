"""Gemma 3 (text): rotary positions with a local and a global base, sliding-window
attention in most layers, RMSNorm before *and after* attention and MLP, q/k norms, gated
GELU MLP, grouped-query attention, embeddings scaled by sqrt(d_model).

The post-attention RMSNorm is applied to the sum of the heads, so per-head outputs do not
add up to what the block writes: :attr:`Family.additive_heads` is False."""
from __future__ import annotations

from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

from .base import Family, rotary_rms_fields


def hooked_config(hf_config, model_name: str, prepend_bos: bool = True) -> HookedTransformerConfig:
    rope = hf_config.rope_parameters
    layer_types = list(hf_config.layer_types)
    if getattr(hf_config, "final_logit_softcapping", None) or getattr(hf_config, "attn_logit_softcapping", None):
        raise ValueError(f"model {model_name!r}: Gemma 3 checkpoints with logit soft-capping are not supported")
    return HookedTransformerConfig(
        **rotary_rms_fields(hf_config, model_name, prepend_bos, hf_config.head_dim, hf_config.hidden_activation),
        use_normalization_before_and_after=True,
        use_qk_norm=True,
        rotary_base=float(rope["full_attention"]["rope_theta"]),
        rotary_base_local=float(rope["sliding_attention"]["rope_theta"]),
        use_attn_scale=True,
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
        n_key_value_heads=hf_config.num_key_value_heads,
        window_size=hf_config.sliding_window,
        use_local_attn=True,
        attn_types=["global" if t == "full_attention" else "local" for t in layer_types],
        original_architecture="Gemma3ForCausalLM",
    )

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3_text",),
    architecture="Gemma3ForCausalLM",
    hooked_config=hooked_config,
    convert_weights=convert_gemma_weights,
    norm="rmsnorm",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    fan_in_fan_out=False,
    embed_module="embed_tokens",
    position_module=None,
    additive_heads=False,
)
