"""``mechlib agent``: a resumable research loop that drives the MCP server's tools through
any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp's server).

Each iteration asks the model for its next step, runs the tool calls it makes through the
MCP server (``python -m mechlib mcp`` over stdio: one tool surface, not two), and feeds the
results back. A malformed call (an unknown tool, arguments that are not JSON, a call that is
not a function call) becomes an error message the model reads, never a crash; a reply that
cannot be read at all (no message, content or usage of the wrong type, JSON nested too deep)
ends the loop in one line, the session left resumable. The loop stops when the model answers
without calling a tool, or when a budget runs out (iterations, tokens, cost, wall time, the
last checked before every tool call too). At most ``max_tool_calls_per_reply`` calls of one
reply run; the rest are answered as not run.

A session directory holds everything, written as it happens, so an interrupt loses nothing
already recorded: ``session.json`` (question, model, budget), ``messages.jsonl`` (every
message and tool call, appended once), ``iterations/NNNN.json`` (the state after each
iteration: usage, run ids, that iteration's calls and note, and the conversation as line
ranges of ``messages.jsonl``, so a snapshot stays the size of its own iteration), ``notes.md``
and ``usage.json``. ``--resume DIR --from N`` restarts from the state before iteration N
(snapshots of the older format, with the messages inline, load too). :func:`render_report`
turns a session into a Markdown lab-notebook page whose numbers are read from the run records
and tool results, never retyped from the model's text.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from .agent_replies import _reply
from .agent_session import AgentError, Session, _extend, _field, _read_json, _whole, _write_json

SYSTEM_PROMPT = """You are a careful interpretability researcher with tools that run experiments on small
transformers doing arithmetic (the default model is an embedded 4-layer organism, not GPT-2). Work in
iterations: state a short plan, call tools, read the results, then write a note that relates the result to
the question and to a hypothesis, citing run ids when you used run_chapter. Prefer the quick tools (evaluate,
logit_lens, generate) for exploration; use run_chapter for results worth recording. Report accuracies with
their n and intervals as the tools give them. When you can answer the question, reply without calling a tool:
that reply is your final answer."""

MAX_TOOL_CALLS_PER_REPLY = 16

FLAGS = {"max_iterations": "--max-iterations", "max_tokens": "--max-tokens", "max_cost_usd": "--max-cost",
         "max_seconds": "--max-seconds", "max_tool_calls_per_reply": "--max-tool-calls-per-reply",
         "usd_per_1k_prompt": "--usd-per-1k-prompt", "usd_per_1k_completion": "--usd-per-1k-completion"}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass
class Budget:
    """When the loop stops on its own. ``None`` means no limit. A value that could only stop
    the loop at once, or never (negative, zero, NaN), is refused here, naming its flag."""

    max_iterations: int = 10
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_seconds: float | None = None
    usd_per_1k_prompt: float = 0.0  # prices for the cost estimate (0: cost not tracked)
    usd_per_1k_completion: float = 0.0
    max_tool_calls_per_reply: int = MAX_TOOL_CALLS_PER_REPLY  # the rest of a reply's calls are answered, not run

    def __post_init__(self):
        for name, optional in (("max_iterations", False), ("max_tokens", True), ("max_tool_calls_per_reply", False)):
            value = getattr(self, name)
            if not (optional and value is None) and not (_whole(value) and value >= 1):
                raise AgentError(f"{FLAGS[name]} {value}: expected a whole number of at least 1"
                                 + (" (leave the flag out for no limit)" if optional else ""))
        for name in ("max_cost_usd", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and value > 0):
                raise AgentError(f"{FLAGS[name]} {value}: expected a number greater than 0 (leave the flag out for no limit)")
        for name in ("usd_per_1k_prompt", "usd_per_1k_completion"):
            value = getattr(self, name)
            if not (_number(value) and value >= 0):
                raise AgentError(f"{FLAGS[name]} {value}: expected a price of at least 0 (USD per 1000 tokens)")

    def exhausted(self, iteration: int, usage: dict, started: float) -> str | None:
        if iteration >= self.max_iterations:
            return "max_iterations"
        if self.max_tokens is not None and usage["total_tokens"] >= self.max_tokens:
            return "max_tokens"
        if self.max_cost_usd is not None and usage["cost_usd"] >= self.max_cost_usd:
            return "max_cost_usd"
        if self.max_seconds is not None and time.time() - started >= self.max_seconds:
            return "max_seconds"
        return None

    def seconds_left(self, started: float) -> float | None:
        """What is left of ``max_seconds`` (None: no limit)."""
        return None if self.max_seconds is None else self.max_seconds - (time.time() - started)


def openai_tools(mcp_tools) -> list[dict]:
    """MCP tool definitions as Chat Completions function tools (same names, same schemas)."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                              "parameters": t.input_schema or {"type": "object", "properties": {}}}}
            for t in mcp_tools]


def _add_usage(usage: dict, tokens: tuple[int, int] | None, budget: Budget) -> None:
    if tokens is None:
        return
    usage["prompt_tokens"] += tokens[0]
    usage["completion_tokens"] += tokens[1]
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["cost_usd"] = round(usage["prompt_tokens"] / 1000 * budget.usd_per_1k_prompt
                              + usage["completion_tokens"] / 1000 * budget.usd_per_1k_completion, 6)


async def dispatch(mcp_client, names: set[str], call: dict, timeout: float | None = None) -> tuple[str, dict | None]:
    """Run one tool call; (text for the model, parsed result or None). Errors are text; a call
    still running after ``timeout`` seconds raises TimeoutError (the server is asked to stop)."""
    from mcp.shared.exceptions import MCPError
    from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

    name, raw = call["function"]["name"], call["function"]["arguments"]
    if name not in names:
        return f"error: unknown tool {name!r}; the tools are {sorted(names)}", None
    try:
        args = json.loads(raw or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except (ValueError, json.JSONDecodeError, RecursionError) as err:
        return f"error: the arguments of {name} are not valid JSON ({err}); send a JSON object", None
    try:
        result = await mcp_client.call_tool(name, args, read_timeout_seconds=timeout)
    except TimeoutError:  # the transport's own, not the budget's
        raise AgentError(f"the MCP server did not take the call to {name} (its transport timed out)") from None
    except MCPError as err:
        if err.code == REQUEST_TIMEOUT:
            raise TimeoutError(name) from None
        if err.code == CONNECTION_CLOSED:
            raise AgentError(f"the MCP server closed the connection during {name} (it crashed or was killed)") from None
        return f"error: {err.message}", None
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        return f"error: {text}", None
    try:
        return text, json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text, None


async def _answers(mcp_client, names: set[str], calls: list[dict], refused: dict[str, str], budget: Budget, started: float):
    """For each tool call of one reply, in order: (call, text for the model, parsed result, whether
    the wall time ran out). Every call gets its answer (the protocol wants one per id): those past
    ``max_tool_calls_per_reply``, and all once ``max_seconds`` is spent, are answered as not run."""
    over_time = False
    for i, call in enumerate(calls):
        name, parsed, left = call["function"]["name"], None, budget.seconds_left(started)
        if call["id"] in refused:
            text = refused[call["id"]]
        elif i >= budget.max_tool_calls_per_reply:
            text = (f"error: not run: this reply made {len(calls)} tool calls, and at most {budget.max_tool_calls_per_reply} "
                    "run per reply (--max-tool-calls-per-reply); ask again for the ones you still need")
        elif over_time or (left is not None and left <= 0):
            over_time, text = True, "error: not run: the wall-time budget (--max-seconds) ran out before this call"
        else:
            try:
                text, parsed = await dispatch(mcp_client, names, call, timeout=left)
            except TimeoutError:
                over_time, text = True, f"error: {name} was stopped: the wall-time budget (--max-seconds) ran out while it ran"
        yield call, text, parsed, over_time


class _Conversation:
    """The messages the endpoint gets, each logged once; ``history`` says where they sit in
    ``messages.jsonl`` (line ranges), which is all a snapshot needs to hold."""

    def __init__(self, session: Session):
        self.session, self.messages, self.history = session, [], []

    def add(self, iteration: int, message: dict) -> None:
        self.messages.append(message)
        _extend(self.history, self.session.log(iteration, message))


def _start(session: Session, start_at: int) -> tuple[_Conversation, dict, list]:
    """The conversation, usage and run ids to go on from (the question, or a snapshot)."""
    state = session.state_before(start_at)
    dropped = session.repair_log()
    if dropped:
        session.log(start_at, {"role": "meta", "content": f"dropped a partial last line of messages.jsonl ({dropped} bytes)"})
    talk = _Conversation(session)
    if state is None:
        for m in ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": session.meta["question"]}):
            talk.add(0, m)
        return talk, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.0}, []
    session.log(start_at, {"role": "meta", "content": f"resumed from iteration {start_at}"})
    if state["history"] is None:  # an older snapshot, its messages inline: logged once here, so new snapshots can refer to them
        session.log(start_at, {"role": "meta", "content": f"the {len(state['messages'])} messages of the older-format snapshot "
                                                          f"{start_at - 1:04d}.json follow"})
        for m in state["messages"]:
            talk.add(start_at - 1, m)
    else:
        talk.messages, talk.history = state["messages"], state["history"]
    return talk, state["usage"], state["run_ids"]


async def run_loop(session: Session, chat, model: str, budget: Budget, mcp_params, start_at: int = 1) -> dict:
    """Iterate from ``start_at`` (1 = the question) until the model answers or a budget stops it.
    ``mcp_params`` is what :class:`mcp.Client` connects to (:func:`mcp_server_params`, or a server)."""
    from mcp import Client

    talk, usage, run_ids = _start(session, start_at)
    started = time.time()
    iteration = start_at - 1
    stop = None
    async with Client(mcp_params) as mcp_client:
        mcp_tools = (await mcp_client.list_tools()).tools
        tools, names = openai_tools(mcp_tools), {t.name for t in mcp_tools}
        while not (stop := budget.exhausted(iteration, usage, started)):
            response = await _complete(chat, model, talk.messages, tools, budget, started)
            if response is None:  # the wall-clock budget ran out while waiting for the endpoint
                stop = "max_seconds"
                break
            iteration += 1
            assistant, refused, tokens = _reply(response, str(chat.base_url), iteration)
            _add_usage(usage, tokens, budget)
            talk.add(iteration, assistant)
            if assistant["content"].strip():
                session.note(iteration, assistant["content"])
            calls, results = assistant.get("tool_calls", []), []
            async for call, text, parsed, over_time in _answers(mcp_client, names, calls, refused, budget, started):
                if call["function"]["name"] == "run_chapter" and isinstance(parsed, dict) and parsed.get("run_id"):
                    run_ids.append(parsed["run_id"])
                talk.add(iteration, {"role": "tool", "tool_call_id": call["id"], "content": text})
                results.append({"name": call["function"]["name"], "arguments": call["function"]["arguments"], "result": text})
                stop = "max_seconds" if over_time else None
            if not calls:
                stop = "finished"
            session.snapshot(iteration, {"history": talk.history, "usage": usage, "run_ids": run_ids, "calls": results,
                                         "note": assistant["content"], "stop": stop})
            if stop:
                break
    summary = {"iterations": iteration, "stop": stop, "usage": usage, "run_ids": run_ids}
    _write_json(session.path / "result.json", summary)
    return summary


async def _complete(chat, model: str, messages: list, tools: list, budget: Budget, started: float):
    """One Chat Completions request, bounded by what is left of ``max_seconds`` (None when it
    runs out). A reply that is not a completion is an AgentError naming the endpoint."""
    import asyncio

    import openai

    endpoint = str(chat.base_url)
    remaining = budget.seconds_left(started)
    try:
        request = chat.chat.completions.create(model=model, messages=messages, tools=tools,
                                               **({"timeout": max(remaining, 0.1)} if remaining is not None else {}))
        response = await (asyncio.wait_for(request, max(remaining, 0.1)) if remaining is not None else request)
    except (TimeoutError, asyncio.TimeoutError, openai.APITimeoutError):
        if remaining is not None:
            return None
        raise AgentError(f"the endpoint {endpoint} did not answer in time") from None
    except openai.APIStatusError as err:
        raise AgentError(f"the endpoint {endpoint} answered HTTP {err.status_code}: {str(err.message)[:200]}") from None
    except openai.APIConnectionError as err:
        raise AgentError(f"the endpoint {endpoint} cannot be reached ({err.__cause__ or err})") from None
    except (ValueError, json.JSONDecodeError) as err:
        raise AgentError(f"the endpoint {endpoint} sent a reply that is not JSON ({err})") from None
    except RecursionError:
        raise AgentError(f"the endpoint {endpoint} sent a reply nested too deeply to read") from None
    return response


def mcp_server_params(store: str | None = None):
    """How the agent starts the MCP server: this Python, ``-m mechlib mcp``."""
    from mcp.client.stdio import StdioServerParameters

    env = dict(os.environ)
    if store:
        env["MECHLIB_RUN_STORE"] = store
    return StdioServerParameters(command=sys.executable, args=["-m", "mechlib", "mcp"], env=env)


def render_report(session_path: Path, store: Path | None = None) -> str:
    """A Markdown lab-notebook page for a session. Numbers come from the tool results and the
    run records (read from the run store by id), never from the model's own text; the model's
    notes are quoted as what it wrote."""
    from .runs import load_runs, store_dir

    session = Session(session_path)
    meta = session.meta
    records = {r["id"]: r for r in load_runs(Path(store or store_dir()))}
    lines = [f"# Agent session: {meta['question']}", "",
             f"Model `{meta['model']}`, started {meta['created']}. The notes are the model's words; every number in the",
             "tables is read from a tool result or a run record.", ""]
    for it in session.iterations():
        lines += [f"## Iteration {it['iteration']}", ""]
        if it["note"]:
            lines += ["The model wrote:", "", *[f"> {line}" for line in it["note"].strip().splitlines()], ""]
        for call in it["calls"]:
            lines += [f"- `{call['name']}({call['arguments']})`", *_result_lines(call, records)]
        lines.append("")
    result_path = session.path / "result.json"
    if result_path.is_file():
        result, what = _read_json(result_path), "a session result"
        stop, done = _field(result_path, result, "stop", (str, type(None)), what), _field(result_path, result, "iterations", int, what)
        usage = _field(result_path, result, "usage", dict, what)
        tokens, cost = _field(result_path, usage, "total_tokens", int, "a usage record"), usage.get("cost_usd")
        lines += [f"Stopped: {stop} after {done} iterations; {tokens} tokens" + (f", ${cost:.4f}" if _number(cost) and cost else "") + "."]
    return "\n".join(lines) + "\n"


def _result_lines(call: dict, records: dict) -> list[str]:
    """A tool result as report lines: a run's record, evaluate's cells, or the result itself."""
    try:
        result = json.loads(call["result"])
    except (json.JSONDecodeError, RecursionError):
        return [f"  - {call['result'][:300]}"]
    try:
        if call["name"] == "run_chapter" and result.get("run_id") in records:
            rec = records[result["run_id"]]
            return ([f"  - run `{rec['id']}` ({rec['chapter']}, commit `{(rec.get('git_commit') or '')[:8]}`):"]
                    + [f"    - {k}: {v}" for k, v in rec["metrics"].items() if isinstance(v, str) and k.endswith("_text")][:10])
        if call["name"] == "evaluate":
            return [f"  - {cell['op']} {cell['difficulty']} ({cell['kind']}): {cell['accuracy']:.1%} "
                    f"[{cell['lo'] * 100:.1f}, {cell['hi'] * 100:.1f}], n = {cell['n']}" for cell in result.get("cells", [])]
    except (AttributeError, KeyError, TypeError, ValueError):  # not a result these tools give: shown as it is
        pass
    return [f"  - result: `{json.dumps(result)[:300]}`"]


def main(args) -> int:
    """CLI entry: a new session, a resumed one, or a report. A bad session folder, a bad budget
    or a bad endpoint reply ends in one line naming it; the session stays resumable."""
    try:
        return _main(args)
    except AgentError as err:
        raise SystemExit(f"mechlib agent: {err}") from None


def _find_agent_error(err: BaseException) -> AgentError | None:
    """The AgentError in ``err``, looking inside exception groups."""
    if isinstance(err, AgentError):
        return err
    for inner in getattr(err, "exceptions", ()):
        found = _find_agent_error(inner)
        if found is not None:
            return found
    return None


def budget_from_args(args) -> Budget:
    """The budget the flags ask for (refused in one line, naming the flag, when it cannot work)."""
    return Budget(max_iterations=args.max_iterations, max_tokens=args.max_tokens, max_cost_usd=args.max_cost,
                  max_seconds=args.max_seconds, usd_per_1k_prompt=args.usd_per_1k_prompt,
                  usd_per_1k_completion=args.usd_per_1k_completion,
                  max_tool_calls_per_reply=getattr(args, "max_tool_calls_per_reply", MAX_TOOL_CALLS_PER_REPLY))


def _main(args) -> int:
    import asyncio

    from openai import AsyncOpenAI

    if args.report:
        print(render_report(Session(Path(args.report)).require("--report").path))
        return 0
    budget = budget_from_args(args)
    if args.resume:
        session = Session(Path(args.resume)).require("--resume")
        meta = session.meta
        session.state_before(args.start_from)  # a bad --from or a damaged snapshot fails before any request
        model, base_url, start = args.model or meta["model"], args.base_url or meta["base_url"], args.start_from
    else:
        if not args.question:
            raise SystemExit("mechlib agent: give a question, or --resume SESSION --from N, or --report SESSION")
        model, base_url, start = args.model, args.base_url, 1
        session = Session(Path(args.session or f"_build/agent-sessions/{time.strftime('%Y%m%d-%H%M%S')}"))
        session.create(args.question, model, base_url, budget)
    key = os.environ.get(args.api_key_env) or ("not-needed" if base_url else None)
    if key is None:
        raise SystemExit(f"mechlib agent: set {args.api_key_env} (or --base-url for a local server that needs no key)")
    # retries stay within the wall-clock budget: with max_seconds, one attempt per request
    chat = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0 if budget.max_seconds is not None else 2)
    try:
        summary = asyncio.run(run_loop(session, chat, model, budget, mcp_server_params(), start_at=start))
    except Exception as raised:  # the MCP client's task group wraps what the loop raised
        err = _find_agent_error(raised)
        if err is None:
            raise
        done = session.done()
        raise AgentError(f"{err}. Session {session.path} kept ({len(done)} iterations recorded); resume with "
                         f"--resume {session.path} --from {(max(done) if done else 0) + 1}") from None
    (session.path / "report.md").write_text(render_report(session.path))
    print(json.dumps({"session": str(session.path), **summary}, indent=1))
    return 0
