"""Weight patching: a real LoRA update (peft, merged) on a small GPT-2, put back by block."""
import pytest
import torch

from mechlib.core import lora as ft
from mechlib.core import weight_patch as wp
from mechlib.core.models import load_hf, load_model


@pytest.fixture(scope="module")
def base_and_finetune(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 and a LoRA fine-tune of it with random (non-zero) adapter weights, merged."""
    hf, tok, _ = load_hf(str(tiny_gpt2_dir))
    peft_model = ft.lora_model(hf, ft.FinetuneRecipe(rank=2, alpha=4))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    path = tmp_path_factory.mktemp("ft")
    peft_model.merge_and_unload().save_pretrained(path)
    tok.save_pretrained(path)
    return load_model(str(tiny_gpt2_dir), device="cpu")[0], load_model(str(path), device="cpu")[0]


def logits(model, text="12+34=46"):
    with torch.no_grad():
        return model(model.to_tokens([text]))


def test_the_update_lives_in_attention_and_mlp_blocks_only(base_and_finetune):
    base, tuned = base_and_finetune
    keys = wp.component_keys(base, tuned)
    assert set(keys) == {(layer, c) for layer in range(base.cfg.n_layers) for c in wp.COMPONENTS}


def test_all_blocks_patched_is_the_finetune_and_none_is_the_base(base_and_finetune):
    base, tuned = base_and_finetune
    every = [(layer, c) for layer in range(base.cfg.n_layers) for c in wp.COMPONENTS]
    assert torch.equal(logits(wp.patched(base, tuned, every)), logits(tuned))
    assert torch.equal(logits(wp.patched(base, tuned, [])), logits(base))
    one = logits(wp.patched(base, tuned, [(0, "mlp")]))
    assert not torch.equal(one, logits(base)) and not torch.equal(one, logits(tuned))


def test_patching_into_a_working_copy_leaves_the_base_alone(base_and_finetune):
    base, tuned = base_and_finetune
    before = logits(base)
    work = wp.patched(base, tuned, [(1, "attn")])
    wp.patched(base, tuned, [(0, "attn"), (0, "mlp")], into=work)
    assert torch.equal(logits(base), before)
    assert torch.equal(logits(work), logits(wp.patched(base, tuned, [(0, "attn"), (0, "mlp")])))


def test_an_update_outside_the_blocks_is_refused(base_and_finetune):
    import copy

    base, tuned = base_and_finetune
    odd = copy.deepcopy(tuned)
    with torch.no_grad():
        odd.embed.W_E[0, 0] += 1.0
    with pytest.raises(ValueError, match="embed.W_E"):
        wp.component_keys(base, odd)


def test_designs_cover_both_ends_and_every_layer():
    rows = wp.designs(3)
    assert rows[0] == ("base", "none", []) and rows[1][0] == "fine-tuned" and len(rows[1][2]) == 6
    assert sum(1 for d, w, _ in rows if d == "all but") == 3
    assert all(len(b) == 4 for d, w, b in rows if d == "all but")
