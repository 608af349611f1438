"""Localise a fine-tune by its weights: put the weight update back one block at a time.

A LoRA fine-tune of the model family's attention and MLP weights changes only those weights in
each block (embeddings, unembedding and layer norms are untouched, and :func:`component_keys`
checks it). So a model is determined by which (layer, component) pairs carry the fine-tuned
weights: none gives the base, all give the fine-tune. Accuracy with the update in one block
only ("only") or in every block but one ("all but") says where the new skill lives, before
any dictionary is trained.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from .evaluate import evaluate
from .stats import proportion

COMPONENTS = ("attn", "mlp")
_KEY = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.")


def component_keys(base, finetuned) -> dict[tuple[int, str], list[str]]:
    """The state-dict keys of each (layer, component) whose weights differ between the base
    and the fine-tune. A difference anywhere else fails: then this localisation would hide
    part of the update."""
    sd_base, sd_ft = base.state_dict(), finetuned.state_dict()
    if sd_base.keys() != sd_ft.keys():
        raise ValueError("the base and the fine-tune have different parameters; they are not one architecture")
    out: dict[tuple[int, str], list[str]] = {}
    for key, w in sd_base.items():
        if torch.equal(w, sd_ft[key]):
            continue
        m = _KEY.match(key)
        if not m:
            raise ValueError(f"the fine-tune changed {key!r}, outside the attention and MLP blocks; "
                             "weight patching by block cannot account for it")
        out.setdefault((int(m.group(1)), m.group(2)), []).append(key)
    return out


def patched(base, finetuned, blocks: Iterable[tuple[int, str]], into=None):
    """``base`` with the fine-tuned weights of the given (layer, component) blocks: a copy,
    or ``into`` (a model of the same architecture, overwritten, so a sweep copies once)."""
    model = into if into is not None else copy.deepcopy(base)
    sd_base, sd_ft = base.state_dict(), finetuned.state_dict()
    chosen = set(blocks)
    state = {}
    for key, w in sd_base.items():
        m = _KEY.match(key)
        state[key] = sd_ft[key] if m and (int(m.group(1)), m.group(2)) in chosen else w
    model.load_state_dict(state)
    return model


def designs(n_layers: int) -> list[tuple[str, str, list[tuple[int, str]]]]:
    """(design, which, blocks with the fine-tuned weights) for the localisation sweep:
    the two ends, each layer alone and each layer left out (attention + MLP together), and
    each component alone in every layer."""
    every = [(layer, c) for layer in range(n_layers) for c in COMPONENTS]
    rows = [("base", "none", []), ("fine-tuned", "all", every)]
    for layer in range(n_layers):
        rows.append(("only", f"L{layer}", [(layer, c) for c in COMPONENTS]))
        rows.append(("all but", f"L{layer}", [b for b in every if b[0] != layer]))
    for c in COMPONENTS:
        rows.append(("only", f"{c} (all layers)", [b for b in every if b[1] == c]))
    for layer in range(n_layers):
        for c in COMPONENTS:
            rows.append(("only", f"L{layer} {c}", [(layer, c)]))
    return rows


def localise(base, finetuned, problems: pd.DataFrame, new_ops: Sequence[str], batch_size: int = 512) -> pd.DataFrame:
    """Accuracy on the new and the old skill for every design of :func:`designs`, with n and
    the Wilson 95% interval: one row per (design, which, skill)."""
    component_keys(base, finetuned)  # fails early if the update is not confined to the blocks
    rows = []
    model = copy.deepcopy(base)
    for design, which, blocks in designs(base.cfg.n_layers):
        patched(base, finetuned, blocks, into=model)
        res = evaluate(model, problems, batch_size=batch_size)
        for skill, mask in (("new skill", res.op.isin(new_ops)), ("old skill", ~res.op.isin(new_ops))):
            if mask.any():
                st = proportion(res.loc[mask, "correct"])
                rows.append({"design": design, "which": which, "skill": skill, "n": st["n"], "accuracy": st["p"],
                             "lo": st["lo"], "hi": st["hi"], "n_blocks": len(blocks)})
    return pd.DataFrame(rows)
