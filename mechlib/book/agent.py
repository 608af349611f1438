"""``mechlib agent``: a resumable research loop that drives the MCP server's tools through
any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp's server).

Each iteration asks the model for its next step, runs the tool calls it makes through the
MCP server (``python -m mechlib mcp`` over stdio: one tool surface, not two), and feeds the
results back. A malformed call (an unknown tool, arguments that are not JSON) becomes an
error message the model reads, never a crash. The loop stops when the model answers without
calling a tool, or when a budget runs out (iterations, tokens, cost, wall time).

A session directory holds everything, written as it happens, so an interrupt loses nothing
already recorded: ``session.json`` (question, model, budget), ``messages.jsonl`` (every
message and tool call), ``iterations/NNNN.json`` (the state after each iteration: messages,
usage, run ids, notes), ``notes.md`` and ``usage.json``. ``--resume DIR --from N`` restarts
from the state before iteration N. :func:`render_report` turns a session into a Markdown
lab-notebook page whose numbers are read from the run records and tool results, never
retyped from the model's text.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = """You are a careful interpretability researcher with tools that run experiments on small
transformers doing arithmetic (the default model is an embedded 4-layer organism, not GPT-2). Work in
iterations: state a short plan, call tools, read the results, then write a note that relates the result to
the question and to a hypothesis, citing run ids when you used run_chapter. Prefer the quick tools (evaluate,
logit_lens, generate) for exploration; use run_chapter for results worth recording. Report accuracies with
their n and intervals as the tools give them. When you can answer the question, reply without calling a tool:
that reply is your final answer."""


@dataclasses.dataclass
class Budget:
    """When the loop stops on its own. ``None`` means no limit."""

    max_iterations: int = 10
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_seconds: float | None = None
    usd_per_1k_prompt: float = 0.0  # prices for the cost estimate (0: cost not tracked)
    usd_per_1k_completion: float = 0.0

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


class AgentError(Exception):
    """A failure the user should read as one line: a bad endpoint reply, a bad session folder."""


def _read_json(path: Path):
    """JSON from a session file; a missing or damaged file is an AgentError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AgentError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AgentError(f"{path} cannot be read ({type(err).__name__}: {err}); the file is truncated or damaged") from None


class Session:
    """A session directory: append-only logs plus one snapshot per iteration."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def require(self, flag: str) -> Session:
        """This folder must hold a session (for ``--resume`` or ``--report``)."""
        if not self.path.is_dir():
            raise AgentError(f"{flag} {self.path}: no such folder")
        if not (self.path / "session.json").is_file():
            raise AgentError(f"{flag} {self.path}: not a session folder (no session.json)")
        _read_json(self.path / "session.json")
        return self

    def repair_log(self) -> int:
        """Drop a partial last line of ``messages.jsonl`` (an interrupt mid-write), so a
        resumed session never glues its entries onto it. Returns the bytes dropped."""
        log = self.path / "messages.jsonl"
        if not log.is_file():
            return 0
        data = log.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open(log, "r+b") as handle:
            handle.truncate(keep)
        return len(data) - keep

    def create(self, question: str, model: str, base_url: str | None, budget: Budget) -> Session:
        if (self.path / "session.json").exists():
            raise AgentError(f"--session {self.path}: a session exists there; resume it with --resume {self.path} --from N, "
                             "or choose a new folder")
        (self.path / "iterations").mkdir(parents=True, exist_ok=True)
        meta = {"question": question, "model": model, "base_url": base_url, "budget": dataclasses.asdict(budget),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(self.path / "session.json", meta)
        return self

    @property
    def meta(self) -> dict:
        return _read_json(self.path / "session.json")

    def log(self, iteration: int, message: dict) -> None:
        with open(self.path / "messages.jsonl", "a") as handle:
            handle.write(json.dumps({"iteration": iteration, **message}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def note(self, iteration: int, text: str) -> None:
        with open(self.path / "notes.md", "a") as handle:
            handle.write(f"\n## Iteration {iteration}\n\n{text.strip()}\n")

    def snapshot(self, iteration: int, state: dict) -> None:
        _write_json(self.path / "iterations" / f"{iteration:04d}.json", {"iteration": iteration, **state})
        _write_json(self.path / "usage.json", state["usage"])

    def state_before(self, iteration: int) -> dict | None:
        """The state after iteration - 1 (None: start from the question)."""
        done = sorted(int(p.stem) for p in (self.path / "iterations").glob("[0-9]*.json"))
        if iteration < 1 or iteration > (max(done) if done else 0) + 1:
            raise AgentError(f"--from {iteration}: session {self.path} has iterations {done or 'none'}; "
                             f"resume from 1 to {(max(done) if done else 0) + 1}")
        if iteration == 1:
            return None
        return _read_json(self.path / "iterations" / f"{iteration - 1:04d}.json")

    def iterations(self) -> list[dict]:
        return [_read_json(p) for p in sorted((self.path / "iterations").glob("[0-9]*.json"))]


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def openai_tools(mcp_tools) -> list[dict]:
    """MCP tool definitions as Chat Completions function tools (same names, same schemas)."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                              "parameters": t.input_schema or {"type": "object", "properties": {}}}}
            for t in mcp_tools]


def _message_dict(message) -> dict:
    """The assistant message as plain JSON for the log and the next request."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in message.tool_calls]
    return out


async def dispatch(mcp_client, names: set[str], call: dict) -> tuple[str, dict | None]:
    """Run one tool call; (text for the model, parsed result or None). Errors are text."""
    name, raw = call["function"]["name"], call["function"]["arguments"]
    if name not in names:
        return f"error: unknown tool {name!r}; the tools are {sorted(names)}", None
    try:
        args = json.loads(raw or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except (ValueError, json.JSONDecodeError) as err:
        return f"error: the arguments of {name} are not valid JSON ({err}); send a JSON object", None
    result = await mcp_client.call_tool(name, args)
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    if result.is_error:
        return f"error: {text}", None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError:
        return text, None


async def run_loop(session: Session, chat, model: str, budget: Budget, mcp_params, start_at: int = 1) -> dict:
    """Iterate from ``start_at`` (1 = the question) until the model answers or a budget stops it."""
    from mcp import Client

    state = session.state_before(start_at) or {
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": session.meta["question"]}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0.0},
        "run_ids": [], "stop": None,
    }
    dropped = session.repair_log()
    if dropped:
        session.log(start_at, {"role": "meta", "content": f"dropped a partial last line of messages.jsonl ({dropped} bytes)"})
    if start_at == 1:
        for m in state["messages"]:
            session.log(0, m)
    else:
        session.log(start_at, {"role": "meta", "content": f"resumed from iteration {start_at}"})
    messages, usage, run_ids = state["messages"], state["usage"], state["run_ids"]
    started = time.time()
    iteration = start_at - 1
    stop = None
    async with Client(mcp_params) as mcp_client:
        mcp_tools = (await mcp_client.list_tools()).tools
        tools, names = openai_tools(mcp_tools), {t.name for t in mcp_tools}
        while True:
            stop = budget.exhausted(iteration, usage, started)
            if stop:
                break
            iteration += 1
            response = await _complete(chat, model, messages, tools, budget, started)
            if response is None:  # the wall-clock budget ran out while waiting for the endpoint
                iteration -= 1
                stop = "max_seconds"
                break
            if response.usage:
                usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                usage["completion_tokens"] += response.usage.completion_tokens or 0
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                usage["cost_usd"] = round(usage["prompt_tokens"] / 1000 * budget.usd_per_1k_prompt
                                          + usage["completion_tokens"] / 1000 * budget.usd_per_1k_completion, 6)
            assistant = _message_dict(response.choices[0].message)
            messages.append(assistant)
            session.log(iteration, assistant)
            if assistant["content"].strip():
                session.note(iteration, assistant["content"])
            calls = assistant.get("tool_calls", [])
            results = []
            for call in calls:
                text, parsed = await dispatch(mcp_client, names, call)
                if call["function"]["name"] == "run_chapter" and parsed and parsed.get("run_id"):
                    run_ids.append(parsed["run_id"])
                tool_message = {"role": "tool", "tool_call_id": call["id"], "content": text}
                messages.append(tool_message)
                session.log(iteration, tool_message)
                results.append({"name": call["function"]["name"], "arguments": call["function"]["arguments"], "result": text})
            if not calls:
                stop = "finished"
            session.snapshot(iteration, {"messages": messages, "usage": usage, "run_ids": run_ids, "calls": results,
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
    remaining = None if budget.max_seconds is None else budget.max_seconds - (time.time() - started)
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
    if isinstance(response, (str, bytes)):
        raise AgentError(f"the endpoint {endpoint} sent text, not a completion: {str(response)[:120]!r}")
    if not getattr(response, "choices", None):
        raise AgentError(f"the endpoint {endpoint} sent a completion with no choices")
    if getattr(response.choices[0], "message", None) is None:
        raise AgentError(f"the endpoint {endpoint} sent a choice with no message")
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
        if it.get("note"):
            lines += ["The model wrote:", "", *[f"> {line}" for line in it["note"].strip().splitlines()], ""]
        for call in it.get("calls", []):
            lines += [f"- `{call['name']}({call['arguments']})`"]
            try:
                result = json.loads(call["result"])
            except json.JSONDecodeError:
                lines += [f"  - {call['result'][:300]}"]
                continue
            if call["name"] == "run_chapter" and result.get("run_id") in records:
                rec = records[result["run_id"]]
                lines += [f"  - run `{rec['id']}` ({rec['chapter']}, commit `{(rec.get('git_commit') or '')[:8]}`):"]
                lines += [f"    - {k}: {v}" for k, v in rec["metrics"].items() if isinstance(v, str) and k.endswith("_text")][:10]
            elif call["name"] == "evaluate":
                for cell in result.get("cells", []):
                    lines += [f"  - {cell['op']} {cell['difficulty']} ({cell['kind']}): {cell['accuracy']:.1%} "
                              f"[{cell['lo'] * 100:.1f}, {cell['hi'] * 100:.1f}], n = {cell['n']}"]
            else:
                lines += [f"  - result: `{json.dumps(result)[:300]}`"]
        lines.append("")
    result_path = session.path / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        lines += [f"Stopped: {result['stop']} after {result['iterations']} iterations; {result['usage']['total_tokens']} tokens"
                  + (f", ${result['usage']['cost_usd']:.4f}" if result["usage"].get("cost_usd") else "") + "."]
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """CLI entry: a new session, a resumed one, or a report. A bad session folder or a bad
    endpoint reply ends in one line naming it; the session stays resumable."""
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


def _main(args) -> int:
    import asyncio

    from openai import AsyncOpenAI

    if args.report:
        print(render_report(Session(Path(args.report)).require("--report").path))
        return 0
    budget = Budget(max_iterations=args.max_iterations, max_tokens=args.max_tokens, max_cost_usd=args.max_cost,
                    max_seconds=args.max_seconds, usd_per_1k_prompt=args.usd_per_1k_prompt,
                    usd_per_1k_completion=args.usd_per_1k_completion)
    if args.resume:
        session = Session(Path(args.resume)).require("--resume")
        meta = session.meta
        session.state_before(args.start_from)  # a bad --from fails before any request
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
        done = [it["iteration"] for it in session.iterations()]
        raise AgentError(f"{err}. Session {session.path} kept ({len(done)} iterations recorded); resume with "
                         f"--resume {session.path} --from {(max(done) if done else 0) + 1}") from None
    (session.path / "report.md").write_text(render_report(session.path))
    print(json.dumps({"session": str(session.path), **summary}, indent=1))
    return 0
