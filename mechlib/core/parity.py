"""Does a converted TransformerLens model compute what the Hugging Face model computes?

One padded batch through both, compared at every real position: the largest absolute
difference in log-probability, and how often the argmax token agrees."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .evaluate import encode

PARITY_PROMPTS = (
    "12+34=", "7*8=", "905-317=", "Q: What is 26 plus 92? A:", "Q: What is 34 times 6? A:",
    "1 + 3 = 4\n4 + 5 = 9\n2 + 3 =", "The distance between Rome and Paris is approximately",
    '{"name": "Alice", "age": 30, "city":', "Obama was elected in the year",
)


@torch.no_grad()
def parity(hooked, hf_model, prompts: Sequence[str] = PARITY_PROMPTS) -> dict:
    """Right-padded batch with an attention mask through both models: ``max_logprob_diff``
    over every real position and vocabulary entry, ``argmax_agree`` (share of positions),
    ``n_positions``. Token ids come from the hooked model's own encoding (BOS rule included)."""
    ids = encode(hooked, list(prompts))
    width = max(map(len, ids))
    tok = hooked.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(hf_model.parameters()).device
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in ids], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=device)
    want_all = hf_model(input_ids=tokens, attention_mask=mask).logits
    got_all = hooked(tokens.to(hooked.cfg.device), attention_mask=mask.to(hooked.cfg.device))
    worst, agree, total = 0.0, 0, 0
    for i, row in enumerate(ids):
        n = len(row)
        want = want_all[i, :n].float().log_softmax(-1)
        got = got_all[i, :n].float().log_softmax(-1).to(want.device)
        worst = max(worst, float((got - want).abs().max()))
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += n
    return {"max_logprob_diff": worst, "argmax_agree": agree / total, "n_positions": total, "n_prompts": len(ids)}
