"""A converted TransformerLens model, cached beside the checkpoint it was made from.

Converting a checkpoint into a ``HookedTransformer`` (the family's weight conversion, folded
norms, the read layout of :func:`mechlib.core.blocks.read_layout`) took 30-48 s and peaked at
9 GB for Gemma 3 270M, and every chapter, test and server paid it again. The first conversion
saves the model as TransformerLens holds it: ``hooked.safetensors`` (every parameter and
persistent buffer, each stored in the memory layout the model keeps it in) and
``hooked.json`` (the TransformerLens config, the versions, the source weights' identity and
the file's checksum, written last, so a folder without it is incomplete). Later loads build the
model on the meta device (no weights allocated, none initialised) and assign the stored
tensors: no conversion, no transient copies.

TransformerLens holds a tied embedding and unembedding (Gemma 3's and SmolLM2's releases
share one matrix) as two: the final norm is folded into the unembedding, so they differ, and
both are stored (671 MB more for Gemma 3's 262,144 x 640, 113 MB for SmolLM2).

The record is keyed by this module's :data:`FORMAT`, the TransformerLens version and the
source weights' size and modification time. A stale or damaged entry (another
TransformerLens, a truncated or altered file) is rebuilt, never loaded half.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from .cache import cache_lock, file_checksum, share, sweep_partial

FORMAT = 1  # bump when the conversion or the stored layout changes
FOLDER = "hooked"
WEIGHTS = "hooked.safetensors"
RECORD = "hooked.json"
SOURCE_WEIGHTS = "model.safetensors"
PARTIAL = f".{FOLDER}.partial-"


def _source_identity(source: Path) -> dict:
    stat = (source / SOURCE_WEIGHTS).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _key(source: Path) -> dict:
    """What a cached entry must match to be used."""
    return {"format": FORMAT, "transformer_lens": version("transformer-lens"), "source": _source_identity(source)}


def _order(t: torch.Tensor) -> list[int]:
    """The permutation under which ``t``'s storage is contiguous (dimensions by falling stride)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def save(model: HookedTransformer, source: Path) -> None:
    """Write ``model`` into ``<source>/hooked`` (temporary folder, renamed into place)."""
    final = source / FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=source))
    try:
        tensors, orders = {}, {}
        for name, t in model.state_dict().items():
            t = t.detach().cpu()
            order = _order(t)
            stored = t.permute(order)
            if not stored.is_contiguous():
                order, stored = list(range(t.dim())), t.contiguous()
            tensors[name] = stored
            if order != sorted(order):
                orders[name] = order
        save_file(tensors, str(tmp / WEIGHTS))
        cfg = {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v) for k, v in model.cfg.to_dict().items()}
        cfg["device"] = "cpu"
        record = {**_key(source), "orders": orders, "cfg": cfg, "checksum": file_checksum(tmp / WEIGHTS),
                  "bytes": (tmp / WEIGHTS).stat().st_size}
        (tmp / RECORD).write_text(json.dumps(record))  # written last: marks a complete entry
        share(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _current_record(source: Path) -> dict | None:
    """The entry's record when it is complete and made from the present weights by this code
    (the record, the key and the weights' size: cheap)."""
    try:
        record = json.loads((source / FOLDER / RECORD).read_text())
        if {k: record.get(k) for k in ("format", "transformer_lens", "source")} != _key(source):
            return None
        return record if (source / FOLDER / WEIGHTS).stat().st_size == record["bytes"] else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_current(source: Path) -> bool:
    """Whether ``source`` has a converted copy made from its present weights by this code
    (:func:`load` also checks the weights' checksum)."""
    return _current_record(source) is not None


def load(source: Path, tokenizer, model_name: str) -> HookedTransformer | None:
    """The cached model of ``source`` on the CPU, or None when there is no usable entry."""
    record = _current_record(source)
    if record is None or file_checksum(source / FOLDER / WEIGHTS) != record.get("checksum"):
        return None
    try:
        cfg = dict(record["cfg"], model_name=model_name, dtype=getattr(torch, record["cfg"]["dtype"]))
        with torch.device("meta"):
            model = HookedTransformer(HookedTransformerConfig.from_dict(cfg), tokenizer=tokenizer, move_to_device=False)
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError):
        return None  # a record this TransformerLens cannot build from: rebuild
    state = {}
    with safe_open(str(source / FOLDER / WEIGHTS), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            t = f.get_tensor(name)
            if name in record["orders"]:
                order = record["orders"][name]
                t = t.permute([order.index(i) for i in range(len(order))])
            state[name] = t
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError:
        return None  # keys or shapes disagree with this TransformerLens: rebuild
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model.eval()


def load_or_build(source: Path, tokenizer, model_name: str, build: Callable[[], HookedTransformer]) -> HookedTransformer:
    """The converted model of the checkpoint at ``source``: from its cached entry, else built
    by ``build()`` and cached (under a lock, so two processes convert once). A checkpoint
    folder that cannot be written (a read-only cache) still gives the built model."""
    model = load(source, tokenizer, model_name)
    if model is not None:
        return model
    if not os.access(source, os.W_OK):
        return build()
    with cache_lock(f"hooked-{source.name}"):
        model = load(source, tokenizer, model_name)
        if model is not None:
            return model
        sweep_partial(source, PARTIAL)  # left by a writer that was killed
        model = build()
        try:
            save(model, source)
        except OSError:
            pass  # a full disk: the model is still right, only not cached
        return model
