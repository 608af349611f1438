"""GPT-2: learned positions, LayerNorm, GELU MLP, Conv1D weights (the organism is one)."""
from __future__ import annotations

from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

from .base import CONTEXT_CAP, Family


def hooked_config(hf_config, model_name: str, prepend_bos: bool = True) -> HookedTransformerConfig:
    """The TransformerLens config of a Hugging Face GPT-2 config. GPT-2's tokenizer adds no
    BOS itself; TransformerLens prepends one, as ``from_pretrained('gpt2')`` does."""
    return HookedTransformerConfig(
        model_name=model_name,
        d_model=hf_config.n_embd,
        d_head=hf_config.n_embd // hf_config.n_head,
        n_heads=hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * hf_config.n_embd,
        n_layers=hf_config.n_layer,
        n_ctx=min(hf_config.n_positions, CONTEXT_CAP),
        d_vocab=hf_config.vocab_size,
        eps=hf_config.layer_norm_epsilon,
        # gelu_new is the tanh GELU; torch's fused kernel computes the same function in one op
        act_fn="gelu_pytorch_tanh" if hf_config.activation_function == "gelu_new" else hf_config.activation_function,
        normalization_type="LN",
        positional_embedding_type="standard",
        scale_attn_by_inverse_layer_idx=hf_config.scale_attn_by_inverse_layer_idx,
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
    )


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    architecture="GPT2LMHeadModel",
    hooked_config=hooked_config,
    convert_weights=convert_gpt2_weights,
    norm="layernorm",
    lora_targets=("c_attn", "c_proj", "c_fc"),
    fan_in_fan_out=True,
    embed_module="wte",
    position_module="wpe",
    center_writing_weights=True,
    always_bos=True,
)
