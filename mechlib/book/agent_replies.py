"""Reading one Chat Completions reply defensively: every field is checked before anything
is logged, so a malformed reply is fed back to the model or ends the loop in one line
(see :mod:`mechlib.book.agent`)."""
from __future__ import annotations

import json
from typing import Any

from .agent_session import AgentError, _whole


def _reply(response, endpoint: str, iteration: int) -> tuple[dict, dict[str, str], tuple[int, int] | None]:
    """A completion as (the assistant message in the protocol's plain JSON, an error for each
    tool call that cannot run, (prompt, completion) tokens or None). The SDK keeps whatever
    types the endpoint sent, so every field is checked here: a bad tool call is answered with
    an error the model reads; a reply with no usable message or usage is an AgentError."""
    if isinstance(response, (str, bytes)):
        raise AgentError(f"the endpoint {endpoint} sent text, not a completion: {str(response)[:120]!r}")
    try:
        body = response.model_dump(warnings=False) if hasattr(response, "model_dump") else response
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices or not isinstance(choices, list):
            raise AgentError(f"the endpoint {endpoint} sent a completion with no choices")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if message is None:
            raise AgentError(f"the endpoint {endpoint} sent a choice with no message")
        if not isinstance(message, dict):
            raise AgentError(f"the endpoint {endpoint} sent a message that is a {type(message).__name__}, not an object: "
                             f"{str(message)[:80]!r}")
        assistant: dict[str, Any] = {"role": "assistant", "content": _content(message.get("content"), endpoint)}
        calls, refused = _tool_calls(message.get("tool_calls"), endpoint, iteration)
        if calls:
            assistant["tool_calls"] = calls
        return assistant, refused, _tokens(body.get("usage"), endpoint)
    except RecursionError:
        raise AgentError(f"the endpoint {endpoint} sent a reply nested too deeply to read") from None


def _content(content, endpoint: str) -> str:
    """The message's text: a string, or a list of text parts (joined); nothing else."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = [p if isinstance(p, str) else p.get("text") if isinstance(p, dict) and p.get("type", "text") == "text" else None
                 for p in content]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise AgentError(f"the endpoint {endpoint} sent message content that is not text: {json.dumps(content)[:80]}")


def _tool_calls(raw, endpoint: str, iteration: int) -> tuple[list[dict], dict[str, str]]:
    """The tool calls as the protocol's function calls (a missing or repeated id replaced, so
    every call can be answered), and an error for each one that cannot run."""
    if raw is None:
        return [], {}
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise AgentError(f"the endpoint {endpoint} sent tool_calls that are not a list of objects: {json.dumps(raw)[:80]}")
    calls, refused, ids = [], {}, set()
    for i, raw_call in enumerate(raw):
        call_id = raw_call.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in ids:
            call_id = f"call_{iteration}_{i}"
        ids.add(call_id)
        kind = raw_call.get("type") or "function"
        body = raw_call.get(kind) if isinstance(kind, str) else None
        body = body if isinstance(body, dict) else {}
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        args = body.get("arguments" if kind == "function" else "input")
        args = args if isinstance(args, str) or args is None else json.dumps(args)  # an object where JSON text belongs
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": args or ""}})
        if kind != "function":
            refused[call_id] = (f"error: this tool call has type {kind!r}; these tools are functions: call them with "
                                "type 'function', a name and JSON arguments")
        elif not name:
            refused[call_id] = "error: this tool call names no function; give the tool's name and JSON arguments"
    return calls, refused


def _tokens(usage, endpoint: str) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the reply's usage (None when it sent none)."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise AgentError(f"the endpoint {endpoint} sent usage that is not an object: {json.dumps(usage)[:80]}")
    counts = [usage.get(key) or 0 for key in ("prompt_tokens", "completion_tokens")]
    if not all(_whole(n) and n >= 0 for n in counts):
        raise AgentError(f"the endpoint {endpoint} sent token counts that are not whole numbers: {json.dumps(usage)[:120]}")
    return counts[0], counts[1]
