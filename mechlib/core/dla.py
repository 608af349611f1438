"""Direct logit attribution that adds up, under LayerNorm and RMSNorm, post-norms included.

A component's direct effect on a logit difference is its write to the residual stream, read
through the final norm with the norm's scale *frozen* at its value on the clean run, then
through the difference of the two tokens' unembedding columns. With the scale frozen the
final norm is linear (LayerNorm also centres, which is linear), so the components' effects
add up to the logit difference itself, up to the unembedding bias: the test of a correct
attribution.

Per-head effects need one more step where a norm acts on the *sum* of the heads (Gemma's
post-attention RMSNorm, :attr:`~mechlib.core.families.Family.additive_heads` False): that
norm's scale is frozen too, per row and position, so each head's ``z @ W_O`` is scaled by
the same ``w / scale`` as the block's whole write and the heads (with the output bias) add
up to ``hook_attn_out``. This is the frozen-norm treatment; the heads' effects are direct
effects *given* the clean run's norm scales, not what ablating a head would do.
"""
from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float, Int

from .blocks import cache_activations


@dataclasses.dataclass
class Attribution:
    """Direct effects on ``logit[good] - logit[bad]`` at one scored position per row."""

    heads: Float[torch.Tensor, "batch layer head"]
    mlps: Float[torch.Tensor, "batch layer"]
    embed: Float[torch.Tensor, " batch"]  # what enters block 0 (token and position embeddings)
    attn_biases: Float[torch.Tensor, "batch layer"]  # each attention block's output bias b_O
    final_bias: Float[torch.Tensor, " batch"]  # the final norm's bias (LayerNorm) and the unembedding's

    def total(self) -> Float[torch.Tensor, " batch"]:
        """The sum of every part: the logit difference the model computes."""
        return self.heads.sum((1, 2)) + self.mlps.sum(1) + self.embed + self.attn_biases.sum(1) + self.final_bias


def _centres(model) -> bool:
    return model.cfg.normalization_type in ("LN", "LNPre")


def _read(model, norm, x: Float[torch.Tensor, "batch d_model"], scale: Float[torch.Tensor, "batch 1"]) -> torch.Tensor:
    """The linear part of ``norm`` with its scale frozen: centre (LayerNorm), divide, weight.
    A model without a final norm reads the residual as it is."""
    if model.cfg.normalization_type is None:
        return x
    if _centres(model):
        x = x - x.mean(-1, keepdim=True)
    x = x / scale
    w = getattr(norm, "w", None)
    return x * w if w is not None else x


def _scale(model, x: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch 1"]:
    """The final norm's scale on the final residual ``x``, as its own ``hook_scale`` has it
    (1 without a final norm)."""
    if model.cfg.normalization_type is None:
        return torch.ones_like(x[:, :1])
    if _centres(model):
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def direct_logit_attribution(model, tokens: Int[torch.Tensor, "batch seq"], positions: Int[torch.Tensor, " batch"],
                             good: Int[torch.Tensor, " batch"], bad: Int[torch.Tensor, " batch"]) -> Attribution:
    """Each head's, each MLP's and the embeddings' direct effect on ``logit[good] -
    logit[bad]`` at ``positions`` (one per row), final norm (and post-attention norms) frozen.
    Full logits are never computed: only the two unembedding columns per row."""
    direction = (model.W_U[:, good] - model.W_U[:, bad]).T.detach()
    return attribute(model, tokens, positions, direction, model.b_U[good] - model.b_U[bad])


def attribute(model, tokens: Int[torch.Tensor, "batch seq"], positions: Int[torch.Tensor, " batch"],
              direction: Float[torch.Tensor, "batch d_model"], offset: Float[torch.Tensor, " batch"] | None = None,
              ) -> Attribution:
    """Direct effects along ``direction`` in the final norm's output space (a difference of
    unembedding columns, say), read at ``positions``; ``offset`` (the unembedding bias's
    share) goes into ``final_bias``."""
    cfg = model.cfg
    if cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0:
        raise ValueError("direct logit attribution needs logits linear in the final norm's output; "
                         f"model {cfg.model_name!r} soft-caps them (output_logits_soft_cap)")
    n, post = cfg.n_layers, bool(getattr(cfg, "use_normalization_before_and_after", False))
    names = {"blocks.0.hook_resid_pre", f"blocks.{n - 1}.hook_resid_post"}
    for layer in range(n):
        names |= {f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"}
        if post:
            names.add(f"blocks.{layer}.ln1_post.hook_scale")
    with torch.no_grad():
        cache = cache_activations(model, tokens, names)
        rows = torch.arange(tokens.shape[0], device=tokens.device)

        def at(name: str) -> torch.Tensor:
            return cache[name][rows, positions]

        final_scale = _scale(model, at(f"blocks.{n - 1}.hook_resid_post"))  # not hooked: no unembedding runs
        final_norm = getattr(model, "ln_final", None)

        def effect(x: torch.Tensor) -> torch.Tensor:  # x: (batch, ..., d_model), read at the scored position
            scale = final_scale.view(-1, *([1] * (x.dim() - 1)))
            dirs = direction.view(direction.shape[0], *([1] * (x.dim() - 2)), -1)
            return (_read(model, final_norm, x, scale) * dirs).sum(-1)

        heads, mlps, biases = [], [], []
        for layer in range(n):
            attn = model.blocks[layer].attn
            z: Float[torch.Tensor, "batch head d_head"] = at(f"blocks.{layer}.attn.hook_z")
            per_head: Float[torch.Tensor, "batch head d_model"] = torch.einsum("bhd,hdm->bhm", z, attn.W_O)
            bias: Float[torch.Tensor, "batch d_model"] = attn.b_O.expand(z.shape[0], -1)
            if post:
                norm = model.blocks[layer].ln1_post
                factor = norm.w / at(f"blocks.{layer}.ln1_post.hook_scale")  # (batch, d_model): frozen w / scale
                per_head, bias = per_head * factor[:, None], bias * factor
            heads.append(effect(per_head))
            biases.append(effect(bias))
            mlps.append(effect(at(f"blocks.{layer}.hook_mlp_out")))
        final_bias = torch.zeros_like(direction[:, 0]) if offset is None else offset.detach()
        b = getattr(final_norm, "b", None)
        if b is not None:
            final_bias = final_bias + (b * direction).sum(-1)
        return Attribution(torch.stack(heads, 1), torch.stack(mlps, 1), effect(at("blocks.0.hook_resid_pre")),
                           torch.stack(biases, 1), final_bias)
