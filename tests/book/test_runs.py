import json
import os

import pytest

from mechlib.book import runs


def test_record_is_complete_and_keyed_by_params(tmp_path):
    run = runs.Run("01_baseline", {"seed": 0, "model": "m"})
    path = run.finish({"acc": 0.5, "nested": {"x": 1}}, store=tmp_path)
    rec = json.loads(path.read_text())
    assert rec["params"] == {"seed": 0, "model": "m"}
    assert rec["metrics"]["nested"] == {"x": 1}
    assert {"git_commit", "versions", "wall_seconds", "started"} <= set(rec)
    assert "torch" in rec["versions"]
    assert runs.is_recorded("01_baseline", {"model": "m", "seed": 0}, store=tmp_path)
    assert not runs.is_recorded("01_baseline", {"model": "m", "seed": 1}, store=tmp_path)
    runs.Run("01_baseline", {"seed": 0, "model": "m"}).finish({"acc": 0.5}, store=tmp_path)
    assert len(runs.load_runs(tmp_path)) == 1


def test_failed_write_leaves_nothing(tmp_path):
    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        runs.write_json_atomic(tmp_path / "r.json", {"x": Unserialisable()})
    assert os.listdir(tmp_path) == []


def test_runs_page_links_each_record_and_shows_headline_intervals(tmp_path):
    runs.Run("01_baseline", {"seed": 0, "model": "m"}).finish(
        {"model_note": "a long sentence", "acc_trained_text": "98.6% [96.9, 99.4], n = 370", "n_problems": 10}, store=tmp_path)
    page = runs.runs_page(runs.load_runs(tmp_path))
    rid = runs.run_id("01_baseline", {"seed": 0, "model": "m"})
    assert f'<a href="../_static/runs/01_baseline/{rid}.json"><code>{rid}</code></a>: model `m`' in page
    assert "  - acc_trained: 98.6% [96.9, 99.4], n = 370" in page and "a long sentence" not in page
