"""`mechlib agent`'s budgets and its session folder, against a scripted Chat Completions endpoint
and a toy MCP server in-process (no model, no subprocess): the wall time is checked between tool
calls and bounds each call, one reply runs at most `max_tool_calls_per_reply` calls, a budget
that cannot work is refused naming its flag, and a snapshot holds its own iteration, not the
whole history (old snapshots, with the history inline, still resume)."""
import asyncio
import http.server
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from mechlib.book import agent

from .local_endpoint import answer, serve

ROOT = Path(__file__).resolve().parents[2]


def completion(message, usage=None) -> bytes:
    """A Chat Completions reply holding ``message`` (sent as given, however malformed)."""
    return json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11} if usage is None else usage}).encode()


def calls(*pairs, prefix="c") -> list[dict]:
    """Function tool calls, one per (name, arguments object)."""
    return [{"id": f"{prefix}{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(pairs)]


class Endpoint:
    """An endpoint on 127.0.0.1 that answers with the scripted bodies in order (a dict is an
    assistant message, bytes go out as they are) and keeps every request it got."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                reply = outer.replies.pop(0) if outer.replies else {"role": "assistant", "content": "out of script"}
                body = reply if isinstance(reply, bytes) else completion({"role": "assistant", **reply})
                answer(self, body)

        self.server, self.url = serve(Handler)

    def client(self):
        return AsyncOpenAI(base_url=self.url, api_key="test", max_retries=0)


def toy_server():
    """An in-process MCP server: ``nap`` sleeps, ``count`` only counts. Returns it and the list
    of the calls it ran."""
    from mcp.server.mcpserver import MCPServer

    server, ran = MCPServer("toy"), []

    @server.tool()
    async def nap(seconds: float) -> dict:
        ran.append(("nap", seconds))
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @server.tool()
    def count() -> dict:
        ran.append(("count",))
        return {"n": len(ran)}

    return server, ran


@pytest.fixture
def endpoints():
    made = []

    def make(replies):
        made.append(Endpoint(replies))
        return made[-1]

    yield make
    for e in made:
        e.server.shutdown()


def run(path, endpoint, budget, start_at=1, server=None):
    """The loop on a new session at ``path`` (or a resumed one when ``start_at`` > 1)."""
    session = agent.Session(path) if start_at > 1 else agent.Session(path).create("q", "m", endpoint.url, budget)
    server, ran = (server, None) if server else toy_server()
    summary = asyncio.run(agent.run_loop(session, endpoint.client(), "m", budget, server, start_at=start_at))
    return summary, ran


def tool_answers(request) -> dict:
    return {m["tool_call_id"]: m["content"] for m in request["messages"] if m["role"] == "tool"}


def test_the_wall_time_is_checked_between_tool_calls(tmp_path, endpoints):
    """20 calls of 0.5 s with --max-seconds 2: before, all 20 ran (10 s)."""
    chat = endpoints([{"content": "naps", "tool_calls": calls(*[("nap", {"seconds": 0.5})] * 20)}])
    start = time.monotonic()
    summary, ran = run(tmp_path / "s", chat, agent.Budget(max_seconds=2, max_tool_calls_per_reply=20))
    assert time.monotonic() - start < 5 and len(ran) <= 5
    assert summary["stop"] == "max_seconds" and summary["iterations"] == 1
    # every call has its answer, so the session resumes with a history the protocol accepts
    state = agent.Session(tmp_path / "s").state_before(2)
    answers = {m["tool_call_id"]: m["content"] for m in state["messages"] if m["role"] == "tool"}
    assert set(answers) == {f"c{i}" for i in range(20)}
    assert sum("not run: the wall-time budget (--max-seconds) ran out" in a for a in answers.values()) >= 15
    assert json.loads((tmp_path / "s" / "iterations" / "0001.json").read_text())["stop"] == "max_seconds"
    chat2 = endpoints([{"content": "done"}])
    assert run(tmp_path / "s", chat2, agent.Budget(), start_at=2)[0]["stop"] == "finished"
    assert chat2.requests[0]["messages"] == state["messages"]


def test_one_tool_call_is_stopped_when_the_wall_time_runs_out(tmp_path, endpoints):
    chat = endpoints([{"tool_calls": calls(("nap", {"seconds": 30}), ("count", {}))}])
    start = time.monotonic()
    summary, ran = run(tmp_path / "s", chat, agent.Budget(max_seconds=1.5))
    assert time.monotonic() - start < 8 and summary["stop"] == "max_seconds"
    log = [json.loads(line) for line in (tmp_path / "s" / "messages.jsonl").read_text().splitlines()]
    answers = [m["content"] for m in log if m["role"] == "tool"]
    assert "nap was stopped: the wall-time budget (--max-seconds) ran out" in answers[0] and "not run" in answers[1]
    assert ran == [("nap", 30)]


def test_the_tool_calls_of_one_reply_are_capped(tmp_path, endpoints):
    """300 calls in one reply: before, all 300 ran."""
    assert agent.Budget().max_tool_calls_per_reply == agent.MAX_TOOL_CALLS_PER_REPLY == 16
    chat = endpoints([{"tool_calls": calls(*[("count", {})] * 300)}, {"content": "done"}])
    summary, ran = run(tmp_path / "s", chat, agent.Budget(max_tool_calls_per_reply=16))
    assert summary["stop"] == "finished" and len(ran) == 16
    answers = tool_answers(chat.requests[1])
    assert len(answers) == 300  # the protocol wants an answer for every tool_call id
    skipped = [a for a in answers.values() if a.startswith("error: not run")]
    assert len(skipped) == 284 and "at most 16 run per reply (--max-tool-calls-per-reply)" in skipped[0]
    assert json.loads(answers["c15"])["n"] == 16


@pytest.mark.parametrize("flags, message", [
    (["--max-iterations", "-1"], "--max-iterations -1: expected a whole number of at least 1"),
    (["--max-iterations", "0"], "--max-iterations 0: expected a whole number of at least 1"),
    (["--max-seconds", "-5"], "--max-seconds -5.0: expected a number greater than 0"),
    (["--max-seconds", "nan"], "--max-seconds nan: expected a number greater than 0"),
    (["--max-tokens", "-100"], "--max-tokens -100: expected a whole number of at least 1"),
    (["--max-cost", "-0.5"], "--max-cost -0.5: expected a number greater than 0"),
    (["--usd-per-1k-prompt", "-1"], "--usd-per-1k-prompt -1.0: expected a price of at least 0"),
])
def test_a_budget_that_cannot_work_is_refused_up_front(tmp_path, flags, message):
    """Before, each was accepted and the loop stopped at once (or, with NaN, never)."""
    from mechlib import cli

    with pytest.raises(SystemExit) as stopped:
        cli._main(["agent", "q", "--base-url", "http://127.0.0.1:9/v1", "--session", str(tmp_path / "s"), *flags])
    assert isinstance(stopped.value.code, str) and "\n" not in stopped.value.code
    assert stopped.value.code.startswith(f"mechlib agent: {message}")
    assert not (tmp_path / "s").exists()  # refused before the session folder is made


def test_a_bad_budget_is_one_line_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mechlib", "agent", "q", "--base-url", "http://127.0.0.1:9/v1",
                           "--session", str(tmp_path / "s"), "--max-iterations", "-1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MECHLIB_RUN_STORE": str(tmp_path / "runs")})
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "mechlib agent: --max-iterations -1: expected a whole number of at least 1"], proc.stderr[-2000:]


def test_the_tool_call_cap_is_checked_too():
    with pytest.raises(agent.AgentError, match="--max-tool-calls-per-reply 0: expected a whole number of at least 1"):
        agent.Budget(max_tool_calls_per_reply=0)


def test_a_snapshot_holds_its_own_iteration_not_the_history(tmp_path, endpoints):
    """6 replies of 100 kB: before, snapshot N copied all N replies (the folder grew as N squared)."""
    big = "x" * 100_000
    chat = endpoints([{"content": f"{i} {big}", "tool_calls": calls(("count", {}), prefix=f"i{i}-")} for i in range(6)]
                     + [{"content": "done"}])
    summary, _ = run(tmp_path / "s", chat, agent.Budget(max_iterations=10))
    assert summary["stop"] == "finished" and summary["iterations"] == 7
    sizes = [p.stat().st_size for p in sorted((tmp_path / "s" / "iterations").glob("*.json"))]
    assert len(sizes) == 7 and max(sizes) < 1.5 * len(big), sizes
    # the history is in messages.jsonl once; resuming from 4 replays exactly what request 4 held
    session = agent.Session(tmp_path / "s")
    assert session.state_before(4)["messages"] == chat.requests[3]["messages"]
    chat2 = endpoints([{"content": "again"}])
    assert run(tmp_path / "s", chat2, agent.Budget(max_iterations=10), start_at=4)[0]["iterations"] == 4
    assert chat2.requests[0]["messages"] == chat.requests[3]["messages"]
    assert session.state_before(5)["messages"][-1] == {"role": "assistant", "content": "again"}
    report = agent.render_report(tmp_path / "s", tmp_path / "runs")
    assert "## Iteration 7" in report and "Stopped: finished after 4 iterations" in report


def test_a_snapshot_of_the_older_format_still_resumes(tmp_path, endpoints):
    s = agent.Session(tmp_path / "s").create("q", "m", None, agent.Budget())
    inline = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
              {"role": "assistant", "content": "one", "tool_calls": calls(("count", {}))},
              {"role": "tool", "tool_call_id": "c0", "content": "{\"n\": 1}"}]
    s.snapshot(1, {"messages": inline, "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, "cost_usd": 0.0},
                   "run_ids": [], "calls": [], "note": "one", "stop": None})
    chat = endpoints([{"content": "two", "tool_calls": calls(("count", {}), prefix="d")}, {"content": "done"}])
    summary, _ = run(tmp_path / "s", chat, agent.Budget(), start_at=2)
    assert chat.requests[0]["messages"] == inline
    assert summary["iterations"] == 3 and summary["usage"]["total_tokens"] == 6 + 22
    resumed = agent.Session(tmp_path / "s").state_before(3)["messages"]
    assert resumed == chat.requests[1]["messages"] and resumed[:4] == inline
