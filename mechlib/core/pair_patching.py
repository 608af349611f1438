"""What a model does with the minimal pairs before any edge is scored: the clean baseline,
residual-stream patching, node ablation with direct logit attribution, attention from the
answer positions, and the components each family needs (its roles)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import circuit_graph as cg
from .minimal_pairs import PairConfig, correct, encode_pairs, minimal_pairs, pair_task, position_labels
from .stats import proportion

ROLES = ("a₁", "a₀", "b₁", "b₀")  # operand digits: a₁ is a's tens digit, a₀ its units digit


def pair_study(config: PairConfig, ablation: str, model, tokenizer, recipe) -> dict:
    """On one model: the pairs and their clean baseline, residual patching, node effects
    (``ablation``: 'resample', 'mean' or 'zero') with direct logit attribution, and attention."""
    pairs = minimal_pairs(config, recipe)
    pairs, clean, corrupt = encode_pairs(pairs, tokenizer, config.prompt_format)
    cg.prepare(model)
    labels = position_labels(tokenizer, config.prompt_format, clean.shape[1])
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean), model(corrupt)
    task = pair_task(pairs, clean, corrupt)
    ld_clean, ld_corrupt = cg.numpy(task.metric(clean_logits)), cg.numpy(task.metric(corrupt_logits))
    pairs = pairs.assign(ld_clean=ld_clean, ld_corrupt=ld_corrupt, correct=correct(clean_logits, pairs))
    base_rows, node_rows, resid_rows = [], [], []
    for family, idx in pairs.groupby("family", sort=False).groups.items():
        idx = np.asarray(idx)
        sub = pair_task(pairs.iloc[idx].reset_index(drop=True), clean[idx], corrupt[idx])
        gap = float(ld_clean[idx].mean() - ld_corrupt[idx].mean())
        stat = proportion(pairs.correct.iloc[idx])
        position = int(pairs.position.iloc[idx[0]])  # one position per family
        base_rows.append({"family": family, "n": stat["n"], "accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"],
                          "ld_clean": float(ld_clean[idx].mean()), "ld_corrupt": float(ld_corrupt[idx].mean()),
                          "position": position})
        fam = pairs.iloc[idx]
        good = torch.tensor(fam.token.tolist(), device=model.W_U.device)
        bad = torch.tensor(fam.token_corrupt.tolist(), device=model.W_U.device)
        direction = (model.W_U[:, good] - model.W_U[:, bad]).T.detach()  # [batch, d_model]
        direct = cg.direct_effects(model, clean[idx], direction, position)
        ld = float(ld_clean[idx].mean())
        for node, change in cg.exact_node_scores(model, sub, ablation).items():
            node_rows.append({"family": family, "node": node, "removed": float(-change.mean() / gap),
                              "direct": float(direct[node].mean() / ld)})
        patched = cg.residual_patching(model, sub)  # [layers + 1, pos, batch]
        for layer in range(patched.shape[0]):
            for pos in range(patched.shape[1]):
                removed = (ld_clean[idx].mean() - patched[layer, pos].mean()) / gap
                resid_rows.append({"family": family, "layer": layer, "position": labels[pos], "pos": pos,
                                   "removed": float(removed)})
    baseline = pd.DataFrame(base_rows)
    att = attention_table(model, clean, pairs, labels)
    return {"pairs": pairs, "clean": clean, "corrupt": corrupt, "task": task, "baseline": baseline,
            "nodes": pd.DataFrame(node_rows), "residual": pd.DataFrame(resid_rows), "attention": att, "labels": labels}


def attention_table(model, clean: torch.Tensor, pairs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Mean attention of every head from each answer position to each operand digit."""
    rows = []
    for pos in sorted(pairs.position.unique()):
        att = cg.attention_to(model, clean, [int(pos)])[:, :, 0]  # [layers, heads, key pos]
        for layer in range(att.shape[0]):
            for h in range(att.shape[1]):
                for k, label in enumerate(labels):
                    role = label.split(":")[-1]
                    rows.append({"head": f"a{layer}.{h}", "query": labels[pos], "key": role, "attention": float(att[layer, h, k])})
    df = pd.DataFrame(rows)
    return df.groupby(["head", "query", "key"], sort=False, as_index=False).attention.sum()


def roles(study: dict, seed: int, effect: float, attention: float) -> pd.DataFrame:
    """Per family: the components whose ablation removes at least ``effect`` of the logit
    difference, and for heads the operand digits they give at least ``attention`` of their
    attention to from the family's position."""
    nodes, att, base = study["nodes"], study["attention"], study["baseline"].set_index("family")
    labels = study["labels"]
    rows = []
    for family, group in nodes.groupby("family", sort=False):
        query = labels[int(base.loc[family, "position"])]
        strong = group[group.removed >= effect].sort_values("removed", ascending=False)
        heads = strong[strong.node.str.startswith("a")]
        mlps = strong[strong.node.str.startswith("m")]
        reads = set()
        for head in heads.node:
            a = att[(att["head"] == head) & (att["query"] == query) & att["key"].isin(ROLES)]
            reads |= set(a[a["attention"] >= attention]["key"])
        rows.append({"seed": seed, "family": family, "query": query,
                     "heads": ", ".join(f"{n} ({v:.0%})" for n, v in zip(heads.node, heads.removed)) or "none",
                     "mlps": ", ".join(f"{n} ({v:.0%})" for n, v in zip(mlps.node, mlps.removed)) or "none",
                     "digits_read": " ".join(r for r in ROLES if r in reads) or "none",
                     "top": group.sort_values("removed", ascending=False).node.iloc[0],
                     "top_kind": "MLP" if group.sort_values("removed", ascending=False).node.iloc[0].startswith("m") else "head"})
    return pd.DataFrame(rows)
