"""Chapter 2, breaking the model layer by layer: a sweep of corruptions, the logit lens,
generations under corruption, and the numbers the prose quotes."""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence

import pandas as pd
from tqdm import tqdm

from ..core import layer_study, tuned_lens
from ..core.evaluate import answer_scores, encode_targets, evaluate, first_digit_offsets, greedy_decode
from ..core.interventions import DEPTH_UNKNOWN, SPEC_HELP, Corruption, activation_stats, corrupted, logit_lens, mean_activations, parse_corruptions
from ..core.model_jobs import MAX_BATCH
from ..core.models import load_model
from ..core.organism import ORGANISM_NAME, OrganismRecipe, ensure_organism
from ..core.problem_sets import problem_set
from ..core.stats import accuracy_by, fmt_interval, mcnemar, seed_spread
from ..views.plots import number_text
from ..views.quiet import quiet
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_int,
    is_str,
    list_of,
    operators_field,
    param,
    prompt_format_field,
)

CHAPTER = "02_layers"


def _is_corruption_list(v) -> bool:
    try:
        parse_corruptions(list(v) if isinstance(v, tuple) else v, DEPTH_UNKNOWN)
        return True
    except (ValueError, TypeError):
        return False


def _explain_corruptions(v) -> str:
    try:
        parse_corruptions(list(v) if isinstance(v, tuple) else v, DEPTH_UNKNOWN)
    except (ValueError, TypeError) as err:
        return str(err)
    return SPEC_HELP


DEFAULT_CORRUPTIONS = (
    "none", "skip:*", "skip_last:2", "skip_range:1-2", "repeat:*x2", "repeat:1x3", "permute:1,0,2,3",
    "permute:0,2,1,3", "permute:0,1,3,2", "permute:3,2,1,0", "ablate:attn*:zero", "ablate:mlp*:zero", "ablate:mlp*:mean",
)


SPEAK_PROMPTS = ("The distance between Rome and Paris is approximately", "1 + 3 = 4\n4 + 5 = 9\n2 + 3 =",
                 '{"name": "Alice", "age": 30, "city":', "Obama was elected in the year")


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    operators: tuple[str, ...] = operators_field(("+",))
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2"))
    n_per_cell: int = param(450, is_int(1, 100_000), "an integer in 1..100000 (problems per operator x difficulty cell)")
    prompt_format: str = prompt_format_field()
    corruptions: tuple[str, ...] = param(DEFAULT_CORRUPTIONS, _is_corruption_list, _explain_corruptions,
                                         "corruption specs; '*' stands for every layer")
    generation_prompts: tuple[str, ...] = param(("12+34=", "7+8=", "99+99=", "5+0=", "57-23=", "123+456="), list_of(is_str),
                                                "a non-empty list of prompt strings")
    generation_corruptions: tuple[str, ...] = param(("none", "skip:0", "skip:3", "repeat:1x2", "permute:0,2,1,3", "ablate:mlp1:mean"),
                                                    _is_corruption_list, _explain_corruptions)
    max_new_tokens: int = param(8, is_int(1, 256), "an integer in 1..256 (tokens generated per prompt)")
    organism_seeds: tuple[int, ...] = param((0, 1, 2), list_of(is_int(0, 2**31 - 1), min_len=0, max_len=10),
                                            "a list of up to 10 organism training seeds ([] for none)",
                                            "organisms trained with these seeds repeat the sweep's headline numbers (organism only)")
    real_models: tuple[str, ...] = param(("smollm2-135m-instruct", "gemma-3-270m"), list_of(is_str, min_len=0, max_len=4),
                                         "a list of up to 4 model names ([] for none)",
                                         "pretrained models broken layer by layer on the cells they do best")
    real_operators: tuple[str, ...] = operators_field(("+", "*"))
    real_difficulties: tuple[str, ...] = difficulties_field(("1x1",))
    real_n_per_cell: int = param(40, is_int(1, 10_000), "an integer in 1..10000",
                                 "problems per cell for the pretrained models (40 keeps both models' sweeps within minutes on 2 cores; "
                                 "chapter 1 finds 1x1 the cells where both do best)")
    shots: int = param(3, is_int(1, 20), "an integer in 1..20", "worked examples per few-shot prompt")
    pool_seed: int = param(0, is_int(0, 2**31 - 1), "an integer in 0..2147483647", "the draw of worked examples")
    speak_prompts: tuple[str, ...] = param(SPEAK_PROMPTS, list_of(is_str, min_len=0), "a list of prompt strings",
                                           "prompts the pretrained models continue under corruptions")
    real_workers: int = param(2, is_int(1, 8), "an integer in 1..8", "processes, one pretrained model each")
    lens_tokens: int = param(4096, is_int(tuned_lens.MIN_TOKENS, 1_000_000), f"an integer in {tuned_lens.MIN_TOKENS}..1000000 (fewer "
                             "tokens leave the tuned lens no held-out window to be scored on)",
                             "tokens the tuned lens is fitted on per model, half arithmetic outside the test problems, half prose")


@dataclasses.dataclass
class Result:
    params: Params
    n_layers: int
    problems: pd.DataFrame
    results: pd.DataFrame  # one row per (corruption, problem)
    summary: pd.DataFrame  # one row per corruption
    lens: pd.DataFrame  # logit lens per (difficulty, layer)
    stats: pd.DataFrame  # activation statistics per layer
    generations: pd.DataFrame
    seeds: pd.DataFrame  # organism: headline numbers per training seed
    base_rate: float  # top-1 accuracy of always predicting the most common first answer digit
    timings: dict
    real: dict = dataclasses.field(default_factory=dict)  # pretrained models: layer_study tables, empty when none ran


def check(params: Params) -> None:
    """Corruption layers against the model's depth, and every prompt against its context."""
    spec = preflight.model(params)
    if spec.n_layers is not None:
        for name in ("corruptions", "generation_corruptions"):
            try:
                parsed = parse_corruptions(list(getattr(params, name)), spec.n_layers)
            except ValueError as err:
                params.fail(name, f"{err} (model {params.model!r} has {spec.n_layers} layers)")
            same: dict = {}
            for c in parsed:
                same.setdefault((c.order, c.ablations), []).append(c.spec)
            dupes = [specs for specs in same.values() if len(specs) > 1]
            if dupes:
                params.fail(name, f"{dupes} are the same condition on a {spec.n_layers}-layer model; keep one of each")
    preflight.fits_context(spec, params.operators, params.difficulties, params.prompt_format, chapter=CHAPTER)
    preflight.prompts_fit(params, spec, "generation_prompts", params.generation_prompts, params.max_new_tokens)
    for name in params.real_models:
        real = preflight.model(params, "real_models", name)
        preflight.prompts_fit(params, real, "speak_prompts", params.speak_prompts, params.max_new_tokens)


def run(params: Params, progress: bool = False) -> Result:
    check(params)
    lm, _ = load_model(params.model, device=params.device)
    conditions = parse_corruptions(list(params.corruptions), lm.cfg.n_layers)
    speaking = parse_corruptions(list(params.generation_corruptions), lm.cfg.n_layers)
    problems = problem_set(params)  # trained cells of the organism: held-out pairs only
    start = time.perf_counter()
    results = sweep(lm, problems, conditions, batch_size=params.batch_size, progress=progress)
    sweep_seconds = time.perf_counter() - start
    target_ids = encode_targets(lm, problems["target"].tolist())
    first = pd.Series([row[i] for row, i in zip(target_ids, first_digit_offsets(lm.tokenizer, target_ids))])  # the first answer digit
    real = {}
    if params.real_models:
        start = time.perf_counter()
        real = layer_study.layer_study(real_config(params), setup=quiet)
        real_seconds = time.perf_counter() - start
    return Result(
        params=params,
        n_layers=lm.cfg.n_layers,
        problems=problems,
        results=results,
        summary=summarise(results),
        lens=lens_by_difficulty(lm, problems, batch_size=params.batch_size),
        stats=activation_stats(lm, problems["prompt"].tolist(), batch_size=params.batch_size),
        generations=generations(lm, list(params.generation_prompts), speaking, params.max_new_tokens, problems["prompt"].tolist()),
        seeds=seed_table(params, conditions, results),
        base_rate=float(first.value_counts(normalize=True).iloc[0]),
        timings={"sweep_seconds": round(sweep_seconds, 2), **({"real_seconds": round(real_seconds, 2)} if real else {})},
        real=real,
    )


def real_config(params: Params) -> layer_study.LayerConfig:
    """The pretrained models' part: few-shot prompts on the cells they do best."""
    return layer_study.LayerConfig(models=params.real_models, operators=params.real_operators, difficulties=params.real_difficulties,
                                   n_per_cell=params.real_n_per_cell, shots=params.shots, pool_seed=params.pool_seed, seed=params.seed,
                                   speak_prompts=params.speak_prompts, max_new_tokens=params.max_new_tokens,
                                   batch_size=min(params.batch_size, MAX_BATCH), device=params.device, workers=params.real_workers,
                                   lens_tokens=params.lens_tokens)


def seed_table(params: Params, conditions, seed0: pd.DataFrame) -> pd.DataFrame:
    """The sweep's headline numbers for organisms trained with each seed (each on its own
    held-out pairs): clean accuracy and accuracy with each layer skipped."""
    if params.model != ORGANISM_NAME:
        return pd.DataFrame()
    rows = []
    for seed in params.organism_seeds:
        if seed == 0:
            res = seed0
        else:
            recipe = OrganismRecipe(seed=seed)
            lm, _ = load_model(str(ensure_organism(recipe, progress=False)), device=params.device)
            res = sweep(lm, problem_set(params, recipe), conditions, batch_size=params.batch_size)
        acc = res.groupby("corruption", sort=False)["correct"].mean()
        row = {"organism_seed": seed, "clean": float(acc.get("none", float("nan")))}
        skips = {c: a for c, a in acc.items() if re.fullmatch(r"skip:\d+", c)}
        row.update({c: float(a) for c, a in skips.items()})
        if skips:
            row["most_needed_layer"] = int(min(skips, key=lambda c: (skips[c], c)).split(":")[1])
        rows.append(row)
    return pd.DataFrame(rows)


def findings(result: Result) -> dict:
    """Headline numbers, plus the activation statistics (reproducible to the last digit)."""
    out = layer_findings(result.summary, result.lens, result.n_layers)
    out.update(n_problems=int(len(result.problems)), n_layers=int(result.n_layers), model=result.params.model)
    clean = result.summary[result.summary.corruption == "none"]
    if len(clean):
        r = clean.iloc[0]
        out["clean_text"] = fmt_interval(r.accuracy, r.lo, r.hi, int(r.n))
    skip = result.summary[result.summary.corruption == f"skip:{out.get('indispensable_layer', -1)}"]
    if len(skip):
        r = skip.iloc[0]
        out["indispensable_text"] = fmt_interval(r.accuracy, r.lo, r.hi, int(r.n))
    out["lens_base_rate"] = result.base_rate
    out["seeds_n"] = int(len(result.seeds))
    out["seeds_clean_text"] = "not measured (fewer than two organism seeds were run)"
    out["seeds_most_needed"] = "not compared"
    out["seeds_same_most_needed"] = "one seed cannot show whether it holds across seeds"
    if len(result.seeds) > 1:
        sp = seed_spread(result.seeds["clean"])
        out["seeds_clean_text"] = f"{sp['mean']:.1%} (range {sp['min']:.1%} to {sp['max']:.1%})"
        if "most_needed_layer" in result.seeds:
            layers_seen = sorted(set(result.seeds["most_needed_layer"]))
            out["seeds_most_needed"] = ", ".join(str(x) for x in layers_seen)
            out["seeds_same_most_needed"] = "the same layer for every seed" if len(layers_seen) == 1 else "not the same layer for every seed"
    out["seeds_dispensable_text"] = "one organism seed was run"
    if len(result.seeds) > 1:
        per_seed = []
        for row in result.seeds.to_dict("records"):
            skips = {c: v for c, v in row.items() if re.fullmatch(r"skip:\d+", str(c)) and pd.notna(v)}
            if skips:
                best = max(skips, key=lambda c: (skips[c], -int(c.split(":")[1])))
                per_seed.append(f"seed {row['organism_seed']}: layer {best.split(':')[1]} ({skips[best]:.1%})")
        if per_seed:
            out["seeds_dispensable_text"] = "; ".join(per_seed)
    out["seeds_sentence"] = (
        f"Over {out['seeds_n']} organisms the clean accuracy is {out['seeds_clean_text']}, and the layer whose skipping "
        f"hurts most is layer {out['seeds_most_needed']}: {out['seeds_same_most_needed']}."
        if len(result.seeds) > 1 else
        "Only one organism was run (parameter organism_seeds), so this run reports no seed-to-seed spread."
    )
    out.update({f"stat_{k}_{int(r['layer'])}": v for r in result.stats.to_dict("records") for k, v in r.items() if k != "layer"})
    if result.real:
        out.update(layer_study.sentences(result.real))
    else:
        none = "not measured: this run broke no pretrained model (parameter real_models)"
        out.update({k: none for k in ("layers_design_text", "layers_clean_text", "layers_needed_text", "layers_lens_text", "layers_fit_text")})
        out.update({"layers_lens_source": layer_study.tuned_lens.PROSE_SOURCE, "layers_rule_readable": layer_study.LENS_RULES["readable"],
                    "layers_rule_disagree": layer_study.LENS_RULES["disagree"]})
        out.update({f"layers_{key}_{v}": "not measured" for key in layer_study.CLAIMS for v in ("holds", "false", "unclear")})
        out.update({f"layers_rule_{key}": rule for key, rule in layer_study.RULES.items()})
    return out


def sweep(model, problems: pd.DataFrame, corruptions: Sequence[Corruption], batch_size: int = 512, progress: bool = False) -> pd.DataFrame:
    """One row per (corruption, problem): greedy answer, error class, answer loss, p(first)."""
    prompts, targets = problems["prompt"].tolist(), problems["target"].tolist()
    sites = sorted({(s, l) for c in corruptions for s, l, mode in c.ablations if mode == "mean"})
    means = mean_activations(model, prompts, sites, batch_size) if sites else {}
    frames = []
    for c in tqdm(corruptions, desc="corruptions", disable=not progress):
        with corrupted(model, c, means) as forward:
            res = evaluate(model, problems, batch_size=batch_size, forward=forward)
            scores = answer_scores(model, prompts, targets, batch_size=batch_size, forward=forward)
        res = pd.concat([res.reset_index(drop=True), scores[["answer_loss", "p_first"]]], axis=1)
        res.insert(0, "corruption", c.spec)
        res.insert(1, "family", c.family)
        res.insert(2, "layer", c.layer)
        frames.append(res)
    return pd.concat(frames, ignore_index=True)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per corruption, in sweep order: n, accuracy with its Wilson 95% interval, mean answer
    loss, mean p(first answer token), and McNemar's p against the clean model (paired: the
    same problems under both)."""
    order = list(dict.fromkeys(results["corruption"]))
    table = results.groupby("corruption", sort=False).agg(
        family=("family", "first"),
        layer=("layer", "first"),
        accuracy=("correct", "mean"),
        answer_loss=("answer_loss", "mean"),
        p_first=("p_first", "mean"),
    )
    table = table.loc[order].reset_index()
    ci = accuracy_by(results, "corruption").set_index("corruption").loc[order]
    table.insert(3, "n", ci["n"].to_numpy())
    table.insert(5, "lo", ci["lo"].to_numpy())
    table.insert(6, "hi", ci["hi"].to_numpy())
    table["p_vs_clean"] = float("nan")  # McNemar against the clean model, on the same problems
    clean = results[results["corruption"] == "none"]
    if len(clean):
        for i, name in enumerate(table["corruption"]):
            runs = results[results["corruption"] == name]
            if name != "none" and len(runs) == len(clean) and (runs["prompt"].to_numpy() == clean["prompt"].to_numpy()).all():
                table.loc[i, "p_vs_clean"] = mcnemar(runs["correct"].to_numpy(), clean["correct"].to_numpy())["p"]
    return table


def lens_by_difficulty(model, problems: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    """Logit-lens p(first answer digit), its top-1 and teacher-forced exact match, averaged
    per (difficulty, layer), with the number of problems ``n``; layer -1 is the embedding."""
    lens = logit_lens(model, problems["prompt"].tolist(), problems["target"].tolist(), batch_size)
    lens["difficulty"] = problems["difficulty"].to_numpy()[lens["problem"].to_numpy()]
    grouped = lens.groupby(["difficulty", "layer"], as_index=False)
    return grouped[["p_first", "top1_first", "tf_correct"]].mean().merge(grouped.size().rename(columns={"size": "n"}))


def generations(model, prompts: Sequence[str], corruptions: Sequence[Corruption], max_new_tokens: int, prompts_for_means: Sequence[str]) -> pd.DataFrame:
    """Greedy continuations (newlines kept) of each prompt under each corruption: a wide table."""
    sites = sorted({(s, l) for c in corruptions for s, l, mode in c.ablations if mode == "mean"})
    means = mean_activations(model, prompts_for_means, sites) if sites else {}
    table = {"prompt": list(prompts)}
    for c in corruptions:
        with corrupted(model, c, means) as forward:
            table[c.spec] = greedy_decode(model, prompts, max_new_tokens, forward=forward, stop_at_newline=False)
    return pd.DataFrame(table)


def layer_findings(summary: pd.DataFrame, lens: pd.DataFrame, n_layers: int) -> dict:
    """Headline numbers: the most indispensable layer, where the answer becomes top-1, and
    what repeating a layer does, all relative to the clean model."""
    clean = summary.loc[summary["corruption"] == "none", "accuracy"]
    clean_acc = float(clean.iloc[0]) if len(clean) else float("nan")
    out: dict = {"clean_acc": clean_acc, "n_conditions": int(len(summary))}
    skips = summary[(summary["family"] == "skip") & summary["layer"].notna()]
    if len(skips):
        worst = skips.sort_values(["accuracy", "layer"]).iloc[0]
        best = skips.sort_values(["accuracy", "layer"], ascending=[False, True]).iloc[0]
        out.update(
            indispensable_layer=int(worst["layer"]),
            indispensable_acc=float(worst["accuracy"]),
            dispensable_layer=int(best["layer"]),
            dispensable_acc=float(best["accuracy"]),
        )
    repeats = summary[summary["family"].str.startswith("repeat")]
    if len(repeats):
        out.update(
            repeat_mean_drop=float(clean_acc - repeats["accuracy"].mean()),
            repeat_mean_drop_points=f"{(clean_acc - repeats['accuracy'].mean()) * 100:.1f}",
            repeat_best=str(repeats.sort_values("accuracy", ascending=False).iloc[0]["corruption"]),
            repeat_best_acc=float(repeats["accuracy"].max()),
            repeat_worst=str(repeats.sort_values("accuracy").iloc[0]["corruption"]),
            repeat_worst_acc=float(repeats["accuracy"].min()),
        )
    # pooled over problems: each difficulty weighs by its number of problems, not equally
    weights = lens["n"] if "n" in lens else pd.Series(1.0, index=lens.index)
    overall = (lens["top1_first"] * weights).groupby(lens["layer"]).sum() / weights.groupby(lens["layer"]).sum()
    reached = overall[overall >= 0.5]
    out["lens_first_top1_layer"] = int(reached.index[0]) if len(reached) else None
    out["lens_first_top1_text"] = (
        f"from layer {int(reached.index[0])} on" if len(reached)
        else "at no layer: it never becomes top-1 for half of the problems"
    )
    out["lens_final_top1"] = float(overall.loc[n_layers - 1])
    out["lens_last_layer_minus_one_top1"] = float(overall.loc[n_layers - 2]) if n_layers >= 2 else None
    return out


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The conditions table for the page: readers' column names, 3 significant digits, and the
    paired p against the clean model (blank for the clean row)."""
    return summary.assign(**{"answer loss (nats)": summary.answer_loss.map(number_text),
                             "p(first digit)": summary.p_first.map(number_text),
                             "paired p vs clean": [f"{p:.2g}" if pd.notna(p) else "" for p in summary.p_vs_clean]})


NORM_NAMES = {"resid_norm_mean": "residual stream", "attn_norm_mean": "attention", "mlp_norm_mean": "MLP"}


def norms_long(stats: pd.DataFrame) -> pd.DataFrame:
    """Mean output norms per layer in long form (layer, output, value), outputs named for readers."""
    long = stats.melt(id_vars="layer", value_vars=list(NORM_NAMES), var_name="output")
    return long.assign(output=long.output.map(NORM_NAMES))


def per_layer_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-layer corruptions as long cells (family, layer, n, accuracy, lo, hi), for the
    interval heat map."""
    per_layer = summary[summary["layer"].notna()].copy()
    per_layer["layer"] = per_layer["layer"].astype(int)
    return per_layer[["family", "layer", "n", "accuracy", "lo", "hi"]].rename(columns={"family": "corruption"})


def difficulty_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with n and interval per (corruption, difficulty), corruptions in sweep order."""
    return accuracy_by(results, ["corruption", "difficulty"])


def generations_long(generations: pd.DataFrame) -> pd.DataFrame:
    """The wide generations table as (prompt, condition, continuation) rows, continuations
    shown with repr so empty answers and stray spaces are visible."""
    long = generations.melt(id_vars="prompt", var_name="condition", value_name="continuation")
    long["continuation"] = long["continuation"].map(repr)
    return long
