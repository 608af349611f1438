"""Where mechlib keeps what it trains: the organism, fine-tunes, dictionaries."""
from __future__ import annotations

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


def content_key(**parts) -> str:
    """A short, stable hash of JSON-able parts (recipe, code version, tokenizer): the cache
    key of anything mechlib trains, so changed inputs never reuse stale weights."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
