"""`mechlib agent` against endpoints that misbehave, and session folders that are wrong:
one line naming what went wrong, in bounded time, with the session left resumable."""
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mechlib.book import agent

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
                }[outer.kind]
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


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
])
def test_session_folder_errors_are_one_line(tmp_path, case, message):
    s = write_session(tmp_path / "s")
    args = {
        "resume_missing": ["--resume", str(tmp_path / "nope"), "--base-url", "http://127.0.0.1:9/v1"],
        "report_missing": ["--report", str(tmp_path / "nope")],
        "session_exists": ["q", "--session", str(s), "--base-url", "http://127.0.0.1:9/v1"],
        "from_99": ["--resume", str(s), "--from", "99", "--base-url", "http://127.0.0.1:9/v1"],
        "from_minus_1": ["--resume", str(s), "--from", "-1", "--base-url", "http://127.0.0.1:9/v1"],
        "truncated_session": ["--report", str(s)],
        "truncated_iteration": ["--report", str(s)],
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
