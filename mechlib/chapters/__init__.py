"""One module per chapter, each with ``CHAPTER``, ``Params``, ``check``, ``run`` and ``findings``.

:func:`module` maps a notebook's stem (``01_baseline``) to its module."""
from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "01_baseline": "baseline",
    "02_layers": "layers",
    "03_finetune": "finetune",
    "04_sae_delta": "sae_delta",
    "05_circuits": "circuits",
    "06_tool_use": "tool_use",
}


def names() -> list[str]:
    return sorted(MODULES)


def module(chapter: str) -> ModuleType:
    """The chapter's module; an unknown chapter is a clear error listing the known ones."""
    from .base import ParamError

    if chapter not in MODULES:
        raise ParamError(f"chapter {chapter!r} does not exist; chapters: {names()}")
    return importlib.import_module(f"{__name__}.{MODULES[chapter]}")


def params(chapter: str, param_set="default", overrides: dict | None = None):
    """A chapter's validated parameters from a parameter set and overrides."""
    return module(chapter).Params.from_set(param_set, overrides)
