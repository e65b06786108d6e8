"""The launcher (dsim.launch.run_distributed) on the CPU: results come back in rank order, and a
rank that raises, is killed or hangs gives a clear DistributedError naming the rank, never a hang.

A launcher that hung instead of failing would hit this module's pytest timeout, so the tests need
no clock of their own.
"""

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

import dsim.parallel
from dsim.launch import DistributedError, run_distributed

pytestmark = pytest.mark.timeout(120)


def _rank1_raises(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("boom from the test")
    dist.all_reduce(torch.ones(1))  # rank 0 waits for a peer that never comes


def _rank1_killed(rank: int, world: int) -> None:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))


def _rank0_hangs(rank: int, world: int) -> None:
    if rank == 0:
        time.sleep(600)


def _noop(rank: int, world: int) -> int:
    return rank


def test_results_come_back_in_rank_order():
    assert run_distributed(_noop, 3, timeout_s=60) == [0, 1, 2]


def test_a_rank_that_raises_is_named():
    match = r"rank 1 of 2 failed: ValueError: boom from the test \(in _rank1_raises\)"
    with pytest.raises(DistributedError, match=match) as e:
        run_distributed(_rank1_raises, 2, timeout_s=60)
    assert e.value.rank == 1


def test_a_killed_rank_is_named():
    match = r"rank 1 of 2 was killed by signal SIGKILL \(in _rank1_killed\)"
    with pytest.raises(DistributedError, match=match) as e:
        run_distributed(_rank1_killed, 2, timeout_s=60)
    assert e.value.rank == 1


def test_a_hang_hits_the_deadline():
    assert run_distributed(_noop, 2, timeout_s=60) == [0, 1]  # start the forkserver before the 4 s
    with pytest.raises(
        DistributedError, match=r"timed out after 4 s; rank\(s\) \[0\] still running"
    ):
        run_distributed(_rank0_hangs, 2, timeout_s=4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        run_distributed(_rank0_hangs, 0)
    with pytest.raises(ValueError, match="backend"):
        run_distributed(_rank0_hangs, 2, backend="mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        run_distributed(_rank0_hangs, 2, timeout_s=0)
    with pytest.raises(ValueError, match="start_method"):
        run_distributed(_rank0_hangs, 2, start_method="fork")


def test_dsim_parallel_re_exports_the_launcher():
    # notebook 07 and chapter 07 import run_distributed from dsim.parallel
    assert dsim.parallel.run_distributed is run_distributed
    assert dsim.parallel.DistributedError is DistributedError
