"""A chapter's side part runs in its own process beside the main part, or after it here."""
import os

import pytest
import torch

from mechlib.core.parallel import beside, machine_to_ourselves


def test_the_side_part_runs_in_another_process_or_here():
    main, side = beside(lambda: os.getpid(), os.getpid, (), workers=2)
    assert main == os.getpid() and side != os.getpid()
    assert beside(lambda: 1, os.getpid, (), workers=1) == (1, os.getpid())
    assert beside(lambda: 1, None) == (1, None)


def test_an_error_in_the_main_part_is_raised_not_swallowed():
    def fails():
        raise RuntimeError("main part failed")

    with pytest.raises(RuntimeError, match="main part failed"):
        beside(fails, os.getpid, (), workers=2)


def test_the_thread_count_is_restored():
    before = torch.get_num_threads()
    with machine_to_ourselves() as n:
        assert torch.get_num_threads() == n == max(1, min(8, os.cpu_count() or 1))
    assert torch.get_num_threads() == before


MIDDLE = """
import os, sys, time
from mechlib.core.parallel import process_pool
pool = process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)  # the worker's pid
time.sleep(60)  # killed here, with SIGKILL: no cleanup runs
"""


def test_a_pool_worker_dies_when_the_process_that_started_it_is_killed():
    """SIGKILL of a kernel or the CLI cannot clean up; its model workers must not stay behind."""
    import signal
    import subprocess
    import sys
    import time

    middle = subprocess.Popen([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True)
    worker = int(middle.stdout.readline())
    os.kill(worker, 0)  # alive while its parent is
    middle.send_signal(signal.SIGKILL)
    middle.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its parent by 10 s")
