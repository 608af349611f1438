"""Pretrained models on the same problems in several prompt formats: exact match per cell,
the error taxonomy, and the sources' claims as verdicts (:mod:`mechlib.core.claims`).

Every format renders the *same* problems (the same operands in every cell), so formats and
models compare paired, problem by problem:

* ``bare``: ``12+34=``;
* ``fewshot``: k worked examples of the operator in the bare format, drawn with the seed
  from problems outside the test set (:mod:`mechlib.core.fewshot`), then the bare prompt;
* ``qa``: ``Q: What is 12 plus 34? A:``;
* ``chat``: the request in the model's own chat template, for models that ship one
  (:mod:`mechlib.core.chat`), on the ``chat_difficulties`` cells, the answer read from the
  reply by a stated rule.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pandas as pd
from datasets import Dataset

from . import chat, claims
from .data import OPERATORS, format_prompt, make_problems, parse_difficulty
from .evaluate import accuracy_cells, evaluate, greedy_decode
from .fewshot import with_examples
from .model_jobs import ModelsConfig, per_model
from .models import load_model

FORMATS = ("bare", "fewshot", "qa", "chat")
CLAIMS = {
    "no_multi_digit": "does not perform multi-digit arithmetic",
    "copies_numbers": "copies the numbers",
    "formats_not_answers": "predicts formats, not answers",
}


@dataclasses.dataclass(frozen=True)
class FormatConfig(ModelsConfig):
    """Which models, formats and problems; checked on construction.

    The headline format is scored on ``n_per_cell`` problems per cell; the other formats, and
    the headline format again with each extra pool of worked examples (``pool_seeds[1:]``,
    on ``pool_difficulties`` only), on the first ``n_shared`` of them, so every comparison
    between formats or pools is on the same problems. ``chat`` asks the first ``n_shared``
    of the ``chat_difficulties`` cells, with ``chat_tokens`` tokens for each reply."""

    formats: tuple[str, ...] = FORMATS
    operators: tuple[str, ...] = OPERATORS
    difficulties: tuple[str, ...] = ("1x1", "1x2", "2x2", "3x3")
    n_per_cell: int = 200
    n_shared: int = 100
    headline: str = "fewshot"
    shots: int = 3
    pool_seeds: tuple[int, ...] = (0,)
    pool_difficulties: tuple[str, ...] = ("1x1", "2x2")
    chat_difficulties: tuple[str, ...] = ("1x1",)
    chat_tokens: int = 40
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats {list(self.formats)}: each must be one of {list(FORMATS)}")
        if self.headline not in self.formats:
            raise ValueError(f"headline {self.headline!r} must be one of the formats {list(self.formats)}")
        for d in (*self.difficulties, *self.pool_difficulties, *self.chat_difficulties):
            parse_difficulty(d)
        if self.headline == "chat":
            raise ValueError("headline 'chat' is not allowed: only models with a chat template are asked in it")
        if not isinstance(self.chat_tokens, int) or not 1 <= self.chat_tokens <= 256:
            raise ValueError(f"chat_tokens must be an integer in 1..256 (tokens per chat reply), got {self.chat_tokens!r}")
        if not isinstance(self.shots, int) or not 1 <= self.shots <= 20:
            raise ValueError(f"shots must be an integer in 1..20 (worked examples per prompt), got {self.shots!r}")
        if not 1 <= self.n_shared <= self.n_per_cell:
            raise ValueError(f"n_shared = {self.n_shared} must be in 1..n_per_cell ({self.n_per_cell})")
        if not self.pool_seeds or len(set(self.pool_seeds)) != len(self.pool_seeds):
            raise ValueError(f"pool_seeds {list(self.pool_seeds)} must be distinct and at least one")


def render(problems: pd.DataFrame, fmt: str, shots: int, seed: int, example_difficulties: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The same problems in one format (``prompt``, ``target``, ``shots``, ``format``); few-shot
    examples are drawn outside all of ``problems``, over ``example_difficulties`` (default:
    the problems' own)."""
    base = "qa" if fmt == "qa" else "bare"
    pairs = [format_prompt(a, op, b, base) for a, op, b in zip(problems.a, problems.op, problems.b)]
    out = problems.assign(prompt=[p for p, _ in pairs], target=[t for _, t in pairs], prompt_format=base)
    if fmt == "chat":  # the user's message; the template is the model's (score_job)
        out = out.assign(prompt=[chat.request(a, op, b) for a, op, b in zip(out.a, out.op, out.b)], prompt_format="chat")
    if fmt == "fewshot":
        out = with_examples(Dataset.from_pandas(out, preserve_index=False), shots, seed, example_difficulties).to_pandas()
    return out.assign(format=fmt)


def problems_for(config: FormatConfig) -> pd.DataFrame:
    """The problems, each with ``item`` (its number in the table) and ``shared`` (among the
    first ``n_shared`` of its cell, which every format and pool scores)."""
    problems = make_problems(list(config.operators), list(config.difficulties), config.n_per_cell, "bare", config.seed).to_pandas()
    rank = problems.groupby(["op", "difficulty"], sort=False).cumcount()
    return problems.assign(item=range(len(problems)), shared=rank < config.n_shared)


def jobs(config: FormatConfig) -> list[tuple[str, str, int]]:
    """(model, format, pool seed) to score; the pool is -1 for formats without examples."""
    out = []
    for name in config.models:
        for fmt in config.formats:
            pools = config.pool_seeds if fmt == "fewshot" else (-1,)
            out += [(name, fmt, pool) for pool in pools]
    return out


def score_job(config: FormatConfig, job: tuple[str, str, int], problems: pd.DataFrame, model=None) -> pd.DataFrame | None:
    """One model, format and pool: its problems scored, with ``main`` marking the rows of the
    main table (the first pool, or a format without examples); None for ``chat`` when the
    model ships no chat template."""
    name, fmt, pool = job
    main = pool in (-1, config.pool_seeds[0])
    rendered = render(problems, fmt, config.shots, max(pool, 0))  # examples drawn outside every test problem
    chosen = rendered if fmt == config.headline and main else rendered[rendered.shared]
    if not main:
        chosen = chosen[chosen.difficulty.isin(config.pool_difficulties)]
    if model is None:
        model, _ = load_model(name, device=config.device)
    if fmt == "chat":
        if not chat.has_chat(model.tokenizer):
            return None
        chosen = chosen[chosen.difficulty.isin(config.chat_difficulties)].reset_index(drop=True)
        prompts = chat.chat_prompts(model.tokenizer, chosen.prompt.tolist())
        replies = greedy_decode(model, prompts, config.chat_tokens, config.batch_size, stop_at_newline=False)
        return chat.score_replies(chosen.assign(prompt=prompts), replies).assign(model=name, pool=pool, main=main)
    scored = evaluate(model, chosen.reset_index(drop=True), batch_size=config.batch_size)
    return scored.assign(model=name, pool=pool, main=main)


def _score_model(config: FormatConfig, name: str, problems: pd.DataFrame, setup=None) -> list[pd.DataFrame]:
    if setup is not None:
        setup()
    model, _ = load_model(name, device=config.device)
    frames = [score_job(config, job, problems, model) for job in jobs(config) if job[0] == name]
    return [f for f in frames if f is not None]


def format_study(config: FormatConfig, setup: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per (model, format, pool, problem): the problem, the answer and its class.
    With ``workers`` > 1 the models run in parallel processes (:func:`~mechlib.core.model_jobs.per_model`)."""
    parts = per_model(_score_model, config, problems_for(config), setup=setup)
    return pd.concat([frame for part in parts for frame in part], ignore_index=True)


def main_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The main table: the headline format on all its problems, the others on theirs."""
    return results[results["main"]]


def shared_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The main table restricted to the problems every format scored (paired comparisons)."""
    return results[results["main"] & results["shared"]]


def pool_table(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model, cell and pool of worked examples, on the problems every pool
    scored, with n and the Wilson 95% interval."""
    extra = results[~results["main"]]
    if not len(extra):
        return pd.DataFrame(columns=["model", "op", "difficulty", "pool", "n", "k", "accuracy", "lo", "hi"])
    cells = set(zip(extra.model, extra.format, extra.op, extra.difficulty))
    first = shared_rows(results)
    first = first[[c in cells for c in zip(first.model, first.format, first.op, first.difficulty)]]
    rows = pd.concat([first, extra], ignore_index=True)
    return accuracy_cells(rows, ["model", "op", "difficulty", "pool"])


def cell_table(results: pd.DataFrame) -> pd.DataFrame:
    """Exact match with n and Wilson 95% interval per model, format, operator, difficulty
    (pass :func:`main_rows` or :func:`shared_rows`)."""
    return accuracy_cells(results, ["model", "format", "op", "difficulty"], orders={"format": FORMATS})


def claim_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, format, claim) of the main table: the verdict, the numbers behind
    it, the rule."""
    rows = []
    for (name, fmt), group in main_rows(results).groupby(["model", "format"], sort=False):
        if not group.difficulty.isin(claims.MULTI_DIGIT).any():
            continue  # the claims are about multi-digit problems (the chat format asks 1x1 only by default)
        multi = claims.no_multi_digit(group)
        copies = claims.copies_numbers(group)
        formats = claims.formats_not_answers(group[group.difficulty.isin(claims.MULTI_DIGIT)])
        rows += [{"model": name, "format": fmt, "claim": CLAIMS["no_multi_digit"], "verdict": multi["verdict"],
                  "evidence": _multi_text(multi["by_op"]), "rule": multi["rule"]},
                 {"model": name, "format": fmt, "claim": CLAIMS["copies_numbers"], "verdict": copies["verdict"],
                  "evidence": f"{copies['share']:.0%} of {copies['n_wrong']} wrong answers copy or restate "
                              f"(chance {copies['chance']:.1%})", "rule": copies["rule"]},
                 {"model": name, "format": fmt, "claim": CLAIMS["formats_not_answers"], "verdict": formats["verdict"],
                  "evidence": f"multi-digit: {formats['well_formed']:.0%} well-formed, {formats['accuracy']:.0%} right "
                              f"(n = {formats['n']})", "rule": formats["rule"]}]
    return pd.DataFrame(rows, columns=["model", "format", "claim", "verdict", "evidence", "rule"])


def _multi_text(by_op: pd.DataFrame) -> str:
    parts = []
    for row in by_op.itertuples():
        cells = ", ".join(f"{d} {getattr(row, f'acc_{d}'):.0%}" for d in claims.MULTI_DIGIT if hasattr(row, f"acc_{d}"))
        parts.append(f"{row.op}: 1x1 {row.one_digit:.0%}, {cells}")
    return "; ".join(parts)
