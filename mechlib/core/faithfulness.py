"""Is a circuit faithful? Edges are scored on the discovery half of the pairs; on the
other half, keeping only the top k (the rest mean-ablated) traces the faithfulness curve,
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
    curve over top-k (the rest mean-ablated) with random edge sets of the same size as the
    control, and the named circuit: the smallest k that recovers ``config.faithful_share``."""
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
    held = pairs.iloc[test].reset_index(drop=True)
    task = pair_task(held, clean[test], corrupt[test])
    n_edges = len(g.edges)
    ks = sorted({k for k in config.top_k if k < n_edges} | {n_edges})
    mean_ablated = cg.ablated_outputs(model, task.tokens, None, "mean")
    rng = np.random.default_rng(config.seed)

    def measure(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ablate = torch.tensor(g.allowed & ~keep, dtype=torch.float32)
        with torch.no_grad():
            logits = cg.run_ablated(model, task.tokens, None, mean_ablated, ablate)
        return cg.numpy(task.metric(logits)), correct(logits, held)

    def random_keep(k: int) -> np.ndarray:
        r = np.zeros(n_edges)
        r[rng.choice(n_edges, k, replace=False)] = 1
        return g.edge_matrix(r) > 0

    ld_clean = held.ld_clean.to_numpy()
    ld_none, acc_none = measure(np.zeros(g.allowed.shape, dtype=bool))
    gap = ld_clean.mean() - ld_none.mean()
    rows = []
    for k, keep in zip(ks, cg.top_k_masks(g, ranking, ks)):
        rand = [measure(random_keep(k)) for _ in range(3)]
        for which, (ld, ok) in [("top-k edges", measure(keep)),
                                ("random edges", (np.concatenate([x[0] for x in rand]), np.concatenate([x[1] for x in rand])))]:
            stat = proportion(ok)
            rows.append({"k": k, "edges": which, "recovered": float((ld.mean() - ld_none.mean()) / gap),
                         "accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"], "n": stat["n"]})
    curve = pd.DataFrame(rows)
    top = curve[curve.edges == "top-k edges"]
    # The whole graph (always on the curve, as the reference point) recovers everything by
    # construction: it never counts as a circuit. Only the requested sizes below it can.
    asked = top[top.k < n_edges]
    enough = asked[asked.recovered >= config.faithful_share]
    k_named = int(enough.k.min()) if len(enough) else int(asked.k.max() if len(asked) else n_edges)
    named = cg.top_k_masks(g, ranking, [k_named])[0]
    clean_acc = proportion(held.correct)
    ld_cut, ok_cut = measure(g.allowed & ~named)  # the circuit's edges ablated, every other edge kept
    ld_rcut, ok_rcut = measure(g.allowed & ~random_keep(k_named))
    row = top.set_index("k").loc[k_named]
    ld_named, _ = measure(named)
    rec_lo, rec_hi = bootstrap_share(ld_named, ld_none, ld_clean, seed=config.seed)
    circuit = {"k": k_named, "n_edges": n_edges, "recovered": float(row.recovered), "recovered_lo": rec_lo, "recovered_hi": rec_hi,
               "accuracy": float(row.accuracy),
               "accuracy_lo": float(row.lo), "accuracy_hi": float(row.hi), "n": int(row.n), "found": bool(len(enough)),
               "n_discovery": int(len(find)), "clean_accuracy": clean_acc["p"], "clean_lo": clean_acc["lo"],
               "clean_hi": clean_acc["hi"], "none_accuracy": float(acc_none.mean()),
               "ablated_accuracy": float(ok_cut.mean()), **_interval("ablated", ok_cut),
               "random_ablated_accuracy": float(ok_rcut.mean()), **_interval("random_ablated", ok_rcut),
               "ablated_removed": float((ld_clean.mean() - ld_cut.mean()) / gap),
               "random_ablated_removed": float((ld_clean.mean() - ld_rcut.mean()) / gap),
               "nodes": circuit_nodes(g, named)}
    return edges, curve, circuit


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
