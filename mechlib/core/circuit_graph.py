"""The computational graph of a HookedTransformer, and circuit-discovery scores on it.

Nodes that write to the residual stream (*sources*): the embeddings (token plus position),
every attention head, every MLP. Nodes that read it (*destinations*): each head's query, key
and value inputs separately, every MLP, and the residual end (what the unembedding reads). An
edge s -> d exists when s sits before d. Every destination's input is the sum of its upstream
sources' outputs (plus constant biases), so an edge is ablated by replacing s's term in d's
input with an ablated value: zero, the dataset mean, or s's output on a corrupted input
(resample). The rest of the forward pass runs as usual.

Scores for every edge: exact patching (one forward per edge, batched), edge attribution
patching (EAP: the first-order term, one forward and one backward; Syed et al. 2023) and EAP
with integrated gradients (EAP-IG: the gradient averaged over inputs interpolated from the
ablated to the clean embeddings; Hanna et al. 2024). Padded inputs are supported: padded keys
are masked in every attention layer, bidirectional ones included.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from transformer_lens.utils import get_act_name

from .families import additive_heads

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


def _pad_hooks(mask: torch.Tensor | None, repeat: int = 1):
    """Hooks masking padded keys ([batch, pos] mask, 1 = real token) in every attention layer."""
    if mask is None:
        return []
    keep = mask.bool().repeat(repeat, 1)[:, None, None, :]

    def hook(scores, hook):
        return scores.masked_fill(~keep.to(scores.device), -1e30)

    return [(lambda name: name.endswith("attn.hook_attn_scores"), hook)]


def source_outputs(model, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [batch, pos, vocab], source outputs [batch, pos, n_source, d_model]) of a clean run."""
    prepare(model)
    g = graph_of(model)
    names = [get_act_name("resid_pre", 0)] + [n for layer in range(g.n_layers)
                                                for n in (get_act_name("z", layer), get_act_name("mlp_out", layer))]
    store = {}

    def keep(x, hook):
        store[hook.name] = x.detach()

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep) for n in names] + _pad_hooks(mask))
        parts = [store[names[0]][:, :, None]]
        for layer in range(g.n_layers):
            parts += [head_results(model, layer, store[get_act_name("z", layer)]),
                      store[get_act_name("mlp_out", layer)][:, :, None]]
        return logits, torch.cat(parts, dim=2)


def head_results(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream [batch, pos, head, d_model] from its z."""
    return torch.einsum("bphd,hdm->bphm", z, model.W_O[layer])


def ablated_outputs(model, tokens: torch.Tensor, mask: torch.Tensor | None, how: str,
                    corrupt: torch.Tensor | None = None, corrupt_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each source's ablated output [batch, pos, n_source, d_model]: zero, the mean over the
    batch's real tokens at each position, or its output on the corrupted inputs (resample)."""
    if how not in ABLATIONS:
        raise ValueError(f"ablation {how!r} is not one of {ABLATIONS}")
    _, clean = source_outputs(model, tokens, mask)
    if how == "zero":
        return torch.zeros_like(clean)
    if how == "mean":
        w = (mask if mask is not None else torch.ones(tokens.shape)).to(clean.device, clean.dtype)[:, :, None, None]
        mean = (clean * w).sum(0, keepdim=True) / w.sum(0, keepdim=True).clamp(min=1)
        return mean.expand_as(clean).clone()
    if corrupt is None:
        raise ValueError("resample ablation needs corrupted inputs")
    return source_outputs(model, corrupt, corrupt_mask)[1]


def run_ablated(model, tokens: torch.Tensor, mask: torch.Tensor | None, ablated: torch.Tensor,
                ablate: torch.Tensor, grads: dict | None = None, embed: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with the edges weighted by ``ablate`` replaced by their ablated values.

    ablate: [n_dest, n_source] (1 = use the ablated value, 0 = clean, in between mixes) or
    [n_variants, n_dest, n_source], which runs the batch once per variant (variant-major).
    grads: if a dict, filled with each destination input's gradient hook target (for EAP).
    embed: replaces the embeddings [batch, pos, d_model] (EAP-IG's interpolation)."""
    prepare(model)
    g = graph_of(model)
    variants = ablate[None] if ablate.dim() == 2 else ablate
    n_var, batch = variants.shape[0], tokens.shape[0]
    weights = variants.to(ablated.device, ablated.dtype)  # [n_var, n_dest, n_source]
    tokens = tokens.repeat(n_var, 1)
    current: list[torch.Tensor] = []  # each source's output in this run, [n_var * batch, pos, d_model]
    dest_index = {d: j for j, d in enumerate(g.destinations)}
    H = g.n_heads

    def delta(rows: list[int]) -> torch.Tensor:
        """[n_var * batch, pos, len(rows), d]: what ablation adds to each of these readers. Each
        variant stacks only the sources it ablates (a single-edge or single-node variant: one)."""
        w = weights[:, rows, : len(current)]  # [n_var, n_rows, n_have]
        out = torch.zeros((n_var * batch, tokens.shape[1], len(rows), current[0].shape[-1]), dtype=ablated.dtype,
                          device=ablated.device)
        for v in range(n_var):
            active = torch.nonzero(w[v].abs().sum(0)).flatten().tolist()
            if not active:
                continue
            part = slice(v * batch, (v + 1) * batch)
            have = torch.stack([current[i][part] for i in active], dim=2)  # [b, p, n_active, d]
            out[part] = torch.einsum("bpsd,rs->bprd", ablated[:, :, active] - have, w[v][:, active])
        return out

    def on_embed(x, hook):
        if embed is not None:
            x = embed.repeat(n_var, 1, 1).requires_grad_(grads is not None)
        current.append(x)
        return x

    def on_z(x, hook):
        current.extend(head_results(model, hook.layer(), x).unbind(2))

    def on_mlp_out(x, hook):
        current.append(x)

    def reader(rows: list[int], per_head: bool, key: str):
        def hook(x, hook):
            if weights[:, rows, : len(current)].any():
                d = delta(rows)
                x = x + (d if per_head else d[:, :, 0])
            if grads is not None:
                x.register_hook(lambda gr: grads.__setitem__(key, gr))
            return x
        return hook

    hooks = [(get_act_name("resid_pre", 0), on_embed)]
    for layer in range(g.n_layers):
        for x in "qkv":
            rows = [dest_index[f"a{layer}.{h}.{x}"] for h in range(H)]
            hooks.append((get_act_name(f"{x}_input", layer), reader(rows, True, f"{layer}{x}")))
        hooks += [(get_act_name("z", layer), on_z),
                  (get_act_name("mlp_in", layer), reader([dest_index[f"m{layer}"]], False, f"m{layer}")),
                  (get_act_name("mlp_out", layer), on_mlp_out)]
    hooks.append((get_act_name("resid_post", g.n_layers - 1), reader([dest_index["end"]], False, "end")))
    return model.run_with_hooks(tokens, fwd_hooks=hooks + _pad_hooks(mask, n_var))


def _grad_matrix(g: Graph, grads: dict) -> torch.Tensor:
    """Gradients at every destination input, stacked [batch, pos, n_dest, d_model]."""
    parts = []
    for layer in range(g.n_layers):
        parts += [grads[f"{layer}{x}"] for x in "qkv"]
        parts[-3:] = [torch.stack(parts[-3:], dim=3).flatten(2, 3)]  # head-major: a.h.q, a.h.k, a.h.v
        parts.append(grads[f"m{layer}"][:, :, None])
    parts.append(grads["end"][:, :, None])
    return torch.cat(parts, dim=2)


@dataclasses.dataclass
class Task:
    """Inputs to score a circuit on: clean tokens, their mask, corrupted tokens, a metric."""

    tokens: torch.Tensor  # [batch, pos]
    metric: Metric  # logits -> [batch]
    mask: torch.Tensor | None = None  # [batch, pos], 1 = real token
    corrupt: torch.Tensor | None = None
    corrupt_mask: torch.Tensor | None = None

    def ablated(self, model, how: str) -> torch.Tensor:
        return ablated_outputs(model, self.tokens, self.mask, how, self.corrupt, self.corrupt_mask)


def _per_variant(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """The metric [n_variants, batch] of a variant-major run."""
    return torch.stack([task.metric(part) for part in logits.split(task.tokens.shape[0])])


def exact_edge_scores(model, task: Task, how: str, rows_per_run: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per edge (``edges`` order): the mean over examples of |metric change| when that one edge
    is ablated, and the mean signed change."""
    g = graph_of(model)
    ablated = task.ablated(model, how)
    with torch.no_grad():
        base = task.metric(run_ablated(model, task.tokens, task.mask, ablated, torch.zeros(g.allowed.shape)))
        idx = np.argwhere(g.allowed)
        absolute, signed = [], []
        chunk = max(1, rows_per_run // task.tokens.shape[0])
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            m = _per_variant(task, run_ablated(model, task.tokens, task.mask, ablated, single_edges(g, part)))
            absolute.append((m - base).abs().mean(1))
            signed.append((m - base).mean(1))
    return numpy(torch.cat(absolute)), numpy(torch.cat(signed))  # argwhere is row-major: ``edges`` order


def single_edges(g: Graph, cells: np.ndarray) -> torch.Tensor:
    """[len(cells), n_dest, n_source]: variant i ablates the one edge at cells[i] = (dest, source)."""
    out = torch.zeros((len(cells), *g.allowed.shape))
    out[torch.arange(len(cells)), cells[:, 0], cells[:, 1]] = 1.0
    return out


def node_ablation_matrix(g: Graph, nodes: list[str]) -> torch.Tensor:
    """[len(nodes), n_dest, n_source]: variant i ablates every edge out of source nodes[i]."""
    allowed = torch.tensor(g.allowed, dtype=torch.float32)
    out = torch.zeros((len(nodes), *allowed.shape))
    for i, node in enumerate(nodes):
        j = g.sources.index(node)
        out[i, :, j] = allowed[:, j]
    return out


def exact_node_scores(model, task: Task, how: str, nodes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per source node: the metric change per example [batch] when its output is ablated."""
    g = graph_of(model)
    nodes = nodes or g.sources[1:]
    ablated = task.ablated(model, how)
    with torch.no_grad():
        base = task.metric(run_ablated(model, task.tokens, task.mask, ablated, torch.zeros(g.allowed.shape)))
        m = _per_variant(task, run_ablated(model, task.tokens, task.mask, ablated, node_ablation_matrix(g, nodes)))
    return {n: numpy(m[i] - base) for i, n in enumerate(nodes)}


def eap_scores(model, task: Task, how: str, steps: int = 0) -> np.ndarray:
    """Edge attribution patching: per edge, the mean over examples of |(ablated - clean output of
    s) . d metric / d (input of d)|. With ``steps`` > 0, EAP-IG: the gradient is averaged over
    ``steps`` runs whose embeddings move from the ablated to the clean ones."""
    g = graph_of(model)
    ablated = task.ablated(model, how)
    _, clean = source_outputs(model, task.tokens, task.mask)
    none = torch.zeros(g.allowed.shape)
    points = [None] if steps <= 0 else [k / steps for k in range(1, steps + 1)]
    total = None
    for alpha in points:
        grads: dict = {}
        # The embeddings are passed in (the clean ones for plain EAP) so that every reader's input
        # has a gradient even when the model's parameters are frozen.
        embed = clean[:, :, 0] if alpha is None else ablated[:, :, 0] + alpha * (clean[:, :, 0] - ablated[:, :, 0])
        logits = run_ablated(model, task.tokens, task.mask, ablated, none, grads=grads, embed=embed)
        task.metric(logits).sum().backward()
        gm = _grad_matrix(g, grads).detach()
        total = gm if total is None else total + gm
    gm = total / len(points)
    if task.mask is not None:
        gm = gm * task.mask.to(gm.device, gm.dtype)[:, :, None, None]
    diff = ablated - clean  # [b, p, n_source, d]
    per_example = torch.einsum("bpsd,bprd->brs", diff, gm)  # [b, n_dest, n_source]
    model.zero_grad(set_to_none=True)
    return g.edge_values(numpy(per_example.abs().mean(0)))


def circuit_metric(model, task: Task, how: str, keep: np.ndarray) -> torch.Tensor:
    """The metric per example with only the edges where ``keep`` ([n_dest, n_source] bool) is
    True left clean, every other edge ablated."""
    g = graph_of(model)
    ablate = torch.tensor(g.allowed & ~np.asarray(keep, dtype=bool), dtype=torch.float32)
    with torch.no_grad():
        return task.metric(run_ablated(model, task.tokens, task.mask, task.ablated(model, how), ablate))


def top_k_masks(g: Graph, scores: np.ndarray, ks: list[int]) -> list[np.ndarray]:
    """Keep-masks [n_dest, n_source] of the k highest-scoring edges (``edges`` order) for each k."""
    order = np.argsort(-np.abs(scores), kind="stable")
    out = []
    for k in ks:
        keep = np.zeros(len(scores), dtype=bool)
        keep[order[:k]] = True
        out.append(g.edge_matrix(keep.astype(float)) > 0)
    return out


def residual_patching(model, task: Task) -> np.ndarray:
    """[n_layers + 1, pos, batch]: the metric when the residual stream at one (layer, position)
    is taken from the corrupted run (layer n_layers is the final residual). All positions of a
    layer run in one batched forward pass, one copy of the batch per position."""
    names = [get_act_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
    names.append(get_act_name("resid_post", model.cfg.n_layers - 1))
    batch, n_pos = task.tokens.shape
    rows = torch.arange(n_pos, device=model.cfg.device).repeat_interleave(batch)  # copy p patches position p
    with torch.no_grad():
        _, cache = model.run_with_cache(task.corrupt, names_filter=lambda n: n in names)
        out = np.zeros((len(names), n_pos, batch))
        for i, name in enumerate(names):
            def hook(x, hook):
                x = x.clone()
                source = cache[hook.name].repeat(n_pos, 1, 1)
                every = torch.arange(len(rows), device=x.device)
                x[every, rows] = source[every, rows]
                return x
            logits = model.run_with_hooks(task.tokens.repeat(n_pos, 1), fwd_hooks=[(name, hook)])
            out[i] = np.stack([numpy(task.metric(part)) for part in logits.split(batch)])
    return out


def attention_to(model, tokens: torch.Tensor, queries: list[int]) -> np.ndarray:
    """Mean attention [n_layers, n_heads, len(queries), pos] from the query positions."""
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return np.stack([numpy(cache[n][:, :, queries].mean(0)) for n in names])


def direct_effects(model, tokens: torch.Tensor, direction: torch.Tensor, position: int) -> dict[str, np.ndarray]:
    """Direct logit attribution: each source's output at ``position``, through the final layer
    norm's scale (frozen at its clean value), along ``direction`` [batch, d_model] (e.g.
    W_U[:, correct] - W_U[:, wrong]). Per source, one value per example."""
    g = graph_of(model)
    _, outs = source_outputs(model, tokens)
    x = outs[:, position]  # [b, n_source, d]
    if model.cfg.normalization_type is not None:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "ln_final.hook_scale")
        if model.cfg.normalization_type in ("LN", "LNPre"):  # LayerNorm centres; RMSNorm only scales
            x = x - x.mean(-1, keepdim=True)
        x = x / cache["ln_final.hook_scale"][:, position][:, None]
    values = numpy(torch.einsum("bsd,bd->bs", x, direction.to(x.device)))
    return {s: values[:, i] for i, s in enumerate(g.sources)}
