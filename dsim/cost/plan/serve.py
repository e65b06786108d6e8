"""Serving: what a deployment delivers in prefill or decode.

`plan_serving` gives the capacity of a deployment unit with data-parallel attention (or
tensor-parallel, `tp`) and expert-parallel routed experts, the batch bounded by the KV cache:
step time, tokens per second per GPU and per node, latency, cost per million tokens and memory per
GPU. `serving_curve` evaluates a range of batches (throughput-versus-batch plots).

Communication per block: with tensor-parallel attention (tp > 1), two all-reduces of the block's
activations (after attention's wo and after the FFN's w2; [tokens, dim] in bf16 over the tp ranks
of a node), never hidden; with expert parallelism, the dispatch and combine all-to-all of each MoE
block, hidden behind compute only when two micro-batches alternate (DeepSeek's dual micro-batch
overlap), which needs at least two sequences per attention rank.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dsim.config import ModelArgs
from dsim.cost import timing
from dsim.cost.checks import check_real
from dsim.cost.components import Component
from dsim.cost.graph import first_moe_layer, is_moe_layer, served_context
from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.layout import kv_tp_split, replicated_under_tp
from dsim.cost.memory import bytes_per_param, kv_cache_bytes_per_token, layer_activation_bytes
from dsim.cost.params import expert_params, params
from dsim.cost.plan.job import (
    ACT_DTYPE,
    MATMUL_DTYPES,
    PHASES,
    PREFILL_TOKENS_PER_GPU,
    RESERVED_BYTES,
    check_int,
    shard_args,
    tp_problem,
)
from dsim.cost.plan.times import OpTimes
from dsim.cost.timing import PlanOp, block_plan


@dataclass
class ServePlan:
    """Capacity of one deployment unit in one phase (prefill or decode), per GPU and per node.

    batch: sequences one attention rank (a GPU, or a tensor-parallel group of tp GPUs) runs per
    step; max_batch: the most that fit next to the weights (the KV cache bound). tokens_per_s:
    prefill counts input tokens, cache hits included (DeepSeek's convention); decode counts output
    tokens. latency_s: decode, the time per output token; prefill, the time of one step."""

    phase: str
    model: str
    gpu: str
    n_gpus: int
    tp: int
    dp: int
    ep: int
    experts_per_gpu: int
    batch: int
    max_batch: int
    new_tokens: int
    context: int
    step_time_s: float
    compute_s: float
    exposed_comm_s: float
    exposed: dict[str, float]  # exposed communication by kind: tensor (all-reduce), expert (a2a)
    tokens_per_s_per_gpu: float
    tokens_per_s_per_node: float
    latency_s: float
    cost_per_million_tokens: float
    memory: dict[str, float]
    memory_per_gpu_bytes: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Serving:
    """A deployment's per-GPU quantities for one phase (everything but the batch)."""

    def __init__(
        self,
        args: ModelArgs,
        gpu: str | GPU,
        phase: str,
        n_gpus: int,
        ep: int | None,
        tp: int,
        context: int,
        prompt: int,
        cache_hit: float,
        dtype: str,
        kv_dtype: str,
        redundant_experts: int,
        overlap: bool,
        gpus_per_node: int,
        reserved_bytes: float,
        calibration: timing.Calibration | None,
    ):
        if not isinstance(args, ModelArgs):
            raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
        if phase not in PHASES:
            raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
        self.gpu = get_gpu(gpu)
        check_int("n_gpus", n_gpus)
        check_int("tp", tp)
        check_int("gpus_per_node", gpus_per_node)
        check_int("redundant_experts", redundant_experts, 0)
        if n_gpus % tp:
            raise ValueError(f"tp={tp} does not divide the {n_gpus} GPUs")
        problem = tp_problem(args, tp, gpus_per_node)
        if problem:
            raise ValueError(problem)
        if n_gpus > gpus_per_node and n_gpus % gpus_per_node:
            raise ValueError(
                f"n_gpus={n_gpus} must be a multiple of gpus_per_node={gpus_per_node} "
                "or at most one node"
            )
        ep = n_gpus if ep is None else check_int("ep", ep)
        if not args.is_moe:
            ep, redundant_experts = 1, 0
        elif n_gpus % ep:
            raise ValueError(f"ep={ep} does not divide the {n_gpus} GPUs")
        experts = args.n_routed_experts + redundant_experts
        if args.is_moe and experts % ep:
            raise ValueError(
                f"ep={ep} must divide n_routed_experts + redundant_experts = {experts}"
            )
        if dtype not in MATMUL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {dtype!r}")
        if dtype == "fp8" and self.gpu.fp8_flops is None:
            raise ValueError(
                f"dtype='fp8' is not supported by {self.gpu.name} (no fp8 tensor cores)"
            )
        if not (isinstance(cache_hit, (int, float)) and 0 <= cache_hit < 1):
            raise ValueError(f"cache_hit must be a fraction in [0, 1), got {cache_hit!r}")
        check_int("context", context)
        check_int("prompt", prompt)
        self.args, self.phase, self.n_gpus, self.tp, self.ep = args, phase, n_gpus, tp, ep
        self.dp = n_gpus // tp
        self.experts_per_gpu = experts // ep if args.is_moe else 0
        self.dtype, self.overlap, self.gpus_per_node = dtype, overlap, gpus_per_node
        self.reserved_bytes = check_real("reserved_bytes", reserved_bytes)
        if phase == "decode":
            self.new, self.ctx = 1, context  # one new token after `context` cached ones
        else:
            self.new = max(1, math.ceil((1 - cache_hit) * prompt))
            self.ctx = prompt - self.new  # cache hits: a cached prefix the new tokens attend to
        self.prompt = prompt
        self.op_times = OpTimes(args, self.gpu, calibration)
        # memory: weights of one GPU (no MTP module), KV cache per sequence, activations per
        # sequence
        w = 0.0
        wb = bytes_per_param(dtype, 128 * 128) if dtype == "fp8" else bytes_per_param("bf16")
        for name, n in params(args).modules.items():
            top = name.split(".")[0]
            if top == "mtp":
                continue
            keep_bf16 = top in ("embed", "head") or name.endswith(("norm", "gate"))
            b = bytes_per_param("bf16") if keep_bf16 else wb
            if name.endswith("ffn.experts"):
                w += self.experts_per_gpu * expert_params(args) * b
            else:
                w += n * b / (1 if replicated_under_tp(name) else tp)
        self.weight_bytes = w
        kv_tokens = self.ctx + self.new
        self.kv_per_seq = (
            kv_cache_bytes_per_token(args, kv_dtype, seq_len=kv_tokens)
            * kv_tokens
            / kv_tp_split(args, tp)
        )
        layer = first_moe_layer(args) or 0  # the MoE block keeps the most activations
        self.act_per_seq = layer_activation_bytes(args, layer, 1, self.new, ACT_DTYPE, "cuda") / tp
        free = self.gpu.hbm_bytes - reserved_bytes - self.weight_bytes
        self.max_batch = int(free // (self.kv_per_seq + self.act_per_seq)) if free > 0 else 0
        if self.max_batch < 1:
            raise ValueError(
                f"{args.name} does not fit for {phase} on {n_gpus} x {self.gpu.name} with ep={ep}, "
                f"tp={tp}: weights {self.weight_bytes / 1e9:.1f} GB + one sequence's KV cache "
                f"{self.kv_per_seq / 1e9:.2f} GB + {reserved_bytes / 1e9:.0f} GB reserved > "
                f"{self.gpu.hbm_bytes / 1e9:.0f} GB"
            )

    def tp_allreduce(self, tokens: int) -> float:
        """One tensor-parallel all-reduce of `tokens` rows of activations (bf16) over the tp ranks
        of a node (dsim.cost.comm.collective_time)."""
        nbytes = tokens * self.args.dim * bytes_per_param(ACT_DTYPE)
        return self.op_times.coll("all_reduce", nbytes, self.tp, self.gpus_per_node)

    def block_time(
        self, ops: list[PlanOp], tokens: int, moe: bool, overlap: bool, extra: float = 0.0
    ) -> tuple[float, float]:
        """(compute seconds, exposed all-to-all seconds) of one block: its non-expert `ops` (plus
        `extra` seconds), and for an MoE block the routed experts over `tokens` tokens of an
        attention rank (every GPU's experts get, balanced, the top-k copies of 1/tp of them) and
        their dispatch/combine, hidden behind the compute when two micro-batches alternate."""
        a, op_times, tp = self.args, self.op_times, self.tp
        c = op_times.sum_ops(ops, self.dtype)[0] + extra
        a2a = 0.0
        if moe:
            local = -(-tokens // tp)
            c += op_times.expert_time(
                local, self.experts_per_gpu, a.moe_inter_dim, self.dtype, False
            )[0]
            a2a = op_times.a2a(
                local,
                self.ep,
                max(1, self.gpus_per_node // tp),
                self.dtype,
                self.experts_per_gpu * self.ep,
            )
        return c, a2a - (min(a2a, c) if overlap else 0.0)

    def ends_time(self, tokens: int, rows: int) -> tuple[float, float]:
        """(compute seconds, exposed tensor-parallel seconds) outside the blocks for a step of
        `tokens` tokens that wants `rows` rows of logits: the embedding lookup, the final norm and
        the head; with tensor parallelism, two all-reduces per block (after wo and after w2) and
        the vocabulary-split logits gathered."""
        a, op_times, tp = self.args, self.op_times, self.tp
        exposed = 2 * a.n_layers * self.tp_allreduce(tokens)
        if tp > 1:
            logits = rows * a.vocab_size * bytes_per_param(ACT_DTYPE)
            exposed += op_times.coll("all_gather", logits, tp, self.gpus_per_node)
        ops = [
            PlanOp(
                Component.EMBEDDING,
                "embed",
                "gather_rows",
                dict(rows=tokens, width=a.dim, dst_rows=a.vocab_size),
            ),
            PlanOp(Component.NORMS, "norm", "rmsnorm", dict(tokens=rows, dim=a.dim)),
            PlanOp(
                Component.HEAD,
                "head",
                "gemm",
                dict(m=rows, n=-(-a.vocab_size // tp), k=a.dim, batch=1),
            ),
        ]
        return op_times.sum_ops(ops, self.dtype)[0], exposed

    def step(self, batch: int) -> tuple[float, float, float, dict[str, float]]:
        """(step seconds, compute seconds, exposed communication seconds, exposed seconds by kind:
        tensor and expert) for `batch` sequences per attention rank."""
        a, op_times, tp = self.args, self.op_times, self.tp
        impl = "absorb" if self.phase == "decode" else "naive"  # DeepSeek: absorbed MLA to decode
        sa = shard_args(a.replace(attn_impl=impl) if a.attn_type == "mla" else a, tp)
        tokens = batch * self.new
        comp = exposed_ep = 0.0
        # two micro-batches alternate only when there are two sequences to split them into
        overlap = self.overlap and batch >= 2
        for i in range(a.n_layers):
            moe = a.is_moe and is_moe_layer(a, i)
            ctx = served_context(a, i, self.ctx)  # a sliding-window layer reads its window only
            key = ("serve-block", moe, ctx, batch, overlap)
            if key not in op_times._memo:
                ops = block_plan(sa, i, batch, self.new, ctx, self.phase)
                ops = [p for p in ops if p.op != "moe_ffn"]
                op_times._memo[key] = self.block_time(ops, tokens, moe, overlap)
            c, e = op_times._memo[key]
            comp, exposed_ep = comp + c, exposed_ep + e
        # the last position's logits per sequence
        ends, exposed_tp = self.ends_time(tokens, batch)
        comp += ends
        exposed = exposed_tp + exposed_ep
        return comp + exposed, comp, exposed, dict(tensor=exposed_tp, expert=exposed_ep)

    def plan(self, batch: int, price_per_gpu_hour: float) -> ServePlan:
        check_real("price_per_gpu_hour", price_per_gpu_hour)
        step, comp, exposed, by_kind = self.step(batch)
        per_step = batch * (
            1 if self.phase == "decode" else self.prompt
        )  # per attention rank (TP group)
        tps = per_step / step / self.tp
        kv = self.kv_per_seq * batch
        acts = self.act_per_seq * batch
        mem = dict(
            weights=self.weight_bytes, kv_cache=kv, activations=acts, buffers=self.reserved_bytes
        )
        return ServePlan(
            phase=self.phase,
            model=self.args.name,
            gpu=self.gpu.name,
            n_gpus=self.n_gpus,
            tp=self.tp,
            dp=self.dp,
            ep=self.ep,
            experts_per_gpu=self.experts_per_gpu,
            batch=batch,
            max_batch=self.max_batch,
            new_tokens=self.new,
            context=self.ctx,
            step_time_s=step,
            compute_s=comp,
            exposed_comm_s=exposed,
            exposed=by_kind,
            tokens_per_s_per_gpu=tps,
            tokens_per_s_per_node=tps * self.gpus_per_node,
            latency_s=step,
            cost_per_million_tokens=price_per_gpu_hour / 3600 / tps * 1e6,
            memory=mem,
            memory_per_gpu_bytes=sum(mem.values()),
        )


def plan_serving(
    args: ModelArgs,
    gpu: str | GPU = "H800",
    phase: str = "decode",
    n_gpus: int = 8,
    ep: int | None = None,
    tp: int = 1,
    batch: int | None = None,
    context: int = 4096,
    prompt: int = 4096,
    cache_hit: float = 0.0,
    dtype: str = "fp8",
    kv_dtype: str = "bf16",
    redundant_experts: int = 0,
    overlap: bool = True,
    latency_target: float | None = None,
    price_per_gpu_hour: float = 2.0,
    gpus_per_node: int = 8,
    reserved_bytes: float = RESERVED_BYTES,
    calibration: timing.Calibration | None = None,
) -> ServePlan:
    """Prefill or decode capacity of a deployment unit of `n_gpus` GPUs.

    Attention runs data-parallel over n_gpus / tp ranks (tp > 1: tensor-parallel groups); the routed
    experts are split over `ep` GPUs (default all of them), n_routed_experts + redundant_experts
    replicas, balanced (DeepSeek's EPLB). Weights in `dtype` (fp8 with 128 x 128 block scales for
    the linear layers; embedding, head, norms and gate in bf16), KV cache in `kv_dtype`.
    decode: each sequence has `context` cached tokens and adds one per step; batch defaults to the
        largest that fits (the KV cache bound), or the largest whose step meets `latency_target`
        seconds per output token.
    prefill: each sequence is a `prompt`-token prompt of which a fraction `cache_hit` is a cached
        prefix (not recomputed, but attended to); batch defaults to about PREFILL_TOKENS_PER_GPU
        new tokens.
    overlap: two micro-batches alternate so that each MoE block's all-to-all hides behind the
        other's compute (DeepSeek's dual micro-batch overlap): exposed = max(0, a2a - compute) per
        block; with one sequence per attention rank there is nothing to alternate with, and the
        all-to-all is exposed whole. Tensor-parallel all-reduces are never hidden.
    """
    s = Serving(
        args,
        gpu,
        phase,
        n_gpus,
        ep,
        tp,
        context,
        prompt,
        cache_hit,
        dtype,
        kv_dtype,
        redundant_experts,
        overlap,
        gpus_per_node,
        reserved_bytes,
        calibration,
    )
    if batch is not None:
        check_int("batch", batch)
        if batch > s.max_batch:
            raise ValueError(
                f"batch={batch} does not fit: at most {s.max_batch} sequences per GPU fit next to "
                f"the weights ({s.kv_per_seq / 1e6:.0f} MB of KV cache each)"
            )
    elif latency_target is not None:
        if not latency_target > 0:
            raise ValueError(f"latency_target must be > 0 seconds, got {latency_target!r}")
        # the step time grows with the batch, except from 1 to 2 sequences, where the dual
        # micro-batch overlap starts to hide the all-to-all
        first = [b for b in (1, 2) if b <= s.max_batch and s.step(b)[0] <= latency_target]
        if not first:
            raise ValueError(
                f"latency_target={latency_target * 1e3:.1f} ms cannot be met: one sequence takes "
                f"{s.step(1)[0] * 1e3:.1f} ms per step"
            )
        lo, hi = first[-1], s.max_batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if s.step(mid)[0] <= latency_target:
                lo = mid
            else:
                hi = mid - 1
        batch = lo
    elif phase == "prefill":
        batch = max(1, min(s.max_batch, round(PREFILL_TOKENS_PER_GPU / s.new)))
    else:
        batch = s.max_batch
    return s.plan(batch, price_per_gpu_hour)


def serving_curve(args: ModelArgs, batches: Iterable[int], **kwargs: Any) -> list[ServePlan]:
    """plan_serving at each batch that fits (for throughput-versus-batch plots)."""
    s = Serving(
        args,
        kwargs.pop("gpu", "H800"),
        kwargs.pop("phase", "decode"),
        kwargs.pop("n_gpus", 8),
        kwargs.pop("ep", None),
        kwargs.pop("tp", 1),
        kwargs.pop("context", 4096),
        kwargs.pop("prompt", 4096),
        kwargs.pop("cache_hit", 0.0),
        kwargs.pop("dtype", "fp8"),
        kwargs.pop("kv_dtype", "bf16"),
        kwargs.pop("redundant_experts", 0),
        kwargs.pop("overlap", True),
        kwargs.pop("gpus_per_node", 8),
        kwargs.pop("reserved_bytes", RESERVED_BYTES),
        kwargs.pop("calibration", None),
    )
    price = kwargs.pop("price_per_gpu_hour", 2.0)
    if kwargs:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(kwargs))}")
    return [s.plan(int(b), price) for b in batches if 1 <= b <= s.max_batch]
