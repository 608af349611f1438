"""The delta test on a pretrained model's tool fine-tune: disjoint request sets, and the
weight patching that chooses its layers, on a small random Gemma-shaped model."""
import copy

import pytest
import torch

from mechlib.core import lora, real_delta, tool_requests
from mechlib.core.tool_study import ToolLoraConfig


def test_the_request_sets_are_disjoint_and_the_test_is_held_out():
    config = ToolLoraConfig(model="gemma-3-270m")
    delta = real_delta.RealDeltaConfig(n_choose=5, n_eval=7, n_train=9, n_val=4)
    sets = real_delta.request_sets(config, delta)
    sizes = {k: v.groupby("op").size().to_dict() for k, v in sets.items()}
    assert sizes["eval"] == {"*": 7, "/": 7, "copy": 7} and sizes["choose"] == {"*": 5, "/": 5}
    assert sizes["train"] == {"*": 9, "/": 9, "copy": 9} and sizes["val"] == {"*": 4, "/": 4, "copy": 4}
    keys = {k: tool_requests.keys(v) for k, v in sets.items()}
    for a in keys:
        for b in keys:
            assert a == b or not keys[a] & keys[b], (a, b)
    train_new, held_new, train_old, held_old = lora.splits(config.recipe())
    held = tool_requests.keys(held_new) | tool_requests.keys(held_old)
    assert keys["eval"] | keys["choose"] | keys["val"] <= held and keys["train"] <= tool_requests.keys(train_new) | tool_requests.keys(train_old)
    assert set(sets["eval"].template).isdisjoint(set(sets["train"].template))  # phrasings never trained on
    assert real_delta.opener(sets["eval"].target.iloc[0]) == " <tool_call>calculator("


def test_bad_sizes_fail_fast_naming_the_field():
    with pytest.raises(ValueError, match="n_eval"):
        real_delta.RealDeltaConfig(n_eval=0)
    with pytest.raises(ValueError, match="alphas"):
        real_delta.RealDeltaConfig(alphas=(0, 0.5))


@pytest.fixture(scope="module")
def gemma_pair(gemma_shaped_dir):
    """The Gemma-shaped model and a 'fine-tune' whose only change is in layer 1's MLP."""
    from mechlib.core.models import load_model

    base, _ = load_model(str(gemma_shaped_dir))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.blocks[1].mlp.W_out.mul_(3.0)
    return base, tuned


def test_weight_patching_puts_one_layers_update_into_the_base(gemma_pair):
    base, tuned = gemma_pair
    requests = tool_requests.ood_requests(("*",), 3, seed=0)
    table, layers = real_delta.choose_layers(base, tuned, requests, 1, batch_size=8)
    loss = table.set_index(["design", "layer"]).opener_loss
    assert loss[("base", -1)] != loss[("fine-tuned", -1)]  # the test can tell the two apart
    assert loss[("only", 1)] == pytest.approx(loss[("fine-tuned", -1)], abs=1e-6)  # layer 1 holds the whole update
    assert loss[("only", 0)] == pytest.approx(loss[("base", -1)], abs=1e-6) and loss[("only", 2)] == pytest.approx(loss[("base", -1)], abs=1e-6)
    only = table[table.design == "only"]
    assert layers == [int(only.loc[only.opener_loss.idxmin(), "layer"])] and table.studied.sum() == 1
    assert torch.allclose(base.blocks[1].mlp.W_out * 3.0, tuned.blocks[1].mlp.W_out)  # the base is left alone
