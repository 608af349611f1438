"""Build the book: execute each chapter with papermill, then render with Jupyter Book.

Chapters run with a parameter set from ``params/``; executed copies land in
``book/chapters/`` (never committed) and Jupyter Book renders them with execution off.
A chapter's parameters are validated before its kernel starts, and a failed execution
leaves no executed notebook behind.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

from .params import chapter_params

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS_SRC = ROOT / "chapters"
CHAPTERS_OUT = ROOT / "book" / "chapters"
ASSETS = ROOT / "book" / "_assets"
VEGA_BUNDLE = "vega-bundle.js"
COLAB_BADGE = "../images/colab-badge.svg"


def chapter_names() -> list[str]:
    return sorted(p.stem for p in CHAPTERS_SRC.glob("*.ipynb"))


def write_vega_bundle(dest: Path = ASSETS / VEGA_BUNDLE) -> Path:
    """Vega, Vega-Lite and Vega-Embed in one local script, wrapped in a function scope so
    its top-level names cannot clash with the theme's scripts; it sets window.vegaEmbed."""
    import altair as alt
    import vl_convert

    major_minor = ".".join(alt.VEGALITE_VERSION.split(".")[:2])
    if dest.is_file() and dest.read_text()[:200].find(f"vega-lite {major_minor}") >= 0:
        return dest
    bundle = vl_convert.javascript_bundle(vl_version=major_minor)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(f"/* vega-lite {major_minor} bundle from vl-convert {vl_convert.__version__} */\n(function () {{\n{bundle}\n}})();\n")
    os.replace(tmp, dest)
    return dest


def book_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


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


def execute_chapter(
    chapter: str,
    param_set: str | Path = "default",
    overrides: dict | None = None,
    out_dir: Path = CHAPTERS_OUT,
    log: bool = False,
    out_name: str | None = None,
) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path.

    The notebook is written under a ``.tmp-`` name and renamed when complete, so the final
    name never holds a half-executed notebook."""
    import papermill

    if chapter not in chapter_names():
        raise ValueError(f"chapter {chapter!r} does not exist; chapters: {chapter_names()}")
    params = chapter_params(param_set, chapter, overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{out_name or chapter}.ipynb"
    tmp = out_dir / f".tmp-{out_name or chapter}.ipynb"
    os.environ.setdefault("MECHLIB_RUN_STORE", str(ROOT / "_build" / "runs"))
    try:
        papermill.execute_notebook(
            str(CHAPTERS_SRC / f"{chapter}.ipynb"),
            str(tmp),
            parameters=params,
            cwd=str(ROOT),
            kernel_name="python3",
            progress_bar=False,
            log_output=log,
        )
        tidy_executed(tmp, chapter)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def build_book(param_set: str | Path = "default", chapters: list[str] | None = None, log: bool = False) -> Path:
    """Execute the chapters, then ``jupyter-book build``; return the site's index.html."""
    chapters = chapters or chapter_names()
    for chapter in chapters:  # every chapter's parameters are checked before any runs
        chapter_params(param_set, chapter)
    write_vega_bundle()
    for chapter in chapters:
        start = time.time()
        print(f"[mechlib] executing {chapter} with params {param_set!s}", flush=True)
        execute_chapter(chapter, param_set, log=log)
        print(f"[mechlib] {chapter} done in {time.time() - start:.0f} s", flush=True)
    write_runs_page()
    shutil.rmtree(ROOT / "_build" / "html", ignore_errors=True)  # no stale pages from earlier builds
    jb = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jb), "build", str(ROOT), "--keep-going"], check=True)
    index = ROOT / "_build" / "html" / "index.html"
    if not index.is_file():
        raise RuntimeError(f"jupyter-book build produced no {index}")
    return index


def build_pdf(param_set: str | Path = "default", out: Path | None = None) -> Path:
    """The whole book as one PDF, offline: Jupyter Book's ``singlehtml`` builder, then
    headless Chromium prints it (after the charts have drawn). Chapters already executed in
    ``book/chapters/`` are reused; missing ones are executed first."""
    from .site_check import CHROMIUM, CHROMIUM_ARGS, serve

    missing = [c for c in chapter_names() if not (CHAPTERS_OUT / f"{c}.ipynb").is_file()]
    write_vega_bundle()
    for chapter in missing:
        execute_chapter(chapter, param_set)
    write_runs_page()
    single = ROOT / "_build" / "singlehtml"
    shutil.rmtree(single, ignore_errors=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jb), "build", str(ROOT), "--builder", "singlehtml", "--keep-going"], check=True)
    out = Path(out or ROOT / "_build" / "pdf" / "book.pdf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.pdf")
    root_page = yaml.safe_load((ROOT / "_toc.yml").read_text())["root"]
    # the single page lives at book/intro.html but links its assets from the site root
    shutil.copy(single / f"{root_page}.html", single / "print.html")
    server, origin = serve(single)  # over HTTP, as a reader's browser would load it
    try:
        subprocess.run(
            [CHROMIUM, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={ROOT / '_build' / '.chromium'}",
             "--virtual-time-budget=20000", "--no-pdf-header-footer", f"--print-to-pdf={tmp}",
             f"{origin}/print.html"],
            check=True, capture_output=True, timeout=300,
        )
        os.replace(tmp, out)
    finally:
        server.shutdown()
        tmp.unlink(missing_ok=True)
    return out


def write_runs_page(store: Path | None = None) -> Path:
    """``book/runs.md`` from the run store (generated at every build, not committed)."""
    from .runs import load_runs, runs_page

    path = ROOT / "book" / "runs.md"
    path.write_text(runs_page(load_runs(store or Path(os.environ.get("MECHLIB_RUN_STORE", ROOT / "_build" / "runs")))))
    return path


def glued_values(executed: Path) -> dict:
    """The text/plain values a notebook glued, by name (for tests and run records)."""
    nb = nbformat.read(executed, as_version=4)
    values = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook", {})
            if meta.get("name"):
                data = output.get("data", {})
                values[meta["name"]] = data.get(meta.get("mime_prefix", "") + "text/plain", data.get("text/plain"))
    return values

