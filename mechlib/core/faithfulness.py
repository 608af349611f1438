"""Is a circuit faithful? Edges are scored on the discovery half of the pairs; on the
other half, keeping only the top k (the rest ablated the way the edges were scored: zero,
mean or resample) traces the faithfulness curve,
with random edge sets of the same size as the matched control. The named circuit is the
smallest requested k that recovers the asked share; it is then ablated alone, beside a
random set of the same size."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from . import circuit_graph as cg
from .minimal_pairs import correct, pair_task
from .stats import proportion


@dataclasses.dataclass(frozen=True)
class FaithfulnessConfig:
    """How edges are ranked and ablated, the curve's sizes and the share a circuit must recover."""
    edge_scores: str = "exact"
    ablation: str = "resample"
    ig_steps: int = 10
    top_k: tuple[int, ...] = (5, 10, 20, 40, 80, 160)
    faithful_share: float = 0.8
    seed: int = 0

    def __post_init__(self):
        if self.edge_scores not in ("exact", "eap", "eap-ig"):
            raise ValueError(f"edge_scores: 'exact', 'eap' or 'eap-ig', got {self.edge_scores!r}")
        if not 0 < self.faithful_share <= 1:
            raise ValueError(f"faithful_share: a share in (0, 1], got {self.faithful_share}")


def edge_study(config: FaithfulnessConfig, model, study: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Edge scores on the discovery half of the pairs; on the other half, the faithfulness
    curve over top-k (the rest ablated with ``config.ablation``, as in scoring) with random edge
    sets matched layer by layer as the control; and the named circuit: the smallest k that
    recovers ``config.faithful_share`` on the discovery half, judged on the test half, with its
    minimality (each edge removed alone)."""
    pairs, clean, corrupt = study["pairs"], study["clean"], study["corrupt"]
    find = np.flatnonzero(pairs.split == "discovery")
    test = np.flatnonzero(pairs.split == "test")
    task = pair_task(pairs.iloc[find].reset_index(drop=True), clean[find], corrupt[find])
    g = cg.graph_of(model)
    edges = pd.DataFrame(g.edges, columns=["source", "destination"])
    if config.edge_scores == "exact":
        edges["exact"] = cg.exact_edge_scores(model, task, config.ablation)[0]
    for kind in ("eap", "eap-ig"):
        edges[kind] = cg.eap_scores(model, task, config.ablation, steps=config.ig_steps if kind == "eap-ig" else 0)
    ranking = edges[config.edge_scores].to_numpy()
    find_task, find_pairs = task, pairs.iloc[find].reset_index(drop=True)
    held = pairs.iloc[test].reset_index(drop=True)
    task = pair_task(held, clean[test], corrupt[test])
    n_edges = len(g.edges)
    ks = sorted({k for k in config.top_k if k < n_edges} | {n_edges})
    rng = np.random.default_rng(config.seed)
    measure = _measurer(model, g, task, held, config.ablation)
    measure_find = _measurer(model, g, find_task, find_pairs, config.ablation)
    strata = _layer_strata(g, model.cfg.n_layers)

    def random_keep(like: np.ndarray) -> np.ndarray:
        return matched_random(g, strata, like, rng)

    ld_clean = held.ld_clean.to_numpy()
    ld_none, acc_none = measure(np.zeros(g.allowed.shape, dtype=bool))
    gap = ld_clean.mean() - ld_none.mean()
    rows = []
    for k, keep in zip(ks, cg.top_k_masks(g, ranking, ks)):
        rand = [measure(random_keep(keep)) for _ in range(3)]
        for which, (ld, ok) in [("top-k edges", measure(keep)),
                                ("random edges", (np.concatenate([x[0] for x in rand]), np.concatenate([x[1] for x in rand])))]:
            stat = proportion(ok)
            rows.append({"k": k, "edges": which, "recovered": float((ld.mean() - ld_none.mean()) / gap),
                         "accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"], "n": stat["n"]})
    curve = pd.DataFrame(rows)
    # The named circuit: the smallest k, up to the largest size asked, whose top-k edges recover
    # the share on the discovery half (bisection, where the ranking came from); then judged on
    # the test half. The whole graph recovers everything by construction: it is never a circuit.
    largest = max([k for k in ks if k < n_edges], default=n_edges)
    none_find = measure_find(np.zeros(g.allowed.shape, dtype=bool))[0].mean()
    gap_find = find_pairs.ld_clean.mean() - none_find

    def recovered_on_discovery(k: int) -> float:
        return float((measure_find(cg.top_k_masks(g, ranking, [k])[0])[0].mean() - none_find) / gap_find)

    k_named = smallest_k(recovered_on_discovery, largest, config.faithful_share)
    reached = recovered_on_discovery(k_named) >= config.faithful_share
    named = cg.top_k_masks(g, ranking, [k_named])[0]
    clean_acc = proportion(held.correct)
    ld_named, ok_named = measure(named)
    recovered = float((ld_named.mean() - ld_none.mean()) / gap)
    ld_cut, ok_cut = measure(g.allowed & ~named)  # the circuit's edges ablated, every other edge kept
    ld_rcut, ok_rcut = measure(g.allowed & ~random_keep(named))
    rec_lo, rec_hi = bootstrap_share(ld_named, ld_none, ld_clean, seed=config.seed)
    ld_random = np.concatenate([measure(random_keep(named))[0] for _ in range(3)])
    stat = proportion(ok_named)
    circuit = {"k": k_named, "n_edges": n_edges, "recovered": recovered, "recovered_lo": rec_lo, "recovered_hi": rec_hi,
               "accuracy": stat["p"], "accuracy_lo": stat["lo"], "accuracy_hi": stat["hi"], "n": stat["n"],
               "found": bool(recovered >= config.faithful_share), "reached_on_discovery": bool(reached),
               "random_recovered": float((ld_random.mean() - ld_none.mean()) / gap),
               "n_discovery": int(len(find)), "clean_accuracy": clean_acc["p"], "clean_lo": clean_acc["lo"],
               "clean_hi": clean_acc["hi"], "none_accuracy": float(acc_none.mean()),
               "ablated_accuracy": float(ok_cut.mean()), **_interval("ablated", ok_cut),
               "random_ablated_accuracy": float(ok_rcut.mean()), **_interval("random_ablated", ok_rcut),
               "ablated_removed": float((ld_clean.mean() - ld_cut.mean()) / gap),
               "random_ablated_removed": float((ld_clean.mean() - ld_rcut.mean()) / gap),
               **minimality(measure, g, named, ld_none, gap, recovered), "nodes": circuit_nodes(g, named)}
    return edges, curve, circuit


def _measurer(model, g: cg.Graph, task, pairs: pd.DataFrame, ablation: str):
    """keep mask -> (logit difference per pair, correct per pair), every other edge ablated."""
    ablated = task.ablated(model, ablation)  # the same ablation the edges were scored with

    def measure(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ablate = torch.tensor(g.allowed & ~keep, dtype=torch.float32)
        with torch.no_grad():
            logits = cg.run_ablated(model, task.tokens, None, ablated, ablate)
        return cg.numpy(task.metric(logits)), correct(logits, pairs)

    return measure


def smallest_k(recovered_at, largest: int, share: float) -> int:
    """The smallest k in 1..largest with ``recovered_at(k) >= share`` by bisection (recovery is
    taken to grow with k); ``largest`` when none reaches it."""
    lo, hi = 1, largest
    if recovered_at(hi) < share:
        return largest
    while lo < hi:
        mid = (lo + hi) // 2
        if recovered_at(mid) >= share:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _layer_strata(g: cg.Graph, n_layers: int) -> np.ndarray:
    """Per edge (``edges`` order): its (source layer, destination layer) as one integer."""
    def layer(node: str) -> int:
        if node == "embed":
            return -1
        if node == "end":
            return n_layers
        return int(node[1:].split(".")[0])
    return np.array([(layer(s) + 1) * (n_layers + 2) + layer(d) + 1 for s, d in g.edges])


def matched_random(g: cg.Graph, strata: np.ndarray, like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random edges matched to the edge set ``like`` layer by layer: as many edges from each
    (source layer, destination layer) stratum, drawn among the stratum's other edges when it
    has enough of them. Returns a [n_dest, n_source] keep mask."""
    chosen = g.edge_values(like).astype(bool)
    r = np.zeros(len(g.edges))
    for stratum in np.unique(strata[chosen]):
        members = np.flatnonzero(strata == stratum)
        want = int(chosen[members].sum())
        others = members[~chosen[members]]
        pool = others if len(others) >= want else members
        r[rng.choice(pool, want, replace=False)] = 1
    return g.edge_matrix(r) > 0


MINIMALITY_EDGES = 200  # at most this many of the circuit's edges are removed one at a time


def minimality(measure, g: cg.Graph, named: np.ndarray, ld_none: np.ndarray, gap: float, recovered: float) -> dict:
    """Remove each of the circuit's edges alone (up to :data:`MINIMALITY_EDGES`): how much of the
    logit difference that costs, the largest cost and how many edges cost more than 1%."""
    cells = np.argwhere(named & g.allowed)[:MINIMALITY_EDGES]
    costs = []
    for d, s in cells:
        keep = named.copy()
        keep[d, s] = False
        costs.append(recovered - float((measure(keep)[0].mean() - ld_none.mean()) / gap))
    costs = np.array(costs) if costs else np.zeros(1)
    return {"minimality_tested": int(len(cells)), "minimality_max_cost": float(costs.max()),
            "minimality_needed": int((costs > 0.01).sum())}


def bootstrap_share(ld: np.ndarray, ld_none: np.ndarray, ld_clean: np.ndarray, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the recovered share (mean(ld) - mean(ld_none)) /
    (mean(ld_clean) - mean(ld_none)), resampling the test pairs (the same draw for all three)."""
    rng = np.random.default_rng([seed, 2])
    idx = rng.integers(0, len(ld), size=(n_boot, len(ld)))
    none = ld_none[idx].mean(1)
    shares = (ld[idx].mean(1) - none) / (ld_clean[idx].mean(1) - none)
    return float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))


def circuit_nodes(g: cg.Graph, keep: np.ndarray) -> list[str]:
    """The heads and MLPs an edge set touches (as source or as reader)."""
    out = set()
    for s, d in g.edges:
        if keep[g.destinations.index(d), g.sources.index(s)]:
            out |= {s, d if d.count(".") < 2 else d.rsplit(".", 1)[0]}
    return sorted(out - {"embed", "end"}, key=lambda n: (int(n[1:].split(".")[0]), n[0] == "m", n))


def _interval(name: str, ok: np.ndarray) -> dict:
    stat = proportion(ok)
    return {f"{name}_lo": stat["lo"], f"{name}_hi": stat["hi"]}
