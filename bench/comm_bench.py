#!/usr/bin/env python
"""Measure collectives and an expert-parallel MoE layer on torch.distributed, next to dsim's model.

For all-reduce, all-gather, reduce-scatter and all-to-all over message sizes from --min-bytes to
--max-bytes (doubling), it measures the time per call (the slowest rank's average over many calls),
the algorithm and bus bandwidths (nccl-tests' convention), the alpha-beta fit of the curve
(dsim.cost.fit_alpha_beta) and, with --gpu, dsim.cost.collective_time's prediction and its error.
Then it times forward+backward of dsim.parallel.EPMoE (routed experts sharded over the ranks) and
the four all-to-alls inside it, next to the model's prediction.

Sizes follow dsim.cost.comm (and nccl-tests' "size"): the full array for all-reduce, the input of
reduce-scatter, the output of all-gather, the whole send buffer of all-to-all; float32 elements.

    # 2 GPUs, NCCL (self-spawning; the repo root is put on sys.path):
    python3 bench/comm_bench.py --backend nccl --gpu H200 --out dsim/data/comm_nccl_h200x2.json
    # CPU loopback, gloo, 2 processes:
    .venv/bin/python bench/comm_bench.py --backend gloo --out dsim/data/comm_gloo_cpu.json
    # or under torchrun (it sets RANK/WORLD_SIZE; the script then does not spawn):
    torchrun --nproc-per-node 2 bench/comm_bench.py --backend nccl --gpu H200 --out ...
    # a sweep over world sizes, 4 KiB .. 1 GiB, one JSON per world size ("{n}" in --out), e.g. on
    # an 8-GPU node (dsim.cost.comm.crossval fits the model on some and validates on the others):
    python3 bench/comm_bench.py --backend nccl --gpu H200 --skip-ep --world-sizes 2,4,8 \
        --out 'dsim/data/comm_sweep_h200x{n}.json'

NVLink multicast (NVLS) stays off: the script sets NCCL_NVLS_ENABLE=0 (and the symmetric-memory and
NVSHMEM equivalents) unless the environment already sets them.
"""

from __future__ import annotations

import os

for _var, _value in (
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
):
    os.environ.setdefault(_var, _value)

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
import torch.distributed as dist

from dsim.config import preset
from dsim.launch import run_distributed
from dsim.parallel import EPMoE

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
ELEM = 4  # bytes per float32 element

# The EP layer: DeepSeek-V3's expert shape (dim 7168, 2048-wide experts, top-8 of 256, one shared)
# on GPUs; a small layer of the same structure on CPUs.
EP_GPU = dict(
    dim=7168,
    moe_inter_dim=2048,
    n_routed_experts=256,
    n_activated_experts=8,
    n_shared_experts=1,
    tokens=(1024, 4096),
    dtype="bfloat16",
)
EP_CPU = dict(
    dim=256,
    moe_inter_dim=128,
    n_routed_experts=16,
    n_activated_experts=4,
    n_shared_experts=1,
    tokens=(256, 1024),
    dtype="float32",
)


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


# -----------------------------------------------------------------------------
# timing


class Timer:
    """Seconds per call of fn: averaged over `iters` calls, the slowest rank's,
    median of `repeats` batches."""

    def __init__(self, cuda: bool, device: torch.device, repeats: int = 3):
        self.cuda, self.device, self.repeats = cuda, device, repeats

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _batch(self, fn, iters: int) -> float:
        dist.barrier()
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters

    def slowest(self, seconds: float) -> float:
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def time(
        self, fn, target_s: float, warmup: int = 2, min_iters: int = 3, max_iters: int = 1000
    ) -> tuple[float, int]:
        repeats = self.repeats
        for _ in range(warmup):
            fn()
        one = self.slowest(self._batch(fn, 1))  # every rank agrees on the count
        iters = int(min(max_iters, max(min_iters, target_s / repeats / max(one, 1e-7))))
        runs = [self.slowest(self._batch(fn, iters)) for _ in range(repeats)]
        return statistics.median(runs), iters


# -----------------------------------------------------------------------------
# collectives


def collective_fn(kind: str, inp: torch.Tensor, out: torch.Tensor, nbytes: int, world: int):
    """A closure running one collective on the first nbytes of the buffers
    (dsim's size convention)."""
    n = nbytes // ELEM
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    if kind == "all_reduce":
        return lambda: dist.all_reduce(inp[:n])
    if kind == "all_gather":
        return lambda: all_gather(out[:n], inp[: n // world])
    if kind == "reduce_scatter":
        return lambda: reduce_scatter(out[: n // world], inp[:n])
    if kind == "all_to_all":
        return lambda: dist.all_to_all_single(out[:n], inp[:n])
    raise ValueError(f"unknown collective {kind!r}")


def bench_collectives(rank: int, world: int, cfg: dict, timer: Timer, device: torch.device) -> dict:
    sizes = []
    s = cfg["min_bytes"]
    while s <= cfg["max_bytes"]:
        sizes.append(s)
        s *= 2
    inp = torch.ones(cfg["max_bytes"] // ELEM, dtype=torch.float32, device=device)
    out = torch.empty_like(inp)
    results = {}
    for kind in KINDS:
        times, iters = [], []
        for nbytes in sizes:
            t, k = timer.time(collective_fn(kind, inp, out, nbytes, world), cfg["target_s"])
            times.append(t)
            iters.append(k)
            algbw = nbytes / t
            log(
                rank,
                f"  {kind:15} {nbytes:>12,d} B  {t * 1e6:12.1f} us  "
                f"algbw {algbw / 1e9:8.3f} GB/s  ({k} iters)",
            )
        results[kind] = dict(sizes_bytes=sizes, time_s=times, iters=iters)
    return results


# -----------------------------------------------------------------------------
# the expert-parallel MoE layer


def bench_ep(
    rank: int,
    world: int,
    cfg: dict,
    timer: Timer,
    device: torch.device,
    expert_impl: str = "grouped",
) -> list[dict]:
    ep_cfg = EP_GPU if device.type == "cuda" else EP_CPU
    dtype = getattr(torch, ep_cfg["dtype"])
    args = preset("tiny").replace(
        dim=ep_cfg["dim"],
        moe_inter_dim=ep_cfg["moe_inter_dim"],
        n_routed_experts=ep_cfg["n_routed_experts"],
        n_activated_experts=ep_cfg["n_activated_experts"],
        n_shared_experts=ep_cfg["n_shared_experts"],
        expert_impl=expert_impl,
        name="ep-bench",
    )
    torch.manual_seed(0)  # same gate and shared experts on every rank
    with torch.device(device):
        ep = EPMoE(args)
    ep.experts.to(dtype)
    if ep.shared_experts is not None:
        ep.shared_experts.to(dtype)  # the gate stays float32, as DeepSeek computes it
    out = []
    for tokens in ep_cfg["tokens"]:
        gen = torch.Generator(device=device).manual_seed(1 + rank)
        x = torch.randn(
            tokens, args.dim, device=device, dtype=dtype, generator=gen
        ).requires_grad_()
        g = torch.randn(tokens, args.dim, device=device, dtype=dtype, generator=gen)

        def step():
            ep.zero_grad(set_to_none=True)
            x.grad = None
            ep(x).backward(g)

        step_s, step_iters = timer.time(step, cfg["target_s"], warmup=3, min_iters=3, max_iters=50)
        send, recv = ep.send_counts.sum(1).tolist(), ep.recv_counts.sum(1).tolist()

        # the four all-to-alls of a step (dispatch, combine; and their backward), alone
        xs = torch.randn(sum(send), args.dim, device=device, dtype=dtype)
        xr = torch.empty(sum(recv), args.dim, device=device, dtype=dtype)

        def a2a_pair():
            dist.all_to_all_single(xr, xs, recv, send)  # dispatch
            dist.all_to_all_single(xs, xr, send, recv)  # combine

        pair_s, _ = timer.time(a2a_pair, cfg["target_s"], warmup=2, min_iters=3, max_iters=200)

        # the local experts alone (forward + backward on the rows this rank received)
        rows = xr.clone().requires_grad_()
        local = torch.repeat_interleave(
            torch.arange(ep.n_local, device=device).repeat(world), ep.recv_counts.flatten()
        )
        gy = torch.randn_like(rows)

        def experts_only():
            ep.experts.zero_grad(set_to_none=True)
            ep._local_experts(rows, local).backward(gy)

        experts_s, _ = timer.time(
            experts_only, cfg["target_s"], warmup=2, min_iters=3, max_iters=50
        )

        most = torch.tensor([sum(recv)], device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)  # the busiest rank sets the pace
        elem = torch.finfo(dtype).bits // 8
        rec = dict(
            tokens_per_rank=tokens,
            dim=args.dim,
            moe_inter_dim=args.moe_inter_dim,
            n_routed_experts=args.n_routed_experts,
            top_k=args.n_activated_experts,
            n_shared_experts=args.n_shared_experts,
            dtype=ep_cfg["dtype"],
            bytes_per_elem=elem,
            expert_impl=expert_impl,
            rows_sent=sum(send),
            rows_sent_remote=sum(send) - send[rank],
            rows_received=sum(recv),
            rows_received_max=int(most),
            a2a_send_bytes=sum(send) * args.dim * elem,
            step_s=step_s,
            step_iters=step_iters,
            a2a_4x_measured_s=2 * pair_s,
            experts_only_s=experts_s,
            expert_flops=18 * int(most) * args.dim * args.moe_inter_dim,
            shared_flops=18 * tokens * args.dim * args.moe_inter_dim * args.n_shared_experts,
        )
        log(
            rank,
            f"  EP MoE {tokens} tokens/rank: step {step_s * 1e3:.3f} ms, 4 all-to-alls "
            f"{2 * pair_s * 1e3:.3f} ms, local experts {experts_s * 1e3:.3f} ms",
        )
        out.append(rec)
    return out


# -----------------------------------------------------------------------------
# the worker and the report


def _nccl_version() -> str:
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def bench_worker(rank: int, world: int, cfg: dict) -> dict:
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    timer = Timer(cuda, device, cfg["repeats"])
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log(
        rank,
        f"[comm_bench] {world} ranks, backend {dist.get_backend()}, "
        f"{cfg['min_bytes']:,d}..{cfg['max_bytes']:,d} bytes",
    )
    coll = bench_collectives(rank, world, cfg, timer, device)
    ep, ep_error = [], None
    if not cfg["skip_ep"]:
        for impl in ("grouped", "loop"):  # "loop" (one GEMM per expert) if the grouped GEMM fails
            try:
                ep = bench_ep(rank, world, cfg, timer, device, impl)
                break
            except Exception as e:  # keep the collective measurements
                ep_error = (
                    ep_error + "; " if ep_error else ""
                ) + f"{impl}: {type(e).__name__}: {e}"
                log(rank, f"  EP MoE benchmark ({impl}) failed: {type(e).__name__}: {e}")
                if cuda:
                    torch.cuda.empty_cache()
    env = dict(
        torch=torch.__version__, python=platform.python_version(), backend=dist.get_backend()
    )
    if cuda:
        env.update(
            devices=[torch.cuda.get_device_name(i) for i in range(world)],
            cuda=torch.version.cuda,
            nccl=_nccl_version(),
            nvls_env={
                k: os.environ.get(k)
                for k in (
                    "NCCL_NVLS_ENABLE",
                    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                    "NVSHMEM_DISABLE_NVLS",
                )
            },
        )
        try:
            env["nvidia_smi_topo"] = subprocess.run(
                ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20
            ).stdout
        except Exception as e:
            env["nvidia_smi_topo"] = f"unavailable: {e}"
    else:
        env.update(
            devices=[platform.processor() or platform.machine()],
            cpus=os.cpu_count(),
            threads_per_rank=torch.get_num_threads(),
            loadavg_1min=[load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        )
    return dict(
        collectives=coll, ep_moe=ep, ep_error=ep_error, env=env, elapsed_s=time.perf_counter() - t0
    )


def add_model(result: dict, world: int, gpu: str | None, ranks_per_node: int) -> dict:
    """Bus bandwidths, the alpha-beta fit of each curve, and (with a GPU
    name) the model's prediction."""
    try:
        from dsim.cost.comm import bus_bandwidth, collective_time, fit_alpha_beta
        from dsim.cost.hardware import peak_flops
    except Exception as e:  # never lose the measurements over the model
        result["model_error"] = f"{type(e).__name__}: {e}"
        return result
    for kind, c in result["collectives"].items():
        sizes, times = c["sizes_bytes"], c["time_s"]
        c["algbw_GBps"] = [s / t / 1e9 for s, t in zip(sizes, times)]
        c["busbw_GBps"] = [bus_bandwidth(kind, s, world, t) / 1e9 for s, t in zip(sizes, times)]
        try:
            fit = fit_alpha_beta(sizes, times)
        except ValueError as e:
            c["fit_error"] = str(e)
            continue
        c["fit"] = dict(
            alpha_s=fit.alpha,
            beta_s_per_byte=fit.beta,
            bandwidth_GBps=fit.bandwidth / 1e9,
            busbw_GBps=fit.bandwidth
            * (2 if kind == "all_reduce" else 1)
            * (world - 1)
            / world
            / 1e9,
        )
        c["fit_time_s"] = [fit(s) for s in sizes]
        if gpu:
            model = [
                collective_time(kind, s, world, gpu=gpu, ranks_per_node=ranks_per_node)
                for s in sizes
            ]
            c["model_time_s"] = model
            c["model_busbw_GBps"] = [
                bus_bandwidth(kind, s, world, t) / 1e9 for s, t in zip(sizes, model)
            ]
            c["model_error"] = [
                m / t - 1 for m, t in zip(model, times)
            ]  # + means the model is slower
    a2a_fit = result["collectives"]["all_to_all"].get("fit")
    for rec in result["ep_moe"]:
        s = rec["a2a_send_bytes"]
        if a2a_fit:
            rec["a2a_4x_fit_s"] = 4 * (a2a_fit["alpha_s"] + a2a_fit["beta_s_per_byte"] * s)
        if gpu:
            rec["a2a_4x_model_s"] = 4 * collective_time(
                "all_to_all", s, world, gpu=gpu, ranks_per_node=ranks_per_node
            )
            dtype = "bf16" if rec["dtype"] == "bfloat16" else "fp32"
            rec["compute_at_peak_s"] = (rec["expert_flops"] + rec["shared_flops"]) / peak_flops(
                gpu, dtype
            )
            rec["model_step_lower_bound_s"] = rec["a2a_4x_model_s"] + rec["compute_at_peak_s"]
            rec["a2a_model_error"] = rec["a2a_4x_model_s"] / rec["a2a_4x_measured_s"] - 1
    return result


def sweep_paths(out: str, world_sizes: list[int]) -> dict[int, Path]:
    """One output file per world size: `out` must contain "{n}" when there are several."""
    if len(world_sizes) > 1 and "{n}" not in out:
        raise ValueError(f'--out must contain "{{n}}" (the world size) for a sweep, got {out!r}')
    if any(n < 2 for n in world_sizes):
        raise ValueError(f"world sizes must be >= 2, got {world_sizes}")
    return {n: Path(out.replace("{n}", str(n))) for n in world_sizes}


def run_one(a: argparse.Namespace, cfg: dict, world: int, out: Path) -> None:
    """Measure on `world` ranks (or the torchrun group), add the model, write `out`."""
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    t0 = time.perf_counter()
    if torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if a.backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group(a.backend, timeout=timedelta(seconds=a.timeout_s))
        try:
            result = bench_worker(rank, world, cfg)
        finally:
            dist.destroy_process_group()
        if rank != 0:
            return
    else:
        result = run_distributed(
            bench_worker,
            world,
            args=(cfg,),
            backend=a.backend,
            timeout_s=a.timeout_s,
            threads_per_rank=None if a.backend == "nccl" else 1,
            start_method="spawn" if a.backend == "nccl" else "forkserver",
        )[0]
    rpn = a.ranks_per_node or world
    result = dict(
        schema=1,
        backend=a.backend,
        world_size=world,
        ranks_per_node=rpn,
        gpu_model=a.gpu,
        dtype="float32",
        command=" ".join([Path(sys.executable).name] + sys.argv),
        **result,
    )
    result = add_model(result, world, a.gpu, rpn)
    result["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[comm_bench] wrote {out} in {result['wall_s']:.1f} s", flush=True)
    for kind, c in result["collectives"].items():
        if "fit" in c:
            f = c["fit"]
            line = (
                f"  {kind:15} fit alpha {f['alpha_s'] * 1e6:8.2f} us, "
                f"bandwidth {f['bandwidth_GBps']:8.3f} GB/s"
            )
            if "model_error" in c:
                line += f"; model error at {c['sizes_bytes'][-1]:,d} B: {c['model_error'][-1]:+.0%}"
            print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=("nccl", "gloo"), default="nccl")
    p.add_argument(
        "--world-size",
        type=int,
        default=2,
        help="ranks (one GPU each with nccl); ignored under torchrun",
    )
    p.add_argument(
        "--world-sizes",
        default=None,
        help='a sweep, e.g. 2,4,8: one run and one JSON per world size (--out with "{n}"); '
        "default --min-bytes 4096",
    )
    p.add_argument(
        "--gpu",
        default=None,
        help="dsim GPU name for the model's prediction, e.g. H200 (nccl only)",
    )
    p.add_argument(
        "--ranks-per-node",
        type=int,
        default=None,
        help="for the prediction (default: all ranks on one node)",
    )
    p.add_argument("--min-bytes", type=int, default=None, help="default 1024 (4096 in a sweep)")
    p.add_argument(
        "--max-bytes", type=int, default=None, help="default 1 GiB (nccl) or 64 MiB (gloo)"
    )
    p.add_argument(
        "--target-s",
        type=float,
        default=None,
        help="seconds of timed calls per point (default 0.05 nccl, 0.15 gloo)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed batches per point, median taken (default 3 nccl, 5 gloo)",
    )
    p.add_argument("--skip-ep", action="store_true", help="collectives only")
    p.add_argument("--timeout-s", type=float, default=300, help="deadline of each run")
    p.add_argument(
        "--out", required=True, help='JSON file to write ("{n}" is replaced by the world size)'
    )
    a = p.parse_args(argv)
    if a.gpu and a.backend != "nccl":
        p.error("--gpu (the model's prediction) needs --backend nccl")
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if a.world_sizes is not None:
        if torchrun:
            p.error("--world-sizes spawns its own ranks: not under torchrun")
        try:
            sizes = [int(n) for n in a.world_sizes.split(",")]
            paths = sweep_paths(a.out, sizes)
        except ValueError as e:
            p.error(f"--world-sizes/--out: {e}")
    else:
        paths = {a.world_size: Path(a.out.replace("{n}", str(a.world_size)))}
    max_bytes = a.max_bytes or (2**30 if a.backend == "nccl" else 2**26)
    min_bytes = a.min_bytes or (4096 if a.world_sizes is not None else 1024)
    cfg = dict(
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        skip_ep=a.skip_ep,
        repeats=a.repeats or (3 if a.backend == "nccl" else 5),
        target_s=a.target_s or (0.05 if a.backend == "nccl" else 0.15),
    )
    for world, out in paths.items():
        run_one(a, cfg, world, out)


if __name__ == "__main__":
    main()
