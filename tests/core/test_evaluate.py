import pandas as pd
import torch

from mechlib.core import data
from mechlib.core.evaluate import accuracy_table, answer_scores, error_table, evaluate, generate_one_by_one, greedy_decode
from mechlib.core.organism import OrganismRecipe, split_pairs

PROMPTS = ["1+2=", "12+34=", "7*8=", "99-9=", "123+456=", "5+5="]


def per_example_greedy(model, prompt, n):
    """The slow reference: one prompt at a time, no batching."""
    tokens = model.to_tokens(prompt)
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = model(tokens)[0, -1].argmax()
            if nxt.item() == model.tokenizer.eos_token_id:
                break
            new.append(nxt.item())
            tokens = torch.cat([tokens, nxt.view(1, 1)], 1)
    return model.tokenizer.decode(new)


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    want = [per_example_greedy(tiny_model, p, 5).split("\n")[0] for p in PROMPTS]
    cached = greedy_decode(tiny_model, PROMPTS, max_new_tokens=5, batch_size=2)
    recomputed = greedy_decode(tiny_model, PROMPTS, max_new_tokens=5, batch_size=2, forward=tiny_model)
    assert cached == want
    assert recomputed == want


def test_batched_greedy_equals_transformer_lens_generate(organism):
    ds = data.make_problems(["+", "-"], ["1x1", "2x2", "3x3"], 5, seed=1)
    prompts = ds["prompt"]
    got = greedy_decode(organism, prompts, max_new_tokens=6)
    assert got == generate_one_by_one(organism, prompts, max_new_tokens=6)
    assert sum(g != "" for g in got) > len(got) // 2


def test_answer_scores_match_the_logits(tiny_model):
    prompts, targets = ["12+34=", "3+4="], ["46", "7"]
    scores = answer_scores(tiny_model, prompts, targets)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        tokens = tiny_model.to_tokens(p + t)
        n = len(t)
        with torch.no_grad():
            logp = tiny_model(tokens)[0, -n - 1 : -1].log_softmax(-1)
        tgt = tokens[0, -n:]
        tok_logp = logp[range(n), tgt]
        assert abs(scores.answer_loss[i] - (-tok_logp.mean().item())) < 1e-5
        assert abs(scores.p_first[i] - tok_logp[0].exp().item()) < 1e-5
        assert scores.tf_correct[i] == bool((logp.argmax(-1) == tgt).all())


def test_evaluate_scores_and_aggregates(tiny_model):
    ds = data.make_problems(["+", "*"], ["1x1", "1x2"], 4, seed=0)
    res = evaluate(tiny_model, ds)
    assert len(res) == len(ds)
    assert {"output", "pred", "error", "correct"} <= set(res.columns)
    acc = accuracy_table(res)
    assert list(acc.index) == ["*", "+"] and list(acc.columns) == ["1x1", "1x2"]
    shares = error_table(res)
    assert (shares.sum(axis=1).round(6) == 1).all()


def test_organism_solves_its_heldout_problems(organism):
    _, held = split_pairs(OrganismRecipe())
    ds = pd.DataFrame([data.problem_row(a, "+", b, "bare") for a, b in held.tolist()])
    res = evaluate(organism, ds)
    assert len(res) > 900
    assert res.correct.mean() >= 0.99


def test_organism_fails_untaught_skills_in_describable_ways(organism):
    ds = data.make_problems(["-", "*"], ["2x2"], 100, seed=0)
    res = evaluate(organism, ds)
    assert res.correct.mean() < 0.2
    from mechlib.core.taxonomy import ERROR_CLASSES

    assert set(res.error) <= set(ERROR_CLASSES)
    # asked to subtract or multiply, the organism mostly answers another operation's result (the sum, or near it)
    assert res.error.isin(["wrong_operation", "near_wrong_operation"]).mean() > 0.5
