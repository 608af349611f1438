"""``python -m mechlib``: train the organism, run one chapter, build the book."""
from __future__ import annotations

import argparse
import logging
import sys

import yaml


def _overrides(pairs: list[list[str]]) -> dict:
    """``-p key value`` pairs; values parse as YAML (``-p n_per_cell 50``, ``-p operators '[+]'``).
    A value that is not YAML fails in one line naming the parameter."""
    from .chapters.base import ParamError

    values = {}
    for key, text in pairs:
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ParamError(f"-p {key} {text!r}: not a YAML value ({getattr(err, 'problem', None) or err}); e.g. -p {key} 50, "
                             f"-p {key} '[a, b]', -p {key} some-name") from None
    return values


_INTERRUPTED = False


def _on_signal(signum, frame):
    """SIGINT and SIGTERM: let ``finally`` blocks remove temporary files, and from now on drop
    the log records of the Jupyter machinery being torn down mid-call (nbclient's "Kernel
    died while waiting for execute reply", asyncio's "Task exception was never retrieved"):
    the user stopped the run, and the one line printed below says so."""
    global _INTERRUPTED
    _INTERRUPTED = True
    raise KeyboardInterrupt(f"signal {signum}")


class _AfterInterrupt(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    """Run a command; a bad parameter prints its message alone (``--traceback`` for more)."""
    import signal

    from .chapters.base import ParamError
    from .core.cache import cache_root
    from .core.hub import HubUnavailableError

    cache_root()  # a relative $MECHLIB_CACHE is pinned to an absolute path before any kernel or worker starts
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    for name in ("papermill", "asyncio", "traitlets"):  # papermill passes its logger to nbclient
        logging.getLogger(name).addFilter(_AfterInterrupt())
    try:
        _main(argv)
    except (ParamError, HubUnavailableError) as err:
        if show_traceback:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; temporary files removed", file=sys.stderr)
        raise SystemExit(130) from None


def _parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per job, and the agent's flags."""
    parser = argparse.ArgumentParser(prog="python -m mechlib", description=__doc__,
                                     epilog="Add --traceback to see the full traceback of an error.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("organism", help="train (or find in the cache) the embedded model organism and print its path")

    chapter = sub.add_parser("chapter", help="execute one chapter with papermill into book/executed/")
    chapter.add_argument("name", help="chapter file stem, e.g. 01_baseline")
    chapter.add_argument("--params", default="default", help="parameter set in params/ or a .yaml path")
    chapter.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="override one parameter")

    build = sub.add_parser("build", help="execute every chapter, then jupyter-book build")
    build.add_argument("--params", default="default", help="parameter set in params/ or a .yaml path")
    build.add_argument("--chapters", nargs="*", help="only these chapters (default: all)")

    sweep = sub.add_parser("sweep", help="run a chapter over a parameter grid, skipping recorded runs (resumable)")
    sweep.add_argument("name", help="chapter file stem, e.g. 01_baseline")
    sweep.add_argument("--params", default="default", help="parameter set in params/ or a .yaml path")
    sweep.add_argument("--grid", nargs=2, action="append", default=[], metavar=("KEY", "VALUES"),
                       help="a parameter and a YAML list of values, e.g. --grid seed '[0, 1, 2]'")
    sweep.add_argument("--out", default=None, help="folder for executed notebooks (default _build/sweeps)")
    sweep.add_argument("--store", default=None, help="run store (default $MECHLIB_RUN_STORE or _build/runs)")

    check = sub.add_parser("check-site", help="open every page of the built site in headless Chromium")
    check.add_argument("--html", default="_build/html")
    check.add_argument("--shots", default="_build/screenshots")

    pdf = sub.add_parser("pdf", help="the whole book as one PDF (singlehtml + headless Chromium)")
    pdf.add_argument("--params", default="default", help="parameter set for chapters not yet executed")

    sub.add_parser("mcp", help="serve the experiments as Model Context Protocol tools over stdio (for MCP clients)")
    _agent_flags(sub.add_parser("agent", help="a resumable research loop over the MCP tools, through an OpenAI-compatible endpoint"))

    show = sub.add_parser("params", help="print a chapter's parameters (defaults, or a set with overrides) as YAML")
    show.add_argument("name", help="chapter file stem, e.g. 01_baseline")
    show.add_argument("--params", default="default", help="parameter set in params/ or a .yaml path")
    show.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="override one parameter")
    return parser


def _agent_flags(agent: argparse.ArgumentParser) -> None:
    import os

    agent.add_argument("question", nargs="?", help="the research question (omit with --resume or --report)")
    agent.add_argument("--session", help="session directory (default _build/agent-sessions/<time>)")
    agent.add_argument("--model", default=os.environ.get("MECHLIB_AGENT_MODEL", "gpt-4o-mini"), help="chat model name")
    agent.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                       help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1 (Ollama) or http://localhost:8000/v1 (vLLM)")
    agent.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    agent.add_argument("--max-iterations", type=int, default=10)
    agent.add_argument("--max-tokens", type=int, default=None, help="stop once this many tokens are used")
    agent.add_argument("--max-cost", type=float, default=None, help="stop once the estimated cost (USD) reaches this")
    agent.add_argument("--max-seconds", type=float, default=None, help="stop after this much wall time")
    agent.add_argument("--max-tool-calls-per-reply", type=int, default=16,
                       help="run at most this many tool calls of one reply; the rest are answered as not run")
    agent.add_argument("--usd-per-1k-prompt", type=float, default=0.0, help="price per 1k prompt tokens, for the cost")
    agent.add_argument("--usd-per-1k-completion", type=float, default=0.0, help="price per 1k completion tokens")
    agent.add_argument("--resume", help="a session directory to resume")
    agent.add_argument("--from", dest="start_from", type=int, default=1, help="with --resume: the iteration to restart at")
    agent.add_argument("--report", help="print a session as a Markdown lab-notebook page")


def _main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.command == "agent":
        from .book.agent import main as agent_main

        raise SystemExit(agent_main(args))
    if args.command == "mcp":
        from .book.mcp_server import main as serve

        serve()
    elif args.command == "params":
        from .chapters import params as chapter_params

        print(yaml.safe_dump(chapter_params(args.name, args.params, _overrides(args.p)).to_dict(), sort_keys=False), end="")
    elif args.command == "organism":
        from .core.organism import ensure_organism, training_info

        path = ensure_organism()
        info = training_info(path)
        print(f"{path}  (trained in {info['train_seconds']} s, final loss {info['losses'][-1]:.4f})")
    elif args.command == "chapter":
        from .book.execute import execute_chapter

        print(execute_chapter(args.name, args.params, _overrides(args.p), log=True))
    elif args.command == "sweep":
        from .book.sweep import run_sweep

        for row in run_sweep(args.name, args.params, _overrides(args.grid), out_dir=args.out, store=args.store):
            print(row)
    elif args.command == "check-site":
        from .book.site_check import main as check_main

        raise SystemExit(check_main(args.html, args.shots))
    elif args.command == "pdf":
        from .book.build import build_pdf

        print(build_pdf(args.params))
    elif args.command == "build":
        from .book.build import build_book
        from .chapters import names as chapter_names
        from .chapters.base import ParamError

        if args.chapters == []:
            raise ParamError(f"build --chapters: give at least one chapter name ({', '.join(chapter_names())}), or leave "
                             "--chapters out to build every chapter")
        print(build_book(args.params, args.chapters))


if __name__ == "__main__":
    main()
