"""Chapter 5, how the organism adds: circuit discovery, validated first on tracr models whose
circuit is known, then applied to the organism's addition with minimal pairs, exact patching,
attention patterns, a faithfulness curve with a random control, and a repeat on more seeds."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from ..core import circuit_graph as cg
from ..core import data, tracr_models
from ..core.circuits import auroc, roc_curve
from ..core.organism import ORGANISM_NAME, OrganismRecipe, ensure_organism, organism_dir, split_pairs
from ..core.stats import fmt_interval, proportion
from . import preflight
from .base import ModelParams, is_int, is_number, list_of, one_of, param, prompt_format_field

CHAPTER = "05_circuits"
METHODS = ("exact:zero", "exact:mean", "exact:resample", "eap:zero", "eap:resample", "eap-ig:zero", "eap-ig:resample")
FAMILIES = {
    "units_nocarry": "a's units digit changes, no carry in either prompt: the units answer changes",
    "units_carry": "a's units digit changes, a carry in both prompts: the units answer changes",
    "tens_nocarry": "a's tens digit changes, no carry: the tens answer changes",
    "tens_carry": "a's tens digit changes, a carry in both: the tens answer changes",
    "carry_flip": "a's units digit changes so that the carry appears or vanishes: the tens answer changes by one",
}
# Where each family's answer digit is read: the tens digit is the first answer token.
ANSWER_DIGIT = {"units_nocarry": 1, "units_carry": 1, "tens_nocarry": 0, "tens_carry": 0, "carry_flip": 0}
# Thresholds of the verdicts, shown on the page.
VALIDATED = 0.9  # a method is validated on tracr at this mean floored AUROC
FAITHFUL = 0.8  # a named circuit recovers at least this share of the clean logit difference
ROLE_EFFECT = 0.2  # a component "matters" for a family when ablating it removes this share
ROLE_ATTENTION = 0.3  # a head "reads" a digit when it gives that position this much attention
COLUMN_ATTENTION = 0.5  # a head "moves a column" when its two digits get this much of its attention together
CARRY_EFFECT = 0.5  # a "carry head" removes this much of carry_flip's logit difference on its own
ROLES = ("a₁", "a₀", "b₁", "b₀")  # operand digits: a₁ is a's tens digit, a₀ its units digit
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

    def check(self):
        if len(self.programs) == 0 and len(self.families) == 0:
            self.fail("programs", "give at least one tracr program or one minimal-pair family")
        if self.programs and not self.methods:
            self.fail("methods", "give at least one method to score on the tracr programs")
        dupes = sorted({s for s in self.organism_seeds if list(self.organism_seeds).count(s) > 1})
        if dupes:
            self.fail("organism_seeds", f"seed(s) {dupes} listed more than once; list each extra organism seed once")


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


def check(params: Params) -> None:
    if params.families:
        recipes = [OrganismRecipe(seed=s) for s in (0, *params.organism_seeds)] if params.model == ORGANISM_NAME else [None]
        for recipe in recipes:
            short = {f: n for f, n in pair_pool_sizes(params.families, recipe).items() if n < params.n_pairs}
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


# ------------------------------------------------------------------ part 1: tracr


def tracr_study(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per program: the ground-truth checks, every method's AUROC and its ROC curve."""
    truth_rows, score_rows, roc_rows = [], [], []
    rng = np.random.default_rng(params.seed)
    for name in params.programs:
        tm = tracr_models.compile_program(name, max_seq_len=params.tracr_max_len)
        task = tracr_models.task(tm, params.n_tracr, seed=params.seed)
        g = cg.graph_of(tm.model)
        truth_m = tracr_models.true_edges(tm)
        truth = g.edge_values(truth_m)
        varying = g.edge_values(tracr_models.varying_edges(tm, task))
        truth_rows.append({"program": name, **ground_truth_checks(tm, task, truth_m), "edges": len(truth),
                           "circuit_edges": int(truth.sum()), "varying_edges": int(varying.sum())})
        # Scored against the edges whose signal varies: all non-circuit edges plus those.
        among = ~truth | varying
        for method in params.methods:
            kind, how = method.split(":")
            if kind == "exact":
                s = cg.exact_edge_scores(tm.model, task, how)[0]
            else:
                s = cg.eap_scores(tm.model, task, how, steps=params.ig_steps if kind == "eap-ig" else 0)
            fpr, tpr = roc_curve(np.abs(s), truth)
            score_rows.append({"program": name, "method": method, "auroc": auroc(s, truth),
                               "auroc_floored": auroc(s, truth, floor=1e-6),
                               "auroc_varying": _maybe_auroc(s[among], varying[among])})
            roc_rows += [{"program": name, "method": method, "fpr": a, "tpr": b} for a, b in zip(fpr, tpr)]
        draws = [auroc(rng.random(len(truth)), truth) for _ in range(params.n_random)]
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


# ------------------------------------------------------------------ part 2: the organism


def clean_pool(recipe: OrganismRecipe | None) -> list[tuple[int, int]]:
    """Clean 2-digit additions with 2-digit sums: the organism's held-out pairs (never
    trained on) when ``recipe`` is given, otherwise every such pair."""
    if recipe is not None:
        pool = [tuple(p) for p in split_pairs(recipe)[1].tolist()]
    else:
        pool = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return [(a, b) for a, b in pool if a >= 10 and b >= 10 and a + b <= 99]


def pair_pool_sizes(families, recipe: OrganismRecipe | None) -> dict[str, int]:
    """How many minimal pairs each family can have: clean problems with a corruption of its kind."""
    pool = clean_pool(recipe)
    return {f: sum(1 for a, b in pool if _corruptions(a, b, f)) for f in families}


def minimal_pairs(params: Params, recipe: OrganismRecipe | None) -> pd.DataFrame:
    """Clean and corrupted 2-digit additions with 2-digit sums that differ in one digit of a,
    ``n_pairs`` per family. Clean problems are the organism's held-out pairs when the model is
    the organism (never trained on), otherwise any such pair."""
    pool = clean_pool(recipe)
    rng = np.random.default_rng(params.seed)
    rows = []
    for family in params.families:
        found = []
        for i in rng.permutation(len(pool)):
            a, b = pool[i]
            options = [c for c in _corruptions(a, b, family)]
            if options:
                found.append((a, b, options[rng.integers(len(options))]))
            if len(found) == params.n_pairs:
                break
        for a, b, a2 in found:
            rows.append({"family": family, "split": ("discovery", "test")[len(rows) % 2], "a": a, "b": b,
                         "a_corrupt": a2, "answer": a + b, "answer_corrupt": a2 + b,
                         "carry": (a % 10 + b % 10) >= 10, "carry_corrupt": (a2 % 10 + b % 10) >= 10})
    return pd.DataFrame(rows)


def _corruptions(a: int, b: int, family: str) -> list[int]:
    carry = lambda x: (x % 10 + b % 10) >= 10  # noqa: E731
    out = []
    if family.startswith("units") or family == "carry_flip":
        for d in range(10):
            a2 = a // 10 * 10 + d
            if a2 == a or a2 + b > 99:
                continue
            want = {"units_nocarry": not carry(a) and not carry(a2), "units_carry": carry(a) and carry(a2),
                    "carry_flip": carry(a) != carry(a2)}[family]
            if want:
                out.append(a2)
    else:
        for d in range(1, 10):
            a2 = d * 10 + a % 10
            if a2 == a or a2 + b > 99:
                continue
            if (family == "tens_carry") == carry(a):
                out.append(a2)
    return out


def encode_pairs(pairs: pd.DataFrame, tokenizer, prompt_format: str):
    """Token ids of clean and corrupted sequences (prompt + the clean answer, teacher forced),
    each family's metric position and the clean and corrupted answer tokens there. Pairs whose
    sequences do not share the modal length are dropped."""
    clean, corrupt, keep = [], [], []
    for a, b, a2 in zip(pairs.a, pairs.b, pairs.a_corrupt):
        p, t = data.format_prompt(a, "+", b, prompt_format)
        p2, t2 = data.format_prompt(a2, "+", b, prompt_format)
        ids = tokenizer(p + t)["input_ids"]
        ids2 = tokenizer(p2 + t)["input_ids"]
        ans2 = tokenizer(p2 + t2)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id] else []
        clean.append(bos + ids)
        corrupt.append(bos + ids2)
        keep.append((bos + ans2, len(bos + tokenizer(p)["input_ids"])))
    lengths = pd.Series([len(c) for c in clean])
    modal = int(lengths.mode().iloc[0])
    ok = [len(c) == modal == len(x) == len(k[0]) for c, x, k in zip(clean, corrupt, keep)]
    pairs = pairs[ok].reset_index(drop=True)
    clean = [c for c, o in zip(clean, ok) if o]
    corrupt = [c for c, o in zip(corrupt, ok) if o]
    keep = [k for k, o in zip(keep, ok) if o]
    positions, tok_clean, tok_corrupt = [], [], []
    for fam, c, (ans2, start) in zip(pairs.family, clean, keep):
        # The answer token where clean and corrupted answers first differ, read one step before.
        diff = [i for i in range(start, modal) if c[i] != ans2[i]]
        i = diff[0] if diff else start + ANSWER_DIGIT[fam]
        positions.append(i - 1)
        tok_clean.append(c[i])
        tok_corrupt.append(ans2[i])
    pairs = pairs.assign(position=positions, token=tok_clean, token_corrupt=tok_corrupt)
    return pairs, torch.tensor(clean), torch.tensor(corrupt)


def pair_task(pairs: pd.DataFrame, clean: torch.Tensor, corrupt: torch.Tensor) -> cg.Task:
    """Logit difference (clean answer token minus corrupted one) at each pair's position."""
    rows = torch.arange(len(pairs))
    pos = torch.tensor(pairs.position.tolist())
    good, bad = torch.tensor(pairs.token.tolist()), torch.tensor(pairs.token_corrupt.tolist())

    def metric(logits: torch.Tensor) -> torch.Tensor:
        r = rows.to(logits.device)
        at = logits[r, pos.to(logits.device)]
        return at[r, good.to(logits.device)] - at[r, bad.to(logits.device)]

    return cg.Task(tokens=clean, metric=metric, corrupt=corrupt)


def correct(logits: torch.Tensor, pairs: pd.DataFrame) -> np.ndarray:
    """Whether the top token at each pair's position is the clean answer token."""
    rows = torch.arange(len(pairs), device=logits.device)
    top = logits[rows, torch.tensor(pairs.position.tolist(), device=logits.device)].argmax(-1)
    return cg.numpy(top == torch.tensor(pairs.token.tolist(), device=logits.device))


def position_labels(tokenizer, prompt_format: str, length: int) -> list[str]:
    """Role labels of each position, read off the template 12+35=47 whose digits are distinct."""
    roles = {"1": "a₁", "2": "a₀", "3": "b₁", "5": "b₀", "4": "s₁", "7": "s₀"}
    p, t = data.format_prompt(12, "+", 35, prompt_format)
    ids = tokenizer(p + t)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    labels = []
    for i, tok in enumerate(ids[:length]):
        text = tokenizer.decode([tok])
        if i == 0 and tok == tokenizer.bos_token_id:
            labels.append("BOS")
            continue
        role = "".join(roles.get(ch, "") for ch in text)
        labels.append(f"{i}:{role or text.strip() or '␣'}")
    return labels


def organism_study(params: Params, model, tokenizer, recipe) -> dict:
    """What part 2 measures on one model before its edges: the pairs and their baseline,
    residual patching, node effects with direct logit attribution, and attention."""
    pairs = minimal_pairs(params, recipe)
    pairs, clean, corrupt = encode_pairs(pairs, tokenizer, params.prompt_format)
    cg.prepare(model)
    labels = position_labels(tokenizer, params.prompt_format, clean.shape[1])
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
        for node, change in cg.exact_node_scores(model, sub, params.ablation).items():
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


def edge_study(params: Params, model, study: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Edge scores on the discovery half of the pairs; on the other half, the faithfulness
    curve over top-k (the rest mean-ablated) with random edge sets of the same size as the
    control, and the named circuit: the smallest k that recovers ``faithful_share``."""
    pairs, clean, corrupt = study["pairs"], study["clean"], study["corrupt"]
    find = np.flatnonzero(pairs.split == "discovery")
    test = np.flatnonzero(pairs.split == "test")
    task = pair_task(pairs.iloc[find].reset_index(drop=True), clean[find], corrupt[find])
    g = cg.graph_of(model)
    edges = pd.DataFrame(g.edges, columns=["source", "destination"])
    if params.edge_scores == "exact":
        edges["exact"] = cg.exact_edge_scores(model, task, params.ablation)[0]
    for kind in ("eap", "eap-ig"):
        edges[kind] = cg.eap_scores(model, task, params.ablation, steps=params.ig_steps if kind == "eap-ig" else 0)
    ranking = edges[params.edge_scores].to_numpy()
    held = pairs.iloc[test].reset_index(drop=True)
    task = pair_task(held, clean[test], corrupt[test])
    n_edges = len(g.edges)
    ks = sorted({k for k in params.top_k if k < n_edges} | {n_edges})
    mean_ablated = cg.ablated_outputs(model, task.tokens, None, "mean")
    rng = np.random.default_rng(params.seed)

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
    enough = asked[asked.recovered >= params.faithful_share]
    k_named = int(enough.k.min()) if len(enough) else int(asked.k.max() if len(asked) else n_edges)
    named = cg.top_k_masks(g, ranking, [k_named])[0]
    clean_acc = proportion(held.correct)
    ld_cut, ok_cut = measure(g.allowed & ~named)  # the circuit's edges ablated, every other edge kept
    ld_rcut, ok_rcut = measure(g.allowed & ~random_keep(k_named))
    row = top.set_index("k").loc[k_named]
    circuit = {"k": k_named, "n_edges": n_edges, "recovered": float(row.recovered), "accuracy": float(row.accuracy),
               "accuracy_lo": float(row.lo), "accuracy_hi": float(row.hi), "n": int(row.n), "found": bool(len(enough)),
               "n_discovery": int(len(find)), "clean_accuracy": clean_acc["p"], "clean_lo": clean_acc["lo"],
               "clean_hi": clean_acc["hi"], "none_accuracy": float(acc_none.mean()),
               "ablated_accuracy": float(ok_cut.mean()), **_interval("ablated", ok_cut),
               "random_ablated_accuracy": float(ok_rcut.mean()), **_interval("random_ablated", ok_rcut),
               "ablated_removed": float((ld_clean.mean() - ld_cut.mean()) / gap),
               "random_ablated_removed": float((ld_clean.mean() - ld_rcut.mean()) / gap),
               "nodes": circuit_nodes(g, named)}
    return edges, curve, circuit


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


def roles(study: dict, seed: int) -> pd.DataFrame:
    """Per family: the components whose ablation removes at least ROLE_EFFECT of the logit
    difference, and for heads the operand digits they attend to from the family's position."""
    nodes, att, base = study["nodes"], study["attention"], study["baseline"].set_index("family")
    labels = study["labels"]
    rows = []
    for family, group in nodes.groupby("family", sort=False):
        query = labels[int(base.loc[family, "position"])]
        strong = group[group.removed >= ROLE_EFFECT].sort_values("removed", ascending=False)
        heads = strong[strong.node.str.startswith("a")]
        mlps = strong[strong.node.str.startswith("m")]
        reads = set()
        for head in heads.node:
            a = att[(att["head"] == head) & (att["query"] == query) & att["key"].isin(ROLES)]
            reads |= set(a[a["attention"] >= ROLE_ATTENTION]["key"])
        rows.append({"seed": seed, "family": family, "query": query,
                     "heads": ", ".join(f"{n} ({v:.0%})" for n, v in zip(heads.node, heads.removed)) or "none",
                     "mlps": ", ".join(f"{n} ({v:.0%})" for n, v in zip(mlps.node, mlps.removed)) or "none",
                     "digits_read": " ".join(r for r in ROLES if r in reads) or "none",
                     "top": group.sort_values("removed", ascending=False).node.iloc[0],
                     "top_kind": "MLP" if group.sort_values("removed", ascending=False).node.iloc[0].startswith("m") else "head"})
    return pd.DataFrame(rows)


def run(params: Params) -> Result:
    from ..core.models import load_model

    check(params)
    torch.manual_seed(params.seed)
    start = time.perf_counter()
    timings = {}
    truth, scores, roc = tracr_study(params) if params.programs else (pd.DataFrame(),) * 3
    timings["tracr_seconds"] = round(time.perf_counter() - start, 1)
    empty = pd.DataFrame()
    out = dict(pairs=empty, baseline=empty, residual=empty, nodes=empty, attention=empty, edges=empty,
               faithfulness=empty, circuit={}, roles=empty, positions=[], seed_circuits=empty)
    if params.families:
        t = time.perf_counter()
        is_organism = params.model == ORGANISM_NAME
        model, tok = load_model(params.model, device=params.device)
        study = organism_study(params, model, tok, OrganismRecipe() if is_organism else None)
        edges, curve, circuit = edge_study(params, model, study)
        timings["organism_seconds"] = round(time.perf_counter() - t, 1)
        seeds, circuits = [study], [circuit]
        t = time.perf_counter()
        for s in params.organism_seeds if is_organism else ():
            recipe = OrganismRecipe(seed=s)
            ensure_organism(recipe, progress=False)
            m, tk = load_model(str(organism_dir(recipe)), device=params.device)
            seeds.append(organism_study(params, m, tk, recipe))
            circuits.append(edge_study(params, m, seeds[-1])[2])
        timings["seeds_seconds"] = round(time.perf_counter() - t, 1)
        seed_ids = [0 if is_organism else params.seed] + list(params.organism_seeds if is_organism else ())
        out["seed_circuits"] = pd.DataFrame([{"seed": i, **{k: v for k, v in c.items() if k != "nodes"}}
                                             for i, c in zip(seed_ids, circuits)])
        out.update(pairs=study["pairs"], baseline=study["baseline"], residual=study["residual"], edges=edges,
                   faithfulness=curve, circuit=circuit, positions=study["labels"],
                   nodes=pd.concat([s["nodes"].assign(seed=i) for s, i in zip(seeds, seed_ids)], ignore_index=True),
                   attention=pd.concat([s["attention"].assign(seed=i) for s, i in zip(seeds, seed_ids)], ignore_index=True),
                   roles=pd.concat([roles(s, i) for s, i in zip(seeds, seed_ids)], ignore_index=True))
    timings["run_seconds"] = round(time.perf_counter() - start, 1)
    return Result(params=params, truth=truth, scores=scores, roc=roc, timings=timings, **out)


# ------------------------------------------------------------------ findings and views


def _columns(digits: str) -> str:
    """Operand digits read, as columns: a₀ b₀ -> 'units column'."""
    cols = [name for name, ds in (("tens column", ("a₁", "b₁")), ("units column", ("a₀", "b₀"))) if any(d in digits for d in ds)]
    return " and ".join(cols) or "no operand digit"


def role_signature(roles: pd.DataFrame) -> dict:
    """Per family, the operand columns that its important heads read (seed-comparable: head
    indices are arbitrary across seeds, what they read is not)."""
    return {f: _columns(d) for f, d in zip(roles.family, roles.digits_read)}


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


def mechanism(result: Result) -> dict:
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
    if "carry_flip" in pivot and "tens_nocarry" in pivot and later:
        out["use_carry"] = (f"ablating the MLPs after layer 0 ({and_list(later)}) one at a time removes on average "
                            f"{pivot.loc[later, 'carry_flip'].mean():.0%} of the logit difference when the carry changes "
                            f"(carry_flip) and {pivot.loc[later, 'tens_nocarry'].mean():.0%} when a tens digit changes "
                            "without a carry (tens_nocarry)")
        out["use_carry_more"] = bool(pivot.loc[later, "carry_flip"].mean() > pivot.loc[later, "tens_nocarry"].mean())
    else:
        out["use_carry"], out["use_carry_more"] = "not measured", False
    r = result.residual
    at_answer = r[(r.layer >= 1) & (r.pos == r.family.map(base.position))]
    elsewhere = r[(r.layer >= 1) & (r.pos != r.family.map(base.position))]
    out["residual"] = (f"From layer 1 on, the residual stream at the answer position alone carries {at_answer.removed.min():.0%} "
                       f"or more of every family's effect, and no other position more than {max(elsewhere.removed.max(), 0):.0%}")
    return out


PART2_KEYS = (
    "circuit_accuracy_text", "ablated_accuracy_text", "random_ablated_accuracy_text", "n_pairs", "n_families", "n_per_family",
    "clean_accuracy_text", "ld_clean", "ld_corrupt", "mech_movers", "mech_movers_found", "mech_movers_layers", "mech_carry",
    "mech_carry_head", "mech_carry_found", "mech_mlp_range", "mech_direct", "mech_use_carry", "mech_use_carry_more",
    "mech_residual", "subject", "eap_spearman", "eap_ig_spearman", "eap_overlap", "eap_ig_overlap", "edge_scores", "circuit_k",
    "n_edges", "n_discovery", "n_test", "circuit_share", "circuit_recovered", "test_clean_accuracy_text", "none_accuracy",
    "ablated_removed", "random_ablated_removed", "circuit_nodes", "faithful", "faithful_verdict", "random_recovered", "n_seeds",
    "seeds", "roles_same", "carry_head_seeds", "roles_held", "carry_heads", "roles_verdict", "verdict", "seed_circuits",
    "seed_recovered_range", "seed_accuracy_range", "seed_ablated_range", "seeds_faithful",
)


def and_list(items) -> str:
    """'a, b and c' (never 'a, b, c': the glue would read that as a tuple)."""
    items = list(items)
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def pct(x: float) -> str:
    """A share as a whole percentage, without a minus sign on a rounded zero."""
    return f"{x + 0.0:.0%}" if round(x * 100) != 0 else "0%"


def findings(result: Result) -> dict:
    p = result.params
    out = {"n_programs": len(p.programs), "n_tracr": p.n_tracr, "tracr_max_len": p.tracr_max_len, "ig_steps": p.ig_steps,
           "n_random": p.n_random, "faithful_share": f"{p.faithful_share:.0%}", "role_effect": f"{ROLE_EFFECT:.0%}",
           "role_attention": f"{ROLE_ATTENTION:.0%}", "ablation": p.ablation, "column_attention": f"{COLUMN_ATTENTION:.0%}",
           "carry_effect": f"{CARRY_EFFECT:.0%}",
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
    if not len(result.baseline):
        return out | {k: "n/a (no minimal pairs in this run)" for k in PART2_KEYS}
    b, c = result.baseline, result.circuit
    pooled = proportion(result.pairs.correct)
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
               circuit_share=f"{k / c['n_edges']:.0%}", circuit_recovered=f"{c['recovered']:.0%}",
               circuit_accuracy_text=fmt_interval(c["accuracy"], c["accuracy_lo"], c["accuracy_hi"], c["n"]),
               test_clean_accuracy_text=fmt_interval(c["clean_accuracy"], c["clean_lo"], c["clean_hi"], c["n"]),
               none_accuracy=f"{c['none_accuracy']:.1%}",
               ablated_accuracy_text=fmt_interval(c["ablated_accuracy"], c["ablated_lo"], c["ablated_hi"], c["n"]),
               random_ablated_accuracy_text=fmt_interval(c["random_ablated_accuracy"], c["random_ablated_lo"],
                                                    c["random_ablated_hi"], c["n"]),
               ablated_removed=f"{c['ablated_removed']:.0%}", random_ablated_removed=f"{c['random_ablated_removed']:.0%}",
               circuit_nodes=and_list(c["nodes"]),
               faithful=bool(c["found"]),
               faithful_verdict=(f"yes: {k} edges recover {c['recovered']:.0%} of the logit difference (threshold {p.faithful_share:.0%})"
                                 if c["found"] else f"no: even {k} edges recover only {c['recovered']:.0%} "
                                 f"(threshold {p.faithful_share:.0%})"))
    rnd = result.faithfulness[(result.faithfulness.edges == "random edges") & (result.faithfulness.k == k)]
    out["random_recovered"] = pct(float(rnd.recovered.iloc[0])) if len(rnd) else "n/a"
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
                            "yes: the same roles appear in every seed" if out["roles_held"] else
                            "no: the roles differ between seeds")
    out["verdict"] = verdict_paragraph(out)
    first = ("circuit_accuracy_text", "ablated_accuracy_text", "random_ablated_accuracy_text")  # the Runs page's headline
    return {**{k: out[k] for k in first}, **out}


def verdict_paragraph(f: dict) -> str:
    """The chapter's verdict, assembled from the findings (no number typed by hand)."""
    movers = (f"Attention heads (layer {f['mech_movers_layers']}) move each answer digit's operand column to the position that "
              f"predicts it: {f['mech_movers']}" if f["mech_movers_found"] else
              "No single head moves each answer digit's operand column to the position that predicts it (by the thresholds "
              f"on the page): {f['mech_movers']}")
    carry = (f"A separate carry head: {f['mech_carry']}." if f["mech_carry_found"] else
             f"No carry head meets the thresholds: {f['mech_carry']}.")
    parts = [f"{f['subject']} two-digit adder (with two-digit sums) works like this. {movers} {carry} "
             f"Direct logit attribution: {f['mech_direct']}. {f['mech_residual']}."]
    parts.append(f"Keeping only the top {f['circuit_k']} of {f['n_edges']} edges (mean-ablating the rest) recovers "
                 f"{f['circuit_recovered']} of the logit difference on the test half of the pairs, with accuracy "
                 f"{f['circuit_accuracy_text']} (clean: {f['test_clean_accuracy_text']}); {f['circuit_k']} random edges recover "
                 f"{f['random_recovered']}. Ablating those {f['circuit_k']} edges alone drops accuracy to {f['ablated_accuracy_text']} "
                 f"(random edges of the same number: {f['random_ablated_accuracy_text']}).")
    if f["n_seeds"] > 1:
        parts.append(f"Across organism seeds {f['seeds']}, the roles {'held' if f['roles_held'] else 'did not all hold'}: the "
                     f"other seeds read the same operand columns as the first in {f['roles_same']} cases, and a single carry head was found in "
                     f"{f['carry_head_seeds']} seeds ({f['carry_heads']}); the head indices differ. A circuit meeting the "
                     f"threshold was found in {f['seeds_faithful']} seeds, recovering {f['seed_recovered_range']} of the "
                     f"logit difference (accuracy {f['seed_accuracy_range']}).")
    else:
        parts.append("Only one model was run, so whether the roles recur across seeds is not tested.")
    parts.append("What the data does not support: the pairs never have three-digit sums, so the sum-9 cascade of "
                 "Quirke and Barez is not tested; the MLPs' internal arithmetic is not decomposed; and the edge "
                 f"scores use {f['ablation']} ablation, which on tracr finds only the edges whose signal varies with the input "
                 f"(AUROC {f['organism_method_varying']} against those, {f['organism_method_auroc']} against all circuit edges).")
    if f["mech_use_carry_more"] is False:
        parts.append("The later MLPs do not matter more when the carry changes than when it does not.")
    return " ".join(parts)


def truth_view(result: Result) -> pd.DataFrame:
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


def auroc_long(result: Result, column: str = "auroc") -> pd.DataFrame:
    if not len(result.scores):
        return pd.DataFrame()
    return result.scores[["program", "method", column]].rename(columns={column: "AUROC"})


def roc_view(result: Result, methods: tuple[str, ...] = ("exact:zero", "exact:resample", "eap:zero", "eap-ig:zero")) -> pd.DataFrame:
    if not len(result.roc):
        return pd.DataFrame()
    return result.roc[result.roc.method.isin(methods)]


def baseline_view(result: Result) -> pd.DataFrame:
    if not len(result.baseline):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    b = result.baseline.copy()
    labels = result.positions
    b["read at"] = [labels[p] for p in b.position]
    b["accuracy [95% interval]"] = [fmt_interval(a, lo, hi) for a, lo, hi in zip(b.accuracy, b.lo, b.hi)]
    b["logit diff: clean / corrupted"] = [f"{c:.1f} / {x:.1f}" for c, x in zip(b.ld_clean, b.ld_corrupt)]
    return b[["family", "n", "read at", "accuracy [95% interval]", "logit diff: clean / corrupted"]]


def residual_caption(result: Result) -> str:
    """The residual heat map's caption: which layer index is the final residual."""
    last = int(result.residual.layer.max()) if len(result.residual) else 0
    return f"Layer {last} is the final residual. Share of the logit difference removed."


def node_view(result: Result, column: str = "removed") -> pd.DataFrame:
    if not len(result.nodes):
        return pd.DataFrame()
    seed = result.nodes.seed.iloc[0]
    return result.nodes[result.nodes.seed == seed][["family", "node", column]].rename(columns={column: "share"})


def attention_view(result: Result) -> pd.DataFrame:
    if not len(result.attention):
        return pd.DataFrame()
    seed = result.attention.seed.iloc[0]
    a = result.attention[(result.attention.seed == seed) & result.attention.key.isin(ROLES)]
    return a.assign(query="from " + a["query"].str.split(":").str[-1])


def roles_view(result: Result) -> pd.DataFrame:
    if not len(result.roles):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    r = result.roles.copy()
    r["columns read"] = [_columns(d) for d in r.digits_read]
    return r[["seed", "family", "heads", "mlps", "columns read"]].rename(
        columns={"heads": "heads that matter", "mlps": "MLPs that matter"})


def seed_circuit_view(result: Result) -> pd.DataFrame:
    """Per organism seed: the named circuit and what it recovers, on that seed's test pairs."""
    if not len(result.seed_circuits):
        return pd.DataFrame({"note": ["no minimal pairs in this run"]})
    sc = result.seed_circuits
    return pd.DataFrame({
        "seed": sc.seed, "edges kept": [f"{k} of {n}" for k, n in zip(sc.k, sc.n_edges)],
        "logit diff recovered": [f"{x:.0%}" for x in sc.recovered],
        "circuit accuracy": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.accuracy, sc.accuracy_lo, sc.accuracy_hi)],
        "circuit ablated": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.ablated_accuracy, sc.ablated_lo, sc.ablated_hi)],
        "random ablated": [fmt_interval(a, lo, hi) for a, lo, hi in zip(sc.random_ablated_accuracy, sc.random_ablated_lo,
                                                              sc.random_ablated_hi)],
        "n": sc.n})


def faithfulness_view(result: Result) -> pd.DataFrame:
    if not len(result.faithfulness):
        return pd.DataFrame()
    f = result.faithfulness.melt(id_vars=["k", "edges", "lo", "hi", "n"], value_vars=["recovered", "accuracy"],
                                 var_name="measure", value_name="share")
    f.loc[f.measure == "recovered", ["lo", "hi"]] = np.nan
    f["series"] = f.edges.map({"top-k edges": "top-k", "random edges": "random"}) + ": " + f.measure.map(
        {"recovered": "logit diff recovered", "accuracy": "accuracy"})
    return f
