"""The format study on small random Llama- and Gemma-shaped models with the real tokenizers:
the same problems in every format and pool, worked examples outside them, a verdict per claim."""
import pandas as pd
import pytest

from mechlib.core import data, format_summary
from mechlib.core.evaluate import score_answers
from mechlib.core.format_study import (
    CLAIMS,
    FORMATS,
    FormatConfig,
    cell_table,
    claim_table,
    format_study,
    main_rows,
    pool_table,
    shared_rows,
)
from mechlib.views import format_views
from mechlib.views.quiet import quiet


@pytest.fixture(scope="module")
def study(llama_shaped_dir):
    config = FormatConfig(models=(str(llama_shaped_dir),), operators=("+", "*"), difficulties=("1x1", "1x2", "2x2"),
                          n_per_cell=6, n_shared=4, pool_seeds=(0, 1), pool_difficulties=("2x2",), batch_size=8)
    return format_study(config)


def test_every_format_and_pool_scores_the_same_problems_and_every_claim_gets_a_verdict(study):
    results = study
    main = main_rows(results)
    assert set(main.format) == set(FORMATS) and set(results.pool) == {-1, 0, 1}
    shared = shared_rows(results)
    keys = {f: list(zip(g.op, g.a, g.b)) for f, g in shared.groupby("format")}
    assert keys["bare"] == keys["fewshot"] == keys["qa"]
    few, bare = shared[shared.format == "fewshot"], shared[shared.format == "bare"]
    assert all(p.endswith(q) and len(p) > len(q) for p, q in zip(few.prompt, bare.prompt))
    assert main[main.format == "qa"].prompt.str.startswith("Q: What is").all()
    table = cell_table(main)
    assert (table[table.format == "fewshot"].n == 6).all() and (table[table.format != "fewshot"].n == 4).all()  # headline: all
    pools = pool_table(results)
    assert set(pools.difficulty) == {"2x2"} and set(pools.pool) == {0, 1} and (pools.n == 4).all()
    other = results[~results["main"]]
    first = few[few.difficulty == "2x2"].sort_values("item")
    assert list(zip(other.a, other.b)) == list(zip(first.a, first.b))  # same problems, other examples
    assert not (other.prompt.values == first.prompt.values).all()
    verdicts = claim_table(results)
    assert len(verdicts) == (len(FORMATS) - 1) * len(CLAIMS) and "chat" not in set(verdicts.format)  # chat asks 1x1 only
    asked = main[main.format == "chat"]
    assert len(asked) and set(asked.difficulty) == {"1x1"} and asked.prompt.str.contains("<|im_start|>assistant", regex=False).all()
    assert set(verdicts.verdict) <= {"holds", "false", "unclear"} and verdicts.rule.str.contains("%").all()


def test_models_in_parallel_processes_give_the_same_rows(llama_shaped_dir, gemma_shaped_dir):
    config = dict(models=(str(llama_shaped_dir), str(gemma_shaped_dir)), formats=("bare", "fewshot"), operators=("+",),
                  difficulties=("1x1",), n_per_cell=3, n_shared=2, batch_size=8)
    one = format_study(FormatConfig(**config))
    two = format_study(FormatConfig(**config, workers=2), setup=quiet)
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.parametrize("field,value,message", [("formats", ("bare", "chat"), "formats"), ("shots", 0, "shots"),
                                                 ("models", (), "models"), ("difficulties", ("1x",), "1x"),
                                                 ("n_shared", 300, "n_shared"), ("headline", "qa", "headline"),
                                                 ("pool_seeds", (1, 1), "pool_seeds"), ("workers", 0, "workers")])
def test_a_bad_config_fails_naming_the_parameter(field, value, message):
    extra = {"formats": ("bare", "fewshot")} if field == "headline" else {}
    with pytest.raises(ValueError, match=message):
        FormatConfig(**{"models": ("m",), **extra, field: value})


def test_every_view_of_the_study_renders(study):
    for chart in (format_views.format_chart(study), format_views.headline_heatmaps(study, "fewshot"),
                  format_views.first_error_chart(study, "fewshot"), format_views.error_charts(study, "fewshot")):
        assert chart.to_dict()
    for table in (format_views.claims(study), format_views.pools(study), format_views.carries(study, "fewshot"),
                  format_views.order(study, "fewshot"), format_views.lengths(study, "fewshot")):
        assert "<table" in table.to_html() and "fewshot" not in table.to_html()  # formats by their names
    empty = study.head(0)
    assert format_views.format_chart(empty).to_dict() and "not measured" in format_views.carries(empty, "fewshot").to_html()


def fake_study(right: dict[str, list[bool]]) -> pd.DataFrame:
    """Two formats answering the same 1x1 additions, right where ``right[format]`` says."""
    problems = data.make_problems(["+"], ["1x1"], 10, seed=0).to_pandas()
    parts = []
    for fmt, ok in right.items():
        outputs = [str(r) if good else str(r + 1) for r, good in zip(problems.answer, ok)]
        parts.append(score_answers(problems, outputs).assign(model="m", format=fmt, pool=-1 if fmt == "bare" else 0, main=True,
                                                             shared=True, item=range(len(problems))))
    return pd.concat(parts, ignore_index=True)


def test_the_paired_format_sentence_counts_discordant_problems():
    right = {"fewshot": [True] * 8 + [False] * 2, "bare": [True] * 3 + [False] * 7}
    text = format_summary.format_effect(fake_study(right), "fewshot", "bare")
    assert "few-shot 80.0%" in text and "bare 30.0%" in text and "same 10 problems" in text
    assert "few-shot only: 5, in bare only: 0" in text
    top = format_summary.top_errors(fake_study(right), "bare")
    assert top.startswith("m, addition: ") and top.endswith("of 7).")  # the 7 wrong answers in bare


def test_a_study_without_multi_digit_cells_says_its_claims_were_not_measured(study):
    """The sources' claims are about multi-digit problems: with only 1x1 run, every claim reads
    'not measured' and every view still renders (it failed after all the scoring)."""
    one_digit = study[study.difficulty == "1x1"]
    assert claim_table(one_digit).empty
    verdicts = format_summary.verdicts(one_digit)
    assert all(verdicts[f"{key}_{v}"].startswith("not measured") for key in CLAIMS for v in ("holds", "false", "unclear"))
    assert "<table" in format_views.claims(one_digit).to_html()
