"""What a delta dictionary's latents do: ablate one at a time inside the splice (the rise in
answer loss on each skill), describe each from its strongest evaluation rows, and read the
tokens its decoder direction pushes up."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import sae
from .delta_study import DeltaConfig, Site

TOP_ROWS = 20  # a latent is described from its this-many strongest evaluation rows


@torch.no_grad()
def latent_effects(model, problems: pd.DataFrame, site: Site, kind: str, which: str, latents: Sequence[int],
                   new_ops: Sequence[str], batch_size: int = 512) -> pd.DataFrame:
    """Ablate one latent at a time in the full splice at the site's layer: the rise in mean
    answer loss (nats) on the new and the old skill, and the drop in teacher-forced accuracy."""
    from .evaluate import answer_scores

    module = site.delta
    module.alpha = 1.0
    width = module.base.d_sae if which == "base" else module.delta.d_sae
    prompts, targets = problems.prompt.tolist(), problems.target.tolist()
    is_new = problems.op.isin(new_ops).to_numpy()

    def score():
        with model.hooks(fwd_hooks=sae.splice_hooks(module, kind, site.layer)):
            return answer_scores(model, prompts, targets, batch_size=batch_size)

    ref = score()
    rows = []
    try:
        for i in latents:
            keep = torch.ones(width)
            keep[i] = 0
            setattr(module, f"{which}_keep", keep)
            s = score()
            row = {"which": which, "latent": int(i)}
            for prefix, mask in (("new", is_new), ("old", ~is_new)):
                if mask.any():
                    row[f"loss_rise_{prefix}"] = float(s.answer_loss[mask].mean() - ref.answer_loss[mask].mean())
                    row[f"acc_drop_{prefix}"] = float(ref.tf_correct[mask].mean() - s.tf_correct[mask].mean())
            rows.append(row)
    finally:
        module.base_keep = module.delta_keep = None
    return pd.DataFrame(rows)


def describe_latents(acts: torch.Tensor, meta: pd.DataFrame, problems: pd.DataFrame, latents: Sequence[int],
                     logit_push: dict, new_ops: Sequence[str], decode, top: int = TOP_ROWS) -> pd.DataFrame:
    """A data-derived description per latent from its activations on evaluation rows: where
    it fires (which answer token it predicts), on which operator, on which kind of problem
    among its ``top`` strongest rows, and which tokens its decoder direction pushes."""
    info = meta.join(problems.reset_index(drop=True), on="problem")
    names = {i: _token_name(decode(int(i))) for i in info.next_id.unique()}
    info = info.assign(predicts=info.next_id.map(names), is_new=info.op.isin(new_ops))
    rows = []
    for i in latents:
        a = acts[:, i].numpy()
        fires = a > 0
        mean_new = float(a[info.is_new].mean()) if info.is_new.any() else 0.0
        mean_old = float(a[~info.is_new].mean()) if (~info.is_new).any() else 0.0
        order = np.argsort(-a)[:top]
        order = order[a[order] > 0]
        topr = info.iloc[order]
        if not len(topr):
            rows.append({"latent": int(i), "fire_rate": 0.0, "description": "never fires on the evaluation problems"})
            continue
        pos_mode = int(topr.pos.mode().iloc[0])
        pos_share = float((topr.pos == pos_mode).mean())
        tok_mode = topr.predicts.mode().iloc[0]
        tok_share = float((topr.predicts == tok_mode).mean())
        op_mode = topr.op.mode().iloc[0]
        op_share = float((topr.op == op_mode).mean())
        carry_share = float((topr.carries > 0).mean())
        neg_share = float((topr.answer < 0).mean())
        parts = [f"{op_share:.0%} '{op_mode}' problems among its top {len(topr)} rows",
                 f"{pos_share:.0%} at answer token {pos_mode + 1}"]
        if tok_share >= 0.5:
            parts.append(f"{tok_share:.0%} predicting {tok_mode}")
        if neg_share >= 0.5:
            parts.append(f"{neg_share:.0%} negative results")
        if carry_share >= 0.5:
            parts.append(f"{carry_share:.0%} with a {'borrow' if op_mode == '-' else 'carry'}")
        elif carry_share <= 0.1:
            parts.append(f"{1 - carry_share:.0%} without a {'borrow' if op_mode == '-' else 'carry'}")
        parts.append(f"pushes {logit_push.get(int(i), '?')}")
        rows.append({
            "latent": int(i),
            "fire_rate": float(fires.mean()),
            "mean_new": mean_new,
            "mean_old": mean_old,
            "top_examples": ", ".join(f"{p}{t} ({w})" for p, t, w in topr[["prompt", "target", "predicts"]].head(3).itertuples(index=False)),
            "description": "; ".join(parts),
        })
    return pd.DataFrame(rows)


def _token_name(text: str) -> str:
    """A readable name for a predicted token (decoded without special tokens): the end of
    the answer, or the quoted text."""
    return "the end" if not text.strip() else repr(text)


@torch.no_grad()
def logit_push(model, decoder: torch.Tensor, latents: Sequence[int], among: Sequence[int], k: int = 3) -> dict:
    """Per latent, the ``k`` tokens among ``among`` (the answer tokens) that its decoder
    direction raises most through the unembedding (direct effect, ignoring the final layer
    norm's scale), as text."""
    among = sorted(set(int(t) for t in among))
    scores = decoder[list(latents)].to(model.W_U.dtype) @ model.W_U[:, among]
    out = {}
    for i, row in zip(latents, scores):
        ids = [among[j] for j in row.topk(min(k, len(among))).indices.tolist()]
        out[int(i)] = " ".join(_token_name(model.tokenizer.decode([t], skip_special_tokens=True)) for t in ids)
    return out


def describe(ft_lm, evals: pd.DataFrame, site: Site, config: DeltaConfig) -> pd.DataFrame:
    """The delta latents that matter most for the new skill (by ablation), and a few base
    latents for comparison, each with a description derived from its activations."""
    i, o = sae.sites(config.kind, site.layer)
    rows, meta = sae.collect_rows(ft_lm, evals, (i, o))
    x = rows[i]
    with torch.no_grad():
        delta_acts, base_acts = site.delta.delta.encode(x), site.delta.base.encode(x)
    is_new = torch.from_numpy(evals.op.isin(config.new_operators).to_numpy()[meta.problem.to_numpy()])
    sub = evals.groupby("op", group_keys=False).head(300).reset_index(drop=True)
    live = [int(j) for j in (delta_acts > 0).any(0).nonzero().flatten()]
    effects = latent_effects(ft_lm, sub, site, config.kind, "delta", live, config.new_operators, config.batch_size)
    frames = []
    if len(effects):
        top = effects.sort_values("loss_rise_new", ascending=False).head(config.n_latents)
        frames.append(_described(ft_lm, top, delta_acts, site.delta.delta.W_dec, meta, evals, config))
    if config.n_base_latents and is_new.any():
        by_use = base_acts[is_new].mean(0).topk(min(4 * config.n_base_latents, base_acts.shape[1])).indices.tolist()
        base_fx = latent_effects(ft_lm, sub, site, config.kind, "base", by_use, config.new_operators, config.batch_size)
        top = base_fx.sort_values("loss_rise_new", ascending=False).head(config.n_base_latents)
        w_dec = site.delta.base.W_dec if hasattr(site.delta.base, "W_dec") else site.delta.base.sae.W_dec
        frames.append(_described(ft_lm, top, base_acts, w_dec, meta, evals, config))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _described(model, effects: pd.DataFrame, acts, w_dec, meta, evals, config: DeltaConfig) -> pd.DataFrame:
    latents = effects.latent.tolist()
    push = logit_push(model, w_dec.detach(), latents, among=meta.next_id.unique())
    decode = lambda t: model.tokenizer.decode([t], skip_special_tokens=True)
    desc = describe_latents(acts, meta, evals, latents, push, config.new_operators, decode)
    return effects.merge(desc, on="latent")


@torch.no_grad()
def embedding_share(base_lm, ft_lm, site: Site, problems: pd.DataFrame, kind: str, tol: float = 1e-6) -> dict:
    """How much of what the delta writes lies in the directions the fine-tune added to the
    embeddings (token and position rows that changed): a fine-tune that also trains its
    embeddings puts directions in the residual stream that a dictionary trained on the base
    model cannot know, and the delta may only be reconstructing those. Returns the span's
    dimension, the share of the delta's output norm (squared) in it on these problems'
    answer rows, and what a random subspace of that dimension would hold (dim / d_model)."""
    changes = [ft_lm.W_E - base_lm.W_E]
    if hasattr(ft_lm, "W_pos") and hasattr(base_lm, "W_pos"):
        changes.append(ft_lm.W_pos - base_lm.W_pos)
    rows = torch.cat([c[c.norm(dim=-1) > tol] for c in changes]).float()  # [changed rows, d_model]
    d_model = ft_lm.cfg.d_model
    if not len(rows):
        return {"dim": 0, "share": 0.0, "random_share": 0.0}
    u, sv, _ = torch.linalg.svd(rows.T, full_matrices=False)  # columns of u span the changes
    basis = u[:, sv > sv.max() * 1e-4]  # [d_model, dim]
    i, _ = sae.sites(kind, site.layer)
    x = sae.collect_rows(ft_lm, problems, (i,))[0][i]
    written = site.delta.delta.decode(site.delta.delta.encode(x))  # [rows, d_model]: the delta's part of the splice
    total = float((written ** 2).sum())
    inside = float(((written @ basis) ** 2).sum())
    return {"dim": int(basis.shape[1]), "share": inside / total if total else 0.0, "random_share": basis.shape[1] / d_model}
