"""The agent's session folder: append-only logs plus one snapshot per iteration, and the
checks that turn a damaged file into one line naming it (see :mod:`mechlib.book.agent`)."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path


class AgentError(Exception):
    """A failure the user should read as one line: a bad endpoint reply, a bad session folder."""


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path):
    """JSON from a session file; a missing or damaged file is an AgentError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AgentError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AgentError(f"{path} cannot be read ({type(err).__name__}: {err}); the file is truncated or damaged") from None


def _field(path: Path, data, key: str, kind, what: str):
    """``data[key]`` of type ``kind``, or an AgentError naming the file and the key."""
    if not isinstance(data, dict):
        raise AgentError(f"{path}: not {what} (a JSON {type(data).__name__}, not an object); the file is damaged")
    if key not in data:
        raise AgentError(f"{path}: not {what} (no {key!r}); the file is damaged")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise AgentError(f"{path}: {key!r} is {json.dumps(value)[:80]}, not what {what} holds; the file is damaged")
    return value


def _extend(history: list, line: int) -> None:
    """Add one line of ``messages.jsonl`` to a conversation's line ranges."""
    if history and history[-1][1] == line:
        history[-1][1] += 1
    else:
        history.append([line, line + 1])


class Session:
    """A session directory: append-only logs plus one snapshot per iteration."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lines: int | None = None  # complete lines in messages.jsonl, counted on first use

    def require(self, flag: str) -> Session:
        """This folder must hold a session (for ``--resume`` or ``--report``)."""
        if not self.path.is_dir():
            raise AgentError(f"{flag} {self.path}: no such folder")
        if not (self.path / "session.json").is_file():
            raise AgentError(f"{flag} {self.path}: not a session folder (no session.json)")
        self.read_meta()
        return self

    def repair_log(self) -> int:
        """Drop a partial last line of ``messages.jsonl`` (an interrupt mid-write), so a
        resumed session never glues its entries onto it. Returns the bytes dropped."""
        log = self.path / "messages.jsonl"
        self._lines = None
        if not log.is_file():
            return 0
        data = log.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open(log, "r+b") as handle:
            handle.truncate(keep)
        return len(data) - keep

    def create(self, question: str, model: str, base_url: str | None, budget) -> Session:
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
        return self.read_meta()

    def read_meta(self) -> dict:
        """``session.json``, checked for the keys the loop and the report read."""
        path = self.path / "session.json"
        meta = _read_json(path)
        for key, kind in (("question", str), ("model", str), ("base_url", (str, type(None))), ("created", str)):
            _field(path, meta, key, kind, "a session file")
        return meta

    def log(self, iteration: int, message: dict) -> int:
        """Append one entry to ``messages.jsonl``; returns its line number (from 0)."""
        log = self.path / "messages.jsonl"
        if self._lines is None:
            self._lines = _count_lines(log)
        with open(log, "a") as handle:
            handle.write(json.dumps({"iteration": iteration, **message}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._lines += 1
        return self._lines - 1

    def note(self, iteration: int, text: str) -> None:
        with open(self.path / "notes.md", "a") as handle:
            handle.write(f"\n## Iteration {iteration}\n\n{text.strip()}\n")

    def snapshot(self, iteration: int, state: dict) -> None:
        _write_json(self.path / "iterations" / f"{iteration:04d}.json", {"iteration": iteration, **state})
        _write_json(self.path / "usage.json", state["usage"])

    def done(self) -> list[int]:
        """The iterations with a snapshot, from the file names."""
        return sorted(int(p.stem) for p in (self.path / "iterations").glob("[0-9]*.json"))

    def state_before(self, iteration: int) -> dict | None:
        """The state after iteration - 1 (None: start from the question): messages, usage,
        run ids, and the messages' line ranges in ``messages.jsonl`` (None for a snapshot of
        the older format, whose messages are inline and not in the log)."""
        done = self.done()
        if iteration < 1 or iteration > (max(done) if done else 0) + 1:
            raise AgentError(f"--from {iteration}: session {self.path} has iterations {done or 'none'}; "
                             f"resume from 1 to {(max(done) if done else 0) + 1}")
        if iteration == 1:
            return None
        path = self.path / "iterations" / f"{iteration - 1:04d}.json"
        snap, what = _read_json(path), "an iteration snapshot"
        usage = _field(path, snap, "usage", dict, what)
        tokens = {key: _field(path, usage, key, int, "a usage record") for key in ("prompt_tokens", "completion_tokens")}
        cost = _field(path, usage, "cost_usd", (int, float), "a usage record") if "cost_usd" in usage else 0.0
        run_ids = _field(path, snap, "run_ids", list, what)
        if "messages" in snap and "history" not in snap:
            history, messages = None, _field(path, snap, "messages", list, what)
        else:
            history = _field(path, snap, "history", list, what)
            messages = self._read_history(path, history)
        if (not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
                or not all(isinstance(r, str) for r in run_ids) or min(tokens.values()) < 0 or cost < 0):
            raise AgentError(f"{path}: its messages, run ids or usage are not what a snapshot holds; the file is damaged")
        return {"messages": messages, "history": history, "run_ids": run_ids,
                "usage": {**tokens, "total_tokens": sum(tokens.values()), "cost_usd": float(cost)}}

    def _read_history(self, snapshot: Path, history: list) -> list[dict]:
        """The messages at ``history``'s line ranges of ``messages.jsonl``."""
        log = self.path / "messages.jsonl"
        try:
            lines = log.read_bytes().split(b"\n")[:-1]  # the last piece is empty or a partial line
        except FileNotFoundError:
            raise AgentError(f"{log} is missing; {snapshot} refers to it") from None
        if not all(isinstance(r, list) and len(r) == 2 and all(map(_whole, r)) and 0 <= r[0] < r[1] <= len(lines) for r in history):
            raise AgentError(f"{snapshot}: its history {json.dumps(history)[:80]} is not line ranges within {log} "
                             f"({len(lines)} lines); the files are damaged")
        messages = []
        for start, stop in history:
            for number in range(start, stop):
                try:
                    entry = json.loads(lines[number])
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    entry = None
                if not isinstance(entry, dict) or entry.pop("iteration", None) is None or entry.get("role") in (None, "meta"):
                    raise AgentError(f"{log} line {number + 1} is not a message of the conversation that {snapshot} "
                                     "refers to; the files are damaged")
                messages.append(entry)
        return messages

    def iterations(self) -> list[dict]:
        """Every snapshot, checked for what the report reads: its note and calls."""
        out = []
        for number in self.done():
            path = self.path / "iterations" / f"{number:04d}.json"
            snap = _read_json(path)
            if not isinstance(snap, dict):
                raise AgentError(f"{path}: not an iteration snapshot (a JSON {type(snap).__name__}, not an object); the file is damaged")
            note = _field(path, {"note": "", **snap}, "note", (str, type(None)), "an iteration snapshot")
            calls = _field(path, {"calls": [], **snap}, "calls", list, "an iteration snapshot")
            for call in calls:
                for key in ("name", "arguments", "result"):
                    _field(path, call, key, str, "a call record")
            out.append({**snap, "iteration": number, "note": note or "", "calls": calls})
        return out


def _count_lines(path: Path) -> int:
    """Newlines in a file (0 when it is missing), read in chunks."""
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
