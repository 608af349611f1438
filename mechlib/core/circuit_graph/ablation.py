"""Running a model with edges ablated: every source's output, its ablated value (zero, the
dataset mean, or its output on a corrupted input), and one forward pass in which each
destination reads the ablated value along the edges asked. Padded keys are masked."""
from __future__ import annotations

import dataclasses

import torch
from transformer_lens.utils import get_act_name

from .graph import ABLATIONS, Metric, graph_of, prepare


def _pad_hooks(mask: torch.Tensor | None, repeat: int = 1):
    """Hooks masking padded keys ([batch, pos] mask, 1 = real token) in every attention layer."""
    if mask is None:
        return []
    keep = mask.bool().repeat(repeat, 1)[:, None, None, :]

    def hook(scores, hook):
        return scores.masked_fill(~keep.to(scores.device), -1e30)

    return [(lambda name: name.endswith("attn.hook_attn_scores"), hook)]


def source_outputs(model, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [batch, pos, vocab], source outputs [batch, pos, n_source, d_model]) of a clean run."""
    prepare(model)
    g = graph_of(model)
    names = [get_act_name("resid_pre", 0)] + [n for layer in range(g.n_layers)
                                                for n in (get_act_name("z", layer), get_act_name("mlp_out", layer))]
    store = {}

    def keep(x, hook):
        store[hook.name] = x.detach()

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names] + _pad_hooks(mask))
        parts = [store[names[0]][:, :, None]]
        for layer in range(g.n_layers):
            parts += [head_results(model, layer, store[get_act_name("z", layer)]),
                      store[get_act_name("mlp_out", layer)][:, :, None]]
        return logits, torch.cat(parts, dim=2)


def head_results(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream [batch, pos, head, d_model] from its z."""
    return torch.einsum("bphd,hdm->bphm", z, model.W_O[layer])


def ablated_outputs(model, tokens: torch.Tensor, mask: torch.Tensor | None, how: str,
                    corrupt: torch.Tensor | None = None, corrupt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each source's ablated output [batch, pos, n_source, d_model]: zero, the mean over the
    batch's real tokens at each position, or its output on the corrupted inputs (resample)."""
    if how not in ABLATIONS:
        raise ValueError(f"ablation {how!r} is not one of {ABLATIONS}")
    _, clean = source_outputs(model, tokens, mask)
    if how == "zero":
        return torch.zeros_like(clean)
    if how == "mean":
        w = (mask if mask is not None else torch.ones(tokens.shape)).to(clean.device, clean.dtype)[:, :, None, None]
        mean = (clean * w).sum(0, keepdim=True) / w.sum(0, keepdim=True).clamp(min=1)
        return mean.expand_as(clean).clone()
    if corrupt is None:
        raise ValueError("resample ablation needs corrupted inputs")
    return source_outputs(model, corrupt, corrupt_mask)[1]


def run_ablated(model, tokens: torch.Tensor, mask: torch.Tensor | None, ablated: torch.Tensor,
                ablate: torch.Tensor, grads: dict | None = None, embed: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with the edges weighted by ``ablate`` replaced by their ablated values.

    ablate: [n_dest, n_source] (1 = use the ablated value, 0 = clean, in between mixes) or
    [n_variants, n_dest, n_source], which runs the batch once per variant (variant-major).
    grads: if a dict, filled with each destination input's gradient hook target (for EAP).
    embed: replaces the embeddings [batch, pos, d_model] (EAP-IG's interpolation)."""
    prepare(model)
    g = graph_of(model)
    variants = ablate[None] if ablate.dim() == 2 else ablate
    n_var, batch = variants.shape[0], tokens.shape[0]
    weights = variants.to(ablated.device, ablated.dtype)  # [n_var, n_dest, n_source]
    tokens = tokens.repeat(n_var, 1)
    current: list[torch.Tensor] = []  # each source's output in this run, [n_var * batch, pos, d_model]
    dest_index = {d: j for j, d in enumerate(g.destinations)}
    H = g.n_heads

    def delta(rows: list[int]) -> torch.Tensor:
        """[n_var * batch, pos, len(rows), d]: what ablation adds to each of these readers. Each
        variant stacks only the sources it ablates (a single-edge or single-node variant: one)."""
        w = weights[:, rows, : len(current)]  # [n_var, n_rows, n_have]
        out = torch.zeros((n_var * batch, tokens.shape[1], len(rows), current[0].shape[-1]), dtype=ablated.dtype,
                          device=ablated.device)
        for v in range(n_var):
            active = torch.nonzero(w[v].abs().sum(0)).flatten().tolist()
            if not active:
                continue
            part = slice(v * batch, (v + 1) * batch)
            have = torch.stack([current[i][part] for i in active], dim=2)  # [b, p, n_active, d]
            out[part] = torch.einsum("bpsd,rs->bprd", ablated[:, :, active] - have, w[v][:, active])
        return out

    def on_embed(x, hook):
        if embed is not None:
            x = embed.repeat(n_var, 1, 1).requires_grad_(grads is not None)
        current.append(x)
        return x

    def on_z(x, hook):
        current.extend(head_results(model, hook.layer(), x).unbind(2))

    def on_mlp_out(x, hook):
        current.append(x)

    def reader(rows: list[int], per_head: bool, key: str):
        def hook(x, hook):
            if weights[:, rows, : len(current)].any():
                d = delta(rows)
                x = x + (d if per_head else d[:, :, 0])
            if grads is not None:
                x.register_hook(lambda gr: grads.__setitem__(key, gr))
            return x
        return hook

    hooks = [(get_act_name("resid_pre", 0), on_embed)]
    for layer in range(g.n_layers):
        for x in "qkv":
            rows = [dest_index[f"a{layer}.{h}.{x}"] for h in range(H)]
            hooks.append((get_act_name(f"{x}_input", layer), reader(rows, True, f"{layer}{x}")))
        hooks += [(get_act_name("z", layer), on_z),
                  (get_act_name("mlp_in", layer), reader([dest_index[f"m{layer}"]], False, f"m{layer}")),
                  (get_act_name("mlp_out", layer), on_mlp_out)]
    hooks.append((get_act_name("resid_post", g.n_layers - 1), reader([dest_index["end"]], False, "end")))
    return model.run_with_hooks(tokens, fwd_hooks=hooks + _pad_hooks(mask, n_var))


@dataclasses.dataclass
class Task:
    """Inputs to score a circuit on: clean tokens, their mask, corrupted tokens, a metric."""

    tokens: torch.Tensor  # [batch, pos]
    metric: Metric  # logits -> [batch]
    mask: torch.Tensor | None = None  # [batch, pos], 1 = real token
    corrupt: torch.Tensor | None = None
    corrupt_mask: torch.Tensor | None = None

    def ablated(self, model, how: str) -> torch.Tensor:
        return ablated_outputs(model, self.tokens, self.mask, how, self.corrupt, self.corrupt_mask)
