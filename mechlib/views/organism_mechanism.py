"""Chapter 5, part 2: the organism's adder in sentences, each clause computed from the
numbers of seed 0, with the thresholds the page states."""
from __future__ import annotations

import pandas as pd

from .narrative import and_list

ROLE_EFFECT = 0.2  # a component "matters" for a family when ablating it removes this share
ROLE_ATTENTION = 0.3  # a head "reads" a digit when it gives that position this much attention
COLUMN_ATTENTION = 0.5  # a head "moves a column" when its two digits get this much of its attention together
CARRY_EFFECT = 0.5  # a "carry head" removes this much of carry_flip's logit difference on its own
CARRY_MARGIN = 0.2  # later MLPs "use the carry" when carry_flip's mean effect beats every other family's by this much


def carry_head(nodes: pd.DataFrame, attention: pd.DataFrame, query: str) -> dict:
    """The head whose ablation removes most of carry_flip's logit difference, what else it
    does, and where it looks from the tens position."""
    heads = nodes[nodes.node.str.startswith("a")]
    flip = heads[heads.family == "carry_flip"].sort_values("removed", ascending=False)
    if not len(flip):
        return {}
    name = flip.node.iloc[0]
    other = heads[(heads.node == name) & (heads.family != "carry_flip")].removed
    att = attention[(attention["head"] == name) & (attention["query"] == query)].set_index("key").attention
    return {"name": name, "flip": float(flip.removed.iloc[0]), "other_max": float(other.max()) if len(other) else float("nan"),
            "units_attention": float(att.reindex(["a₀", "b₀"]).fillna(0).sum()),
            "tens_attention": float(att.reindex(["a₁", "b₁"]).fillna(0).sum())}


def mechanism(result) -> dict:
    """The organism's adder in sentences, each computed from the numbers of seed 0."""
    nodes = result.nodes[result.nodes.seed == result.nodes.seed.iloc[0]]
    att = result.attention[result.attention.seed == result.attention.seed.iloc[0]]
    base = result.baseline.set_index("family")
    labels = result.positions
    out = {}
    fams = list(base.index)
    tens_q = labels[int(base.position[[f for f in fams if f.startswith("tens") or f == "carry_flip"]].iloc[0])] \
        if any(f.startswith("tens") or f == "carry_flip" for f in fams) else None
    units_q = labels[int(base.position[[f for f in fams if f.startswith("units")]].iloc[0])] \
        if any(f.startswith("units") for f in fams) else None
    pivot = nodes.pivot(index="node", columns="family", values="removed")
    # Digit movers: the strongest head in each family other than carry_flip.
    movers, moved, layers = [], [], set()
    for fam, query, want in (("tens_nocarry", tens_q, ("a₁", "b₁")), ("units_nocarry", units_q, ("a₀", "b₀"))):
        if fam not in pivot:
            continue
        head = pivot.loc[pivot.index.str.startswith("a"), fam].idxmax()
        a = att[(att["head"] == head) & (att["query"] == query)].set_index("key").attention.reindex(list(want)).fillna(0)
        moved.append(bool(pivot.loc[head, fam] >= ROLE_EFFECT and a.sum() >= COLUMN_ATTENTION))
        layers.add(head[1:].split(".")[0])
        movers.append(f"in {fam}, ablating head {head} removes {pivot.loc[head, fam]:.0%} of the logit difference, and from "
                      f"position {query} it gives {want[0]} {a.iloc[0]:.0%} and {want[1]} {a.iloc[1]:.0%} of its attention")
    out["movers"] = "; ".join(movers) + "." if movers else "not measured."
    out["movers_found"] = bool(moved) and all(moved)
    out["movers_layers"] = " and ".join(sorted(layers)) or "none"
    if "carry_flip" in pivot:
        c = carry_head(nodes, att, tens_q)
        out["carry"] = (f"head {c['name']} removes {c['flip']:.0%} of the logit difference in carry_flip but at most "
                        f"{c['other_max']:.1%} in any other family, and from {tens_q} it attends to the units digits "
                        f"a₀ and b₀ ({c['units_attention']:.0%} together; tens digits {c['tens_attention']:.0%})")
        out["carry_head"] = c["name"]
        out["carry_found"] = bool(c["flip"] >= CARRY_EFFECT and c["units_attention"] >= COLUMN_ATTENTION)
    else:
        out["carry"], out["carry_head"] = "not measured (the carry_flip family was not run)", "n/a"
        out["carry_found"] = False
    mlps = pivot[pivot.index.str.startswith("m")]
    out["mlp_range"] = f"{mlps.loc['m0'].min():.0%} to {mlps.loc['m0'].max():.0%}" if "m0" in mlps.index else "n/a"
    direct = nodes.pivot(index="node", columns="family", values="direct")
    heads_direct = direct[direct.index.str.startswith("a")].abs().max().max()
    writer = direct[direct.index.str.startswith("m")].mean(axis=1).idxmax()
    out["direct"] = (f"the heads' direct effect on the answer logits is at most {heads_direct:.0%} of the logit difference, "
                     f"and the MLP writing most directly is {writer} ({direct.loc[writer].mean():.0%} on average over the families)")
    later = [m for m in mlps.index if m != "m0"]
    others = [f for f in pivot.columns if f != "carry_flip"]
    if "carry_flip" in pivot and others and later:
        flip = pivot.loc[later, "carry_flip"].mean()
        each = {f: pivot.loc[later, f].mean() for f in others}
        out["use_carry"] = (f"ablating the MLPs after layer 0 ({and_list(later)}) one at a time removes on average "
                            f"{flip:.0%} of the logit difference when the carry flips (carry_flip), against "
                            + and_list(f"{v:.0%} in {f}" for f, v in each.items()))
        out["use_carry_more"] = bool(flip - max(each.values()) >= CARRY_MARGIN)
        out["use_carry_verdict"] = ("yes" if out["use_carry_more"] else "no") + (
            f": {flip:.0%} against at most {max(each.values()):.0%} without a carry change")
    else:
        out["use_carry"], out["use_carry_more"], out["use_carry_verdict"] = "not measured", False, "not tested"
    r = result.residual
    at_answer = r[(r.layer >= 1) & (r.pos == r.family.map(base.position))]
    elsewhere = r[(r.layer >= 1) & (r.pos != r.family.map(base.position))]
    out["residual"] = (f"From layer 1 on, the residual stream at the answer position alone carries {at_answer.removed.min():.0%} "
                       f"or more of every family's effect, and no other position more than {max(elsewhere.removed.max(), 0):.0%}")
    return out
