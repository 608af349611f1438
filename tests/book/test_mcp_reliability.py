"""The MCP server under concurrency and bad input: no silent wrong answer, no lost reason.
In-process (the tools' own functions, on worker threads as the SDK runs them) and over stdio."""
import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mechlib.book import mcp_server
from mechlib.book.runs import load_runs

ROOT = Path(__file__).resolve().parents[2]


def call(server, name, arguments):
    """A tool call through the server's own validation and dispatch (what a client's call reaches)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        result = asyncio.run(server.call_tool(name, arguments))
    except ToolError as err:
        return err
    return json.loads(result.content[0].text)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    return mcp_server.build_server(mcp_server.Limits(max_problems=300))


def test_concurrent_calls_on_one_model_each_get_their_own_numbers(server, tiny_gpt2_dir):
    """A clean call and an ablated call at once: before the per-model lock, the clean call
    ran under the other's hooks and returned wrong numbers with no error."""
    model = str(tiny_gpt2_dir)
    clean = {"model": model, "prompts": ["12+34=", "7+8=", "99+1="], "max_new_tokens": 6}
    ablated = {**clean, "corruption": "ablate:mlp0:zero"}
    want_clean, want_ablated = call(server, "generate", clean), call(server, "generate", ablated)
    assert want_clean != want_ablated  # the ablation changes the outputs, so a leak would show
    got: dict = {}

    def worker(key, args):
        got.setdefault(key, []).append(call(server, "generate", args))

    threads = [threading.Thread(target=worker, args=(k, a)) for _ in range(6) for k, a in (("clean", clean), ("ablated", ablated))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == want_clean for r in got["clean"]) and all(r == want_ablated for r in got["ablated"])


@pytest.mark.parametrize("arguments, message", [
    ({"n": 5, "n_per_cell": 700}, "n_per_cell"),  # an unknown argument was dropped
    ({"n": True}, "n"),  # true ran as 1
    ({"n": "50"}, "n"),  # "50" became 50
    ({"n": 5, "operators": []}, "operators"),  # [] became ['+']
    ({"n": 100000}, "cap of 300"),  # refused before 862,000 problems are built
])
def test_bad_arguments_are_refused_not_coerced(server, tiny_gpt2_dir, arguments, message):
    import time

    start = time.perf_counter()
    out = call(server, "logit_lens", {"model": str(tiny_gpt2_dir), **arguments})
    assert isinstance(out, Exception) and message in str(out), out
    assert time.perf_counter() - start < 5


def test_add_note_refuses_extra_arguments_and_huge_notes(server):
    assert "path" in str(call(server, "add_note", {"text": "x", "path": "/tmp/elsewhere"}))
    assert "at most 20,000" in str(call(server, "add_note", {"text": "x" * 5_000_000}))


def test_run_chapter_takes_only_the_books_parameter_sets(server, tmp_path):
    other = tmp_path / "mine.yaml"
    other.write_text("common:\n  seed: 1\n")
    out = call(server, "run_chapter", {"chapter": "01_baseline", "param_set": str(other)})
    assert isinstance(out, Exception) and "one of the book's sets" in str(out)


def test_unreadable_records_are_skipped_and_reported(tmp_path, server):
    store = tmp_path / "runs" / "01_baseline"
    store.mkdir(parents=True)
    (store / "good.json").write_text(json.dumps({"id": "good", "chapter": "01_baseline", "started": "2026-01-01T00:00:00Z",
                                                 "params": {"model": "m"}, "metrics": {"acc": 0.5}}))
    (store / "truncated.json").write_text('{"id": "tr')
    (store / "foreign.json").write_text('{"hello": 1}')
    skipped: list = []
    assert [r["id"] for r in load_runs(tmp_path / "runs", skipped)] == ["good"]
    assert len(skipped) == 2 and any("truncated.json: not JSON" in s for s in skipped)
    out = call(server, "query_runs", {})
    assert [r["run_id"] for r in out["runs"]] == ["good"] and len(out["unreadable_records"]) == 2
    assert call(server, "get_run", {"run_id": "good"})["id"] == "good"
    assert call(server, "add_note", {"text": "ok", "run_ids": ["good"]})["saved"]


def test_an_unexpected_failure_keeps_its_reason(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the disk said no")

    monkeypatch.setattr(mcp_server, "load_runs", broken)
    out = call(server, "query_runs", {})
    assert isinstance(out, Exception) and "RuntimeError: the disk said no" in str(out)


@pytest.mark.parametrize("value", ["abc", "-5", "0"])
def test_a_bad_cap_in_the_environment_stops_the_server_with_its_name(value):
    env = {**os.environ, "MECHLIB_MCP_MAX_PROBLEMS": value}
    proc = subprocess.run([sys.executable, "-m", "mechlib", "mcp"], env=env, cwd=ROOT, input="", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert f"MECHLIB_MCP_MAX_PROBLEMS={value!r}: expected a whole number of at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("uri, message", [
    ("mechlib://params/nope", "no such parameter set"),
    ("mechlib://runs/01_baseline/nope", "no such run in the run store"),
    ("mechlib://findings/09_nothing", "no recorded run of '09_nothing'"),
])
def test_a_bad_resource_uri_keeps_its_reason(server, uri, message):
    from mcp.server.mcpserver.exceptions import ResourceError

    with pytest.raises(ResourceError, match=message):
        asyncio.run(server.read_resource(uri))


def test_the_same_run_asked_twice_at_once_runs_once(server, monkeypatch, tiny_gpt2_dir, tmp_path):
    from mechlib.book import execute

    calls = []

    def fake_execute(chapter, param_set, overrides, out_dir, out_name, execution_timeout):
        import time as _time

        calls.append(out_name)
        _time.sleep(1.0)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{out_name}.ipynb").write_text("{}")
        record = tmp_path / "runs" / chapter / f"{out_name}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"id": out_name, "chapter": chapter, "started": "x", "params": {}, "metrics": {}}))

    monkeypatch.setattr(execute, "execute_chapter", fake_execute)
    monkeypatch.setenv("MECHLIB_ROOT", str(ROOT))
    monkeypatch.setattr("mechlib.book.paths.project_root", lambda: tmp_path)
    # No pretrained models: their checks read two GGUF tokenizers, which this test is not about.
    args = {"chapter": "01_baseline", "params": {"model": str(tiny_gpt2_dir), "device": "cpu", "n_per_cell": 3, "real_models": []}}
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(call(server, "run_chapter", args))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(o["cached"] for o in out) == [False, True]


@pytest.mark.parametrize("prompts, message", [
    (["12+34=", ""], "prompts[1] = '': a prompt needs at least one character"),
    ([""], "prompts[0] = '': a prompt needs at least one character"),
    (["1+1=", "7+8=", "1+1="], "prompts[2] = '1+1=' repeats prompts[0]; give each prompt once"),
    ([], "prompts: give 1..32 prompts"),
])
def test_generate_names_the_bad_prompt(server, tiny_gpt2_dir, monkeypatch, prompts, message):
    """Before: one empty prompt failed the whole call with an IndexError (a model that does not
    prepend BOS gave it no tokens), and a repeated prompt silently lost its entry."""
    monkeypatch.setattr(mcp_server._model(str(tiny_gpt2_dir)).cfg, "default_prepend_bos", False)
    out = call(server, "generate", {"model": str(tiny_gpt2_dir), "prompts": prompts, "max_new_tokens": 2})
    assert isinstance(out, Exception) and message in str(out) and "IndexError" not in str(out), out
    good = call(server, "generate", {"model": str(tiny_gpt2_dir), "prompts": ["12+34=", "7+8="], "max_new_tokens": 2})
    assert list(good["continuations"]) == ["12+34=", "7+8="]


def test_generate_names_a_prompt_that_encodes_to_nothing(server, tiny_gpt2_dir, monkeypatch):
    from mechlib.core import evaluate

    monkeypatch.setattr(evaluate, "encode", lambda model, texts: [[5, 6], []])  # a tokenizer that drops every character
    out = call(server, "generate", {"model": str(tiny_gpt2_dir), "prompts": ["12+34=", "\u2603"]})
    assert isinstance(out, Exception) and "prompts[1] = '\u2603': no tokens" in str(out), out


def spin(lm, *args, **kwargs):
    """Stands in for an experiment that runs too long: forward passes for 8 s."""
    import time

    import torch

    end = time.monotonic() + 8
    while time.monotonic() < end:
        lm(torch.tensor([[1, 2, 3]]))
    return "ran to the end"


@pytest.mark.parametrize("tool, target", [
    ("evaluate", "mechlib.core.evaluate.evaluate"),
    ("logit_lens", "mechlib.core.interventions.logit_lens"),
    ("generate", "mechlib.core.evaluate.greedy_decode"),
])
def test_in_process_tools_stop_at_their_wall_time_cap(tmp_path, monkeypatch, tiny_gpt2_dir, tool, target):
    """Before, evaluate, logit_lens and generate had no wall-time cap (run_chapter caps each cell)."""
    import time

    import mechlib.chapters.baseline  # noqa: F401 (its imports take seconds: done before the clock starts)

    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    monkeypatch.setattr(target, spin)
    server = mcp_server.build_server(mcp_server.Limits(max_problems=300, max_call_seconds=1))
    args = {"model": str(tiny_gpt2_dir), **({"prompts": ["1+1="]} if tool == "generate" else {"n": 3, "difficulties": ["1x1"]})}
    start = time.monotonic()
    out = call(server, tool, args)
    assert time.monotonic() - start < 5
    assert isinstance(out, Exception) and f"{tool} stopped after" in str(out), out
    assert "caps it at 1 s (MECHLIB_MCP_MAX_CALL_SECONDS)" in str(out)
    monkeypatch.undo()  # the model is free again, its hooks gone
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    assert call(server, "generate", {"model": str(tiny_gpt2_dir), "prompts": ["1+1="], "max_new_tokens": 2})["continuations"]


def test_a_call_waiting_for_a_busy_model_stops_at_the_cap(tmp_path, monkeypatch, tiny_gpt2_dir):
    import time

    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    server = mcp_server.build_server(mcp_server.Limits(max_call_seconds=1))
    lock = mcp_server._lock(str(tiny_gpt2_dir))
    lock.acquire()  # another call holds the model for 6 s
    threading.Timer(6, lock.release).start()
    start = time.monotonic()
    out = call(server, "generate", {"model": str(tiny_gpt2_dir), "prompts": ["1+1="]})
    assert time.monotonic() - start < 4
    assert isinstance(out, Exception) and "waiting for another call on this model" in str(out), out


def test_run_chapter_names_its_cell_cap_when_a_cell_times_out(server, monkeypatch, tiny_gpt2_dir, tmp_path):
    from nbclient.exceptions import CellTimeoutError

    from mechlib.book import execute

    def too_slow(*args, **kwargs):
        raise CellTimeoutError("A cell timed out while it was being executed, after 600 seconds.")

    monkeypatch.setattr(execute, "execute_chapter", too_slow)
    monkeypatch.setattr("mechlib.book.paths.project_root", lambda: tmp_path)
    args = {"chapter": "01_baseline", "params": {"model": str(tiny_gpt2_dir), "device": "cpu", "n_per_cell": 3, "real_models": []}}
    out = call(server, "run_chapter", args)
    assert isinstance(out, Exception) and "caps it at 600 s (MECHLIB_MCP_MAX_CELL_SECONDS)" in str(out), out


def test_the_call_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MECHLIB_MCP_MAX_CALL_SECONDS", "7")
    assert mcp_server.Limits.from_env().max_call_seconds == 7
    assert mcp_server.Limits().max_call_seconds == 300
