"""Where mechlib keeps what it trains: the organism, fine-tunes, dictionaries."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path


def cache_root() -> Path:
    """``$MECHLIB_CACHE``, else ``$XDG_CACHE_HOME/mechlib``, else ``~/.cache/mechlib``. A
    relative ``$MECHLIB_CACHE`` is made absolute against this process's folder, once, and
    written back to the environment that child processes inherit."""
    if os.environ.get("MECHLIB_CACHE"):
        root = Path(os.environ["MECHLIB_CACHE"]).expanduser()
        if not root.is_absolute():  # pinned, so kernels and workers started later use this folder, not their own
            root = root.absolute()
            os.environ["MECHLIB_CACHE"] = str(root)
        return root
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mechlib"


def finetuned_dir(name: str) -> Path:
    """Where a fine-tuned checkpoint called ``name`` lives: ``<cache>/finetuned/<name>``."""
    return cache_root() / "finetuned" / name


@contextlib.contextmanager
def cache_lock(name: str):
    """An exclusive lock across processes, held while the cache entry ``name`` is checked and
    written: two processes asking for the same model at once train or convert it once, and
    neither reads a folder the other is replacing."""
    folder = cache_root() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name.replace('/', '_')}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def content_key(**parts) -> str:
    """A short, stable hash of JSON-able parts (recipe, code version, tokenizer): the cache
    key of anything mechlib trains, so changed inputs never reuse stale weights."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


SOURCE_FILE = "mechlib_source.json"  # what a checkpoint mechlib wrote was made from


def is_finetune(name: str) -> bool:
    """Whether ``name`` (a bare name, not a path) is a fine-tuned checkpoint in the cache."""
    return "/" not in str(name) and (finetuned_dir(str(name)) / "config.json").is_file()


def is_checkpoint(name_or_path: str | Path) -> bool:
    """A cached fine-tune by name, or a local checkpoint directory (with its config.json)."""
    return is_finetune(str(name_or_path)) or (Path(name_or_path).expanduser() / "config.json").is_file()


def source_record(name_or_path: str | Path) -> dict | None:
    """The ``mechlib_source.json`` record of a checkpoint: a cached fine-tune by name, or a
    directory. None when there is none or it cannot be read."""
    name = str(name_or_path)
    folders = ([finetuned_dir(name)] if is_finetune(name) else []) + [Path(name).expanduser()]
    for folder in folders:
        meta = folder / SOURCE_FILE
        if meta.is_file():
            try:
                return json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


def file_digest(path: Path) -> str:
    """SHA256 of a file, read in blocks (about 1.8 GB/s here): what a release's hash is checked with."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksum(path: Path) -> str:
    """CRC-32 of a file, read in blocks: the integrity check of a cache entry mechlib wrote
    itself, made at every load (it catches any flipped byte or truncation; 0.4 s for Gemma 3's
    1.8 GB converted checkpoint, against 1.2 s for SHA256)."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return f"crc32:{crc:08x}"


def shared_mode(is_dir: bool) -> int:
    """The mode a new file or folder gets under the process's umask (0644 and 0755 under the
    usual 022): what mechlib's cache entries get, so a cache shared between users stays
    readable although temporary folders and some writers make them private (0600, 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


def share(folder: Path) -> None:
    """Give ``folder`` and everything in it :func:`shared_mode`."""
    for path in [folder, *Path(folder).rglob("*")]:
        path.chmod(shared_mode(path.is_dir()))


MANIFEST = "mechlib_files.json"  # every file of a cache entry mechlib wrote: size and checksum
_SMALL = 64 << 20  # files up to this size are checksummed at every check; larger ones when read


def seal(folder: Path) -> None:
    """Record every file of a finished cache entry (size and checksum) in its manifest and
    give the entry :func:`shared_mode`: what :func:`damage` later checks it against."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "checksum": file_checksum(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    share(folder)


def is_sealed(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def damage(folder: Path, full: bool = False) -> str | None:
    """What is wrong with a sealed cache entry, or None: a recorded file missing, of another
    size, or (small files always, large ones when ``full``) with another checksum. An entry
    without a manifest is not checked (None)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"its manifest {MANIFEST} cannot be read"
    for name, want in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes, {want['bytes']:,} when written"
        if (full or want["bytes"] <= _SMALL) and file_checksum(path) != want["checksum"]:
            return f"{name} has changed since it was written"
    return None


def sweep_partial(parent: Path, prefix: str) -> None:
    """Remove temporary folders ``<parent>/<prefix>*`` left by a writer that was killed.
    Call it while holding the entry's :func:`cache_lock`: the lock's holder is the only writer,
    so any such folder then belongs to a writer that is gone."""
    for stale in Path(parent).glob(f"{prefix}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def say(message: str) -> None:
    """One line on stderr: what mechlib did to the cache on its own (a damaged entry rebuilt)."""
    import sys

    print(f"mechlib: {message}", file=sys.stderr, flush=True)
