"""What the pretrained-model studies share: a configuration naming the models, and running
one function per model, in parallel spawned processes when asked (one model each, one torch
thread each: on a 2-core machine two models take the time of the slower one)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .parallel import process_pool

# Prompts per batch at most, for the pretrained models: Gemma 3's logits at one decode step are
# batch x 262,144 floats (268 MB at 256), and the bench measured no gain above 256.
MAX_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    """The models a study runs, and where; subclasses add their fields (all with defaults)."""

    models: tuple[str, ...]
    batch_size: int = 256
    device: str = "cpu"
    workers: int = 1

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must name at least one model")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer (processes), got {self.workers!r}")


def per_model(fn: Callable[..., Any], config: ModelsConfig, *args, setup: Callable[[], None] | None = None) -> list:
    """``fn(config, name, *args, setup)`` for each model, in the models' order. With
    ``config.workers`` > 1 and several models, each runs in a spawned process (``fn`` and
    ``setup`` must be top-level functions; ``setup`` runs first there, say quiet settings);
    the results are the same either way."""
    if config.workers > 1 and len(config.models) > 1:
        with process_pool(min(config.workers, len(config.models))) as pool:
            futures = [pool.submit(fn, config, name, *args, setup) for name in config.models]
            return [f.result() for f in futures]
    return [fn(config, name, *args, None) for name in config.models]
