import json
import os
from pathlib import Path

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


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_whose_notebook_fails_after_recording_leaves_no_record(tmp_path, monkeypatch, fails):
    """The kernel records its run as soon as ``run`` and ``findings`` return; a view cell may
    still fail after that. The record waits outside the store until the whole notebook has run."""
    import papermill

    from mechlib.book import execute

    store = tmp_path / "store"
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(store))
    written = []

    def kernel(source, out, kernel_manager_class=None, **kw):
        """What the kernel does: run_chapter records the run, then the remaining cells run."""
        monkeypatch.setenv(runs.PENDING_ENV, kernel_manager_class.extra_env[runs.PENDING_ENV])  # the kernel's environment
        written.append(runs.Run("01_baseline", {"seed": 0}).finish({"acc": 0.5}))
        monkeypatch.delenv(runs.PENDING_ENV)
        if fails:
            raise RuntimeError("a view cell failed")
        Path(out).write_text(Path(source).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", kernel)
    monkeypatch.setattr(execute, "tidy_executed", lambda path, chapter: None)
    if fails:
        with pytest.raises(RuntimeError, match="view cell"):
            execute.execute_chapter("01_baseline", "tiny", out_dir=tmp_path / "out")
        assert runs.load_runs(store) == [] and not written[0].exists()
    else:
        execute.execute_chapter("01_baseline", "tiny", out_dir=tmp_path / "out")
        assert [r["id"] for r in runs.load_runs(store)] == [runs.run_id("01_baseline", {"seed": 0})]
