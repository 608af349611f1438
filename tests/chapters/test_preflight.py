"""What can fail without weights fails before any work, naming the parameter: context
length, layers out of range, devices, the cache, Hub names offline, derived fine-tunes."""
import os
import time

import pytest
import torch

from mechlib import chapters
from mechlib.book.execute import check_chapter
from mechlib.chapters.base import ParamError
from mechlib.core import data
from mechlib.core.evaluate import evaluate


def fast(fn, *args, **kwargs):
    start = time.time()
    with pytest.raises(ParamError) as err:
        fn(*args, **kwargs)
    assert time.time() - start < 5, "checks that need no weights must not wait for weights"
    return str(err.value)


@pytest.mark.parametrize("overrides", [
    {"operators": ["*"], "difficulties": ["2x2"], "prompt_format": "qa", "seed": 7, "n_per_cell": 10},
    {"operators": ["+"], "difficulties": ["3x3"], "prompt_format": "qa"},
])
def test_prompts_that_cannot_fit_the_organism_are_refused_up_front(overrides):
    message = fast(check_chapter, "01_baseline", "default", overrides)
    assert "'difficulties' / 'prompt_format' = 'qa'" in message and "context of 32" in message and "Q: What is" in message


def test_bare_3x3_fits_and_runs():
    check_chapter("01_baseline", "default", {"difficulties": ["3x3"], "real_models": []})  # the organism's context


def test_too_many_new_tokens_are_refused_naming_max_new_tokens():
    message = fast(check_chapter, "02_layers", "default", {"max_new_tokens": 30})
    assert "'max_new_tokens' = 30" in message and "context of 32" in message


@pytest.mark.parametrize("spec", ["skip:99", "ablate:mlp9:mean", "repeat:4x2"])
def test_corruption_layers_are_checked_against_the_config_not_the_weights(spec):
    message = fast(check_chapter, "02_layers", "default", {"corruptions": ["none", spec]})
    assert "'corruptions'" in message and "4 layers" in message


def test_layers_out_of_range_for_the_dictionaries():
    assert "'layers'" in fast(check_chapter, "04_sae_delta", "default", {"layers": [7]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so_and_suggests_auto():
    message = fast(check_chapter, "01_baseline", "default", {"device": "cuda"})
    assert "'device'" in message and "no CUDA" in message and "'auto'" in message


def test_hub_name_offline_fails_in_the_library_not_the_kernel(offline):
    message = fast(check_chapter, "01_baseline", "gpt2-small")
    assert "'model'" in message and "hf download gpt2" in message


def test_pretrained_base_offline_names_base_source(offline, isolated_cache, tiny_gpt2_dir):
    source = "saelens:gpt2-small-mlp-out-v5-32k:blocks.{layer}.hook_mlp_out"
    message = fast(check_chapter, "04_sae_delta", "default", {"base_source": source, "finetuned": str(tiny_gpt2_dir), "ranks": [],
                                                             "model": str(tiny_gpt2_dir)})
    assert "'base_source'" in message and "Hub" in message


def test_cache_that_is_a_file_or_read_only_is_refused_before_training(tmp_path, monkeypatch):
    afile = tmp_path / "cache-file"
    afile.write_text("")
    monkeypatch.setenv("MECHLIB_CACHE", str(afile))
    message = fast(check_chapter, "01_baseline", "default")
    assert "MECHLIB_CACHE" in message and "is a file" in message
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        monkeypatch.setenv("MECHLIB_CACHE", str(ro))
        assert "not writable" in fast(check_chapter, "03_finetune", "default")


def test_finetune_that_needs_training_checks_the_cache(isolated_cache):
    ro = isolated_cache / "finetuned"
    ro.write_text("")  # a file where the fine-tunes' folder goes: saving would fail after training
    message = fast(check_chapter, "03_finetune", "default", {"finetuned_name": "never-trained"})
    assert "'never-trained' must be trained" in message and "is a file" in message


def test_finetuned_must_derive_from_model(isolated_cache, tiny_gpt2_dir, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_gpt2_dir, other)
    (other / "mechlib_source.json").write_text(json.dumps({"base": "somewhere-else"}))
    message = fast(check_chapter, "04_sae_delta", "default", {"model": str(tiny_gpt2_dir), "finetuned": str(other), "ranks": []})
    assert "'finetuned'" in message and "somewhere-else" in message


def test_the_library_itself_names_the_context_limit(tiny_model):
    problems = data.make_problems(["*"], ["3x3"], 2, "qa", seed=0)  # 48-position tiny model
    with pytest.raises(ValueError, match="context is 48"):
        evaluate(tiny_model, problems, max_new_tokens=30)


def test_every_chapter_checks_its_model_before_a_kernel_starts(tmp_path):
    """A model that does not exist fails every chapter's check, naming the parameter."""
    for chapter in chapters.names():
        with pytest.raises(ParamError, match="'model'"):
            check_chapter(chapter, "tiny", {"model": str(tmp_path / "no-such-model")})


@pytest.mark.parametrize("chapter", ["03_finetune", "06_tool_use"])
def test_an_unknown_pretrained_model_is_named_before_any_training(chapter, offline, isolated_cache):
    message = fast(check_chapter, chapter, "tiny", {"real_model": "no-such-org/no-such-model"})
    assert "'real_model'" in message


def test_a_speak_prompt_longer_than_a_real_models_context_is_refused_before_it_loads():
    """Counting a prompt's tokens reads the real model's tokenizer (from its GGUF when the cache
    is empty: seconds), never its weights: refused long before the real part's minutes."""
    start = time.time()
    with pytest.raises(ParamError) as err:
        check_chapter("02_layers", "default", {"speak_prompts": ["7+8=", "1+1=" * 1500]})
    assert time.time() - start < 60
    message = str(err.value)
    assert "'speak_prompts', item 1" in message and "context of 2,048" in message and len(message) < 400


def test_neuron_counts_above_a_real_models_mlp_are_refused_up_front():
    message = fast(check_chapter, "05_circuits", "default", {"real_neuron_counts": [8, 5000]})
    assert "'real_neuron_counts'" in message and "1,536 neurons per MLP" in message


@pytest.mark.parametrize("how", ["a file", "read-only", "full"])
def test_a_cache_that_cannot_take_a_real_model_is_refused_up_front(tmp_path, monkeypatch, how):
    """Real-model work that must write into the cache checks it before any model loads."""
    import collections
    import shutil

    root = tmp_path / "cache"
    if how == "a file":
        root.write_text("not a folder")
    elif how == "read-only":
        root.mkdir()
        monkeypatch.setattr("tempfile.NamedTemporaryFile", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    else:
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    monkeypatch.setenv("MECHLIB_CACHE", str(root))
    message = fast(check_chapter, "01_baseline", "default", {"real_models": ["smollm2-135m-instruct"]})
    assert ("'real_models'" in message or "'model' = 'arith-organism' must be trained" in message) and str(root) in message
    assert {"a file": "is a file", "read-only": "not writable", "full": "GB free"}[how] in message
