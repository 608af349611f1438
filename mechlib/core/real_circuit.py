"""How a real model adds one-digit numbers: one study per model, with the circuits chapter's
validated tools at node level (:mod:`.node_patching`, :mod:`.node_circuit`, :mod:`.dla`,
:mod:`.neuron_profile`).

Steps: the exhaustive one-digit table in the few-shot format (which problems the model
solves); minimal pairs of solved problems (:mod:`.digit_pairs`); on the discovery half,
residual patching (layer x position), exact node patching, EAP and EAP-IG, direct logit
attribution and attention; on the test half, the faithfulness curve of the top-k nodes
against random node sets, the named circuit, and the top-N neurons per MLP against random
neurons; a profile of the top neurons over the whole table.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from . import dla, neuron_profile
from . import node_circuit as nc
from . import node_patching as npch
from .adder_signature import move_layer
from .data import pair_key
from .digit_pairs import FAMILIES, POSITIONS, encode_pairs, one_digit_pairs, suffix_ids
from .evaluate import answer_scores
from .faithfulness import bootstrap_share, smallest_k
from .fewshot import draw_examples, example_block
from .prefixed import Prefixed
from .stats import proportion


@dataclasses.dataclass(frozen=True)
class RealCircuitConfig:
    """One model's study: the few-shot prompt, the pairs, the methods' sizes."""
    model: str
    shots: int = 3
    families: tuple[str, ...] = FAMILIES
    n_pairs: int = 30  # per family, at most
    ig_steps: int = 5
    top_k: tuple[int, ...] = (5, 10, 20, 40, 80)
    faithful_share: float = 0.8
    neuron_counts: tuple[int, ...] = (8, 32, 128)
    neuron_layers: int = 4
    n_profile: int = 20
    correct_only: bool = True  # pairs of solved problems only (off: tests on random weights)
    seed: int = 0
    threads: int = 0  # torch threads for the study (0: leave as set)


def table(a_max: int = 10) -> list[tuple[int, int]]:
    """Every one-digit addition a + b."""
    return [(a, b) for a in range(a_max) for b in range(a_max)]


def shots_for(config: RealCircuitConfig) -> str:
    """The worked examples: drawn by chapter 1's function (fewshot.draw_examples) from 1x1 and 1x2
    additions outside every one-digit problem, so in effect from 1x2."""
    exclude = {pair_key(a, "+", b) for a, b in table()}
    return example_block(draw_examples("+", ["1x1", "1x2"], config.shots, config.seed, exclude))


def study(config: RealCircuitConfig, model=None) -> dict:
    """The whole study on one model (loaded by name unless given)."""
    from .models import load_model

    if config.threads:
        torch.set_num_threads(config.threads)
    start, timings = time.perf_counter(), {}
    if model is None:
        model, _ = load_model(config.model, device="cpu")
    timings["load_seconds"] = round(time.perf_counter() - start, 1)
    shots = shots_for(config)
    problems = table()
    scores = answer_scores(model, [f"{shots}{a}+{b}=" for a, b in problems], [str(a + b) for a, b in problems], batch_size=100)
    solved = pd.DataFrame(problems, columns=["a", "b"]).assign(correct=scores.tf_correct.to_numpy())
    pool = {p for p, ok in zip(problems, solved.correct) if ok or not config.correct_only}
    pairs = one_digit_pairs(pool, config.families, config.n_pairs, config.seed)
    if pairs.empty or set(pairs.split) != {"discovery", "test"}:
        raise ValueError(f"{config.model}: too few solved one-digit problems for minimal pairs "
                         f"({int(solved.correct.sum())} of {len(solved)} solved)")
    prefix, pairs, clean_tok, corrupt_tok = encode_pairs(model, shots, pairs)
    pre = Prefixed(model, prefix)
    everything = npch.Pairs(clean_tok, corrupt_tok, torch.tensor(pairs.position.to_numpy()), torch.tensor(pairs.token.to_numpy()),
                            torch.tensor(pairs.token_corrupt.to_numpy()))
    find = np.flatnonzero(pairs.split == "discovery")
    test = np.flatnonzero(pairs.split == "test")
    n = model.cfg.n_layers
    posts = tuple(f"blocks.{i}.mlp.hook_post" for i in range(n))
    patterns = tuple(f"blocks.{i}.attn.hook_pattern" for i in range(n))
    clean = npch.activations(pre, clean_tok, everything, posts + patterns)
    corrupt = npch.activations(pre, corrupt_tok, everything, posts)
    with torch.no_grad():
        top = pre.top(clean["final"], everything.positions)
    pairs = pairs.assign(ld_clean=clean["ld"].numpy(), ld_corrupt=corrupt["ld"].numpy(),
                         clean_correct=(top == everything.good).numpy())
    sub = everything.rows(find)
    c_find = {k: v[find] for k, v in clean.items()}
    x_find = {k: v[find] for k, v in corrupt.items()}
    t = time.perf_counter()
    residual = _residual_table(pre, sub, c_find, x_find, pairs.iloc[find])
    timings["residual_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    nodes = npch.node_names(model.cfg)
    exact = npch.exact_nodes(pre, sub, c_find, x_find, nodes)
    timings["exact_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    eap = npch.eap_nodes(pre, sub, c_find, x_find, nodes, 1)
    eap_ig = npch.eap_nodes(pre, sub, c_find, x_find, nodes, config.ig_steps)
    timings["eap_seconds"] = round(time.perf_counter() - t, 1)
    direct = _direct(model, prefix, pairs.iloc[find], clean_tok[find])
    node_table = _node_table(pairs.iloc[find].reset_index(drop=True), nodes, exact, eap, eap_ig, direct)
    attention = _attention(clean, pairs, find, len(prefix))
    t = time.perf_counter()
    ref_tok = suffix_ids(model, shots, [f"{a}+{b}={str(a + b)[0]}" for a, b in problems])[1]
    ref_tok = torch.tensor(ref_tok)
    names = sorted({npch.hook_of(x)[1] for x in nodes}) + list(posts)
    mean = nc.means(pre, ref_tok, names)
    ranking = node_table.groupby("node", sort=False).removed_all.first().abs().sort_values(ascending=False, kind="stable")
    curve, circuit = _faithfulness(config, pre, everything, pairs, find, test, nodes, list(ranking.index), mean)
    timings["circuit_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    move = move_layer(residual, n)
    layers = [int(x[1:]) for x in ranking.index if x.startswith("m") and int(x[1:]) >= (move if move is not None else 0)]
    layers = layers[:config.neuron_layers]
    attr = _neuron_attribution(pre, sub, c_find, x_find, layers)
    neurons = _neuron_test(config, pre, everything.rows(test), pairs.iloc[test], attr, mean)
    profile = _profile(pre, ref_tok, problems, attr, config.n_profile)
    timings["neuron_seconds"] = round(time.perf_counter() - t, 1)
    timings["study_seconds"] = round(time.perf_counter() - start, 1)
    return {"model": config.model, "config": dataclasses.asdict(config), "n_layers": n, "n_heads": model.cfg.n_heads,
            "d_mlp": model.cfg.d_mlp, "shots": shots, "solved": solved, "pairs": pairs.drop(columns=["token", "token_corrupt"]),
            "residual": residual, "nodes": node_table, "attention": attention, "curve": curve, "circuit": circuit,
            "move_layer": move, "neuron_layers": layers, "neurons": neurons, "profile": profile, "timings": timings}


def real_studies(configs: list[RealCircuitConfig]) -> list[dict]:
    """:func:`study` on each model in turn (a top-level function: it runs in a spawned process)."""
    return [study(c) for c in configs]


def _residual_table(pre, sub, clean, corrupt, pairs: pd.DataFrame) -> pd.DataFrame:
    patched = npch.residual_patching(pre, sub, clean, corrupt)  # [layers + 1, pos, batch]
    ld_clean, ld_corrupt = clean["ld"].numpy(), corrupt["ld"].numpy()
    rows = []
    for family in pairs.family.unique():
        idx = np.flatnonzero(pairs.family.to_numpy() == family)
        gap = ld_clean[idx].mean() - ld_corrupt[idx].mean()
        answer = POSITIONS[int(pairs.position.iloc[idx[0]])]
        for layer in range(patched.shape[0]):
            for pos, label in enumerate(POSITIONS):
                removed = (ld_clean[idx].mean() - patched[layer, pos, idx].mean()) / gap
                rows.append({"family": family, "layer": layer, "position": label, "pos": pos, "answer": label == answer,
                             "removed": float(removed)})
    return pd.DataFrame(rows)


def _direct(model, prefix: list[int], pairs: pd.DataFrame, suffix: torch.Tensor) -> dict[str, np.ndarray]:
    tokens = torch.cat([torch.tensor([prefix] * len(suffix), dtype=torch.long).view(len(suffix), -1), suffix], 1)
    pos = torch.tensor(pairs.position.to_numpy()) + len(prefix)
    got = dla.direct_logit_attribution(model, tokens, pos, torch.tensor(pairs.token.to_numpy()),
                                       torch.tensor(pairs.token_corrupt.to_numpy()))
    out = {f"a{layer}.{h}": got.heads[:, layer, h].numpy() for layer in range(got.heads.shape[1]) for h in range(got.heads.shape[2])}
    out |= {f"m{layer}": got.mlps[:, layer].numpy() for layer in range(got.mlps.shape[1])}
    return out


def _node_table(pairs: pd.DataFrame, nodes, exact, eap, eap_ig, direct) -> pd.DataFrame:
    """Per family and node: the share of the logit difference the node's exact patching
    removes (and EAP's and EAP-IG's estimates of it), and its direct effect's share."""
    ld_clean, ld_corrupt = pairs.ld_clean.to_numpy(), pairs.ld_corrupt.to_numpy()
    gap_all = ld_clean.mean() - ld_corrupt.mean()
    rows = []
    for family in pairs.family.unique():
        idx = np.flatnonzero(pairs.family.to_numpy() == family)
        gap = ld_clean[idx].mean() - ld_corrupt[idx].mean()
        for node in nodes:
            rows.append({"family": family, "node": node, "removed": float(-exact[node][idx].mean() / gap),
                         "eap": float(-eap[node][idx].mean() / gap), "eap_ig": float(-eap_ig[node][idx].mean() / gap),
                         "direct": float(direct[node][idx].mean() / ld_clean[idx].mean()),
                         "removed_all": float(-exact[node].mean() / gap_all), "eap_all": float(-eap[node].mean() / gap_all),
                         "eap_ig_all": float(-eap_ig[node].mean() / gap_all)})
    return pd.DataFrame(rows)


def _attention(clean: dict, pairs: pd.DataFrame, rows: np.ndarray, n_prefix: int) -> pd.DataFrame:
    """Mean attention of every head from each answer position to the worked examples and to
    each of the problem's positions (discovery pairs)."""
    out = []
    for layer in range(sum(1 for k in clean if k.endswith("hook_pattern"))):
        pat = clean[f"blocks.{layer}.attn.hook_pattern"][rows]  # [batch, head, query, key]
        for q in sorted(pairs.position.iloc[rows].unique()):
            sel = np.flatnonzero(pairs.position.iloc[rows].to_numpy() == q)
            p = pat[sel, :, q].mean(0)  # [head, key]
            for h in range(p.shape[0]):
                out.append({"head": f"a{layer}.{h}", "query": POSITIONS[q], "key": "examples",
                            "attention": float(p[h, :n_prefix].sum())})
                out += [{"head": f"a{layer}.{h}", "query": POSITIONS[q], "key": POSITIONS[k],
                         "attention": float(p[h, n_prefix + k])} for k in range(q + 1)]
    return pd.DataFrame(out)


def _faithfulness(config, pre, everything, pairs, find, test, nodes, ranking, mean) -> tuple[pd.DataFrame, dict]:
    """The curve over k on the test pairs (top-k nodes and three matched random sets), the
    named circuit (the smallest k recovering the share on the discovery pairs), and it and a
    random set of its size ablated alone."""
    held, disc = everything.rows(test), everything.rows(find)
    ld_clean = pairs.ld_clean.to_numpy()[test]
    ld_none, ok_none = nc.run_kept(pre, held, set(), nodes, mean)
    disc_none = nc.run_kept(pre, disc, set(), nodes, mean)[0]
    rng = np.random.default_rng(config.seed)
    rows = []
    ks = sorted({k for k in config.top_k if k < len(nodes)} | {len(nodes)})
    for k in ks:
        keep = set(ranking[:k])
        runs = [("top-k nodes", [nc.run_kept(pre, held, keep, nodes, mean)])]
        runs.append(("random nodes", [nc.run_kept(pre, held, nc.matched_random(nodes, keep, rng), nodes, mean) for _ in range(3)]))
        for which, got in runs:
            ld, ok = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
            stat = proportion(ok)
            rows.append({"k": k, "nodes": which, "recovered": nc.recovered(ld, np.tile(ld_none, len(got)), np.tile(ld_clean, len(got))),
                         "accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"], "n": stat["n"]})
    disc_clean = pairs.ld_clean.to_numpy()[find]
    k = smallest_k(lambda k: nc.recovered(nc.run_kept(pre, disc, set(ranking[:k]), nodes, mean)[0], disc_none, disc_clean),
                      max(ks), config.faithful_share)
    keep = set(ranking[:k])
    ld, ok = nc.run_kept(pre, held, keep, nodes, mean)
    lo, hi = bootstrap_share(ld, ld_none, ld_clean, seed=config.seed)
    rand = nc.matched_random(nodes, keep, rng)
    ld_rand, ok_rand = nc.run_kept(pre, held, rand, nodes, mean)
    alone = set(nodes) - keep
    ld_alone, ok_alone = nc.run_kept(pre, held, alone, nodes, mean)
    ld_ralone, ok_ralone = nc.run_kept(pre, held, set(nodes) - rand, nodes, mean)
    clean_ok = proportion(pairs.clean_correct.to_numpy()[test])
    share = nc.recovered(ld, ld_none, ld_clean)
    circuit = {"k": k, "n_nodes": len(nodes), "recovered": share, "recovered_lo": lo, "recovered_hi": hi,
               "found": bool(share >= config.faithful_share), "nodes": [x for x in ranking[:k]],
               "random_recovered": nc.recovered(ld_rand, ld_none, ld_clean),
               "alone_removed": 1 - nc.recovered(ld_alone, ld_none, ld_clean),
               "random_alone_removed": 1 - nc.recovered(ld_ralone, ld_none, ld_clean),
               "n": len(test), "clean_accuracy": clean_ok["p"]}
    for name, got in (("accuracy", ok), ("random_accuracy", ok_rand), ("none_accuracy", ok_none), ("alone_accuracy", ok_alone),
                      ("random_alone_accuracy", ok_ralone)):
        stat = proportion(got)
        circuit |= {name: stat["p"], f"{name}_lo": stat["lo"], f"{name}_hi": stat["hi"]}
    return pd.DataFrame(rows), circuit


def _neuron_attribution(pre, sub, clean, corrupt, layers: list[int]) -> dict[int, np.ndarray]:
    """Per layer: each MLP neuron's attribution at the scored position (gradient times the
    corrupted-minus-clean activation, mean over the discovery pairs)."""
    if not layers:
        return {}
    names = [f"blocks.{i}.mlp.hook_post" for i in layers]
    grads = npch.gradients(pre, sub, names)
    rows = torch.arange(len(sub.positions))
    return {i: ((corrupt[n] - clean[n]) * grads[n])[rows, sub.positions].mean(0).numpy() for i, n in zip(layers, names)}


def _neuron_test(config, pre, held, pairs: pd.DataFrame, attr: dict, mean: dict) -> pd.DataFrame:
    """Accuracy with only the top-N neurons per chosen MLP left clean at the scored position
    (the rest mean-ablated), against N random neurons (three draws), none and all."""
    if not attr:
        return pd.DataFrame()
    ld_clean = pairs.ld_clean.to_numpy()
    ld_none, ok_none = nc.run_neurons(pre, held, {i: [] for i in attr}, mean)
    rng = np.random.default_rng([config.seed, 3])
    d = pre.model.cfg.d_mlp
    rows = [{"neurons": 0, "kept": "none", "recovered": 0.0, **_acc(ok_none)}]
    for count in config.neuron_counts:
        top = {i: np.argsort(-np.abs(a))[:count] for i, a in attr.items()}
        ld, ok = nc.run_neurons(pre, held, top, mean)
        rows.append({"neurons": count, "kept": "top by attribution", "recovered": nc.recovered(ld, ld_none, ld_clean), **_acc(ok)})
        got = [nc.run_neurons(pre, held, {i: rng.choice(d, count, replace=False) for i in attr}, mean) for _ in range(3)]
        ld, ok = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        rows.append({"neurons": count, "kept": "random", "recovered": nc.recovered(ld, np.tile(ld_none, 3), np.tile(ld_clean, 3)),
                     **_acc(ok)})
    rows.append({"neurons": d, "kept": "all", "recovered": 1.0, **_acc(pairs.clean_correct.to_numpy())})
    return pd.DataFrame(rows)


def _acc(ok: np.ndarray) -> dict:
    stat = proportion(ok)
    return {"accuracy": stat["p"], "lo": stat["lo"], "hi": stat["hi"], "n": stat["n"]}


def _profile(pre, ref_tok: torch.Tensor, problems, attr: dict, n_profile: int) -> pd.DataFrame:
    """The top neurons by attribution, profiled over every one-digit problem (activation at '=')."""
    if not attr:
        return pd.DataFrame()
    flat = sorted(((abs(float(v)), layer, j) for layer, a in attr.items() for j, v in enumerate(a)), reverse=True)[:n_profile]
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act[:, POSITIONS.index("=")].detach()
        return act

    with torch.no_grad(), pre.model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", keep) for layer in attr]):
        pre.residual(ref_tok)
    values = np.stack([acts[f"blocks.{layer}.mlp.hook_post"][:, j].numpy() for _, layer, j in flat], 1)
    a, b = np.array([p[0] for p in problems]), np.array([p[1] for p in problems])
    out = neuron_profile.profile(values, a, b, [f"L{layer}.N{j}" for _, layer, j in flat])
    return out.assign(attribution=[s for s, _, _ in flat])
