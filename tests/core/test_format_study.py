"""The format study on a small random Llama-shaped model with SmolLM2's tokenizer: the same
problems in every format, worked examples outside them, a verdict per claim."""
import pytest

from mechlib.core.format_study import CLAIMS, FORMATS, FormatConfig, cell_table, claim_table, format_study


def test_every_format_renders_the_same_problems_and_every_claim_gets_a_verdict(llama_shaped_dir):
    config = FormatConfig(models=(str(llama_shaped_dir),), operators=("+", "*"), difficulties=("1x1", "2x2"),
                          n_per_cell=6, batch_size=8)
    results = format_study(config)
    assert set(results.format) == set(FORMATS)
    keys = {f: list(zip(g.op, g.a, g.b)) for f, g in results.groupby("format")}
    assert keys["bare"] == keys["fewshot"] == keys["qa"]
    few = results[results.format == "fewshot"]
    bare = results[results.format == "bare"]
    assert all(p.endswith(q) and len(p) > len(q) for p, q in zip(few.prompt, bare.prompt))
    assert results[results.format == "qa"].prompt.str.startswith("Q: What is").all()
    table = cell_table(results)
    assert list(dict.fromkeys(table.format)) == list(FORMATS) and (table.n == 6).all()
    verdicts = claim_table(results)
    assert len(verdicts) == len(FORMATS) * len(CLAIMS)
    assert set(verdicts.verdict) <= {"holds", "false", "unclear"} and verdicts.rule.str.contains("%").all()


@pytest.mark.parametrize("field,value,message", [("formats", ("bare", "chat"), "formats"), ("shots", 0, "shots"),
                                                 ("models", (), "models"), ("difficulties", ("1x",), "1x")])
def test_a_bad_config_fails_naming_the_parameter(field, value, message):
    with pytest.raises(ValueError, match=message):
        FormatConfig(**{"models": ("m",), field: value})
