"""Running a chapter's pretrained-model part beside its organism part.

On a 2-core machine, two single-threaded processes finish sooner than one process running
the parts one after the other with two threads: the parts are small-batch work that torch
does not spread well. The side part runs in a spawned process; if the main part fails or is
interrupted, that process is terminated, never left training.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _die_with_parent(setup: Callable[[], None] | None = None) -> None:
    """Pool-worker initializer: a thread ends this worker as soon as the process that started
    it is gone (its parent changes: a SIGKILL of the chapter's kernel or the CLI above it
    cannot clean up, and a worker left running holds gigabytes of model). Then ``setup``."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="mechlib-parent-watch", daemon=True).start()
    if setup is not None:
        setup()


def process_pool(workers: int, setup: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """``workers`` spawned processes that die with this one, each running ``setup`` (a
    top-level function) first: every process pool in mechlib is made here."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
                               initargs=(setup,))


def beside(main: Callable[[], T], side: Callable[..., Any] | None, side_args: tuple = (), workers: int = 2) -> tuple[T, Any]:
    """(``main()``, ``side(*side_args)``): with ``workers`` 2 the side part runs in a spawned
    process while ``main`` runs here; with 1, after it, here. No side part gives None."""
    if side is None or workers < 2:
        out = main()
        return out, (side(*side_args) if side is not None else None)
    pool = process_pool(1)
    try:
        future = pool.submit(side, *side_args)
        out = main()
        return out, future.result()
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def machine_to_ourselves():
    """torch on every core (at most 8) for a stretch of work that runs alone, as a chapter's
    part does after the other part's process has finished; the thread count is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
