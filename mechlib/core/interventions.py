"""Layer corruptions and the logit lens, on a TransformerLens model, without touching its code.

A corruption is a compact spec string, parsed and checked against the model's depth:

=====================  ============================================================
``none``               the clean model
``skip:0,2``           skip these layers (a skipped block's output equals its input)
``skip_first:2``       skip the first n layers
``skip_last:2``        skip the last n layers
``skip_range:1-2``     skip a contiguous range (inclusive)
``repeat:1x2``         run layer 1 twice in a row (``LxK``: K times in all)
``permute:0,2,1,3``    run the blocks in this order (a permutation of all layers)
``ablate:mlp1:mean``   replace an MLP (``mlpL``) or attention (``attnL``) output by zero
                       (``zero``) or by its mean over the problem set (``mean``)
=====================  ============================================================

A ``*`` in place of a layer (``skip:*``, ``repeat:*x2``, ``ablate:attn*:zero``) stands for
every layer, one condition each.

Layer orders run the model's own blocks in the chosen order (:class:`mechlib.core.blocks.BlockOrder`);
ablations are forward hooks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from transformer_lens.utils import get_act_name

from .blocks import BlockOrder, cache_activations, unembed_residual
from .decode import buckets
from .evaluate import encode, encode_targets, first_digit_offsets, teacher_forced_batches
from .tuned_lens import translate

KINDS = ("none", "skip", "skip_first", "skip_last", "skip_range", "repeat", "permute", "ablate")
SPEC_HELP = "none, skip:0,2 (or skip:* for each layer), skip_first:N, skip_last:N, skip_range:A-B, repeat:LxK, permute:i,j,..., ablate:mlpL|attnL:zero|mean"


DEPTH_UNKNOWN = 10**6  # parse for syntax only, before a model is loaded


@dataclasses.dataclass(frozen=True)
class Corruption:
    spec: str
    kind: str
    order: tuple[int, ...]  # blocks to run, in this order
    ablations: tuple[tuple[str, int, str], ...] = ()  # (site 'mlp'|'attn', layer, 'zero'|'mean')

    @property
    def layer(self) -> int | None:
        """The single layer a per-layer corruption acts on (for the layer x corruption map)."""
        if self.kind == "ablate":
            return self.ablations[0][1]
        m = re.match(r"^(skip|repeat):(\d+)(x\d+)?$", self.spec)
        return int(m.group(2)) if m else None

    @property
    def family(self) -> str:
        """Per-layer family label: ``skip``, ``repeat x2``, ``zero mlp`` ..."""
        if self.kind == "ablate":
            site, _, mode = self.ablations[0]
            return f"{mode}-ablate {site}"
        if self.kind == "repeat":
            return f"repeat x{self.spec.split('x')[-1]}"
        return self.kind


def _ints(text: str, spec: str) -> list[int]:
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise ValueError(f"corruption {spec!r}: expected comma-separated layer numbers, got {text!r}")
    return [int(x) for x in text.split(",")]


def _check_layers(layers: Sequence[int], n_layers: int, spec: str) -> None:
    if n_layers == DEPTH_UNKNOWN:
        return
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"corruption {spec!r}: layer(s) {bad} out of range; this model has layers 0..{n_layers - 1}")


def parse_corruption(spec: str, n_layers: int) -> Corruption:
    """Parse and validate one spec; a malformed spec or a bad layer raises ValueError naming it."""
    if not isinstance(spec, str):
        raise ValueError(f"corruption {spec!r} is not a string; allowed forms: {SPEC_HELP}")
    spec = spec.strip()
    all_layers = list(range(n_layers)) if n_layers != DEPTH_UNKNOWN else []
    kind, _, arg = spec.partition(":")
    if kind == "none" and not arg:
        return Corruption(spec, kind, tuple(all_layers))
    if kind not in KINDS or not arg:
        raise ValueError(f"corruption {spec!r} is malformed; allowed forms: {SPEC_HELP}")
    if kind == "skip":
        layers = _ints(arg, spec)
        _check_layers(layers, n_layers, spec)
        return Corruption(spec, kind, tuple(i for i in all_layers if i not in layers))
    if kind in ("skip_first", "skip_last"):
        if not arg.isdigit() or not 1 <= int(arg) <= n_layers:
            raise ValueError(f"corruption {spec!r}: n must be in 1..{n_layers}")
        if n_layers == DEPTH_UNKNOWN:
            return Corruption(spec, kind, ())
        n = int(arg)
        order = all_layers[n:] if kind == "skip_first" else all_layers[: n_layers - n]
        return Corruption(spec, kind, tuple(order))
    if kind == "skip_range":
        m = re.fullmatch(r"(\d+)-(\d+)", arg)
        if not m or int(m.group(1)) > int(m.group(2)):
            raise ValueError(f"corruption {spec!r}: expected skip_range:A-B with A <= B")
        lo, hi = int(m.group(1)), int(m.group(2))
        _check_layers([lo, hi], n_layers, spec)
        return Corruption(spec, kind, tuple(i for i in all_layers if not lo <= i <= hi))
    if kind == "repeat":
        m = re.fullmatch(r"(\d+)x(\d+)", arg)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"corruption {spec!r}: expected repeat:LxK, layer L run K >= 1 times")
        layer, k = int(m.group(1)), int(m.group(2))
        _check_layers([layer], n_layers, spec)
        order = [i for l in all_layers for i in ([l] * (k if l == layer else 1))]
        return Corruption(spec, kind, tuple(order))
    if kind == "permute":
        order = _ints(arg, spec)
        if n_layers == DEPTH_UNKNOWN:
            n_layers, all_layers = len(order), list(range(len(order)))
        if sorted(order) != all_layers:
            raise ValueError(f"corruption {spec!r}: a permutation must list each of the layers 0..{n_layers - 1} once")
        return Corruption(spec, kind, tuple(order))
    m = re.fullmatch(r"(mlp|attn)(\d+):(zero|mean)", arg)
    if not m:
        raise ValueError(f"corruption {spec!r}: expected ablate:mlpL:zero, ablate:attnL:mean, ...")
    layer = int(m.group(2))
    _check_layers([layer], n_layers, spec)
    return Corruption(spec, kind, tuple(all_layers), ((m.group(1), layer, m.group(3)),))


def expand_wildcards(specs: Sequence[str], n_layers: int) -> list[str]:
    """``skip:*``, ``repeat:*x2``, ``ablate:mlp*:zero``: one spec per layer, in layer order."""
    out = []
    for spec in specs:
        if isinstance(spec, str) and "*" in spec:
            out.extend(spec.replace("*", str(layer)) for layer in range(n_layers))
        else:
            out.append(spec)
    return out


def parse_corruptions(specs: Sequence[str], n_layers: int) -> list[Corruption]:
    """Expand wildcards, then parse and check every spec against the model's depth."""
    if isinstance(specs, str) or not specs:
        raise ValueError(f"corruptions must be a non-empty list of specs ({SPEC_HELP}), got {specs!r}")
    depth = 1 if n_layers == DEPTH_UNKNOWN else n_layers
    parsed = [parse_corruption(s, n_layers) for s in expand_wildcards(specs, depth)]
    dupes = sorted({c.spec for c in parsed if [d.spec for d in parsed].count(c.spec) > 1})
    if dupes:
        raise ValueError(f"corruptions: {dupes} listed more than once")
    return parsed


def hook_name(site: str, layer: int) -> str:
    """``blocks.L.hook_mlp_out`` / ``blocks.L.hook_attn_out``, by TransformerLens's own rule."""
    return get_act_name(f"{site}_out", layer)


@torch.inference_mode()
def mean_activations(model, prompts: Sequence[str], sites: Sequence[tuple[str, int]], batch_size: int = 512) -> dict:
    """Mean output (a d_model vector) of each (site, layer) over the prompts' real tokens,
    BOS excluded: Llama and Gemma write very large activations at BOS, which would
    dominate the mean. Prompts are batched by length, so no batch holds padding."""
    names = {hook_name(s, l) for s, l in sites}
    bos = model.tokenizer.bos_token_id
    sums = {n: torch.zeros(model.cfg.d_model, dtype=torch.float64, device=model.cfg.device) for n in names}
    count = 0
    for tokens, cache in _cached_batches(model, prompts, names, batch_size):
        real = torch.ones(tokens.shape, dtype=torch.float64, device=tokens.device)
        if bos is not None:
            real[:, 0] = (tokens[:, 0] != bos).double()
        for n in names:
            sums[n] += torch.einsum("bpd,bp->d", cache[n].double(), real)
        count += real.sum()
    return {n: (s / max(float(count), 1.0)).to(model.cfg.dtype) for n, s in sums.items()}


def _cached_batches(model, prompts: Sequence[str], names: set[str], batch_size: int):
    """(tokens [batch, pos], activation cache of ``names``) per batch of the prompts, batched
    by length so that no batch holds padding, in a fixed order."""
    ids = encode(model, prompts)
    for idx in buckets([len(x) for x in ids], batch_size):
        tokens = torch.tensor([ids[i] for i in idx], device=model.cfg.device)
        cache = cache_activations(model, tokens, names)
        yield tokens, cache


@contextlib.contextmanager
def corrupted(model, corruption: Corruption, means: dict | None = None):
    """Yield a ``forward(tokens) -> logits`` for the corruption; ablation hooks are active
    inside the ``with`` block and removed after it, whatever happens."""
    hooks = []
    for site, layer, mode in corruption.ablations:
        name = hook_name(site, layer)
        if mode == "zero":
            hooks.append((name, lambda act, hook: torch.zeros_like(act)))
        else:
            if not means or name not in means:
                raise ValueError(f"corruption {corruption.spec!r} needs mean activations for {name}")
            mean = means[name]
            hooks.append((name, lambda act, hook, mean=mean: mean.expand_as(act).clone()))
    identity = list(corruption.order) == list(range(model.cfg.n_layers))
    forward = None if identity else BlockOrder(model, corruption.order)
    with model.hooks(fwd_hooks=hooks):
        yield forward


@torch.inference_mode()
def logit_lens(model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 512,
               translators: dict | None = None, all_positions: bool = True) -> pd.DataFrame:
    """Read the residual stream after the embedding (layer -1) and after each block through
    the final norm and unembedding; with ``translators`` (:mod:`~mechlib.core.tuned_lens`)
    each layer is first mapped by its own, which makes a tuned lens. One row per (problem,
    layer): ``p_first`` (probability of the first answer digit,
    :func:`~mechlib.core.evaluate.first_digit_offsets`), ``top1_first`` (that digit is the
    lens's argmax), ``rank_first`` (its rank, 1 = top), ``kl_final`` (KL from the model's
    own output to the lens at that position, nats) and ``tf_correct`` (every answer token is
    the lens's argmax, teacher-forced; only with ``all_positions``, else the first answer
    digit's position alone is unembedded, a third of the cost at Gemma's vocabulary)."""
    n_layers = model.cfg.n_layers
    names = [get_act_name("resid_pre", 0)] + [get_act_name("resid_post", l) for l in range(n_layers)]
    p_first = np.zeros((len(prompts), n_layers + 1))
    top1 = np.zeros_like(p_first, dtype=bool)
    tf = np.zeros_like(p_first, dtype=bool)
    rank, kl = np.zeros_like(p_first, dtype=np.int64), np.zeros_like(p_first)
    digit = first_digit_offsets(model.tokenizer, encode_targets(model, targets))
    for idx, tokens, plen, tlen in teacher_forced_batches(model, prompts, targets, batch_size):
        cache = cache_activations(model, tokens, names)
        tgt = tokens[:, plen:]
        first = torch.as_tensor(digit[idx], device=tgt.device)[:, None]
        tgt_first = tgt.gather(1, first)[:, 0]
        final = None
        for j in reversed(range(len(names))):  # the last layer first: the others' KL is to it
            resid = cache[names[j]][:, plen - 1 : plen + tlen - 1]
            if not all_positions:
                resid = resid.gather(1, first[..., None].expand(-1, 1, resid.shape[-1]))
            if translators is not None:
                resid = translate(translators, j - 1, resid)
            logp = unembed_residual(model, resid).float().log_softmax(-1)
            at_first = logp[:, 0] if not all_positions else logp.gather(1, first[..., None].expand(-1, 1, logp.shape[-1]))[:, 0]
            if final is None:
                final = at_first
            right = at_first.gather(-1, tgt_first[:, None])
            p_first[idx, j] = right[:, 0].exp().cpu().numpy()
            rank[idx, j] = ((at_first > right).sum(-1) + 1).cpu().numpy()
            kl[idx, j] = (final.exp() * (final - at_first)).sum(-1).clamp_min(0).cpu().numpy()
            top1[idx, j] = (at_first.argmax(-1) == tgt_first).cpu().numpy()
            if all_positions:
                tf[idx, j] = (logp.argmax(-1) == tgt).all(1).cpu().numpy()
    layers = np.arange(-1, n_layers)
    out = pd.DataFrame(
        {
            "problem": np.repeat(np.arange(len(prompts)), n_layers + 1),
            "layer": np.tile(layers, len(prompts)),
            "p_first": p_first.ravel(),
            "top1_first": top1.ravel(),
            "rank_first": rank.ravel(),
            "kl_final": kl.ravel(),
            "tf_correct": tf.ravel(),
        }
    )
    return out if all_positions else out.drop(columns="tf_correct")


@torch.inference_mode()
def activation_stats(model, prompts: Sequence[str], batch_size: int = 512) -> pd.DataFrame:
    """Per layer: mean L2 norm of the residual stream after the block, and mean and standard
    deviation of the attention and MLP output norms, over every token of the prompts.
    Sums run in float64 over a fixed order of batches, so the numbers repeat exactly."""
    n_layers = model.cfg.n_layers
    sites = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out"}
    names = {get_act_name(h, l) for l in range(n_layers) for h in sites.values()}
    norms: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for _, cache in _cached_batches(model, prompts, names, batch_size):
        for n in names:
            norms[n].append(cache[n].double().norm(dim=-1).flatten().cpu())
    rows = []
    for layer in range(n_layers):
        row = {"layer": layer}
        for short, h in sites.items():
            values = torch.cat(norms[get_act_name(h, layer)])
            row[f"{short}_norm_mean"] = round(float(values.mean()), 6)
            if short != "resid":
                row[f"{short}_norm_std"] = round(float(values.std()), 6)
        rows.append(row)
    return pd.DataFrame(rows)
