"""``mechlib mcp``: the book's experiments as tools over the Model Context Protocol (stdio).

Any MCP client (Claude Desktop, Claude Code, an IDE agent, :mod:`mechlib.book.agent`) can
list the chapters and their parameter schemas, run a chapter through papermill into the
run store exactly as the CLI does (a run already recorded is returned, not redone), run
quick in-process experiments (evaluate, logit lens, generate), query the run store and keep
a lab notebook. Bad parameters come back as tool errors carrying the validation message;
per-call caps bound problems, prompts, tokens and wall time (``run_chapter``: each cell,
``MECHLIB_MCP_MAX_CELL_SECONDS``; the in-process experiments: the whole call,
``MECHLIB_MCP_MAX_CALL_SECONDS``); no tool runs code it is given or writes outside the run store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from .. import chapters
from ..chapters.base import ParamError, known_param_sets, load_param_set
from .runs import load_runs, run_id, store_dir


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-call caps, from the environment (``MECHLIB_MCP_*``) or defaults."""

    max_problems: int = 2000
    max_prompts: int = 32
    max_new_tokens: int = 32
    max_cell_seconds: int = 600  # papermill's per-cell timeout for run_chapter
    max_call_seconds: int = 300  # one evaluate, logit_lens or generate call, waiting for the model included

    @classmethod
    def from_env(cls) -> Limits:
        """The caps; a value that is not a whole number of at least 1 fails here, naming the variable."""
        values = {}
        for f in dataclasses.fields(cls):
            name = f"MECHLIB_MCP_{f.name.upper()}"
            raw = os.environ.get(name)
            if raw is None:
                continue
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(f"{name}={raw!r}: expected a whole number of at least 1 (default {f.default})")
            values[f.name] = int(raw)
        return cls(**values)


def _fail(err: Exception) -> ToolError:
    return ToolError(str(err))


@functools.lru_cache(maxsize=4)
def _model(name: str, device: str = "cpu"):
    from ..core.models import load_model

    return load_model(name, device=device)[0]


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(key: str) -> threading.Lock:
    """One lock per key (a model name, or ``run:<id>``): tools run on worker threads, and a
    corruption's hooks live on the shared cached model, so two calls on one model must never
    overlap, nor two runs of one chapter run."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _over_time(tool: str, started: float, cap: float, variable: str, what: str = "") -> ToolError:
    """The one error every capped tool gives when it runs past its wall-time cap."""
    return ToolError(f"{tool} stopped after {time.monotonic() - started:.1f} s{what}: this server caps it at {cap} s "
                     f"({variable}); ask for less (fewer problems, cells or prompts, a smaller model)")


@contextlib.contextmanager
def _on_model(name: str, tool: str, limits: Limits, started: float):
    """The cached model, held alone (see :func:`_lock`) until ``limits.max_call_seconds`` after
    ``started`` (the call's start), waiting for the lock included. Torch work on a worker thread
    cannot be killed, so each block checks the clock before it runs and stops the call past the cap."""
    cap = limits.max_call_seconds
    if not _lock(name).acquire(timeout=max(cap - (time.monotonic() - started), 0)):
        raise _over_time(tool, started, cap, "MECHLIB_MCP_MAX_CALL_SECONDS", " waiting for another call on this model")

    def check(module, args):
        if time.monotonic() - started > cap:
            raise _over_time(tool, started, cap, "MECHLIB_MCP_MAX_CALL_SECONDS")

    handles = []
    try:
        lm = _model(name)
        check(None, None)  # loading counts too, though it cannot be cut short
        handles = [m.register_forward_pre_hook(check) for m in (list(getattr(lm, "blocks", [])) or [lm])]
        yield lm
    finally:
        for handle in handles:
            handle.remove()
        _lock(name).release()


def _reasoned(fn):
    """Every failure reaches the client with its reason: the SDK hides an unexpected
    exception's text behind 'Error executing tool'."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as err:
            raise ToolError(f"{fn.__name__} failed: {type(err).__name__}: {str(err)[-800:]}") from None

    return wrapper


def _strict(server: MCPServer) -> None:
    """Refuse unknown arguments and wrong types (``true`` for an integer, ``"50"`` for 50),
    instead of the SDK's silent drop and coercion; the published schemas say so too."""
    from pydantic import ConfigDict

    for tool in server._tool_manager.list_tools():
        base = tool.fn_metadata.arg_model
        strict = type(f"{base.__name__}Strict", (base,), {"model_config": ConfigDict(**base.model_config, strict=True, extra="forbid")})
        tool.fn_metadata.arg_model = strict
        tool.parameters["additionalProperties"] = False


MAX_NOTE_CHARS = 20_000


def _problems(model: str, operators, difficulties, n: int, prompt_format: str, seed: int, limits: Limits):
    """Problems drawn exactly as chapter 1 draws them (held-out pairs in the organism's
    trained cells), validated by chapter 1's own parameters and capped (chapter 1's
    pretrained models left out: checking them reads their tokenizers, seconds spent on
    models these tools never run)."""
    from ..chapters import baseline
    from ..core.problem_sets import problem_set

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise ToolError(f"parameter 'n' = {n!r}: expected an integer in 1..100000 (problems per cell)")
    if n > limits.max_problems:  # before building anything: no cell needs more than n problems
        raise ToolError(f"parameter 'n' = {n} exceeds this server's cap of {limits.max_problems} problems "
                        "(MECHLIB_MCP_MAX_PROBLEMS); ask for fewer per cell")
    for name, value in (("operators", operators), ("difficulties", difficulties)):
        if not value:
            raise ToolError(f"parameter {name!r} = {value!r}: give at least one (or leave it out for the default)")
    try:
        params = baseline.Params(model=model, device="cpu", operators=operators, difficulties=difficulties, n_per_cell=n,
                                 prompt_format=prompt_format, seed=seed, organism_seeds=(), real_models=())
        baseline.check(params)
    except ParamError as err:
        raise _fail(err) from None
    problems = problem_set(params)
    if len(problems) > limits.max_problems:
        raise ToolError(f"{len(problems)} problems exceed this server's cap of {limits.max_problems} "
                        "(MECHLIB_MCP_MAX_PROBLEMS); ask for fewer per cell")
    return params, problems


def _check_prompts(prompts: list[str], limits: Limits) -> None:
    """1..max_prompts prompts, each non-empty and given once (the result maps prompt to
    continuation): one error naming the first bad item, before any model loads."""
    if not prompts or len(prompts) > limits.max_prompts:
        raise ToolError(f"prompts: give 1..{limits.max_prompts} prompts (MECHLIB_MCP_MAX_PROMPTS), not {len(prompts)}")
    seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ToolError(f"prompts[{i}] = '': a prompt needs at least one character (the model continues it)")
        if prompt in seen:
            raise ToolError(f"prompts[{i}] = {prompt[:80]!r} repeats prompts[{seen[prompt]}]; give each prompt once "
                            "(the result maps each prompt to its continuation)")
        seen[prompt] = i


def _or(value, default):
    """The default only when the argument was left out: an empty list is refused, not replaced."""
    return default if value is None else value


def _corruption(model, spec: str):
    from ..core.interventions import parse_corruption

    try:
        return parse_corruption(spec, model.cfg.n_layers)
    except ValueError as err:
        raise _fail(err) from None


def build_server(limits: Limits | None = None) -> MCPServer:
    """The server with every tool and resource registered (tools in the order clients list them)."""
    limits = limits or Limits.from_env()
    server = MCPServer(
        "mechlib",
        log_level="WARNING",
        instructions=(
            "Experiments on how transformers do, and fail at, arithmetic. Start with list_chapters; quick questions "
            "go to evaluate, logit_lens and generate (seconds); run_chapter runs a whole chapter (minutes) and records "
            "it; query_runs and get_run read the run store; add_note keeps a lab notebook. Numbers from the default "
            "model are the embedded organism's (a 4-layer GPT-2 trained by mechlib), not GPT-2's."
        ),
    )
    _chapter_tools(server, limits)
    _experiment_tools(server, limits)
    _generate_tool(server, limits)
    _store_tools(server)
    _resources(server)
    _strict(server)
    return server


def _chapter_tools(server: MCPServer, limits: Limits) -> None:
    """list_chapters and run_chapter."""

    @server.tool()
    @_reasoned
    def list_chapters() -> dict:
        """The chapters, each with its parameters as a JSON schema (defaults, bounds, allowed values),
        and the parameter sets a run can start from."""
        out = {}
        for name in chapters.names():
            mod = chapters.module(name)
            out[name] = {"about": (mod.__doc__ or "").strip().splitlines()[0], "parameters": mod.Params.schema()}
        return {"chapters": out, "param_sets": known_param_sets()}

    @server.tool()
    @_reasoned
    def run_chapter(chapter: str, params: dict | None = None, param_set: str = "default") -> dict:
        """Validate, then execute one chapter through papermill into the run store, as `mechlib chapter`
        does. `params` overrides fields of `param_set`. A run already recorded with the same parameters is
        returned, not redone. Each cell may run for MECHLIB_MCP_MAX_CELL_SECONDS (default 600).
        Returns the run id, headline metrics and the executed notebook's path."""
        from nbclient.exceptions import CellTimeoutError

        from .execute import check_chapter, execute_chapter
        from .paths import project_root

        if param_set not in known_param_sets():
            raise ToolError(f"param_set {param_set!r}: one of the book's sets {known_param_sets()}; change single values with 'params'")
        try:
            resolved = check_chapter(chapter, param_set, params or {})
        except (ParamError, ValueError) as err:
            raise _fail(err) from None
        rid = run_id(chapter, resolved.to_dict())
        out_dir = project_root() / "_build" / "agent" / chapter
        notebook = out_dir / f"{rid}.ipynb"
        record_path = store_dir() / chapter / f"{rid}.json"
        with _lock(f"run:{rid}"):  # the same run asked twice at once runs once; the second call reads it
            cached = record_path.is_file() and notebook.is_file()
            if not cached:
                start = time.monotonic()
                try:
                    execute_chapter(chapter, None, resolved.to_dict(), out_dir=out_dir, out_name=rid,
                                    execution_timeout=limits.max_cell_seconds)
                except CellTimeoutError:
                    raise _over_time(chapter, start, limits.max_cell_seconds, "MECHLIB_MCP_MAX_CELL_SECONDS",
                                     ": a cell ran past its cap") from None
                except Exception as err:  # a failed run is the caller's to read, never a crashed server
                    raise ToolError(f"{chapter} failed after {time.monotonic() - start:.0f} s: {type(err).__name__}: "
                                    f"{str(err)[-800:]}") from None
        record = json.loads(record_path.read_text())
        return {"run_id": rid, "cached": cached, "chapter": chapter, "notebook": str(notebook),
                "metrics": _headline(record["metrics"]), "timings": record.get("timings", {})}


def _experiment_tools(server: MCPServer, limits: Limits) -> None:
    """evaluate and logit_lens: problem sets drawn as chapter 1 draws them, scored in-process."""

    @server.tool()
    @_reasoned
    def evaluate(model: str = "arith-organism", operators: list[str] | None = None, difficulties: list[str] | None = None,
                 n: int = 50, corruption: str = "none", prompt_format: str = "bare", seed: int = 0) -> dict:
        """Score a model on arithmetic problems in-process (seconds): accuracy per cell with n and a Wilson
        95% interval, the error classes, and a few outputs. `corruption` is a layer corruption spec such as
        'skip:1', 'repeat:2x2' or 'ablate:mlp0:mean'. A call may run for MECHLIB_MCP_MAX_CALL_SECONDS (default 300)."""
        from ..chapters.baseline import cell_accuracy
        from ..core.evaluate import evaluate as run_eval
        from ..core.interventions import corrupted, mean_activations

        started = time.monotonic()
        params, problems = _problems(model, _or(operators, ["+"]), _or(difficulties, ["1x1", "1x2", "2x2"]), n, prompt_format, seed, limits)
        with _on_model(model, "evaluate", limits, started) as lm:
            c = _corruption(lm, corruption)
            sites = [(s, layer) for s, layer, mode in c.ablations if mode == "mean"]
            means = mean_activations(lm, problems["prompt"].tolist(), sites) if sites else {}
            with corrupted(lm, c, means) as forward:
                res = run_eval(lm, problems, forward=forward)
        cells = cell_accuracy(res)
        wrong = res[~res.correct]
        return {
            "model": model, "corruption": corruption, "n_problems": int(len(res)),
            "cells": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in cells.to_dict("records")],
            "error_classes": {k: round(float(v), 4) for k, v in res["error"].value_counts(normalize=True).items()},
            "examples": wrong[["prompt", "target", "output", "error"]].head(5).to_dict("records"),
        }

    @server.tool()
    @_reasoned
    def logit_lens(model: str = "arith-organism", operators: list[str] | None = None, difficulties: list[str] | None = None,
                   n: int = 50, seed: int = 0) -> dict:
        """Read the residual stream after the embedding (layer -1) and each block through the unembedding:
        per layer, how often the first answer token is top-1, its mean probability, and how often the
        whole answer is the argmax (teacher-forced). A call may run for MECHLIB_MCP_MAX_CALL_SECONDS (default 300)."""
        from ..core.interventions import logit_lens as lens

        started = time.monotonic()
        _, problems = _problems(model, _or(operators, ["+"]), _or(difficulties, ["1x1", "1x2", "2x2"]), n, "bare", seed, limits)
        with _on_model(model, "logit_lens", limits, started) as lm:
            table = lens(lm, problems["prompt"].tolist(), problems["target"].tolist())
        per_layer = table.groupby("layer")[["top1_first", "p_first", "tf_correct"]].mean().round(4).reset_index()
        return {"model": model, "n_problems": int(len(problems)), "layers": per_layer.to_dict("records")}


def _generate_tool(server: MCPServer, limits: Limits) -> None:
    """generate: greedy continuations of the caller's own prompts."""

    @server.tool()
    @_reasoned
    def generate(prompts: list[str], model: str = "arith-organism", corruption: str = "none", max_new_tokens: int = 8) -> dict:
        """Greedy continuations of a few prompts (each non-empty, each once), optionally under a layer corruption
        ('ablate' specs use zero ablation here: mean ablation needs a problem set). A call may run for
        MECHLIB_MCP_MAX_CALL_SECONDS (default 300)."""
        from ..core.evaluate import check_context, encode, greedy_decode
        from ..core.interventions import corrupted

        started = time.monotonic()
        _check_prompts(prompts, limits)
        if not 1 <= max_new_tokens <= limits.max_new_tokens:
            raise ToolError(f"max_new_tokens: give 1..{limits.max_new_tokens} (MECHLIB_MCP_MAX_NEW_TOKENS)")
        if "ablate" in corruption and ":mean" in corruption:
            raise ToolError("generate: mean ablation needs a problem set to average over; use ':zero' here, or evaluate")
        with _on_model(model, "generate", limits, started) as lm:
            c = _corruption(lm, corruption)
            ids = encode(lm, prompts)
            empty = [i for i, row in enumerate(ids) if not row]
            if empty:
                raise ToolError(f"prompts[{empty[0]}] = {prompts[empty[0]][:80]!r}: no tokens for {model}'s tokenizer; "
                                "give text the model can read")
            try:
                check_context(lm, max(map(len, ids)) + max_new_tokens - 1, f"the longest prompt plus max_new_tokens = {max_new_tokens}")
            except ValueError as err:
                raise _fail(err) from None
            with corrupted(lm, c) as forward:
                out = greedy_decode(lm, prompts, max_new_tokens, forward=forward, stop_at_newline=False)
        return {"model": model, "corruption": corruption, "continuations": dict(zip(prompts, out))}


def _store_tools(server: MCPServer) -> None:
    """query_runs, get_run and add_note: the run store and the lab notebook."""

    @server.tool()
    @_reasoned
    def query_runs(chapter: str | None = None, model: str | None = None, limit: int = 20) -> dict:
        """Recorded runs, newest first, optionally of one chapter or one model: id, chapter, model,
        start time, headline metrics."""
        skipped: list[str] = []
        runs = [r for r in load_runs(store_dir(), skipped) if (chapter is None or r["chapter"] == chapter)
                and (model is None or r["params"].get("model") == model)]
        runs = list(reversed(runs))[: max(1, min(limit, 200))]
        return {"runs": [{"run_id": r["id"], "chapter": r["chapter"], "model": r["params"].get("model"),
                          "started": r["started"], "metrics": _headline(r["metrics"])} for r in runs],
                "unreadable_records": skipped}

    @server.tool()
    @_reasoned
    def get_run(run_id: str) -> dict:
        """One run record in full: parameters, environment, every metric, timings."""
        for r in load_runs(store_dir()):
            if r["id"] == run_id:
                return r
        raise ToolError(f"run_id {run_id!r}: no such run in the run store; query_runs lists them")

    @server.tool()
    @_reasoned
    def add_note(text: str, run_ids: list[str] | None = None) -> dict:
        """Append a note to the lab notebook in the run store, citing run ids (each must exist)."""
        if not text.strip():
            raise ToolError("text: a note needs some text")
        if len(text) > MAX_NOTE_CHARS:
            raise ToolError(f"text: {len(text):,} characters; a note holds at most {MAX_NOTE_CHARS:,}")
        known = {r["id"] for r in load_runs(store_dir())}
        missing = [rid for rid in run_ids or [] if rid not in known]
        if missing:
            raise ToolError(f"run_ids {missing} are not in the run store")
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "text": text, "run_ids": run_ids or []}
        path = notebook_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return {"saved": True, "notes": sum(1 for _ in open(path))}


def _resources(server: MCPServer) -> None:
    """Parameter sets, run records and findings as resources."""

    @server.resource("mechlib://params/{name}", mime_type="application/json")
    def param_set(name: str) -> str:
        """A parameter set (params/NAME.yaml) as JSON."""
        if name not in known_param_sets():
            raise ResourceError(f"mechlib://params/{name}: no such parameter set; the sets are {known_param_sets()}")
        try:
            return json.dumps(load_param_set(name))
        except ParamError as err:
            raise ResourceError(str(err)) from None

    @server.resource("mechlib://runs/{chapter}/{rid}", mime_type="application/json")
    def run_record(chapter: str, rid: str) -> str:
        """One run record."""
        path = store_dir() / chapter / f"{rid}.json"
        if not path.is_file() or path.resolve().parent.parent != store_dir().resolve():
            raise ResourceError(f"mechlib://runs/{chapter}/{rid}: no such run in the run store; query_runs lists them")
        return path.read_text()

    @server.resource("mechlib://findings/{chapter}", mime_type="application/json")
    def findings(chapter: str) -> str:
        """The newest recorded findings (glued numbers) of a chapter."""
        runs = [r for r in load_runs(store_dir()) if r["chapter"] == chapter]
        if not runs:
            raise ResourceError(f"mechlib://findings/{chapter}: no recorded run of {chapter!r}")
        return json.dumps({"run_id": runs[-1]["id"], "findings": runs[-1]["metrics"]})


def notebook_path() -> Path:
    """The lab notebook: one JSON line per note, inside the run store."""
    return store_dir() / "lab_notebook.jsonl"


def _headline(metrics: dict, limit: int = 10) -> dict[str, Any]:
    """Up to ``limit`` interval texts and ``limit`` scalars: what an agent should read first
    (get_run has the rest)."""
    texts = [(k, v) for k, v in metrics.items() if isinstance(v, str) and (k.endswith("_text") or k.endswith("_sentence"))]
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return dict(texts[:limit] + scalars[:limit])


def main() -> None:
    """Serve over stdio (what MCP clients launch)."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("MECHLIB_THREADS", "1")))
    try:
        limits = Limits.from_env()
    except ValueError as err:
        raise SystemExit(f"mechlib mcp: {err}") from None
    build_server(limits).run("stdio")
