"""The delta study's pieces: controls, the exact sanity splice, the row collection, the
choice rules and the verdict on hand-made numbers."""
import numpy as np
import pandas as pd
import pytest
import torch

from mechlib.core import data, delta_latents, delta_study, sae


def test_random_delta_has_the_width_k_and_norms_of_the_trained_one():
    trained = sae.Dictionary(16, 16, 12, "topk", 3, seed=0)
    with torch.no_grad():
        trained.b_dec.fill_(0.25)
    control = sae.random_like(trained, seed=5)
    assert control.d_sae == 12 and control.k == 3 and control.activation == "topk"
    for mine, theirs in zip(control.parameters(), trained.parameters()):
        assert mine.shape == theirs.shape
        assert torch.isclose(mine.norm(), theirs.norm(), rtol=1e-5)
        assert not mine.requires_grad
    assert control.b_enc.abs().sum() == 0  # a zero tensor stays zero
    assert not torch.allclose(control.W_dec, trained.W_dec)


def test_full_plus_error_gives_raw_back_exactly(tiny_model):
    tokens = tiny_model.to_tokens(["12+34=46", "7-9=-2"])
    lossy = sae.DeltaDictionary(sae.Dictionary(32, 32, 8, "topk", 2, seed=0), sae.Dictionary(32, 32, 4, "topk", 1, seed=1))
    with torch.no_grad():
        clean = tiny_model(tokens)
        for kind in sae.KINDS:
            with tiny_model.hooks(fwd_hooks=sae.splice_hooks(lossy, kind, 1, add_error=True)):
                assert torch.equal(tiny_model(tokens), clean)
            with tiny_model.hooks(fwd_hooks=sae.splice_hooks(lossy, kind, 1)):
                assert not torch.allclose(tiny_model(tokens), clean, atol=1e-3)  # the splice alone is lossy


def test_collected_rows_are_the_answer_positions_with_their_tokens(tiny_model):
    problems = data.make_problems(["+", "-"], ["1x1", "1x2"], 5, "bare", seed=0).to_pandas()
    name = "blocks.0.hook_mlp_out"
    rows, meta = sae.collect_rows(tiny_model, problems, [name, name])
    assert len(rows[name]) == len(meta) == sae.answer_rows(tiny_model, problems)
    from mechlib.core.evaluate import encode_targets

    targets = encode_targets(tiny_model, problems.target.tolist())
    for (problem, pos), tok in zip(meta[["problem", "pos"]].itertuples(index=False), meta.next_id):
        assert targets[problem][pos] == tok
    streamed = torch.cat([c[name] for c in sae.answer_activations(tiny_model, problems, (name,))])
    assert torch.allclose(torch.sort(rows[name].sum(1)).values, torch.sort(streamed.sum(1)).values, atol=1e-5)


def test_shuffled_batches_serve_exactly_and_cover_every_row():
    x = torch.arange(10.0)[:, None]
    served = list(sae.shuffled_batches(x, x, n_tokens=25, batch_tokens=4, seed=0))
    rows = torch.cat([b[0] for b in served]).flatten()
    assert len(rows) == 25
    assert sorted(rows[:10].tolist()) == list(range(10))  # a pass is a permutation
    again = torch.cat([b[0] for b in sae.shuffled_batches(x, x, 25, 4, seed=0)]).flatten()
    assert torch.equal(rows, again)


def test_the_base_is_computed_once_per_batch_and_training_is_unchanged():
    x = torch.randn(64, 8)
    base = sae.Dictionary(8, 8, 16, "topk", 4, seed=0)
    calls = {"n": 0}
    encode = base.encode

    def counting(z):
        calls["n"] += 1
        return encode(z)

    base.encode = counting
    deltas = [sae.DeltaDictionary(base, sae.Dictionary(8, 8, 4, "topk", 2, seed=i)) for i in range(3)]
    sae.train_dictionaries(deltas, [(x, 2 * x)] * 5)
    assert calls["n"] == 5  # once per batch, not once per delta
    base.encode = encode
    twin = sae.DeltaDictionary(base, sae.Dictionary(8, 8, 4, "topk", 2, seed=0))
    sae.train_dictionaries([twin], [(x, 2 * x)] * 5)
    assert torch.allclose(twin.delta.W_dec, deltas[0].delta.W_dec, atol=1e-6)


def test_the_delta_choice_prefers_the_narrowest_within_tolerance():
    sweep = pd.DataFrame({"delta_width": [32, 32, 64, 128], "delta_k": [4, 8, 4, 8],
                          "explained_variance": [0.950, 0.968, 0.969, 0.970]})
    assert delta_study.choose_delta(sweep, 0.005) == 1
    assert delta_study.choose_delta(sweep, 0.0) == 3
    assert delta_study.choose_delta(sweep, 0.5) == 0


def numbers(**kw):
    base = {"raw_new": 90.0, "base_model_new": 0.0, "full_new": 85.0, "no_delta_new": 10.0, "cost_new": 75.0, "cost_old": 2.0,
            "control_gain": {"random_delta": 1.0, "base_delta": 4.0, "old_delta": 3.0}, "paired_p": 1e-6, "full_better": True,
            "reference_new": float("nan")}
    return {**base, **kw}


@pytest.mark.parametrize("kw, expected", [
    ({}, "in the delta"),
    ({"no_delta_new": 65.0, "cost_new": 20.0}, "partly in the delta"),
    ({"no_delta_new": 80.0, "cost_new": 5.0}, "not in the delta"),
    ({"control_gain": {"random_delta": 1.0, "base_delta": 72.0}}, "not in the delta"),  # capacity alone does as well
    ({"cost_old": 72.0}, "not in the delta"),  # removing the delta breaks everything, not the new skill
    ({"control_gain": {"random_delta": 1.0, "base_delta": 4.0, "old_delta": 72.0}}, "not in the delta"),  # the old skill's
    # activations alone restore the new skill: the delta is not what carries it
    ({"paired_p": 0.2}, "not in the delta"),  # full and no_delta do not differ problem by problem
    ({"full_better": False}, "not in the delta"),
    ({"reference_new": 95.0}, "in the delta"),  # the unsplit reference is reported, never a control
    ({"full_new": 20.0}, "inconclusive"),
    ({"raw_new": 0.0}, "inconclusive"),
])
def test_verdict_on_hand_made_numbers(kw, expected):
    verdict, reason = delta_study.verdict(numbers(**kw))
    assert verdict == expected
    assert reason
    if kw.get("reference_new") == 95.0:
        assert "wide_base" in reason and "88%" in reason  # 75 of the 85 points the reference restores


def test_removal_numbers_read_the_condition_table_and_pair_the_problems():
    """Per-problem conditions -> the table (with McNemar's test of full against no_delta) -> the numbers."""
    n = 200
    accuracy = {"raw": (0.9, 0.95), "full": (0.8, 0.95), "no_delta": (0.2, 0.9), "random_delta": (0.25, 0.9),
                "base_delta": (0.3, 0.9), "old_delta": (0.35, 0.9), "wide_base": (0.85, 0.95), "zero_ablation": (0.0, 0.1)}
    frames = []
    for label, (new, old) in accuracy.items():  # problem i is right when i < accuracy * n: nested, so paired
        for op, acc in (("-", new), ("+", old)):
            frames.append(pd.DataFrame({"scope": "all", "condition": label, "alpha": np.nan, "op": op, "answer_loss": 1.0 - acc,
                                        "correct": np.arange(n) < round(acc * n)}))
    table = delta_study.condition_table(pd.concat(frames, ignore_index=True), ["-"])
    full = table.set_index("label").loc["full"]
    assert (full.full_only_new, full.no_delta_only_new) == (120, 0) and full.paired_p_new < 1e-30
    nums = delta_study.removal_numbers(table, "all", base_new=0.01)
    assert nums["cost_new"] == pytest.approx(60.0) and nums["cost_old"] == pytest.approx(5.0)
    assert nums["control_gain"] == pytest.approx({"random_delta": 5.0, "base_delta": 10.0, "old_delta": 15.0})
    assert nums["reference_new"] == pytest.approx(85.0) and "wide_base" not in nums["control_gain"]
    verdict, reason = delta_study.verdict(nums)
    assert verdict == "in the delta" and "92%" in reason  # 60 of the 65 points wide_base restores


def test_latent_descriptions_come_from_the_rows():
    problems = pd.DataFrame({"prompt": ["3-5=", "9-1=", "2+2="], "target": ["-2", "8", "4"], "op": ["-", "-", "+"],
                             "answer": [-2, 8, 4], "carries": [1, 0, 0]})
    meta = pd.DataFrame({"problem": [0, 0, 0, 1, 1, 2, 2], "pos": [0, 1, 2, 0, 1, 0, 1], "next_id": [1, 2, 0, 3, 0, 4, 0]})
    acts = torch.zeros(7, 2)
    acts[0, 0] = 3.0  # latent 0: only on the '-' sign of a negative result
    names = {0: "", 1: "-", 2: "2", 3: "8", 4: "4"}
    table = delta_latents.describe_latents(acts, meta, problems, [0, 1], {0: "'-'"}, ["-"], decode=names.get)
    first = table.set_index("latent").loc[0]
    assert "100% '-' problems" in first.description and "100% at answer token 1" in first.description
    assert "predicting '-'" in first.description
    assert "negative results" in first.description and "borrow" in first.description
    assert table.set_index("latent").loc[1].description == "never fires on the evaluation problems"
    assert np.isclose(first.fire_rate, 1 / 7)


def test_embedding_share_finds_a_delta_that_writes_the_new_embedding_directions(tiny_model):
    """A delta whose decoder writes only the directions the fine-tune added to the embeddings
    puts all of its output there; one with random directions puts about dim / d_model."""
    import copy

    base = tiny_model
    tuned = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tuned.W_E[3:5] += torch.randn(2, tuned.cfg.d_model, generator=gen)  # two tokens' embeddings move
    change = (tuned.W_E - base.W_E)[3:5]
    d = tuned.cfg.d_model
    problems = data.make_problems(["+"], ["1x1"], 8, "bare", seed=0).to_pandas()

    def site_with(decoder):
        delta = sae.Dictionary(d, d, 4, "relu")
        with torch.no_grad():
            delta.W_dec.copy_(decoder)
            delta.b_enc.fill_(1.0)  # every latent fires
        return delta_study.Site(0, None, sae.DeltaDictionary(sae.Dictionary(d, d, 4, "relu"), delta), pd.DataFrame(), {}, {}, {}, {})

    inside = delta_latents.embedding_share(base, tuned, site_with(torch.cat([change, change])), problems, "sae")
    assert inside["dim"] == 2 and inside["share"] == pytest.approx(1.0, abs=1e-4)
    assert inside["random_share"] == pytest.approx(2 / d)
    outside = delta_latents.embedding_share(base, tuned, site_with(torch.randn(4, d, generator=gen)), problems, "sae")
    assert outside["share"] < 0.5
    assert delta_latents.embedding_share(base, base, site_with(torch.randn(4, d, generator=gen)), problems, "sae")["dim"] == 0


def test_teacher_forced_conditions_score_like_answer_scores_and_skip_the_zeroed_run(tiny_model):
    """``splice_scores`` is answer_scores with the hooks in place; teacher-forced conditions
    without the CE run have no zero_ablation rows, a NaN CE score, and full+error equal to raw."""
    from mechlib.core.evaluate import answer_scores

    problems = data.make_problems(["+", "-"], ["1x1"], 12, "bare", seed=0).to_pandas()
    plain = answer_scores(tiny_model, problems.prompt.tolist(), problems.target.tolist())
    scored = sae.splice_scores(tiny_model, problems, [])
    assert (scored.correct.to_numpy() == plain.tf_correct.to_numpy()).all()
    assert np.array_equal(scored.answer_loss.to_numpy(), plain.answer_loss.to_numpy())
    lossy = sae.DeltaDictionary(sae.Dictionary(32, 32, 8, "topk", 2, seed=0), sae.Dictionary(32, 32, 4, "topk", 1, seed=1))
    site = delta_study.Site(1, lossy.base, lossy, pd.DataFrame(), {}, {"random_delta": lossy}, {}, {})
    cond = delta_study.run_conditions(tiny_model, problems, [site], "sae", (0, 1), scopes=[1], splice=sae.splice_scores, ce=False)
    assert "zero_ablation" not in set(cond.condition) and (cond.output == "").all()
    assert set(cond.condition) == {"raw", "full+error", "random_delta", "no_delta", "full"}
    table = delta_study.condition_table(cond, ["-"])
    assert table.ce_score.isna().all()
    assert delta_study.error_check(cond) == {"1": "identical teacher-forced verdicts and answer losses on all 24 problems"}
    spliced = cond[cond.condition == "full"].answer_loss.to_numpy()
    assert not np.allclose(spliced, plain.answer_loss.to_numpy())  # the splice itself is lossy, so the check can fail
