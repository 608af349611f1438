"""Chapter 5, part 3: the real models' one-digit addition, in glued text, tables and charts,
beside the organism's adder (:mod:`mechlib.core.adder_signature`)."""
from __future__ import annotations

import pandas as pd

from ..core import adder_signature as sig
from ..core.digit_pairs import POSITIONS
from ..core.shipped import shipped
from ..core.stats import fmt_interval, proportion
from .narrative import and_list

PROFILE_ROWS = 10  # top neurons per model in the profile table
NONE = "Not measured: this run studied no pretrained model (parameter real_models)."
REAL_KEYS = ("real_models_text", "real_solved_text", "real_pairs_text", "real_flow_text", "real_components_text",
             "real_methods_text", "real_heads_text", "real_circuit_text", "real_neurons_text", "real_profile_text",
             "real_verdict_text", "real_time_text", "real_direct_text")


def title(name: str) -> str:
    found = shipped(name)
    return found.title if found else str(name).rstrip("/").rsplit("/", 1)[-1]


def real_signature(s: dict) -> dict:
    """The three checks of :mod:`~mechlib.core.adder_signature` on one real-model study."""
    queries = dict(zip(s["pairs"].family, (POSITIONS[p] for p in s["pairs"].position)))
    return sig.signature(s["residual"], s["nodes"], s["attention"], s["n_layers"], ("a", "b"), queries)


def organism_signature(result, roles) -> dict:
    """The same checks on the organism (seed 0), from part 2's tables."""
    if not len(result.baseline):
        return {}
    base = result.baseline.set_index("family").position
    residual = result.residual.assign(answer=result.residual.pos == result.residual.family.map(base))
    seed = result.nodes.seed.iloc[0]
    queries = {f: result.positions[int(p)] for f, p in base.items()}
    n_layers = 1 + max(int(n[1:].split(".")[0]) for n in result.nodes.node)
    return sig.signature(residual, result.nodes[result.nodes.seed == seed], result.attention[result.attention.seed == seed],
                         n_layers, roles, queries)


def _checks(g: dict) -> str:
    move = "never" if g["move_layer"] is None else f"at layer {g['move_layer']} of {g['n_layers']}"
    return (f"the answer position holds the operands {move} ({'early' if g['early'] else 'not early'}); the top head "
            f"{g['top_head']} gives the operands {g['operand_attention']:.0%} of its attention; MLPs carry "
            f"{g['mlp_share']:.0%} of the components' effect from that layer on; the most carry-specific component, "
            f"{g['carry_node']}, removes {g['carry_margin']:.0%} more of carry_flip than of any other family")


def compare_view(result, roles) -> pd.DataFrame:
    """One column per model (the organism first): the checks, the named circuit and the verdict."""
    cols = {}
    org = organism_signature(result, roles)
    if org:
        c = result.circuit
        cols["organism (seed 0)"] = {**_row(org), "task": "2-digit + 2-digit",
                                                   "faithful circuit": f"{c['k']} of {c['n_edges']} edges ({c['k'] / c['n_edges']:.0%})",
                                                   "recovered": f"{c['recovered']:.0%}"}
    for s in result.real:
        g, c = real_signature(s), s["circuit"]
        cols[title(s["model"])] = {**_row(g), "task": "1-digit + 1-digit, few-shot",
                                   "faithful circuit": f"{c['k']} of {c['n_nodes']} nodes ({c['k'] / c['n_nodes']:.0%})",
                                   "recovered": f"{c['recovered']:.0%}"}
    if not cols:
        return pd.DataFrame()
    order = ["task", "operands at the answer from", "top head (attention to operands)", "MLP share from then on",
             "carry-specific component (margin)", "faithful circuit", "recovered", "checks held", "same algorithm?"]
    table = pd.DataFrame(cols).reindex(order)
    return table.rename_axis("").reset_index()


def _row(g: dict) -> dict:
    return {"operands at the answer from": "never" if g["move_layer"] is None else f"layer {g['move_layer']} of {g['n_layers']}",
            "top head (attention to operands)": f"{g['top_head']} ({g['operand_attention']:.0%})",
            "MLP share from then on": f"{g['mlp_share']:.0%}",
            "carry-specific component (margin)": f"{g['carry_node']} ({g['carry_margin']:.0%})",
            "checks held": f"{g['checks_held']} of 3", "same algorithm?": g["verdict"]}


def real_findings(result, roles, validated: float) -> dict:
    """Every part-3 glue value; 'Not measured' texts when no real model ran. ``validated``:
    part 1's AUROC threshold for a validated method."""
    p = result.params
    out = {f"real_{k}": f"{v:.0%}" for k, v in sig.THRESHOLDS.items()}
    out["real_faithful_share"] = f"{p.faithful_share:.0%}"
    out["real_ig_steps"] = p.real_ig_steps
    config = p.real()[0] if p.real_models else None
    out |= {"real_shots": config.shots if config else "n/a", "real_neuron_layers": config.neuron_layers if config else "n/a",
            "real_n_profile": config.n_profile if config else "n/a", "real_profile_rows": PROFILE_ROWS}
    sc = result.scores
    exact = sc[sc.method == "exact:resample"] if len(sc) else pd.DataFrame()
    if len(exact):
        varying, plain = exact.auroc_varying.mean(), exact.auroc.mean()
        ok = "at or above" if varying >= validated else "below"
        out["real_method_auroc"] = (f"AUROC {varying:.2f} against the circuit edges whose signal varies with the input, the ones a "
                                    f"resample can detect ({ok} the {validated} threshold), and {plain:.2f} against every "
                                    "circuit edge")
    else:
        out["real_method_auroc"] = "not measured in this run (exact:resample was not among the methods scored on tracr)"
    org = organism_signature(result, roles)
    out["real_organism_verdict_text"] = (f"{org['verdict']} ({org['checks_held']} of 3 checks: {_checks(org)})" if org
                                         else "not measured (no organism pairs in this run)")
    if not result.real:
        return out | {k: NONE for k in REAL_KEYS}
    texts = {k: [] for k in REAL_KEYS}
    for s in result.real:
        name, n_layers = title(s["model"]), s["n_layers"]
        texts["real_models_text"].append(shipped(s["model"]).provenance if shipped(s["model"]) else name)
        solved = proportion(s["solved"].correct)
        texts["real_solved_text"].append(f"{name} solves {solved['k']} of {solved['n']} ("
                                         f"{fmt_interval(solved['p'], solved['lo'], solved['hi'])})")
        pairs = s["pairs"]
        per = pairs.groupby("family").size()
        texts["real_pairs_text"].append(f"{name}: {len(pairs)} pairs (" + and_list(f"{n} {f}" for f, n in per.items())
                                        + f"), {int((pairs.split == 'discovery').sum())} for discovery and "
                                        f"{int((pairs.split == 'test').sum())} for test")
        g = real_signature(s)
        r = s["residual"]
        ops = r[r.position.isin(["a", "b"])].groupby(["family", "layer"]).removed.sum().groupby("layer").mean()
        at = r[r.answer].groupby("layer").removed.mean()
        move = g["move_layer"]
        texts["real_flow_text"].append(
            f"in {name} ({n_layers} layers), patching the operand positions a and b (the two together) removes {ops.iloc[0]:.0%} "
            f"of the logit difference at layer 0, and the answer position alone carries "
            + (f"{at.loc[move]:.0%} from layer {move} on (the first layer at {sig.MOVE_SHARE:.0%} or more)" if move is not None
               else f"at most {at.max():.0%} at any layer"))
        nodes = s["nodes"]
        mean = nodes.groupby("node", sort=False)[["removed", "direct"]].mean()
        top = mean.removed.sort_values(ascending=False).head(5)
        texts["real_components_text"].append(f"{name}: " + and_list(f"{n} ({v:.0%})" for n, v in top.items()))
        writers = mean.direct.sort_values(ascending=False).head(3)
        texts["real_direct_text"].append(f"{name}: " + and_list(f"{n} ({v:.0%})" for n, v in writers.items()))
        first = nodes.drop_duplicates("node")
        rho_eap = first.removed_all.rank().corr(first.eap_all.rank())
        rho_ig = first.removed_all.rank().corr(first.eap_ig_all.rank())
        k = s["circuit"]["k"]
        top_exact = set(first.nlargest(k, "removed_all", keep="first").node) if k else set()
        top_ig = set(first.assign(a=first.eap_ig_all.abs()).nlargest(k, "a", keep="first").node) if k else set()
        texts["real_methods_text"].append(f"{name}: Spearman {rho_eap:.2f} for EAP and {rho_ig:.2f} for EAP-IG over all "
                                          f"{len(first)} nodes; EAP-IG's top {k} share {len(top_exact & top_ig)} with exact patching's")
        att = s["attention"]
        heads = mean[mean.index.str.startswith("a")].removed.sort_values(ascending=False).head(3)
        queries = dict(zip(s["pairs"].family, (POSITIONS[i] for i in s["pairs"].position)))
        reads = []
        for head, v in heads.items():
            family = nodes[nodes.node == head].sort_values("removed").family.iloc[-1]
            query = queries[family]
            a = att[(att["head"] == head) & (att["query"] == query)].set_index("key").attention
            reads.append(f"{head} ({v:.0%} on average, most in {family}; from {query} it gives a {a.get('a', 0):.0%}, "
                         f"b {a.get('b', 0):.0%}, the worked examples {a.get('examples', 0):.0%})")
        texts["real_heads_text"].append(f"{name}: " + and_list(reads))
        c = s["circuit"]
        texts["real_circuit_text"].append(
            f"{name}: {c['k']} of {c['n_nodes']} nodes ({c['k'] / c['n_nodes']:.0%}) recover {c['recovered']:.0%} of the logit "
            f"difference (95% bootstrap interval {c['recovered_lo']:.0%} to {c['recovered_hi']:.0%}) on {c['n']} test pairs, "
            f"against {c['random_recovered']:.0%} for as many random heads and MLPs; accuracy "
            f"{fmt_interval(c['accuracy'], c['accuracy_lo'], c['accuracy_hi'], c['n'])} with the circuit alone, "
            f"{c['none_accuracy']:.0%} with every node mean-ablated; ablating the circuit alone removes "
            f"{c['alone_removed']:.0%} (a random set of its size: {c['random_alone_removed']:.0%})"
            + ("" if c["found"] else f"; the largest set on the curve falls short of {p.faithful_share:.0%}"))
        texts["real_neurons_text"].append(f"{name}: " + neuron_sentence(s))
        prof = s["profile"]
        if len(prof):
            counts = prof.label.value_counts()
            texts["real_profile_text"].append(f"{name}, top {len(prof)} neurons: " + and_list(f"{n} {lab}" for lab, n in counts.items()))
        else:
            texts["real_profile_text"].append(f"{name}: no MLP after the answer position takes over")
        texts["real_verdict_text"].append(f"{name}: {g['verdict']} ({g['checks_held']} of 3 checks: {_checks(g)})")
        texts["real_time_text"].append(f"{name} {s['timings']['study_seconds']:.0f} s")
    return out | {k: "; ".join(v) for k, v in texts.items()}


def neuron_sentence(s: dict) -> str:
    n = s["neurons"]
    if not len(n):
        return "not tested (no MLP after the answer position takes over)"
    layers = and_list(f"m{i}" for i in s["neuron_layers"])
    parts = []
    for count in sorted(set(n.neurons) - {0, s["d_mlp"]}):
        top = n[(n.neurons == count) & (n.kept == "top by attribution")].iloc[0]
        rand = n[(n.neurons == count) & (n.kept == "random")].iloc[0]
        parts.append(f"{count} neurons kept per MLP: {fmt_interval(top.accuracy, top.lo, top.hi, int(top.n))} "
                     f"(random: {rand.accuracy:.0%})")
    none = n[n.kept == "none"].iloc[0]
    return f"in {layers} at the scored position, with every neuron mean-ablated accuracy is {none.accuracy:.0%}; " + "; ".join(parts)


def top_nodes_view(result, n: int = 8) -> pd.DataFrame:
    """Per model, the nodes whose exact patching removes the most (mean over families), with
    EAP's and EAP-IG's estimates and the direct effect."""
    rows = []
    for s in result.real:
        mean = s["nodes"].groupby("node", sort=False)[["removed", "eap", "eap_ig", "direct"]].mean()
        top = mean.sort_values("removed", ascending=False).head(n)
        rows.append(pd.DataFrame({"model": title(s["model"]), "node": top.index,
                                  **{label: [f"{v:.0%}".replace("-0%", "0%") for v in top[col]] for col, label in
                                     (("removed", "exact patching"), ("eap", "EAP"), ("eap_ig", "EAP-IG"), ("direct", "direct effect"))}}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def residual_view(s: dict) -> pd.DataFrame:
    r = s["residual"].copy()
    r["family"] = r.family.str.replace("_", " ")
    return r


def curve_view(result) -> pd.DataFrame:
    rows = []
    for s in result.real:
        c = s["curve"].copy()
        c["series"] = title(s["model"]) + ", " + c.nodes.map({"top-k nodes": "top-k", "random nodes": "random"})
        rows.append(c)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def neuron_view(result) -> pd.DataFrame:
    rows = []
    for s in result.real:
        n = s["neurons"]
        if len(n):
            rows.append(pd.DataFrame({"model": title(s["model"]), "neurons kept per MLP": n.neurons.astype(int),
                                      "kept": n.kept, "accuracy": [fmt_interval(r.accuracy, r.lo, r.hi, int(r.n)) for r in n.itertuples()],
                                      "logit difference recovered": [f"{v:.0%}" if v == v else "n/a" for v in n.recovered]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def profile_view(result, per_model: int | None = None) -> pd.DataFrame:
    """The top neurons' profiles (the first ``per_model`` of each model): adjusted eta squared per property."""
    per_model = per_model or PROFILE_ROWS
    rows = []
    names = {"first operand": "a", "second operand": "b", "result": "a + b", "result mod 10": "(a + b) mod 10", "carry": "carry"}
    for s in result.real:
        p = s["profile"]
        if len(p):
            top = p.head(per_model).rename(columns=names)
            rows.append(top.assign(model=title(s["model"]))[["model", "neuron", *names.values(), "label"]].round(2))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
