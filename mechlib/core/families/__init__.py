"""The model-family layer: what differs between architectures lives here, once.

Chapters and the core ask a model's :class:`Family` what they need to know (how to convert
it to TransformerLens, which modules LoRA adapts, which norm it uses, whether per-head
outputs add up to what attention writes), never the model's name. One module per family:
:mod:`.gpt2`, :mod:`.llama`, :mod:`.gemma3`.
"""
from __future__ import annotations

from . import gemma3, gpt2, llama
from .base import CONTEXT_CAP, Family, rotary_rms_fields  # noqa: F401  (the layer's public names)


def _families() -> list[Family]:
    return [gpt2.FAMILY, llama.FAMILY, gemma3.FAMILY]


def family_of(model_type: str) -> Family:
    """The family of a Hugging Face ``model_type``; an unknown one fails naming those known."""
    for family in _families():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in _families() for t in f.model_types)
    raise ValueError(f"model_type {model_type!r} has no model family in mechlib; known: {known}")


def family_named(name: str) -> Family:
    """A family by its mechlib name (``gpt2``, ``llama``, ``gemma3``)."""
    for family in _families():
        if family.name == name:
            return family
    raise ValueError(f"model family {name!r} is not one of {names()}")


def known_family(model_type: str) -> Family | None:
    """The family of a ``model_type``, or None when mechlib has none for it."""
    return next((f for f in _families() if model_type in f.model_types), None)


def family_of_config(hf_config) -> Family:
    return family_of(hf_config.model_type)


def family_of_hooked(model) -> Family:
    """The family of a converted HookedTransformer, from its original architecture."""
    arch = model.cfg.original_architecture
    for family in _families():
        if arch == family.architecture:
            return family
    raise ValueError(f"model {model.cfg.model_name!r} (architecture {arch!r}) has no model family in mechlib")


def additive_heads(model) -> bool:
    """Do per-head outputs add up to the attention block's write, for this converted model?
    Its family says; a model of no family (tracr, hand-built) is checked on its config."""
    try:
        return family_of_hooked(model).additive_heads
    except ValueError:
        return not getattr(model.cfg, "use_normalization_before_and_after", False)


def names() -> list[str]:
    return [f.name for f in _families()]


__all__ = ["CONTEXT_CAP", "Family", "additive_heads", "family_named", "family_of", "family_of_config", "family_of_hooked",
           "known_family", "names", "rotary_rms_fields"]
