"""`mechlib mcp` driven by the MCP SDK's own client over stdio."""
import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"list_chapters", "run_chapter", "evaluate", "logit_lens", "generate", "query_runs", "get_run", "add_note"}


def server(store: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k.startswith(("MECHLIB_", "HF_", "PATH", "HOME", "XDG_"))}
    return StdioServerParameters(command=sys.executable, args=["-m", "mechlib", "mcp"], cwd=str(ROOT),
                                 env={**env, "MECHLIB_RUN_STORE": str(store), "MECHLIB_MCP_MAX_PROBLEMS": "300"})




async def _session(store, body):
    async with Client(server(store)) as client:
        return await body(client)


def run(store, body):
    return asyncio.run(_session(store, body))


def payload(result) -> dict:
    return json.loads(result.content[0].text)


def test_tools_listed_with_schemas_and_quick_experiments(tmp_path, tiny_gpt2_dir):
    model = str(tiny_gpt2_dir)

    async def body(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        chapters = payload(await client.call_tool("list_chapters", {}))
        ev = await client.call_tool("evaluate", {"model": model, "operators": ["+"], "difficulties": ["1x1"], "n": 10})
        lens = await client.call_tool("logit_lens", {"model": model, "difficulties": ["1x1"], "n": 5})
        gen = await client.call_tool("generate", {"model": model, "prompts": ["12+34="], "max_new_tokens": 3, "corruption": "skip:0"})
        return tools, chapters, ev, lens, gen

    tools, chapters, ev, lens, gen = run(tmp_path / "runs", body)
    assert set(tools) == TOOLS
    assert tools["evaluate"].input_schema["properties"]["n"]["type"] == "integer"
    schema = chapters["chapters"]["01_baseline"]["parameters"]["properties"]["n_per_cell"]
    assert schema["minimum"] == 1 and schema["default"] == 200 and "tiny" in chapters["param_sets"]
    assert not ev.is_error and payload(ev)["cells"][0]["n"] == 10 and "lo" in payload(ev)["cells"][0]
    assert [row["layer"] for row in payload(lens)["layers"]] == [-1, 0, 1]
    assert list(payload(gen)["continuations"]) == ["12+34="]


def test_bad_calls_are_tool_errors_and_the_server_keeps_serving(tmp_path, tiny_gpt2_dir):
    async def body(client):
        out = [
            await client.call_tool("evaluate", {"model": str(tiny_gpt2_dir), "n": -3}),
            await client.call_tool("evaluate", {"model": str(tiny_gpt2_dir), "corruption": "skip:9"}),
            await client.call_tool("evaluate", {"model": str(tiny_gpt2_dir), "n": 5000}),
            await client.call_tool("generate", {"model": str(tiny_gpt2_dir), "prompts": ["1+1="], "max_new_tokens": 99}),
            await client.call_tool("run_chapter", {"chapter": "01_baseline", "params": {"n_per_cel": 3}}),
            await client.call_tool("get_run", {"run_id": "nope"}),
            await client.call_tool("add_note", {"text": "x", "run_ids": ["nope"]}),
        ]
        out.append(await client.call_tool("list_chapters", {}))
        return out

    *errors, still = run(tmp_path / "runs", body)
    messages = [e.content[0].text for e in errors]
    assert all(e.is_error for e in errors), messages
    assert "parameter 'n'" in messages[0] and "skip:9" in messages[1] and "cap of 300" in messages[2]
    assert "max_new_tokens" in messages[3] and "did you mean 'n_per_cell'" in messages[4]
    assert "no such run" in messages[5] and "not in the run store" in messages[6]
    assert not still.is_error


@pytest.mark.slow
def test_run_chapter_records_once_and_the_run_store_answers(tmp_path, tiny_gpt2_dir):
    params = {"model": str(tiny_gpt2_dir), "device": "cpu", "operators": ["+"], "difficulties": ["1x1"], "n_per_cell": 3, "real_models": []}

    async def body(client):
        first = payload(await client.call_tool("run_chapter", {"chapter": "01_baseline", "params": params}))
        second = payload(await client.call_tool("run_chapter", {"chapter": "01_baseline", "params": params}))
        runs = payload(await client.call_tool("query_runs", {"chapter": "01_baseline"}))
        record = payload(await client.call_tool("get_run", {"run_id": first["run_id"]}))
        note = payload(await client.call_tool("add_note", {"text": "baseline on the tiny model", "run_ids": [first["run_id"]]}))
        resource = await client.read_resource(f"mechlib://runs/01_baseline/{first['run_id']}")
        return first, second, runs, record, note, resource

    first, second, runs, record, note, resource = run(tmp_path / "runs", body)
    assert first["run_id"] == second["run_id"] and not first["cached"] and second["cached"]
    assert Path(first["notebook"]).is_file() and first["metrics"]["n_problems"] == 3
    assert [r["run_id"] for r in runs["runs"]] == [first["run_id"]]
    assert record["params"]["n_per_cell"] == 3 and note["notes"] == 1
    assert json.loads(resource.contents[0].text)["id"] == first["run_id"]
    lab = (tmp_path / "runs" / "lab_notebook.jsonl").read_text().splitlines()
    assert json.loads(lab[0])["run_ids"] == [first["run_id"]]
