"""Build the book: execute each chapter with papermill, then render with Jupyter Book.

Chapters run with a parameter set from ``params/``; executed copies land in
``book/executed/`` (never committed) and Jupyter Book renders them with execution off.
A chapter's parameters are validated before its kernel starts, and a failed execution
leaves no executed notebook behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from .. import chapters
from .agent_page import write_agent_page
from .execute import book_config, check_chapter, execute_chapter
from .paths import executed_dir, project_root

VEGA_BUNDLE = "vega-bundle.js"


def chapter_names() -> list[str]:
    return chapters.names()


def write_vega_bundle(dest: Path | None = None) -> Path:
    """Vega, Vega-Lite and Vega-Embed in one local script, wrapped in a function scope so
    its top-level names cannot clash with the theme's scripts; it sets window.vegaEmbed."""
    import altair as alt
    import vl_convert

    dest = Path(dest or project_root() / "book" / "_assets" / VEGA_BUNDLE)
    major_minor = ".".join(alt.VEGALITE_VERSION.split(".")[:2])
    if dest.is_file() and dest.read_text()[:200].find(f"vega-lite {major_minor}") >= 0:
        return dest
    bundle = vl_convert.javascript_bundle(vl_version=major_minor)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(f"/* vega-lite {major_minor} bundle from vl-convert {vl_convert.__version__} */\n(function () {{\n{bundle}\n}})();\n")
    os.replace(tmp, dest)
    return dest


def build_book(param_set: str | Path = "default", only: list[str] | None = None, log: bool = False) -> Path:
    """Execute the chapters (all, or ``only`` these), then ``jupyter-book build``; return
    the site's index.html."""
    todo = only or chapter_names()
    for chapter in todo:  # every chapter's parameters are checked before any runs
        check_chapter(chapter, param_set)
    with build_lock(project_root()):
        write_vega_bundle()
        for chapter in todo:
            start = time.time()
            print(f"[mechlib] executing {chapter} with params {param_set!s}", flush=True)
            execute_chapter(chapter, param_set, log=log)
            print(f"[mechlib] {chapter} done in {time.time() - start:.0f} s", flush=True)
        write_runs_page()
        write_agent_page()
        start = time.time()
        print("[mechlib] measuring the real models for the Models page", flush=True)
        from .models_page import write_models_page

        write_models_page(record=project_root() / "_build" / "models.json")
        print(f"[mechlib] models page done in {time.time() - start:.0f} s", flush=True)
        return render_site()


@contextlib.contextmanager
def build_lock(root: Path):
    """One build at a time per folder: a second one fails at once, saying why."""
    import fcntl

    (root / "_build").mkdir(parents=True, exist_ok=True)
    with open(root / "_build" / ".build.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another book build is running in {root} (lock {root / '_build' / '.build.lock'}); "
                               "wait for it to finish") from None
        yield


def render_site(builder: str = "html") -> Path:
    """``jupyter-book build`` into a staging folder, then swap it in: an interrupt leaves
    the previous site whole. Returns the new site's folder (``_build/html``)."""
    root = project_root()
    jb = Path(sys.executable).parent / "jupyter-book"
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root / "_build"))
    try:
        # -W: a warning (an unfilled glue key, a broken reference, a bad citation) fails the build
        subprocess.run([str(jb), "build", str(root), "--builder", builder, "-W", "--keep-going", "--path-output", str(staging)],
                       check=True)
        new = staging / "_build" / builder
        if not (new / "index.html").is_file():
            raise RuntimeError(f"jupyter-book build produced no index.html in {new}")
        final = root / "_build" / builder
        old = root / "_build" / f".old-{builder}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old, ignore_errors=True)
        return final / "index.html" if builder == "html" else final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_pdf(param_set: str | Path = "default", out: Path | None = None) -> Path:
    """The whole book as one PDF, offline: Jupyter Book's ``singlehtml`` builder, then
    headless Chromium (through Playwright) prints it once the charts have drawn, with a
    title page, a table of contents, numbered pages (footer), numbered figures and tables
    (print CSS), no toggles or buttons, and the charts as vector graphics (SVG). Chapters
    already executed in ``book/executed/`` are reused; missing ones are executed first."""
    from playwright.sync_api import sync_playwright

    from .runs import git_commit
    from .site_check import CHART_MARKS, CHROMIUM, CHROMIUM_ARGS, serve

    root = project_root()
    missing = [c for c in chapter_names() if not (executed_dir() / f"{c}.ipynb").is_file()]
    write_vega_bundle()
    for chapter in missing:
        execute_chapter(chapter, param_set)
    write_runs_page()
    write_agent_page()
    single = render_site("singlehtml")
    out = Path(out or root / "_build" / "pdf" / "book.pdf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.pdf")
    root_page = yaml.safe_load((root / "_toc.yml").read_text())["root"]
    # the single page lives at book/intro.html but links its assets from the site root
    shutil.copy(single / f"{root_page}.html", single / "print.html")
    config = book_config()
    server, origin = serve(single)  # over HTTP, as a reader's browser would load it
    footer = ('<div style="font-size:8px;width:100%;text-align:center;color:#555">'
              '<span class="pageNumber"></span> / <span class="totalPages"></span></div>')
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.goto(f"{origin}/print.html", wait_until="load", timeout=120_000)
            charts = page.locator(".mechlib-chart")
            for i in range(charts.count()):
                charts.nth(i).locator(CHART_MARKS).first.wait_for(state="attached", timeout=30_000)
            page.evaluate(_FRONT_MATTER_JS, {"title": config.get("title", ""), "author": config.get("author", ""),
                                             "commit": (git_commit() or "")[:10], "date": time.strftime("%Y-%m-%d")})
            page.emulate_media(media="print")
            page.pdf(path=str(tmp), format="A4", print_background=True, display_header_footer=True,
                     header_template="<span></span>", footer_template=footer,
                     margin={"top": "16mm", "bottom": "18mm", "left": "14mm", "right": "14mm"})
            browser.close()
        os.replace(tmp, out)
    finally:
        server.shutdown()
        tmp.unlink(missing_ok=True)
    return out


# A title page put in front of the single page (Jupyter Book's own print contents, the
# chapters with their sections, follows it).
_FRONT_MATTER_JS = """(meta) => {
  const article = document.querySelector('article.bd-article') || document.body;
  const title = document.createElement('div');
  title.className = 'mechlib-title-page';
  title.setAttribute('style', 'height: 225mm; display: flex; flex-direction: column; justify-content: center; ' +
                     'text-align: center; break-after: page;');
  title.innerHTML = '<p style="font-size: 30pt; font-weight: 600; line-height: 1.2">' + meta.title + '</p>' +
    '<p style="font-size: 13pt; margin-top: 2em">' + meta.author + '</p>' +
    '<p style="font-size: 10pt; color: #555">Built ' + meta.date + (meta.commit ? ' from commit ' + meta.commit : '') +
    '. Every number comes from the executed chapters; the default model is the book’s organism, not GPT-2.</p>';
  const toc = document.getElementById('jb-print-toc');  // Jupyter Book's print contents, ahead of the article
  if (toc) { toc.parentElement.insertBefore(title, toc); } else { article.prepend(title); }
}"""


def write_runs_page(store: Path | None = None) -> Path:
    """``book/runs.md`` from the run store (generated at every build, not committed), and
    each run's JSON record published with the site (``_static/runs/<chapter>/<id>.json``)."""
    from .runs import load_runs, runs_page, store_dir

    store = Path(store or store_dir())
    records = load_runs(store)
    published = project_root() / "book" / "_assets" / "runs"
    shutil.rmtree(published, ignore_errors=True)
    for r in records:
        dest = published / r["chapter"] / f"{r['id']}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(store / r["chapter"] / f"{r['id']}.json", dest)
    path = project_root() / "book" / "runs.md"
    path.write_text(runs_page(records))
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

