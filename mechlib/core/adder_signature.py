"""Does a model add the way the organism does? Three checks computed from a circuit study's
tables, the same code for the organism and for a real model, and a verdict from them.

The organism's algorithm, as chapter 5 finds it: the operands are moved to the answer
position by attention early in the network; the answer digits are computed by MLPs at that
position; the carry has a route of its own. Each becomes a check with a threshold:

1. *Operands moved by early attention*: the first layer whose input residual, patched at the
   answer position alone, removes at least :data:`MOVE_SHARE` of the logit difference (mean
   over the families) lies in the first :data:`EARLY` of the depth, and the head whose
   patching removes most gives the operand digits at least :data:`ATTENTION_READ` of its
   attention from the answer position.
2. *Digits computed in MLPs*: from that layer on, MLPs account for at least
   :data:`MLP_SHARE` of the summed absolute effect of all components (mean over families).
3. *A distinct carry route*: some component removes at least :data:`CARRY_MARGIN` more of
   the carry_flip family's logit difference than of any other family's.

Verdict: all three hold, *yes*; one or two, *partly*; none, *no*.
"""
from __future__ import annotations

import pandas as pd

MOVE_SHARE = 0.5
EARLY = 0.5
ATTENTION_READ = 0.3
MLP_SHARE = 0.5
CARRY_MARGIN = 0.2
THRESHOLDS = {"move_share": MOVE_SHARE, "early": EARLY, "attention_read": ATTENTION_READ, "mlp_share": MLP_SHARE,
              "carry_margin": CARRY_MARGIN}


def _layer(node: str) -> int:
    return int(node[1:].split(".")[0])


def move_layer(residual: pd.DataFrame, n_layers: int) -> int | None:
    """The first layer whose input residual, patched at the answer position alone, removes at
    least :data:`MOVE_SHARE` of the logit difference, on average over the families (rows:
    family, layer, answer, removed)."""
    at = residual[residual.answer].groupby("layer").removed.mean()
    hit = at[(at >= MOVE_SHARE) & (at.index < n_layers)]
    return int(hit.index[0]) if len(hit) else None


def signature(residual: pd.DataFrame, nodes: pd.DataFrame, attention: pd.DataFrame, n_layers: int, operand_keys,
              queries: dict[str, str]) -> dict:
    """The three checks. ``residual``: family, layer, answer (the row patches the family's
    answer position), removed; ``nodes``: family, node (``a{l}.{h}``, ``m{l}``), removed;
    ``attention``: head, query, key, attention; ``queries``: each family's answer position
    label as ``attention`` names it; ``operand_keys``: the operand digits' key labels."""
    move = move_layer(residual, n_layers)
    out = {"move_layer": move, "n_layers": n_layers, "early": bool(move is not None and move <= EARLY * n_layers)}
    heads = nodes[nodes.node.str.startswith("a")]
    mean = heads.groupby("node").removed.mean()
    head = mean.idxmax() if len(mean) else None
    read = 0.0
    if head is not None:
        family = heads[heads.node == head].sort_values("removed").family.iloc[-1]
        a = attention[(attention["head"] == head) & (attention["query"] == queries[family])]
        read = float(a[a["key"].isin(list(operand_keys))].attention.sum())
    out |= {"top_head": head or "none", "top_head_removed": float(mean.max()) if len(mean) else float("nan"),
            "operand_attention": read}
    out["moved_by_attention"] = bool(out["early"] and read >= ATTENTION_READ)
    late = nodes[nodes.node.map(_layer) >= (move if move is not None else 0)]
    per_family = late.assign(size=late.removed.abs(), mlp=late.node.str.startswith("m")).groupby("family")
    shares = per_family.apply(lambda d: d[d.mlp]["size"].sum() / d["size"].sum() if d["size"].sum() else 0.0, include_groups=False)
    out["mlp_share"] = float(shares.mean()) if len(shares) else float("nan")
    out["computed_in_mlps"] = bool(out["mlp_share"] >= MLP_SHARE)
    wide = nodes.pivot_table(index="node", columns="family", values="removed")
    if "carry_flip" in wide and wide.shape[1] > 1:
        margin = wide["carry_flip"] - wide.drop(columns="carry_flip").max(axis=1)
        out |= {"carry_node": margin.idxmax(), "carry_margin": float(margin.max())}
    else:
        out |= {"carry_node": "none", "carry_margin": float("nan")}
    out["distinct_carry"] = bool(out["carry_margin"] >= CARRY_MARGIN)
    held = sum(out[k] for k in ("moved_by_attention", "computed_in_mlps", "distinct_carry"))
    out["checks_held"] = held
    out["verdict"] = "yes" if held == 3 else "partly" if held else "no"
    return out
