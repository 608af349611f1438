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
