"""Greedy decoding of short answers, batched, with a shared prompt prefix computed once.

Few-shot prompts repeat the same worked examples before every problem. Their keys and
values do not depend on the problem, so :func:`greedy_decode` runs the longest token prefix
the prompts share once (batch 1; once per group of prompts when ``groups`` says which share
examples), copies its keys and values into a preallocated cache for each batch, and feeds
only the rest. Positions continue after the
prefix, so rotary and learned position embeddings see what a full forward sees; the tests
check answers and log-probs against the unshared path on GPT-2-, Llama- and Gemma-3-shaped
models and under every corruption kind.

Attention reads the cache through :mod:`mechlib.core.kv_slab` (keys stored rotated, grouped
key/value heads never copied). Hooks fire on the prefix run (batch 1, positions ``0..P-1``)
and then on each batch's suffix run (positions ``P..``). A hook that acts the same at every
position and on every row (zero or mean ablation, a steering vector) gives the same answers
either way; one that indexes absolute positions or batch rows needs ``share_prefix=False``.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Int
from tqdm import tqdm
from transformer_lens import TransformerLensKeyValueCache

from .blocks import BlockOrder
from .kv_slab import SlabEntry, enable

Forward = Callable[[torch.Tensor], torch.Tensor]


def slab_cache(model, n_entries: int, batch: int, capacity: int,
               prefix: TransformerLensKeyValueCache | None = None) -> TransformerLensKeyValueCache:
    """A cache of ``n_entries`` preallocated entries for ``batch`` rows and ``capacity``
    positions, holding ``prefix`` (a batch-1 cache) broadcast to every row when given."""
    enable(model)  # the slab's key format follows the attention modules
    cfg = model.cfg
    heads = cfg.n_key_value_heads or cfg.n_heads
    shape = (batch, capacity, heads, cfg.d_head)
    entries = []
    for j in range(n_entries):
        keys = torch.empty(shape, device=cfg.device, dtype=cfg.dtype)
        values = torch.empty(shape, device=cfg.device, dtype=cfg.dtype)
        filled = 0
        if prefix is not None:
            filled = prefix[j].past_keys.shape[1]
            keys[:, :filled] = prefix[j].past_keys
            values[:, :filled] = prefix[j].past_values
        entries.append(SlabEntry(keys, values, filled))
    mask = torch.ones((batch, entries[0].filled if entries else 0), dtype=torch.int, device=cfg.device)
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask)


# A shared prefix costs one extra forward pass (batch 1) to compute: below this many tokens
# that costs more than it saves, and the prefix is fed with the rest.
MIN_SHARED = 4


def common_prefix(rows: Sequence[Sequence[int]], at_least: int = 1) -> int:
    """Length of the longest token prefix all rows share, leaving every row at least one
    token of its own (its last prompt token predicts the first answer token); 0 when that
    is shorter than ``at_least``."""
    if not rows:
        return 0
    first, limit = rows[0], min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= at_least else 0


@functools.lru_cache(maxsize=8)
def stop_ids(tokenizer) -> frozenset[int]:
    """EOS plus every token whose text holds a newline: an answer ends there."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids = list(vocab.values())
    for i, text in zip(ids, tokenizer.batch_decode([[i] for i in ids])):
        if "\n" in text:
            stops.add(i)
    return frozenset(stops)


def buckets(keys: Sequence, batch_size: int):
    """Indices grouped by key, each group cut into batches of at most batch_size."""
    groups: dict = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    for k in sorted(groups):
        idx = groups[k]
        for s in range(0, len(idx), batch_size):
            yield idx[s : s + batch_size]


def group_index(groups: Sequence | None, n: int) -> list[int]:
    """Each item's group as an int (order of first appearance); all 0 without groups."""
    if groups is None:
        return [0] * n
    seen: dict = {}
    return [seen.setdefault(g, len(seen)) for g in groups]


def prefill(forward, prefix: Sequence[int]) -> TransformerLensKeyValueCache:
    """Run the shared prefix once (batch 1) through a block order; its cache."""
    cache = slab_cache(forward.model, len(forward.order), 1, len(prefix))
    forward(torch.tensor([list(prefix)], device=forward.model.cfg.device), cache=cache, keep=slice(0, 0))
    return cache


def group_prefixes(forward, rows: Sequence[Sequence[int]], group: Sequence[int], share: bool) -> dict:
    """Per group: (length of the token prefix all its rows share, its batch-1 cache or None).
    Computed once per group, used by every batch of the group."""
    out = {}
    for g in dict.fromkeys(group):
        members = [r for r, h in zip(rows, group) if h == g]
        n = common_prefix(members, MIN_SHARED) if share else 0
        out[g] = (n, prefill(forward, members[0][:n]) if n else None)
    return out


@torch.inference_mode()
def greedy_decode(
    model,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    stops: frozenset[int],
    batch_size: int = 512,
    forward: Forward | None = None,
    progress: bool = False,
    share_prefix: bool = True,
    groups: Sequence | None = None,
) -> list[list[int]]:
    """Greedy continuation token ids of each prompt, cut before the first stop token.

    ``forward`` defaults to the model's own block order; a
    :class:`~mechlib.core.blocks.BlockOrder` decodes with a preallocated key/value cache
    (and the shared prefix, unless ``share_prefix`` is False); any other callable recomputes
    the whole sequence at every step. ``groups`` (one label per prompt, e.g. its few-shot
    block) keeps prompts of different groups out of one batch, so each batch shares its
    group's whole prefix."""
    forward = BlockOrder(model, range(model.cfg.n_layers)) if forward is None else forward
    cached = isinstance(forward, BlockOrder)
    device = model.cfg.device
    stop_tensor = torch.tensor(sorted(stops), device=device)
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    group = group_index(groups, len(prompt_ids))
    prefixes = group_prefixes(forward, prompt_ids, group, share_prefix) if cached else {}
    batches = list(buckets(list(zip(group, map(len, prompt_ids))), batch_size))
    for idx in tqdm(batches, desc="greedy decode", disable=not progress):
        tokens: Int[torch.Tensor, "batch seq"] = torch.tensor([prompt_ids[i] for i in idx], device=device)
        if cached:
            n_prefix, prefix = prefixes[group[idx[0]]]
            cache = slab_cache(model, len(forward.order), len(idx), tokens.shape[1] + max_new_tokens, prefix)
            rows = _decode_cached(forward, cache, tokens[:, n_prefix:], max_new_tokens, stop_tensor)
        else:
            rows = _decode_recomputing(forward, tokens, max_new_tokens, stop_tensor)
        for row, i in zip(rows, idx):
            outputs[i] = row[: next((j for j, t in enumerate(row) if t in stops), len(row))]
    return outputs


def _decode_cached(forward, cache, suffix: Int[torch.Tensor, "batch seq"], max_new_tokens: int,
                   stop_tensor: torch.Tensor) -> list[list[int]]:
    """Greedy tokens per row, feeding one token per step through the cache. A row that has
    emitted a stop token leaves the batch (its cache rows are dropped), so later steps run
    only the rows still answering: short answers stop costing as much as long ones."""
    rows: list[list[int]] = [[] for _ in range(suffix.shape[0])]
    alive = list(range(suffix.shape[0]))
    nxt = forward(suffix, cache=cache, keep=slice(-1, None))[:, -1].argmax(-1)
    for step in range(max_new_tokens):
        for r, t in zip(alive, nxt.tolist()):
            rows[r].append(t)
        stopped = torch.isin(nxt, stop_tensor)
        if step == max_new_tokens - 1 or bool(stopped.all()):
            break
        if bool(stopped.any()):
            keep = (~stopped).nonzero()[:, 0]
            alive = [alive[k] for k in keep.tolist()]
            nxt = nxt[keep]
            drop_rows(cache, keep)
        nxt = forward(nxt[:, None], cache=cache, keep=slice(-1, None))[:, -1].argmax(-1)
    return rows


def _decode_recomputing(forward, tokens: Int[torch.Tensor, "batch seq"], max_new_tokens: int,
                        stop_tensor: torch.Tensor) -> list[list[int]]:
    """Greedy tokens per row, recomputing the whole sequence at every step (any forward)."""
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    new = []
    for _ in range(max_new_tokens):
        nxt = forward(tokens)[:, -1].argmax(-1)
        new.append(nxt)
        done |= torch.isin(nxt, stop_tensor)
        if bool(done.all()):
            break
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return torch.stack(new, 1).tolist()


def drop_rows(cache: TransformerLensKeyValueCache, keep: Int[torch.Tensor, " kept"]) -> None:
    """Keep only rows ``keep`` of a slab cache (keys, values and the attention mask)."""
    for entry in cache.entries:
        entry.keys, entry.values = entry.keys[keep], entry.values[keep]
    cache.previous_attention_mask = cache.previous_attention_mask[keep]
