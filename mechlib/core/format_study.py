"""Pretrained models on the same problems in several prompt formats: exact match per cell,
the error taxonomy, and the sources' claims as verdicts (:mod:`mechlib.core.claims`).

Every format renders the *same* problems (the same operands in every cell), so formats and
models compare paired, problem by problem:

* ``bare``: ``12+34=``;
* ``fewshot``: k worked examples of the operator in the bare format, drawn with the seed
  from problems outside the test set (:mod:`mechlib.core.fewshot`), then the bare prompt;
* ``qa``: ``Q: What is 12 plus 34? A:``.
"""
from __future__ import annotations

import dataclasses

import pandas as pd
from datasets import Dataset

from . import claims
from .data import OPERATORS, format_prompt, make_problems, parse_difficulty
from .evaluate import accuracy_cells, evaluate
from .fewshot import with_examples
from .models import load_model

FORMATS = ("bare", "fewshot", "qa")
CLAIMS = {
    "no_multi_digit": "does not perform multi-digit arithmetic",
    "copies_numbers": "copies the numbers",
    "formats_not_answers": "predicts formats, not answers",
}


@dataclasses.dataclass(frozen=True)
class FormatConfig:
    """Which models, formats and problems; checked on construction."""

    models: tuple[str, ...]
    formats: tuple[str, ...] = FORMATS
    operators: tuple[str, ...] = OPERATORS
    difficulties: tuple[str, ...] = ("1x1", "1x2", "2x2", "3x3")
    n_per_cell: int = 200
    shots: int = 3
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must name at least one model")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats {list(self.formats)}: each must be one of {list(FORMATS)}")
        for d in self.difficulties:
            parse_difficulty(d)
        if not isinstance(self.shots, int) or not 1 <= self.shots <= 20:
            raise ValueError(f"shots must be an integer in 1..20 (worked examples per prompt), got {self.shots!r}")


def render(problems: pd.DataFrame, fmt: str, shots: int, seed: int) -> pd.DataFrame:
    """The same problems in one format (``prompt``, ``target``, ``shots``, ``format``)."""
    base = "qa" if fmt == "qa" else "bare"
    pairs = [format_prompt(a, op, b, base) for a, op, b in zip(problems.a, problems.op, problems.b)]
    out = problems.assign(prompt=[p for p, _ in pairs], target=[t for _, t in pairs], prompt_format=base)
    if fmt == "fewshot":
        out = with_examples(Dataset.from_pandas(out, preserve_index=False), shots, seed).to_pandas()
    return out.assign(format=fmt)


def format_study(config: FormatConfig) -> pd.DataFrame:
    """One row per (model, format, problem): the problem, the answer and its class."""
    problems = make_problems(list(config.operators), list(config.difficulties), config.n_per_cell, "bare", config.seed).to_pandas()
    parts = []
    for name in config.models:
        model, _ = load_model(name, device=config.device)
        for fmt in config.formats:
            scored = evaluate(model, render(problems, fmt, config.shots, config.seed), batch_size=config.batch_size)
            parts.append(scored.assign(model=name))
        del model
    return pd.concat(parts, ignore_index=True)


def cell_table(results: pd.DataFrame) -> pd.DataFrame:
    """Exact match with n and Wilson 95% interval per model, format, operator, difficulty."""
    return accuracy_cells(results, ["model", "format", "op", "difficulty"], orders={"format": FORMATS})


def claim_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, format, claim): the verdict, the numbers behind it, the rule."""
    rows = []
    for (name, fmt), group in results.groupby(["model", "format"], sort=False):
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
    return pd.DataFrame(rows)


def _multi_text(by_op: pd.DataFrame) -> str:
    parts = []
    for row in by_op.itertuples():
        cells = ", ".join(f"{d} {getattr(row, f'acc_{d}'):.0%}" for d in claims.MULTI_DIGIT if hasattr(row, f"acc_{d}"))
        parts.append(f"{row.op}: 1x1 {row.one_digit:.0%}, {cells}")
    return "; ".join(parts)
