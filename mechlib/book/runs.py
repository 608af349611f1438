"""Run records: every chapter execution writes its params, environment, wall time and
headline metrics as one JSON file in a run store (a directory), atomically.

A record's id is a hash of (chapter, params), so re-running the same parameters replaces
the record rather than adding a duplicate, and a sweep can tell what is already done.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = ("torch", "transformers", "transformer-lens", "datasets", "peft", "sae-lens", "altair", "papermill")


def store_dir() -> Path:
    """The run store: see :func:`mechlib.book.paths.run_store` (the one rule)."""
    from .paths import run_store

    return run_store()


def run_id(chapter: str, params: dict) -> str:
    blob = json.dumps({"chapter": chapter, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _jsonable(value):
    """Numpy / pandas scalars and nested containers to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def write_json_atomic(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Run:
    """Times a chapter run and records it: ``run = Run(chapter, params)`` at the start,
    ``run.finish(metrics)`` at the end."""

    def __init__(self, chapter: str, params: dict):
        self.chapter, self.params = chapter, _jsonable(dict(params))
        self.id = run_id(chapter, self.params)
        self.started = time.time()

    def finish(self, metrics: dict, timings: dict | None = None, store: Path | None = None) -> Path:
        """Write the record. ``metrics`` must be reproducible (same params, same numbers);
        wall-clock measurements go in ``timings``."""
        record = {
            "id": self.id,
            "chapter": self.chapter,
            "params": self.params,
            "metrics": _jsonable(metrics),
            "timings": _jsonable(timings or {}),
            "git_commit": git_commit(),
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_seconds": round(time.time() - self.started, 2),
        }
        pending = os.environ.get(PENDING_ENV)  # set by execute_chapter: the record waits there until the notebook has run whole
        where = Path(pending) if pending and store is None else Path(store or store_dir())
        return write_json_atomic(where / self.chapter / f"{self.id}.json", record)


PENDING_ENV = "MECHLIB_RUN_PENDING"


def publish_pending(pending: Path, store: Path) -> list[Path]:
    """Move the records a kernel left in ``pending`` into the run store: called once the whole
    notebook executed, so a run that failed in a later cell leaves no record that looks complete."""
    moved = []
    for path in sorted(Path(pending).glob("*/*.json")):
        dest = Path(store) / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        moved.append(dest)
    return moved


RECORD_KEYS = ("id", "chapter", "started", "params", "metrics")


def load_runs(store: Path | None = None, skipped: list[str] | None = None) -> list[dict]:
    """Every complete record in the store, oldest first. A file that is not a readable run
    record (truncated, foreign) is left out, and its path, with why, added to ``skipped``."""
    root = Path(store or store_dir())
    records = []
    for path in sorted(root.glob("*/*.json")):
        if path.name.startswith(".tmp-"):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            why = f"not JSON ({err})"
        else:
            missing = [k for k in RECORD_KEYS if k not in record] if isinstance(record, dict) else list(RECORD_KEYS)
            if not missing:
                records.append(record)
                continue
            why = f"not a run record (lacks {missing})"
        if skipped is not None:
            skipped.append(f"{path.relative_to(root)}: {why}")
    return sorted(records, key=lambda r: (r["started"], r["chapter"]))


def is_recorded(chapter: str, params: dict, store: Path | None = None) -> bool:
    return (Path(store or store_dir()) / chapter / f"{run_id(chapter, _jsonable(dict(params)))}.json").is_file()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "/")


def headline_metrics(metrics: dict, count: int = 3) -> list[tuple[str, str]]:
    """The few metrics a reader scans first: the glued interval texts (``..._text``), then
    other scalars; long prose fields are left to the record."""
    texts = [(k.removesuffix("_text"), v) for k, v in metrics.items() if k.endswith("_text") and isinstance(v, str)]
    scalars = [(k, _fmt(v)) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (texts + scalars)[:count]


def runs_page(records: list[dict], headline: int = 3, json_href: str = "../_static/runs") -> str:
    """Markdown for the book's Runs page: per chapter, newest first, one entry per recorded run
    with its link to the JSON record (published with the site under ``json_href``), model,
    start, wall time, commit and headline metrics. Narrow by design: no table to overflow."""
    lines = [
        "# Runs",
        "",
        "Every chapter execution recorded in this build's run store, newest first. A run's id is the hash of its",
        "chapter and parameters, and links to the full record (parameters, library versions, every metric,",
        "timings) as JSON.",
        "",
    ]
    if not records:
        return "\n".join(lines + ["No runs are recorded yet.", ""])
    for chapter in sorted({r["chapter"] for r in records}):
        lines += [f"## {chapter}", ""]
        for r in sorted((r for r in records if r["chapter"] == chapter), key=lambda r: r["started"], reverse=True):
            link = f'<a href="{json_href}/{r["chapter"]}/{r["id"]}.json"><code>{r["id"]}</code></a>'
            commit = (r.get("git_commit") or "")[:8]
            model = str(r["params"].get("model", ""))
            lines.append(f"- {link}: model `{model}`, started {r['started']}, {r['wall_seconds']:.0f} s, commit `{commit}`")
            lines += [f"  - {k}: {v}" for k, v in headline_metrics(r.get("metrics", {}), headline)]
        lines.append("")
    return "\n".join(lines)
