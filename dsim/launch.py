"""Run a function on several processes of this machine, each a rank of a torch.distributed group,
and fail fast and clearly when one of them fails.

    run_distributed(fn, world_size)   spawn world_size processes, give each a process group
                                      (gloo on CPUs, NCCL on GPUs), return what fn returned on
                                      every rank
    DistributedError                  a rank raised, was killed by a signal, or the run passed
                                      its deadline: the error names the rank and the cause

A distributed program's worst failure is the silent one: a rank dies and the others wait forever
in a collective. The launcher polls the processes against a deadline and stops the others as
soon as one fails.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class DistributedError(RuntimeError):
    """A distributed run failed: one rank raised, died, or the run passed its deadline."""

    def __init__(self, msg: str, rank: int | None = None):
        super().__init__(msg)
        self.rank = rank


def _worker(
    rank: int,
    fn: Callable,
    world_size: int,
    backend: str,
    timeout_s: float,
    outdir: str,
    args: tuple,
    threads: int | None,
) -> None:
    """Body of one rank: join the process group, run fn, write its result (or its error) to a
    file."""
    error_file = Path(outdir) / f"rank{rank}.error"
    try:
        if threads is not None:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
        )
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            torch.cuda.set_device(rank)
            kwargs["device_id"] = torch.device("cuda", rank)
        # Rendezvous through a file in the run's own folder, not a TCP port: a port chosen free
        # can be taken again before the store binds it, or still be held by the ranks of a run
        # just terminated, and the ranks then meet the wrong peers.
        dist.init_process_group(
            backend,
            init_method=f"file://{Path(outdir) / 'rendezvous'}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            **kwargs,
        )
        try:
            result = fn(rank, world_size, *args)
        except BaseException:
            # Record the failure before leaving the group: the peers' collectives fail only when
            # this rank's connections close, so their records come later and the parent can tell
            # which failure came first.
            _write(error_file, dict(time=time.time(), trace=traceback.format_exc()))
            raise
        finally:
            dist.destroy_process_group()
        _write(Path(outdir) / f"rank{rank}.pkl", result)
    except BaseException:
        if not error_file.exists():
            _write(error_file, dict(time=time.time(), trace=traceback.format_exc()))
        raise


def _write(path: Path, obj: Any) -> None:
    """Pickle obj to path atomically: the parent never reads half a file."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    tmp.rename(path)


def _last_line(trace: str) -> str:
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _first_failure(procs: list, outdir: str) -> tuple[int, str, str]:
    """(rank, one-line cause, traceback) of the failure that came first. A rank killed by a signal
    is a root cause (the parent has sent none yet); otherwise the earliest Python error wins."""
    for r, p in enumerate(procs):
        if p.exitcode is not None and p.exitcode < 0:
            try:
                name = signal.Signals(-p.exitcode).name
            except ValueError:
                name = f"number {-p.exitcode}"
            return r, f"was killed by signal {name}", ""
    errors = {}
    for r in range(len(procs)):
        path = Path(outdir) / f"rank{r}.error"  # written just before a rank exits with an error
        if path.exists():
            with open(path, "rb") as f:
                errors[r] = pickle.load(f)
    if errors:
        r = min(errors, key=lambda k: errors[k]["time"])
        return r, f"failed: {_last_line(errors[r]['trace'])}", errors[r]["trace"]
    r = next(r for r, p in enumerate(procs) if p.exitcode not in (None, 0))
    return r, f"exited with code {procs[r].exitcode} without a Python traceback", ""


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    backend: str = "gloo",
    timeout_s: float = 60.0,
    threads_per_rank: int | None = 1,
    start_method: str = "forkserver",
) -> list[Any]:
    """Run fn(rank, world_size, *args) in world_size fresh processes and return
    [result of rank 0, ...].

    Each process joins a torch.distributed process group (rendezvous through a file in a temporary
    folder of this run; `backend` "gloo" for CPUs, "nccl" for one GPU per rank) whose collectives
    time out after timeout_s, runs fn, and leaves the group. fn must be importable (a module-level
    function) and its result picklable. The whole run has a deadline of timeout_s seconds (process
    start included): when a rank raises, is killed by a signal, or the deadline passes, the other
    ranks are terminated and DistributedError names the rank and the cause.
    threads_per_rank: torch (OpenMP) threads per process; None leaves the default.
    start_method: "forkserver" (default: a server process imports torch once, then every rank is
    forked from it in milliseconds) or "spawn" (a fresh interpreter per rank, seconds each).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"backend 'nccl' needs one GPU per rank: world_size={world_size}, "
            f"GPUs visible={torch.cuda.device_count()}"
        )
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
    if start_method == "forkserver":
        # Takes effect when the server starts (first call); it then serves every later run.
        # dsim.parallel (the expert- and data-parallel workers) is preloaded too, so that its ranks
        # do not each import dsim.model.
        mp.get_context("forkserver").set_forkserver_preload(["__main__", "torch", "dsim.parallel"])
    with tempfile.TemporaryDirectory(prefix="dsim-dist-") as outdir:
        ctx = mp.start_processes(
            _worker,
            args=(
                fn,
                world_size,
                backend,
                timeout_s,
                outdir,
                tuple(args),
                threads_per_rank,
            ),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout_s
        procs = ctx.processes
        try:
            while True:
                codes = [p.exitcode for p in procs]
                if any(c not in (None, 0) for c in codes):
                    rank, cause, trace = _first_failure(procs, outdir)
                    raise DistributedError(
                        f"rank {rank} of {world_size} {cause} (in {fn.__name__})"
                        + (f"\n{trace}" if trace else ""),
                        rank=rank,
                    )
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    alive = [r for r, c in enumerate(codes) if c is None]
                    raise DistributedError(
                        f"distributed run of {fn.__name__} timed out after {timeout_s:g} s; "
                        f"rank(s) {alive} still running (a hang, or a collective that "
                        f"another rank never joined)",
                        rank=alive[0],
                    )
                mp_connection.wait([p.sentinel for p in procs if p.exitcode is None], timeout=0.05)
        finally:
            for p in procs:  # after a failure or the deadline: stop the others
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
        results = []
        for rank in range(world_size):
            path = Path(outdir) / f"rank{rank}.pkl"
            if not path.exists():  # e.g. a KeyboardInterrupt, which torch's wrapper swallows
                raise DistributedError(
                    f"rank {rank} of {world_size} exited without a result (in {fn.__name__})",
                    rank=rank,
                )
            with open(path, "rb") as f:
                results.append(pickle.load(f))
        return results
