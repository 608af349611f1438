import json

import pytest

from mechlib.book import build as book
from mechlib.chapters.base import ParamError
from mechlib.views.plots import accuracy_heatmap, mechlib_renderer


def test_chart_html_needs_no_network_when_the_bundle_is_loaded():
    import pandas as pd

    table = pd.DataFrame([[1.0, 0.5]], index=pd.Index(["+"], name="op"), columns=pd.Index(["1x1", "2x2"], name="difficulty"))
    bundle = mechlib_renderer(accuracy_heatmap(table).to_dict())
    html = bundle["text/html"]
    assert "if (window.vegaEmbed) { draw(); return; }" in html
    assert any(k.startswith("application/vnd.vegalite") for k in bundle)


def test_vega_bundle_is_wrapped_and_sets_globals(tmp_path):
    path = book.write_vega_bundle(tmp_path / "vega.js")
    text = path.read_text()
    assert text.splitlines()[1] == "(function () {"
    assert text.rstrip().endswith("})();")
    assert "window.vegaEmbed=" in text


def test_chapter_executes_glues_and_records(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    overrides = {"model": str(tiny_gpt2_dir), "device": "cpu", "operators": ["+"], "difficulties": ["1x1", "1x2"], "n_per_cell": 5,
                 "real_models": []}
    out = book.execute_chapter("01_baseline", "default", overrides, out_dir=tmp_path / "out")
    glued = book.glued_values(out)
    assert int(glued["n_problems"]) == 10
    assert "acc_total" not in glued  # no headline pools kinds of cell
    assert glued["acc_pretrained_text"].strip("'").endswith("n = 10")
    record = next((tmp_path / "runs" / "01_baseline").glob("*.json"))
    assert json.loads(record.read_text())["metrics"]["n_problems"] == 10
    tags = [c.metadata.get("tags", []) for c in __import__("nbformat").read(out, as_version=4).cells]
    assert any("injected-parameters" in t and "hide-input" in t for t in tags)
    assert any("colab-badge" in t for t in tags)


def test_bad_parameter_fails_before_execution_and_writes_nothing(tmp_path):
    with pytest.raises(ParamError, match="n_per_cell"):
        book.execute_chapter("01_baseline", "default", {"n_per_cell": -1}, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
