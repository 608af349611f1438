"""Faithfulness of a node circuit, and of a few neurons, on a real model (:mod:`.prefixed`).

A circuit here is a set of nodes (heads and MLPs, :mod:`.node_patching`). It is tested by
keeping it and mean-ablating every other node at the problem's positions: each ablated
node's activation is replaced by its mean at that position over a reference table (every
one-digit problem). The worked examples' positions are left as they are. The share of the
logit difference recovered is ``(ld(circuit) - ld(nothing kept)) / (ld(clean) - ld(nothing
kept))``, and accuracy is the top token at the scored position.

Neurons (Nikankin et al. 2025): in chosen MLPs, at the scored position only, every neuron
but the kept ones is mean-ablated (``hook_post``); the rest of the model runs clean.
"""
from __future__ import annotations

import numpy as np
import torch

from .node_patching import Pairs, hook_of
from .prefixed import Prefixed


def means(pre: Prefixed, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Mean activation at each suffix position over the rows of ``tokens`` (the reference
    table), for the hooks ``names``: {name: [suffix, ...]}."""
    out = {}

    def keep(act, hook):
        out[hook.name] = act.detach().mean(0)
        return act

    with torch.no_grad(), pre.model.hooks(fwd_hooks=[(n, keep) for n in names]):
        pre.residual(tokens)
    return out


def run_kept(pre: Prefixed, pairs: Pairs, kept: set[str], nodes: list[str], mean: dict) -> tuple[np.ndarray, np.ndarray]:
    """(logit difference, top token right) per pair with only ``kept`` of ``nodes`` left
    clean, the others mean-ablated at the problem's positions."""
    ablate: dict[str, list] = {}
    for node in nodes:
        if node not in kept:
            _, name, head = hook_of(node)
            ablate.setdefault(name, []).append(head)

    def put(act, hook):
        act = act.clone()
        for head in ablate[hook.name]:
            if head is None:
                act[:] = mean[hook.name]
            else:
                act[:, :, head] = mean[hook.name][:, head]
        return act

    return _scored(pre, pairs, [(n, put) for n in ablate])


def run_neurons(pre: Prefixed, pairs: Pairs, kept: dict[int, np.ndarray], mean: dict) -> tuple[np.ndarray, np.ndarray]:
    """(logit difference, top token right) per pair with, in each layer of ``kept``, every
    MLP neuron but the kept ones mean-ablated at the scored position."""
    rows = torch.arange(len(pairs.positions))
    masks = {}
    for layer, idx in kept.items():
        m = torch.ones(pre.model.cfg.d_mlp, dtype=torch.bool)
        m[torch.as_tensor(np.asarray(idx, dtype=int), dtype=torch.long)] = False
        masks[f"blocks.{layer}.mlp.hook_post"] = m

    def put(act, hook):
        act = act.clone()
        m = masks[hook.name]
        at = act[rows, pairs.positions]
        at[:, m] = mean[hook.name][pairs.positions][:, m]
        act[rows, pairs.positions] = at
        return act

    return _scored(pre, pairs, [(n, put) for n in masks])


def _scored(pre: Prefixed, pairs: Pairs, hooks: list) -> tuple[np.ndarray, np.ndarray]:
    """(logit difference, top token right) per pair of the clean run under ``hooks``."""
    with torch.no_grad(), pre.model.hooks(fwd_hooks=hooks):
        final = pre.residual(pairs.clean)
        ld = pre.logit_diff(final, pairs.positions, pairs.good, pairs.bad)
        top = pre.top(final, pairs.positions)
    return ld.cpu().numpy(), (top == pairs.good).cpu().numpy()


def recovered(ld: np.ndarray, ld_none: np.ndarray, ld_clean: np.ndarray) -> float:
    """Share of the clean logit difference recovered over the all-ablated one (means)."""
    gap = ld_clean.mean() - ld_none.mean()
    return float((ld.mean() - ld_none.mean()) / gap) if gap else float("nan")


def matched_random(nodes: list[str], like: set[str], rng: np.random.Generator) -> set[str]:
    """As many random heads and random MLPs as ``like`` has of each."""
    out = set()
    for is_head in (True, False):
        pool = [n for n in nodes if n.startswith("a") == is_head]
        k = sum(1 for n in like if n.startswith("a") == is_head)
        out |= {pool[i] for i in rng.choice(len(pool), size=k, replace=False)}
    return out
