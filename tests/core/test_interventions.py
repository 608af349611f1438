import pytest
import torch

from mechlib.core import data
from mechlib.core.blocks import BlockOrder, unembed_residual
from mechlib.core.evaluate import answer_scores, evaluate, greedy_decode
from mechlib.core.interventions import activation_stats, corrupted, logit_lens, mean_activations, parse_corruption, parse_corruptions

PROMPTS = ["12+34=", "7+8=", "99+1=", "123+4="]


def tokens(model, texts=("12+34=46",)):
    return model.to_tokens(list(texts))


def test_clean_order_is_exactly_the_model(tiny_model):
    t = tokens(tiny_model)
    with torch.no_grad():
        assert torch.equal(BlockOrder(tiny_model, [0, 1])(t), tiny_model(t))


def test_none_and_identity_permutation_give_the_clean_outputs(tiny_model):
    problems = data.make_problems(["+"], ["1x1", "2x2"], 5, seed=0)
    clean = evaluate(tiny_model, problems)
    for spec in ("none", "permute:0,1"):
        c = parse_corruption(spec, 2)
        assert c.order == (0, 1)
        with corrupted(tiny_model, c) as forward:
            assert evaluate(tiny_model, problems, forward=forward).equals(clean)


def test_skipping_every_layer_is_embed_then_unembed(tiny_model):
    t = tokens(tiny_model)
    c = parse_corruption("skip:0,1", 2)
    assert c.order == ()
    with torch.no_grad():
        direct = unembed_residual(tiny_model, tiny_model.embed(t) + tiny_model.pos_embed(t))
        assert torch.allclose(BlockOrder(tiny_model, c.order)(t), direct, atol=1e-6)


def test_layer_orders_run_the_blocks_they_name(tiny_model):
    t = tokens(tiny_model)
    seen = []
    hooks = [(f"blocks.{i}.hook_resid_post", lambda act, hook: seen.append(hook.name)) for i in range(2)]
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=hooks):
        BlockOrder(tiny_model, parse_corruption("repeat:1x3", 2).order)(t)
    assert seen == ["blocks.0.hook_resid_post"] + ["blocks.1.hook_resid_post"] * 3
    assert parse_corruption("skip_last:1", 4).order == (0, 1, 2)
    assert parse_corruption("skip_first:2", 4).order == (2, 3)
    assert parse_corruption("skip_range:1-2", 4).order == (0, 3)
    assert parse_corruption("permute:3,2,1,0", 4).order == (3, 2, 1, 0)


def test_cached_decoding_under_a_corruption_equals_recomputing(tiny_model):
    order = BlockOrder(tiny_model, [1, 0, 0])
    cached = greedy_decode(tiny_model, PROMPTS, 5, forward=order)
    recomputed = greedy_decode(tiny_model, PROMPTS, 5, forward=lambda t: order(t))
    assert cached == recomputed


def test_ablations_replace_the_output(tiny_model):
    means = mean_activations(tiny_model, PROMPTS, [("mlp", 1)])
    captured = {}
    for mode, expect in (("zero", None), ("mean", means["blocks.1.hook_mlp_out"])):
        c = parse_corruption(f"ablate:mlp1:{mode}", 2)
        with corrupted(tiny_model, c, means), torch.no_grad():
            _, cache = tiny_model.run_with_cache(tokens(tiny_model), names_filter="blocks.1.hook_mlp_out")
        act = cache["blocks.1.hook_mlp_out"]
        captured[mode] = act
        assert torch.equal(act, torch.zeros_like(act) if expect is None else expect.expand_as(act))
    with torch.no_grad():  # hooks are gone after the block
        _, cache = tiny_model.run_with_cache(tokens(tiny_model), names_filter="blocks.1.hook_mlp_out")
    assert not torch.equal(cache["blocks.1.hook_mlp_out"], captured["zero"])


def test_logit_lens_after_the_last_layer_is_the_model(tiny_model):
    prompts, targets = ["12+34=", "7+8="], ["46", "15"]
    lens = logit_lens(tiny_model, prompts, targets)
    last = lens[lens.layer == 1].reset_index(drop=True)
    scores = answer_scores(tiny_model, prompts, targets)
    assert torch.allclose(torch.tensor(last.p_first.values), torch.tensor(scores.p_first.values), atol=1e-6)
    assert list(last.tf_correct) == list(scores.tf_correct)
    assert sorted(lens.layer.unique()) == [-1, 0, 1]


@pytest.mark.parametrize(
    "spec,needle",
    [("skip:4", "out of range"), ("skip:a", "layer numbers"), ("repeat:1", "repeat:LxK"), ("permute:0,1,2", "permutation"),
     ("permute:0,0,1,2", "permutation"), ("ablate:mlp9:zero", "out of range"), ("ablate:mlp1:half", "ablate:mlpL"),
     ("shuffle:1", "malformed"), ("skip_last:5", "1..4"), ("skip_range:2-1", "A <= B"), ("", "malformed")],
)
def test_invalid_specs_name_the_spec(spec, needle):
    with pytest.raises(ValueError, match="corruption") as err:
        parse_corruption(spec, 4)
    assert needle in str(err.value) and repr(spec) in str(err.value)


def test_corruption_lists_are_checked():
    with pytest.raises(ValueError, match="non-empty list"):
        parse_corruptions("skip:0", 4)
    with pytest.raises(ValueError, match="more than once"):
        parse_corruptions(["skip:0", "skip:0"], 4)


def test_activation_statistics_repeat_exactly(tiny_gpt2_dir):
    from mechlib.core.models import load_model

    prompts = data.make_problems(["+"], ["1x1", "2x2"], 20, seed=0)["prompt"]
    first = activation_stats(load_model(str(tiny_gpt2_dir), device="cpu")[0], prompts)
    second = activation_stats(load_model(str(tiny_gpt2_dir), device="cpu")[0], prompts)
    assert first.equals(second)
    assert list(first.columns) == ["layer", "resid_norm_mean", "attn_norm_mean", "attn_norm_std", "mlp_norm_mean", "mlp_norm_std"]
    assert (first.drop(columns="layer") > 0).all().all()


def test_wildcards_expand_per_layer_and_syntax_checks_need_no_model():
    from mechlib.core.interventions import DEPTH_UNKNOWN

    specs = [c.spec for c in parse_corruptions(["none", "skip:*", "ablate:mlp*:mean"], 3)]
    assert specs == ["none", "skip:0", "skip:1", "skip:2", "ablate:mlp0:mean", "ablate:mlp1:mean", "ablate:mlp2:mean"]
    parse_corruptions(["permute:0,2,1,3,4,5,6,7,8,9,10,11", "skip:*", "repeat:11x2"], DEPTH_UNKNOWN)
    with pytest.raises(ValueError, match="permutation"):
        parse_corruptions(["permute:0,2,2"], DEPTH_UNKNOWN)
