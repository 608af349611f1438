"""Execute one chapter with papermill: validate its parameters first, run it in a private
scratch folder, and move the executed notebook into place only when it is complete.

The build, the sweep and the MCP server all run chapters through this module, which
imports none of them.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from .. import chapters
from .paths import executed_dir, project_root, run_store
from .runs import PENDING_ENV, publish_pending

COLAB_BADGE = "../images/colab-badge.svg"


def book_config() -> dict:
    return yaml.safe_load((project_root() / "_config.yml").read_text())


def colab_url(chapter: str) -> str:
    repo = book_config().get("repository", {})
    github = repo.get("url", "").replace("https://github.com/", "")
    return f"https://colab.research.google.com/github/{github}/blob/{repo.get('branch', 'main')}/chapters/{chapter}.ipynb"


def tidy_executed(path: Path, chapter: str) -> None:
    """Hide papermill's injected-parameters cell behind a toggle, drop the superseded
    defaults cell, and put an Open-in-Colab badge (a local image) under the title."""
    nb = nbformat.read(path, as_version=4)
    injected = any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags:
            tags.append("hide-input")
        elif "parameters" in tags and injected:
            tags.append("remove-cell")
    badge = nbformat.v4.new_markdown_cell(f"[![Open in Colab]({COLAB_BADGE})]({colab_url(chapter)})")
    badge.metadata["tags"] = ["colab-badge"]
    nb.cells.insert(1, badge)
    nbformat.write(nb, path)


def check_chapter(chapter: str, param_set: str | Path | None = "default", overrides: dict | None = None):
    """Validated parameters plus the chapter's preflight (model, device, cache, context):
    everything that can fail without weights fails here, before a kernel starts."""
    mod = chapters.module(chapter)
    params = mod.Params.from_set(param_set, overrides)
    mod.check(params)
    return params


def execute_chapter(
    chapter: str,
    param_set: str | Path | None = "default",
    overrides: dict | None = None,
    out_dir: Path | None = None,
    log: bool = False,
    out_name: str | None = None,
    execution_timeout: int | None = None,
) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path.
    ``execution_timeout`` caps each cell's seconds (None: no cap).

    The notebook is executed in a private temporary folder (outside anything Jupyter Book
    reads) and moved into place when complete, so the final name never holds a
    half-executed notebook, and two runs never share a temporary file."""
    import papermill

    root = project_root()
    params = check_chapter(chapter, param_set, overrides)
    out_dir = Path(out_dir or executed_dir())
    out = out_dir / f"{out_name or chapter}.ipynb"
    os.environ.setdefault("MECHLIB_RUN_STORE", str(root / "_build" / "runs"))
    scratch = root / "_build" / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    sweep_stale_scratch(scratch)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{chapter}-pid{os.getpid()}-", dir=scratch))
    tmp = tmpdir / f"{chapter}.ipynb"
    logs = root / "_build" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = tmpdir / "records"  # the kernel's run record waits here until every cell has run
    try:
        with open(logs / f"{out_name or chapter}.kernel.log", "w") as kernel_log:
            papermill.execute_notebook(
                str(root / "chapters" / f"{chapter}.ipynb"),
                str(tmp),
                parameters={"param_set": None, **params.to_dict()},
                cwd=str(root),
                kernel_name="python3",
                progress_bar=False,
                log_output=log,
                execution_timeout=execution_timeout,
                kernel_manager_class=_kernel_manager(kernel_log, {PENDING_ENV: str(pending)}),
            )
        tidy_executed(tmp, chapter)
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
        publish_pending(pending, run_store())
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _kernel_manager(stderr, env: dict[str, str]):
    """A kernel manager whose kernel writes its own standard error to ``stderr`` (a log
    file), not to the terminal, and gets ``env`` added to its environment. What the kernel
    prints there is not the notebook's output (that travels over ZMQ): its start-up warnings,
    and the ZMQ traceback it prints when an interrupt tears down its sockets mid-reply."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        extra_env = env

        async def start_kernel(self, **kw):
            kw.setdefault("stderr", stderr)
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **self.extra_env}
            return await AsyncKernelManager._async_start_kernel(self, **kw)

    return LoggedKernelManager


def sweep_stale_scratch(scratch: Path) -> list[str]:
    """Remove scratch folders whose process is gone (a run killed with SIGKILL cannot clean
    up after itself). A folder names its process: ``<chapter>-pid<PID>-<random>``; one
    without a pid (older code) is removed once it is a day old."""
    removed = []
    for folder in scratch.glob("*"):
        m = re.search(r"-pid(\d+)-", folder.name)
        if m:
            alive = True
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        else:
            alive = time.time() - folder.stat().st_mtime < 86400
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


