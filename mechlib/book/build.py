"""Build the book: execute each chapter with papermill, then render with Jupyter Book.

Chapters run with a parameter set from ``params/``; executed copies land in
``book/chapters/`` (never committed) and Jupyter Book renders them with execution off.
A chapter's parameters are validated before its kernel starts, and a failed execution
leaves no executed notebook behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from .. import chapters
from .paths import project_root

VEGA_BUNDLE = "vega-bundle.js"
COLAB_BADGE = "../images/colab-badge.svg"


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
    out_dir = Path(out_dir or root / "book" / "chapters")
    out = out_dir / f"{out_name or chapter}.ipynb"
    os.environ.setdefault("MECHLIB_RUN_STORE", str(root / "_build" / "runs"))
    scratch = root / "_build" / ".scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    sweep_stale_scratch(scratch)
    tmpdir = Path(tempfile.mkdtemp(prefix=f"{chapter}-pid{os.getpid()}-", dir=scratch))
    tmp = tmpdir / f"{chapter}.ipynb"
    try:
        papermill.execute_notebook(
            str(root / "chapters" / f"{chapter}.ipynb"),
            str(tmp),
            parameters={"param_set": None, **params.to_dict()},
            cwd=str(root),
            kernel_name="python3",
            progress_bar=False,
            log_output=log,
            execution_timeout=execution_timeout,
        )
        tidy_executed(tmp, chapter)
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


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
    already executed in ``book/chapters/`` are reused; missing ones are executed first."""
    from playwright.sync_api import sync_playwright

    from .runs import git_commit
    from .site_check import CHART_MARKS, CHROMIUM, CHROMIUM_ARGS, serve

    root = project_root()
    missing = [c for c in chapter_names() if not (root / "book" / "chapters" / f"{c}.ipynb").is_file()]
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


AGENT_PAGE_HEAD = """# Driving the experiments from an agent

The book's experiments are also tools an AI agent can call, over the
[Model Context Protocol](https://modelcontextprotocol.io): `python -m mechlib mcp` serves them on stdio, with the
official `mcp` SDK. Every chapter parameter is validated by the same dataclasses the chapters use; a bad value
comes back as a tool error carrying the validation message, and the server keeps serving. Per-call caps
(`MECHLIB_MCP_MAX_PROBLEMS`, `MECHLIB_MCP_MAX_PROMPTS`, `MECHLIB_MCP_MAX_NEW_TOKENS`,
`MECHLIB_MCP_MAX_CELL_SECONDS`) bound the work of one call; no tool runs code it is given, and nothing is written
outside the run store (`run_chapter`'s executed notebooks go to `_build/agent/`).

## The tools

This list is read from the server itself when the book is built.

"""

AGENT_PAGE_TAIL = """
Resources: `mechlib://params/{name}` (a parameter set), `mechlib://runs/{chapter}/{id}` (a run record) and
`mechlib://findings/{chapter}` (a chapter's newest findings).

## Connecting a client

Claude Desktop (`claude_desktop_config.json`), with the book's checkout as `MECHLIB_ROOT`:

```json
{"mcpServers": {"mechlib": {"command": "/path/to/arithmetic-book/.venv/bin/python",
                             "args": ["-m", "mechlib", "mcp"],
                             "env": {"MECHLIB_ROOT": "/path/to/arithmetic-book"}}}}
```

Claude Code, from the checkout: `claude mcp add mechlib -- .venv/bin/python -m mechlib mcp`.

## A research loop: `mechlib agent`

`python -m mechlib agent "Which layers of the organism are needed for carries?" --max-iterations 8` plans, calls
these same tools through the MCP server, writes a note after each step and decides the next one, through any
OpenAI-compatible Chat Completions endpoint with tool calling: set `OPENAI_API_KEY` (OpenAI), or pass
`--base-url http://localhost:11434/v1` (Ollama), `--base-url http://localhost:8000/v1` (vLLM) or llama.cpp's
server, and `--model`. Budgets: `--max-iterations`, `--max-tokens`, `--max-cost` (with
`--usd-per-1k-prompt/--usd-per-1k-completion`), `--max-seconds`. A session directory keeps every message, tool
call, note, run id and the token usage as they happen; `--resume DIR --from N` restarts at iteration N, and
`--report DIR` renders the session as a Markdown lab-notebook page whose numbers are read from the tool results
and the run records, never from the model's own text.

No language model is reachable from the machines that build this book, so no agent transcript appears here. The
loop is checked by protocol tests: a local server speaking the Chat Completions protocol replies with scripted
tool calls, and the tests check dispatch, malformed calls fed back as errors, budgets, resume and the report.
"""


def write_agent_page() -> Path:
    """``book/agent.md``: the agent page, its tool list generated from the MCP server."""
    import asyncio

    from .mcp_server import build_server

    tools = asyncio.run(build_server().list_tools())
    rows = ["| tool | what it does | arguments |", "|---|---|---|"]
    for tool in tools:
        about = " ".join((tool.description or "").split()).split(". ")[0].rstrip(".") + "."
        args = ", ".join(f"`{name}`" for name in (tool.input_schema or {}).get("properties", {}))
        rows.append(f"| `{tool.name}` | {about.replace('|', '/')} | {args or '(none)'} |")
    path = project_root() / "book" / "agent.md"
    path.write_text(AGENT_PAGE_HEAD + "\n".join(rows) + "\n" + AGENT_PAGE_TAIL)
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

