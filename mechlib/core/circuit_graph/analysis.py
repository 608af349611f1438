"""What the graph's scores do not show: residual-stream patching per (layer, position),
attention patterns from chosen positions, and direct logit attribution per source."""
from __future__ import annotations

import numpy as np
import torch
from transformer_lens.utils import get_act_name

from ..blocks import cache_activations
from ..dla import attribute
from .ablation import Task
from .graph import graph_of, numpy


def residual_patching(model, task: Task) -> np.ndarray:
    """[n_layers + 1, pos, batch]: the metric when the residual stream at one (layer, position)
    is taken from the corrupted run (layer n_layers is the final residual). All positions of a
    layer run in one batched forward pass, one copy of the batch per position."""
    names = [get_act_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
    names.append(get_act_name("resid_post", model.cfg.n_layers - 1))
    batch, n_pos = task.tokens.shape
    rows = torch.arange(n_pos, device=model.cfg.device).repeat_interleave(batch)  # copy p patches position p
    with torch.no_grad():
        cache = cache_activations(model, task.corrupt, names)
        out = np.zeros((len(names), n_pos, batch))
        for i, name in enumerate(names):
            def hook(x, hook):
                x = x.clone()
                source = cache[hook.name].repeat(n_pos, 1, 1)
                every = torch.arange(len(rows), device=x.device)
                x[every, rows] = source[every, rows]
                return x
            logits = model.run_with_hooks(task.tokens.repeat(n_pos, 1), fwd_hooks=[(name, hook)])
            out[i] = np.stack([numpy(task.metric(part)) for part in logits.split(batch)])
    return out


def attention_to(model, tokens: torch.Tensor, queries: list[int]) -> np.ndarray:
    """Mean attention [n_layers, n_heads, len(queries), pos] from the query positions."""
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        cache = cache_activations(model, tokens, names)
    return np.stack([numpy(cache[n][:, :, queries].mean(0)) for n in names])


def direct_effects(model, tokens: torch.Tensor, direction: torch.Tensor, position: int) -> dict[str, np.ndarray]:
    """Direct logit attribution per graph source: each source's output at ``position``, read
    through the final norm with its scale frozen at the clean value, along ``direction``
    [batch, d_model] (e.g. W_U[:, correct] - W_U[:, wrong]). Per source, one value per
    example; attention output biases are no source and are left out. See :mod:`mechlib.core.dla`."""
    g = graph_of(model)
    parts = attribute(model, tokens, torch.full((tokens.shape[0],), position, device=tokens.device), direction)
    out = {"embed": numpy(parts.embed)}
    for layer in range(g.n_layers):
        out.update({f"a{layer}.{h}": numpy(parts.heads[:, layer, h]) for h in range(g.n_heads)})
        out[f"m{layer}"] = numpy(parts.mlps[:, layer])
    return {s: out[s] for s in g.sources}
