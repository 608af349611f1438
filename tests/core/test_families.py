"""The model-family layer on small random Llama- and Gemma-3-shaped models with the real
SmolLM2 and Gemma 3 tokenizers: conversion, BOS, answer digits, ablation means, LoRA targets."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechlib.core import circuit_graph as cg
from mechlib.core import families
from mechlib.core.evaluate import answer_scores, encode, first_digit_offsets, greedy_decode
from mechlib.core.interventions import mean_activations
from mechlib.core.models import load_model, model_spec


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def shaped(request, llama_shaped_dir, gemma_shaped_dir):
    path = llama_shaped_dir if request.param == "llama" else gemma_shaped_dir
    hooked, _ = load_model(str(path), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    return request.param, path, hooked, hf, AutoTokenizer.from_pretrained(path)


PROMPTS = ["12+34=", "Q: What is 26 plus 92? A:", "1 + 3 = 4\n4 + 5 = 9\n2 + 3 =", "7*8="]


def test_the_family_is_found_from_the_config(shaped):
    name, path, hooked, hf, _ = shaped
    assert families.family_of_config(hf.config).name == name == families.family_of_hooked(hooked).name
    assert model_spec(str(path)).family == name and model_spec(str(path)).n_layers == 3
    assert families.additive_heads(hooked) == (name == "llama")


def test_transformer_lens_equals_hf_on_padded_batches(shaped):
    """Right-padded batch, attention mask: log-probs at every real position within 1e-4."""
    from mechlib.core.parity import parity

    _, _, hooked, hf, _ = shaped
    check = parity(hooked, hf, PROMPTS)
    assert check["max_logprob_diff"] < 1e-4 and check["argmax_agree"] == 1.0 and check["n_prompts"] == len(PROMPTS)


def test_bos_follows_the_models_own_tokenizer(shaped):
    """Gemma's tokenizer adds <bos> and the model sees it; SmolLM2's adds none and the model sees none."""
    name, _, hooked, _, tok = shaped
    first = encode(hooked, ["3+4="])[0][0]
    assert (first == tok.bos_token_id) == (name == "gemma3")
    assert encode(hooked, ["3+4="])[0] == tok("3+4=")["input_ids"]


def test_greedy_decode_equals_hf_generate(shaped):
    _, _, hooked, hf, tok = shaped
    ours = greedy_decode(hooked, PROMPTS, max_new_tokens=5, stop_at_newline=False)
    for prompt, got in zip(PROMPTS, ours):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert got == tok.decode(new, skip_special_tokens=True)


def test_first_answer_digit_skips_the_space_token(shaped):
    """Both tokenizers split ' 46' into a space and one token per digit: the digit is second."""
    _, _, hooked, _, tok = shaped
    targets = [" 46", "46", " -5", ""]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in targets]
    assert tok.decode(ids[0][:1]).strip() == ""
    assert first_digit_offsets(tok, ids).tolist() == [1, 0, 2 if len(ids[2]) == 3 else 1, 0]
    scores = answer_scores(hooked, ["Q: What is 12 plus 34? A:"], [" 46"])
    with torch.no_grad():
        tokens = torch.tensor([encode(hooked, ["Q: What is 12 plus 34? A:"])[0] + ids[0]])
        logp = hooked(tokens).log_softmax(-1)[0]
    plen = tokens.shape[1] - len(ids[0])
    assert scores.p_first[0] == pytest.approx(logp[plen, ids[0][1]].exp().item(), rel=1e-5)  # p('4' | prompt, ' ')


def test_mean_ablation_averages_real_tokens_without_bos(shaped):
    name, _, hooked, _, tok = shaped
    prompts = ["1+2=", "33+4=", "5*6="]
    means = mean_activations(hooked, prompts, [("mlp", 1)])["blocks.1.hook_mlp_out"]
    rows = []
    for p in prompts:
        ids = torch.tensor([encode(hooked, [p])[0]])
        _, cache = hooked.run_with_cache(ids, names_filter="blocks.1.hook_mlp_out")
        act = cache["blocks.1.hook_mlp_out"][0]
        rows.append(act[1:] if ids[0, 0] == tok.bos_token_id else act)
    assert torch.allclose(means, torch.cat(rows).mean(0), atol=1e-5)


def test_circuit_graph_takes_grouped_query_attention_and_refuses_gemmas_post_norm(shaped):
    name, _, hooked, _, _ = shaped
    tokens = torch.tensor([encode(hooked, ["12+34="])[0]] * 2)
    if name == "gemma3":
        with pytest.raises(NotImplementedError, match="post-attention RMSNorm"):
            cg.prepare(hooked)
        return
    g = cg.graph_of(hooked)
    task = cg.Task(tokens=tokens, metric=lambda logits: logits[:, -1, 0] - logits[:, -1, 1], corrupt=tokens.flip(0))
    eap = cg.eap_scores(hooked, task, "zero")
    assert eap.shape == (len(g.edges),) and np.isfinite(eap).all() and (eap > 0).any()
    hooked.set_use_split_qkv_input(False)
    hooked.set_use_hook_mlp_in(False)
    hooked.set_ungroup_grouped_query_attention(False)


def test_lora_targets_come_from_the_family_and_a_merge_changes_only_block_weights(shaped):
    from mechlib.core.lora import FinetuneRecipe, lora_model

    name, path, _, hf, tok = shaped
    recipe = FinetuneRecipe(base=str(path), rank=2, alpha=4)
    assert recipe.targets() == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    fresh = AutoModelForCausalLM.from_pretrained(path)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    peft_model = lora_model(fresh, recipe, tok)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == set(recipe.targets())
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged = peft_model.merge_and_unload().state_dict()
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert changed and all(".layers." in k and k.split(".")[-2] in recipe.targets() for k in changed)
    with pytest.raises(ValueError, match="no learned position embeddings"):
        lora_model(AutoModelForCausalLM.from_pretrained(path), FinetuneRecipe(base=str(path), train_positions=True), tok)


def test_an_unknown_model_type_names_the_known_ones():
    with pytest.raises(ValueError, match="known:.*gemma3_text.*gpt2.*llama"):
        families.family_of("mamba")
    assert families.known_family("mamba") is None


def test_supervised_encoding_follows_the_familys_bos(shaped):
    from mechlib.core.organism import encode_supervised

    name, _, hooked, _, tok = shaped
    bos = families.family_of_hooked(hooked).starts_with_bos(tok)
    ids, _, labels = encode_supervised(tok, ["3+4="], ["7"], bos)
    assert ids[0, : len(encode(hooked, ["3+4="])[0])].tolist() == encode(hooked, ["3+4="])[0]
    assert pd.Series(labels[0].tolist()).ne(-100).sum() == 2  # the answer and EOS
