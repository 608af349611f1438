"""A delta study over layers: train every studied layer's dictionaries, turn the condition
table into a verdict per scope, repeat the headline with more dictionary seeds, and pick the
layer whose latents are described."""
from __future__ import annotations

import dataclasses

import pandas as pd

from . import sae
from .delta_study import ALL, DeltaConfig, Site, condition_table, removal_numbers, run_conditions, train_site, verdict


@dataclasses.dataclass
class Rows:
    """The activation rows a delta study trains on: validation rows of both models, and the
    training rows when they fit ``config.buffer_tokens`` (``collected``; otherwise they are
    streamed per layer). The models are frozen, so one collection serves every seed."""

    val_base: dict
    val_ft: dict
    collected: bool
    base: dict | None = None
    ft: dict | None = None
    ft_old: dict | None = None


def collect_rows(base_lm, ft_lm, layers, config: DeltaConfig, train: pd.DataFrame, val: pd.DataFrame) -> Rows:
    """One pass of each model over the validation problems, and over the training problems
    when their rows fit the buffer."""
    hooks = sorted({n for layer in layers for n in sae.sites(config.kind, layer)})
    old = train[~train.op.isin(config.new_operators)].reset_index(drop=True)
    rows = Rows(sae.collect_rows(base_lm, val, hooks)[0], sae.collect_rows(ft_lm, val, hooks)[0],
                sae.answer_rows(ft_lm, train) <= config.buffer_tokens)
    if rows.collected:
        rows.base = sae.collect_rows(base_lm, train, hooks)[0]
        rows.ft = sae.collect_rows(ft_lm, train, hooks)[0]
        rows.ft_old = sae.collect_rows(ft_lm, old, hooks)[0] if len(old) else None
    return rows


def train_sites(base_lm, ft_lm, layers, config: DeltaConfig, train: pd.DataFrame, val: pd.DataFrame,
                rows: Rows | None = None) -> list[Site]:
    """Every studied layer's dictionaries, from ``rows`` (:func:`collect_rows`; collected
    here when None). Collected training rows are reshuffled on each pass; otherwise they
    are streamed per layer."""
    rows = rows if rows is not None else collect_rows(base_lm, ft_lm, layers, config, train, val)
    old = train[~train.op.isin(config.new_operators)].reset_index(drop=True)  # old_delta's problems (none: no old_delta)
    sites = []
    for layer in layers:
        i, o = sae.sites(config.kind, layer)

        def source(lm, collected, problems=train):
            if rows.collected:
                return lambda seed: sae.shuffled_batches(collected[i], collected[o], config.n_tokens, config.batch_tokens, seed)
            return lambda seed: sae.ActivationBuffer(lm, problems, i, o, config.n_tokens, config.batch_tokens, config.buffer_tokens, seed)

        base = None
        if config.base_source != "train":  # "saelens:RELEASE:ID" with {layer} in ID
            _, release, sae_id = config.base_source.split(":", 2)
            base = sae.load_pretrained_base(release, sae_id.format(layer=layer), device=str(base_lm.cfg.device))
        sites.append(train_site(
            layer, source(base_lm, rows.base), source(ft_lm, rows.ft), (rows.val_base[i], rows.val_base[o]),
            (rows.val_ft[i], rows.val_ft[o]), config, base=base,
            rows_ft_old=source(ft_lm, rows.ft_old, old) if len(old) else None))
    return sites


def headline_scope(layers) -> str:
    """All studied layers at once when there are several, else the one layer."""
    return ALL if len(layers) > 1 else str(layers[0])


def seed_repeats(base_lm, ft_lm, layers, config: DeltaConfig, train, val, evals, verdicts: pd.DataFrame, base_new: float,
                 score=None, rows: Rows | None = None, **scoring) -> pd.DataFrame:
    """The headline test repeated with dictionaries trained from each of ``config.dictionary_seeds``
    (same problems, same fine-tune, the same ``rows`` when given): one row per seed, the run's
    own seed first. ``scoring``: :func:`run_conditions`'s ``splice`` and ``ce``."""
    scope = headline_scope(layers)
    out = [verdicts[verdicts.scope == scope].assign(dictionary_seed=config.seed)]
    for seed in config.dictionary_seeds:
        if seed == config.seed:
            continue
        sites = train_sites(base_lm, ft_lm, layers, dataclasses.replace(config, seed=seed), train, val, rows)
        scopes = [ALL] if scope == ALL else [int(scope)]
        cond = run_conditions(ft_lm, evals, sites, config.kind, (0, 1), config.batch_size, scopes=scopes, sanity=False,
                              score=score, **scoring)
        table = condition_table(cond, config.new_operators)
        out.append(verdict_table(table, base_new).assign(dictionary_seed=seed))
    return pd.concat(out, ignore_index=True)


def verdict_table(table: pd.DataFrame, base_new: float) -> pd.DataFrame:
    """The verdict at every scope, with the numbers it rests on."""
    rows = []
    for scope in table.scope.unique():
        nums = removal_numbers(table, scope, base_new)
        v, why = verdict(nums)
        rows.append({"scope": scope, "verdict": v, "reason": why, **{k: v for k, v in nums.items() if k != "control_gain"},
                     **{f"gain_{c}": g for c, g in nums["control_gain"].items()}})
    return pd.DataFrame(rows)


def pick_focus_layer(verdicts: pd.DataFrame, layers) -> int:
    """The layer where removing the delta costs the new skill most beyond the old."""
    single = verdicts[verdicts.scope != ALL]
    gap = single.cost_new - single.cost_old
    return int(single.loc[gap.idxmax(), "scope"]) if len(single) else int(layers[0])
