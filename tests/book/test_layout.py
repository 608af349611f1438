"""Book-level agreements: one repository URL, the run-store rule, import side effects,
stripped notebooks, and the package layout."""
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

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
    code = "import altair as alt; before = alt.renderers.active; import mechlib.core.plots; print(before == alt.renderers.active)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_layout_mirrors_the_architecture():
    for package in ("core", "chapters", "book"):
        assert (ROOT / "mechlib" / package / "__init__.py").is_file()
        assert (ROOT / "tests" / package).is_dir()
    core = {p.stem for p in (ROOT / "mechlib" / "core").glob("*.py")}
    assert not core & {p.stem for p in (ROOT / "mechlib" / "book").glob("*.py")} - {"__init__"}
