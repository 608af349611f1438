"""The converted TransformerLens model cached beside a checkpoint in mechlib's cache: what a
later load builds from it is the fresh conversion, tensor for tensor and stride for stride;
a damaged or stale entry is rebuilt; nothing is written into a user's own folder."""
import json
import shutil

import pytest
import torch

from mechlib.core import hooked_cache
from mechlib.core.cache import finetuned_dir
from mechlib.core.models import load_model


def as_cached_finetune(folder, name):
    """Copy a checkpoint into the cache as a fine-tune called ``name`` (a folder mechlib keeps)."""
    target = finetuned_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, target)
    return target


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
        assert sa[key].stride() == sb[key].stride(), key  # the read layout survives the cache
    assert {k: v for k, v in a.cfg.to_dict().items() if k != "model_name"} == {
        k: v for k, v in b.cfg.to_dict().items() if k != "model_name"}
    prompt = "12+34=46\n7+8="
    assert a.tokenizer(prompt)["input_ids"] == b.tokenizer(prompt)["input_ids"]
    tokens = a.to_tokens(prompt)
    assert torch.equal(tokens, b.to_tokens(prompt))
    with torch.inference_mode():
        assert torch.equal(a(tokens), b(tokens))


@pytest.mark.parametrize("shape", ["llama", "gemma", "gpt2"])
def test_a_cached_conversion_is_the_fresh_conversion(shape, llama_shaped_dir, gemma_shaped_dir, tiny_gpt2_dir,
                                                      tmp_path, monkeypatch):
    """What a later load builds from the cache is what the conversion built, and no
    conversion runs."""
    folder = {"llama": llama_shaped_dir, "gemma": gemma_shaped_dir, "gpt2": tiny_gpt2_dir}[shape]
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    cached_dir = as_cached_finetune(folder, f"test-{shape}")
    built, _ = load_model(f"test-{shape}", device="cpu")  # a fresh conversion, then cached
    assert hooked_cache.is_current(cached_dir)
    calls = []
    monkeypatch.setattr("mechlib.core.models.hooked_from_hf", lambda *a, **k: calls.append(1))
    again, _ = load_model(f"test-{shape}", device="cpu")  # from the cache: no conversion
    assert calls == []
    assert_same_model(built, again)


def test_a_users_folder_is_converted_and_never_written_into(llama_shaped_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in llama_shaped_dir.iterdir())
    model, _ = load_model(str(llama_shaped_dir), device="cpu")
    assert sorted(p.name for p in llama_shaped_dir.iterdir()) == before
    assert_same_model(model, load_model(str(as_cached_finetune(llama_shaped_dir, "test-user")), device="cpu")[0])


def damage_flip(entry):
    weights = entry / hooked_cache.WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[len(blob) - 100] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(blob))


def damage_truncate(entry):
    weights = entry / hooked_cache.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1000])


def damage_stale(entry):
    record = json.loads((entry / hooked_cache.RECORD).read_text())
    record["transformer_lens"] = "0.0.1"  # written by another TransformerLens
    (entry / hooked_cache.RECORD).write_text(json.dumps(record))


def damage_record(entry):
    (entry / hooked_cache.RECORD).write_text("{not json")


def damage_missing(entry):
    (entry / hooked_cache.WEIGHTS).unlink()


@pytest.mark.parametrize("damage", [damage_flip, damage_truncate, damage_stale, damage_record, damage_missing])
def test_a_damaged_or_stale_entry_is_rebuilt_never_loaded(damage, llama_shaped_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    fresh, _ = load_model(str(llama_shaped_dir), device="cpu")
    cached_dir = as_cached_finetune(llama_shaped_dir, "test-damage")
    load_model("test-damage", device="cpu")
    entry = cached_dir / hooked_cache.FOLDER
    damage(entry)
    assert hooked_cache.load(cached_dir, fresh.tokenizer, "x") is None
    (cached_dir / ".hooked.partial-killed").mkdir()  # a writer killed mid-write left this
    rebuilt, _ = load_model("test-damage", device="cpu")
    assert_same_model(fresh, rebuilt)
    assert hooked_cache.load(cached_dir, fresh.tokenizer, "x") is not None  # rewritten whole
    assert sorted(p.name for p in cached_dir.glob(".hooked*")) == []


def test_new_source_weights_make_the_entry_stale(llama_shaped_dir, tmp_path, monkeypatch):
    """A checkpoint replaced in place (a fine-tune trained again) is converted again."""
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    cached_dir = as_cached_finetune(llama_shaped_dir, "test-stale")
    load_model("test-stale", device="cpu")
    weights = cached_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, a new file: another modification time
    assert not hooked_cache.is_current(cached_dir)
    load_model("test-stale", device="cpu")
    assert hooked_cache.is_current(cached_dir)


def test_a_read_only_cache_still_loads(llama_shaped_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path / "cache"))
    cached_dir = as_cached_finetune(llama_shaped_dir, "test-ro")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # as for a user without write access
    model, _ = load_model("test-ro", device="cpu")
    assert model.cfg.n_layers > 0 and not (cached_dir / hooked_cache.FOLDER).exists()
