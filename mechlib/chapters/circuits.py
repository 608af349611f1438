"""Chapter 5, how the organism adds: circuit discovery, validated first on tracr models whose
circuit is known, then applied to the organism's addition with minimal pairs, exact patching,
attention patterns, a faithfulness curve with a random control, and a repeat on more seeds."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from ..core import circuit_graph as cg
from ..core import tracr_models
from ..core.faithfulness import FaithfulnessConfig, edge_study
from ..core.minimal_pairs import FAMILIES, ROUTES, PairConfig, pair_pool_sizes
from ..core.organism import ORGANISM_NAME, OrganismRecipe, ensure_organism, organism_dir
from ..core.pair_patching import ROLES, pair_study, roles
from ..core.parallel import beside
from ..core.real_circuit import RealCircuitConfig, real_studies
from ..core.stats import fmt_interval, proportion
from ..core.tracr_study import METHODS, TracrConfig, tracr_study
from ..views.circuit_views import columns_read, faithful_verdict, role_differences, routes_text, verdict_items
from ..views.narrative import and_list, pct
from ..views.organism_mechanism import (
    CARRY_EFFECT,
    CARRY_MARGIN,
    COLUMN_ATTENTION,
    ROLE_ATTENTION,
    ROLE_EFFECT,
    carry_head,
    mechanism,
)
from ..views.real_circuit_views import real_findings
from . import preflight
from .base import ModelParams, is_int, is_number, is_str, list_of, one_of, param, prompt_format_field

CHAPTER = "05_circuits"
# Thresholds of the verdicts, shown on the page (the mechanism's own: views.organism_mechanism).
VALIDATED = 0.9  # a method is validated on tracr at this mean floored AUROC
FAITHFUL = 0.8  # a named circuit recovers at least this share of the clean logit difference
EXACT_LIMIT = 5000  # edges; exact patching runs one forward pass per edge


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    programs: tuple[str, ...] = param(("frac_prevs", "reverse", "sort", "hist", "sort_freq"),
                                      list_of(one_of(*tracr_models.PROGRAMS), min_len=0, max_len=len(tracr_models.PROGRAMS)),
                                      f"a list of tracr programs from {list(tracr_models.PROGRAMS)}")
    methods: tuple[str, ...] = param(METHODS, list_of(one_of(*METHODS), min_len=0, max_len=len(METHODS)),
                                     f"a list of scoring methods from {list(METHODS)}", "methods scored on the tracr programs")
    tracr_max_len: int = param(5, is_int(2, 8), "an integer in 2..8 (longest tracr input; lengths vary from 2 up)")
    n_tracr: int = param(100, is_int(4, 2000), "an integer in 4..2000 (random inputs per tracr program)")
    ig_steps: int = param(10, is_int(1, 100), "an integer in 1..100 (EAP-IG interpolation steps)")
    n_random: int = param(200, is_int(10, 10_000), "an integer in 10..10000 (random-score draws for the AUROC baseline)")
    prompt_format: str = prompt_format_field()
    families: tuple[str, ...] = param(tuple(FAMILIES), list_of(one_of(*FAMILIES), min_len=0, max_len=len(FAMILIES)),
                                      f"a list of minimal-pair families from {list(FAMILIES)}")
    n_pairs: int = param(100, is_int(4, 2000), "an integer in 4..2000 (minimal pairs per family)")
    routes: tuple[str, ...] = param(ROUTES, list_of(one_of(*ROUTES), min_len=1, max_len=2), "a list from ['a', 'b']",
                                    "which operand a corruption may change (both: the pairs mix the two routes)")
    top_k: tuple[int, ...] = param((5, 10, 20, 40, 80, 160), list_of(is_int(1, 100_000), max_len=20),
                                   "a list of positive edge counts for the faithfulness curve")
    organism_seeds: tuple[int, ...] = param((1, 2), list_of(is_int(1, 2**31 - 1), min_len=0, max_len=5),
                                            "a list of up to 5 more organism seeds, each at least 1 (seed 0 is the chapter's own "
                                            "organism, studied anyway; [] for none)",
                                            "organisms trained with these seeds repeat the discovery (organism only)")
    ablation: str = param("resample", one_of("resample", "mean", "zero"), "'resample', 'mean' or 'zero'",
                          "how edges are ablated when the organism's edges are scored")
    edge_scores: str = param("exact", one_of("exact", "eap", "eap-ig"), "'exact', 'eap' or 'eap-ig'",
                             f"the method that ranks the model's edges (exact needs at most {EXACT_LIMIT} edges)")
    faithful_share: float = param(FAITHFUL, is_number(0.05, 1.0), "a number in 0.05..1",
                                  "the share of the clean logit difference a named circuit must recover")
    real_models: tuple[str, ...] = param(("smollm2-135m-instruct", "gemma-3-270m"), list_of(is_str, min_len=0, max_len=3),
                                         "a list of up to 3 pretrained model names or paths ([] for none)",
                                         "pretrained models whose one-digit addition part 3 studies")
    real_n_pairs: int = param(30, is_int(2, 500), "an integer in 2..500", "minimal pairs per family, at most, on each real model")
    real_ig_steps: int = param(5, is_int(1, 50), "an integer in 1..50", "EAP-IG interpolation steps on the real models")
    real_top_k: tuple[int, ...] = param((5, 10, 20, 40, 80), list_of(is_int(1, 100_000), max_len=20),
                                        "a list of positive node counts for the real models' faithfulness curve")
    real_neuron_counts: tuple[int, ...] = param((8, 32, 128), list_of(is_int(1, 100_000), max_len=6),
                                                "a list of up to 6 positive neuron counts per MLP")
    real_correct_only: bool = param(True, lambda v: isinstance(v, bool), "true or false",
                                    "pairs of problems the model solves only (false: any pair, for tests on random weights)")
    real_workers: int = param(2, is_int(1, 2), "1 or 2", "2: the first real model runs in its own process beside the organism part")

    def check(self):
        if len(self.programs) == 0 and len(self.families) == 0:
            self.fail("programs", "give at least one tracr program or one minimal-pair family")
        if self.programs and not self.methods:
            self.fail("methods", "give at least one method to score on the tracr programs")

    def tracr(self) -> TracrConfig:
        return TracrConfig(programs=self.programs, methods=self.methods, n_tracr=self.n_tracr, tracr_max_len=self.tracr_max_len,
                           ig_steps=self.ig_steps, n_random=self.n_random, seed=self.seed)

    def pairs(self) -> PairConfig:
        return PairConfig(families=self.families, n_pairs=self.n_pairs, prompt_format=self.prompt_format, seed=self.seed,
                          routes=self.routes)

    def real(self) -> list[RealCircuitConfig]:
        """One study per real model; the first runs in its own single-threaded process when
        ``real_workers`` is 2."""
        return [RealCircuitConfig(model=m, n_pairs=self.real_n_pairs, ig_steps=self.real_ig_steps, top_k=self.real_top_k,
                                  faithful_share=self.faithful_share, neuron_counts=self.real_neuron_counts,
                                  correct_only=self.real_correct_only, seed=self.seed, threads=1)
                for m in self.real_models]

    def faithfulness(self) -> FaithfulnessConfig:
        return FaithfulnessConfig(edge_scores=self.edge_scores, ablation=self.ablation, ig_steps=self.ig_steps,
                                  top_k=self.top_k, faithful_share=self.faithful_share, seed=self.seed)


@dataclasses.dataclass
class Result:
    params: Params
    truth: pd.DataFrame  # per program: edges, circuit edges, the ground-truth checks
    scores: pd.DataFrame  # per program, method: AUROC, floored AUROC
    roc: pd.DataFrame  # per program, method: ROC curve points
    pairs: pd.DataFrame  # the organism's minimal pairs: family, clean, corrupt, position
    baseline: pd.DataFrame  # per family: n, clean accuracy and interval, clean / corrupt logit difference
    residual: pd.DataFrame  # per family, layer, position: share of the logit difference removed
    nodes: pd.DataFrame  # per seed, family, node: share removed by ablating it
    attention: pd.DataFrame  # per seed, head, answer digit, operand digit: mean attention
    edges: pd.DataFrame  # per edge: EAP and EAP-IG scores on the model, and exact ones when they rank
    faithfulness: pd.DataFrame  # per k: share recovered and accuracy, top-k and random edges
    circuit: dict  # the named circuit: k, share recovered, accuracy, ablation of it and a random set
    roles: pd.DataFrame  # per seed and family: the components that matter and what they read
    seed_circuits: pd.DataFrame  # per organism seed: the named circuit's size, recovery, accuracy, ablation
    positions: list  # position labels of the organism's inputs
    timings: dict
    real: list = dataclasses.field(default_factory=list)  # part 3: one study per real model (real_circuit.study)


def check(params: Params) -> None:
    if params.families:
        recipes = [OrganismRecipe(seed=s) for s in (0, *params.organism_seeds)] if params.model == ORGANISM_NAME else [None]
        for recipe in recipes:
            short = {f: n for f, n in pair_pool_sizes(params.families, recipe, params.routes).items() if n < params.n_pairs}
            if short:
                whose = f"organism seed {recipe.seed}'s held-out" if recipe else "the"
                params.fail("n_pairs", f"{params.n_pairs} pairs per family asked, and {whose} clean problems give only {short}; "
                                       f"use n_pairs <= {min(short.values())}")
        spec = preflight.model(params, "model")
        preflight.fits_context(spec, ("+",), ("2x2",), params.prompt_format, chapter=CHAPTER)
        n_edges = len(cg.Graph(spec.n_layers, spec.n_heads).edges) if spec.n_layers and spec.n_heads else 0
        if params.edge_scores == "exact" and n_edges > EXACT_LIMIT:
            params.fail("edge_scores", f"the model has {n_edges} edges, more than {EXACT_LIMIT} for exact patching "
                                       "(one forward pass each); use 'eap-ig'")
    for name in params.real_models:
        preflight.neurons_fit(params, preflight.model(params, "real_models", name), "real_neuron_counts", params.real_neuron_counts)


def run(params: Params) -> Result:
    check(params)
    start = time.perf_counter()
    configs = params.real()
    side = configs[:1] if params.real_workers == 2 else []

    def main():
        result = organism_part(params)
        t = time.perf_counter()
        studies = real_studies(configs[len(side):])
        result.timings["real_main_seconds"] = round(time.perf_counter() - t, 1)
        return result, studies

    (result, rest), first = beside(main, real_studies if side else None, (side,), workers=params.real_workers)
    result.real = (first or []) + rest
    result.timings["real_seconds"] = {s["model"]: s["timings"]["study_seconds"] for s in result.real}
    result.timings["run_seconds"] = round(time.perf_counter() - start, 1)
    return result


def organism_part(params: Params) -> Result:
    """Parts 1 and 2: the tracr validation and the organism's circuit (with its seeds)."""
    from ..core.models import load_model

    torch.manual_seed(params.seed)
    start = time.perf_counter()
    timings = {}
    truth, scores, roc = tracr_study(params.tracr()) if params.programs else (pd.DataFrame(),) * 3
    timings["tracr_seconds"] = round(time.perf_counter() - start, 1)
    empty = pd.DataFrame()
    out = dict(pairs=empty, baseline=empty, residual=empty, nodes=empty, attention=empty, edges=empty,
               faithfulness=empty, circuit={}, roles=empty, positions=[], seed_circuits=empty)
    if params.families:
        t = time.perf_counter()
        is_organism = params.model == ORGANISM_NAME
        model, tok = load_model(params.model, device=params.device)
        study = pair_study(params.pairs(), params.ablation, model, tok, OrganismRecipe() if is_organism else None)
        edges, curve, circuit = edge_study(params.faithfulness(), model, study)
        timings["organism_seconds"] = round(time.perf_counter() - t, 1)
        seeds, circuits = [study], [circuit]
        t = time.perf_counter()
        for s in params.organism_seeds if is_organism else ():
            recipe = OrganismRecipe(seed=s)
            ensure_organism(recipe, progress=False)
            m, tk = load_model(str(organism_dir(recipe)), device=params.device)
            seeds.append(pair_study(params.pairs(), params.ablation, m, tk, recipe))
            circuits.append(edge_study(params.faithfulness(), m, seeds[-1])[2])
        timings["seeds_seconds"] = round(time.perf_counter() - t, 1)
        seed_ids = [0 if is_organism else params.seed] + list(params.organism_seeds if is_organism else ())
        out["seed_circuits"] = pd.DataFrame([{"seed": i, **{k: v for k, v in c.items() if k != "nodes"}}
                                             for i, c in zip(seed_ids, circuits)])
        out.update(pairs=study["pairs"], baseline=study["baseline"], residual=study["residual"], edges=edges,
                   faithfulness=curve, circuit=circuit, positions=study["labels"],
                   nodes=pd.concat([s["nodes"].assign(seed=i) for s, i in zip(seeds, seed_ids)], ignore_index=True),
                   attention=pd.concat([s["attention"].assign(seed=i) for s, i in zip(seeds, seed_ids)], ignore_index=True),
                   roles=pd.concat([roles(s, i, ROLE_EFFECT, ROLE_ATTENTION) for s, i in zip(seeds, seed_ids)], ignore_index=True))
    timings["organism_part_seconds"] = round(time.perf_counter() - start, 1)
    return Result(params=params, truth=truth, scores=scores, roc=roc, timings=timings, **out)


def role_signature(roles: pd.DataFrame) -> dict:
    """Per family, the operand columns that its important heads read (seed-comparable: head
    indices are arbitrary across seeds, what they read is not)."""
    return {f: columns_read(d) for f, d in zip(roles.family, roles.digits_read)}


PART2_KEYS = (
    "circuit_accuracy_text", "ablated_accuracy_text", "random_ablated_accuracy_text", "n_pairs", "n_families", "n_per_family",
    "clean_accuracy_text", "ld_clean", "ld_corrupt", "mech_movers", "mech_movers_found", "mech_movers_layers", "mech_carry",
    "mech_carry_head", "mech_carry_found", "mech_mlp_range", "mech_direct", "mech_use_carry", "mech_use_carry_more",
    "mech_use_carry_verdict",
    "mech_residual", "subject", "eap_spearman", "eap_ig_spearman", "eap_overlap", "eap_ig_overlap", "edge_scores", "circuit_k",
    "n_edges", "n_discovery", "n_test", "circuit_share", "circuit_recovered", "test_clean_accuracy_text", "none_accuracy",
    "ablated_removed", "random_ablated_removed", "circuit_nodes", "faithful", "faithful_verdict", "random_recovered", "n_seeds",
    "seeds", "roles_same", "carry_head_seeds", "roles_held", "carry_heads", "roles_verdict", "verdict", "verdict_mechanism",
    "verdict_attribution", "verdict_circuit", "verdict_seeds", "verdict_limits", "seed_circuits",
    "seed_recovered_range", "seed_accuracy_range", "seed_ablated_range", "seeds_faithful", "minimality_text", "routes_text",
    "roles_differences",
)


def findings(result: Result) -> dict:
    p = result.params
    out = {"n_programs": len(p.programs), "n_tracr": p.n_tracr, "tracr_max_len": p.tracr_max_len, "ig_steps": p.ig_steps,
           "n_random": p.n_random, "faithful_share": f"{p.faithful_share:.0%}", "role_effect": f"{ROLE_EFFECT:.0%}",
           "role_attention": f"{ROLE_ATTENTION:.0%}", "ablation": p.ablation, "column_attention": f"{COLUMN_ATTENTION:.0%}",
           "carry_effect": f"{CARRY_EFFECT:.0%}", "carry_margin": f"{CARRY_MARGIN:.0%}",
           "programs": and_list(p.programs) or "none"}
    if len(result.truth):
        t = result.truth
        largest = t.non_circuit_max_change.max()
        out.update(truth_matches=f"{t.matches_rasp.min():.0%}",
                   truth_non_circuit="exactly 0" if largest == 0 else f"at most {largest:.1e}",
                   truth_circuit_only=f"{t.circuit_only_matches.min():.0%}",
                   truth_circuit_ablated=f"{t.circuit_ablated_matches.max():.0%}",
                   truth_holds=bool(t.matches_rasp.min() == 1 and t.non_circuit_max_change.max() == 0
                                    and t.circuit_only_matches.min() == 1),
                   varying_share=f"{t.varying_edges.sum() / t.circuit_edges.sum():.0%}")
        s = result.scores[result.scores.method != "random"]
        mean = s.groupby("method", sort=False)[["auroc", "auroc_floored", "auroc_varying"]].mean()
        for method, row in mean.iterrows():
            key = method.replace(":", "_").replace("-", "_")
            out[f"auroc_{key}"] = float(row.auroc)
            out[f"auroc_floored_{key}"] = float(row.auroc_floored)
            out[f"auroc_varying_{key}"] = float(row.auroc_varying)
        rnd = result.scores[result.scores.method == "random"].merge(result.truth[["program", "edges"]], on="program")
        big = rnd.sort_values("edges").iloc[-1]
        out["random_auroc"] = f"{rnd.auroc.mean():.2f}"
        out["random_range"] = (f"{big.random_lo:.2f} to {big.random_hi:.2f} on {big.program} ({int(big.edges)} edges; "
                               "fewer edges give wider ranges)")
        out["validated"] = and_list(m for m, row in mean.iterrows() if row.auroc_floored >= VALIDATED) or "no method"
        out["validated_varying"] = and_list(m for m, row in mean.iterrows() if row.auroc_varying >= VALIDATED) or "no method"
        out["validated_threshold"] = VALIDATED
        organism_method = f"exact:{p.ablation}"
        out["organism_method"] = organism_method
        out["organism_method_auroc"] = f"{float(mean.auroc.get(organism_method, float('nan'))):.2f}"
        out["organism_method_varying"] = f"{float(mean.auroc_varying.get(organism_method, float('nan'))):.2f}"
    for method in METHODS:  # every method's glue exists; one not run reads nan
        key = method.replace(":", "_").replace("-", "_")
        for prefix in ("auroc", "auroc_floored", "auroc_varying"):
            out.setdefault(f"{prefix}_{key}", float("nan"))
    out.setdefault("validated_threshold", VALIDATED)
    for key in ("truth_matches", "truth_non_circuit", "truth_circuit_only", "truth_circuit_ablated", "varying_share", "random_auroc",
                "random_range", "validated", "validated_varying", "organism_method", "organism_method_auroc", "organism_method_varying"):
        out.setdefault(key, "n/a (no tracr program in this run)")
    out.update(real_findings(result, ROLES, VALIDATED))
    if not len(result.baseline):
        return out | {k: "n/a (no minimal pairs in this run)" for k in PART2_KEYS}
    b, c = result.baseline, result.circuit
    pooled = proportion(result.pairs.correct)
    out["routes_text"] = routes_text(result.pairs)
    out.update(n_pairs=int(b.n.sum()), n_families=len(b), n_per_family=p.n_pairs,
               clean_accuracy_text=fmt_interval(pooled["p"], pooled["lo"], pooled["hi"], pooled["n"]),
               ld_clean=f"{result.pairs.ld_clean.mean():.1f}", ld_corrupt=f"{result.pairs.ld_corrupt.mean():.1f}")
    out.update({f"mech_{k}": v for k, v in mechanism(result).items()})
    out["subject"] = ("On held-out problems, the organism's" if p.model == ORGANISM_NAME else
                      f"On these problems, the {p.model.rstrip('/').rsplit('/', 1)[-1]} model's")
    e, k = result.edges, c["k"]
    out.update(eap_spearman="not measured (no exact scores)", eap_ig_spearman="not measured (no exact scores)",
               eap_overlap="not measured", eap_ig_overlap="not measured")
    if "exact" in e:
        ranks = e[["exact", "eap", "eap-ig"]].rank()
        top = lambda col: set(e[col].abs().nlargest(k).index)  # noqa: E731
        out.update(eap_spearman=f"{ranks.exact.corr(ranks.eap):.3f}", eap_ig_spearman=f"{ranks.exact.corr(ranks['eap-ig']):.3f}",
                   eap_overlap=f"{len(top('exact') & top('eap'))} of {k}", eap_ig_overlap=f"{len(top('exact') & top('eap-ig'))} of {k}")
    out["edge_scores"] = p.edge_scores
    out.update(circuit_k=k, n_edges=c["n_edges"], n_discovery=c["n_discovery"], n_test=c["n"],
               circuit_share=f"{k / c['n_edges']:.0%}", circuit_recovered=(f"{c['recovered']:.0%} (95% bootstrap interval "
                                                                                  f"{c['recovered_lo']:.0%} to {c['recovered_hi']:.0%})"),
               circuit_accuracy_text=fmt_interval(c["accuracy"], c["accuracy_lo"], c["accuracy_hi"], c["n"]),
               test_clean_accuracy_text=fmt_interval(c["clean_accuracy"], c["clean_lo"], c["clean_hi"], c["n"]),
               none_accuracy=f"{c['none_accuracy']:.1%}",
               ablated_accuracy_text=fmt_interval(c["ablated_accuracy"], c["ablated_lo"], c["ablated_hi"], c["n"]),
               random_ablated_accuracy_text=fmt_interval(c["random_ablated_accuracy"], c["random_ablated_lo"],
                                                    c["random_ablated_hi"], c["n"]),
               ablated_removed=f"{c['ablated_removed']:.0%}", random_ablated_removed=f"{c['random_ablated_removed']:.0%}",
               circuit_nodes=and_list(c["nodes"]),
               faithful=bool(c["found"]),
               faithful_verdict=faithful_verdict(c, p.faithful_share))
    out["random_recovered"] = pct(c["random_recovered"])
    out["minimality_text"] = (f"Removing any one of its {c['minimality_tested']} edges alone costs at most "
                              f"{c['minimality_max_cost']:.1%} of the logit difference; {c['minimality_needed']} of them cost more "
                              "than 1%.")
    seeds = sorted(result.roles.seed.unique())
    sigs = {s: role_signature(result.roles[result.roles.seed == s]) for s in seeds}
    first = sigs[seeds[0]]
    carry_heads = {s: carry_head(result.nodes[result.nodes.seed == s], result.attention[result.attention.seed == s],
                                 result.positions[int(b.set_index("family").position.get("carry_flip", 0))])
                   for s in seeds} if "carry_flip" in set(b.family) else {}
    same = [s for s in seeds[1:] if sigs[s] == first]
    carry_ok = [s for s, ch in carry_heads.items() if ch and ch["flip"] >= CARRY_EFFECT and ch["units_attention"] >= COLUMN_ATTENTION]
    out.update(n_seeds=len(seeds), seeds=and_list(str(s) for s in seeds),
               roles_same=f"{len(same)} of {len(seeds) - 1}",
               carry_head_seeds=f"{len(carry_ok)} of {len(seeds)}" if carry_heads else "n/a",
               roles_held=bool(len(seeds) > 1 and len(same) == len(seeds) - 1 and len(carry_ok) == len(seeds)),
               carry_heads=and_list(f"{h['name']} in seed {s} ({h['flip']:.0%})" for s, h in carry_heads.items() if h) or "n/a")
    sc = result.seed_circuits
    out["seed_circuits"] = and_list(f"{r.recovered:.0%} with {r.k} edges (seed {r.seed})" for r in sc.itertuples())
    out["seed_recovered_range"] = f"{sc.recovered.min():.0%} to {sc.recovered.max():.0%}"
    out["seed_accuracy_range"] = f"{sc.accuracy.min():.1%} to {sc.accuracy.max():.1%}"
    out["seed_ablated_range"] = f"{sc.ablated_accuracy.min():.1%} to {sc.ablated_accuracy.max():.1%}"
    out["seeds_faithful"] = f"{int(sc.found.sum())} of {len(sc)}"
    out["roles_verdict"] = ("not tested: only one seed was run" if len(seeds) < 2 else
                            "yes: the heads read the same operand columns and a carry head is found in every seed" if out["roles_held"]
                            else "no: the roles differ between seeds")
    out["roles_differences"] = role_differences(result.roles, seeds)
    items = verdict_items(out)
    out.update(items)
    out["verdict"] = " ".join(items.values())  # the whole verdict in one string, for the run record and agents
    first = ("circuit_accuracy_text", "ablated_accuracy_text", "random_ablated_accuracy_text")  # the Runs page's headline
    return {**{k: out[k] for k in first}, **out}


