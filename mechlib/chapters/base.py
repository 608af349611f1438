"""The chapter contract: a typed, frozen, self-validating parameter dataclass per chapter,
parameter sets that override its fields by name, and checks that need no model weights.

A chapter module defines ``CHAPTER`` (its notebook's stem), ``Params`` (a subclass of
:class:`ChapterParams`), ``run(params) -> Result`` and ``findings(result) -> dict``.
A field is declared once, with :func:`param`: its default (the default set), its check and
the text that says what is allowed. A bad value raises :class:`ParamError` naming the field.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..core.data import MAX_DIGITS, OPERATORS, PROMPT_FORMATS, parse_difficulty

PARAMSETS_DIR = Path(__file__).resolve().parent.parent / "paramsets"


class ParamError(ValueError):
    """A chapter parameter has a value outside what the chapter allows."""


Check = Callable[[Any], bool]


# ------------------------------------------------------------------ checks


def is_int(lo: int | None = None, hi: int | None = None) -> Check:
    check = lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)  # noqa: E731
    check.bounds = (lo, hi)
    return check


def is_number(lo: float | None = None, hi: float | None = None) -> Check:
    check = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)  # noqa: E731
    check.bounds = (lo, hi)
    return check


def is_str(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def one_of(*allowed) -> Check:
    check = lambda v: v in allowed  # noqa: E731
    check.choices = allowed
    return check


def list_of(check: Check, min_len: int = 1, max_len: int | None = None) -> Check:
    out = lambda v: isinstance(v, (list, tuple)) and min_len <= len(v) <= (max_len or 10**9) and all(check(x) for x in v)  # noqa: E731
    out.item, out.min_len = check, min_len
    return out


def is_alphas(v) -> bool:
    """A dose sweep: numbers in 0..100 that include 0 (no delta) and 1 (the full delta)."""
    return list_of(is_number(0, 100))(v) and {0, 1} <= set(v)


def is_name(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v) is not None


def is_difficulty(v) -> bool:
    try:
        parse_difficulty(v)
        return True
    except ValueError:
        return False


def param(default, check: Check, allowed: str | Callable[[Any], str], doc: str = ""):
    """A chapter parameter: its default, its check, and what is allowed (for messages)."""
    meta = {"check": check, "allowed": allowed, "doc": doc}
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return dataclasses.field(default_factory=lambda: value, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# Fields every chapter has, and the problem-grid fields most have.
def model_field(default: str = "arith-organism"):
    return param(default, is_str, ("a model name: 'arith-organism', 'smollm2-135m-instruct', 'gemma-3-270m', a Hub name such as 'gpt2', "
                  "or a local checkpoint directory"),
                 "the model under study")


def device_field():
    return param("auto", one_of("auto", "cpu", "cuda", "mps"), "one of 'auto', 'cpu', 'cuda', 'mps'",
                 "where to run; 'auto' takes CUDA when it is there")


def seed_field():
    return param(0, is_int(0, 2**31 - 1), "an integer in 0..2147483647", "seed for problems and training")


def batch_size_field():
    return param(512, is_int(1, 65536), "an integer in 1..65536", "prompts per forward pass")


def operators_field(default=("+", "-", "*"), min_len: int = 1):
    what = "a non-empty list" if min_len else "a list (possibly empty)"
    return param(default, list_of(one_of(*OPERATORS), min_len=min_len), f"{what} drawn from {list(OPERATORS)}")


def difficulties_field(default=("1x1", "1x2", "2x2")):
    return param(default, list_of(is_difficulty),
                 f"a non-empty list of 'AxB' digit counts with A, B in 1..{MAX_DIGITS}, e.g. ['1x1', '1x2', '2x2']")


def prompt_format_field():
    return param("bare", one_of(*PROMPT_FORMATS), f"one of {list(PROMPT_FORMATS)} (bare: 12+34=   qa: Q: What is 12 plus 34? A:)")


# ------------------------------------------------------------------ the dataclass


@dataclasses.dataclass(frozen=True)
class ChapterParams:
    """Base of every chapter's parameters. Lists become tuples (the instance is frozen and
    hashable); every field is checked in ``__post_init__``, then :meth:`check` runs the
    chapter's cross-field rules."""

    chapter: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            check, allowed = f.metadata.get("check"), f.metadata.get("allowed")
            if check is not None and not check(value):
                allowed = allowed(value) if callable(allowed) else allowed
                raise ParamError(f"{self.chapter}: parameter {f.name!r} = {_show(value)} is not allowed; expected {allowed}")
            if isinstance(value, tuple) and (twice := _repeated(value)) is not None:
                raise ParamError(f"{self.chapter}: parameter {f.name!r} = {_show(value)} lists {_show(twice)} more than once; "
                                 "each item may appear once (a repeated model, seed or cell would be run and counted twice, "
                                 "inflating n)")
        self.check()

    def check(self) -> None:
        """Cross-field rules (override in a chapter); raise ParamError naming the fields."""

    def fail(self, name: str, message: str):
        raise ParamError(f"{self.chapter}: parameter {name!r} = {_show(getattr(self, name))}: {message}")

    def to_dict(self) -> dict:
        """Plain JSON-able values (tuples as lists), in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict:
        return cls().to_dict()

    @classmethod
    def build(cls, values: dict):
        """Construct from a mapping; an unknown key fails and names the closest valid key."""
        unknown = [k for k in values if k not in cls.field_names()]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, cls.field_names(), n=1, cutoff=0.5)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ParamError(f"{cls.chapter}: unknown parameter(s) {', '.join(hints)}; allowed: {cls.field_names()}")
        return cls(**values)

    @classmethod
    def from_set(cls, param_set: str | Path | None = "default", overrides: dict | None = None):
        """The dataclass defaults, overridden by a parameter set's ``common`` and chapter
        sections (only the keys the chapter has, from ``common``), then by ``overrides``."""
        values: dict = {}
        if param_set is not None:
            data = load_param_set(param_set)
            if "covers" in data and cls.chapter not in data["covers"]:
                raise ParamError(f"{cls.chapter}: parameter set {str(param_set)!r} covers only {data['covers']}; this chapter's "
                                 "part on that model is not built yet. Use another set (default, tiny, gpt2-small)")
            common = data.get("common") or {}
            values.update({k: v for k, v in common.items() if k in cls.field_names()})
            values.update(data.get(cls.chapter) or {})
        values.update(overrides or {})
        return cls.build(values)

    @classmethod
    def schema(cls) -> dict:
        """A JSON schema of the parameters, for agents and docs: defaults, allowed text, docs."""
        props = {}
        for f in dataclasses.fields(cls):
            default = _plain(f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            allowed = f.metadata.get("allowed")
            props[f.name] = {
                "default": default,
                "description": " ".join(x for x in (f.metadata.get("doc", ""), f"Allowed: {allowed}" if isinstance(allowed, str) else "") if x),
                **_json_type(f.metadata.get("check"), default),
            }
        return {"type": "object", "title": cls.chapter, "properties": props, "additionalProperties": False}


@dataclasses.dataclass(frozen=True)
class ModelParams(ChapterParams):
    """The fields every chapter has, first in every chapter's parameters."""

    model: str = model_field()
    device: str = device_field()
    seed: int = seed_field()
    batch_size: int = batch_size_field()


def _json_type(check, default) -> dict:
    if check is None:
        return {}
    if hasattr(check, "choices"):
        return {"enum": list(check.choices)}
    if hasattr(check, "bounds"):
        lo, hi = check.bounds
        kind = "integer" if isinstance(default, int) and not isinstance(default, bool) else "number"
        return {"type": kind, **({"minimum": lo} if lo is not None else {}), **({"maximum": hi} if hi is not None else {})}
    if hasattr(check, "item"):
        return {"type": "array", "minItems": check.min_len, "items": _json_type(check.item, None)}
    if isinstance(default, str):
        return {"type": "string"}
    return {}


def _repeated(items: tuple):
    """The first item of ``items`` equal to an earlier one (1 and 1.0 count as equal), or None."""
    for i, item in enumerate(items):
        if any(_plain(item) == _plain(earlier) for earlier in items[:i]):
            return item
    return None


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _show(v) -> str:
    return repr(_plain(v))


# ------------------------------------------------------------------ parameter sets


def known_param_sets() -> list[str]:
    return sorted(p.stem for p in PARAMSETS_DIR.glob("*.yaml"))


def param_set_path(name_or_path: str | Path) -> Path:
    """``params/NAME.yaml`` (shipped inside the package), or a ``.yaml`` path."""
    path = Path(name_or_path)
    candidate = path if path.suffix in (".yaml", ".yml") else PARAMSETS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ParamError(f"params {str(name_or_path)!r}: no such parameter set; known sets: {known_param_sets()}, or a .yaml path")
    return candidate


def load_param_set(name_or_path: str | Path) -> dict:
    """A parameter set's sections; a YAML error names the file and the line."""
    path = param_set_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ParamError(f"parameter set {str(path)!r}: not a text file (a YAML parameter set is UTF-8 text)") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ParamError(f"parameter set {str(path)!r}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    covers = data.pop("covers", None) if isinstance(data, dict) else None
    if not isinstance(data, dict) or any(not isinstance(v, (dict, type(None))) for v in data.values()):
        raise ParamError(f"parameter set {str(path)!r}: expected sections 'common' and one per chapter, each a mapping")
    if covers is not None:
        if not isinstance(covers, list) or not all(isinstance(c, str) for c in covers):
            raise ParamError(f"parameter set {str(path)!r}: 'covers' must be a list of chapter names")
        data["covers"] = covers
    return data
