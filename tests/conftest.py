import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mechlib.char_tokenizer import build_char_tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A small random GPT-2 with the char tokenizer, saved with save_pretrained."""
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=48, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_gpt2_dir):
    from mechlib.models import load_model

    return load_model(str(tiny_gpt2_dir), device="cpu")[0]


@pytest.fixture(scope="session")
def organism():
    """The real embedded organism (trained on first use, then cached)."""
    from mechlib.models import load_model
    from mechlib.organism import ORGANISM_NAME

    return load_model(ORGANISM_NAME, device="cpu")[0]


@pytest.fixture
def offline(monkeypatch):
    from mechlib import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()
