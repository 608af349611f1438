"""Batched scoring of arithmetic problems: greedy answers, exact match, taxonomy, and
teacher-forced answer loss / probability.

Prompts are grouped by token length, so a batch never needs padding and every position
id is the one the model saw in training (no left-padding offsets to get wrong).
``forward`` lets a caller swap the model's forward pass (a layer permutation, say);
hooks set with ``model.hooks(...)`` around a call apply as usual.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int

from . import decode
from .blocks import BlockOrder
from .data import OPERATORS
from .decode import buckets, stop_ids
from .stats import accuracy_by
from .taxonomy import ERROR_CLASSES, classify_all, parse_answer
from .tokens import with_bos

Forward = Callable[[torch.Tensor], torch.Tensor]


def encode(model, texts: Sequence[str], prepend_bos: bool | None = None) -> list[list[int]]:
    """Token ids per text, with BOS handled the way ``HookedTransformer.to_tokens`` does."""
    cfg = model.cfg
    prepend_bos = cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    tok = model.tokenizer
    ids = tok([str(t) for t in texts], add_special_tokens=bool(prepend_bos and cfg.tokenizer_prepends_bos))["input_ids"]
    if prepend_bos and not cfg.tokenizer_prepends_bos:
        ids = [with_bos(tok, row) for row in ids]
    return ids


def encode_targets(model, targets: Sequence[str]) -> list[list[int]]:
    return model.tokenizer(list(targets), add_special_tokens=False)["input_ids"]


def first_digit_offsets(tokenizer, target_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Per answer, the index of its first token that holds a digit: the first answer
    *digit*. GPT-2 writes `` 46`` as one token; SmolLM2 and Gemma split it into a space and
    one token per digit, so the first answer token would be the space. 0 when no token
    holds a digit."""
    texts = {i: tokenizer.decode([i]) for row in target_ids for i in set(row)}
    return np.array([next((j for j, t in enumerate(row) if any(c.isdigit() for c in texts[t])), 0) for row in target_ids], dtype=int)


def check_context(model, longest: int, what: str) -> None:
    """A clear error, not an IndexError deep in the forward pass, when ``longest`` positions
    do not fit the model's context (``model.cfg.n_ctx``)."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and longest > n_ctx:
        raise ValueError(f"{what} needs {longest} positions, and the model's context is {n_ctx}: "
                         "use shorter prompts or operands, or fewer new tokens (max_new_tokens)")


@torch.inference_mode()
def greedy_decode(
    model,
    prompts: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 512,
    forward: Forward | None = None,
    progress: bool = False,
    stop_at_newline: bool = True,
    share_prefix: bool = True,
    groups: Sequence | None = None,
) -> list[str]:
    """Greedy continuation of each prompt, cut at EOS (or a newline), batched by length.

    The prompts' shared token prefix (a few-shot block) is computed once; see
    :mod:`mechlib.core.decode` for what that means for hooks, and for ``share_prefix`` and
    ``groups`` (e.g. each prompt's few-shot block)."""
    prompts = list(prompts)  # a datasets Column iterates slowly
    prompt_ids = encode(model, prompts)
    if prompt_ids:
        longest = max(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
        check_context(model, len(prompt_ids[longest]) + max_new_tokens - 1,
                      f"the prompt {prompts[longest]!r} plus max_new_tokens = {max_new_tokens}")
    tok = model.tokenizer
    stops = stop_ids(tok) if stop_at_newline else frozenset({tok.eos_token_id} - {None})
    outputs = decode.greedy_decode(model, prompt_ids, max_new_tokens, stops, batch_size, forward, progress, share_prefix,
                                   groups)
    return tok.batch_decode(outputs, skip_special_tokens=True)


@torch.inference_mode()
def generate_one_by_one(model, prompts: Sequence[str], max_new_tokens: int = 8) -> list[str]:
    """Reference decoder: TransformerLens ``generate`` (KV cache), one prompt at a time.

    Slow; the benchmark and the tests compare :func:`greedy_decode` with it."""
    stops = stop_ids(model.tokenizer)
    outs = []
    for p in prompts:
        tokens = model.to_tokens(p)
        gen = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=True, verbose=False)
        new = gen[0, tokens.shape[1] :].tolist()
        cut = next((j for j, t in enumerate(new) if t in stops), len(new))
        outs.append(model.tokenizer.decode(new[:cut], skip_special_tokens=True))
    return outs


def score_answers(df: pd.DataFrame, outputs: Sequence[str]) -> pd.DataFrame:
    """Attach output, parsed prediction, correctness and error class to a problem table."""
    out = df.copy()
    out["output"] = list(outputs)
    preds = [parse_answer(t) for t in outputs]
    out["pred"] = pd.array(preds, dtype="Int64")
    fits = [classify_all(a, op, b, p, t) for a, op, b, p, t in zip(out["a"], out["op"], out["b"], preds, out["output"])]
    out["error"] = [f[0] for f in fits]
    out["also"] = [", ".join(c for c in f[1:] if c not in ("right_length", "wrong_length")) for f in fits]
    out["correct"] = out["error"] == "correct"
    return out


def baseline_rates(problems: pd.DataFrame) -> dict:
    """How often a trivial strategy would be exactly right on these problems: always copy
    the first (or second) operand, always answer the sum. A model's accuracy means something
    only above these."""
    answer = problems["answer"].to_numpy()
    return {
        "copy_a": float((problems["a"].to_numpy() == answer).mean()),
        "copy_b": float((problems["b"].to_numpy() == answer).mean()),
        "sum": float(((problems["a"] + problems["b"]).to_numpy() == answer).mean()),
    }


def evaluate(
    model,
    problems,
    max_new_tokens: int | None = None,
    batch_size: int = 512,
    forward: Forward | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per problem: the problem's columns plus output, pred, error, correct.
    Problems with a ``shots`` column (:func:`~mechlib.core.fewshot.with_examples`) are
    batched by their worked examples, which are computed once per operator."""
    df = problems.to_pandas() if hasattr(problems, "to_pandas") else pd.DataFrame(problems)
    if max_new_tokens is None:
        max_new_tokens = max(len(t) for t in encode_targets(model, df["target"])) + 2
    groups = df["shots"].tolist() if "shots" in df else None
    outputs = greedy_decode(model, df["prompt"].tolist(), max_new_tokens, batch_size, forward, progress, groups=groups)
    return score_answers(df, outputs)


def teacher_forced_batches(
    model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 512, groups: Sequence | None = None,
) -> Iterator[tuple[list[int], Int[torch.Tensor, "batch seq"], int, int]]:
    """The one teacher-forcing loop: yield (row indices, prompt+answer tokens, prompt length,
    answer length) per batch of problems with equal prompt and answer token lengths, so no
    batch needs padding (``groups``: never two groups in one batch). Positions ``plen - 1 .. plen + tlen - 2`` predict the answer."""
    p_ids, t_ids = encode(model, prompts), encode_targets(model, targets)
    if p_ids:
        i = max(range(len(p_ids)), key=lambda j: len(p_ids[j]) + len(t_ids[j]))
        check_context(model, len(p_ids[i]) + len(t_ids[i]), f"the prompt {prompts[i]!r} with its answer {targets[i]!r}")
    keys = [(g, len(p), len(t)) for g, p, t in zip(decode.group_index(groups, len(p_ids)), p_ids, t_ids)]
    for idx in buckets(keys, batch_size):
        plen, tlen = len(p_ids[idx[0]]), len(t_ids[idx[0]])
        tokens = torch.tensor([p_ids[i] + t_ids[i] for i in idx], device=model.cfg.device)
        yield idx, tokens, plen, tlen


@torch.inference_mode()
def answer_scores(
    model,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 512,
    forward: Forward | None = None,
    share_prefix: bool = True,
    groups: Sequence | None = None,
) -> pd.DataFrame:
    """Teacher-forced scores of the target answer, per problem.

    ``answer_loss``: mean cross-entropy over the answer tokens; ``p_first``: probability of
    the first answer digit (:func:`first_digit_offsets`), given what precedes it;
    ``tf_correct``: every answer token is the argmax. With a block order (the default), the
    prompts' shared prefix runs once (:mod:`mechlib.core.decode`) and logits are computed at
    the answer positions only (``groups`` as in :func:`greedy_decode`); an arbitrary callable
    recomputes everything."""
    forward = forward or BlockOrder(model, range(model.cfg.n_layers))
    cached = isinstance(forward, BlockOrder)
    group = decode.group_index(groups, len(prompts))
    prefixes = decode.group_prefixes(forward, encode(model, prompts), group, share_prefix) if cached else {}
    loss = np.zeros(len(prompts))
    p_first = np.zeros(len(prompts))
    tf_correct = np.zeros(len(prompts), dtype=bool)
    digit = first_digit_offsets(model.tokenizer, encode_targets(model, targets))
    for idx, tokens, plen, tlen in teacher_forced_batches(model, prompts, targets, batch_size, groups):
        n_prefix, prefix = prefixes.get(group[idx[0]], (0, None))
        answer = slice(plen - 1 - n_prefix, plen + tlen - 1 - n_prefix)
        if cached:
            cache = decode.slab_cache(model, len(forward.order), len(idx), tokens.shape[1], prefix) if prefix else None
            logits = forward(tokens[:, n_prefix:], cache=cache, keep=answer)
        else:
            logits = forward(tokens)[:, answer]
        logp = logits.float().log_softmax(-1)
        tgt = tokens[:, plen:]
        tok_logp = logp.gather(-1, tgt[..., None])[..., 0]
        loss[idx] = (-tok_logp.mean(1)).cpu().numpy()
        first = torch.as_tensor(digit[idx], device=tok_logp.device)
        p_first[idx] = tok_logp.gather(1, first[:, None])[:, 0].exp().cpu().numpy()
        tf_correct[idx] = (logp.argmax(-1) == tgt).all(1).cpu().numpy()
    return pd.DataFrame({"answer_loss": loss, "p_first": p_first, "tf_correct": tf_correct})


def accuracy_table(results: pd.DataFrame, index: str = "op", columns: str = "difficulty") -> pd.DataFrame:
    """Exact-match accuracy (0..1) by operator x difficulty."""
    return results.pivot_table(index=index, columns=columns, values="correct", aggfunc="mean").sort_index(axis=1)


OP_ORDER = {op: i for i, op in enumerate(OPERATORS)}


def accuracy_cells(results: pd.DataFrame, by: Sequence[str] = ("op", "difficulty"),
                   orders: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Accuracy per cell with n, the number right and the Wilson 95% interval, operators
    in the order + - x; ``orders`` gives other columns' value order (e.g. a chapter's kinds
    of cell), and the rest sort as values."""
    table = accuracy_by(results, list(by))
    sort = [c for c in by]
    order_of = {"op": OP_ORDER, **{c: {v: i for i, v in enumerate(vs)} for c, vs in (orders or {}).items()}}
    keys = {c: (table[c].map(order_of[c]) if c in order_of else table[c]) for c in sort}
    order = pd.DataFrame(keys).sort_values(sort).index
    return table.loc[order].reset_index(drop=True)


def error_table(results: pd.DataFrame, by: Sequence[str] = ("op", "difficulty")) -> pd.DataFrame:
    """Share of each error class within each group (rows sum to 1), classes in taxonomy order."""
    counts = results.groupby(list(by))["error"].value_counts(normalize=True).unstack(fill_value=0.0)
    return counts.reindex(columns=[c for c in ERROR_CLASSES if c in counts.columns])


def error_summary(results: pd.DataFrame, by: Sequence[str] = ("op", "difficulty")) -> pd.DataFrame:
    """A narrow summary of :func:`error_table`: per group, n and its two most common answer
    classes with their shares (the full table is :func:`error_long`)."""
    rows = []
    for key, group in results.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        shares = group["error"].value_counts(normalize=True)
        row = {**dict(zip(by, key)), "n": int(len(group))}
        for i, label in enumerate(("most common", "second")):
            row[label] = f"{shares.index[i]} ({shares.iloc[i]:.0%})" if len(shares) > i else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    if "op" in out:
        out = out.sort_values([c for c in by], key=lambda col: col.map(OP_ORDER) if col.name == "op" else col, kind="stable")
    return out.reset_index(drop=True)


def error_long(results: pd.DataFrame, by: Sequence[str] = ("op", "difficulty")) -> pd.DataFrame:
    """Every (group, class) share that is not zero, one row each: the full error table in a
    form that fits a page."""
    table = error_table(results, by).reset_index().melt(id_vars=list(by), var_name="class", value_name="share")
    return table[table.share > 0].reset_index(drop=True)


def typical_errors(results: pd.DataFrame, per_class: int = 3) -> pd.DataFrame:
    """A few wrong answers of each class per operator, deterministic (first by row order)."""
    wrong = results[~results["correct"]]
    cols = ["op", "difficulty", "prompt", "target", "output", "error", "also"]
    table = wrong.groupby(["op", "error"], sort=True).head(per_class)[cols].reset_index(drop=True)
    table["output"] = table["output"].map(repr)  # shows '' and stray spaces
    return table
