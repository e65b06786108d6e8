#!/usr/bin/env python
"""Time dsim.model training steps with expert parallelism on N GPUs and write them to JSON.

The layout is the planner's (dsim.cost.plan) tp=1, pp=1, dp=ep=N, ZeRO-1, one micro-batch per
step: every rank builds the same model (same seed) and keeps
  - the routed experts of each MoE layer sharded over the ranks (dsim.parallel.EPMoE.from_moe: rank
    r holds experts [r*E/N, (r+1)*E/N)); tokens travel to their experts and back by all-to-all;
  - everything else replicated (data parallelism): after the backward its gradients are averaged
    by one all-reduce of a flat buffer (the gradients are views into it, as DDP's
    gradient_as_bucket_view); the experts' gradients are already whole on their rank (the
    all-to-all's backward brought every token's share) and are divided by N for the mean;
  - AdamW with ZeRO-1 for the replicated parameters (torch's ZeroRedundancyOptimizer: each rank
    keeps Adam's moments of its share, updates it, then broadcasts it), plain AdamW for its experts.
Each rank trains on its own micro-batch (dsim.parallel.toy_batch, rows rank*b..(rank+1)*b).

Cases: a few layers at DeepSeek-V2-Lite width (dim 2048, 64 experts, top-6) and at DeepSeek-V3
width (dim 7168, 2048-wide experts, top-8 with group-limited routing; 64 experts instead of 256 so
that 2 ranks hold them), each with balanced routing (skew 0) and skewed routing (skew 1: the gate
bias adds one standard deviation of the router scores to the first quarter of the experts, which
live on rank 0 at N <= 4; the rows each rank sends to each rank are recorded per layer).

Timed per step (CUDA events on the GPU's stream; time.perf_counter on a CPU), per rank, the median
over the timed steps:
  step               the whole step
  forward, backward  the model's forward (with the loss) and backward
  a2a_dispatch_fwd, a2a_combine_fwd, a2a_dispatch_bwd, a2a_combine_bwd
                     the four all-to-alls of the MoE layers, summed over the layers; each span
                     includes the wait for the slowest rank
  grad_allreduce     the all-reduce of the replicated gradients (one flat buffer)
  optimizer          the experts' gradient scaling, ZeRO-1's local AdamW step and the experts' AdamW
  param_sync         ZeRO-1's broadcasts of the updated shares (ZeroRedundancyOptimizer.step() is
                     _local_step() then _sync_params(), timed apart)
and the allocator's peak per rank (torch.cuda.max_memory_allocated over the timed steps; on a CPU
the process's peak resident set instead). dsim.cost.plan.ep_compare puts the planner's and the
communication model's predictions next to these numbers.

Commands for the session with several H200s. One device `run` per world size N = 2, 4, 8 (kind
nvidia-h200-x2, nvidia-h200-x4, nvidia-h200-x8; timeout_s 600), each (about 2-5 minutes):

    timeout 390 python3 bench/ep_step_measure.py --world-size N --timeout-s 360 \
        --out $OUT/ep_step_h200xN.json ; \
    timeout 190 python3 bench/comm_bench.py --backend nccl --gpu H200 --skip-ep \
        --world-sizes N --timeout-s 180 --out "$OUT/comm_sweep_h200x{n}.json"

(Where only the 8-GPU kind is lent: the three EP runs as three calls there with --world-size 2, 4
and 8, and one call for the whole sweep, `--world-sizes 2,4,8` with `timeout 580`.) Each model is
its own launch: one that fails (e.g. out of memory) is listed under "failed" and the others are
kept; the JSON is rewritten after each model, so a run cut short keeps what finished. Then copy
the files into dsim/data/ (comm_sweep_*, not comm_nccl_h200x2.json, which the committed
constants are fitted to), commit them, and state the numbers:

    python -m dsim.cost.plan.ep_compare dsim/data/ep_step_h200x{2,4,8}.json
    python -m dsim.cost.comm.crossval --fit-on 2 dsim/data/comm_sweep_h200x{2,4,8}.json
    python -m dsim.cost.comm.crossval --fit-on 2,4 dsim/data/comm_sweep_h200x{2,4,8}.json

A smoke run on a CPU (2 gloo ranks, toy sizes, seconds; what tests/test_ep_step_measure.py runs):

    python bench/ep_step_measure.py --smoke --world-size 2 --out /tmp/ep_smoke.json

NVLink multicast (NVLS) stays off, as in bench/comm_bench.py. Under torchrun (RANK and WORLD_SIZE
set) the script joins that process group instead of spawning its ranks.
"""

from __future__ import annotations

import os

for _var, _value in (
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
):
    os.environ.setdefault(_var, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402

from dsim.config import ModelArgs, preset, scaled_down  # noqa: E402
from dsim.launch import DistributedError, run_distributed  # noqa: E402
from dsim.model import MoE, Transformer  # noqa: E402
from dsim.parallel import EPMoE, all_to_all, one_thread, toy_batch  # noqa: E402

SCHEMA = 1
A2A_PARTS = ("a2a_dispatch_fwd", "a2a_combine_fwd", "a2a_dispatch_bwd", "a2a_combine_bwd")
PARTS = ("step", "forward", "backward", *A2A_PARTS, "grad_allreduce", "optimizer", "param_sync")
# a2a = the four all-to-alls; compute = forward + backward - a2a
DERIVED = ("a2a", "compute")
SMOKE_NOTE = (
    "SMOKE RUN on a CPU with gloo at toy sizes: not a measurement of any GPU (for tests only)"
)


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------
def gpu_models() -> dict[str, ModelArgs]:
    """A few layers of each model at its real widths (the first dense), no MTP."""
    return {
        "deepseek-v2-lite width, 3 layers": preset(
            "deepseek-v2-lite", n_layers=3, n_dense_layers=1, n_mtp_layers=0
        ),
        "deepseek-v3 width, 64 experts, 3 layers": preset(
            "deepseek-v3",
            n_layers=3,
            n_dense_layers=1,
            n_routed_experts=64,  # 8 groups of 8, 4 groups kept: 32 candidates for the top-8
            n_mtp_layers=0,
        ),
    }


def smoke_models() -> dict[str, ModelArgs]:
    """The same structures at toy sizes (dsim.config.scaled_down), 8 experts, top-2."""
    return {
        f"{name} (toy)": scaled_down(
            preset(name),
            n_layers=3,
            n_dense_layers=1,
            n_routed_experts=8,
            n_activated_experts=2,
            n_expert_groups=4 if name == "deepseek-v3" else 1,
            n_limited_groups=2 if name == "deepseek-v3" else 1,
            n_mtp_layers=0,
        )
        for name in ("deepseek-v2-lite", "deepseek-v3")
    }


@dataclass(frozen=True)
class Case:
    """One measurement: `model` (its ModelArgs `args`) with routing skew `skew`, each rank
    training on micro_batch sequences of seq_len tokens per step."""

    model: str
    args: ModelArgs
    skew: float
    micro_batch: int
    seq_len: int

    @property
    def name(self) -> str:
        return f"{self.model}, skew {self.skew:g}, {self.micro_batch}x{self.seq_len} tokens/rank"


def router_score_std(args: ModelArgs) -> float:
    """Standard deviation of the router's scores at initialisation: the gate's weights are
    N(0, 0.02^2) and its input has unit RMS (RMSNorm), so each logit is N(0, 0.02^2 dim); the
    scores are their softmax or sigmoid (a fixed sample of 1024 tokens)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1024, args.n_routed_experts, generator=gen) * 0.02 * args.dim**0.5
    scores = logits.softmax(-1) if args.score_func == "softmax" else logits.sigmoid()
    return float(scores.std())


def skew_bias(args: ModelArgs, skew: float) -> torch.Tensor:
    """The gate bias of a case: skew x router_score_std on the first quarter of the experts, 0
    elsewhere. The bias only steers which experts are chosen (DeepSeek's balancing term)."""
    if not skew >= 0:
        raise ValueError(f"skew must be >= 0, got {skew!r}")
    bias = torch.zeros(args.n_routed_experts)
    bias[: max(1, args.n_routed_experts // 4)] = skew * router_score_std(args)
    return bias


def build_model(case: Case, seed: int, device: torch.device | str = "cpu") -> Transformer:
    """The full model of a case, the same on every rank: seeded init, the skew bias on every MoE
    gate."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(case.args)
    bias = skew_bias(case.args, case.skew)
    for moe in model.moe_layers():
        moe.gate.bias.copy_(bias)
    return model


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
class Clock:
    """Named spans of a step: CUDA events on the current stream (GPU), time.perf_counter (CPU).
    A part timed several times in a step (one span per MoE layer) adds up."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.open: dict[str, Any] = {}
        self.spans: list[tuple[str, Any, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str) -> None:
        if name in self.open:
            raise RuntimeError(f"span {name!r} opened twice")
        self.open[name] = self._now()

    def stop(self, name: str) -> None:
        self.spans.append((name, self.open.pop(name), self._now()))

    def collect(self) -> dict[str, float]:
        """Seconds per part since the last collect (waits for the GPU)."""
        if self.open:
            raise RuntimeError(f"spans still open: {sorted(self.open)}")
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, a, b in self.spans:
            s = a.elapsed_time(b) / 1e3 if self.cuda else b - a
            out[name] = out.get(name, 0.0) + s
        self.spans = []
        return out


class _TimedExchange(torch.autograd.Function):
    """dsim.parallel.all_to_all inside a span of the clock, forward and backward (the backward is
    the reverse exchange: the same function with the splits swapped)."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group, clock: Clock, name: str):
        ctx.saved = (out_splits, in_splits, group, clock, name)
        clock.start(f"{name}_fwd")
        y = all_to_all(x, out_splits, in_splits, group)
        clock.stop(f"{name}_fwd")
        return y

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits, group, clock, name = ctx.saved
        clock.start(f"{name}_bwd")
        grad_in = all_to_all(grad, in_splits, out_splits, group)
        clock.stop(f"{name}_bwd")
        return grad_in, None, None, None, None, None


class TimedExchange:
    """An EPMoE.exchange that times each call: the first of a forward is the dispatch, the second
    the combine (EPMoE.forward's order)."""

    def __init__(self, clock: Clock):
        self.clock, self.calls = clock, 0

    def __call__(self, x, out_splits, in_splits, group=None):
        name = ("a2a_dispatch", "a2a_combine")[self.calls % 2]
        self.calls += 1
        return _TimedExchange.apply(x, list(out_splits), list(in_splits), group, self.clock, name)


# ---------------------------------------------------------------------------------------------
# one rank
# ---------------------------------------------------------------------------------------------
def shard_experts(model: Transformer, clock: Clock) -> list[EPMoE]:
    """Replace every MoE layer by its expert-parallel shard (EPMoE.from_moe, timed exchanges)."""
    layers = []
    for block in model.layers:
        if isinstance(block.ffn, MoE):
            block.ffn = EPMoE.from_moe(block.ffn)
            block.ffn.exchange = TimedExchange(clock)
            layers.append(block.ffn)
    return layers


def _views(params: list[nn.Parameter], flat: torch.Tensor):
    """(param, the slice of flat that is its gradient), params laid end to end."""
    offset = 0
    for p in params:
        yield p, flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def _grads_as_views(params: list[nn.Parameter], dtype, device) -> torch.Tensor:
    """One flat buffer whose slices are the params' .grad: backward accumulates into it, and one
    all-reduce of it averages every gradient."""
    flat = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
    for p, view in _views(params, flat):
        p.grad = view
    return flat


def run_case(rank: int, world: int, case: Case, cfg: dict) -> dict:
    """Train `case` for cfg warmup + steps steps on this rank; its timings, memory and routing
    (and, with cfg["save_tensors"], the logits and gradients of the first step and the final
    parameters)."""
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = getattr(torch, cfg["dtype"])
    args, b, S = case.args, case.micro_batch, case.seq_len
    clock = Clock(cuda)
    model = build_model(case, cfg["seed"], device)
    ep_layers = shard_experts(model, clock)
    model.to(dtype)
    if cuda:
        torch.cuda.empty_cache()  # the other ranks' experts, built and dropped
    expert_ids = {id(p) for m in ep_layers for p in m.experts.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    replicated = [p for p in model.parameters() if id(p) not in expert_ids]
    experts = [p for p in model.parameters() if id(p) in expert_ids]
    flat = _grads_as_views(replicated, dtype, device)
    zero = ZeroRedundancyOptimizer(
        replicated,
        optimizer_class=torch.optim.AdamW,
        lr=cfg["lr"],
        parameters_as_bucket_view=True,
    )
    local = torch.optim.AdamW(experts, lr=cfg["lr"])
    for attr in ("_local_step", "_sync_params"):
        if not hasattr(zero, attr):
            raise RuntimeError(
                f"this torch's ZeroRedundancyOptimizer has no {attr}(): cannot time the local "
                "step and the parameter broadcasts apart"
            )
    shard_numel = sum(p.numel() for g in zero.optim.param_groups for p in g["params"])

    times: dict[str, list[float]] = {p: [] for p in PARTS}
    losses, saved = [], {}
    for step in range(cfg["warmup"] + cfg["steps"]):
        if step == cfg["warmup"] and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        x, y = toy_batch(args, step, world * b, S, cfg["seed"])
        x, y = x[rank * b : (rank + 1) * b].to(device), y[rank * b : (rank + 1) * b].to(device)
        flat.zero_()
        for p in experts:
            p.grad = None
        clock.start("step")
        clock.start("forward")
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        clock.stop("forward")
        clock.start("backward")
        loss.backward()
        clock.stop("backward")
        clock.start("grad_allreduce")
        dist.all_reduce(flat)
        clock.stop("grad_allreduce")
        clock.start("optimizer")
        flat.div_(world)
        for p in experts:
            p.grad.div_(world)
        zero._local_step()
        local.step()
        clock.stop("optimizer")
        clock.start("param_sync")
        zero._sync_params()
        clock.stop("param_sync")
        clock.stop("step")
        spans = clock.collect()
        if step == 0 and any(
            p.grad.data_ptr() != v.data_ptr() for p, v in _views(replicated, flat)
        ):
            raise RuntimeError("backward replaced a gradient view of the flat buffer")
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if step >= cfg["warmup"]:
            for part in PARTS:
                times[part].append(spans[part])
        if cfg["save_tensors"] and step == 0:
            saved["logits"] = logits.detach().float().cpu().clone()
            saved["grads"] = {
                names[id(p)]: p.grad.detach().float().cpu().clone() for p in replicated
            }
            saved["grads"].update(
                {names[id(p)]: p.grad.detach().float().cpu().clone() for p in experts}
            )
    if cfg["save_tensors"]:
        saved["params"] = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}
    memory = (
        dict(
            peak_allocated_bytes=torch.cuda.max_memory_allocated(),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(),
        )
        if cuda
        else dict(peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    )
    out = dict(
        rank=rank,
        parts_s={p: statistics.median(v) for p, v in times.items()},
        parts_s_all=times,
        memory=memory,
        rows_sent=[m.send_counts.sum(1).tolist() for m in ep_layers],  # [layer][dst]
        replicated_params=sum(p.numel() for p in replicated),
        expert_params=sum(p.numel() for p in experts),
        zero_shard_params=shard_numel,
        losses=losses,
    )
    if cfg["save_tensors"]:
        out["tensors"] = saved
    del model, zero, local, flat
    if cuda:
        torch.cuda.empty_cache()
    return out


def ep_step_worker(rank: int, world: int, cfg: dict) -> list[dict]:
    """Every case on this rank (run_distributed's fn, or called under torchrun)."""
    out = []
    for case in cfg["cases"]:
        if rank == 0:
            print(f"[ep_step_measure] {world} ranks: {case.name}", flush=True)
        out.append(run_case(rank, world, case, cfg))
    return out


# ---------------------------------------------------------------------------------------------
# the single-process reference (what the EP run must reproduce)
# ---------------------------------------------------------------------------------------------
@one_thread()
def reference(case: Case, world: int, steps: int, lr: float, seed: int) -> dict:
    """The same model, one process, fp32, the full batch of the world's micro-batches, plain
    AdamW: the first step's logits [world*b, S, V] and gradients, the losses, the final
    parameters."""
    model = build_model(case, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    out: dict[str, Any] = dict(losses=[])
    for step in range(steps):
        x, y = toy_batch(case.args, step, world * case.micro_batch, case.seq_len, seed)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            out["logits"] = logits.detach()
            out["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        out["losses"].append(float(loss.detach()))
    out["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def environment(cuda: bool, world: int) -> dict:
    env: dict[str, Any] = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
    )
    if cuda:
        v = torch.cuda.nccl.version()
        env.update(
            gpus=[torch.cuda.get_device_name(i) for i in range(world)],
            cuda=torch.version.cuda,
            nccl=".".join(map(str, v)) if isinstance(v, tuple) else str(v),
            nvls_env={
                k: os.environ.get(k)
                for k in (
                    "NCCL_NVLS_ENABLE",
                    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                    "NVSHMEM_DISABLE_NVLS",
                )
            },
        )
    return env


def case_record(case: Case, world: int, ranks: list[dict], cfg: dict) -> dict:
    """One case of the JSON: what ran (args, layout, routing), per-rank results, and per part the
    slowest rank's median."""
    elem = torch.finfo(getattr(torch, cfg["dtype"])).bits // 8
    per_rank = [{k: v for k, v in r.items() if k != "tensors"} for r in ranks]
    for r in per_rank:  # the derived parts
        p = r["parts_s"]
        p["a2a"] = sum(p[k] for k in A2A_PARTS)
        p["compute"] = p["forward"] + p["backward"] - p["a2a"]
    return dict(
        name=case.name,
        model=case.model,
        skew=case.skew,
        args=case.args.to_dict(),
        micro_batch=case.micro_batch,
        seq_len=case.seq_len,
        tokens_per_rank=case.micro_batch * case.seq_len,
        dtype=cfg["dtype"],
        bytes_per_elem=elem,
        layout=dict(
            tp=1,
            pp=1,
            dp=world,
            ep=world,
            zero=1,
            micro_batch=case.micro_batch,
            recompute="none",
            schedule="1f1b",
            dtype="bf16",
            n_microbatches=1,
        ),
        warmup=cfg["warmup"],
        steps=cfg["steps"],
        lr=cfg["lr"],
        replicated_params=per_rank[0]["replicated_params"],
        zero_shard_params=[r["zero_shard_params"] for r in per_rank],
        expert_params=[r["expert_params"] for r in per_rank],
        # rows_sent[layer][src][dst]: rows of (token, expert) pairs rank src sent to rank dst
        rows_sent=[
            [r["rows_sent"][i] for r in per_rank] for i in range(len(per_rank[0]["rows_sent"]))
        ],
        losses=per_rank[0]["losses"],
        parts_s={k: max(r["parts_s"][k] for r in per_rank) for k in (*PARTS, *DERIVED)},
        ranks=per_rank,
    )


def main(argv: list[str] | None = None) -> None:
    """The command line (argv: its arguments, default sys.argv[1:])."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--world-size", type=int, default=2, help="ranks (ignored under torchrun)")
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, toy models (for tests)")
    p.add_argument("--skews", default="0,1", help="routing skews, comma-separated (default 0,1)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per rank per step")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--only", default=None, help="run only the models whose name contains this")
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default=None,
        help="parameters and activations (default bfloat16 on GPUs, float32 in --smoke)",
    )
    p.add_argument("--timeout-s", type=float, default=540, help="deadline of the whole run")
    p.add_argument(
        "--save-tensors",
        type=Path,
        default=None,
        help="torch.save the first step's "
        "logits and gradients and the final parameters of every rank (smoke checks)",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    a = p.parse_args(argv)
    smoke = a.smoke
    models = smoke_models() if smoke else gpu_models()
    if a.only:
        models = {k: v for k, v in models.items() if a.only in k}
        if not models:
            p.error(f"--only {a.only!r} matches no model")
    skews = [float(s) for s in a.skews.split(",")]
    b = a.micro_batch or (2 if smoke else 1)
    S = a.seq_len or (16 if smoke else 4096)
    cases = [Case(m, args, s, b, S) for m, args in models.items() for s in skews]
    cfg = dict(
        cases=cases,
        steps=a.steps or (2 if smoke else 5),
        warmup=a.warmup if a.warmup is not None else (1 if smoke else 2),
        lr=1e-3,
        seed=0,
        dtype=a.dtype or ("float32" if smoke else "bfloat16"),
        save_tensors=a.save_tensors is not None,
    )
    backend = "gloo" if smoke else "nccl"
    if not smoke and not torch.cuda.is_available():
        p.error("no GPU: run with --smoke on a CPU")
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    world = int(os.environ["WORLD_SIZE"]) if torchrun else a.world_size
    for case in cases:
        if case.args.n_routed_experts % world:
            p.error(f"{case.name}: n_routed_experts must be divisible by the {world} ranks")
    t0 = time.perf_counter()
    report = dict(
        schema=SCHEMA,
        measured=not smoke,
        note=SMOKE_NOTE if smoke else "measured by bench/ep_step_measure.py",
        world_size=world,
        backend=backend,
        device="cpu" if smoke else "cuda",
        predicted_gpu="H200",
        command=" ".join(["bench/ep_step_measure.py", *(sys.argv[1:] if argv is None else argv)]),
        env=environment(not smoke, world),
        cases=[],
        failed=[],
        wall_s=0.0,
    )
    if torchrun:
        rank = int(os.environ["RANK"])
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group(backend, timeout=timedelta(seconds=a.timeout_s))
        try:
            mine = ep_step_worker(rank, world, cfg)
            results = [None] * world
            dist.all_gather_object(results, mine)
        finally:
            dist.destroy_process_group()
        if rank != 0:
            return
        groups = [(cases, results)]
    else:  # one launch per model: a model that fails (e.g. out of memory) leaves the others
        groups = []
        for model in models:
            mine = [c for c in cases if c.model == model]
            try:
                results = run_distributed(
                    ep_step_worker,
                    world,
                    args=(dict(cfg, cases=mine),),
                    backend=backend,
                    timeout_s=a.timeout_s,
                    threads_per_rank=1 if smoke else None,
                    start_method="forkserver" if smoke else "spawn",
                )
            except DistributedError as e:
                report["failed"].append(dict(cases=[c.name for c in mine], error=str(e)[-4000:]))
                print(f"[ep_step_measure] {model} failed: {str(e)[-600:]}", flush=True)
                continue
            groups.append((mine, results))
            _write(a.out, report, groups, world, cfg, t0)  # what has run so far
    _write(a.out, report, groups, world, cfg, t0)
    if a.save_tensors is not None:
        torch.save(
            [
                [res[r][i]["tensors"] for r in range(world)]
                for cs, res in groups
                for i in range(len(cs))
            ],
            a.save_tensors,
        )
    print(f"[ep_step_measure] wrote {a.out} in {report['wall_s']:.1f} s", flush=True)
    for rec in report["cases"]:
        t = rec["parts_s"]
        print(
            f"  {rec['name']}: step {t['step'] * 1e3:.2f} ms, all-to-all {t['a2a'] * 1e3:.2f}, "
            f"grad all-reduce {t['grad_allreduce'] * 1e3:.2f}, param sync "
            f"{t['param_sync'] * 1e3:.2f} ms",
            flush=True,
        )
    if report["failed"]:
        sys.exit(
            f"[ep_step_measure] {len(report['failed'])} model(s) failed: see 'failed' in {a.out}"
        )


def _write(out: Path, report: dict, groups: list, world: int, cfg: dict, t0: float) -> None:
    """The report with the cases of every finished launch."""
    report["cases"] = [
        case_record(case, world, [res[r][i] for r in range(world)], cfg)
        for cs, res in groups
        for i, case in enumerate(cs)
    ]
    report["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
