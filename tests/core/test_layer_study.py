"""The real-model layer study on a small random Llama-shaped model with SmolLM2's tokenizer:
every corruption scores the same few-shot problems, the clean row matches an uncorrupted
scoring, and each claim gets a verdict by its rule."""
import re

import pandas as pd
import pytest

from mechlib.core import layer_study
from mechlib.core.evaluate import answer_scores
from mechlib.core.interventions import parse_corruptions
from mechlib.core.models import load_model


def test_depth_specs_parse_and_name_the_conditions_for_any_depth():
    for depth in (3, 18, 30):
        specs = layer_study.depth_specs(depth)
        parsed = parse_corruptions(specs, depth)
        assert specs[0] == "none" and f"skip_range:1-{depth - 1}" in specs and "skip:0" in [c.spec for c in parsed]
        assert sum(c.family == "skip" and c.layer is not None for c in parsed) == depth


@pytest.fixture(scope="module")
def tables(llama_shaped_dir):
    config = layer_study.LayerConfig(models=(str(llama_shaped_dir),), n_per_cell=5, speak_prompts=("1 + 3 = 4\n4 + 5 = 9\n2 + 3 =",),
                                     max_new_tokens=3, batch_size=8, lens_tokens=384)
    return config, layer_study.layer_study(config)


def test_every_corruption_scores_the_same_problems_and_the_clean_row_is_the_intact_model(tables, llama_shaped_dir):
    config, out = tables
    scores = out["scores"]
    assert scores.groupby("corruption").size().nunique() == 1 and scores.groupby("corruption").size().iloc[0] == 10
    problems = layer_study.problems_for(config)
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    intact = answer_scores(model, problems.prompt.tolist(), problems.target.tolist(), batch_size=8, share_prefix=False)
    clean = scores[scores.corruption == "none"].sort_values("problem")
    assert (clean.tf_correct.values == intact.tf_correct.values).all()
    assert clean.answer_loss.values == pytest.approx(intact.answer_loss.values, abs=1e-4)
    summary = layer_study.summary(scores)
    expanded = [c.spec for c in parse_corruptions(layer_study.depth_specs(3), 3)]
    assert list(summary.corruption) == expanded and summary.accuracy.between(0, 1).all()
    assert len(out["repeats"]) == 10 and set(out["speech"].corruption) >= {"none", "skip:0"}
    for which in ("logit", "tuned"):
        curve = layer_study.lens_curve(out["lens"], "+", which)
        assert list(curve.layer) == [-1, 0, 1, 2] and (curve.n == 5).all() and curve.kl.iloc[-1] == pytest.approx(0, abs=1e-5)
    assert set(out["lens_fit"].layer) == {-1, 0, 1}
    text = layer_study.sentences(out)
    assert "3 translators" in text["layers_fit_text"] and re.search(r"the tuned lens (from layer \d|at no layer)", text["layers_lens_text"])


def test_each_claim_gets_a_verdict_by_its_rule(tables):
    _, out = tables
    verdicts = layer_study.verdicts(out)
    assert set(verdicts.claim) == set(layer_study.RULES) and set(verdicts.verdict) <= {"holds", "false", "unclear"}
    fake = {k: v.copy() for k, v in out.items()}
    verdict = lambda: layer_study.verdicts(fake).set_index("claim").loc["layer0_repeats", "verdict"]  # noqa: E731
    fake["repeats"]["repeats"] = [i < 6 for i in range(10)]  # 60% [31, 83]: spans 50%
    assert verdict() == "unclear"
    fake["repeats"]["repeats"] = True  # 100% [72, 100]
    assert verdict() == "holds"
    fake["repeats"]["repeats"] = False
    assert verdict() == "false"
    prose = lambda: layer_study.verdicts(fake).set_index("claim").loc["layer0_repeats_prose", "verdict"]  # noqa: E731
    alone = fake["prose"].condition == "layer 0 alone"
    fake["prose"]["repeats"] = alone  # every position with layer 0 alone, none intact
    assert prose() == "holds"
    fake["prose"]["repeats"] = ~alone
    assert prose() == "false"


def test_prose_is_read_at_every_position_but_bos_by_both_conditions(tables):
    _, out = tables
    prose = out["prose"]
    counts = prose.groupby("condition").size()
    assert set(counts.index) == {"intact", "layer 0 alone"} and counts.nunique() == 1
    per_window = prose.groupby(["condition", "window"]).position.agg(["min", "max", "size"])
    assert (per_window["size"] == per_window["max"] - per_window["min"] + 1).all() and prose.repeats.dtype == bool


def test_the_readable_layer_is_the_first_whose_lower_bound_clears_both_bars():
    curve = pd.DataFrame({"layer": [-1, 0, 1, 2], "top1": [0.0, 0.6, 0.9, 0.9], "lo": [0.0, 0.5, 0.8, 0.8], "n": [50] * 4, "majority": 0.3})
    assert layer_study.readable_layer(curve) == 0
    assert layer_study.readable_layer(curve.assign(majority=0.55)) == 1  # naming the commonest digit is not reading
    assert layer_study.readable_layer(curve.assign(top1=0.0, lo=0.0)) is None


def test_the_lenses_disagree_by_the_stated_rule(tables):
    _, out = tables
    lens = out["lens"].copy()

    def verdict(logit_first, tuned_first):
        """Make each lens right on every problem from the given layer on (None: never)."""
        fake = lens.copy()
        fake["top1_first"] = [f is not None and layer >= f for f, layer in
                              zip([logit_first if w == "logit" else tuned_first for w in fake.lens], fake.layer)]
        fake["first_digit"] = [str(i % 5) for i in fake.problem]  # the commonest digit is 20%
        table = layer_study.lens_table({**out, "lens": fake})
        return table.set_index("op").loc["+", ["logit", "tuned", "verdict"]].tolist()

    assert verdict(0, 1) == [0, 1, "agree"] and verdict(0, 2) == [0, 2, "disagree"]
    assert verdict(0, 9)[2] == "disagree" and verdict(9, 9)[2] == "agree"


def test_every_view_of_the_study_renders(tables):
    from mechlib.views import layer_views

    _, out = tables
    for chart in (layer_views.strips(out), layer_views.lens_chart(out), layer_views.kl_chart(out)):
        assert chart.to_dict()
    assert "tuned lens reads from layer" in layer_views.lens_table(out).to_html()
    multi = layer_views.multi_layer(out).to_html()
    assert "layer 1 run twice" in multi and "intact model" in multi and "layer 0 skipped" not in multi  # per-layer rows are in the strips
    for table in (layer_views.claims(out), layer_views.speech(out)):
        assert "<table" in table.to_html()
    assert "not measured" in layer_views.multi_layer({}).to_html()
    assert layer_views.describe("permute:1,0,2", 3) == "layers 0 and 1 swapped" and layer_views.describe("skip_last:2", 3) == "last 2 layers skipped"
