"""Validating edge-scoring methods where the truth is known: tracr programs compiled to
transformers, whose circuit is known by construction. Per program, the claims the truth
rests on are measured (ground-truth checks), then every method's AUROC and ROC curve,
against a random-score baseline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from . import circuit_graph as cg
from . import tracr_models
from .circuit_eval import auroc, roc_curve

METHODS = ("exact:zero", "exact:mean", "exact:resample", "eap:zero", "eap:resample", "eap-ig:zero", "eap-ig:resample")


@dataclasses.dataclass(frozen=True)
class TracrConfig:
    """Which programs and methods, and how much data: inputs per program, their longest
    length, EAP-IG steps and random-score draws."""
    programs: tuple[str, ...] = tuple(tracr_models.PROGRAMS)
    methods: tuple[str, ...] = METHODS
    n_tracr: int = 100
    tracr_max_len: int = 5
    ig_steps: int = 10
    n_random: int = 200
    seed: int = 0

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS] + [p for p in self.programs if p not in tracr_models.PROGRAMS]
        if bad:
            raise ValueError(f"unknown programs or methods {bad}: programs from {list(tracr_models.PROGRAMS)}, methods from {list(METHODS)}")


def tracr_study(config: TracrConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per program: the ground-truth checks, every method's AUROC and its ROC curve."""
    truth_rows, score_rows, roc_rows = [], [], []
    rng = np.random.default_rng(config.seed)
    for name in config.programs:
        tm = tracr_models.compile_program(name, max_seq_len=config.tracr_max_len)
        task = tracr_models.task(tm, config.n_tracr, seed=config.seed)
        g = cg.graph_of(tm.model)
        truth_m = tracr_models.true_edges(tm)
        truth = g.edge_values(truth_m)
        varying = g.edge_values(tracr_models.varying_edges(tm, task))
        truth_rows.append({"program": name, **ground_truth_checks(tm, task, truth_m), "edges": len(truth),
                           "circuit_edges": int(truth.sum()), "varying_edges": int(varying.sum())})
        # Scored against the edges whose signal varies: all non-circuit edges plus those.
        among = ~truth | varying
        for method in config.methods:
            kind, how = method.split(":")
            if kind == "exact":
                s = cg.exact_edge_scores(tm.model, task, how)[0]
            else:
                s = cg.eap_scores(tm.model, task, how, steps=config.ig_steps if kind == "eap-ig" else 0)
            fpr, tpr = roc_curve(np.abs(s), truth)
            score_rows.append({"program": name, "method": method, "auroc": auroc(s, truth),
                               "auroc_floored": auroc(s, truth, floor=1e-6),
                               "auroc_varying": _maybe_auroc(s[among], varying[among])})
            roc_rows += [{"program": name, "method": method, "fpr": a, "tpr": b} for a, b in zip(fpr, tpr)]
        draws = [auroc(rng.random(len(truth)), truth) for _ in range(config.n_random)]
        score_rows.append({"program": name, "method": "random", "auroc": float(np.mean(draws)),
                           "auroc_floored": float(np.mean(draws)), "auroc_varying": float(np.mean(draws)),
                           "random_lo": float(np.quantile(draws, 0.025)),
                           "random_hi": float(np.quantile(draws, 0.975))})
    return pd.DataFrame(truth_rows), pd.DataFrame(score_rows), pd.DataFrame(roc_rows)


def _maybe_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    return auroc(scores, truth) if truth.any() and not truth.all() else float("nan")


def ground_truth_checks(tm, task: cg.Task, truth: np.ndarray) -> dict:
    """The claims the truth rests on, measured: the converted model matches the RASP evaluator;
    ablating any single non-circuit edge (every ablation) changes no output; keeping only the
    circuit (the rest zero-ablated) keeps every output; zero-ablating the circuit breaks it."""
    inputs = tm.inputs_of(task.tokens, task.mask)
    reference = tm.evaluate(inputs)
    model = tm.model
    g = cg.graph_of(model)
    zero = task.ablated(model, "zero")

    def agree(ablate) -> float:
        with torch.no_grad():
            out = tm.decode(cg.run_ablated(model, task.tokens, task.mask, zero, ablate), task.mask)
        return float(np.mean([tm.same(o, r) for o, r in zip(out, reference)]))

    allowed = torch.tensor(g.allowed, dtype=torch.float32)
    circuit = torch.tensor(truth, dtype=torch.float32)
    largest = 0.0
    for how in cg.ABLATIONS:
        ablated = task.ablated(model, how)
        with torch.no_grad():
            clean = cg.run_ablated(model, task.tokens, task.mask, ablated, torch.zeros_like(allowed))
            off = np.argwhere(g.allowed & ~truth)
            for start in range(0, len(off), 16):
                part = off[start : start + 16]
                out = cg.run_ablated(model, task.tokens, task.mask, ablated, cg.single_edges(g, part)).view(len(part), *clean.shape)
                real = task.mask.bool()[None, :, :, None]
                largest = max(largest, float(((out - clean[None]).abs() * real).max()))
    return {"matches_rasp": agree(torch.zeros_like(allowed)), "non_circuit_max_change": largest,
            "circuit_only_matches": agree(allowed - circuit), "circuit_ablated_matches": agree(circuit)}
