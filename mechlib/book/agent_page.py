"""The book's agent page: what the MCP server offers, its tool list read from the server."""
from __future__ import annotations

import asyncio
from pathlib import Path

from .mcp_server import build_server
from .paths import project_root

AGENT_PAGE_HEAD = """# Driving the experiments from an agent

The book's experiments are also tools an AI agent can call, over the
[Model Context Protocol](https://modelcontextprotocol.io): `python -m mechlib mcp` serves them on stdio, with the
official `mcp` SDK. Every chapter parameter is validated by the same dataclasses the chapters use; a bad value
comes back as a tool error carrying the validation message, and the server keeps serving. Per-call caps
(`MECHLIB_MCP_MAX_PROBLEMS`, `MECHLIB_MCP_MAX_PROMPTS`, `MECHLIB_MCP_MAX_NEW_TOKENS`,
`MECHLIB_MCP_MAX_CELL_SECONDS`) bound the work of one call; no tool runs code it is given, and nothing is written
outside the run store (`run_chapter`'s executed notebooks go to `_build/agent/`).

## The tools

This list is read from the server itself when the book is built.

"""

AGENT_PAGE_TAIL = """
Resources: `mechlib://params/{name}` (a parameter set), `mechlib://runs/{chapter}/{id}` (a run record) and
`mechlib://findings/{chapter}` (a chapter's newest findings).

## Connecting a client

Claude Desktop (`claude_desktop_config.json`), with the book's checkout as `MECHLIB_ROOT`:

```json
{"mcpServers": {"mechlib": {"command": "/path/to/arithmetic-book/.venv/bin/python",
                             "args": ["-m", "mechlib", "mcp"],
                             "env": {"MECHLIB_ROOT": "/path/to/arithmetic-book"}}}}
```

Claude Code, from the checkout: `claude mcp add mechlib -- .venv/bin/python -m mechlib mcp`.

## A research loop: `mechlib agent`

`python -m mechlib agent "Which layers of the organism are needed for carries?" --max-iterations 8` plans, calls
these same tools through the MCP server, writes a note after each step and decides the next one, through any
OpenAI-compatible Chat Completions endpoint with tool calling: set `OPENAI_API_KEY` (OpenAI), or pass
`--base-url http://localhost:11434/v1` (Ollama), `--base-url http://localhost:8000/v1` (vLLM) or llama.cpp's
server, and `--model`. Budgets: `--max-iterations`, `--max-tokens`, `--max-cost` (with
`--usd-per-1k-prompt/--usd-per-1k-completion`), `--max-seconds`. A session directory keeps every message, tool
call, note, run id and the token usage as they happen; `--resume DIR --from N` restarts at iteration N, and
`--report DIR` renders the session as a Markdown lab-notebook page whose numbers are read from the tool results
and the run records, never from the model's own text.

No language model is reachable from the machines that build this book, so no agent transcript appears here. The
loop is checked by protocol tests: a local server speaking the Chat Completions protocol replies with scripted
tool calls, and the tests check dispatch, malformed calls fed back as errors, budgets, resume and the report.
"""


def write_agent_page(path: Path | None = None) -> Path:
    """``book/agent.md``: the agent page, its tool list read from the MCP server itself."""
    tools = asyncio.run(build_server().list_tools())
    rows = ["| tool | what it does | arguments |", "|---|---|---|"]
    for tool in tools:
        about = " ".join((tool.description or "").split()).split(". ")[0].rstrip(".") + "."
        args = ", ".join(f"`{name}`" for name in (tool.input_schema or {}).get("properties", {}))
        rows.append(f"| `{tool.name}` | {about.replace('|', '/')} | {args or '(none)'} |")
    path = Path(path or project_root() / "book" / "agent.md")
    path.write_text(AGENT_PAGE_HEAD + "\n".join(rows) + "\n" + AGENT_PAGE_TAIL)
    return path
