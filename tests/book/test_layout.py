"""Book-level agreements: one repository URL, the run-store rule, import side effects,
stripped notebooks, and the package layout with its import rules."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from mechlib import chapters
from mechlib.book import paths

ROOT = Path(__file__).resolve().parents[2]


def test_one_repository_url_everywhere():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    repo, branch = config["url"].rstrip("/"), config["branch"]
    slug = repo.removeprefix("https://github.com/")
    found = []
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "pyproject.toml", *sorted((ROOT / "chapters").glob("*.ipynb"))]}
    for path, text in texts.items():
        for url in re.findall(r"https://(?:github\.com|colab\.research\.google\.com/github)/[^\s)\"'\\]+", text):
            found.append(url)
            assert slug in url, f"{path.name}: {url} is not {repo}"
        for ref in re.findall(r"git\+https://github\.com/[^@\s\"]+@([\w.-]+)", text):
            assert ref == branch, f"{path.name}: installs @{ref}, the badges open {branch}"
        for blob in re.findall(r"/blob/([\w.-]+)/chapters/", text):
            assert blob == branch
    assert found


def test_every_notebook_installs_the_branch_its_badge_opens():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        text = nb.read_text()
        assert f"git+{config['url']}@{config['branch']}" in text, nb.name


def test_source_notebooks_have_no_outputs():
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, nb.name


def test_run_store_has_one_rule(monkeypatch, tmp_path):
    from mechlib.book.runs import store_dir

    monkeypatch.delenv("MECHLIB_RUN_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # not inside a checkout: the package's checkout is the root
    assert store_dir() == paths.project_root() / "_build" / "runs"
    monkeypatch.chdir(ROOT / "chapters")  # a subfolder of the checkout
    assert store_dir() == ROOT / "_build" / "runs"
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "elsewhere"))
    assert store_dir() == tmp_path / "elsewhere"


def test_importing_plots_leaves_altairs_renderer_alone():
    code = "import altair as alt; before = alt.renderers.active; import mechlib.views.plots; print(before == alt.renderers.active)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_layout_mirrors_the_architecture():
    for package in ("core", "views", "chapters", "book"):
        assert (ROOT / "mechlib" / package / "__init__.py").is_file()
        assert (ROOT / "tests" / package).is_dir()
    stems = {package: {p.stem for p in (ROOT / "mechlib" / package).glob("*.py")} - {"__init__"}
             for package in ("core", "views", "chapters", "book")}
    for a, b in (("core", "chapters"), ("core", "book"), ("core", "views"), ("views", "chapters"), ("views", "book")):
        assert not stems[a] & stems[b], f"mechlib/{a} and mechlib/{b} both hold {stems[a] & stems[b]}: one name, two meanings"


# ---------------------------------------------------------------- the import rules


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULE_FILES = {_module_name(p): p for p in sorted((ROOT / "mechlib").rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The mechlib modules a module imports, anywhere in it (imports inside functions count)."""
    path = MODULE_FILES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mechlib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mechlib":
                continue
            for alias in node.names:  # `from . import preflight` imports a module; `from .x import f` imports x
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULE_FILES else target)
    return found


IMPORTS = {m: _imports(m) for m in MODULE_FILES}
CHAPTER_MODULES = {f"mechlib.chapters.{m}" for m in chapters.MODULES.values()}


def test_the_import_parser_sees_relative_and_function_level_imports():
    assert "mechlib.core.circuit_graph" in IMPORTS["mechlib.core.pair_patching"]  # from . import circuit_graph as cg
    assert "mechlib.views.quiet" in IMPORTS["mechlib.book.notebook"]  # imported inside a function
    assert "mechlib.core.circuit_graph.graph" in IMPORTS["mechlib.core.circuit_graph.scores"]  # from .graph import ...


def test_core_imports_neither_views_chapters_nor_book():
    for module, imported in IMPORTS.items():
        if module.startswith("mechlib.core"):
            bad = {i for i in imported if not i.startswith("mechlib.core")}
            assert not bad, f"{module} imports {bad}: the core must not depend on presentation, chapters or the book"


def test_views_import_only_the_core():
    for module, imported in IMPORTS.items():
        if module.startswith("mechlib.views"):
            bad = {i for i in imported if not i.startswith(("mechlib.core", "mechlib.views"))}
            assert not bad, f"{module} imports {bad}: views read results, they do not run chapters"


def test_no_chapter_module_imports_another():
    for module in CHAPTER_MODULES:
        others = (IMPORTS[module] & CHAPTER_MODULES) - {module}
        assert not others, f"{module} imports {others}: shared logic belongs in mechlib.core (or mechlib.views)"
        assert not {i for i in IMPORTS[module] if i.startswith(("mechlib.book", "mechlib.cli"))}, module


def test_no_chapter_module_is_a_library():
    for module in CHAPTER_MODULES:
        lines = len(MODULE_FILES[module].read_text().splitlines())
        assert lines <= 400, f"{module} has {lines} lines: move reusable studies to mechlib.core and views to mechlib.views"


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: the import cycles."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v] & set(graph):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_mechlib_has_no_import_cycle():
    assert not import_cycles(IMPORTS), f"import cycles: {import_cycles(IMPORTS)}"


def test_the_cycle_check_finds_a_planted_cycle():
    """The cycle this layout removed (the build imports the MCP server, which imported the build)."""
    planted = {**IMPORTS, "mechlib.book.execute": IMPORTS["mechlib.book.execute"] | {"mechlib.book.build"}}
    assert any({"mechlib.book.build", "mechlib.book.execute"} <= set(c) for c in import_cycles(planted))
