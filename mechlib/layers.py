"""Chapter 2, breaking the model layer by layer: a sweep of corruptions, the logit lens,
generations under corruption, and the numbers the prose quotes."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
from tqdm import tqdm

from .evaluate import answer_scores, evaluate, greedy_decode
from .interventions import Corruption, corrupted, logit_lens, mean_activations


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
    """Per corruption, in sweep order: accuracy, mean answer loss, mean p(first answer token)."""
    order = list(dict.fromkeys(results["corruption"]))
    table = results.groupby("corruption", sort=False).agg(
        family=("family", "first"),
        layer=("layer", "first"),
        accuracy=("correct", "mean"),
        answer_loss=("answer_loss", "mean"),
        p_first=("p_first", "mean"),
    )
    return table.loc[order].reset_index()


def by_difficulty(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per corruption x difficulty (corruptions in sweep order)."""
    order = list(dict.fromkeys(results["corruption"]))
    return results.pivot_table(index="corruption", columns="difficulty", values="correct", aggfunc="mean").loc[order]


def lens_by_difficulty(model, problems: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    """Logit-lens p(first answer token), first-token top-1 and teacher-forced exact match,
    averaged per (difficulty, layer); layer -1 is the embedding."""
    lens = logit_lens(model, problems["prompt"].tolist(), problems["target"].tolist(), batch_size)
    lens["difficulty"] = problems["difficulty"].to_numpy()[lens["problem"].to_numpy()]
    return lens.groupby(["difficulty", "layer"], as_index=False)[["p_first", "top1_first", "tf_correct"]].mean()


def generations(model, prompts: Sequence[str], corruptions: Sequence[Corruption], max_new_tokens: int, prompts_for_means: Sequence[str]) -> pd.DataFrame:
    """Greedy continuations (newlines kept) of each prompt under each corruption: a wide table."""
    sites = sorted({(s, l) for c in corruptions for s, l, mode in c.ablations if mode == "mean"})
    means = mean_activations(model, prompts_for_means, sites) if sites else {}
    table = {"prompt": list(prompts)}
    for c in corruptions:
        with corrupted(model, c, means) as forward:
            table[c.spec] = greedy_decode(model, prompts, max_new_tokens, forward=forward, stop_at_newline=False)
    return pd.DataFrame(table)


def findings(summary: pd.DataFrame, lens: pd.DataFrame, n_layers: int) -> dict:
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
            repeat_best=str(repeats.sort_values("accuracy", ascending=False).iloc[0]["corruption"]),
            repeat_best_acc=float(repeats["accuracy"].max()),
            repeat_worst=str(repeats.sort_values("accuracy").iloc[0]["corruption"]),
            repeat_worst_acc=float(repeats["accuracy"].min()),
        )
    overall = lens.groupby("layer")["top1_first"].mean()
    reached = overall[overall >= 0.5]
    out["lens_first_top1_layer"] = int(reached.index[0]) if len(reached) else None
    out["lens_final_top1"] = float(overall.loc[n_layers - 1])
    out["lens_last_layer_minus_one_top1"] = float(overall.loc[n_layers - 2]) if n_layers >= 2 else None
    return out


def layer_heatmap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the per-layer corruptions as family x layer (for the heat map)."""
    per_layer = summary[summary["layer"].notna()].copy()
    per_layer["layer"] = per_layer["layer"].astype(int)
    table = per_layer.pivot_table(index="family", columns="layer", values="accuracy", aggfunc="mean")
    table.columns.name, table.index.name = "layer", "corruption"
    return table

