"""Chapter 1, baseline arithmetic: evaluate a model on a grid of problems and classify
every wrong answer.

Every cell is labelled by what the model was taught. On the organism, a trained cell
(addition, 1-2-digit operands, bare format) is scored on its held-out pairs only, never on
training items; a new operator or prompt format is a control (failure expected by
construction); 3-digit operands test length generalisation. No headline averages across
kinds. Carries, operand order and trivial-strategy baselines are reported, and the
organism's headline numbers are repeated over several training seeds."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ..core import chat, format_summary
from ..core.claims import RULES
from ..core.data import count_cascades
from ..core.evaluate import accuracy_cells, baseline_rates, evaluate
from ..core.format_study import CLAIMS, FORMATS, FormatConfig, format_study, main_rows
from ..core.model_jobs import MAX_BATCH
from ..core.models import load_model
from ..core.organism import ORGANISM_NAME, OrganismRecipe, ensure_organism, organism_dir, training_info
from ..core.problem_sets import heldout_addition_problems, last_positions, problem_set
from ..core.shipped import shipped
from ..core.stats import accuracy_by, fmt_interval, proportion, seed_spread
from ..views.narrative import and_list
from ..views.quiet import quiet
from . import preflight
from .base import (
    ModelParams,
    difficulties_field,
    is_int,
    is_str,
    list_of,
    one_of,
    operators_field,
    param,
    prompt_format_field,
)

KINDS = {
    "trained": "trained cell, held-out pairs",
    "longer_operands": "3+ digit operands (length generalisation)",
    "new_operator": "new operator (control)",
    "new_format": "new prompt format (control)",
    "pretrained": "pretrained model (training data unknown)",
}
KIND_ORDER = {"kind": tuple(KINDS)}  # the order of the kinds of cell in every table
MIN_N_HEADLINE = 30  # cells with fewer problems are shown, never used for a headline claim

CHAPTER = "01_baseline"


@dataclasses.dataclass(frozen=True)
class Params(ModelParams):
    chapter = CHAPTER
    operators: tuple[str, ...] = operators_field(("+", "-", "*"))
    difficulties: tuple[str, ...] = difficulties_field(("1x1", "1x2", "2x2", "3x3"))
    n_per_cell: int = param(200, is_int(1, 100_000), "an integer in 1..100000 (problems per operator x difficulty cell)")
    prompt_format: str = prompt_format_field()
    organism_seeds: tuple[int, ...] = param((0, 1, 2), list_of(is_int(0, 2**31 - 1), min_len=0, max_len=10),
                                            "a list of up to 10 organism training seeds ([] for none)",
                                            "organisms trained with these seeds repeat the headline numbers (organism only)")
    real_models: tuple[str, ...] = param(("smollm2-135m-instruct", "gemma-3-270m"), list_of(is_str, min_len=0, max_len=4),
                                         "a list of up to 4 model names ([] for none)",
                                         "pretrained models scored on the same problems in every prompt format")
    real_formats: tuple[str, ...] = param(FORMATS, list_of(one_of(*FORMATS)), f"a non-empty list drawn from {list(FORMATS)}",
                                          "prompt formats for the pretrained models (few-shot, when present, is the headline)")
    real_n_per_cell: int = param(200, is_int(1, 10_000), "an integer in 1..10000",
                                 "problems per cell in the headline format (1x1 cells hold at most 100)")
    real_n_shared: int = param(50, is_int(1, 10_000), "an integer in 1..10000, at most real_n_per_cell",
                               "problems per cell, the first of the headline ones, in the other formats and extra pools "
                               "(50 keeps chapters 1 and 2 within 12 minutes on 2 cores)")
    shots: int = param(3, is_int(1, 20), "an integer in 1..20", "worked examples per few-shot prompt")
    pool_seeds: tuple[int, ...] = param((0, 1, 2), list_of(is_int(0, 2**31 - 1), min_len=1, max_len=5),
                                        "a list of 1 to 5 distinct seeds",
                                        "pools of worked examples: the first makes the main table, the others repeat 1x1 and 2x2")
    real_workers: int = param(2, is_int(1, 8), "an integer in 1..8", "processes scoring the pretrained models, one model each")

    def check(self) -> None:
        if self.real_n_shared > self.real_n_per_cell:
            self.fail("real_n_shared", f"must be at most real_n_per_cell ({self.real_n_per_cell})")
        if set(self.real_formats) <= {"chat"}:
            self.fail("real_formats", "needs bare, fewshot or qa besides chat (only models with a chat template are asked in it)")


@dataclasses.dataclass
class Result:
    params: Params
    results: pd.DataFrame  # one row per problem: its columns plus kind, output, pred, error, correct
    heldout_addition: pd.DataFrame  # organism: every held-out addition pair, scored (carries, order)
    seeds: pd.DataFrame  # organism: headline numbers per training seed
    positions: dict  # organism: last trained position, last position the longer operands need
    model_note: str
    timings: dict
    real: pd.DataFrame  # pretrained models: one row per (model, format, pool, problem); empty when none ran
    real_config: FormatConfig | None


def kinds_table(results: pd.DataFrame) -> pd.DataFrame:
    """Problems and cells per kind of cell, kinds in a fixed order, labelled for the page."""
    cells = results.groupby("kind", sort=False)[["op", "difficulty"]].apply(lambda g: len(g.drop_duplicates())).rename("cells")
    table = results.groupby("kind", sort=False).agg(problems=("correct", "size")).join(cells)
    table = table.loc[[k for k in KINDS if k in table.index]]
    table.index = [KINDS[k] for k in table.index]
    table.index.name = "kind of cell"
    return table.reset_index()


def _headline(results: pd.DataFrame) -> dict:
    """Per kind: accuracy with n and interval (never pooled across kinds)."""
    out = {}
    for kind, group in results.groupby("kind"):
        stat = proportion(group["correct"])
        out[kind] = stat
    return out


def check(params: Params) -> None:
    """Everything that can be checked without weights: the model exists, the device, the
    cache, and that every prompt plus its answer fits the model's context."""
    spec = preflight.model(params, "model")
    preflight.fits_context(spec, params.operators, params.difficulties, params.prompt_format, chapter=CHAPTER)
    for name in params.real_models:
        real = preflight.model(params, "real_models", name)
        for fmt in ("bare", "qa"):
            preflight.fits_context(real, params.operators, params.difficulties, fmt, field="real_models", chapter=CHAPTER)


def real_config(params: Params) -> FormatConfig | None:
    """The format study of the pretrained models, on the chapter's operators and difficulties."""
    if not params.real_models:
        return None
    pool_cells = tuple(d for d in ("1x1", "2x2") if d in params.difficulties) or params.difficulties[:1]
    chat_cells = tuple(d for d in ("1x1",) if d in params.difficulties) or params.difficulties[:1]  # replies are long: 1x1 only
    return FormatConfig(models=params.real_models, formats=params.real_formats, operators=params.operators,
                        difficulties=params.difficulties, n_per_cell=params.real_n_per_cell, n_shared=params.real_n_shared,
                        headline="fewshot" if "fewshot" in params.real_formats else next(f for f in params.real_formats if f != "chat"),
                        shots=params.shots,
                        pool_seeds=params.pool_seeds, pool_difficulties=pool_cells, chat_difficulties=chat_cells, seed=params.seed,
                        batch_size=min(params.batch_size, MAX_BATCH), device=params.device, workers=params.real_workers)


def run(params: Params) -> Result:
    check(params)
    start = time.perf_counter()
    model, _ = load_model(params.model, device=params.device)
    results = evaluate(model, problem_set(params), batch_size=params.batch_size)
    heldout, seeds, positions = pd.DataFrame(), pd.DataFrame(), {}
    if params.model == ORGANISM_NAME:
        heldout = evaluate(model, heldout_addition_problems(OrganismRecipe()), batch_size=params.batch_size)
        seeds = seed_table(params, results, heldout)
        positions = last_positions(results, OrganismRecipe())
    note = model_note(params.model, model, heldout)
    timings = {"run_seconds": round(time.perf_counter() - start, 2)}
    del model
    config, real = real_config(params), pd.DataFrame()
    if config is not None:
        start = time.perf_counter()
        real = format_study(config, setup=quiet)
        timings["real_seconds"] = round(time.perf_counter() - start, 2)
    return Result(params, results, heldout, seeds, positions, note, timings, real, config)


def seed_table(params: Params, seed0_results: pd.DataFrame, seed0_heldout: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers for organisms trained with each seed, each scored on its own
    held-out pairs (the other cells are the same problems for every seed). Seed 0 is the
    organism of this run, whose results are passed in."""
    rows = []
    for seed in params.organism_seeds:
        if seed == 0:
            res, held = seed0_results, seed0_heldout
        else:
            recipe = OrganismRecipe(seed=seed)
            lm, _ = load_model(str(ensure_organism(recipe, progress=False)), device=params.device)
            res = evaluate(lm, problem_set(params, recipe), batch_size=params.batch_size)
            held = evaluate(lm, heldout_addition_problems(recipe), batch_size=params.batch_size)
        row = {"organism_seed": seed, "heldout_addition": float(held["correct"].mean()), "n_heldout_addition": int(len(held))}
        row.update({kind: stat["p"] for kind, stat in _headline(res).items()})
        by_carries = held.groupby(held["carries"].clip(upper=2))["correct"].mean()
        row.update({f"heldout_carries_{c}": float(v) for c, v in by_carries.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def cell_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with n and interval per kind, operator and difficulty, kinds in page order."""
    return accuracy_cells(results, ["kind", "op", "difficulty"], orders=KIND_ORDER)


def findings(result: Result) -> dict:
    """The numbers the chapter's prose quotes, all computed from the results. Accuracies
    come with n and a Wilson 95% interval; nothing averages across kinds of cell."""
    results = result.results
    cells = cell_accuracy(results)
    big = cells[cells.n >= MIN_N_HEADLINE]
    out: dict = {
        "model_note": result.model_note,
        "seed": result.params.seed,
        "n_per_cell": result.params.n_per_cell,
        "n_problems": int(len(results)),
        "min_n_headline": MIN_N_HEADLINE,
        "small_cells": ", ".join(f"{r.op} {r.difficulty} (n = {r.n})" for r in cells[cells.n < MIN_N_HEADLINE].itertuples()) or "none",
    }
    for kind in KINDS:  # wording for kinds this run has no cells of
        out[f"acc_{kind}_text"] = "no such cells in this run"
        out[f"top_error_{kind}"], out[f"top_error_{kind}_share"] = "none", 0.0
    organism_only = "not measured (needs the organism's held-out pairs)"
    out["length_positions_sentence"] = "The positions these problems need are compared with the trained ones on the organism only."
    for key in ("heldout_addition_text", "carries_0_text", "carries_1_text", "carries_2_text", "cascade_text", "order_longer_first_text",
                "order_shorter_first_text", "length_addition_text"):
        out[key] = organism_only
    for kind, stat in _headline(results).items():
        out[f"acc_{kind}"] = stat["p"]
        out[f"acc_{kind}_text"] = fmt_interval(stat["p"], stat["lo"], stat["hi"], stat["n"])
        out[f"n_{kind}"] = stat["n"]
    out["acc_by_cell"] = {f"{r.op} {r.difficulty}": float(r.accuracy) for r in cells.itertuples()}
    if len(big):
        worst = big.sort_values(["accuracy", "op", "difficulty"]).iloc[0]
        out.update(worst_cell=f"{worst.op} {worst.difficulty}", worst_cell_text=fmt_interval(worst.accuracy, worst.lo, worst.hi, worst.n))
    wrong = results[~results["correct"]]
    out["n_wrong"] = int(len(wrong))
    for kind, group in wrong.groupby("kind"):
        shares = group["error"].value_counts(normalize=True)
        out[f"top_error_{kind}"] = str(shares.index[0])
        out[f"top_error_{kind}_share"] = float(shares.iloc[0])
    controls = wrong[wrong.kind.isin(["new_operator", "new_format"])]
    if len(controls):
        other_op = float(controls["error"].isin(["wrong_operation", "near_wrong_operation"]).mean())
        out["control_sentence"] = (f"On the controls (new operators or formats), {other_op:.1%} of the {len(controls)} wrong answers "
                                   "are another operation's result, exact or off by one.")
    else:
        out["control_sentence"] = "This run has no control cells (new operators or formats) with wrong answers."
    rates = baseline_rates(results)
    out["baseline_copy_rate"] = max(rates["copy_a"], rates["copy_b"])
    if len(result.heldout_addition):
        held = result.heldout_addition
        stat = proportion(held["correct"])
        out["heldout_addition_text"] = fmt_interval(stat["p"], stat["lo"], stat["hi"], stat["n"])
        for c, group in held.groupby(held["carries"].clip(upper=2)):
            st = proportion(group["correct"])
            out[f"carries_{c}_text"] = fmt_interval(st["p"], st["lo"], st["hi"], st["n"])
        cascade = np.array([count_cascades(a, b) > 0 for a, b in zip(held["a"], held["b"])])
        if cascade.any():
            st = proportion(held["correct"][cascade])
            out["cascade_text"] = fmt_interval(st["p"], st["lo"], st["hi"], st["n"])
        order = operand_order(held)
        if len(order):
            out["order_longer_first_text"] = order.loc[order.order == "longer operand first", "text"].iloc[0]
            out["order_shorter_first_text"] = order.loc[order.order == "shorter operand first", "text"].iloc[0]
        if "longer_last" in result.positions:
            out["length_positions_sentence"] = (
                f"Part of this failure is built in: the organism's longest training sequence (BOS, {result.positions['trained_longest']} and end-of-text) "
                f"ends at position {result.positions['trained_last']}, and these problems need positions up to "
                f"{result.positions['longer_last']}, whose position embeddings were never trained.")
        long_add = results[(results.kind == "longer_operands") & (results.op == "+")]
        if len(long_add):
            st = proportion(long_add["correct"])
            out["length_addition_text"] = fmt_interval(st["p"], st["lo"], st["hi"], st["n"])
    out["seeds_n"] = int(len(result.seeds))
    out["seeds_heldout_text"] = out["seeds_longer_text"] = "not measured: fewer than two organism seeds were run"
    if len(result.seeds) > 1:
        spread = seed_spread(result.seeds["heldout_addition"])
        out["seeds_heldout_text"] = f"{spread['min']:.1%} to {spread['max']:.1%} (mean {spread['mean']:.1%})"
        if "longer_operands" in result.seeds:
            sp = seed_spread(result.seeds["longer_operands"])
            out["seeds_longer_text"] = f"{sp['mean']:.1%} (range {sp['min']:.1%} to {sp['max']:.1%})"
    out["seeds_sentence"] = (
        f"Over {out['seeds_n']} organisms, held-out addition accuracy is {out['seeds_heldout_text']}; with 3-digit "
        f"operands, accuracy is {out['seeds_longer_text']}."
        if len(result.seeds) > 1 else
        "Only one organism was run (parameter organism_seeds), so this run reports no seed-to-seed spread."
    )
    out.update(real_findings(result))
    return out


REAL_KEYS = ("real_models_text", "real_design_text", "real_headline_format", "real_headline_text", "real_bare_text", "real_qa_text",
             "real_chat_text", "real_pool_text", "real_carry_text", "real_order_text", "real_first_error_text", "real_top_error_text")


def real_findings(result: Result) -> dict:
    """The pretrained models' numbers, each sentence naming its model and format."""
    real, config = result.real, result.real_config
    out = {f"claim_{k}": v for k, v in format_summary.verdicts(real).items()} if len(real) else {}
    if config is None or not len(real):
        none = "Not measured: this run scored no pretrained model (parameter real_models)."
        return {**{key: none for key in REAL_KEYS}, "real_headline_format": "few-shot", **_no_claims(),
                "real_chat_rule": chat.RULE, "real_chat_request": chat.request(12, "+", 34)}
    head, names = config.headline, format_summary.FORMAT_NAMES
    n_cells = main_rows(real).groupby(["model", "format", "op", "difficulty"]).size()
    provenance = [shipped(m).provenance if shipped(m) else f"{m} (not a shipped model)" for m in config.models]
    others = [names[f] for f in config.formats if f not in (head, "chat")]
    out.update({
        "real_models_text": "; ".join(provenance),
        "real_design_text": (f"Every format asks the same problems. The {names[head]} format, the headline, has {config.n_per_cell} problems "
                             f"per cell, or every pair where a cell has fewer (n from {n_cells.min()} to {n_cells.max()})"
                             + (f"; {and_list(others)} ask the first {config.n_shared} of each cell" if others else "")
                             + (f". The worked examples ({config.shots} per prompt) come from problems outside the test set, drawn with "
                                f"seed {config.pool_seeds[0]}" if "fewshot" in config.formats else "") + "."),
        "real_headline_format": names[head],
        "real_headline_text": format_summary.headline(real, head),
        "real_chat_text": _chat_text(real, config),
        "real_chat_rule": chat.RULE,
        "real_chat_request": chat.request(12, "+", 34),
        "real_bare_text": _versus(real, config, "bare"),
        "real_qa_text": _versus(real, config, "qa"),
        "real_pool_text": format_summary.pool_spread(real),
        "real_carry_text": format_summary.carries(real, head),
        "real_order_text": format_summary.order(real, head),
        "real_first_error_text": format_summary.first_error(real, head),
        "real_top_error_text": format_summary.top_errors(real, head),
    })
    return out


def _versus(real: pd.DataFrame, config: FormatConfig, other: str) -> str:
    if other == config.headline or other not in config.formats:
        return f"Not measured: the {format_summary.FORMAT_NAMES[other]} format was not run beside the headline format."
    return format_summary.format_effect(real, config.headline, other)


def _chat_text(real: pd.DataFrame, config: FormatConfig) -> str:
    """Which models were asked in their chat template, on what, and how they did against the
    headline format on the same problems."""
    if "chat" not in config.formats:
        return "Not measured: the chat format was not run."
    asked = set(real[real.format == "chat"].model)
    without = [format_summary.title(m) for m in config.models if m not in asked]
    text = (f"Asked on the first {config.n_shared} problems of the {and_list(list(config.chat_difficulties))} cells, "
            f"with up to {config.chat_tokens} tokens per reply. ")
    if asked and config.headline != "chat":
        text += format_summary.format_effect(real, "chat", config.headline) + " "
    if without:
        one = len(without) == 1
        text += f"{and_list(without)} {'ships' if one else 'ship'} no chat template, so {'it is' if one else 'they are'} not asked in one."
    return text.strip()


def _no_claims() -> dict:
    out = {f"claim_{key}_{v}": "not measured" for key in CLAIMS for v in ("holds", "false", "unclear")}
    return out | {f"claim_rule_{key}": RULES[key] for key in CLAIMS}


def operand_order(held: pd.DataFrame) -> pd.DataFrame:
    """Held-out 1x2 addition: accuracy with the longer operand first versus second."""
    cell = held[held.difficulty == "1x2"]
    if not len(cell):
        return pd.DataFrame()
    labelled = cell.assign(order=np.where(cell.digits_a > cell.digits_b, "longer operand first", "shorter operand first"))
    table = accuracy_by(labelled, "order")
    table["text"] = [fmt_interval(r.accuracy, r.lo, r.hi, r.n) for r in table.itertuples()]
    return table


def carries_table(held: pd.DataFrame) -> pd.DataFrame:
    """Held-out addition by number of carries (2 = two carries, as in 55+55 or 99+1); empty for
    models whose training pairs are unknown."""
    if not len(held):
        return pd.DataFrame(columns=["difficulty", "carries", "n", "k", "accuracy", "lo", "hi"])
    table = accuracy_by(held.assign(carries=held["carries"].clip(upper=2)), ["difficulty", "carries"])
    return table.sort_values(["difficulty", "carries"]).reset_index(drop=True)


def model_note(name: str, model, heldout: pd.DataFrame | None = None) -> str:
    """One sentence on the model, with the organism's held-out accuracy when it is the organism."""
    cfg = model.cfg
    shape = f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads"
    if name != ORGANISM_NAME:
        real = shipped(name)
        what = f"Model {name}: {real.provenance} ({shape})" if real else f"Model {name} ({shape})"
        return f"{what}. Its training data is not known to this book, so no cell is labelled trained or held-out."
    info = training_info(organism_dir())
    stat = proportion(heldout["correct"])
    return (
        f"Model {name}, the book's model organism ({shape}), trained by mechlib on {info['n_train_pairs']} addition "
        f"problems with operands 0-99 in the bare format. On all {stat['n']} addition pairs held out of its training "
        f"(in either operand order) it is exactly right {fmt_interval(stat['p'], stat['lo'], stat['hi'])}. "
        "These are the organism's numbers, not GPT-2's."
    )
