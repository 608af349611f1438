"""Where mechlib keeps what it trains: the organism, fine-tunes, dictionaries."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    """``$MECHLIB_CACHE``, else ``$XDG_CACHE_HOME/mechlib``, else ``~/.cache/mechlib``."""
    if os.environ.get("MECHLIB_CACHE"):
        return Path(os.environ["MECHLIB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mechlib"


def finetuned_dir(name: str) -> Path:
    """Where a fine-tuned checkpoint called ``name`` lives: ``<cache>/finetuned/<name>``."""
    return cache_root() / "finetuned" / name


@contextlib.contextmanager
def cache_lock(name: str):
    """An exclusive lock across processes, held while the cache entry ``name`` is checked and
    written: two processes asking for the same model at once train or convert it once, and
    neither reads a folder the other is replacing."""
    folder = cache_root() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name.replace('/', '_')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def content_key(**parts) -> str:
    """A short, stable hash of JSON-able parts (recipe, code version, tokenizer): the cache
    key of anything mechlib trains, so changed inputs never reuse stale weights."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


SOURCE_FILE = "mechlib_source.json"  # what a checkpoint mechlib wrote was made from


def is_finetune(name: str) -> bool:
    """Whether ``name`` (a bare name, not a path) is a fine-tuned checkpoint in the cache."""
    return "/" not in str(name) and (finetuned_dir(str(name)) / "config.json").is_file()


def is_checkpoint(name_or_path: str | Path) -> bool:
    """A cached fine-tune by name, or a local checkpoint directory (with its config.json)."""
    return is_finetune(str(name_or_path)) or (Path(name_or_path).expanduser() / "config.json").is_file()


def source_record(name_or_path: str | Path) -> dict | None:
    """The ``mechlib_source.json`` record of a checkpoint: a cached fine-tune by name, or a
    directory. None when there is none or it cannot be read."""
    name = str(name_or_path)
    folders = ([finetuned_dir(name)] if is_finetune(name) else []) + [Path(name).expanduser()]
    for folder in folders:
        meta = folder / SOURCE_FILE
        if meta.is_file():
            try:
                return json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None
