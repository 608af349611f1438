"""`mechlib agent` against endpoints that misbehave, and session folders that are wrong:
one line naming what went wrong, in bounded time, with the session left resumable."""
import http.server
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechlib.book import agent

from .local_endpoint import answer, serve
from .test_agent_budgets import Endpoint, completion, run, tool_answers, toy_server

ROOT = Path(__file__).resolve().parents[2]


class BadEndpoint:
    """An HTTP server on 127.0.0.1 that answers every request with one kind of bad reply."""

    def __init__(self, kind: str):
        outer = self
        self.kind = kind

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                if outer.kind == "hang":
                    time.sleep(60)
                    return
                status, ctype, body = {
                    "malformed": (200, "application/json", b'{"id": "x", "choices": [{"mess'),
                    "http500": (500, "application/json", b'{"error": {"message": "boom"}}'),
                    "html": (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
                    "no_choices": (200, "application/json", json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                                        "model": "m", "choices": []}).encode()),
                    "usage_text": (200, "application/json", completion({"role": "assistant", "content": "hi"}, usage="lots")),
                    "deep": (200, "application/json", b"[" * 100_000 + b"]" * 100_000),
                }[outer.kind]
                answer(self, body, status, ctype)

        self.server, self.url = serve(Handler)


def mechlib_agent(*args, timeout=120):
    env = {**os.environ, "MECHLIB_RUN_STORE": os.environ.get("MECHLIB_RUN_STORE", "/tmp/mechlib-agent-test-runs")}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "mechlib", "agent", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.time() - start


@pytest.mark.slow
@pytest.mark.parametrize("kind, message", [
    ("malformed", "not JSON"),
    ("http500", "answered HTTP 500"),
    ("html", "sent text, not a completion"),
    ("no_choices", "no choices"),
    ("usage_text", "sent usage that is not an object"),
    ("deep", "nested too deeply"),
])
def test_a_bad_endpoint_is_one_line_and_the_session_stays_resumable(tmp_path, kind, message):
    endpoint = BadEndpoint(kind)
    proc, _ = mechlib_agent("what is 2+2?", "--base-url", endpoint.url, "--model", "m", "--session", str(tmp_path / "s"))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith("mechlib agent: ") and endpoint.url in err[0] and message in err[0]
    assert f"--resume {tmp_path / 's'} --from 1" in err[0]
    assert (tmp_path / "s" / "session.json").is_file()


@pytest.mark.slow
def test_max_seconds_holds_against_an_endpoint_that_hangs(tmp_path):
    endpoint = BadEndpoint("hang")
    proc, seconds = mechlib_agent("q", "--base-url", endpoint.url, "--model", "m", "--session", str(tmp_path / "s"),
                                  "--max-seconds", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["stop"] == "max_seconds"
    assert seconds < 45  # the budget, plus starting Python and the MCP server


@pytest.fixture
def endpoints():
    """Scripted endpoints (:class:`Endpoint`), shut down after the test."""
    made: list[Endpoint] = []
    yield lambda replies: made.append(Endpoint(replies)) or made[-1]
    for e in made:
        e.server.shutdown()


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body, message", [
    (completion({"role": "assistant", "content": "hi"}, usage="lots"), 'sent usage that is not an object: "lots"'),
    (completion({"role": "assistant", "content": "hi"}, usage={"prompt_tokens": "many"}), "token counts that are not whole numbers"),
    (completion({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}), "message content that is not text"),
    (completion({"role": "assistant", "content": 42}), "message content that is not text: 42"),
    (completion("hello"), "sent a message that is a str, not an object: 'hello'"),
    (completion({"role": "assistant", "tool_calls": {"id": "c0"}}), "tool_calls that are not a list of objects"),
    (completion({"role": "assistant", "tool_calls": ["count"]}), "tool_calls that are not a list of objects"),
    (DEEP, "sent a reply nested too deeply to read"),
    (b'{"choices": [{"message": {"role": "assistant", "content": ' + DEEP + b"}}]}", "sent a reply nested too deeply to read"),
], ids=["usage_text", "usage_counts_text", "content_image", "content_number", "message_text", "tool_calls_object",
        "tool_call_text", "deep_body", "deep_content"])
def test_a_malformed_reply_is_one_line_and_the_session_resumes(tmp_path, monkeypatch, capsys, endpoints, body, message):
    """Replies the protocol has no way to answer end the loop in one line (before: a 60-94 line
    traceback); resumed against a sound endpoint, the session goes on from where it stopped."""
    from mechlib import cli

    monkeypatch.setattr(agent, "mcp_server_params", lambda store=None: toy_server()[0])
    monkeypatch.setenv("MECHLIB_RUN_STORE", str(tmp_path / "runs"))
    bad, s = endpoints([body]), tmp_path / "s"
    with pytest.raises(SystemExit) as stopped:
        cli._main(["agent", "q", "--base-url", bad.url, "--model", "m", "--session", str(s)])
    line = stopped.value.code
    assert isinstance(line, str) and "\n" not in line and line.startswith(f"mechlib agent: the endpoint {bad.url}"), line
    assert message in line and f"--resume {s} --from 1" in line
    assert (s / "session.json").is_file() and not list((s / "iterations").glob("*.json"))
    good = endpoints([{"content": "done"}])
    with pytest.raises(SystemExit) as resumed:
        cli._main(["agent", "--resume", str(s), "--from", "1", "--base-url", good.url])
    assert resumed.value.code == 0 and json.loads(capsys.readouterr().out)["stop"] == "finished"


def test_malformed_tool_calls_are_answered_and_the_loop_goes_on(tmp_path, endpoints):
    """A call that is not a function call, or names nothing, is answered with an error the model
    reads (before: an AttributeError's traceback); an id missing or repeated is replaced, so
    every call has its answer; arguments sent as an object run; text parts are text."""
    odd = [{"id": "a", "type": "custom", "custom": {"name": "count", "input": "{}"}},
           {"id": "b", "type": "function", "function": {"arguments": "{}"}},
           {"id": "c", "type": "function", "function": {"name": "nap", "arguments": {"seconds": 0}}},
           {"type": "function", "function": {"name": "count", "arguments": "{}"}},
           {"id": "c", "type": "function", "function": {"name": "count", "arguments": "{}"}}]
    chat = endpoints([{"content": None, "tool_calls": odd}, {"content": [{"type": "text", "text": "the "}, {"type": "text", "text": "end"}]}])
    summary, ran = run(tmp_path / "s", chat, agent.Budget())
    assert summary["stop"] == "finished" and summary["iterations"] == 2
    answers = tool_answers(chat.requests[1])
    assert list(answers) == ["a", "b", "c", "call_1_3", "call_1_4"]
    assert answers["a"].startswith("error: this tool call has type 'custom'") and "names no function" in answers["b"]
    assert json.loads(answers["c"]) == {"slept": 0} and ran == [("nap", 0), ("count",), ("count",)]
    sent = [m for m in chat.requests[1]["messages"] if m["role"] == "assistant"][0]["tool_calls"]
    assert {c["type"] for c in sent} == {"function"} and all(isinstance(c["function"]["arguments"], str) for c in sent)
    assert json.loads((tmp_path / "s" / "iterations" / "0002.json").read_text())["note"] == "the end"


def write_session(path: Path, iterations: int = 1) -> Path:
    agent.Session(path).create("q", "m", None, agent.Budget())
    for i in range(1, iterations + 1):
        agent.Session(path).snapshot(i, {"messages": [], "usage": {"total_tokens": 0}, "run_ids": [], "calls": [], "note": ""})
    return path


@pytest.mark.parametrize("case, message", [
    ("resume_missing", "--resume {p}/nope: no such folder"),
    ("report_missing", "--report {p}/nope: no such folder"),
    ("session_exists", "--session {p}/s: a session exists there"),
    ("from_99", "--from 99: session {p}/s has iterations [1]; resume from 1 to 2"),
    ("from_minus_1", "--from -1: session {p}/s has iterations [1]; resume from 1 to 2"),
    ("truncated_session", "{p}/s/session.json cannot be read"),
    ("truncated_iteration", "{p}/s/iterations/0001.json cannot be read"),
    ("snapshot_without_usage", "{p}/s/iterations/0001.json: not an iteration snapshot (no 'usage')"),
    ("snapshot_without_tokens", "{p}/s/iterations/0001.json: not a usage record (no 'prompt_tokens')"),
    ("snapshot_without_history", "{p}/s/iterations/0001.json: not an iteration snapshot (no 'history')"),
    ("history_past_the_log", "{p}/s/iterations/0001.json: its history [[0, 9]] is not line ranges within"),
    ("snapshot_is_a_list", "{p}/s/iterations/0001.json: not an iteration snapshot (a JSON list, not an object)"),
    ("call_without_result", "{p}/s/iterations/0001.json: not a call record (no 'result')"),
    ("session_without_question", "{p}/s/session.json: not a session file (no 'question')"),
])
def test_session_folder_errors_are_one_line(tmp_path, case, message):
    s = write_session(tmp_path / "s")
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    damaged = {  # a snapshot (or session file) with keys missing: before, a KeyError's traceback
        "snapshot_without_usage": {"history": [[0, 2]], "run_ids": []},
        "snapshot_without_tokens": {"history": [[0, 2]], "run_ids": [], "usage": {"total_tokens": 0}},
        "snapshot_without_history": {"usage": usage, "run_ids": []},
        "history_past_the_log": {"usage": usage, "run_ids": [], "history": [[0, 9]]},
        "snapshot_is_a_list": [],
        "call_without_result": {"calls": [{"name": "count", "arguments": "{}"}]},
    }
    if case in damaged:
        for _ in range(2):
            agent.Session(s).log(0, {"role": "user", "content": "q"})
        (s / "iterations" / "0001.json").write_text(json.dumps(damaged[case]))
    if case == "session_without_question":
        (s / "session.json").write_text(json.dumps({"model": "m", "base_url": None, "created": "now"}))
    resume = ["--resume", str(s), "--from", "2", "--base-url", "http://127.0.0.1:9/v1"]
    args = {
        "resume_missing": ["--resume", str(tmp_path / "nope"), "--base-url", "http://127.0.0.1:9/v1"],
        "report_missing": ["--report", str(tmp_path / "nope")],
        "session_exists": ["q", "--session", str(s), "--base-url", "http://127.0.0.1:9/v1"],
        "from_99": ["--resume", str(s), "--from", "99", "--base-url", "http://127.0.0.1:9/v1"],
        "from_minus_1": ["--resume", str(s), "--from", "-1", "--base-url", "http://127.0.0.1:9/v1"],
        "truncated_session": ["--report", str(s)],
        "truncated_iteration": ["--report", str(s)],
        **dict.fromkeys(["snapshot_without_usage", "snapshot_without_tokens", "snapshot_without_history", "history_past_the_log"],
                        resume),
        **dict.fromkeys(["snapshot_is_a_list", "call_without_result", "session_without_question"], ["--report", str(s)]),
    }[case]
    if case == "truncated_session":
        (s / "session.json").write_text('{"question": "q", "mod')
    if case == "truncated_iteration":
        (s / "iterations" / "0001.json").write_text('{"iteration": 1, "mess')
    proc, _ = mechlib_agent(*args)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-3000:]
    assert message.format(p=tmp_path) in err[0]
    assert not (s / "iterations" / "-001.json").exists()


def test_a_partial_last_log_line_is_dropped_before_resuming(tmp_path):
    s = agent.Session(write_session(tmp_path / "s"))
    s.log(1, {"role": "assistant", "content": "done"})
    with open(s.path / "messages.jsonl", "a") as handle:
        handle.write('{"iteration": 2, "role": "assist')  # killed mid-write
    assert s.repair_log() == len('{"iteration": 2, "role": "assist')
    s.log(2, {"role": "meta", "content": "resumed"})
    assert [json.loads(line)["iteration"] for line in (s.path / "messages.jsonl").read_text().splitlines()] == [1, 2]
    assert s.repair_log() == 0
