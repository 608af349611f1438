"""Scores for every edge and node: exact patching (one forward per edge, batched), edge
attribution patching (EAP, Syed et al. 2023) and EAP with integrated gradients (EAP-IG,
Hanna et al. 2024); and the metric of a kept circuit."""
from __future__ import annotations

import numpy as np
import torch

from .ablation import Task, run_ablated, source_outputs
from .graph import Graph, graph_of, numpy


def _grad_matrix(g: Graph, grads: dict) -> torch.Tensor:
    """Gradients at every destination input, stacked [batch, pos, n_dest, d_model]."""
    parts = []
    for layer in range(g.n_layers):
        parts += [grads[f"{layer}{x}"] for x in "qkv"]
        parts[-3:] = [torch.stack(parts[-3:], dim=3).flatten(2, 3)]  # head-major: a.h.q, a.h.k, a.h.v
        parts.append(grads[f"m{layer}"][:, :, None])
    parts.append(grads["end"][:, :, None])
    return torch.cat(parts, dim=2)


def _per_variant(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """The metric [n_variants, batch] of a variant-major run."""
    return torch.stack([task.metric(part) for part in logits.split(task.tokens.shape[0])])


def exact_edge_scores(model, task: Task, how: str, rows_per_run: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per edge (``edges`` order): the mean over examples of |metric change| when that one edge
    is ablated, and the mean signed change."""
    g = graph_of(model)
    ablated = task.ablated(model, how)
    with torch.no_grad():
        base = task.metric(run_ablated(model, task.tokens, task.mask, ablated, torch.zeros(g.allowed.shape)))
        idx = np.argwhere(g.allowed)
        absolute, signed = [], []
        chunk = max(1, rows_per_run // task.tokens.shape[0])
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            m = _per_variant(task, run_ablated(model, task.tokens, task.mask, ablated, single_edges(g, part)))
            absolute.append((m - base).abs().mean(1))
            signed.append((m - base).mean(1))
    return numpy(torch.cat(absolute)), numpy(torch.cat(signed))  # argwhere is row-major: ``edges`` order


def single_edges(g: Graph, cells: np.ndarray) -> torch.Tensor:
    """[len(cells), n_dest, n_source]: variant i ablates the one edge at cells[i] = (dest, source)."""
    out = torch.zeros((len(cells), *g.allowed.shape))
    out[torch.arange(len(cells)), cells[:, 0], cells[:, 1]] = 1.0
    return out


def node_ablation_matrix(g: Graph, nodes: list[str]) -> torch.Tensor:
    """[len(nodes), n_dest, n_source]: variant i ablates every edge out of source nodes[i]."""
    allowed = torch.tensor(g.allowed, dtype=torch.float32)
    out = torch.zeros((len(nodes), *allowed.shape))
    for i, node in enumerate(nodes):
        j = g.sources.index(node)
        out[i, :, j] = allowed[:, j]
    return out


def exact_node_scores(model, task: Task, how: str, nodes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per source node: the metric change per example [batch] when its output is ablated."""
    g = graph_of(model)
    nodes = nodes or g.sources[1:]
    ablated = task.ablated(model, how)
    with torch.no_grad():
        base = task.metric(run_ablated(model, task.tokens, task.mask, ablated, torch.zeros(g.allowed.shape)))
        m = _per_variant(task, run_ablated(model, task.tokens, task.mask, ablated, node_ablation_matrix(g, nodes)))
    return {n: numpy(m[i] - base) for i, n in enumerate(nodes)}


def eap_scores(model, task: Task, how: str, steps: int = 0) -> np.ndarray:
    """Edge attribution patching: per edge, the mean over examples of |(ablated - clean output of
    s) . d metric / d (input of d)|. With ``steps`` > 0, EAP-IG: the gradient is averaged over
    ``steps`` runs whose embeddings move from the ablated to the clean ones."""
    g = graph_of(model)
    ablated = task.ablated(model, how)
    _, clean = source_outputs(model, task.tokens, task.mask)
    none = torch.zeros(g.allowed.shape)
    points = [None] if steps <= 0 else [k / steps for k in range(1, steps + 1)]
    total = None
    for alpha in points:
        grads: dict = {}
        # The embeddings are passed in (the clean ones for plain EAP) so that every reader's input
        # has a gradient even when the model's parameters are frozen.
        embed = clean[:, :, 0] if alpha is None else ablated[:, :, 0] + alpha * (clean[:, :, 0] - ablated[:, :, 0])
        logits = run_ablated(model, task.tokens, task.mask, ablated, none, grads=grads, embed=embed)
        task.metric(logits).sum().backward()
        gm = _grad_matrix(g, grads).detach()
        total = gm if total is None else total + gm
    gm = total / len(points)
    if task.mask is not None:
        gm = gm * task.mask.to(gm.device, gm.dtype)[:, :, None, None]
    diff = ablated - clean  # [b, p, n_source, d]
    per_example = torch.einsum("bpsd,bprd->brs", diff, gm)  # [b, n_dest, n_source]
    model.zero_grad(set_to_none=True)
    return g.edge_values(numpy(per_example.abs().mean(0)))


def circuit_metric(model, task: Task, how: str, keep: np.ndarray) -> torch.Tensor:
    """The metric per example with only the edges where ``keep`` ([n_dest, n_source] bool) is
    True left clean, every other edge ablated."""
    g = graph_of(model)
    ablate = torch.tensor(g.allowed & ~np.asarray(keep, dtype=bool), dtype=torch.float32)
    with torch.no_grad():
        return task.metric(run_ablated(model, task.tokens, task.mask, task.ablated(model, how), ablate))


def top_k_masks(g: Graph, scores: np.ndarray, ks: list[int]) -> list[np.ndarray]:
    """Keep-masks [n_dest, n_source] of the k highest-scoring edges (``edges`` order) for each k."""
    order = np.argsort(-np.abs(scores), kind="stable")
    out = []
    for k in ks:
        keep = np.zeros(len(scores), dtype=bool)
        keep[order[:k]] = True
        out.append(g.edge_matrix(keep.astype(float)) > 0)
    return out
