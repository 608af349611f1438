import time

import pytest
import torch
from transformers import GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from mechlib.core.char_tokenizer import build_char_tokenizer
from mechlib.core.hub import HubUnavailableError
from mechlib.core.models import load_model


def test_local_gpt2_checkpoint_matches_hf_logprobs(tiny_gpt2_dir):
    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    model, tokenizer = load_model(str(tiny_gpt2_dir), device="cpu")
    ids = tokenizer(["12+34=46"], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tokenizer.bos_token_id
    assert torch.equal(model.to_tokens("12+34=46"), ids)
    with torch.no_grad():
        ref = hf(ids).logits.log_softmax(-1)
        got = model(ids).log_softmax(-1)
    assert (ref - got).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["gpt2", "google/gemma-2-2b"])
def test_hub_name_fails_fast_offline(offline, name):
    start = time.time()
    with pytest.raises(HubUnavailableError, match=f"model='{name}'.*--local-dir"):
        load_model(name)
    assert time.time() - start < 5


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path / "empty"))


def test_local_checkpoint_of_no_family_asks_for_its_base(tmp_path):
    """GPT-2, Llama and Gemma 3 checkpoints convert through their family; any other needs its base named."""
    tok = build_char_tokenizer()
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt_neox'.*GPT-2, Llama and Gemma 3.*mechlib_source.json"):
        load_model(str(tmp_path), device="cpu")


def test_bad_device_and_dtype(tiny_gpt2_dir):
    with pytest.raises(ValueError, match="device"):
        load_model(str(tiny_gpt2_dir), device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tiny_gpt2_dir), dtype="int8")


def test_corrupt_weights_name_the_model_and_the_file(tiny_gpt2_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_gpt2_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=f"model='{broken}'.*{weights}.*truncated or corrupt"):
        load_model(str(broken), device="cpu")
