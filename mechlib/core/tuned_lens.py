"""A tuned lens (Belrose et al. 2023) fitted in closed form on a CPU.

Per layer, one affine translator maps the residual stream to the last layer's: the source's
"best linear guess". Both sides are RMS-normalised per position, so every token weighs the
same whatever its norm, and the final norm is scale-invariant. The map is a ridge regression
(least squares), not Belrose's KL objective: an exact solve from a few thousand positions in
seconds, where KL training over a 262,144-token vocabulary would take a CPU hours. The ridge
strength is chosen per layer on held-out windows of the same text.

Training text is never the test problems: arithmetic lines (``a+b=c``) drawn outside them,
and prose paragraphs from ``pydoc_data.topics``, the Python documentation that ships with
CPython.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens.utils import get_act_name

from .blocks import cache_activations
from .data import format_prompt, make_problems, pair_key
from .evaluate import encode

PROSE_SOURCE = "paragraphs of the Python documentation that ships with CPython (pydoc_data.topics)"
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # x mean eigenvalue of the inputs' second moment
WINDOW = 64  # tokens per training window
HELD_OUT = 5  # every 5th window is held out to choose the ridge strength
# The fewest training tokens that leave a held-out window: each half (arithmetic, prose)
# gets n // 2 // WINDOW windows, and the HELD_OUT-th window overall is the first held out.
MIN_TOKENS = 2 * WINDOW * -(-HELD_OUT // 2)

Translators = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (A [d, d], b [d])


def prose_paragraphs(seed: int = 0) -> list[str]:
    """Prose paragraphs of the shipped Python documentation, shuffled with ``seed``: no
    indented code, no headings, at least 120 characters, mostly letters."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(para.split())
            if para[:1].isspace() or len(text) < 120 or not text.endswith("."):
                continue
            if sum(c.isalpha() or c == " " for c in text) / len(text) > 0.9:
                out.append(text)
    random.Random(seed).shuffle(out)
    return out


def arithmetic_lines(operators: Sequence[str], difficulties: Sequence[str], exclude: pd.DataFrame, n: int, seed: int) -> list[str]:
    """``n`` solved problems as bare lines (``12+34=46``), none of them in ``exclude`` in
    either operand order."""
    problems = make_problems(list(operators), list(difficulties), n, "bare", seed + 7919).to_pandas()
    banned = {pair_key(a, op, b) for a, op, b in zip(exclude.a, exclude.op, exclude.b)}
    keep = problems[[pair_key(a, op, b) not in banned for a, op, b in zip(problems.a, problems.op, problems.b)]]
    return ["".join(format_prompt(a, op, b, "bare")) for a, op, b in zip(keep.a, keep.op, keep.b)]


def windows(model, texts: Sequence[str], n_tokens: int, sep: str = "\n") -> torch.Tensor:
    """The texts joined by ``sep`` into one token stream, cut into windows of WINDOW tokens
    (each starting with BOS where the model's prompts do), at most ``n_tokens`` in all."""
    ids = encode(model, [sep.join(texts)], prepend_bos=False)[0]
    bos = encode(model, [""])[0]  # [BOS] or []
    size = WINDOW - len(bos)
    n = min(len(ids) // size, max(1, n_tokens // WINDOW))
    if n == 0:
        raise ValueError(f"tuned lens: the training text has {len(ids)} tokens, fewer than one window of {size}")
    return torch.tensor([bos + ids[i * size:(i + 1) * size] for i in range(n)])


def _normalised(x: Float[torch.Tensor, "*pos d"]) -> Float[torch.Tensor, "*pos d"]:
    return x / x.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()


@torch.inference_mode()
def fit(model, tokens: torch.Tensor, batch_size: int = 16) -> tuple[Translators, pd.DataFrame]:
    """Translators for the embedding (layer -1) and every block but the last, fitted on
    ``tokens`` [windows, WINDOW] (BOS positions left out), and per layer the chosen ridge
    strength and the held-out share of variance explained (R^2) of the last layer's stream."""
    if len(tokens) < HELD_OUT:
        raise ValueError(f"tuned lens: {len(tokens)} windows of training text leave none held out (every {HELD_OUT}th is); "
                         f"fit on at least {MIN_TOKENS} tokens")
    n_layers = model.cfg.n_layers
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", l) for l in range(n_layers)]
    skip = int(model.cfg.default_prepend_bos)
    d = model.cfg.d_model
    stats = {part: [[torch.zeros(d + 1, d + 1, dtype=torch.float64), torch.zeros(d + 1, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                     torch.zeros(d, dtype=torch.float64), 0] for _ in range(n_layers)] for part in ("train", "held")}
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        cache = cache_activations(model, batch, names)
        held = torch.tensor([(start + i) % HELD_OUT == HELD_OUT - 1 for i in range(len(batch))])
        y_all = _normalised(cache[names[-1]][:, skip:].double())
        for part, rows in (("train", ~held), ("held", held)):
            if not rows.any():
                continue
            y = y_all[rows].reshape(-1, d)
            for j, name in enumerate(names[:-1]):
                x = _normalised(cache[name][rows][:, skip:].double()).reshape(-1, d)
                x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                s = stats[part][j]
                s[0] += x1.T @ x1
                s[1] += x1.T @ y
                s[2] += y.pow(2).sum(0)
                s[3] += y.sum(0)
                s[4] += len(y)
    translators, rows = {}, []
    for j in range(n_layers):
        train, held = stats["train"][j], stats["held"][j]
        scale = float(torch.diagonal(train[0])[:d].mean())
        best = None
        for r in RIDGE_GRID:
            w = _solve(train[0], train[1], r * scale)
            sse = _sse(held, w)
            if best is None or sse < best[1]:
                best = (r, sse)
        total = [a + b for a, b in zip(train, held)]
        w = _solve(total[0], total[1], best[0] * scale)
        var = float((held[2] - held[3].pow(2) / max(held[4], 1)).sum()) if held[4] else float("nan")
        translators[j - 1] = (w[:d].float().to(model.cfg.device), w[d].float().to(model.cfg.device))
        rows.append({"layer": j - 1, "ridge": best[0], "held_out_r2": 1 - best[1] / var if var > 0 else float("nan"),
                     "positions": int(total[4]), "parameters": d * d + d})
    return translators, pd.DataFrame(rows)


def _solve(xtx: torch.Tensor, xty: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge solution [d + 1, d]; the bias (last row) is not penalised."""
    pen = torch.full((len(xtx),), lam, dtype=xtx.dtype)
    pen[-1] = 0
    return torch.linalg.solve(xtx + torch.diag(pen), xty)


def _sse(stats: list, w: torch.Tensor) -> float:
    """Summed squared error of ``w`` on the held-out sufficient statistics."""
    xtx, xty, yy = stats[0], stats[1], stats[2]
    return float(yy.sum() - 2 * (w * xty).sum() + (w * (xtx @ w)).sum())


def translate(translators: Translators, layer: int, resid: Float[torch.Tensor, "*pos d"]) -> Float[torch.Tensor, "*pos d"]:
    """The residual at ``layer`` mapped to the last layer's (unchanged for a layer without
    a translator: the last one)."""
    if layer not in translators:
        return resid
    a, b = translators[layer]
    return _normalised(resid.float()) @ a + b


def train_text(model, operators: Sequence[str], difficulties: Sequence[str], exclude: pd.DataFrame, n_tokens: int,
               seed: int) -> torch.Tensor:
    """Half the windows arithmetic lines drawn outside ``exclude``, half prose, in a fixed
    order: [windows, WINDOW] token ids."""
    half = n_tokens // 2
    lines = arithmetic_lines(operators, difficulties, exclude, max(50, half // 4), seed)
    maths = windows(model, lines, half)
    prose = windows(model, prose_paragraphs(seed), half, sep="\n\n")
    return torch.cat([maths, prose])

