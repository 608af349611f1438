"""Pretrained models broken layer by layer, on the cells they do best (few-shot prompts):
teacher-forced scores under each corruption, the logit lens, what the model says with only
its first layer, and the sources' three claims about layers as verdicts.

Every corruption is scored teacher-forced on the same problems: ``tf_correct`` (every answer
token is the argmax), the answer loss and p(first answer digit). That is one forward pass
per batch, so a 30-layer model's per-layer sweep fits a CPU budget; greedy decoding would
add the stop token's choice, which is not what a layer corruption is about.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pandas as pd
import torch

from . import tuned_lens
from .claims import interval_verdict
from .data import make_problems, parse_difficulty
from .decode import greedy_decode
from .evaluate import answer_scores, encode
from .evaluate import greedy_decode as greedy_text
from .format_study import render
from .interventions import corrupted, logit_lens, mean_activations, parse_corruptions
from .model_jobs import ModelsConfig, per_model
from .models import load_model
from .stats import bootstrap_mean, proportion

# Claim thresholds (the page prints the rules).
MOST = 0.5  # "layer 0 alone repeats the last token": most first tokens repeat it
BROKEN = 0.05  # "removing the first layer breaks the model": accuracy credibly below this
PROSE_TOKENS = 1024  # prose read with layer 0 alone: 16 windows of 64 tokens
READABLE = 0.5  # a lens reads the answer at a layer whose top-1 lower bound exceeds this share of the last layer's
DISAGREE = 1  # the two lenses disagree when their readable layers differ by more than this many layers
RULES = {
    "layer0_repeats": (f"holds when the share of problems whose first token, with layer 0 alone, repeats the prompt's last token "
                       f"(the same text, spaces aside) has a 95% lower bound above {MOST:.0%}; false when its upper bound is below "
                       f"{MOST:.0%}"),
    "layer0_repeats_prose": (f"holds when the share of prose positions where the model with layer 0 alone predicts the token it has "
                             f"just read (the same text, spaces aside) has a 95% lower bound above {MOST:.0%}; false when its upper "
                             f"bound is below {MOST:.0%}; the interval is a bootstrap over the text's {PROSE_TOKENS // tuned_lens.WINDOW} "
                             "windows, since positions in one window are not independent"),
    "first_layer_breaks": (f"holds when accuracy with layer 0 skipped has a 95% upper bound below {BROKEN:.0%}; false when its "
                           f"lower bound is above {BROKEN:.0%}"),
    "last_layer": ("each lens reads the first answer digit of addition from its readable layer (below); the claim holds when "
                   "that is the last layer under both the logit and the tuned lens, is false when it is an earlier one under both, "
                   "and is unclear otherwise"),
}
LENS_RULES = {
    "readable": (f"a lens reads the first answer digit from the first layer whose top-1 accuracy has a 95% lower bound above "
                 f"both {READABLE:.0%} of the last layer's top-1 and the share of the most common first digit among the problems "
                 "(what always naming that digit would score)"),
    "disagree": (f"the two lenses disagree when their readable layers differ by more than {DISAGREE} layer, or when only one "
                 "of them reads the answer at all"),
}


@dataclasses.dataclass(frozen=True)
class LayerConfig(ModelsConfig):
    """Which models and problems; checked on construction."""

    operators: tuple[str, ...] = ("+", "*")
    difficulties: tuple[str, ...] = ("1x1",)
    n_per_cell: int = 100
    shots: int = 3
    pool_seed: int = 0
    seed: int = 0
    speak_prompts: tuple[str, ...] = ()
    max_new_tokens: int = 8
    lens_tokens: int = 4096

    def __post_init__(self):
        super().__post_init__()
        for d in self.difficulties:
            parse_difficulty(d)
        least = tuned_lens.HELD_OUT * tuned_lens.WINDOW
        if not isinstance(self.lens_tokens, int) or self.lens_tokens < least:
            raise ValueError(f"lens_tokens must be an integer of at least {least} (tokens to fit the tuned lens on), got {self.lens_tokens!r}")


def depth_specs(n_layers: int) -> list[str]:
    """The corruptions for a model of this depth: each layer skipped, its attention and its
    MLP mean-ablated; the first and last 2 and 4 layers skipped, the middle third skipped,
    the middle layer repeated, the two middle layers swapped, and layer 0 alone."""
    mid, third = n_layers // 2, n_layers // 3
    swap = list(range(n_layers))
    swap[mid - 1], swap[mid] = swap[mid], swap[mid - 1]
    specs = ["none", "skip:*", "ablate:attn*:mean", "ablate:mlp*:mean"]
    specs += [f"skip_first:{k}" for k in (2, 4) if k < n_layers] + [f"skip_last:{k}" for k in (2, 4) if k < n_layers]
    if third >= 1 and 2 * third - 1 >= third:
        specs.append(f"skip_range:{third}-{2 * third - 1}")
    specs += [f"repeat:{mid}x2", "permute:" + ",".join(map(str, swap))]
    if n_layers > 2:
        specs.append(f"skip_range:1-{n_layers - 1}")
    return specs


def problems_for(config: LayerConfig) -> pd.DataFrame:
    """The few-shot problems every corruption scores; the worked examples come from the
    cells' difficulties and 1x2 and 2x2, outside the problems."""
    problems = make_problems(list(config.operators), list(config.difficulties), config.n_per_cell, "bare", config.seed).to_pandas()
    cells = tuple(dict.fromkeys((*config.difficulties, "1x2", "2x2")))  # an exhaustive 1x1 cell leaves no examples of its own
    return render(problems, "fewshot", config.shots, config.pool_seed, cells).reset_index(drop=True)


def study_model(config: LayerConfig, name: str, setup: Callable[[], None] | None = None) -> dict[str, pd.DataFrame]:
    """One model: ``scores`` (one row per corruption and problem), ``lens`` (per problem,
    layer and lens: the logit lens and a tuned lens), ``lens_fit`` (the tuned lens's fit per
    layer), ``repeats`` (first token with layer 0 alone) and ``speech`` (generations)."""
    if setup is not None:
        setup()
    model, _ = load_model(name, device=config.device)
    n_layers = model.cfg.n_layers
    problems = problems_for(config)
    prompts, targets, groups = problems.prompt.tolist(), problems.target.tolist(), problems.shots.tolist()
    conditions = parse_corruptions(depth_specs(n_layers), n_layers)
    sites = sorted({(s, l) for c in conditions for s, l, mode in c.ablations if mode == "mean"})
    means = mean_activations(model, prompts, sites, config.batch_size) if sites else {}
    frames = []
    for c in conditions:
        with corrupted(model, c, means) as forward:
            scores = answer_scores(model, prompts, targets, config.batch_size, forward=forward, groups=groups)
        frames.append(scores.assign(corruption=c.spec, family=c.family, layer=c.layer, problem=range(len(problems)),
                                    op=problems.op.values, difficulty=problems.difficulty.values))
    text = tuned_lens.train_text(model, config.operators, (*config.difficulties, "1x2", "2x2"), problems, config.lens_tokens, config.seed)
    start = time.perf_counter()
    translators, fit = tuned_lens.fit(model, text, min(config.batch_size, 32))
    fit = fit.assign(seconds=round(time.perf_counter() - start, 1))  # what fitting costs (not part of any verdict)
    lens = pd.concat([logit_lens(model, prompts, targets, config.batch_size).assign(lens="logit"),
                      logit_lens(model, prompts, targets, config.batch_size, translators, all_positions=False).assign(lens="tuned")],
                     ignore_index=True)
    first_digit = [t.strip()[:1] for t in targets]
    lens = lens.assign(op=problems.op.values[lens.problem.values], first_digit=[first_digit[i] for i in lens.problem])
    only0 = parse_corruptions([f"skip_range:1-{n_layers - 1}"], n_layers)[0] if n_layers > 2 else None
    repeats = pd.DataFrame()
    if only0 is not None:
        ids = encode(model, prompts)
        with corrupted(model, only0) as forward:
            first = greedy_decode(model, ids, 1, frozenset(), config.batch_size, forward, groups=groups)
        text = model.tokenizer.decode  # " =" repeats "=": tokens compare by their text, spaces stripped
        repeats = pd.DataFrame({"problem": range(len(ids)),
                                "repeats": [len(f) > 0 and text([f[0]]).strip() == text([p[-1]]).strip() != "" for f, p in zip(first, ids)]})
    prose = prose_repeats(model, config, only0) if only0 is not None else pd.DataFrame()
    speech = speak(model, config, conditions, means)
    out = {"scores": pd.concat(frames, ignore_index=True), "lens": lens, "lens_fit": fit, "repeats": repeats, "prose": prose, "speech": speech}
    return {key: frame.assign(model=name, n_layers=n_layers) for key, frame in out.items()}


@torch.inference_mode()
def prose_repeats(model, config: LayerConfig, only0, batch: int = 2) -> pd.DataFrame:
    """Prose never used to fit the tuned lens (paragraphs from the other end of the shuffled
    list), read in windows by the model intact and with layer 0 alone: at each position (BOS
    aside), does the predicted next token repeat the token just read? One row per condition,
    window and position. Two windows per pass: Gemma's logits are 262,144 floats a position."""
    paragraphs = tuned_lens.prose_paragraphs(config.seed)[::-1]
    tokens = tuned_lens.windows(model, paragraphs, PROSE_TOKENS, sep="\n\n").to(model.cfg.device)
    skip = int(model.cfg.default_prepend_bos)
    texts: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in texts:
            texts[i] = model.tokenizer.decode([i]).strip()
        return texts[i]

    none = parse_corruptions(["none"], model.cfg.n_layers)[0]
    rows = []
    for label, c in (("intact", none), ("layer 0 alone", only0)):
        with corrupted(model, c) as forward:
            for start in range(0, len(tokens), batch):
                chunk = tokens[start:start + batch]
                pred = (forward or model)(chunk).argmax(-1).cpu().tolist()
                for w, (row, guess) in enumerate(zip(chunk.cpu().tolist(), pred)):
                    rows += [{"condition": label, "window": start + w, "position": p, "repeats": text(g) == text(t) != ""}
                             for p, (t, g) in enumerate(zip(row, guess)) if p >= skip]
    return pd.DataFrame(rows)


def speak(model, config: LayerConfig, conditions, means: dict) -> pd.DataFrame:
    """Greedy continuations of the source prompts with the model intact, layer 0 alone,
    layer 0 skipped, the last 2 layers skipped and the middle layer repeated."""
    n_layers = model.cfg.n_layers
    wanted = {"none", "skip:0", "skip_last:2", f"repeat:{n_layers // 2}x2", f"skip_range:1-{n_layers - 1}"}
    rows = []
    for c in conditions:
        if c.spec in wanted and config.speak_prompts:
            with corrupted(model, c, means) as forward:
                texts = greedy_text(model, list(config.speak_prompts), config.max_new_tokens, forward=forward, stop_at_newline=False)
            rows += [{"prompt": p, "corruption": c.spec, "continuation": t} for p, t in zip(config.speak_prompts, texts)]
    return pd.DataFrame(rows, columns=["prompt", "corruption", "continuation"])


def layer_study(config: LayerConfig, setup: Callable[[], None] | None = None) -> dict[str, pd.DataFrame]:
    """Every model's tables, concatenated (a ``model`` column); with ``workers`` > 1 the
    models run in parallel processes (:func:`~mechlib.core.model_jobs.per_model`)."""
    parts = per_model(study_model, config, setup=setup)
    return {key: pd.concat([p[key] for p in parts], ignore_index=True) for key in parts[0]}


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model and corruption: n, teacher-forced accuracy with its Wilson interval, mean
    answer loss and p(first answer digit)."""
    rows = []
    for (name, spec), group in scores.groupby(["model", "corruption"], sort=False):
        st = proportion(group.tf_correct)
        rows.append({"model": name, "corruption": spec, "family": group.family.iloc[0], "layer": group.layer.iloc[0],
                     "n_layers": int(group.n_layers.iloc[0]), "n": st["n"], "accuracy": st["p"], "lo": st["lo"], "hi": st["hi"],
                     "answer_loss": float(group.answer_loss.mean()), "p_first": float(group.p_first.mean())})
    return pd.DataFrame(rows)


def lens_curve(lens: pd.DataFrame, op: str | None = None, which: str = "logit") -> pd.DataFrame:
    """Per model and layer, for one lens (``logit`` or ``tuned``): top-1 accuracy on the first
    answer digit (Wilson interval), mean p(first digit), median rank of the right digit, mean
    KL to the model's output, and ``majority`` (the share of the most common first digit:
    what always naming it would score); ``op`` keeps one operator."""
    rows = lens[lens.lens == which] if "lens" in lens else lens
    rows = rows if op is None else rows[rows.op == op]
    out = []
    for (name, layer), group in rows.groupby(["model", "layer"], sort=False):
        st = proportion(group.top1_first)
        majority = group.first_digit.value_counts(normalize=True).iloc[0] if "first_digit" in group else 0.0
        out.append({"model": name, "layer": int(layer), "n": st["n"], "top1": st["p"], "lo": st["lo"], "hi": st["hi"],
                    "p_first": float(group.p_first.mean()), "rank": float(group.rank_first.median()) if "rank_first" in group else float("nan"),
                    "kl": float(group.kl_final.mean()) if "kl_final" in group else float("nan"), "majority": float(majority)})
    return pd.DataFrame(out)


def lens_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model and operator: the layer each lens first reads the answer from
    (:func:`readable_layer`), whether the lenses disagree (LENS_RULES), and the numbers."""
    lens, rows = tables["lens"], []
    for name in dict.fromkeys(lens.model):
        n_layers = int(tables["scores"][tables["scores"].model == name].n_layers.iloc[0])
        for op in dict.fromkeys(lens[lens.model == name].op):
            found = {}
            for which in ("logit", "tuned"):
                curve = lens_curve(lens[lens.model == name], op, which)
                found[which] = (readable_layer(curve), curve)
            (a, curve), (b, _) = found["logit"], found["tuned"]
            differ = (a is None) != (b is None) or (a is not None and abs(a - b) > DISAGREE)
            rows.append({"model": name, "op": op, "n_layers": n_layers, "logit": a, "tuned": b,
                         "verdict": "disagree" if differ else "agree", "last_top1": float(curve.top1.iloc[-1]),
                         "majority": float(curve.majority.iloc[-1]), "n": int(curve.n.iloc[-1])})
    return pd.DataFrame(rows, columns=["model", "op", "n_layers", "logit", "tuned", "verdict", "last_top1", "majority", "n"])


def verdicts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model: the three claims' verdicts and the numbers behind them."""
    rows = []
    table, lenses = summary(tables["scores"]), lens_table(tables)
    for name in dict.fromkeys(tables["scores"].model):
        repeats = tables["repeats"]
        rep = repeats[repeats.model == name] if len(repeats) else repeats
        if len(rep):
            st = proportion(rep.repeats)
            rows.append({"model": name, "claim": "layer0_repeats", "verdict": interval_verdict(st["lo"], st["hi"], MOST, holds_below=False),
                         "evidence": f"{st['p']:.0%} [{st['lo']:.0%}, {st['hi']:.0%}] of {st['n']} first tokens repeat the last one"})
        prose = tables["prose"][tables["prose"].model == name] if "prose" in tables and len(tables["prose"]) else pd.DataFrame()
        if len(prose):
            alone, intact = prose[prose.condition == "layer 0 alone"], prose[prose.condition == "intact"]
            share, lo, hi = bootstrap_mean(alone.groupby("window").repeats.mean().values)
            rows.append({"model": name, "claim": "layer0_repeats_prose", "verdict": interval_verdict(lo, hi, MOST, holds_below=False),
                         "evidence": f"{share:.0%} [{lo:.0%}, {hi:.0%}] of {len(alone):,} prose positions in "
                                     f"{alone.window.nunique()} windows repeat the token just read (intact model: {intact.repeats.mean():.0%})"})
        skip0 = table[(table.model == name) & (table.corruption == "skip:0")]
        clean = table[(table.model == name) & (table.corruption == "none")]
        if len(skip0) and len(clean):
            s, c = skip0.iloc[0], clean.iloc[0]
            rows.append({"model": name, "claim": "first_layer_breaks", "verdict": interval_verdict(s.lo, s.hi, BROKEN, holds_below=True),
                         "evidence": f"layer 0 skipped: {s.accuracy:.1%} [{s.lo:.1%}, {s.hi:.1%}] (intact {c.accuracy:.1%}), "
                                     f"answer loss {s.answer_loss:.2f} nats (intact {c.answer_loss:.2f}), n = {int(s.n)}"})
        plus = lenses[(lenses.model == name) & (lenses.op == "+")]
        if len(plus):
            r = plus.iloc[0]
            last = [r[w] == r.n_layers - 1 for w in ("logit", "tuned")]
            earlier = [r[w] is not None and not pd.isna(r[w]) and r[w] < r.n_layers - 1 for w in ("logit", "tuned")]
            verdict = "holds" if all(last) else "false" if all(earlier) else "unclear"
            rows.append({"model": name, "claim": "last_layer", "verdict": verdict,
                         "evidence": f"the logit lens reads addition's first digit {_from(r.logit)} and the tuned lens "
                                     f"{_from(r.tuned)}, of layers 0 to {r.n_layers - 1}; last layer top-1 "
                                     f"{r.last_top1:.0%}, n = {r.n}"})
    return pd.DataFrame(rows, columns=["model", "claim", "verdict", "evidence"])


def readable_layer(curve: pd.DataFrame) -> int | None:
    """The first layer whose top-1 lower bound exceeds both READABLE x the last layer's top-1
    and the majority digit's share (LENS_RULES['readable'])."""
    last = curve.sort_values("layer").iloc[-1]
    target = max(READABLE * last.top1, float(last.get("majority", 0.0)))
    if READABLE * last.top1 <= 0:
        return None
    hits = curve[(curve.layer >= 0) & (curve.lo > target)].sort_values("layer")
    return int(hits.layer.iloc[0]) if len(hits) else None


def _from(layer) -> str:
    return "at no layer" if layer is None or pd.isna(layer) else f"from layer {int(layer)}"


def layer_text(layer) -> str:
    """A readable layer for the page: its number, or 'no layer'."""
    return "no layer" if layer is None or pd.isna(layer) else str(int(layer))


CLAIMS = {
    "layer0_repeats": "layer 0 only repeats the last token (problem prompts)",
    "layer0_repeats_prose": "layer 0 only repeats the last token (prose, every position)",
    "first_layer_breaks": "removing the first layer breaks the model completely",
    "last_layer": "addition gets correct in the last layer",
}


def sentences(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """The glued text: per model the intact accuracy, the layers and blocks it needs most, each
    lens's readable layer and the tuned lens's fit, and for each claim where it holds, is
    false or unclear."""
    from .format_summary import title

    table = summary(tables["scores"])
    models = list(dict.fromkeys(table.model))
    clean, needed, lens = [], [], []
    for name in models:
        rows = table[table.model == name]
        c = rows[rows.corruption == "none"].iloc[0]
        clean.append(f"{title(name)} {c.accuracy:.1%} [{c.lo:.1%}, {c.hi:.1%}] (answer loss {c.answer_loss:.2f} nats, n = {int(c.n)})")
        worst = []
        for family, what in (("skip", "skipping layer"), ("mean-ablate attn", "ablating the attention of layer"),
                             ("mean-ablate mlp", "ablating the MLP of layer")):
            per = rows[(rows.family == family) & rows.layer.notna()]
            if len(per):
                w = per.sort_values(["accuracy", "answer_loss"], ascending=[True, False]).iloc[0]
                worst.append(f"{what} {int(w.layer)} ({w.accuracy:.1%} [{w.lo:.1%}, {w.hi:.1%}])")
        needed.append(f"{title(name)}: " + ", ".join(worst))
    words = {"+": "addition", "-": "subtraction", "*": "multiplication"}
    for r in lens_table(tables).itertuples():
        lens.append(f"{title(r.model)}, {words[r.op]}: the logit lens reads it {_from(r.logit)}, the tuned lens {_from(r.tuned)}, "
                    f"of layers 0 to {r.n_layers - 1}; they {r.verdict} (last layer top-1 {r.last_top1:.0%}, "
                    f"most common first digit {r.majority:.0%}, n = {r.n})")
    fits = []
    if "lens_fit" in tables and len(tables["lens_fit"]):
        for name, fit in tables["lens_fit"].groupby("model", sort=False):
            fits.append(f"{title(name)} {fit.held_out_r2.min():.2f} to {fit.held_out_r2.max():.2f} (fitted on {int(fit.positions.iloc[0]):,} "
                        f"positions in {fit.seconds.iloc[0]:.0f} s, {len(fit)} translators of {fit.parameters.iloc[0]:,} parameters each)")
    verdict_table = verdicts(tables)
    scores = tables["scores"]
    first = scores[scores.corruption == "none"]
    cells = first.groupby(["model", "op", "difficulty"]).size()
    out = {"layers_design_text": (f"{int(cells.min())} to {int(cells.max())} problems per cell" if cells.min() != cells.max() else
                                  f"{int(cells.min())} problems per cell") + f" ({len(first) // len(models)} per model)",
           "layers_clean_text": "; ".join(clean) + ".", "layers_needed_text": "; ".join(needed) + ".",
           "layers_lens_text": "; ".join(lens) + "." if lens else "Not measured.",
           "layers_fit_text": "; ".join(fits) + "." if fits else "Not measured.",
           "layers_lens_source": tuned_lens.PROSE_SOURCE,
           "layers_rule_readable": LENS_RULES["readable"], "layers_rule_disagree": LENS_RULES["disagree"]}
    for key in CLAIMS:
        rows = verdict_table[verdict_table.claim == key]
        for verdict in ("holds", "false", "unclear"):
            hit = rows[rows.verdict == verdict]
            out[f"layers_{key}_{verdict}"] = ", ".join(title(m) for m in hit.model) or "no model"
        out[f"layers_rule_{key}"] = RULES[key]
    return out
