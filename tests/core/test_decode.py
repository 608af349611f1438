"""The shared-prefix cache and the read layout: the same answers and log-probs as the plain
path, on the organism-shaped GPT-2 and on small random Llama- and Gemma-3-shaped models,
clean and under every corruption kind."""
import pytest
import torch

from mechlib.core import data, decode
from mechlib.core.blocks import BlockOrder, cache_activations, read_layout
from mechlib.core.evaluate import answer_scores, encode, evaluate, greedy_decode
from mechlib.core.fewshot import with_examples
from mechlib.core.interventions import corrupted, mean_activations, parse_corruption
from mechlib.core.models import load_model

SHOTS = "12+34=46\n57+21=78\n3+45=48\n"
SUFFIXES = ["7+8=", "99+1=", "123+4=", "5*6=", "40-13=", "2+2=", "61+39="]
PROMPTS = [SHOTS + s for s in SUFFIXES]
TARGETS = ["15", "100", "127", "30", "27", "4", "100"]
CORRUPTIONS = ("none", "skip:1", "repeat:0x2", "permute", "ablate:attn1:mean", "ablate:mlp0:zero")  # permute: reversed


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma3"])
def shaped(request, tiny_gpt2_dir, llama_shaped_dir, gemma_shaped_dir):
    path = {"gpt2": tiny_gpt2_dir, "llama": llama_shaped_dir, "gemma3": gemma_shaped_dir}[request.param]
    model, _ = load_model(str(path), device="cpu")
    return model


def test_common_prefix_leaves_each_prompt_a_token_of_its_own():
    assert decode.common_prefix([[1, 2, 3], [1, 2, 4], [1, 2, 3, 5]]) == 2
    assert decode.common_prefix([[1, 2], [1, 2, 3]]) == 1  # the shorter prompt keeps its last token
    assert decode.common_prefix([[7, 8, 9]]) == 2 and decode.common_prefix([]) == 0
    assert decode.common_prefix([[1], [2]]) == 0
    assert decode.common_prefix([[1, 2, 3], [1, 2, 4]], at_least=3) == 0  # too short to be worth a forward


def test_prefix_then_suffix_gives_the_full_forwards_logits(shaped):
    """Rotary and learned positions continue after the cached prefix: the suffix's logits
    equal a full forward's at the same positions."""
    model = shaped
    ids = encode(model, PROMPTS[:3])
    n = decode.common_prefix(ids)
    assert n >= len(encode(model, [SHOTS])[0]) - 1  # the examples are shared
    forward = BlockOrder(model, range(model.cfg.n_layers))
    prefix = decode.prefill(forward, ids[0][:n])
    for row in ids:
        tokens = torch.tensor([row])
        cache = decode.slab_cache(model, model.cfg.n_layers, 1, len(row), prefix)
        with torch.no_grad():
            got = forward(tokens[:, n:], cache=cache)
            want = model(tokens)[:, n:]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec", CORRUPTIONS)
def test_shared_prefix_changes_no_answer_and_no_log_prob(shaped, spec):
    model = shaped
    n = model.cfg.n_layers
    spec = f"permute:{','.join(str(i) for i in reversed(range(n)))}" if spec == "permute" else spec
    corruption = parse_corruption(spec, n)
    means = mean_activations(model, PROMPTS, [(s, l) for s, l, m in corruption.ablations if m == "mean"])
    with corrupted(model, corruption, means) as forward:
        shared = greedy_decode(model, PROMPTS, 6, batch_size=3, forward=forward)
        plain = greedy_decode(model, PROMPTS, 6, batch_size=3, forward=forward, share_prefix=False)
        recomputed = greedy_decode(model, PROMPTS, 6, forward=lambda t: (forward or model)(t))
        scores = answer_scores(model, PROMPTS, TARGETS, batch_size=3, forward=forward)
        plain_scores = answer_scores(model, PROMPTS, TARGETS, batch_size=3, forward=forward, share_prefix=False)
    assert shared == plain == recomputed
    assert (scores.answer_loss - plain_scores.answer_loss).abs().max() < 1e-4
    assert (scores.p_first.map(torch.tensor).map(torch.log) - plain_scores.p_first.map(torch.tensor).map(torch.log)).abs().max() < 1e-4
    assert scores.tf_correct.equals(plain_scores.tf_correct)


def test_ragged_batches_answer_as_one_prompt_at_a_time(shaped):
    model = shaped
    batched = greedy_decode(model, PROMPTS, 5, batch_size=4)
    alone = [greedy_decode(model, [p], 5)[0] for p in PROMPTS]
    assert batched == alone


def test_the_slab_refuses_to_overflow(shaped):
    cache = decode.slab_cache(shaped, 1, 2, capacity=3)
    entry = cache[0]
    keys = torch.zeros(2, 3, *entry.keys.shape[2:])
    entry.append(keys, keys)
    with pytest.raises(ValueError, match="capacity 3"):
        entry.append(keys[:, :1], keys[:, :1])


def test_read_layout_changes_no_result(tiny_gpt2_dir, llama_shaped_dir):
    """Re-stored weights hold the same values and give bit-identical logits; the forward's
    view of each is contiguous (no copy per call)."""
    for path in (tiny_gpt2_dir, llama_shaped_dir):
        model, _ = load_model(str(path), device="cpu")
        tokens = torch.tensor(encode(model, PROMPTS[:2])[:1])
        with torch.no_grad():
            before = model(tokens)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            read_layout(model)
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            assert torch.equal(model(tokens), before)
        assert model.unembed.W_U.T.is_contiguous()
        assert model.blocks[0].attn.W_Q.permute(0, 2, 1).is_contiguous()


def test_activations_stop_after_the_last_block_asked_for(shaped):
    model = shaped
    tokens = torch.tensor(encode(model, PROMPTS[:1]))
    seen = []
    with model.hooks(fwd_hooks=[("unembed.hook_out", lambda x, hook: seen.append(hook.name))]):
        cache = cache_activations(model, tokens, ["blocks.0.hook_resid_post"])
    assert seen == [] and list(cache.keys()) == ["blocks.0.hook_resid_post"]
    _, full = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    assert torch.equal(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])


def test_groups_of_worked_examples_each_share_their_own_prefix(shaped):
    """Two operators, two blocks of examples: grouped decoding and scoring equal the plain path."""
    model = shaped
    problems = with_examples(data.make_problems(["+", "*"], ["1x1", "1x2"], 6, seed=3), k=2, seed=1)
    prompts, targets, groups = list(problems["prompt"]), list(problems["target"]), list(problems["shots"])
    group = decode.group_index(groups, len(prompts))
    prefixes = decode.group_prefixes(BlockOrder(model, range(model.cfg.n_layers)), encode(model, prompts), group, True)
    assert len(prefixes) == 2 and all(n >= decode.MIN_SHARED for n, _ in prefixes.values())
    grouped = greedy_decode(model, prompts, 4, batch_size=5, groups=groups)
    assert grouped == greedy_decode(model, prompts, 4, batch_size=5, share_prefix=False)
    assert evaluate(model, problems, max_new_tokens=4, batch_size=5)["output"].tolist() == grouped
    scores = answer_scores(model, prompts, targets, batch_size=5, groups=groups)
    plain = answer_scores(model, prompts, targets, batch_size=5, share_prefix=False)
    assert (scores.answer_loss - plain.answer_loss).abs().max() < 1e-4


def test_worked_examples_are_drawn_outside_the_problems_one_block_per_operator():
    problems = data.make_problems(["+", "-"], ["1x1"], 100, seed=0)  # every 1x1 pair: no 1x1 example is left
    with pytest.raises(ValueError, match="worked examples"):
        with_examples(problems, k=3, seed=0)
    problems = data.make_problems(["+", "-"], ["1x1", "2x2"], 30, seed=0)
    shot = with_examples(problems, k=3, seed=0).to_pandas()
    assert shot.groupby("op").shots.nunique().tolist() == [1, 1]
    keys = {data.pair_key(a, op, b) for a, op, b in zip(shot.a, shot.op, shot.b)}
    for block in shot.shots.unique():
        lines = block.splitlines()
        assert len(lines) == 3
        for line in lines:
            expr, answer = line.split("=")
            op = "+" if "+" in expr else "-"
            a, b = (int(x) for x in expr.split(op))
            assert data.apply_op(a, op, b) == int(answer) and data.pair_key(a, op, b) not in keys
    assert shot.prompt.tolist() == (shot.shots + problems.to_pandas().prompt).tolist()
    assert with_examples(problems, k=3, seed=0).to_pandas().shots.tolist() == shot.shots.tolist()
    assert with_examples(problems, k=3, seed=1).to_pandas().shots.tolist() != shot.shots.tolist()


def test_rows_that_stop_leave_the_batch_and_the_rest_decode_unchanged(organism):
    """The organism answers 1x1 and 2x2 sums with answers of different lengths: rows leave
    the batch at different steps; every answer equals decoding that prompt alone."""
    model = organism
    same_length = ["3+4=", "9+9=", "7+2=", "5+5="]  # one batch: one-digit and two-digit answers
    batched = greedy_decode(model, same_length, 6)
    assert {len(a) for a in batched} == {1, 2}
    assert batched == [greedy_decode(model, [p], 6)[0] for p in same_length]
    cache = decode.slab_cache(model, 1, 3, capacity=4)
    cache[0].keys[:, 0] = torch.arange(3.0)[:, None, None]
    cache[0].filled = 1
    decode.drop_rows(cache, torch.tensor([0, 2]))
    assert cache[0].past_keys[:, 0, 0, 0].tolist() == [0.0, 2.0] and cache.previous_attention_mask.shape[0] == 2
