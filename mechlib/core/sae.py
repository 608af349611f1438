"""Sparse dictionaries on MLP activations, a frozen base plus a trainable delta, and splicing.

* A :class:`Dictionary` maps an input activation to sparse latents and back:
  ``acts = act(x @ W_enc + b_enc)``, ``recon = acts @ W_dec + b_dec``. As an SAE it
  reconstructs the MLP output from itself; as a transcoder it predicts the MLP output from
  the MLP input. The activation is TopK (keep the k largest pre-activations, then ReLU)
  or ReLU with an L1 penalty, as in SAELens, and dictionaries export to SAELens's format.
* :class:`DeltaDictionary` freezes a base dictionary and adds ``alpha`` times a small
  trainable delta: ``recon = base(x) + alpha * delta(x)``.
* Training streams activations of the answer-relevant tokens (the positions that predict
  the answer) through a bounded buffer: memory holds ``buffer_tokens`` rows, not the set.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import nn
from transformer_lens.utils import get_act_name

from .blocks import cache_activations
from .evaluate import answer_scores, evaluate, teacher_forced_batches

KINDS = ("sae", "transcoder")
ACTIVATIONS = ("topk", "relu")


def sites(kind: str, layer: int) -> tuple[str, str]:
    """(input hook, output hook) of a dictionary of this kind at this layer."""
    if kind == "sae":
        return get_act_name("mlp_out", layer), get_act_name("mlp_out", layer)
    if kind == "transcoder":
        return get_act_name("normalized", layer, "ln2"), get_act_name("mlp_out", layer)
    raise ValueError(f"dictionary kind {kind!r} is not one of {list(KINDS)}")


class Dictionary(nn.Module):
    def __init__(self, d_in: int, d_out: int, d_sae: int, activation: str = "topk", k: int = 8, seed: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {list(ACTIVATIONS)}")
        if activation == "topk" and not 1 <= k <= d_sae:
            raise ValueError(f"k={k} must be in 1..d_sae={d_sae}")
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(d_sae, d_out, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        w_enc = torch.randn(d_in, d_sae, generator=gen) / d_in**0.5 if d_in != d_out else w_dec.T.clone()
        self.W_enc, self.W_dec = nn.Parameter(w_enc), nn.Parameter(w_dec)
        self.b_enc, self.b_dec = nn.Parameter(torch.zeros(d_sae)), nn.Parameter(torch.zeros(d_out))
        self.activation, self.k = activation, k

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: Float[torch.Tensor, "rows d_in"]) -> Float[torch.Tensor, "rows d_sae"]:
        pre = x @ self.W_enc + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, acts: Float[torch.Tensor, "rows d_sae"]) -> Float[torch.Tensor, "rows d_out"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[torch.Tensor, "rows d_in"]) -> tuple[Float[torch.Tensor, "rows d_out"], Float[torch.Tensor, "rows d_sae"]]:
        acts = self.encode(x)
        return self.decode(acts), acts

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows, so an L1 penalty cannot be dodged by shrinking latents."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)


class DeltaDictionary(nn.Module):
    """A frozen base plus ``alpha`` times a trainable delta. ``base_keep`` and ``delta_keep``
    (None, or a 0/1 vector per latent) switch single latents off, for latent ablations."""

    def __init__(self, base: nn.Module, delta: Dictionary):
        super().__init__()
        self.base, self.delta = base, delta
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.alpha = 1.0
        self.base_keep: torch.Tensor | None = None
        self.delta_keep: torch.Tensor | None = None

    def forward(self, x: Float[torch.Tensor, "rows d_in"]) -> tuple[Float[torch.Tensor, "rows d_out"], Float[torch.Tensor, "rows latents"]]:
        base_acts, delta_acts = self.base.encode(x), self.delta.encode(x)
        if self.base_keep is not None:
            base_acts = base_acts * self.base_keep
        if self.delta_keep is not None:
            delta_acts = delta_acts * self.delta_keep
        recon = self.base.decode(base_acts) + self.alpha * self.delta.decode(delta_acts)
        return recon, torch.cat([base_acts, delta_acts], dim=-1)


def random_like(dictionary: Dictionary, seed: int = 0) -> Dictionary:
    """A control: a dictionary of the same width, k and activation whose every weight tensor
    is Gaussian noise rescaled to the trained tensor's Frobenius norm (zero stays zero)."""
    out = Dictionary(dictionary.W_enc.shape[0], dictionary.W_dec.shape[1], dictionary.d_sae, dictionary.activation,
                     dictionary.k, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for mine, theirs in zip(out.parameters(), dictionary.parameters()):
            noise = torch.randn(mine.shape, generator=gen)
            mine.copy_(noise * (theirs.norm() / noise.norm()))
    return out.requires_grad_(False)


# ---------------------------------------------------------------- activations


@torch.inference_mode()
def answer_activations(model, problems: pd.DataFrame, names: Sequence[str], batch_size: int = 256) -> Iterator[dict]:
    """Yield, batch by batch, the activations (rows = tokens) at the positions that predict
    the answer tokens, teacher-forced, for each hook name."""
    prompts, targets = problems["prompt"].tolist(), problems["target"].tolist()
    for _, tokens, plen, tlen in teacher_forced_batches(model, prompts, targets, batch_size):
        cache = cache_activations(model, tokens, names)
        yield {n: cache[n][:, plen - 1 : plen + tlen - 1].reshape(-1, cache[n].shape[-1]).float().cpu() for n in names}


@torch.inference_mode()
def collect_rows(model, problems: pd.DataFrame, names: Sequence[str], batch_size: int = 256) -> tuple[dict, pd.DataFrame]:
    """One pass over the problems: every answer-position row at every hook name, and per row
    the problem's index in ``problems``, which answer token it predicts (``pos`` 0 = the
    first) and that token's id (``next_id``; the last one ends the answer)."""
    prompts, targets = problems["prompt"].tolist(), problems["target"].tolist()
    names = list(dict.fromkeys(names))
    out: dict[str, list] = {n: [] for n in names}
    meta = []
    for idx, tokens, plen, tlen in teacher_forced_batches(model, prompts, targets, batch_size):
        cache = cache_activations(model, tokens, names)
        for n in names:
            out[n].append(cache[n][:, plen - 1 : plen + tlen - 1].reshape(-1, cache[n].shape[-1]).float().cpu())
        meta.append(pd.DataFrame({"problem": np.repeat(idx, tlen), "pos": np.tile(np.arange(tlen), len(idx)),
                                  "next_id": tokens[:, plen : plen + tlen].reshape(-1).cpu().numpy()}))
    return {n: torch.cat(v) for n, v in out.items()}, pd.concat(meta, ignore_index=True)


def answer_rows(model, problems: pd.DataFrame) -> int:
    """How many answer-position rows one pass over the problems yields (no forward pass)."""
    from .evaluate import encode_targets

    return sum(len(t) for t in encode_targets(model, problems["target"].tolist()))


def shuffled_batches(x: Float[torch.Tensor, "rows d_in"], y: Float[torch.Tensor, "rows d_out"], n_tokens: int,
                     batch_tokens: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches from rows already collected (a frozen model gives the same rows on every
    pass): a new seeded permutation per pass, until ``n_tokens`` rows have been served."""
    rng = np.random.default_rng(seed)
    served = 0
    while served < n_tokens:
        perm = torch.from_numpy(rng.permutation(len(x)))
        for s in range(0, len(x), batch_tokens):
            take = perm[s : s + batch_tokens][: n_tokens - served]
            if not len(take):
                break
            yield x[take], y[take]
            served += len(take)
            if served >= n_tokens:
                return


class ActivationBuffer:
    """Minibatches of (input, output) activation rows streamed from a model, through a
    shuffled buffer of at most ``buffer_tokens`` rows. Passes over the problems repeat (in a
    new, seeded order) until ``n_tokens`` rows have been served."""

    def __init__(self, model, problems: pd.DataFrame, in_name: str, out_name: str, n_tokens: int,
                 batch_tokens: int = 512, buffer_tokens: int = 8192, seed: int = 0, problem_batch: int = 256):
        self.model, self.problems, self.names = model, problems, (in_name, out_name)
        self.n_tokens, self.batch_tokens, self.buffer_tokens = n_tokens, batch_tokens, buffer_tokens
        self.rng = np.random.default_rng(seed)
        self.problem_batch = problem_batch
        self.peak_rows = 0

    def _rows(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = self.rng.permutation(len(self.problems))
            for chunk in answer_activations(self.model, self.problems.iloc[order], self.names, self.problem_batch):
                yield chunk[self.names[0]], chunk[self.names[1]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = self._rows()
        buf_x: list[torch.Tensor] = []
        buf_y: list[torch.Tensor] = []
        served = 0
        while served < self.n_tokens:
            while sum(len(b) for b in buf_x) < max(1, self.buffer_tokens // 2):
                x, y = next(rows)
                buf_x.append(x)
                buf_y.append(y)
            x, y = torch.cat(buf_x), torch.cat(buf_y)
            self.peak_rows = max(self.peak_rows, len(x))
            perm = torch.from_numpy(self.rng.permutation(len(x)))
            x, y = x[perm], y[perm]
            # serve half the buffer (at least one row, so a tiny buffer still makes progress)
            take = min(max(1, len(x) // 2), self.n_tokens - served)
            for s in range(0, take, self.batch_tokens):
                yield x[s : min(s + self.batch_tokens, take)], y[s : min(s + self.batch_tokens, take)]
            served += take
            buf_x, buf_y = [x[take:]], [y[take:]]


def collect(model, problems: pd.DataFrame, in_name: str, out_name: str) -> tuple[Float[torch.Tensor, "rows d_in"], Float[torch.Tensor, "rows d_out"]]:
    """All answer-token (input, output) rows of a (small, evaluation) problem set."""
    xs, ys = [], []
    for chunk in answer_activations(model, problems, (in_name, out_name)):
        xs.append(chunk[in_name])
        ys.append(chunk[out_name])
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- training and metrics


def train_dictionaries(modules: Sequence[nn.Module], batches, lr: float = 3e-3, l1: float = 0.0) -> list[list[float]]:
    """Train several dictionaries on one activation stream (each batch feeds all of them):
    Adam on the summed squared reconstruction error per token, plus ``l1`` x the mean L1 of
    the trainable latents for ReLU dictionaries. Returns each module's loss per step."""
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr) for m in modules]
    losses: list[list[float]] = [[] for _ in modules]
    for x, y in batches:
        base_recon: dict[int, torch.Tensor] = {}  # the frozen base's reconstruction, once per batch
        for module, opt, log in zip(modules, opts, losses):
            if isinstance(module, DeltaDictionary):
                trainable = module.delta
                if id(module.base) not in base_recon:
                    with torch.no_grad():
                        base_recon[id(module.base)] = module.base(x)[0]
                recon = base_recon[id(module.base)] + module.alpha * module.delta(x)[0]
            else:
                trainable = module
                recon, _ = module(x)
            loss = (recon - y).pow(2).sum(-1).mean()
            if l1 and trainable.activation == "relu":
                loss = loss + l1 * trainable.encode(x).abs().sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if trainable.activation == "relu":
                trainable.normalise_decoder()
            log.append(loss.item())
    return losses


@torch.no_grad()
def reconstruction_metrics(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """L0, explained variance, normalised MSE and dead-latent share on (x, y) rows.

    explained variance = 1 - sum |y - recon|^2 / sum |y - mean(y)|^2;
    normalised MSE = sum |y - recon|^2 / sum |y|^2; a latent is dead if it never fires.
    For a delta dictionary, L0 and dead latents are reported for the delta's latents."""
    recon, acts = module(x)
    if isinstance(module, DeltaDictionary):
        acts = acts[:, module.base.d_sae :] if hasattr(module.base, "d_sae") else acts
    err = (y - recon).pow(2).sum()
    return {
        "l0": float((acts > 0).float().sum(-1).mean()),
        "explained_variance": float(1 - err / (y - y.mean(0)).pow(2).sum()),
        "nmse": float(err / y.pow(2).sum()),
        "dead_fraction": float(((acts > 0).sum(0) == 0).float().mean()),
    }


# ---------------------------------------------------------------- splicing


def splice_hooks(module: nn.Module, kind: str, layer: int, add_error: bool = False) -> list:
    """Forward hooks that replace the MLP output at ``layer`` by the dictionary's
    reconstruction (from the MLP output for an SAE, from the MLP input for a transcoder).
    ``add_error`` adds the reconstruction error back (computed in float64, so the result is
    the original activation bit for bit): a sanity check of the splice itself."""
    in_name, out_name = sites(kind, layer)
    stash = {}

    def keep(act, hook):
        stash["x"] = act

    def splice(act, hook):
        x = act if in_name == out_name else stash["x"]
        recon = module(x.float())[0]
        if add_error:
            recon64 = recon.double()
            return (recon64 + (act.double() - recon64)).to(act.dtype)
        return recon.to(act.dtype)

    return ([] if in_name == out_name else [(in_name, keep)]) + [(out_name, splice)]


def zero_hooks(kind: str, layer: int) -> list:
    return [(sites(kind, layer)[1], lambda act, hook: torch.zeros_like(act))]


def splice_eval(model, problems: pd.DataFrame, hooks: list, batch_size: int = 512) -> pd.DataFrame:
    """Greedy answers and teacher-forced answer loss with the hooks in place."""
    with model.hooks(fwd_hooks=hooks):
        res = evaluate(model, problems, batch_size=batch_size)
        scores = answer_scores(model, res["prompt"].tolist(), res["target"].tolist(), batch_size=batch_size)
    res["answer_loss"] = scores["answer_loss"].to_numpy()
    return res


def splice_scores(model, problems: pd.DataFrame, hooks: list, batch_size: int = 512) -> pd.DataFrame:
    """Teacher-forced scores with the hooks in place, without decoding: ``correct`` when every
    answer token is the model's top choice given the ones before (what greedy decoding would
    write, up to where the answer ends), and the answer loss. One forward per batch, with
    logits only at the answer positions: the affordable test for a pretrained model's long
    answers, such as tool calls."""
    with model.hooks(fwd_hooks=hooks):
        scores = answer_scores(model, problems["prompt"].tolist(), problems["target"].tolist(), batch_size=batch_size)
    res = problems.reset_index(drop=True).copy()
    res["output"] = ""  # nothing decoded
    res["correct"] = scores["tf_correct"].to_numpy()
    res["answer_loss"] = scores["answer_loss"].to_numpy()
    return res


def ce_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """SAELens's CE loss score: (CE_ablation - CE_spliced) / (CE_ablation - CE_clean)."""
    denom = ce_ablated - ce_clean
    return float((ce_ablated - ce_spliced) / denom) if abs(denom) > 1e-12 else float("nan")


@torch.no_grad()
def mean_abs_latents(module: DeltaDictionary, x: torch.Tensor) -> tuple[float, float]:
    """Mean |activation| of the base latents and of the delta latents on rows x."""
    return float(module.base.encode(x).abs().mean()), float(module.delta.encode(x).abs().mean())


# ---------------------------------------------------------------- SAELens interop


def to_saelens(dictionary: Dictionary, hook_name: str, model_name: str, out_name: str | None = None):
    """A SAELens SAE (``standard`` or ``topk``) with this dictionary's weights. SAELens
    SAEs read and write one site, so transcoders (input != output) are not exported."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = dictionary.W_enc.shape
    if d_in != dictionary.W_dec.shape[1] or (out_name and out_name != hook_name):
        raise ValueError("only dictionaries that read and write the same site (SAEs) export to SAELens")
    meta = SAEMetadata(hook_name=hook_name, model_name=model_name)
    common = dict(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, metadata=meta)
    if dictionary.activation == "topk":
        sae = TopKSAE(TopKSAEConfig(k=dictionary.k, **common))
    else:
        sae = StandardSAE(StandardSAEConfig(**common))
    state = {k: v.detach().clone() for k, v in dictionary.state_dict().items()}
    sae.load_state_dict(state, strict=True)
    return sae


def save_saelens(dictionary: Dictionary, path: Path, hook_name: str, model_name: str, extra: dict | None = None) -> Path:
    """Save in SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``)."""
    path = Path(path)
    to_saelens(dictionary, hook_name, model_name).save_model(path)
    if extra:
        (path / "mechlib.json").write_text(json.dumps(extra, indent=1))
    return path


class SAELensDictionary(nn.Module):
    """Adapter so a SAELens SAE (e.g. ``SAE.from_pretrained`` for GPT-2) serves as a base."""

    def __init__(self, sae):
        super().__init__()
        self.sae = sae

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    def encode(self, x):
        return self.sae.encode(x)

    def decode(self, acts):
        return self.sae.decode(acts)

    def forward(self, x):
        acts = self.sae.encode(x)
        return self.sae.decode(acts), acts


def load_pretrained_base(release: str, sae_id: str, device: str = "cpu") -> SAELensDictionary:
    """A pretrained SAELens dictionary by release and id (needs the Hub)."""
    from sae_lens import SAE

    from .hub import require_hub

    require_hub("sae_release", release, "Pretrained dictionaries come from the Hub; use base_source: train offline.")
    return SAELensDictionary(SAE.from_pretrained(release, sae_id, device=device))
