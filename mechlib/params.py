"""Chapter parameters: parameter-set files, and validation before any long work starts.

A parameter set (``params/NAME.yaml``) has a ``common`` section and one section per
chapter (keyed by the chapter's file stem); a chapter's parameters are the two merged.
Each chapter declares a schema: name -> (check, what is allowed). A bad value raises a
:class:`ParamError` that names the parameter and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from .data import OPERATORS, PROMPT_FORMATS, parse_difficulty

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


class ParamError(ValueError):
    """A chapter parameter has a value outside what the chapter allows."""


Check = Callable[[Any], bool]


def is_int(lo: int | None = None, hi: int | None = None) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)


def is_number(lo: float | None = None, hi: float | None = None) -> Check:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)


def is_str(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def one_of(*allowed) -> Check:
    return lambda v: v in allowed


def list_of(check: Check, min_len: int = 1) -> Check:
    return lambda v: isinstance(v, (list, tuple)) and len(v) >= min_len and all(check(x) for x in v)


def is_name(v) -> bool:
    import re

    return isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) is not None


def is_difficulty(v) -> bool:
    try:
        parse_difficulty(v)
        return True
    except ValueError:
        return False


COMMON = {
    "model": (is_str, "a model name: 'arith-organism', a Hub name such as 'gpt2', or a local checkpoint directory"),
    "device": (one_of("auto", "cpu", "cuda", "mps"), "one of 'auto', 'cpu', 'cuda', 'mps'"),
    "seed": (is_int(0), "an integer >= 0"),
    "batch_size": (is_int(1, 65536), "an integer in 1..65536"),
}
PROBLEMS = {
    "operators": (list_of(one_of(*OPERATORS)), f"a non-empty list drawn from {list(OPERATORS)}"),
    "difficulties": (list_of(is_difficulty), "a non-empty list of 'AxB' digit counts, e.g. ['1x1', '1x2', '2x2']"),
    "n_per_cell": (is_int(1, 100_000), "an integer in 1..100000 (problems per operator x difficulty cell)"),
    "prompt_format": (one_of(*PROMPT_FORMATS), f"one of {list(PROMPT_FORMATS)}"),
}

def is_corruption_list(v) -> bool:
    """Syntax only (any depth); the notebook re-checks layers against the loaded model."""
    from .interventions import DEPTH_UNKNOWN, parse_corruptions

    try:
        parse_corruptions(v, DEPTH_UNKNOWN)
        return True
    except (ValueError, TypeError):
        return False


def _explain_corruptions(v) -> str:
    from .interventions import DEPTH_UNKNOWN, SPEC_HELP, parse_corruptions

    try:
        parse_corruptions(v, DEPTH_UNKNOWN)
    except (ValueError, TypeError) as err:
        return str(err)
    return SPEC_HELP


SCHEMAS: dict[str, dict] = {
    "01_baseline": {**COMMON, **PROBLEMS},
    "02_layers": {
        **COMMON,
        **PROBLEMS,
        "corruptions": (is_corruption_list, _explain_corruptions),
        "generation_prompts": (list_of(is_str), "a non-empty list of prompt strings"),
        "generation_corruptions": (is_corruption_list, _explain_corruptions),
        "max_new_tokens": (is_int(1, 256), "an integer in 1..256"),
    },
    "03_finetune": {
        **COMMON,
        "operators": PROBLEMS["operators"],
        "difficulties": PROBLEMS["difficulties"],
        "prompt_format": PROBLEMS["prompt_format"],
        "replay_operators": (list_of(one_of(*OPERATORS), min_len=0), f"a list (possibly empty) drawn from {list(OPERATORS)}"),
        "replay_fraction": (is_number(0, 0.95), "a number in 0..0.95 (share of each batch from the replay operators)"),
        "heldout_fraction": (is_number(0.01, 0.5), "a number in 0.01..0.5"),
        "steps": (is_int(1, 1_000_000), "an integer >= 1"),
        "lora_batch_size": (is_int(1, 65536), "an integer in 1..65536"),
        "lr": (is_number(1e-6, 0.1), "a number in 1e-6..0.1"),
        "rank": (is_int(1, 1024), "an integer in 1..1024"),
        "alpha": (is_int(1, 4096), "an integer in 1..4096"),
        "target_modules": (list_of(is_str), "a non-empty list of module names, e.g. ['c_attn', 'c_proj', 'c_fc'] for GPT-2"),
        "eval_every": (is_int(1, 100_000), "an integer >= 1"),
        "finetuned_name": (is_name, "a name of letters, digits, '-', '_' and '.' (where the fine-tune is cached)"),
    },
}


def register(chapter: str, schema: dict) -> None:
    """Declare a chapter's schema (its own entries on top of COMMON)."""
    SCHEMAS[chapter] = {**COMMON, **schema}


def validate(chapter: str, params: dict) -> dict:
    """Check every parameter of a chapter; return them unchanged, or raise ParamError."""
    if chapter not in SCHEMAS:
        raise ParamError(f"chapter {chapter!r} has no parameter schema; known: {sorted(SCHEMAS)}")
    schema = SCHEMAS[chapter]
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise ParamError(f"{chapter}: unknown parameter(s) {unknown}; allowed: {sorted(schema)}")
    missing = sorted(set(schema) - set(params))
    if missing:
        raise ParamError(f"{chapter}: missing parameter(s) {missing}")
    for name, (check, allowed) in schema.items():
        if not check(params[name]):
            allowed = allowed(params[name]) if callable(allowed) else allowed
            raise ParamError(f"{chapter}: parameter {name!r} = {params[name]!r} is not allowed; expected {allowed}")
    return params


def param_set_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        candidate = path
    else:
        candidate = PARAMS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ParamError(f"params {str(name_or_path)!r}: no such parameter set; known sets: {known}, or a .yaml path")
    return candidate


def chapter_params(param_set: str | Path, chapter: str, overrides: dict | None = None) -> dict:
    """The merged ``common`` + chapter section of a parameter set, with overrides, validated."""
    data = yaml.safe_load(param_set_path(param_set).read_text()) or {}
    params = {**(data.get("common") or {}), **(data.get(chapter) or {}), **(overrides or {})}
    return validate(chapter, params)
