"""Judging circuit discovery where the truth is known: edge scores against a ground-truth
circuit (ROC curve and AUROC, with a floored variant), and InterpBench cases loaded safely.

An InterpBench case folder holds ``edges.pkl`` (a pickled list of (str, str) pairs of ACDC
hook names, e.g. ``('blocks.0.hook_mlp_out', 'blocks.1.hook_v_input[2]')``), ``ll_model_cfg*.pkl``
(a pickled dict of a TransformerLens config whose only non-plain values are ``torch.float32``
and ``torch.device``) and ``ll_model*.pth`` (a state dict). The pickles are read by a
restricted unpickler that builds plain containers, torch dtypes and ``torch.device`` only, so a
pickle that tries to call anything else is refused before anything runs; the weights load
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_ALLOWED = {("torch", "device"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice")}
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain data, torch dtypes or torch.device."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return getattr(torch if module == "torch" else __import__("builtins"), name)
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)
        raise UnsafePickleError(f"refused to load {module}.{name}: InterpBench pickles hold only plain data, "
                                "torch dtypes and torch.device")


def safe_load_pickle(path: str | Path):
    """Load a pickle that may only build plain containers, torch dtypes and ``torch.device``."""
    data = Path(path).read_bytes()
    return _SafeUnpickler(io.BytesIO(data)).load()


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{folder}: no file matching {pattern!r}; an InterpBench case holds edges.pkl, "
                                "ll_model_cfg*.pkl and ll_model*.pth")
    return found[0]


def load_interpbench(folder: str | Path, device: str = "cpu"):
    """(HookedTransformer, ground-truth edges) from an InterpBench case folder, loaded safely."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    edges = safe_load_pickle(_one(folder, "edges.pkl"))
    if not isinstance(edges, (list, tuple, set)) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in edges):
        raise ValueError(f"{folder / 'edges.pkl'}: expected a list of (str, str) hook-name pairs")
    cfg = safe_load_pickle(_one(folder, "ll_model_cfg*.pkl"))
    if not isinstance(cfg, dict):
        raise ValueError(f"{folder}: the config pickle holds a {type(cfg).__name__}, not a dict")
    cfg = {**cfg, "device": device}
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    state = torch.load(_one(folder, "ll_model*.pth"), map_location=device, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), [tuple(e) for e in edges]


# ---------------------------------------------------------------- scoring against the truth


def roc_curve(scores: Sequence[float], truth: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of ranking edges by score, ties as one step."""
    s, t = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    if t.all() or not t.any():
        raise ValueError("the ground truth needs both circuit and non-circuit edges")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.diff(s) != 0, True]  # the last index of each run of tied scores
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    return np.r_[0.0, fp / (~t).sum()], np.r_[0.0, tp / t.sum()]


def auroc(scores: Sequence[float], truth: Sequence[bool], floor: float | None = None) -> float:
    """Area under the ROC curve of edge scores (absolute values) against ground-truth edges.
    With ``floor``, a score below ``floor`` times the largest counts as zero: a method that
    gives true edges scores of 1e-9 has not found them, whatever their rank."""
    s = np.abs(np.asarray(scores, dtype=float))
    if floor is not None and s.max() > 0:
        s = np.where(s < floor * s.max(), 0.0, s)
    fpr, tpr = roc_curve(s, truth)
    return float(np.trapezoid(tpr, fpr))
