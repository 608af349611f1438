import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mechlib.core.char_tokenizer import build_char_tokenizer

# One thread: on a busy 2-core machine torch's default ran up to 10x slower.
torch.set_num_threads(1)


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
    from mechlib.core.models import load_model

    return load_model(str(tiny_gpt2_dir), device="cpu")[0]


@pytest.fixture(scope="session")
def organism():
    """The real embedded organism (trained on first use, then cached)."""
    from mechlib.core.models import load_model
    from mechlib.core.organism import ORGANISM_NAME

    return load_model(ORGANISM_NAME, device="cpu")[0]


@pytest.fixture
def offline(monkeypatch):
    from mechlib.core import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"


def gpt2_tokenizer():
    """GPT-2's real BPE tokenizer, built offline from the vendored files."""
    from transformers import GPT2TokenizerFast

    files = FIXTURES / "gpt2_tokenizer"
    return GPT2TokenizerFast(vocab=str(files / "encoder.json"), merges=str(files / "vocab.bpe"))


def save_gpt2_shaped(path, n_layer=12, n_embd=48, n_head=4, n_positions=64, seed=0):
    """A GPT-2-shaped model (GPT-2's tokenizer and depth, small width), random weights."""
    torch.manual_seed(seed)
    tok = gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_shaped_dir(tmp_path_factory):
    """12 layers, width 48, GPT-2's 50257-token BPE vocabulary, saved with save_pretrained."""
    return save_gpt2_shaped(tmp_path_factory.mktemp("gpt2-shaped"))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh MECHLIB_CACHE that still sees the trained organism (linked, not retrained)."""
    from mechlib.core.cache import cache_root
    from mechlib.core.organism import ensure_organism

    organism = ensure_organism(progress=False)
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "models" / organism.name).symlink_to(organism)
    monkeypatch.setenv("MECHLIB_CACHE", str(root))
    assert cache_root() == root
    return root


SLOW_FIXTURES = {"organism", "isolated_cache", "tiny_cache", "gpt2_results"}


def pytest_collection_modifyitems(config, items):
    """Tests that train or load the organism (it trains on first use), start Jupyter kernels or
    a browser are `slow`; `make test-fast` skips them, `make test` (and CI) runs everything."""
    for item in items:
        path = str(item.fspath)
        kernels_or_browser = (path.endswith(("test_sweep.py", "test_site_check.py", "test_mcp.py", "test_agent_protocol.py"))
                              or item.name.startswith("test_chapter_executes"))
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or kernels_or_browser:
            item.add_marker(pytest.mark.slow)


def shipped_tokenizer(name: str, folder):
    """A shipped real model's own tokenizer (from its GGUF, no weights), saved to ``folder``."""
    from transformers import AutoTokenizer

    from mechlib.core import shipped

    path = shipped.gguf_path(shipped.shipped(name))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def perturb(model, scale: float = 0.05, seed: int = 0):
    """Random weights everywhere, norms included (a fresh model's norms are all 1 or all 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def save_llama_shaped(path, seed=0):
    """SmolLM2's tokenizer and layout (grouped-query attention, tied embeddings, rotary), 3 small layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = shipped_tokenizer("smollm2-135m-instruct", path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    perturb(LlamaForCausalLM(cfg).eval(), seed=seed).save_pretrained(path)
    return path


def save_gemma_shaped(path, seed=0):
    """Gemma 3's tokenizer (262,144 tokens) and layout (sliding and global layers, pre- and
    post-norms, q/k norms, one key/value head), 3 small layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    tok = shipped_tokenizer("gemma-3-270m", path)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=256, sliding_window=4,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           rope_parameters={"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                                            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    perturb(Gemma3ForCausalLM(cfg).eval(), seed=seed).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_shaped_dir(tmp_path_factory):
    return save_llama_shaped(tmp_path_factory.mktemp("llama-shaped"))


@pytest.fixture(scope="session")
def gemma_shaped_dir(tmp_path_factory):
    return save_gemma_shaped(tmp_path_factory.mktemp("gemma-shaped"))
