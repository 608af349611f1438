"""Protocol tests of `mechlib agent`. No language model is reachable here, so a local HTTP
server on 127.0.0.1, started by the test, speaks the Chat Completions protocol and replies
with scripted tool calls. These tests check the loop's plumbing (dispatch, errors fed back,
budgets, resume, the report); nothing here is a transcript a model wrote."""
import asyncio
import http.server
import json

import pytest
from openai import AsyncOpenAI

from mechlib.book import agent

from .local_endpoint import answer, serve


class ScriptedChat:
    """A Chat Completions endpoint that returns the scripted replies in order and keeps
    every request it received."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                reply = outer.replies.pop(0) if outer.replies else {"content": "out of script"}
                answer(self, json.dumps(_completion(reply)).encode())

        self.server, self.url = serve(Handler)

    def client(self):
        return AsyncOpenAI(base_url=self.url, api_key="test", max_retries=0)

    def close(self):
        self.server.shutdown()


def _completion(reply: dict) -> dict:
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
             for i, (name, args) in enumerate(reply.get("calls", []))]
    message = {"role": "assistant", "content": reply.get("content"), **({"tool_calls": calls} if calls else {})}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


@pytest.fixture
def scripted():
    servers = []

    def make(replies):
        servers.append(ScriptedChat(replies))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def run(session, chat, budget, tmp_path, start_at=1):
    return asyncio.run(agent.run_loop(session, chat.client(), "scripted", budget,
                                      agent.mcp_server_params(str(tmp_path / "runs")), start_at=start_at))


def test_dispatch_errors_fed_back_and_finish(tmp_path, scripted, tiny_gpt2_dir):
    evaluate_args = json.dumps({"model": str(tiny_gpt2_dir), "difficulties": ["1x1"], "n": 5})
    chat = scripted([
        {"content": "Plan: list the chapters, then score the model.", "calls": [("list_chapters", "{}"), ("evaluate", evaluate_args)]},
        {"calls": [("no_such_tool", "{}"), ("evaluate", "{not json"), ("evaluate", json.dumps({"model": str(tiny_gpt2_dir), "n": -1}))]},
        {"content": "Final answer: the tiny random model gets nothing right."},
    ])
    session = agent.Session(tmp_path / "s").create("how accurate is it?", "scripted", chat.url, agent.Budget(max_iterations=5))
    summary = run(session, chat, agent.Budget(max_iterations=5), tmp_path)
    assert summary["stop"] == "finished" and summary["iterations"] == 3
    assert summary["usage"]["total_tokens"] == 330
    # the second request carries both tool results, in the protocol's shape
    tool_msgs = [m for m in chat.requests[1]["messages"] if m["role"] == "tool"]
    assert len(tool_msgs) == 2 and json.loads(tool_msgs[1]["content"])["cells"][0]["n"] == 5
    assert {t["function"]["name"] for t in chat.requests[0]["tools"]} >= {"evaluate", "run_chapter", "list_chapters"}
    # malformed calls came back as error messages, and the loop went on
    errors = [m["content"] for m in chat.requests[2]["messages"] if m["role"] == "tool"][2:]
    assert errors[0].startswith("error: unknown tool 'no_such_tool'")
    assert "not valid JSON" in errors[1] and "parameter 'n'" in errors[2]
    log = [json.loads(line) for line in (tmp_path / "s" / "messages.jsonl").read_text().splitlines()]
    assert sum(1 for m in log if m["role"] == "tool") == 5
    assert "Plan: list the chapters" in (tmp_path / "s" / "notes.md").read_text()
    report = agent.render_report(tmp_path / "s", tmp_path / "runs")
    assert "  - + 1x1 (pretrained): 0.0% [0.0, 43.5], n = 5" in report  # from the tool result, not the model's text
    assert "Stopped: finished after 3 iterations; 330 tokens." in report
    assert "The model wrote:" in report


def test_budget_stops_the_loop(tmp_path, scripted):
    chat = scripted([{"calls": [("list_chapters", "{}")]}] * 5)
    budget = agent.Budget(max_iterations=2)
    session = agent.Session(tmp_path / "s").create("q", "scripted", chat.url, budget)
    assert run(session, chat, budget, tmp_path)["stop"] == "max_iterations"
    assert len(chat.requests) == 2
    chat2 = scripted([{"calls": [("list_chapters", "{}")]}] * 5)
    tokens = agent.Budget(max_iterations=10, max_tokens=200)
    session2 = agent.Session(tmp_path / "s2").create("q", "scripted", chat2.url, tokens)
    summary = run(session2, chat2, tokens, tmp_path)
    assert summary["stop"] == "max_tokens" and summary["usage"]["total_tokens"] == 220


def test_resume_from_an_iteration_replays_the_state_before_it(tmp_path, scripted):
    chat = scripted([{"content": "one", "calls": [("list_chapters", "{}")]}, {"content": "two", "calls": [("query_runs", "{}")]},
                     {"content": "three"}])
    budget = agent.Budget(max_iterations=5)
    session = agent.Session(tmp_path / "s").create("q", "scripted", chat.url, budget)
    run(session, chat, budget, tmp_path)
    after_one = chat.requests[1]["messages"]  # what the first run sent after iteration 1
    chat2 = scripted([{"content": "two, again", "calls": [("query_runs", "{}")]}, {"content": "done"}])
    summary = run(agent.Session(tmp_path / "s"), chat2, budget, tmp_path, start_at=2)
    assert chat2.requests[0]["messages"] == after_one  # exactly the state after iteration 1
    assert summary["iterations"] == 3 and summary["stop"] == "finished"
    assert json.loads((tmp_path / "s" / "iterations" / "0002.json").read_text())["note"] == "two, again"
    assert "resumed from iteration 2" in (tmp_path / "s" / "messages.jsonl").read_text()
    with pytest.raises(agent.AgentError, match="has iterations"):
        agent.Session(tmp_path / "s").state_before(9)
