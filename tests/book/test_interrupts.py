"""Interrupts and concurrency lose nothing: SIGTERM cleans up, one build at a time, and an
interrupted site render leaves the previous site whole."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechlib.book import build, execute

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tmp_project(tmp_path, monkeypatch):
    """A copy of the book's sources, so these tests never touch the checkout's _build."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(ROOT / "chapters", project / "chapters")
    for name in ("_toc.yml", "_config.yml"):
        shutil.copy(ROOT / name, project / name)
    monkeypatch.setenv("MECHLIB_ROOT", str(project))
    return project


@pytest.mark.slow
def test_sigterm_to_a_chapter_leaves_no_temporary_notebook(tiny_gpt2_dir, tmp_path, tmp_project):
    scratch = tmp_project / "_build" / ".scratch"
    before: set = set()
    out = tmp_path / "out"
    env = {**os.environ, "MECHLIB_RUN_STORE": str(tmp_path / "runs")}
    code = ("import sys; from mechlib.cli import main; from mechlib.book import execute; "
            "execute.execute_chapter('01_baseline', 'tiny', {'model': sys.argv[1], 'device': 'cpu'}, out_dir=sys.argv[2])")
    cmd = [sys.executable, "-c", f"import signal, sys; from mechlib.cli import _on_signal; signal.signal(signal.SIGTERM, _on_signal); {code}",
           str(tiny_gpt2_dir), str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (set(scratch.glob("*")) - before if scratch.exists() else set()):
        time.sleep(0.2)
    assert set(scratch.glob("*")) - before, "the run never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert set(scratch.glob("*")) - before == set(), "a temporary notebook was left behind"
    assert not out.exists() or not list(out.glob("*.ipynb"))


def test_a_second_build_in_the_same_folder_is_refused_clearly(monkeypatch, tmp_project):
    import fcntl

    monkeypatch.setattr(build, "check_chapter", lambda *a, **k: None)
    lock = tmp_project / "_build" / ".build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another book build is running"):
            build.build_book("tiny")


def test_an_interrupted_render_keeps_the_previous_site(tmp_path, monkeypatch):
    project = tmp_path / "book"
    (project / "chapters").mkdir(parents=True)
    (project / "_toc.yml").write_text("root: intro\n")
    old_site = project / "_build" / "html"
    old_site.mkdir(parents=True)
    (old_site / "index.html").write_text("the previous site")
    monkeypatch.setenv("MECHLIB_ROOT", str(project))

    def interrupted(cmd, **kwargs):  # jupyter-book writes half a site, then Ctrl-C
        staging = Path(cmd[cmd.index("--path-output") + 1])
        (staging / "_build" / "html").mkdir(parents=True)
        (staging / "_build" / "html" / "half.html").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(build.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.render_site()
    assert (old_site / "index.html").read_text() == "the previous site"
    assert sorted(p.name for p in (project / "_build").iterdir()) == ["html"]

    def completes(cmd, **kwargs):
        staging = Path(cmd[cmd.index("--path-output") + 1])
        (staging / "_build" / "html").mkdir(parents=True)
        (staging / "_build" / "html" / "index.html").write_text("the new site")

    monkeypatch.setattr(build.subprocess, "run", completes)
    assert build.render_site().read_text() == "the new site"
    assert sorted(p.name for p in (project / "_build").iterdir()) == ["html"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [1.0, 4.0])
def test_sigint_during_a_chapter_prints_one_line_and_no_kernel_traceback(tiny_gpt2_dir, tmp_path, tmp_project, delay):
    """Ctrl-C while the kernel starts (1 s) or runs cells (4 s): one line on standard error,
    no ZMQ traceback from the kernel (its standard error goes to _build/logs/), no scratch."""
    scratch = tmp_project / "_build" / ".scratch"
    env = {**os.environ, "MECHLIB_RUN_STORE": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "mechlib", "chapter", "01_baseline", "--params", "tiny", "-p", "model", str(tiny_gpt2_dir),
           "-p", "n_per_cell", "200"]
    proc = subprocess.Popen(cmd, cwd=tmp_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (list(scratch.glob("*")) if scratch.exists() else []):
        time.sleep(0.2)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130
    assert err.strip() == "interrupted; temporary files removed", err
    assert not list(scratch.glob("*"))
    assert (tmp_project / "_build" / "logs" / "01_baseline.kernel.log").is_file()


def test_scratch_of_a_killed_run_is_swept_by_the_next(tmp_path):
    """SIGKILL leaves its scratch folder behind; the next run removes folders whose process is gone."""
    scratch = tmp_path / ".scratch"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (scratch / f"01_baseline-pid{dead.pid}-abc").mkdir(parents=True)
    (scratch / f"01_baseline-pid{os.getpid()}-def").mkdir()  # this process: alive
    old = scratch / "02_layers-xyz"  # older code's name, no pid
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    assert sorted(execute.sweep_stale_scratch(scratch)) == [f"01_baseline-pid{dead.pid}-abc", "02_layers-xyz"]
    assert [p.name for p in scratch.iterdir()] == [f"01_baseline-pid{os.getpid()}-def"]
