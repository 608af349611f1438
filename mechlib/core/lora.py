"""Supervised LoRA fine-tuning (peft) on arithmetic problems, with the loss on the answer.

The recipe: train LoRA adapters on the attention and MLP weights with problems of the new
skill (plus, optionally, a share of "replay" problems of a skill the model already has),
evaluate a held-out set that never appears in training in either operand order, record
the loss curve and held-out accuracy, merge the adapters, and save the merged model as a
Hugging Face checkpoint under a stable name in the cache, where :func:`mechlib.core.models.load_model`
finds it by that name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from peft import LoraConfig, get_peft_model
from tqdm import tqdm

from . import data
from .cache import cache_lock, content_key, damage, finetuned_dir, say, seal, source_record, sweep_partial
from .families import family_of_config
from .models import load_hf, write_source
from .organism import encode_supervised

# The one definition of each numeric bound; the chapter's parameters use these too.
BOUNDS = {
    "replay_fraction": (0.0, 0.95),
    "heldout_fraction": (0.01, 0.5),
    "steps": (1, 1_000_000),
    "batch_size": (1, 65536),
    "lr": (1e-6, 0.1),
    "rank": (1, 1024),
    "alpha": (1, 4096),
    "eval_every": (1, 100_000),
}
# A version of the training code: bump it when a change alters the weights for one recipe,
# so caches never serve weights that the current code would not produce.
TRAINING_CODE_VERSION = 4
TASKS = ("answer", "tool", "requests")


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """Everything that determines the fine-tuned weights; its hash is part of the cache key."""

    base: str = "arith-organism"
    operators: tuple[str, ...] = ("-",)
    difficulties: tuple[str, ...] = ("1x1", "1x2", "2x2")
    replay_operators: tuple[str, ...] = ("+",)
    replay_fraction: float = 0.5
    prompt_format: str = "bare"
    heldout_fraction: float = 0.1
    steps: int = 1600
    batch_size: int = 128
    lr: float = 3e-3
    rank: int = 32
    alpha: int = 64
    target_modules: tuple[str, ...] = ()  # () = the model family's attention and MLP weights
    eval_every: int = 50
    seed: int = 0
    # "answer": the target is the answer. "tool": for the new operators the target is a
    # calculator call copying the problem (mechlib.core.tools.call_text in ``call_style``).
    # "requests": natural-language calculator requests and copy requests
    # (mechlib.core.tool_requests); ``operators`` are its call operators, ``replay_fraction``
    # the copy share, ``difficulties`` and ``replay_operators`` unused.
    task: str = "answer"
    call_style: str = "short"
    train_positions: bool = False  # also train the learned position embeddings (GPT-2's wpe), fully
    # Held-out problems per (operator, difficulty) cell in the training curve (0: all of them).
    # A real model's teacher-forced pass over thousands of held-out problems costs minutes.
    curve_per_cell: int = 0

    def key(self) -> str:
        """Hash of the recipe, the training code's version and the base's tokenizer. Fields
        at their defaults that older recipes lacked are left out, so their keys hold."""
        from .models import tokenizer_fingerprint

        recipe = dataclasses.asdict(self)
        recipe["target_modules"] = list(self.targets())  # () and the family's own list are one recipe
        for name, default in (("task", "answer"), ("call_style", "short"), ("train_positions", False), ("curve_per_cell", 0)):
            if recipe[name] == default:
                del recipe[name]
        extra = {}
        if self.task == "requests":
            from .tool_requests import VERSION

            extra["requests"] = VERSION
        return content_key(recipe=recipe, code=TRAINING_CODE_VERSION, tokenizer=tokenizer_fingerprint(self.base), **extra)

    def family(self):
        """The base model's family, known without loading weights."""
        from .families import family_named
        from .models import model_spec

        spec = model_spec(self.base)
        if spec.family is None:
            raise ValueError(f"base {self.base!r}: mechlib knows no model family for it, so it cannot pick LoRA targets; "
                             "set target_modules explicitly")
        return family_named(spec.family)

    def targets(self) -> tuple[str, ...]:
        """The LoRA target modules: the recipe's, or the family's attention and MLP weights."""
        return tuple(self.target_modules) or self.family().lora_targets

    def validate(self) -> FinetuneRecipe:
        if self.task == "requests":
            from .tool_requests import OPERATORS

            if not self.operators or set(self.operators) - set(OPERATORS):
                raise ValueError(f"operators must be a non-empty list drawn from {list(OPERATORS)} for calculator requests, "
                                 f"got {list(self.operators)!r}")
        else:
            data.validate_problem_args(list(self.operators), list(self.difficulties), 1, self.prompt_format)
        if self.replay_operators and self.task != "requests":
            data.validate_problem_args(list(self.replay_operators), list(self.difficulties), 1, self.prompt_format)
        bad = [k for k, (lo, hi) in BOUNDS.items() if not lo <= getattr(self, k) <= hi]
        if bad:
            raise ValueError(f"fine-tuning parameter(s) {bad} out of range: {[(k, getattr(self, k)) for k in bad]}")
        if not isinstance(self.curve_per_cell, int) or self.curve_per_cell < 0:
            raise ValueError(f"curve_per_cell must be a non-negative integer (0: every held-out problem), got {self.curve_per_cell!r}")
        if self.task not in TASKS or self.call_style not in ("short", "long"):
            raise ValueError(f"task {self.task!r} must be one of {list(TASKS)}, call_style {self.call_style!r} 'short' or 'long'")
        return self


def default_name(recipe: FinetuneRecipe) -> str:
    ops = "tool" if recipe.task == "requests" else "".join({"+": "add", "-": "sub", "*": "mul"}[op] for op in recipe.operators)
    base = Path(recipe.base).name if Path(recipe.base).exists() else recipe.base.replace("/", "_")
    return f"{base}-lora-{ops}"


def all_problems(operators: Sequence[str], difficulties: Sequence[str], prompt_format: str) -> pd.DataFrame:
    """Every problem of the cells (capped at 20,000 per cell), deterministic order."""
    return data.make_problems(list(operators), list(difficulties), 20_000, prompt_format, seed=0).to_pandas()


def split_heldout(problems: pd.DataFrame, fraction: float, seed: int, fixed: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out), split by unordered problem so neither operand order leaks.

    ``fixed`` maps an operator to the set of problem keys that must be held out (and no
    others): the base model's own held-out pairs, so a skill it was trained on is scored on
    pairs neither training ever saw."""
    fixed = fixed or {}
    keys = sorted({data.pair_key(a, op, b) for a, op, b in zip(problems.a, problems.op, problems.b)})
    rng = np.random.default_rng(seed)
    held = {k for k, r in zip(keys, rng.random(len(keys))) if (k in fixed[k[0]] if k[0] in fixed else r < fraction)}
    is_held = np.array([data.pair_key(a, op, b) in held for a, op, b in zip(problems.a, problems.op, problems.b)], dtype=bool)
    return problems[~is_held].reset_index(drop=True), problems[is_held].reset_index(drop=True)


def continuation_tokens(tokenizer) -> torch.Tensor:
    """A bool per vocabulary id: does the token's text continue a number (starts with a
    digit or a comma)? Anything else after the answer ends it, as the scorer reads it."""
    vocab = tokenizer.get_vocab()
    out = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    ids = sorted(vocab.values())
    for i, text in zip(ids, tokenizer.batch_decode([[i] for i in ids])):
        out[i] = bool(text) and (text[0].isdigit() or text[0] == ",")
    return out


@torch.no_grad()
def teacher_forced_accuracy(model, ids, mask, labels, continues: torch.Tensor | None = None, batch_size: int = 1024) -> np.ndarray:
    """Per row: greedy exact match, teacher-forced. Every answer token must be the argmax,
    and the argmax after the answer must end the number: end-of-text for the organism, but a
    newline or a period (anything in ``continues`` that is False) counts too, as it does for
    greedy decoding scored by :func:`mechlib.core.taxonomy.parse_answer`. Without
    ``continues``, the end-of-text token itself is required."""
    out = []
    scored_cols = (labels != -100).any(0).nonzero()
    if not len(scored_cols):
        return np.ones(len(ids), dtype=bool)
    first = int(scored_cols[0]) - 1  # the position that predicts the first labelled token
    keep = ids.shape[1] - first  # logits for the trailing positions only: a 262,144-token vocabulary is large
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab:
        batch_size = max(1, min(batch_size, 2**27 // max(1, keep * vocab)))  # at most 512 MB of float32 logits
    for s in range(0, len(ids), batch_size):
        logits = model(input_ids=ids[s : s + batch_size], attention_mask=mask[s : s + batch_size], logits_to_keep=keep).logits
        logits = logits[:, -keep:]  # a model that ignores logits_to_keep returns every position
        if continues is not None and len(continues) < logits.shape[-1]:  # ids past the tokenizer's vocabulary continue nothing
            continues = torch.cat([continues, torch.zeros(logits.shape[-1] - len(continues), dtype=torch.bool)])
        pred, lab = logits[:, :-1].argmax(-1), labels[s : s + batch_size, first + 1 :]
        scored = lab != -100
        last = scored.long().cumsum(1) == scored.sum(1, keepdim=True)  # the end-of-text label and after
        is_end = scored & last
        answer_ok = ((pred == lab) | ~scored | is_end).all(1)
        if continues is None:
            end_ok = ((pred == lab) | ~is_end).all(1)
        else:
            end_ok = (~continues.to(pred.device)[pred] | ~is_end).all(1)
        out.append((answer_ok & end_ok).cpu().numpy())
    return np.concatenate(out)


def call_token_ids(tokenizer, style: str) -> list[int]:
    """The token ids of a call's syntax and operators (``[ ] + - * /`` for the short style):
    a tool fine-tune trains their embeddings, which a base model may never have used."""
    from .tools import call_text

    return sorted(set(tokenizer(call_text("+-*/", style), add_special_tokens=False)["input_ids"]))


def lora_model(hf_model, recipe: FinetuneRecipe, tokenizer=None):
    """Wrap the model with LoRA adapters; only the adapter weights require gradients, plus
    the position embeddings with ``train_positions`` and, for a tool recipe (given the
    tokenizer), the embeddings of the call tokens (tied to the unembedding)."""
    family = family_of_config(hf_model.config)
    if recipe.train_positions and family.position_module is None:
        raise ValueError(f"train_positions: a {family.name} model has no learned position embeddings to train (rotary positions)")
    embed = family.embed_module
    tokens = {embed: call_token_ids(tokenizer, recipe.call_style)} if recipe.task == "tool" and tokenizer is not None else None
    config = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.target_modules) or list(family.lora_targets),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=family.fan_in_fan_out,
        task_type="CAUSAL_LM",
        modules_to_save=[family.position_module] if recipe.train_positions else None,
        trainable_token_indices=tokens,
    )
    return get_peft_model(hf_model, config)


def as_calls(problems: pd.DataFrame, style: str = "short") -> pd.DataFrame:
    """The problems with a calculator call copying them as the target (``[37*48]``); a
    BPE-style prompt format keeps its leading space."""
    from .tools import call_text

    out = problems.copy()
    lead = [" " if t.startswith(" ") else "" for t in out["target"]]
    out["target"] = [s + call_text(f"{a}{op}{b}", style) for s, a, op, b in zip(lead, out.a, out.op, out.b)]
    return out


def splits(recipe: FinetuneRecipe) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train new, held-out new, train replayed, held-out replayed) problems, split by
    unordered pair so neither operand order of a held-out problem is trained on."""
    if recipe.task == "requests":
        from .tool_requests import training_splits

        return training_splits(recipe.operators, recipe.heldout_fraction, recipe.seed)
    new = all_problems(recipe.operators, recipe.difficulties, recipe.prompt_format)
    if recipe.task == "tool":
        new = as_calls(new, recipe.call_style)
    train_new, held_new = split_heldout(new, recipe.heldout_fraction, recipe.seed)
    old = all_problems(recipe.replay_operators, recipe.difficulties, recipe.prompt_format) if recipe.replay_operators else new.iloc[:0]
    train_old, held_old = split_heldout(old, recipe.heldout_fraction, recipe.seed, fixed=base_heldout(recipe.base))
    return train_new, held_new, train_old, held_old


def answer_loss(model, ids: Int[torch.Tensor, "batch seq"], mask: Int[torch.Tensor, "batch seq"],
                labels: Int[torch.Tensor, "batch seq"]) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens, with logits computed only where a label
    is predicted: the hidden states are gathered before the unembedding (Gemma's has 262,144
    rows). Equal to the model's own ``labels=`` loss."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = hf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    scored = target != -100
    logits = hf.get_output_embeddings()(hidden[scored])
    cap = getattr(hf.config, "final_logit_softcapping", None) or getattr(getattr(hf.config, "text_config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), target[scored])


def train(recipe: FinetuneRecipe, progress: bool = True, device: str = "cpu"):
    """Fine-tune; return (merged HF model, tokenizer, history DataFrame, split dict)."""
    recipe.validate()
    torch.manual_seed(recipe.seed)
    hf_model, tokenizer, _ = load_hf(recipe.base, device=device)
    train_new, held_new, train_old, held_old = splits(recipe)

    parts = [train_new, train_old, curve_rows(held_new, recipe.curve_per_cell), curve_rows(held_old, recipe.curve_per_cell)]
    everything = pd.concat(parts, ignore_index=True)  # one encoding, so every part has one width
    bos = family_of_config(hf_model.config).starts_with_bos(tokenizer)
    ids, mask, labels = (t.to(device) for t in encode_supervised(tokenizer, everything.prompt.tolist(), everything.target.tolist(), bos))
    bounds = np.cumsum([0] + [len(p) for p in parts])
    tr_new, tr_old, ev_new, ev_old = (
        (ids[a:b], mask[a:b], labels[a:b]) if b > a else None for a, b in zip(bounds[:-1], bounds[1:])
    )
    w_new, w_old = cell_weights(train_new), cell_weights(train_old)

    model = lora_model(hf_model, recipe, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    rng = np.random.default_rng(recipe.seed)
    n_old = int(round(recipe.batch_size * recipe.replay_fraction)) if tr_old is not None else 0
    history = []
    start = time.time()

    continues = continuation_tokens(tokenizer)

    def record(step: int, loss: float | None):
        model.eval()
        row = {"step": step, "loss": loss, "heldout_acc_new": float(teacher_forced_accuracy(model, *ev_new, continues).mean())}
        if ev_old is not None:
            row["heldout_acc_old"] = float(teacher_forced_accuracy(model, *ev_old, continues).mean())
        history.append(row)
        model.train()

    record(0, None)
    model.train()
    warmup = min(50, max(1, recipe.steps // 3))  # 50 steps, or a third of a short run
    for step in tqdm(range(1, recipe.steps + 1), desc="LoRA fine-tuning", disable=not progress, mininterval=2):
        lr = recipe.lr * min(1.0, step / warmup) * 0.5 * (1 + np.cos(np.pi * step / recipe.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = _sample(tr_new, w_new, recipe.batch_size - n_old, rng)
        if n_old:
            batch = tuple(torch.cat(pair) for pair in zip(batch, _sample(tr_old, w_old, n_old, rng)))
        loss = answer_loss(model, *batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            record(step, round(loss.item(), 6))
        else:
            history.append({"step": step, "loss": round(loss.item(), 6)})
    train_seconds = time.time() - start
    model.eval()
    merged = model.merge_and_unload()
    split = {"train_new": train_new, "heldout_new": held_new, "train_old": train_old, "heldout_old": held_old}
    hist = pd.DataFrame(history)
    hist.attrs["train_seconds"] = train_seconds
    hist.attrs["where"] = {"device": str(device), "threads": torch.get_num_threads()}
    return merged, tokenizer, hist, split


def base_heldout(base: str) -> dict:
    """The base model's held-out problems by operator, when mechlib knows them (the organism:
    its held-out addition pairs); empty otherwise."""
    from .organism import ORGANISM_NAME, OrganismRecipe, split_pairs

    if base != ORGANISM_NAME:
        return {}
    _, held = split_pairs(OrganismRecipe())
    return {"+": {data.pair_key(int(a), "+", int(b)) for a, b in held.tolist()}}


def per_cell_sample(problems: pd.DataFrame, per_cell: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_cell`` problems of each (operator, difficulty) cell, drawn at random with
    ``seed`` (the cells are stored in operand order, so their first rows are not a sample)."""
    drawn = problems.sample(frac=1.0, random_state=seed)
    return drawn.groupby(["op", "difficulty"], sort=False).head(per_cell).reset_index(drop=True)


def curve_rows(problems: pd.DataFrame, per_cell: int) -> pd.DataFrame:
    """The held-out problems the training curve scores: ``per_cell`` of each cell
    (:func:`per_cell_sample`, seed 0), or all of them when ``per_cell`` is 0."""
    return per_cell_sample(problems, per_cell) if per_cell else problems


def cell_weights(problems: pd.DataFrame) -> np.ndarray:
    """Sampling weights giving every (operator, difficulty) cell the same mass, so the small
    1x1 and 1x2 cells are not drowned by the 2x2 one."""
    if not len(problems):
        return np.zeros(0)
    sizes = problems.groupby(["op", "difficulty"])["a"].transform("size").to_numpy()
    w = 1.0 / sizes
    return w / w.sum()


def _sample(tensors, weights: np.ndarray, n: int, rng: np.random.Generator):
    rows = torch.from_numpy(rng.choice(len(tensors[0]), n, p=weights))
    return tuple(t[rows] for t in tensors)


def save_finetuned(merged, tokenizer, history: pd.DataFrame, split: dict, recipe: FinetuneRecipe, name: str) -> Path:
    """Save the merged model, tokenizer, history and held-out problems, atomically."""
    out = finetuned_dir(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_partial(out.parent, f".{name}.partial-")  # left by a writer that was killed (the caller holds the lock)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_source(tmp, recipe.base, recipe=dataclasses.asdict(recipe), recipe_key=recipe.key(), trained_on=history.attrs.get("where"))
        history.to_json(tmp / "history.json", orient="records")
        (tmp / "train_seconds.txt").write_text(f"{history.attrs.get('train_seconds', 0):.1f}\n")
        for part in ("heldout_new", "heldout_old"):
            split[part].to_parquet(tmp / f"{part}.parquet")
        seal(tmp)  # the manifest, written last: every later use checks the files against it
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_current(name: str, recipe: FinetuneRecipe) -> bool:
    """Whether the cache holds this recipe's fine-tune under ``name`` (trained by this code),
    undamaged (checked against its manifest; a damaged one is trained again, saying so)."""
    folder = finetuned_dir(name)
    if (source_record(folder) or {}).get("recipe_key") != recipe.key():
        return False
    problem = damage(folder, full=True)  # 0.2 s for a SmolLM2 fine-tune
    if problem is not None:
        say(f"the cached fine-tune {name!r} is damaged ({problem}); training it again")
    return problem is None


def check_name_free(name: str, recipe: FinetuneRecipe) -> None:
    """Refuse to write ``recipe`` under a name that holds a fine-tune of another recipe: a
    chapter reading that name would silently get different weights. The same recipe under
    newer training code (a stale key) may be retrained in place."""
    stored = (source_record(finetuned_dir(name)) or {}).get("recipe") or {}  # none, or unreadable: replaced
    mine = json.loads(json.dumps(dataclasses.asdict(recipe)))
    differ = {k: (stored.get(k), mine[k]) for k in mine if stored.get(k, mine[k]) != mine[k]}
    if differ:
        shown = "; ".join(f"{k}: cached {a!r}, asked {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ValueError(f"finetuned_name {name!r} already holds a fine-tune of another recipe ({shown}). Choose another "
                         f"finetuned_name, or delete {str(finetuned_dir(name))!r} to replace it")


def ensure_finetuned(recipe: FinetuneRecipe, name: str | None = None, progress: bool = True, device: str = "cpu") -> Path:
    """The fine-tuned checkpoint for this recipe, training it if the cache lacks it. A name
    holding another recipe's fine-tune is refused (:func:`check_name_free`), never overwritten."""
    name = name or default_name(recipe)
    if is_current(name, recipe):
        return finetuned_dir(name)
    with cache_lock(f"finetuned-{name}"):  # another process may be training it: wait, then reuse
        if not is_current(name, recipe):
            check_name_free(name, recipe)
            merged, tok, hist, split = train(recipe, progress=progress, device=device)
            save_finetuned(merged, tok, hist, split, recipe, name)
    return finetuned_dir(name)


def load_history(path: Path) -> pd.DataFrame:
    return pd.read_json(Path(path) / "history.json", orient="records")


def load_heldout(path: Path) -> pd.DataFrame:
    """Both held-out sets (new skill and replayed skill) saved with a fine-tune."""
    parts = [pd.read_parquet(Path(path) / f"{p}.parquet") for p in ("heldout_new", "heldout_old")]
    return pd.concat(parts, ignore_index=True)


def train_seconds(path: Path) -> float:
    return float((Path(path) / "train_seconds.txt").read_text())


def trained_where(path: Path) -> str:
    """Where the cached fine-tune was trained, for the page: the device and, on a CPU, torch's
    thread count (as its training recorded them)."""
    where = (source_record(path) or {}).get("trained_on") or {}
    device, threads = where.get("device", "an unrecorded device"), where.get("threads")
    if device != "cpu" or threads is None:
        return device if device.startswith("an ") else f"device {device}"
    return f"the CPU with {threads} torch thread{'s' if threads > 1 else ''}"


def recipe_from_params(params: dict) -> FinetuneRecipe:
    """The chapter's parameters as a recipe (validated)."""
    fields = {f.name for f in dataclasses.fields(FinetuneRecipe)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in fields}
    kw["base"] = params["model"]
    kw["batch_size"] = params["lora_batch_size"]
    return FinetuneRecipe(**kw).validate()


def heldout_curves(history: pd.DataFrame, sizes: dict, names: dict | None = None) -> pd.DataFrame:
    """Held-out accuracy during training in long form (step, set, accuracy, n, lo, hi): the
    history's columns in ``sizes`` (column -> number of held-out problems), each with the Wilson
    95% interval from that size; ``names`` relabels the sets."""
    from .stats import wilson

    history = history.dropna(subset=["heldout_acc_new"])
    sets = [c for c in sizes if c in history and sizes[c]]
    long = history.melt(id_vars="step", value_vars=sets, var_name="set", value_name="accuracy")
    long["n"] = long["set"].map(sizes)
    bounds = [wilson(round(a * n), n) for a, n in zip(long.accuracy, long.n)]
    long["lo"], long["hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    if names:
        long["set"] = long["set"].map(names)
    return long


def before_after(models: dict, problems: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    """Evaluate each model (name -> HookedTransformer) on the same problems, stacked."""
    from .evaluate import evaluate

    frames = [evaluate(m, problems, batch_size=batch_size).assign(model=name) for name, m in models.items()]
    return pd.concat(frames, ignore_index=True)
