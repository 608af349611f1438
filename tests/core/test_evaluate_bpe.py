"""The evaluator on GPT-2's BPE tokens: a GPT-2-shaped model trained here on
``Q: What is a plus b? A: c`` must be scored as right, answer by answer."""
import pytest
import torch
from transformers import GPT2LMHeadModel

from mechlib.core import data
from mechlib.core.evaluate import evaluate
from mechlib.core.models import load_model
from mechlib.core.organism import encode_supervised

from ..conftest import save_gpt2_shaped

MARGIN = 2.0  # logits by which each answer token must lead before the model is scored


@pytest.mark.slow
def test_evaluator_scores_a_trained_bpe_model_right(tmp_path):
    path = save_gpt2_shaped(tmp_path / "bpe", n_layer=2, n_embd=64, n_head=4, n_positions=32)
    hf = GPT2LMHeadModel.from_pretrained(path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    problems = data.make_problems(["+"], ["1x1"], 40, "qa", seed=0).to_pandas()  # 40 sums: learnt in about 300 steps
    ids, mask, labels = encode_supervised(tok, problems.prompt.tolist(), problems.target.tolist())
    torch.manual_seed(0)
    opt = torch.optim.Adam(hf.parameters(), lr=3e-3)
    rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # positions that predict answer tokens
    targets = labels[:, 1:][rows, cols]
    # Deterministic by construction, not by this CPU's rounding: dropout off (eval mode)
    # while training, and training stops only once every answer token beats the runner-up by
    # MARGIN logits, far more than any rounding difference between machines, or than the
    # TransformerLens conversion (folded norms) changes.
    hf.eval()
    margin = -float("inf")
    for _ in range(1500):
        hidden = hf.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = hf.lm_head(hidden[rows, cols])  # only the answer positions go through the 50257-way head
        right = logits.gather(1, targets[:, None])[:, 0]
        runner_up = logits.scatter(1, targets[:, None], -float("inf")).max(-1).values
        margin = float((right - runner_up).min().detach())
        if margin >= MARGIN:
            break  # every answer token and end-of-text is the argmax with room to spare
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert margin >= MARGIN, f"training did not reach a {MARGIN}-logit margin on every answer token (smallest {margin:.2f})"
    hf.eval().save_pretrained(path)
    model, _ = load_model(str(path), device="cpu")
    res = evaluate(model, problems)
    assert res["correct"].all(), res[~res.correct][["prompt", "target", "output"]].head()
    assert (res["pred"] == res["answer"]).all()  # the number parsed from " 11" is 11
