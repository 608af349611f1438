"""The chapter contract: parameters written once, validated at every bound, agreeing with
the notebooks' parameters cells, and loaded from sets that fail clearly."""
import dataclasses
import json
from pathlib import Path

import pytest

from mechlib import chapters
from mechlib.chapters.base import ParamError, known_param_sets

ROOT = Path(__file__).resolve().parents[2]
ALL = chapters.names()


def bound_cases():
    """(chapter, field, value, ok) at each numeric bound: the bound passes, one past fails."""
    cases = []
    for chapter in ALL:
        cls = chapters.module(chapter).Params
        for f in dataclasses.fields(cls):
            check = f.metadata["check"]
            item = getattr(check, "item", None)
            bounds = getattr(check, "bounds", None) or getattr(item, "bounds", None)
            if not bounds:
                continue
            default = cls.defaults()[f.name]
            integer = isinstance(default, int) or (isinstance(default, list) and all(isinstance(x, int) for x in default))
            step = 1 if integer else 1e-9
            wrap = (lambda v: [v]) if item is not None else (lambda v: v)
            lo, hi = bounds
            if lo is not None:
                cases += [(chapter, f.name, wrap(lo), True), (chapter, f.name, wrap(lo - step), False)]
            if hi is not None:
                cases += [(chapter, f.name, wrap(hi), True), (chapter, f.name, wrap(hi + step), False)]
    return cases


def _valid_with(chapter, name, value):
    """Defaults plus one value; fix up the fields a cross-field rule ties to it."""
    extra = {}
    if name == "base_k":
        extra["base_width"] = max(value if isinstance(value, int) else 1, 1)
    if name == "base_width":
        extra["base_k"] = 1
    if name == "alphas":
        value = [0, 1, *value]
    if name == "real_n_per_cell" and chapter == "01_baseline":
        extra["real_n_shared"] = 1
    if name == "real_n_shared":
        extra["real_n_per_cell"] = min(max(value, 1), 10_000)
    return {name: value, **extra}


@pytest.mark.parametrize("chapter,name,value,ok", bound_cases())
def test_every_bound_passes_and_one_past_fails_naming_the_parameter(chapter, name, value, ok):
    cls = chapters.module(chapter).Params
    values = _valid_with(chapter, name, value)
    if ok:
        assert cls(**values).to_dict()[name] == values[name]
    else:
        with pytest.raises(ParamError, match=f"parameter '{name}'.*expected"):
            cls(**values)


@pytest.mark.parametrize(
    "name,value",
    [("operators", ["/"]), ("operators", []), ("difficulties", ["22"]), ("n_per_cell", 0), ("n_per_cell", True),
     ("prompt_format", "latex"), ("device", "tpu"), ("seed", -1), ("model", "")],
)
def test_bad_value_names_the_parameter_and_what_is_allowed(name, value):
    with pytest.raises(ParamError, match=f"parameter '{name}'.*expected"):
        chapters.module("01_baseline").Params(**{name: value})


def test_params_are_frozen_typed_and_hashable():
    p = chapters.params("01_baseline")
    assert isinstance(p.operators, tuple) and hash(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ParamError, match="'n_per_cel' \\(did you mean 'n_per_cell'\\?\\)"):
        chapters.params("01_baseline", overrides={"n_per_cel": 3})
    with pytest.raises(ParamError, match="chapter 'nope' does not exist"):
        chapters.module("nope")


def test_cross_field_rules():
    with pytest.raises(ParamError, match="'base_k' = 64.*base_width"):
        chapters.params("04_sae_delta", overrides={"base_k": 64, "base_width": 32})
    with pytest.raises(ParamError, match="'alphas'.*includes 0"):
        chapters.params("04_sae_delta", overrides={"alphas": [0.5, 1]})
    with pytest.raises(ParamError, match="'replay_operators'.*also in 'operators'"):
        chapters.params("03_finetune", overrides={"operators": ["-"], "replay_operators": ["-"]})
    with pytest.raises(ParamError, match="'corruptions'.*skip:x"):
        chapters.params("02_layers", overrides={"corruptions": ["none", "skip:x"]})
    with pytest.raises(ParamError, match="'real_formats'.*needs bare, fewshot or qa besides chat"):
        chapters.params("01_baseline", overrides={"real_formats": ["chat"]})
    with pytest.raises(ParamError, match="'real_n_shared' = 300: must be at most real_n_per_cell"):
        chapters.params("01_baseline", overrides={"real_n_per_cell": 200, "real_n_shared": 300})
    with pytest.raises(ParamError, match="'pool_seeds'.*more than once"):
        chapters.params("01_baseline", overrides={"pool_seeds": [0, 0]})


@pytest.mark.parametrize("param_set", known_param_sets())
def test_shipped_parameter_sets_are_valid(param_set):
    """Every chapter a set covers builds from it; a chapter it does not cover is refused by name."""
    from mechlib.chapters.base import load_param_set

    covers = load_param_set(param_set).get("covers", ALL)
    assert set(covers) <= set(ALL)
    for chapter in ALL:
        if chapter in covers:
            chapters.params(chapter, param_set)
        else:
            with pytest.raises(ParamError, match=f"{chapter}: parameter set '{param_set}' covers only"):
                chapters.params(chapter, param_set)


def test_default_set_is_the_dataclass_defaults():
    for chapter in ALL:
        assert chapters.params(chapter, "default") == chapters.module(chapter).Params()


def test_unknown_parameter_set_and_bad_yaml(tmp_path):
    with pytest.raises(ParamError, match="no such parameter set"):
        chapters.params("01_baseline", "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  seed: [1, 2\n")
    with pytest.raises(ParamError, match=f"{bad}.*line 3.*not valid YAML"):
        chapters.params("01_baseline", bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("01_baseline:\n  n_per_celll: 3\n")
    with pytest.raises(ParamError, match="did you mean 'n_per_cell'"):
        chapters.params("01_baseline", wrong)


def _parameters_cell(chapter: str) -> dict:
    nb = json.loads((ROOT / "chapters" / f"{chapter}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{chapter}: expected exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), {}, namespace)  # the cell holds literals only; this is our own source file
    return namespace


@pytest.mark.parametrize("chapter", ALL)
def test_notebook_parameters_cell_agrees_with_the_dataclass(chapter):
    cell = _parameters_cell(chapter)
    cls = chapters.module(chapter).Params
    assert cell.pop("param_set") is None
    assert list(cell) == cls.field_names(), "the cell lists every field, in the dataclass's order"
    assert cell == cls.defaults()


@pytest.mark.parametrize("chapter", ALL)
def test_papermill_reads_every_parameter(chapter):
    """A comment papermill cannot parse makes it warn 'Passed unknown parameter'."""
    from papermill.inspection import inspect_notebook

    found = inspect_notebook(str(ROOT / "chapters" / f"{chapter}.ipynb"))
    assert set(found) == {"param_set", *chapters.module(chapter).Params.field_names()}


def test_schema_is_json_with_defaults_and_bounds():
    schema = chapters.module("01_baseline").Params.schema()
    props = schema["properties"]
    assert props["n_per_cell"] == {**props["n_per_cell"], "type": "integer", "minimum": 1, "maximum": 100_000, "default": 200}
    assert props["prompt_format"]["enum"] == ["bare", "qa"]
    json.dumps(schema)


def list_fields():
    """(chapter, field, default) for every list parameter of every chapter with a default item."""
    out = []
    for chapter in ALL:
        cls = chapters.module(chapter).Params
        for name, default in cls.defaults().items():
            if isinstance(default, list) and default:
                out.append((chapter, name, default))
    return out


@pytest.mark.parametrize(("chapter", "name", "default"), list_fields(), ids=lambda v: v if isinstance(v, str) else None)
def test_a_list_parameter_holding_an_item_twice_is_refused(chapter, name, default):
    """A repeated model, seed, format or cell would be run and counted twice, inflating n."""
    doubled = default + [default[0]]
    with pytest.raises(ParamError, match=rf"parameter '{name}'.*(more than once|not allowed)"):
        chapters.module(chapter).Params(**{name: doubled})


def test_a_repeat_is_named_and_equal_numbers_count_as_one():
    from mechlib.chapters.base import _repeated

    assert _repeated((0, 1, 0)) == 0 and _repeated((1, 1.0)) == 1.0 and _repeated(("a", "b")) is None
