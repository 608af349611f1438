import dataclasses

import pytest
import torch
from transformers import GPT2LMHeadModel

from mechlib.core import data
from mechlib.core import lora as finetune
from mechlib.core.models import load_model


@pytest.fixture(scope="module")
def recipe(tiny_gpt2_dir):
    return finetune.FinetuneRecipe(
        base=str(tiny_gpt2_dir), operators=("-",), difficulties=("1x1", "1x2"), replay_operators=("+",),
        steps=6, batch_size=16, eval_every=3, rank=4, alpha=8,
    )


@pytest.fixture(scope="module")
def trained(recipe):
    return finetune.train(recipe, progress=False)


def test_only_the_adapters_train(tiny_gpt2_dir, recipe):
    model = finetune.lora_model(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir), recipe)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_training_changes_only_the_targeted_weights(tiny_gpt2_dir, trained):
    base = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).state_dict()
    merged = trained[0].state_dict()
    assert set(base) == set(merged)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed, "fine-tuning changed nothing"
    assert all(k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for k in changed), changed


def test_merged_model_equals_adapter_model(tiny_gpt2_dir, recipe):
    torch.manual_seed(1)
    model = finetune.lora_model(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir), recipe).eval()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)  # make the adapters matter
    ids = torch.tensor([[1, 5, 6, 76, 7, 8, 84]])
    with torch.no_grad():
        adapter = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    assert torch.allclose(adapter, merged, atol=1e-5)


def test_heldout_is_disjoint_in_both_operand_orders():
    problems = finetune.all_problems(["+", "-"], ["1x1", "1x2", "2x2"], "bare")
    train, held = finetune.split_heldout(problems, 0.1, seed=0)
    key = lambda df: {data.pair_key(a, op, b) for a, op, b in zip(df.a, df.op, df.b)}
    assert len(held) > 100 and not key(train) & key(held)
    flipped = {(op, b, a) for a, op, b in zip(held.a, held.op, held.b)}
    assert not flipped & set(zip(train.op, train.a, train.b))


def test_history_and_determinism(recipe, trained):
    merged, _, history, split = trained
    assert list(history.step) == list(range(0, recipe.steps + 1))
    assert history.dropna(subset=["heldout_acc_new"]).step.tolist() == [0, 3, 6]
    again = finetune.train(recipe, progress=False)
    assert again[2].equals(history)
    for k, v in merged.state_dict().items():
        assert torch.equal(v, again[0].state_dict()[k])


def test_save_then_load_by_name_gives_the_same_logprobs(trained, recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path))
    merged, tok, history, split = trained
    path = finetune.save_finetuned(merged, tok, history, split, recipe, "tiny-lora-sub")
    assert finetune.is_current("tiny-lora-sub", recipe)
    assert len(finetune.load_heldout(path)) == len(split["heldout_new"]) + len(split["heldout_old"])
    model, tokenizer = load_model("tiny-lora-sub", device="cpu")
    ids = tokenizer(["57-23=34"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = merged(ids).logits.log_softmax(-1)
        got = model(ids).log_softmax(-1)
    assert (ref - got).abs().max() < 1e-4


def test_bad_recipe_values_are_named():
    with pytest.raises(ValueError, match="replay_fraction"):
        dataclasses.replace(finetune.FinetuneRecipe(), replay_fraction=1.5).validate()
    with pytest.raises(ValueError, match="operators"):
        dataclasses.replace(finetune.FinetuneRecipe(), operators=("/",)).validate()


def test_empty_replay_operators_train(tiny_gpt2_dir):
    """replay_operators=[] used to crash: np.array([]) is a float array and ~ fails on it."""
    recipe = finetune.FinetuneRecipe(base=str(tiny_gpt2_dir), operators=("-",), difficulties=("1x1",), replay_operators=(),
                                     steps=2, batch_size=8, eval_every=1, rank=2, alpha=4)
    merged, _, history, split = finetune.train(recipe, progress=False)
    assert len(split["train_old"]) == 0 and "heldout_acc_old" not in history
    assert history.heldout_acc_new.notna().sum() == 3


def test_recipe_bounds_are_the_chapter_bounds():
    from mechlib.chapters import finetune as chapter

    for name, (lo, hi) in finetune.BOUNDS.items():
        field = "lora_batch_size" if name == "batch_size" else name
        check = next(f for f in __import__("dataclasses").fields(chapter.Params) if f.name == field).metadata["check"]
        assert check.bounds == (lo, hi), name


def test_cache_key_covers_code_version_and_tokenizer(tiny_gpt2_dir, monkeypatch):
    recipe = finetune.FinetuneRecipe(base=str(tiny_gpt2_dir))
    key = recipe.key()
    monkeypatch.setattr(finetune, "TRAINING_CODE_VERSION", finetune.TRAINING_CODE_VERSION + 1)
    assert recipe.key() != key
    monkeypatch.undo()
    from mechlib.core import organism

    organism_key = organism.OrganismRecipe().key()
    monkeypatch.setattr(organism, "TRAINING_CODE_VERSION", organism.TRAINING_CODE_VERSION + 1)
    assert organism.OrganismRecipe().key() != organism_key


def test_training_curve_metric_agrees_with_greedy_exact_match_when_answers_end_in_a_newline(tiny_gpt2_dir):
    """A model that ends answers with a newline (as pretrained GPT-2 does) must not score 0."""
    from mechlib.core.organism import encode_supervised

    tok = load_model(str(tiny_gpt2_dir), device="cpu")[1]
    problems = data.make_problems(["+"], ["1x1"], 100, seed=0).to_pandas().head(12)
    nl = tok.convert_tokens_to_ids("\n")
    ids, mask, labels = encode_supervised(tok, problems.prompt.tolist(), problems.target.tolist())

    class Rigged(torch.nn.Module):
        """Answers every problem exactly, then a newline instead of end-of-text."""

        def forward(self, input_ids, attention_mask=None, **_):
            logits = torch.zeros(*input_ids.shape, len(tok))
            for r in range(len(input_ids)):
                row = labels[r].tolist()
                for t in range(input_ids.shape[1] - 1):
                    nxt = row[t + 1]
                    logits[r, t, nl if nxt == tok.eos_token_id else max(nxt, 0)] = 10.0
            return type("Out", (), {"logits": logits})()

    continues = finetune.continuation_tokens(tok)
    assert finetune.teacher_forced_accuracy(Rigged(), ids, mask, labels, continues).all()
    assert not finetune.teacher_forced_accuracy(Rigged(), ids, mask, labels).any()  # strict: EOS required
    assert not continues[nl] and continues[tok.convert_tokens_to_ids("7")]


def test_replayed_organism_skill_is_scored_on_the_organisms_own_heldout_pairs():
    from mechlib.core.organism import OrganismRecipe, split_pairs

    problems = finetune.all_problems(["+"], ["1x1", "1x2", "2x2"], "bare")
    fixed = finetune.base_heldout("arith-organism")
    train, held = finetune.split_heldout(problems, 0.1, seed=0, fixed=fixed)
    _, organism_held = split_pairs(OrganismRecipe())
    organism_keys = {data.pair_key(int(a), "+", int(b)) for a, b in organism_held.tolist()}
    assert {data.pair_key(a, op, b) for a, op, b in zip(held.a, held.op, held.b)} == organism_keys
    assert not {data.pair_key(a, op, b) for a, op, b in zip(train.a, train.op, train.b)} & organism_keys


def test_tool_recipes_target_calls_and_leave_older_keys_alone(tiny_gpt2_dir, recipe):
    problems = data.make_problems(["*"], ["1x2"], 3, "bare", seed=0).to_pandas()
    calls = finetune.as_calls(problems)
    assert calls.target.tolist() == [f"[{a}*{b}]" for a, b in zip(problems.a, problems.b)]
    qa = finetune.as_calls(data.make_problems(["*"], ["1x1"], 2, "qa", seed=0).to_pandas(), "long")
    assert qa.target.str.startswith(" <tool_call>calculator(").all()
    tool = dataclasses.replace(recipe, task="tool", train_positions=True)
    assert tool.key() != recipe.key() and dataclasses.replace(tool, task="answer", train_positions=False).key() == recipe.key()
    model = finetune.lora_model(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir), tool)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("wpe" in n for n in trainable) and not any("wte" in n for n in trainable)
    from mechlib.core.char_tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    ids = finetune.call_token_ids(tok, "short")
    assert tok.convert_ids_to_tokens(ids) == sorted("[]+-*/", key=lambda c: tok.convert_tokens_to_ids(c))
    model = finetune.lora_model(GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir), tool, tok)
    assert any("wte" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="task"):
        dataclasses.replace(recipe, task="calc").validate()


def test_a_name_holding_another_recipe_is_refused_not_overwritten(tmp_path, monkeypatch):
    """Chapter 6 once overwrote chapter 3's 1600-step fine-tune with a 20-step tool fine-tune
    under the same name; chapter 4 then read the wrong weights."""
    import json

    from mechlib.chapters import finetune as chapter3
    from mechlib.chapters.base import ParamError
    from mechlib.core import lora as ft

    monkeypatch.setenv("MECHLIB_CACHE", str(tmp_path))
    first = finetune.FinetuneRecipe(steps=1600)
    folder = ft.finetuned_dir("shared-name")
    folder.mkdir(parents=True)
    (folder / "mechlib_source.json").write_text(json.dumps({"base": first.base, "recipe": __import__("dataclasses").asdict(first),
                                                            "recipe_key": "stale-key"}))
    ft.check_name_free("shared-name", first)  # the same recipe (only the key is stale) may be retrained
    other = finetune.FinetuneRecipe(steps=20, task="tool")
    with pytest.raises(ValueError, match=r"'shared-name' already holds a fine-tune of another recipe \(steps: cached 1600, asked 20; "
                                         r"task: cached 'answer', asked 'tool'\)"):
        ft.ensure_finetuned(other, "shared-name")
    assert json.loads((folder / "mechlib_source.json").read_text())["recipe"]["steps"] == 1600  # untouched
    with pytest.raises(ParamError, match="'finetuned_name'.*already holds a fine-tune of another recipe"):
        chapter3.check(chapter3.Params(finetuned_name="shared-name", steps=20, device="cpu"))


def test_a_shipped_bases_cache_key_is_its_gguf_hash(monkeypatch):
    """A fine-tune of a shipped GGUF model is keyed on the file's hash: a new release never
    reuses weights trained on the old one."""
    import dataclasses

    from mechlib.core import shipped

    recipe = finetune.FinetuneRecipe(base="smollm2-135m-instruct", operators=("*",), replay_operators=("+",))
    key = recipe.key()
    real = shipped.SHIPPED["smollm2-135m-instruct"]
    monkeypatch.setitem(shipped.SHIPPED, real.name, dataclasses.replace(real, sha256="0" * 64))
    assert recipe.key() != key


def test_the_curve_scores_a_fixed_random_sample_of_each_cell():
    problems = finetune.all_problems(["*"], ["1x1", "2x2"], "bare")
    drawn = finetune.curve_rows(problems, 5)
    assert drawn.groupby("difficulty").size().to_dict() == {"1x1": 5, "2x2": 5}
    assert drawn.equals(finetune.curve_rows(problems, 5))
    assert drawn[drawn.difficulty == "2x2"].a.nunique() > 1  # not the first rows of an operand-ordered cell
    assert finetune.curve_rows(problems, 0) is problems
    with pytest.raises(ValueError, match="curve_per_cell"):
        finetune.FinetuneRecipe(curve_per_cell=-1).validate()


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "llama_shaped_dir", "gemma_shaped_dir"])
def test_the_answer_only_loss_equals_the_models_own_loss(fixture, request):
    """Logits only where a label is predicted (before the unembedding), yet the same loss, and
    the same gradients on the adapters, as the model's ``labels=`` loss over every position."""
    from mechlib.core.models import load_hf
    from mechlib.core.organism import encode_supervised

    path = request.getfixturevalue(fixture)
    hf, tok, _ = load_hf(str(path))
    ids, mask, labels = encode_supervised(tok, ["3+4=", "12+30=", "Request: copy 5 6\nResponse:"], ["7", "42", " 5 6"], bos=False)
    model = finetune.lora_model(hf, finetune.FinetuneRecipe(base=str(path), operators=("+",), rank=2, alpha=4))
    with torch.no_grad():  # adapters start at zero: perturb them so their gradients differ from the base's
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    grads = []
    for loss_fn in (lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss, lambda: finetune.answer_loss(model, ids, mask, labels)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(grads[0][1], grads[1][1]))


def test_request_recipes_validate_their_operators_and_name_their_task(llama_shaped_dir):
    r = finetune.FinetuneRecipe(base=str(llama_shaped_dir), operators=("*", "/"), replay_operators=(), task="requests", call_style="long")
    assert r.validate() is r and finetune.default_name(r).endswith("-lora-tool")
    train_new, held_new, train_old, held_old = finetune.splits(r)
    assert set(train_new.op) == {"*", "/"} and set(held_old.op) == {"copy"} and train_new.target.str.contains("<tool_call>").all()
    with pytest.raises(ValueError, match="operators must be .*calculator requests"):
        finetune.FinetuneRecipe(base=str(llama_shaped_dir), operators=("%",), task="requests").validate()
    with pytest.raises(ValueError, match="task 'chat' must be one of"):
        finetune.FinetuneRecipe(task="chat").validate()
