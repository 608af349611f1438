"""Open every page of the built site in headless Chromium and fail on what a reader would hit.

Checks, per page: console errors, any request that leaves the site, charts without drawn
marks, glue placeholders that were never filled in, raw field names (snake_case) in chart
titles, axes and legends, table numbers printed with more than 3 significant digits, NaN or
infinity in prose or tables, and tab characters inside math. Saves a full-page screenshot of
each chapter. Uses Python Playwright driving the system Chromium (no browser download).
"""
from __future__ import annotations

import functools
import http.server
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
]
# Messages of the third-party theme, not of the project's code: pydata-sphinx-theme logs this on
# a browser's first visit, when no colour mode is stored yet.
IGNORED_CONSOLE = ("Got invalid theme mode",)
CHART_MARKS = "svg g[class*='mark-'] path, svg g[class*='mark-'] text, svg g[class*='mark-'] line"
SNAKE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
BARE_NUMBER = re.compile(r"^[-\u2212]?\d+\.\d+$")


@functools.cache
def defined_terms() -> frozenset[str]:
    """snake_case names the book defines and uses as names (answer classes, splice conditions,
    minimal-pair families, tracr programs, corruption kinds): allowed as chart labels, never as
    an axis or legend title."""
    from ..chapters.tool_use import SUBSETS
    from ..core.delta_study import LABELS
    from ..core.minimal_pairs import FAMILIES
    from ..core.taxonomy import ERROR_CLASSES
    from ..core.tracr_models import PROGRAMS

    kinds = {"skip_last", "skip_first", "skip_range"}
    return frozenset({*ERROR_CLASSES, *LABELS, *FAMILIES, *PROGRAMS, *SUBSETS, *kinds})


def snake_case_problems(texts: list[tuple[str, str]]) -> list[str]:
    """(role, text) pairs of chart text -> problems: any snake_case word in an axis or legend
    title (a column's name), or one anywhere else that the book does not define as a name."""
    out = []
    for role, text in texts:
        for word in SNAKE.findall(text):
            if role in ("role-axis-title", "role-legend-title") or word not in defined_terms():
                out.append(f"raw field name {word!r} in a chart's {role.replace('role-', '').replace('-', ' ')} ({text[:60]!r})")
    return sorted(set(out))


def math_tab_problems(html: str) -> list[str]:
    """Math in the page source holding a tab character: a Python string's ``\\t`` where
    ``\\text`` was meant (MathJax then shows 'ext')."""
    hits = re.findall(r'class="math[^"]*">([^<]*\t[^<]*)<', html)
    return [f"math holds a tab character: {h.strip()[:60]!r}" for h in hits]


def long_number_problems(cells: list[str]) -> list[str]:
    """Table cells that are a bare decimal number with more than 3 significant digits."""
    out = []
    for cell in cells:
        text = cell.strip()
        if BARE_NUMBER.match(text):
            digits = text.lstrip("-\u2212").replace(".", "").lstrip("0")
            if len(digits) > 3:
                out.append(f"table number {text!r} has more than 3 significant digits")
    return sorted(set(out))


NAN = re.compile(r"(?<![\w.])(nan|NaN|NAN|inf|-inf)(?![\w])")


def nan_problems(texts: list[str]) -> list[str]:
    """Prose or table text showing a NaN or an infinity: a number the run could not compute
    reached the page as if it were a result."""
    return sorted({f"a NaN or infinity on the page: {t.strip()[:100]!r}" for t in texts if NAN.search(t)})


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def check_page(page, url: str, origin: str) -> list[str]:
    """Problems found on one page (empty when it is clean)."""
    problems: list[str] = []
    def on_console(message):
        if message.type == "error" and not any(text in message.text for text in IGNORED_CONSOLE):
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        page.goto(url, wait_until="load", timeout=60_000)
    except Exception as err:  # report the page, keep checking the others
        problems.append(f"did not load: {type(err).__name__}: {str(err).splitlines()[0]}")
        return problems
    try:
        page.wait_for_load_state("networkidle", timeout=15_000)
    except Exception:
        pass  # a busy page is judged by what follows: its charts, console and requests
    charts = page.locator(".mechlib-chart")
    for i in range(charts.count()):
        chart = charts.nth(i)
        try:
            chart.locator(CHART_MARKS).first.wait_for(state="attached", timeout=10_000)
        except Exception:
            problems.append(f"chart {i} ({chart.get_attribute('id')}) has no drawn marks")
    text = page.inner_text("body")
    for needle in ("{glue", "glue:text", "glue:md"):
        if needle in text:
            problems.append(f"unrendered glue placeholder ({needle!r}) in the page text")
    prose = page.locator("article p, article li").all_inner_texts()
    hit = next((t for t in prose if "`" in t), None)
    if hit:  # markdown does not render inside glued text: a backtick there shows as is
        problems.append(f"a literal backtick in the prose: {hit[:120]!r}")
    problems += too_wide(page)
    texts = page.evaluate("""() => Array.from(document.querySelectorAll('.mechlib-chart svg text')).map(t => {
        const g = t.closest('g[class*="role-"]');
        const role = g ? (Array.from(g.classList).find(c => c.startsWith('role-')) || 'text') : 'text';
        return [role, t.textContent];
    })""")
    problems += snake_case_problems([tuple(t) for t in texts])
    problems += long_number_problems(page.locator("article table td").all_inner_texts())
    problems += nan_problems(prose + page.locator("article table td").all_inner_texts())
    stderr = page.locator(".output.stderr, .cell_output .stderr, div.stderr")
    if stderr.count():
        problems.append(f"{stderr.count()} stderr output(s) on the page, e.g. {stderr.first.inner_text()[:120]!r}")
    outputs = page.locator(".cell_output").all_inner_texts()
    for needle in ("Warning:", "warnings.warn", "Traceback (most recent call last)", "/work/", "/home/", "site-packages"):
        hit = next((o for o in outputs if needle in o), None)
        if hit:
            problems.append(f"an output shows {needle!r}: {hit[:120]!r}")
    return problems


def too_wide(page) -> list[str]:
    """Charts and tables that stick out of the text column (the article's own width)."""
    found = page.evaluate("""() => {
        const article = ['article.bd-article', 'main', 'body'].map(q => document.querySelector(q)).find(el => el);
        const right = article.getBoundingClientRect().right + 2;
        const out = [];
        article.querySelectorAll('.mechlib-chart svg, table').forEach((el, i) => {
            const box = el.getBoundingClientRect();
            if (box.width > 0 && box.right > right) {
                out.push(`${el.tagName.toLowerCase()} ${i} is ${Math.round(box.width)} px wide and ends ${Math.round(box.right - right)} px past the column`);
            }
        });
        return out;
    }""")
    return list(found)


def check_site(html_dir: Path, shots_dir: Path, chapters_prefix: str = "book/executed/") -> dict:
    """Check every page; return {"pages": n, "problems": {page: [...]}, "outside": [...]}."""
    from playwright.sync_api import sync_playwright

    html_dir = Path(html_dir)
    pages = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html") if "_static" not in p.parts)
    server, origin = serve(html_dir)
    outside: list[str] = []
    report: dict[str, list[str]] = {}
    shots_dir.mkdir(parents=True, exist_ok=True)

    def gate(route):
        url = route.request.url
        if url.startswith(origin) or urlparse(url).scheme in ("data", "blob", "about"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            context.route("**/*", gate)
            for rel in pages:
                page = context.new_page()
                before = len(outside)
                problems = check_page(page, f"{origin}/{rel}", origin)
                problems += math_tab_problems((html_dir / rel).read_text(errors="replace"))
                problems += [f"request outside the site: {u}" for u in outside[before:]]
                if rel.startswith(chapters_prefix):
                    page.screenshot(path=str(shots_dir / (Path(rel).stem + ".png")), full_page=True)
                if problems:
                    report[rel] = problems
                page.close()
            browser.close()
    finally:
        server.shutdown()
    return {"pages": len(pages), "problems": report, "outside": sorted(set(outside))}


def main(html_dir: str = "_build/html", shots_dir: str = "_build/screenshots") -> int:
    result = check_site(Path(html_dir), Path(shots_dir))
    for page, problems in result["problems"].items():
        for problem in problems:
            print(f"FAIL {page}: {problem}")
    print(f"site check: {result['pages']} pages, {len(result['problems'])} with problems, "
          f"{len(result['outside'])} outside requests; screenshots in {shots_dir}")
    return 1 if result["problems"] else 0
