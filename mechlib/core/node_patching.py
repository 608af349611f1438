"""Node-level patching on a real model, after a shared prefix (:mod:`.prefixed`).

Nodes are every attention head (``a{layer}.{head}``, its ``hook_z``: the head's output
before the output projection, so Gemma's post-attention norm acts on the patched sum, as in
a real intervention) and every MLP (``m{layer}``, its ``hook_mlp_out``). Three measures of a
node's effect on the logit difference, all on the same pairs:

* exact patching (resample ablation): the clean run with the node's activation at the
  problem's positions taken from the corrupted run, from the node's block on;
* EAP (Syed et al. 2023): the first-order estimate of that change, gradient times the
  activation's difference, from one forward and one backward pass;
* EAP-IG (Hanna et al. 2024): the gradient averaged over inputs interpolated from the
  corrupted to the clean embeddings (``steps`` points; one step is EAP).

Residual patching moves the whole residual stream at one layer and one position.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from jaxtyping import Float, Int

from .prefixed import Prefixed


def node_names(cfg) -> list[str]:
    """Every head and every MLP, in layer order (heads of a layer before its MLP)."""
    return [n for layer in range(cfg.n_layers) for n in [f"a{layer}.{h}" for h in range(cfg.n_heads)] + [f"m{layer}"]]


def hook_of(node: str) -> tuple[int, str, int | None]:
    """(layer, hook name, head or None) of a node name."""
    if node.startswith("a"):
        layer, head = node[1:].split(".")
        return int(layer), f"blocks.{layer}.attn.hook_z", int(head)
    return int(node[1:]), f"blocks.{node[1:]}.hook_mlp_out", None


@dataclasses.dataclass
class Pairs:
    """Clean and corrupted suffixes, where each is scored, and the two answer tokens."""
    clean: Int[torch.Tensor, "batch suffix"]
    corrupt: Int[torch.Tensor, "batch suffix"]
    positions: Int[torch.Tensor, " batch"]
    good: Int[torch.Tensor, " batch"]
    bad: Int[torch.Tensor, " batch"]

    def rows(self, idx) -> Pairs:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Pairs(*(t[idx] for t in dataclasses.astuple(self)))


def activations(pre: Prefixed, tokens: Int[torch.Tensor, "batch suffix"], pairs: Pairs, extra: tuple[str, ...] = ()) -> dict:
    """Every node's activation, every block's input residual (``resid{layer}``), ``extra``
    hooks, and the logit difference (``ld``), on ``tokens`` at the problem's positions."""
    model, out = pre.model, {}
    names = {f"blocks.{i}.attn.hook_z" for i in range(model.cfg.n_layers)}
    names |= {f"blocks.{i}.hook_mlp_out" for i in range(model.cfg.n_layers)}
    names |= {f"blocks.{i}.hook_resid_pre" for i in range(model.cfg.n_layers)} | set(extra)

    def keep(act, hook):
        out[hook.name] = act.detach()
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        final = pre.residual(tokens)
        out["ld"] = pre.logit_diff(final, pairs.positions, pairs.good, pairs.bad)
    out["final"] = final
    return out


def residual_patching(pre: Prefixed, pairs: Pairs, clean: dict, corrupt: dict) -> Float[np.ndarray, "layer pos batch"]:
    """Logit difference with the residual stream entering block ``layer`` (the last row: the
    final stream) at one suffix position taken from the corrupted run."""
    n, seq = pre.model.cfg.n_layers, pairs.clean.shape[1]
    out = np.zeros((n + 1, seq, len(pairs.positions)))
    with torch.no_grad():
        for layer in range(n + 1):
            name = f"blocks.{layer}.hook_resid_pre" if layer < n else "final"
            for pos in range(seq):
                x = clean[name].clone()
                x[:, pos] = corrupt[name][:, pos]
                final = x if layer == n else pre.residual(pairs.clean, start=layer, residual=x)
                out[layer, pos] = pre.logit_diff(final, pairs.positions, pairs.good, pairs.bad).cpu().numpy()
    return out


def patched(pre: Prefixed, pairs: Pairs, clean: dict, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final residual of the clean run with the given nodes' activations replaced by
    ``values`` (node name -> the activation at that node's hook), from the lowest patched block on."""
    model = pre.model
    by_hook: dict[str, list] = {}
    for node, value in values.items():
        layer, name, head = hook_of(node)
        by_hook.setdefault(name, []).append((head, value))

    def put(act, hook):
        act = act.clone()
        for head, value in by_hook[hook.name]:
            if head is None:
                act[:] = value
            else:
                act[:, :, head] = value if value.dim() == act.dim() - 1 else value[:, :, head]
        return act

    start = min(hook_of(n)[0] for n in values)
    with model.hooks(fwd_hooks=[(n, put) for n in by_hook]):
        return pre.residual(pairs.clean, start=start, residual=clean[f"blocks.{start}.hook_resid_pre"])


def exact_nodes(pre: Prefixed, pairs: Pairs, clean: dict, corrupt: dict, nodes: list[str]) -> dict[str, np.ndarray]:
    """Per node: the change of each pair's logit difference when the node's activation is
    taken from the corrupted run (resample ablation at the problem's positions)."""
    out = {}
    with torch.no_grad():
        for node in nodes:
            _, name, head = hook_of(node)
            value = corrupt[name] if head is None else corrupt[name][:, :, head]
            ld = pre.logit_diff(patched(pre, pairs, clean, {node: value}), pairs.positions, pairs.good, pairs.bad)
            out[node] = (ld - clean["ld"]).cpu().numpy()
    return out


def gradients(pre: Prefixed, pairs: Pairs, names: list[str], steps: int = 1) -> dict[str, torch.Tensor]:
    """d(summed logit difference)/d(activation) at the hooks ``names`` (suffix positions),
    averaged over ``steps`` inputs interpolated from the corrupted to the clean embeddings
    (the clean input alone when ``steps`` is 1)."""
    model = pre.model
    with torch.no_grad():
        e_clean, e_corrupt = _embed(pre, pairs.clean), _embed(pre, pairs.corrupt)
    alphas = [1.0] if steps == 1 else [(k + 1) / steps for k in range(steps)]
    grads: dict[str, torch.Tensor] = {}
    for alpha in alphas:
        seen = {}

        def grab(act, hook):
            seen[hook.name] = act
            return act

        x = (e_corrupt + alpha * (e_clean - e_corrupt)).requires_grad_(True)
        with model.hooks(fwd_hooks=[(n, grab) for n in names]):
            final = pre.residual(pairs.clean, start=0, residual=x)
        ld = pre.logit_diff(final, pairs.positions, pairs.good, pairs.bad)
        for n, g in zip(names, torch.autograd.grad(ld.sum(), [seen[n] for n in names])):
            grads[n] = grads.get(n, 0) + g.detach() / len(alphas)
    return grads


def eap_nodes(pre: Prefixed, pairs: Pairs, clean: dict, corrupt: dict, nodes: list[str], steps: int = 1) -> dict[str, np.ndarray]:
    """Per node and pair: (corrupted - clean activation) . the gradient of :func:`gradients`
    (EAP-IG with ``steps`` points; ``steps=1``: EAP), summed over the problem's positions."""
    grads = gradients(pre, pairs, sorted({hook_of(n)[1] for n in nodes}), steps)
    out = {}
    for node in nodes:
        _, name, head = hook_of(node)
        diff = (corrupt[name] - clean[name]) * grads[name]
        out[node] = (diff if head is None else diff[:, :, head]).sum((1, 2)).cpu().numpy()
    return out


def _embed(pre: Prefixed, tokens: Int[torch.Tensor, "batch suffix"]) -> Float[torch.Tensor, "batch suffix d_model"]:
    """What enters block 0 for the suffixes, positions continuing after the prefix."""
    if not pre.n_prefix:
        return pre.model.input_to_embed(tokens)[0]
    ones = torch.ones_like(tokens)
    return pre.model.input_to_embed(tokens, attention_mask=ones, past_kv_cache=pre.cache(tokens.shape[0]))[0]
