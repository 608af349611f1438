"""Chapter 4's delta test on a pretrained model's tool fine-tune, within a CPU's budget.

The machinery is the organism's (:mod:`mechlib.core.delta_study`,
:mod:`mechlib.core.delta_sites`): per studied layer, a TopK SAE trained on the base model's
MLP output and frozen, a sweep of deltas trained on the fine-tune so that base + delta
reconstructs it, the same conditions (raw, no_delta, full, full+error), controls
(random_delta, base_delta, old_delta), reference (wide_base), alpha sweep and verdict. The
new skill is opening the call, ``<tool_call>calculator(``, on arithmetic requests: the
format the fine-tune added (the operands inside a call are copies, and copying is the old
skill). The old skill is the exact copy on copy requests, which the base model already does.

What two CPU cores force, each said on the page:

* **Two layers, chosen by weight patching** on held-out call requests kept apart from the
  test: each layer's LoRA update alone is put into the base model ("only L"), and the two
  layers whose update alone lowers the loss of the call's opening tokens most are studied.
* **Both layers at once** is the only scope (no per-layer conditions).
* **Teacher-forced scoring**, resumed at the first studied block
  (:class:`mechlib.core.resume.Resumed`): a reply (for an arithmetic request, the call's
  opening) is right when every token of it is the model's top choice given the ones before,
  which is what greedy decoding writes; no decoding, and no zeroed-MLP run, so no CE-loss score.
* **Small dictionaries on few rows**: the rows are the reply positions of a few hundred
  training requests, and the base is, by default, a little wider than the residual stream.
"""
from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from . import lora
from .data import pair_key
from .delta_sites import collect_rows, headline_scope, seed_repeats, train_sites, verdict_table
from .delta_study import ALL, DeltaConfig, condition_table, error_check, run_conditions
from .resume import Resumed
from .sae import splice_scores
from .tool_study import ToolLoraConfig, eval_requests
from .weight_patch import component_keys


@dataclasses.dataclass(frozen=True)
class RealDeltaConfig:
    """The test's sizes: requests per operator (and as many copy requests) for choosing the
    layers, testing, training and validating the dictionaries; the dictionaries; the doses."""

    n_layers: int = 2
    n_choose: int = 8
    n_eval: int = 30
    n_train: int = 100
    n_val: int = 15
    base_width: int = 1024
    base_k: int = 32
    delta_widths: tuple[int, ...] = (64, 128)
    delta_ks: tuple[int, ...] = (8, 16)
    n_tokens: int = 30000
    lr: float = 0.003
    alphas: tuple[float, ...] = (0, 0.5, 1, 1.5)
    dictionary_seeds: tuple[int, ...] = (1,)
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layers", "n_choose", "n_eval", "n_train", "n_val", "base_width", "base_k", "n_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: a positive integer, got {getattr(self, name)!r}")
        if not {0, 1} <= set(self.alphas):
            raise ValueError(f"alphas: must include 0 (no_delta) and 1 (full), got {self.alphas!r}")

    def delta(self, operators) -> DeltaConfig:
        return DeltaConfig(new_operators=tuple(operators), kind="sae", activation="topk", base_width=self.base_width,
                           base_k=self.base_k, delta_widths=self.delta_widths, delta_ks=self.delta_ks, lr=self.lr,
                           n_tokens=self.n_tokens, buffer_tokens=10**7, alphas=self.alphas,
                           dictionary_seeds=self.dictionary_seeds, batch_size=self.batch_size, seed=self.seed)


def opener(target: str) -> str:
    """The opening of a call reply, up to the calculator's parenthesis: ``' <tool_call>calculator('``."""
    return target[: target.index("(") + 1]


def request_sets(config: ToolLoraConfig, delta: RealDeltaConfig) -> dict[str, pd.DataFrame]:
    """Disjoint request sets. ``eval``: the first ``n_eval`` of each kind among the requests
    the chapter scores (held out from the fine-tune); ``choose`` (call requests) and ``val``:
    other held-out requests; ``train``: requests the fine-tune trained on."""
    train_new, held_new, train_old, held_old = lora.splits(config.recipe())
    held = pd.concat([held_new, held_old], ignore_index=True)
    scored = eval_requests(config, held)
    evals = scored[scored.subset.isin(["tool", "copy"])].groupby("op", sort=False).head(delta.n_eval).reset_index(drop=True)
    taken = {pair_key(int(a), op, int(b)) for a, op, b in zip(evals.a, evals.op, evals.b)}
    rest = held[[pair_key(int(a), op, int(b)) not in taken for a, op, b in zip(held.a, held.op, held.b)]]
    choose = lora.per_cell_sample(rest[rest.needs_call], delta.n_choose, delta.seed + 1)
    chosen = set(zip(choose.a, choose.op, choose.b))
    rest = rest[[k not in chosen for k in zip(rest.a, rest.op, rest.b)]]
    val = lora.per_cell_sample(rest, delta.n_val, delta.seed + 2)
    train = lora.per_cell_sample(pd.concat([train_new, train_old], ignore_index=True), delta.n_train, delta.seed)
    return {"eval": evals, "choose": choose, "val": val, "train": train}


def choose_layers(base, tuned, requests: pd.DataFrame, n_layers: int, batch_size: int = 32) -> tuple[pd.DataFrame, list[int]]:
    """Weight patching: the loss of the call's opening tokens with each layer's update alone
    in the base model ("only L": the fine-tune's block L among the base's blocks), against
    the base and the fine-tune; the ``n_layers`` layers with the lowest loss, in layer
    order. One row per design. The blocks below L are the base's in every design, so each
    resumes from the base's residual stream there (:class:`~mechlib.core.resume.Resumed`)."""
    component_keys(base, tuned)  # fails if the update reaches outside the blocks
    problems = requests.assign(target=[opener(t) for t in requests.target])
    resumed = Resumed(base, problems, range(base.cfg.n_layers), batch_size)

    def loss(start: int, blocks) -> float:
        return float(resumed.scores(start, blocks).answer_loss.mean())

    rows = [{"design": "base", "layer": -1, "opener_loss": loss(0, base.blocks)},
            {"design": "fine-tuned", "layer": -1, "opener_loss": loss(0, tuned.blocks)}]
    for layer in range(base.cfg.n_layers):
        rows.append({"design": "only", "layer": layer, "opener_loss": loss(layer, [tuned.blocks[layer], *base.blocks[layer + 1 :]])})
    table = pd.DataFrame(rows)
    only = table[table.design == "only"]
    layers = sorted(int(x) for x in only.nsmallest(n_layers, "opener_loss").layer)
    table["studied"] = table.layer.isin(layers) & (table.design == "only")
    return table, layers


def study(config: ToolLoraConfig, delta: RealDeltaConfig, base, tuned) -> dict:
    """The whole test on loaded models (the base and the cached fine-tune of ``config``):
    layer choice, dictionaries, conditions at both layers at once, the verdict, and the
    headline repeated with other dictionary seeds."""
    seconds = {}
    start = time.perf_counter()
    sets = request_sets(config, delta)
    choice, layers = choose_layers(base, tuned, sets["choose"], delta.n_layers, delta.batch_size)
    seconds["choose_layers"] = round(time.perf_counter() - start, 1)
    dconfig = delta.delta(config.operators)
    t = time.perf_counter()
    rows = collect_rows(base, tuned, layers, dconfig, sets["train"], sets["val"])
    sites = train_sites(base, tuned, layers, dconfig, sets["train"], sets["val"], rows)
    seconds["dictionaries"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    evals = sets["eval"].assign(target=[opener(t) if call else t for t, call in zip(sets["eval"].target, sets["eval"].needs_call)])
    scope = headline_scope(layers)
    scopes = [ALL] if scope == ALL else [int(scope)]
    splice = Resumed(tuned, evals, [min(layers)], delta.batch_size).splice  # every splice sits at the studied layers or later
    conditions = run_conditions(tuned, evals, sites, "sae", delta.alphas, delta.batch_size, scopes=scopes, splice=splice, ce=False)
    table = condition_table(conditions, config.operators)
    tool = evals[evals.needs_call]
    base_new = float(splice_scores(base, tool, [], delta.batch_size).correct.mean())
    verdicts = verdict_table(table, base_new)
    seconds["conditions"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    seeds = seed_repeats(base, tuned, layers, dconfig, sets["train"], sets["val"], evals, verdicts, base_new, rows=rows,
                         splice=splice, ce=False)
    seconds["seed_repeats"] = round(time.perf_counter() - t, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)
    return {"choice": choice, "layers": layers, "table": table, "verdicts": verdicts, "seeds": seeds,
            "sweep": pd.concat([s.sweep for s in sites], ignore_index=True),
            "reconstruction": pd.DataFrame([{"layer": s.layer, "dictionary": k, **v} for s in sites for k, v in s.base_metrics.items()]),
            "sanity": error_check(conditions), "base_new": base_new, "d_model": int(base.cfg.d_model),
            "n": {k: len(v) for k, v in sets.items()} | {"eval_new": int(evals.needs_call.sum()), "eval_old": int((~evals.needs_call).sum()),
                                                        "train_rows": int(len(next(iter(rows.ft.values()))))},
            "config": dataclasses.asdict(delta), "threads": torch.get_num_threads(), "seconds": seconds}
