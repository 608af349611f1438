"""Resumable sweeps and reproducible chapter runs (these start real Jupyter kernels)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mechlib.book import build as book

ROOT = Path(__file__).resolve().parent.parent


def tiny_param_set(tmp_path, model_dir) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "common": {"model": str(model_dir), "device": "cpu", "seed": 0, "batch_size": 64},
        "01_baseline": {"operators": ["+", "-"], "difficulties": ["1x1", "1x2"], "n_per_cell": 6, "prompt_format": "bare",
                        "real_models": []},
    }))
    return path


def finished(out: Path) -> set[str]:
    return {p.stem for p in out.glob("01_baseline/*.ipynb") if not p.name.startswith(".tmp-")}


def sweep_cmd(params, out, store):
    return [sys.executable, "-m", "mechlib", "sweep", "01_baseline", "--params", str(params),
            "--grid", "seed", "[0, 1, 2]", "--out", str(out), "--store", str(store)]


def test_sweep_resumes_after_a_kill_and_leaves_nothing_half_written(tiny_gpt2_dir, tmp_path):
    params, out, store = tiny_param_set(tmp_path, tiny_gpt2_dir), tmp_path / "out", tmp_path / "runs"
    proc = subprocess.Popen(sweep_cmd(params, out, store), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not finished(out):
        time.sleep(0.5)
    time.sleep(1.0)  # let the second point get under way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = finished(out)
    assert 1 <= len(done) < 3
    for record in store.glob("*/*.json"):
        json.loads(record.read_text())  # every record that exists is complete

    rerun = subprocess.run(sweep_cmd(params, out, store), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("'status': 'skipped'") == len(done)
    assert rerun.stdout.count("'status': 'ran'") == 3 - len(done)
    assert len(finished(out)) == 3
    assert len(list(store.glob("01_baseline/*.json"))) == 3
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_same_params_give_identical_metrics_and_glued_numbers(tiny_gpt2_dir, tmp_path, monkeypatch):
    params = tiny_param_set(tmp_path, tiny_gpt2_dir)
    outputs = []
    for i in range(2):
        store = tmp_path / f"runs{i}"
        monkeypatch.setenv("MECHLIB_RUN_STORE", str(store))
        nb = book.execute_chapter("01_baseline", params, out_dir=tmp_path / f"out{i}")
        record = json.loads(next(store.glob("01_baseline/*.json")).read_text())
        glued = {k: v for k, v in book.glued_values(nb).items() if not k.endswith("_seconds")}
        outputs.append((record["id"], record["metrics"], glued))
    assert outputs[0] == outputs[1]
    assert outputs[0][2]["n_problems"] == "24"
