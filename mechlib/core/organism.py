"""The embedded model organism: a tiny GPT-2 that mechlib trains, deterministically, on
1-2-digit addition in the bare ``12+34=`` format, then caches as a HF checkpoint.

It learns the format and its training distribution, and it was never shown subtraction,
multiplication, three-digit operands or question-style prompts: the skills the book
probes, and the one (subtraction, at trained lengths) that the LoRA chapter teaches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from .cache import cache_lock, cache_root, content_key, damage, say, seal, sweep_partial
from .char_tokenizer import build_char_tokenizer
from .tokens import with_bos

ORGANISM_NAME = "arith-organism"
# Bump when a change to the training code alters the weights one recipe produces.
TRAINING_CODE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class OrganismRecipe:
    """Everything that determines the organism's weights. Its hash names the cache entry."""

    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 32
    max_operand: int = 99
    heldout_fraction: float = 0.1
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-2
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0

    def key(self) -> str:
        """Hash of the recipe, the training code's version and the tokenizer's definition:
        changed code or a changed vocabulary never reuses stale weights."""
        tokenizer = build_char_tokenizer().backend_tokenizer.to_str()
        return content_key(recipe=dataclasses.asdict(self), code=TRAINING_CODE_VERSION,
                           tokenizer=hashlib.sha256(tokenizer.encode()).hexdigest())


def organism_dir(recipe: OrganismRecipe = OrganismRecipe()) -> Path:
    return cache_root() / "models" / f"{ORGANISM_NAME}-{recipe.key()}"


def split_pairs(recipe: OrganismRecipe) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) with 0 <= a, b <= max_operand, split into train and held-out so that a
    held-out problem never appears in training in either operand order."""
    n = recipe.max_operand + 1
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1)
    unordered = np.unique(np.sort(pairs, axis=1), axis=0)
    rng = np.random.default_rng(recipe.seed)
    held = unordered[rng.random(len(unordered)) < recipe.heldout_fraction]
    held_set = {tuple(p) for p in held.tolist()}
    is_held = np.array([tuple(sorted(p)) in held_set for p in pairs.tolist()])
    return pairs[~is_held], pairs[is_held]


def encode_supervised(tokenizer, prompts: Sequence[str], targets: Sequence[str], bos: bool = True):
    """Right-padded ids, attention mask and labels that score the answer and a final EOS.

    ``bos``: prompts start with BOS, as they do at evaluation (the model family says:
    :meth:`mechlib.core.families.Family.starts_with_bos`)."""
    p_ids = tokenizer(list(prompts), add_special_tokens=bos)["input_ids"]
    if bos:
        p_ids = [with_bos(tokenizer, p) for p in p_ids]
    t_ids = [t + [tokenizer.eos_token_id] for t in tokenizer(list(targets), add_special_tokens=False)["input_ids"]]
    rows = [p + t for p, t in zip(p_ids, t_ids)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, rows)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, len(p) : len(r)] = torch.tensor(r[len(p) :])
    return ids, mask, labels


def addition_batch(tokenizer, pairs: np.ndarray):
    prompts = [f"{a}+{b}=" for a, b in pairs.tolist()]
    input_ids, _, labels = encode_supervised(tokenizer, prompts, [str(a + b) for a, b in pairs.tolist()])
    return input_ids, labels


def cell_balanced_weights(pairs: np.ndarray) -> np.ndarray:
    """Sampling weights that give each digit-count cell (1x1, 1x2, 2x1, 2x2) equal mass,
    so the rare short-operand problems are learned as well as the common 2x2 ones."""
    cells = [(len(str(a)), len(str(b))) for a, b in pairs.tolist()]
    sizes: dict = {}
    for c in cells:
        sizes[c] = sizes.get(c, 0) + 1
    w = np.array([1.0 / sizes[c] for c in cells])
    return w / w.sum()


def _lr_at(step: int, recipe: OrganismRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + np.cos(np.pi * progress))


def train_organism(recipe: OrganismRecipe = OrganismRecipe(), out_dir: Path | None = None, progress: bool = True) -> Path:
    """Train from scratch with a fixed seed and save (safetensors) atomically to out_dir."""
    out_dir = Path(out_dir or organism_dir(recipe))
    torch.manual_seed(recipe.seed)
    tokenizer = build_char_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        n_inner=4 * recipe.n_embd,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    train_pairs, held_pairs = split_pairs(recipe)
    all_ids, all_labels = addition_batch(tokenizer, train_pairs)
    weights = cell_balanced_weights(train_pairs)
    rng = np.random.default_rng(recipe.seed + 1)
    losses = []
    start = time.time()
    model.train()
    for step in tqdm(range(recipe.steps), desc=f"training {ORGANISM_NAME}", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        rows = torch.from_numpy(rng.choice(len(train_pairs), recipe.batch_size, p=weights))
        loss = model(input_ids=all_ids[rows], labels=all_labels[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
    train_seconds = time.time() - start
    model.eval()
    info = {
        "name": ORGANISM_NAME,
        "recipe": dataclasses.asdict(recipe),
        "train_seconds": round(train_seconds, 1),
        "losses": losses,
        "n_train_pairs": int(len(train_pairs)),
        "heldout_pairs": held_pairs.tolist(),
        "torch_version": torch.__version__,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "mechlib_training.json").write_text(json.dumps(info))
        seal(tmp)  # the manifest, written last, marks a complete checkpoint
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_organism(recipe: OrganismRecipe = OrganismRecipe(), progress: bool = True) -> Path:
    """The cached checkpoint directory, training it first if it is not there, or again if it
    is damaged (checked against its manifest at every use; training is deterministic)."""
    path = organism_dir(recipe)
    if _complete(path) and damage(path) is None:
        return path
    with cache_lock(f"organism-{path.name}"):  # another process may be training it: wait, then reuse
        sweep_partial(path.parent, f".{path.name}.partial-")  # left by a writer that was killed
        problem = damage(path) if _complete(path) else "incomplete"
        if problem is not None:
            if path.exists():
                say(f"the cached organism at {str(path)!r} is damaged ({problem}); training it again")
            train_organism(recipe, path, progress=progress)
    return path


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file()


def training_info(path: Path) -> dict:
    return json.loads((Path(path) / "mechlib_training.json").read_text())
