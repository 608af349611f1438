"""The computational graph of a HookedTransformer: sources (embeddings, heads, MLPs), the
destinations that read them (each head's q, k and v input, each MLP, the residual end) and
the edges between them; and the hooks the graph needs turned on."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from transformer_lens.utils import get_act_name

from ..families import additive_heads

ABLATIONS = ("zero", "mean", "resample")
# A metric maps logits [batch, pos, d_vocab_out] to one score per example [batch].
Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Graph:
    """Sources, destinations and edges of a model with ``n_layers`` layers of ``n_heads`` heads."""

    n_layers: int
    n_heads: int

    @property
    def sources(self) -> list[str]:
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"a{layer}.{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return out

    @property
    def destinations(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            out += [f"a{layer}.{h}.{x}" for h in range(self.n_heads) for x in "qkv"] + [f"m{layer}"]
        return out + ["end"]

    def _source_rank(self, s: str) -> float:
        """Where a source writes: embed -1, head of layer L at L, MLP of layer L at L + 0.5."""
        return -1.0 if s == "embed" else float(s[1:].split(".")[0]) + (0.5 if s[0] == "m" else 0.0)

    def _dest_rank(self, d: str) -> float:
        return float(self.n_layers) if d == "end" else float(d[1:].split(".")[0]) + (0.5 if d[0] == "m" else 0.0)

    @property
    def allowed(self) -> np.ndarray:
        """[n_dest, n_source] True where the edge exists (the source writes before the reader)."""
        return np.array([[self._source_rank(s) < self._dest_rank(d) for s in self.sources] for d in self.destinations])

    @property
    def edges(self) -> list[tuple[str, str]]:
        ok = self.allowed
        return [(s, d) for j, d in enumerate(self.destinations) for i, s in enumerate(self.sources) if ok[j, i]]

    def edge_matrix(self, values: dict[tuple[str, str], float] | np.ndarray) -> np.ndarray:
        """[n_dest, n_source] from per-edge values (a dict, or an array in ``edges`` order)."""
        out = np.zeros(self.allowed.shape)
        index_s = {s: i for i, s in enumerate(self.sources)}
        index_d = {d: j for j, d in enumerate(self.destinations)}
        items = values.items() if isinstance(values, dict) else zip(self.edges, values)
        for (s, d), v in items:
            out[index_d[d], index_s[s]] = v
        return out

    def edge_values(self, matrix: np.ndarray) -> np.ndarray:
        """Per-edge values in ``edges`` order from a [n_dest, n_source] matrix."""
        return np.asarray(matrix)[self.allowed]

    def hook_name(self, node: str, reader: bool) -> str:
        """ACDC/InterpBench hook names: ``blocks.0.hook_mlp_out``, ``blocks.1.hook_v_input[2]``."""
        if node == "embed":
            return get_act_name("resid_pre", 0)
        if node == "end":
            return get_act_name("resid_post", self.n_layers - 1)
        layer = int(node[1:].split(".")[0])
        if node[0] == "m":
            return get_act_name("mlp_in" if reader else "mlp_out", layer)
        head = int(node.split(".")[1])
        if reader:
            return f"{get_act_name(node.split('.')[2] + '_input', layer)}[{head}]"
        return f"{get_act_name('result', layer)}[{head}]"

    def edges_from_hook_names(self, pairs) -> set[tuple[str, str]]:
        """Map (source hook, destination hook) pairs, as InterpBench stores them, onto edges."""
        by_hook = {(self.hook_name(s, False), self.hook_name(d, True)): (s, d) for s, d in self.edges}
        missing = [p for p in pairs if tuple(p) not in by_hook]
        if missing:
            raise ValueError(f"{len(missing)} edges name hooks this graph does not have, e.g. {missing[0]}")
        return {by_hook[tuple(p)] for p in pairs}


def numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array."""
    return t.detach().cpu().numpy()


def graph_of(model) -> Graph:
    return Graph(model.cfg.n_layers, model.cfg.n_heads)


def prepare(model):
    """Turn on the hooks the graph needs: per-head Q/K/V inputs and the MLP input. Per-head
    outputs are computed from ``hook_z`` (TransformerLens's ``use_attn_result`` builds a
    [batch, pos, head, d_head, d_model] product and is several times slower)."""
    if getattr(model.cfg, "parallel_attn_mlp", False):
        raise NotImplementedError(f"{model.cfg.model_name}: attention and MLP read the same residual (parallel blocks, "
                                  "as in GPT-J and Pythia); this graph assumes each MLP reads its layer's attention output")
    if not additive_heads(model):
        raise NotImplementedError(
            f"{model.cfg.model_name}: a norm is applied to the sum of the attention heads (Gemma's post-attention RMSNorm), "
            "so per-head outputs do not add up to what the block writes; mechlib refuses per-head edge scores on this family "
            "rather than return numbers that do not add up")
    if model.cfg.n_key_value_heads is not None:
        # grouped-query attention: K/V inputs per query head, so every head has its own reader
        model.set_ungroup_grouped_query_attention(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    return model
