"""Transformers whose circuit is known: tracr-compiled RASP programs as HookedTransformers.

tracr (Lindner et al. 2023) compiles a RASP program to transformer weights. Its last step,
assembling a haiku model, costs seconds per program; the compiled intermediate ("craft") form
already holds every matrix, so this module builds the TransformerLens weights from it with
numpy, the same matrices tracr assembles. The unembedding is tracr's projection from the
residual space onto the output space (the output dimensions are not the first ones in general).

The models are bidirectional and read right-padded inputs: padded keys are masked in the
circuit code (``circuit_graph``), so the outputs at real positions equal the RASP evaluator's
on the unpadded input. The ground-truth circuit follows from the weights: an edge s -> d is in
it when s's write matrix times d's read matrix is non-zero.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

BOS, PAD = "compiler_bos", "compiler_pad"


def _programs() -> dict[str, Callable]:
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return {
        "frac_prevs": lambda n: lib.make_frac_prevs(rasp.tokens == "x"),
        "reverse": lambda n: lib.make_reverse(rasp.tokens),
        "sort": lambda n: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1),
        "hist": lambda n: lib.make_hist(),
        "sort_freq": lambda n: lib.make_sort_freq(n),
        "length": lambda n: lib.make_length(),
    }


# Vocabularies: frac_prevs counts "x"; sort needs numbers (its keys are shifted by position).
_VOCABS = {"frac_prevs": ("a", "b", "x"), "sort": (1, 2, 3, 4, 5)}
PROGRAMS = ("frac_prevs", "reverse", "sort", "hist", "sort_freq", "length")


@dataclasses.dataclass
class TracrModel:
    """A compiled program as a HookedTransformer, with what is needed to feed and read it."""

    name: str
    model: object  # HookedTransformer
    program: object  # the RASP expression
    vocab: tuple
    max_seq_len: int
    token_ids: dict  # input value -> token id (BOS and PAD included)
    output_values: list  # output-space direction values, in W_U column order
    categorical: bool

    @property
    def bos_id(self) -> int:
        return self.token_ids[BOS]

    @property
    def pad_id(self) -> int:
        return self.token_ids[PAD]

    def encode(self, inputs: list[list]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids [batch, max_seq_len + 1] with BOS first, and the mask of real tokens."""
        width = self.max_seq_len + 1
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for i, seq in enumerate(inputs):
            if not 1 <= len(seq) <= self.max_seq_len:
                raise ValueError(f"input {seq!r} has length {len(seq)}; allowed 1 to {self.max_seq_len}")
            ids[i, : len(seq) + 1] = torch.tensor([self.bos_id] + [self.token_ids[v] for v in seq])
            mask[i, : len(seq) + 1] = 1
        return ids, mask

    def decode(self, out: torch.Tensor, mask: torch.Tensor) -> list[list]:
        """Outputs at the real (non-BOS, non-pad) positions of ``out`` [batch, pos, d_vocab_out]."""
        rows = []
        for o, m in zip(out, mask):
            n = int(m.sum()) - 1
            o = o[1 : n + 1]
            if self.categorical:
                rows.append([self.output_values[i] for i in o.argmax(-1).tolist()])
            else:
                rows.append(o[:, 0].tolist())
        return rows

    def evaluate(self, inputs: list[list]) -> list[list]:
        """tracr's own RASP evaluator: the reference the compiled weights must match."""
        from tracr.rasp import rasp

        return [rasp.evaluate(self.program, list(seq)) for seq in inputs]

    def inputs_of(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list]:
        """The RASP inputs behind encoded ids (BOS and padding dropped): ``encode``'s inverse."""
        by_id = {i: v for v, i in self.token_ids.items()}
        return [[by_id[t] for t in row[1 : int(m.sum())].tolist()] for row, m in zip(ids, mask)]

    @staticmethod
    def same(out: list, ref: list, tol: float = 1e-3) -> bool:
        """Whether decoded outputs equal RASP's (numerical outputs to ``tol``)."""
        if any(isinstance(r, float) for r in ref):
            return all(abs(o - r) < tol for o, r in zip(out, ref))
        return list(out) == list(ref)

    def random_inputs(self, n: int, seed: int, min_len: int = 2) -> list[list]:
        """``n`` inputs of random length (min_len to max_seq_len) and random tokens."""
        rng = np.random.default_rng(seed)
        lengths = rng.integers(min_len, self.max_seq_len + 1, size=n)
        return [[self.vocab[i] for i in rng.integers(0, len(self.vocab), size=k)] for k in lengths]


def _craft(program, vocab: set, max_seq_len: int):
    """tracr's compiler up to the craft model (skipping the slow haiku assembly)."""
    from tracr.compiler import basis_inference, craft_graph_to_model, expr_to_craft_graph, nodes, rasp_to_graph
    from tracr.craft import bases
    from tracr.rasp import rasp

    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, BOS), mlp_exactness=100)
    craft = craft_graph_to_model.craft_graph_to_model(graph, sources)
    values = graph.nodes[rasp.tokens.label][nodes.VALUE_SET] | {BOS, PAD}
    tokens_space = bases.VectorSpaceWithBasis.from_values(rasp.tokens.label, values)
    indices_space = bases.VectorSpaceWithBasis.from_values(rasp.indices.label, range(max_seq_len))
    output_space = bases.VectorSpaceWithBasis(sink[nodes.OUTPUT_BASIS])
    return craft, tokens_space, indices_space, output_space, rasp.is_categorical(sink[nodes.EXPR])


def compile_program(name: str, max_seq_len: int = 5, vocab: tuple | None = None, device: str = "cpu") -> TracrModel:
    """Compile one of tracr's library programs (``PROGRAMS``) and convert it to a HookedTransformer."""
    from tracr.craft import bases, transformers, vectorspace_fns
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    makers = _programs()
    if name not in makers:
        raise ValueError(f"tracr program {name!r} is not one of {sorted(makers)}")
    vocab = tuple(vocab or _VOCABS.get(name, ("a", "b", "c")))
    program = makers[name](max_seq_len)
    craft, tokens_space, indices_space, output_space, categorical = _craft(program, set(vocab), max_seq_len)
    residual = bases.join_vector_spaces(craft.residual_space, tokens_space, indices_space, output_space)

    def project(space) -> np.ndarray:
        return vectorspace_fns.project(residual, space).matrix

    # Layer slots as tracr assigns them: attn and MLP alternate; an absent one stays zero.
    candidates = iter((i // 2, ("attn", "mlp")[i % 2]) for i in range(2 * len(craft.blocks)))
    slots = []
    for block in craft.blocks:
        kind = "mlp" if isinstance(block, transformers.MLP) else "attn"
        layer, slot = next(candidates)
        while slot != kind:
            layer, slot = next(candidates)
        slots.append((layer, kind, block))
    n_layers = slots[-1][0] + 1
    heads = [list(b.as_multi().heads()) for _, k, b in slots if k == "attn"]
    n_heads = max([len(h) for h in heads] or [1])
    d_head = max([max(h.w_qk.matrix.shape) for hs in heads for h in hs] or [1])
    d_mlp = max([b.fst.output_space.num_dims for _, k, b in slots if k == "mlp"] or [1])
    d = residual.num_dims

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d, n_ctx=max_seq_len + 1, d_head=d_head, n_heads=n_heads, d_mlp=d_mlp,
        d_vocab=tokens_space.num_dims, d_vocab_out=output_space.num_dims, act_fn="relu", normalization_type=None,
        attention_dir="bidirectional", positional_embedding_type="standard", device=device,
        model_name=f"tracr-{name}", default_prepend_bos=False)
    model = HookedTransformer(cfg)
    state = model.state_dict()
    # Every parameter zero unless set below; buffers (the attention mask, IGNORE) stay as they are.
    w = {k: np.zeros(p.shape, dtype=np.float64) for k, p in model.named_parameters()}

    emb = vectorspace_fns.project(tokens_space, residual)
    one = bases.BasisDirection("one")
    if one in residual:
        ones = vectorspace_fns.Linear.from_action(tokens_space, residual,
                                                  lambda x: residual.vector_from_basis_direction(one))
        emb = vectorspace_fns.Linear.combine_in_parallel([emb, ones])
    w["embed.W_E"] = emb.matrix
    # Position 0 holds BOS and gets no index direction; token i sits at position i + 1.
    w["pos_embed.W_pos"] = np.concatenate([np.zeros((1, d)), vectorspace_fns.project(indices_space, residual).matrix])
    w["unembed.W_U"] = project(output_space)

    for layer, kind, block in slots:
        p = f"blocks.{layer}."
        if kind == "mlp":
            hidden = block.fst.output_space.num_dims
            w[p + "mlp.W_in"][:, :hidden] = project(block.fst.input_space) @ block.fst.matrix
            w[p + "mlp.W_out"][:hidden, :] = block.snd.matrix @ project(block.snd.output_space).T
            continue
        for h, head in enumerate(block.as_multi().heads()):
            k = head.w_qk.matrix.shape[1]
            w[p + "attn.W_Q"][h, :, :k] = project(head.w_qk.left_space) @ head.w_qk.matrix
            w[p + "attn.W_K"][h, :, :k] = project(head.w_qk.right_space)
            v = head.w_ov.matrix.shape[1]
            w[p + "attn.W_V"][h, :, :v] = project(head.w_ov.input_space) @ head.w_ov.matrix
            w[p + "attn.W_O"][h, :v, :] = project(head.w_ov.output_space).T

    model.load_state_dict(state | {k: torch.tensor(v, dtype=state[k].dtype) for k, v in w.items()}, strict=True)
    token_ids = {b.value: i for i, b in enumerate(tokens_space.basis)}
    return TracrModel(name=name, model=model.eval(), program=program, vocab=vocab, max_seq_len=max_seq_len,
                      token_ids=token_ids, output_values=[b.value for b in output_space.basis], categorical=categorical)


def true_edges(tm: TracrModel, tol: float = 1e-9) -> np.ndarray:
    """The ground-truth circuit [n_dest, n_source] (``circuit_graph.Graph`` order): s -> d is in
    it when s's write matrix times d's read matrix is non-zero."""
    from .circuit_graph import graph_of

    m, g = tm.model, graph_of(tm.model)
    write = {"embed": torch.cat([m.W_E, m.W_pos])}
    read = {"end": m.W_U}
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            write[f"a{layer}.{h}"] = m.W_O[layer, h]
            read |= {f"a{layer}.{h}.{x}": w[layer, h] for x, w in zip("qkv", (m.W_Q, m.W_K, m.W_V))}
        write[f"m{layer}"], read[f"m{layer}"] = m.W_out[layer], m.W_in[layer]
    truth = np.zeros(g.allowed.shape, dtype=bool)
    with torch.no_grad():
        for j, d in enumerate(g.destinations):
            for i, s in enumerate(g.sources):
                truth[j, i] = g.allowed[j, i] and bool((write[s] @ read[d]).abs().max() > tol)
    return truth


def task(tm: TracrModel, n: int, seed: int):
    """A ``circuit_graph.Task`` on ``n`` random variable-length inputs: the metric is the mean over
    real positions of the log-probability of the clean output (categorical programs) or of the
    output value (numerical ones); the corrupted inputs are other random inputs (resample)."""
    from .circuit_graph import Task

    ids, mask = tm.encode(tm.random_inputs(n, seed))
    corrupt, corrupt_mask = tm.encode(tm.random_inputs(n, seed + 10_000))
    real = mask.clone()
    real[:, 0] = 0  # BOS carries no output
    real = real.to(torch.float32)
    with torch.no_grad():
        target = tm.model(ids).argmax(-1) if tm.categorical else None

    def metric(logits: torch.Tensor) -> torch.Tensor:
        if tm.categorical:
            per_pos = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]
        else:
            per_pos = logits[..., 0]
        return (per_pos * real).sum(1) / real.sum(1)

    return Task(tokens=ids, metric=metric, mask=mask, corrupt=corrupt, corrupt_mask=corrupt_mask)


def varying_edges(tm: TracrModel, task, tol: float = 1e-6) -> np.ndarray:
    """The circuit edges whose signal changes with the input [n_dest, n_source]: s's output,
    minus its mean over the task's inputs at each position, still reaches d's read matrix.
    Mean and resample ablation cannot see the other circuit edges (a constant signal, such as
    the BOS or 'one' direction, is the same in the clean and the ablated run)."""
    from .circuit_graph import ablated_outputs, graph_of, source_outputs

    g = graph_of(tm.model)
    _, clean = source_outputs(tm.model, task.tokens, task.mask)
    centred = clean - ablated_outputs(tm.model, task.tokens, task.mask, "mean")
    centred = centred * task.mask[:, :, None, None]
    truth = true_edges(tm)
    m = tm.model
    out = np.zeros_like(truth)
    with torch.no_grad():
        for j, d in enumerate(g.destinations):
            if d == "end":
                read = m.W_U
            elif d[0] == "m":
                read = m.W_in[int(d[1:])]
            else:
                layer, head, x = d[1:].split(".")
                read = {"q": m.W_Q, "k": m.W_K, "v": m.W_V}[x][int(layer), int(head)]
            reach = torch.einsum("bpsd,dk->bpsk", centred, read).abs().sum((0, 1, 3))
            out[j] = truth[j] & (reach.numpy() > tol)
    return out
