import pytest

from mechlib.params import ParamError, chapter_params, validate

GOOD = dict(model="arith-organism", device="cpu", seed=0, batch_size=64, operators=["+"], difficulties=["1x1"], n_per_cell=5, prompt_format="bare")


@pytest.mark.parametrize(
    "name,value",
    [("operators", ["/"]), ("operators", []), ("difficulties", ["22"]), ("n_per_cell", 0), ("n_per_cell", True),
     ("prompt_format", "latex"), ("device", "tpu"), ("seed", -1), ("model", "")],
)
def test_bad_value_names_the_parameter_and_what_is_allowed(name, value):
    with pytest.raises(ParamError, match=f"parameter '{name}'.*expected"):
        validate("01_baseline", {**GOOD, name: value})


def test_unknown_and_missing_parameters():
    with pytest.raises(ParamError, match="unknown parameter.*'n_problems'"):
        validate("01_baseline", {**GOOD, "n_problems": 3})
    with pytest.raises(ParamError, match="missing parameter.*'seed'"):
        validate("01_baseline", {k: v for k, v in GOOD.items() if k != "seed"})


@pytest.mark.parametrize("param_set", ["default", "gpt2-small"])
def test_shipped_parameter_sets_are_valid(param_set):
    from mechlib.book import chapter_names

    for chapter in chapter_names():
        chapter_params(param_set, chapter)


def test_unknown_parameter_set():
    with pytest.raises(ParamError, match="no such parameter set"):
        chapter_params("nope", "01_baseline")
