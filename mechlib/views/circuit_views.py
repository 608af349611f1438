"""Chapter 5's tables, chart data and verdict paragraph, read off a run's result."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.pair_patching import ROLES
from ..core.stats import fmt_interval, proportion


def columns_read(digits: str) -> str:
    """Operand digits read, as columns: a₀ b₀ -> 'units column'."""
    cols = [name for name, ds in (("tens column", ("a₁", "b₁")), ("units column", ("a₀", "b₀"))) if any(d in digits for d in ds)]
    return " and ".join(cols) or "no operand digit"


def verdict_items(f: dict) -> dict:
    """The chapter's verdict as four short items (mechanism, circuit, seeds, limits), each
    assembled from the findings (no number typed by hand)."""
    movers = (f"attention heads (layer {f['mech_movers_layers']}) move each answer digit's operand column to the position that "
              f"predicts it: {f['mech_movers']}" if f["mech_movers_found"] else
              "no single head moves each answer digit's operand column to the position that predicts it (by the thresholds "
              f"on the page): {f['mech_movers']}")
    carry = (f"A separate carry head: {f['mech_carry']}." if f["mech_carry_found"] else
             f"No carry head meets the thresholds: {f['mech_carry']}.")
    items = {"verdict_mechanism": f"{f['subject']} two-digit adder (with two-digit sums): {movers} {carry}",
             "verdict_attribution": f"Direct logit attribution: {f['mech_direct']}. {f['mech_residual']}."}
    items["verdict_circuit"] = (
        f"Keeping only the top {f['circuit_k']} of {f['n_edges']} edges ({f['ablation']}-ablating the rest) recovers "
        f"{f['circuit_recovered']} of the logit difference on the test half of the pairs, accuracy "
        f"{f['circuit_accuracy_text']} (clean: {f['test_clean_accuracy_text']}); {f['circuit_k']} random edges recover "
        f"{f['random_recovered']}. Ablating those {f['circuit_k']} edges alone drops accuracy to {f['ablated_accuracy_text']} "
        f"(random edges of the same number: {f['random_ablated_accuracy_text']}).")
    items["verdict_seeds"] = (
        f"Across organism seeds {f['seeds']}, the roles {'held' if f['roles_held'] else 'did not all hold'}: the other seeds "
        f"read the same operand columns as the first in {f['roles_same']} cases, and a single carry head was found in "
        f"{f['carry_head_seeds']} seeds ({f['carry_heads']}); the head indices differ. A circuit meeting the threshold was "
        f"found in {f['seeds_faithful']} seeds, recovering {f['seed_recovered_range']} of the logit difference (accuracy "
        f"{f['seed_accuracy_range']})." if f["n_seeds"] > 1 else
        "Only one model was run, so whether the roles recur across seeds is not tested.")
    limits = ("The pairs never have three-digit sums, so the sum-9 cascade of Quirke and Barez is not tested; the MLPs' "
              f"internal arithmetic is not decomposed; and the edge scores use {f['ablation']} ablation, which on tracr finds "
              f"only the edges whose signal varies with the input (AUROC {f['organism_method_varying']} against those, "
              f"{f['organism_method_auroc']} against all circuit edges).")
    if f["mech_use_carry_more"] is False:
        limits += " The later MLPs do not matter more when the carry changes than when it does not."
    items["verdict_limits"] = limits
    return items


def truth_view(result) -> pd.DataFrame:
    if not len(result.truth):
        return pd.DataFrame({"note": ["no tracr program in this run"]})
    t = result.truth.copy()
    t["non_circuit_max_change"] = [f"{x:.0e}" if x else "0" for x in t.non_circuit_max_change]
    for c in ("matches_rasp", "circuit_only_matches", "circuit_ablated_matches"):
        t[c] = [f"{x:.0%}" for x in t[c]]
    t["edges: all / circuit / varying"] = [f"{a} / {c} / {v}" for a, c, v in zip(t.edges, t.circuit_edges, t.varying_edges)]
    return t.drop(columns=["edges", "circuit_edges", "varying_edges"]).rename(columns={
        "matches_rasp": "matches RASP", "non_circuit_max_change": "non-circuit change",
        "circuit_only_matches": "circuit kept", "circuit_ablated_matches": "circuit ablated"})


def auroc_long(result, column: str = "auroc") -> pd.DataFrame:
    if not len(result.scores):
        return pd.DataFrame()
    return result.scores[["program", "method", column]].rename(columns={column: "AUROC"})


def roc_view(result, methods: tuple[str, ...] = ("exact:zero", "exact:resample", "eap:zero", "eap-ig:zero")) -> pd.DataFrame:
    if not len(result.roc):
        return pd.DataFrame()
    return result.roc[result.roc.method.isin(methods)]


def baseline_view(result) -> pd.DataFrame:
    if not len(result.baseline):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    b = result.baseline.copy()
    labels = result.positions
    b["read at"] = [labels[p] for p in b.position]
    b["accuracy [95% interval]"] = [fmt_interval(a, lo, hi) for a, lo, hi in zip(b.accuracy, b.lo, b.hi)]
    b["logit diff: clean / corrupted"] = [f"{c:.1f} / {x:.1f}" for c, x in zip(b.ld_clean, b.ld_corrupt)]
    return b[["family", "n", "read at", "accuracy [95% interval]", "logit diff: clean / corrupted"]]


def residual_caption(result) -> str:
    """The residual heat map's caption: which layer index is the final residual."""
    last = int(result.residual.layer.max()) if len(result.residual) else 0
    return f"Layer {last} is the final residual. Share of the logit difference removed."


def node_view(result, column: str = "removed") -> pd.DataFrame:
    if not len(result.nodes):
        return pd.DataFrame()
    seed = result.nodes.seed.iloc[0]
    return result.nodes[result.nodes.seed == seed][["family", "node", column]].rename(columns={column: "share"})


def attention_view(result) -> pd.DataFrame:
    if not len(result.attention):
        return pd.DataFrame()
    seed = result.attention.seed.iloc[0]
    a = result.attention[(result.attention.seed == seed) & result.attention.key.isin(ROLES)]
    return a.assign(query="from " + a["query"].str.split(":").str[-1])


def roles_view(result) -> pd.DataFrame:
    if not len(result.roles):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    r = result.roles.copy()
    r["columns read"] = [columns_read(d) for d in r.digits_read]
    return r[["seed", "family", "heads", "mlps", "columns read"]].rename(
        columns={"heads": "heads that matter", "mlps": "MLPs that matter"})


def seed_circuit_view(result) -> pd.DataFrame:
    """Per organism seed: the named circuit and what it recovers, on that seed's test pairs."""
    if not len(result.seed_circuits):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    sc = result.seed_circuits
    return pd.DataFrame({
        "seed": sc.seed, "edges kept": [f"{k} of {n}" for k, n in zip(sc.k, sc.n_edges)],
        "logit diff recovered [95% bootstrap]": [f"{x:.0%} [{lo:.0%}, {hi:.0%}]" for x, lo, hi in zip(sc.recovered, sc.recovered_lo, sc.recovered_hi)],
        "circuit accuracy": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.accuracy, sc.accuracy_lo, sc.accuracy_hi)],
        "circuit ablated": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.ablated_accuracy, sc.ablated_lo, sc.ablated_hi)],
        "random ablated": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.random_ablated_accuracy, sc.random_ablated_lo,
                                                              sc.random_ablated_hi)],
        "n": sc.n})


def faithfulness_view(result) -> pd.DataFrame:
    if not len(result.faithfulness):
        return pd.DataFrame()
    f = result.faithfulness.melt(id_vars=["k", "edges", "lo", "hi", "n"], value_vars=["recovered", "accuracy"],
                                 var_name="measure", value_name="share")
    f.loc[f.measure == "recovered", ["lo", "hi"]] = np.nan
    f["series"] = f.edges.map({"top-k edges": "top-k", "random edges": "random"}) + ": " + f.measure.map(
        {"recovered": "logit diff recovered", "accuracy": "accuracy"})
    return f


def routes_text(pairs: pd.DataFrame) -> str:
    """Per route (which operand the corruption changes): n, clean accuracy and the mean logit
    difference, clean against corrupted."""
    if "route" not in pairs:
        return "only operand a was corrupted"
    parts = []
    for route, g in pairs.groupby("route", sort=True):
        st = proportion(g.correct)
        parts.append(f"corrupting {route}: {fmt_interval(st['p'], st['lo'], st['hi'], st['n'])} right on the clean prompt, "
                     f"logit difference {g.ld_clean.mean():.1f} clean against {g.ld_corrupt.mean():.1f} corrupted")
    return "; ".join(parts)


def faithful_verdict(c: dict, share: float) -> str:
    """Does a faithful circuit exist? Judged on the test half; the size was chosen on the other."""
    test = f"{c['recovered']:.0%} (95% bootstrap interval {c['recovered_lo']:.0%} to {c['recovered_hi']:.0%}) on the test half"
    if c["found"]:
        return f"yes: {c['k']} edges recover {test} (threshold {share:.0%})"
    if c.get("reached_on_discovery", False):
        return (f"no: the smallest top-k that reaches {share:.0%} on the discovery half ({c['k']} edges) recovers {test}, "
                f"below the threshold")
    return f"no: even {c['k']} edges, the largest size asked, recover only {test} (threshold {share:.0%})"


def role_differences(roles: pd.DataFrame, seeds: list) -> str:
    """Per seed after the first, in words: the families whose most important component differs
    from the first seed's in kind (head or MLP) or layer (indices within a layer are arbitrary)."""
    def where(row) -> str:
        return f"{row.top_kind} in layer {row.top[1:].split('.')[0]}"
    base = {r.family: r for r in roles[roles.seed == seeds[0]].itertuples()}
    parts = []
    for s in seeds[1:]:
        diff = [f"{r.family}: {where(r)} ({r.top}), against {where(base[r.family])} ({base[r.family].top})"
                for r in roles[roles.seed == s].itertuples() if r.family in base and where(r) != where(base[r.family])]
        parts.append(f"seed {s}: " + ("; ".join(diff) if diff else "the same kind and layer of top component in every family"))
    return ". ".join(parts) + "." if parts else "only one seed was run."
