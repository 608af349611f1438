"""Every chapter runs: on the organism through papermill with params/tiny.yaml, and with
its GPT-2 parameter set on a GPT-2-shaped model with GPT-2's real BPE tokenizer."""
import contextlib
import os
import re
from pathlib import Path

import nbformat
import pytest

from mechlib import chapters
from mechlib.book import build, execute
from mechlib.core import layer_study as layers_study
from mechlib.core.interventions import parse_corruptions
from mechlib.views.real_circuit_views import REAL_KEYS as REAL_CIRCUIT_KEYS

ROOT = Path(__file__).resolve().parents[2]
GLUE = re.compile(r"\{glue:(?:text|md)\}`([^`:]+)")


def glue_names(chapter: str) -> set[str]:
    nb = nbformat.read(ROOT / "chapters" / f"{chapter}.ipynb", as_version=4)
    return {m for c in nb.cells if c.cell_type == "markdown" for m in GLUE.findall(c.source)}


@contextlib.contextmanager
def cache_at(root: Path):
    """MECHLIB_CACHE pointed at ``root`` for a whole module (monkeypatch is per test)."""
    old = os.environ.get("MECHLIB_CACHE")
    os.environ["MECHLIB_CACHE"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MECHLIB_CACHE")
        else:
            os.environ["MECHLIB_CACHE"] = old


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One cache for the module, so chapter 4 finds chapter 3's tiny fine-tune."""
    from mechlib.core.organism import ensure_organism

    organism = ensure_organism(progress=False)
    root = tmp_path_factory.mktemp("cache")
    (root / "models").mkdir()
    (root / "models" / organism.name).symlink_to(organism)
    with cache_at(root):
        yield root


@pytest.mark.slow
@pytest.mark.parametrize("chapter", chapters.names())
def test_every_chapter_executes_on_the_tiny_set_and_fills_its_glue(chapter, tiny_cache, tmp_path, monkeypatch, request):
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    overrides = {}
    if chapter == "06_tool_use":  # its pretrained part on a small Gemma-shaped model, in its own process as in the book
        overrides = {"real_model": str(request.getfixturevalue("gemma_shaped_dir")), "real_steps": 2, "real_lora_batch_size": 4,
                     "real_n_per_operator": 2, "real_workers": 2, "real_delta_n_eval": 3, "real_delta_n_train": 4,
                     "real_delta_base_width": 32, "real_delta_n_tokens": 400}
    if chapter == "05_circuits":  # part 3 on a small Llama-shaped model (random weights: any pair)
        overrides = {"real_models": [str(request.getfixturevalue("llama_shaped_dir"))], "real_correct_only": False, "real_n_pairs": 6,
                     "real_ig_steps": 2, "real_top_k": [2, 4], "real_neuron_counts": [2], "real_workers": 1}
    out = execute.execute_chapter(chapter, "tiny", overrides, out_dir=tmp_path / "out")
    glued = build.glued_values(out)
    missing = glue_names(chapter) - set(glued)
    assert not missing, f"{chapter}: prose refers to numbers the run did not glue: {sorted(missing)}"
    if overrides:
        assert not any(str(glued[k]).startswith("Not measured") for k in glued if k.startswith(("real_tool_", "real_delta_")))
        assert chapter != "05_circuits" or not any(str(glued[k]).startswith("Not measured") for k in REAL_CIRCUIT_KEYS)
    errors = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert list((tmp_path / "runs" / chapter).glob("*.json"))


# GPT-2 parameter sets with every size made tiny (the rest is params/gpt2-small.yaml). Chapter 4's
# pretrained SAELens base needs the Hub, so it trains its base here.
TINY_GPT2 = {
    "01_baseline": {"n_per_cell": 4, "real_n_per_cell": 3, "real_n_shared": 2, "pool_seeds": [0, 1], "real_workers": 1},
    "02_layers": {"n_per_cell": 3, "difficulties": ["1x1", "2x2"], "max_new_tokens": 6, "real_n_per_cell": 2, "real_operators": ["+"],
                  "speak_prompts": ["7+8="]},
    "03_finetune": {"steps": 4, "lora_batch_size": 8, "eval_every": 2, "finetuned_name": "tiny-gpt2-lora-mul", "difficulties": ["1x1", "1x2"]},
    "04_sae_delta": {"finetuned": "tiny-gpt2-lora-mul", "ranks": [], "base_source": "train", "base_width": 64, "base_k": 8,
                     "n_train_per_cell": 8, "n_val_per_cell": 4, "n_eval_per_cell": 4, "n_tokens": 200,
                     "batch_tokens": 64, "buffer_tokens": 256, "layers": [0, 11], "delta_widths": [8], "delta_ks": [2],
                     "alphas": [0, 1]},
    "05_circuits": {"programs": ["hist"], "n_tracr": 6, "ig_steps": 2, "n_random": 10, "families": ["units_nocarry", "tens_nocarry"],
                    "n_pairs": 4, "top_k": [5], "real_models": []},
    "06_tool_use": {"steps": 4, "lora_batch_size": 8, "eval_every": 2, "finetuned_name": "tiny-gpt2-lora-tool", "difficulties": ["1x1"],
                    "n_eval_per_cell": 3, "n_train_per_cell": 6, "n_val_per_cell": 3, "n_tokens": 200, "batch_tokens": 64,
                    "buffer_tokens": 256, "layers": [0, 11], "base_width": 64, "base_k": 8, "delta_widths": [8], "delta_ks": [2],
                    "alphas": [0, 1], "dictionary_seeds": [], "n_latents": 2, "n_base_latents": 1},
}


@pytest.fixture(scope="module")
def gpt2_results(gpt2_shaped_dir, tmp_path_factory):
    """Each chapter's run and findings with the GPT-2 set on the GPT-2-shaped model."""
    out = {}
    with cache_at(tmp_path_factory.mktemp("gpt2-cache")):
        for chapter in chapters.names():
            mod = chapters.module(chapter)
            real = chapter in ("01_baseline", "02_layers")
            shaped = {"model": str(gpt2_shaped_dir), "device": "cpu"} | ({"real_models": [str(gpt2_shaped_dir)]} if real else {})
            params = mod.Params.from_set("gpt2-small", {**TINY_GPT2[chapter], **shaped})
            result = mod.run(params)
            out[chapter] = (params, result, mod.findings(result))
        yield out


@pytest.mark.slow
@pytest.mark.parametrize("chapter", chapters.names())
def test_every_chapter_runs_its_gpt2_set_on_a_gpt2_shaped_model(chapter, gpt2_results):
    params, result, found = gpt2_results[chapter]
    assert params.prompt_format == "qa"
    missing = glue_names(chapter) - set(build_flat(found)) - {"run_seconds", "train_seconds", "sweep_seconds"}
    assert not missing, f"{chapter}: findings lack {sorted(missing)}"


def build_flat(found: dict) -> dict:
    from mechlib.views.narrative import flatten

    return flatten(found)


@pytest.mark.slow
def test_gpt2_baseline_scores_bpe_answers(gpt2_results):
    """Random weights: answers are BPE text, parsed and classified, never crashing."""
    _, result, found = gpt2_results["01_baseline"]
    res = result.results
    assert len(res) == found["n_problems"] > 0
    assert set(res["error"]) <= set(__import__("mechlib.core.taxonomy", fromlist=["x"]).ERROR_CLASSES)
    assert (res["correct"] == (res["pred"] == res["answer"])).all()  # a BPE answer is right exactly when its parsed number is
    assert (res.loc[res["correct"], "error"] == "correct").all() and (res.loc[~res["correct"], "error"] != "correct").all()


# The real-model sets (params/smollm2.yaml, params/gemma3.yaml) with every size made tiny, on small
# random models of the same family with the real tokenizers: SmolLM2's and Gemma 3's code paths
# (grouped-query attention, digit-split answers, BOS or none, Gemma's 262,144-token vocabulary).
TINY_REAL = {
    "01_baseline": {"n_per_cell": 4, "real_n_per_cell": 3, "real_n_shared": 2, "pool_seeds": [0, 1]},
    "02_layers": {"n_per_cell": 3, "difficulties": ["1x1"], "corruptions": ["none", "skip:*", "skip_first:2", "repeat:1x2", "ablate:mlp0:mean"],
                  "generation_corruptions": ["none", "skip:0"], "max_new_tokens": 4, "real_n_per_cell": 2, "real_operators": ["+"],
                  "speak_prompts": ["7+8="]},
    "03_finetune": {"steps": 4, "lora_batch_size": 8, "eval_every": 2},
}


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real_set_results(request, llama_shaped_dir, gemma_shaped_dir, tmp_path_factory):
    from mechlib.chapters.base import load_param_set

    shaped = llama_shaped_dir if request.param == "smollm2" else gemma_shaped_dir
    out = {}
    with cache_at(tmp_path_factory.mktemp(f"{request.param}-cache")):
        # Gemma's 262,144-token vocabulary makes every step slow: its set runs chapters 1-2 here; its
        # LoRA path is tested in tests/core/test_families.py, and the others on the Llama-shaped model
        covered = load_param_set(request.param)["covers"]
        for chapter in covered if request.param == "smollm2" else covered[:2]:
            mod = chapters.module(chapter)
            extra = {"finetuned_name": f"tiny-{request.param}-lora-mul", "real_model": str(shaped), "real_steps": 2,
                     "real_lora_batch_size": 4, "real_n_per_cell": 2, "real_workers": 1} if chapter == "03_finetune" else {}
            extra |= {"real_models": [str(shaped)]} if chapter in ("01_baseline", "02_layers") else {}
            params = mod.Params.from_set(request.param, {**TINY_REAL[chapter], **extra, "model": str(shaped), "device": "cpu"})
            result = mod.run(params)
            out[chapter] = (params, result, mod.findings(result))
        yield request.param, out


@pytest.mark.slow
def test_real_model_sets_run_on_shaped_models_and_fill_their_glue(real_set_results):
    name, out = real_set_results
    assert set(out) == ({"01_baseline", "02_layers", "03_finetune"} if name == "smollm2" else {"01_baseline", "02_layers"})
    for chapter, (_, _, found) in out.items():
        missing = glue_names(chapter) - set(build_flat(found)) - {"run_seconds", "train_seconds", "sweep_seconds"}
        assert not missing, f"{name} {chapter}: findings lack {sorted(missing)}"
    res = out["01_baseline"][1].results
    assert (res["kind"] == "pretrained").all() and len(res) == out["01_baseline"][2]["n_problems"] > 0
    real = out["01_baseline"][1].real
    chat = {"chat"} if name == "smollm2" else set()  # SmolLM2's tokenizer ships a chat template, Gemma 3 270M's does not
    assert set(real.format) == {"bare", "fewshot", "qa"} | chat and set(real.model) == {out["01_baseline"][0].real_models[0]}
    if "03_finetune" in out:  # the pretrained-model part, on the same shaped model
        _, result, found = out["03_finetune"]
        assert set(result.real["results"].model) == {"before, few-shot", "before, bare", "after, bare"}
        assert "Not measured" not in found["real_new_text"] and found["real_source_text"]
    if "02_layers" in out:
        lens = out["02_layers"][1].lens
        assert len(lens) and lens["p_first"].between(0, 1).all()
        real = out["02_layers"][1].real
        depth = int(real["scores"].n_layers.iloc[0])
        assert set(real["scores"].corruption) == {c.spec for c in parse_corruptions(layers_study.depth_specs(depth), depth)}
