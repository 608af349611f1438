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


def is_base_source(v) -> bool:
    return v == "train" or (isinstance(v, str) and v.startswith("saelens:") and v.count(":") >= 2)


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
    "04_sae_delta": {
        **COMMON,
        "finetuned": (is_str, "the fine-tuned model: a name saved by chapter 3, or a checkpoint directory"),
        "new_operators": PROBLEMS["operators"],
        "old_operators": (list_of(one_of(*OPERATORS), min_len=0), f"a list (possibly empty) drawn from {list(OPERATORS)}"),
        "difficulties": PROBLEMS["difficulties"],
        "prompt_format": PROBLEMS["prompt_format"],
        "n_train_per_cell": (is_int(1, 100_000), "an integer in 1..100000"),
        "n_val_per_cell": (is_int(1, 100_000), "an integer in 1..100000"),
        "n_eval_per_cell": (is_int(1, 100_000), "an integer in 1..100000"),
        "layers": (list_of(is_int(0), min_len=0), "a list of layer indices; [] means every layer"),
        "kind": (one_of("sae", "transcoder"), "'sae' (MLP output from itself) or 'transcoder' (MLP output from its input)"),
        "activation": (one_of("topk", "relu"), "'topk' or 'relu' (with an L1 penalty)"),
        "base_source": (is_base_source, "'train', or 'saelens:RELEASE:ID' with {layer} in ID (pretrained, needs the Hub)"),
        "base_width": (is_int(1, 10_000_000), "an integer >= 1"),
        "base_k": (is_int(1, 100_000), "an integer >= 1 (TopK's k)"),
        "delta_widths": (list_of(is_int(1, 1_000_000)), "a non-empty list of integers (delta dictionary widths)"),
        "delta_ks": (list_of(is_int(1, 100_000)), "a non-empty list of integers (TopK's k for the delta)"),
        "l1": (is_number(0, 1000), "a number >= 0 (L1 coefficient, used by 'relu')"),
        "lr": (is_number(1e-6, 1), "a number in 1e-6..1"),
        "n_tokens": (is_int(1, 10**9), "an integer >= 1 (activation rows per dictionary)"),
        "batch_tokens": (is_int(1, 1_000_000), "an integer >= 1"),
        "buffer_tokens": (is_int(2, 100_000_000), "an integer >= 2 (activation rows held in memory)"),
        "alphas": (
            lambda v: list_of(is_number(0, 100))(v) and {0, 1} <= set(v),
            "a list of numbers >= 0 that includes 0 (no_delta) and 1 (full)",
        ),
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
