"""Checks a chapter runs before any weights load: the model can be found (a Hub name
offline fails at once), the device exists, the cache is writable where something must be
trained, and every prompt plus its answer fits the model's context.

Each failure is a :class:`~mechlib.chapters.base.ParamError` naming the parameter."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..core import hooked_cache
from ..core.cache import cache_root
from ..core.data import apply_op, format_prompt, parse_difficulty
from ..core.hub import HubUnavailableError
from ..core.models import ModelSpec, model_spec, resolve_device
from ..core.organism import ORGANISM_NAME
from ..core.shipped import checkpoint_dir, gguf_path, is_cached, shipped
from .base import ParamError


def model(params, field: str = "model", name: str | None = None) -> ModelSpec:
    """The model's spec (no weights), with the device and cache checked on the way;
    ``name`` is one entry of a list-valued ``field``."""
    name = getattr(params, field) if name is None else name
    chapter = params.chapter
    try:
        resolve_device(params.device)
    except ValueError as err:
        raise ParamError(f"{chapter}: parameter 'device': {err}") from None
    try:
        spec = model_spec(name)
    except HubUnavailableError as err:
        raise ParamError(f"{chapter}: parameter {field!r}: {err}") from None
    except ValueError as err:
        raise ParamError(f"{chapter}: parameter {field!r}: {err}") from None
    if name == ORGANISM_NAME and not (Path(spec.source) / "model.safetensors").is_file():
        writable_cache(f"{chapter}: parameter {field!r} = {name!r} must be trained first", "models")
    real = shipped(name)
    if real is not None and not hooked_cache.is_current(checkpoint_dir(real)):
        why = f"{chapter}: parameter {field!r} = {name!r} must be converted into the cache first"
        room_in_cache(why, writable_cache(why, "models"), real.cache_bytes)
        if not is_cached(real):
            try:
                gguf_path(real)  # its hash now, not after a kernel has started
            except ValueError as err:
                raise ParamError(f"{chapter}: parameter {field!r}: {err}") from None
    return spec


def room_in_cache(why: str, folder: Path, needed: int) -> None:
    """Refuse work that must write ``needed`` bytes into a cache folder with less free space."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ParamError(f"{why}, which takes {needed / 1e9:.1f} GB, and {str(folder)!r} has {free / 1e9:.1f} GB free; "
                         "free some space or set MECHLIB_CACHE to a folder with room")


def prompts_fit(params, spec: ModelSpec, field: str, prompts: Sequence[str], new_tokens: int) -> None:
    """Refuse prompts (the list parameter ``field``) that, with ``new_tokens`` generated, do not
    fit ``spec``'s context: named by parameter and position, shown shortened."""
    if spec.n_ctx is None or not prompts:
        return
    tok = spec.tokenizer()
    for i, prompt in enumerate(prompts):
        need = len(tok(prompt, add_special_tokens=False)["input_ids"]) + 1 + new_tokens
        if need > spec.n_ctx:
            shown = prompt if len(prompt) <= 60 else f"{prompt[:57]}..."
            raise ParamError(f"{params.chapter}: parameter {field!r}, item {i} ({shown!r}, {len(prompt):,} characters): with "
                             f"'max_new_tokens' = {new_tokens} it needs {need:,} positions, and model {spec.name!r} has a context "
                             f"of {spec.n_ctx:,}; shorten the prompt or lower max_new_tokens")


def neurons_fit(params, spec: ModelSpec, field: str, counts: Sequence[int]) -> None:
    """Refuse neuron counts above the model's neurons per MLP."""
    if spec.d_mlp is not None and counts and max(counts) > spec.d_mlp:
        params.fail(field, f"model {spec.name!r} has {spec.d_mlp:,} neurons per MLP; every count must be at most that")


def writable_cache(why: str, sub: str | None = None) -> Path:
    """The cache directory (or its ``sub`` folder), checked writable before expensive work
    that saves into it."""
    root = cache_root()
    where = "MECHLIB_CACHE" if os.environ.get("MECHLIB_CACHE") else "the cache directory (set MECHLIB_CACHE to move it)"
    for folder in (root, root / sub) if sub else (root,):
        if folder.exists() and not folder.is_dir():
            raise ParamError(f"{why}, and {where} {str(root)!r} cannot hold it: {str(folder)!r} is a file, not a directory")
    target = root / sub if sub else root
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".probe-"):
            pass
    except OSError as err:
        raise ParamError(f"{why}, and {where} {str(target)!r} is not writable ({err.strerror or err})") from None
    return target


def longest_problems(operators: Sequence[str], difficulties: Sequence[str], prompt_format: str) -> list[tuple[str, str]]:
    """(prompt, target) pairs at least as long as any problem of the grid: the largest
    operands in each orientation, with the longest answer any operand pair can give."""
    out = []
    for op in operators:
        for difficulty in difficulties:
            da, db = parse_difficulty(difficulty)
            for x, y in {(da, db), (db, da)}:
                a, b = 10**x - 1, 10**y - 1
                prompt, _ = format_prompt(a, op, b, prompt_format)
                longest = max(abs(apply_op(a, op, b)), abs(apply_op(a, op, 10 ** (y - 1) if y > 1 else 0)), a, b)
                out.append((prompt, (" " if prompt_format == "qa" else "") + str(longest)))
    return out


def fits_context(spec: ModelSpec, operators, difficulties, prompt_format: str, extra_tokens: int = 2,
                 max_new_tokens: int | None = None, field: str = "difficulties", chapter: str = "") -> None:
    """Refuse, before any work, problems whose prompt plus answer (plus ``extra_tokens``
    of decoding slack) cannot fit the model's context, naming the limit and the prompt."""
    if spec.n_ctx is None:
        return
    tok = spec.tokenizer()
    worst, worst_len = None, 0
    for prompt, target in longest_problems(operators, difficulties, prompt_format):
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) + 1  # BOS
        new = max_new_tokens if max_new_tokens is not None else len(tok(target, add_special_tokens=False)["input_ids"]) + extra_tokens
        need = n_prompt + new - 1  # the last generated token is never fed back
        if need > worst_len:
            worst, worst_len = prompt, need
    if worst_len > spec.n_ctx:
        what = f"max_new_tokens = {max_new_tokens}" if max_new_tokens is not None else "the longest answer"
        raise ParamError(
            f"{chapter + ': ' if chapter else ''}parameters {field!r} / 'prompt_format' = {prompt_format!r}: the longest prompt, "
            f"{worst!r}, plus {what} needs {worst_len} positions, and model {spec.name!r} has a context of {spec.n_ctx}. "
            "Use shorter operands, the 'bare' prompt format, or fewer new tokens"
            + (" (the organism was trained on 1-2-digit operands in the bare format, within 32 positions)" if spec.name == ORGANISM_NAME else "")
        )


def pretrained_part(params, config) -> None:
    """A chapter's pretrained-model part (parameter ``real_model``, '' for none): the model is
    known and ``config(params)``'s fine-tuning recipe is valid, before anything trains."""
    if not params.real_model:
        return
    model(params, "real_model")
    try:
        config(params).recipe()
    except ValueError as err:
        params.fail("real_model", str(err))
