"""Capacity planning: the fastest parallel layout to train a model on a cluster, and what a serving
deployment delivers.

Training (`plan_training`). For a model, a GPU type and count, a token budget, a sequence length and
a global batch, enumerate every layout -- tensor (tp), pipeline (pp, with a 1F1B or a DualPipe
schedule), expert (ep, inside data parallelism as in Megatron and DeepSeek) and data (dp) parallel
sizes, ZeRO stage, micro-batch, recomputation (none / selective / full) and matmul precision (bf16 /
fp8) -- reject the layouts that do not fit in memory (counting why), and rank the rest by step time.

Every per-component number comes from the cost modules, never from a formula re-derived here:
    parameters per stage    dsim.cost.params (module by module) split the way dsim.cost.memory splits them
    activations             dsim.cost.memory.layer_activation_bytes / model_activation_bytes
    compute                 dsim.cost.timing: the ops of `block_plan` / `step_plan` timed by `op_time`
                            (and `op_kernels` for the MoE layer), with the GPU's calibration
    communication           dsim.cost.comm: collective_time, moe_dispatch_time, dp_volumes
    pipeline bubbles        the table of dsim.cost.comm.pipeline_bubble_time
    model FLOPs (MFU)       dsim.cost.flops

Conventions:
    MFU       model FLOPs of a step / (step time x GPUs x dense bf16 peak). Model FLOPs are
              `flops(args, 1, seq_len).total_causal` per sequence: every matmul of the forward and the
              backward pass, MTP modules included, attention charged for the (query, key) pairs a causal
              mask keeps, and no recomputation. fp8 runs are measured against the bf16 peak too, so MFUs
              compare across precisions (DeepSeek-V3's would be half as large against the fp8 peak).
    memory    bytes on the busiest GPU, by kind: weights (bf16), gradients (fp32), optimizer (fp32 master
              weights + Adam's two moments in `optimizer_dtype`), activations (bf16), buffers (a fixed
              reserve for the CUDA context, NCCL/cuBLAS workspaces and allocator fragmentation, plus the
              layer ZeRO-3 prefetches). A layout fits when they add up to at most the HBM capacity.

How a step is timed (per micro-batch and pipeline stage, then composed):
    compute     forward (F), backward (B) and its weight-gradient part (W) of every op the stage runs,
                plus recomputation: selective = the forward of the RMSNorms and of MLA's up-projections
                (DeepSeek-V3's recipe), full = the whole forward of every block again.
    exposed communication
                tensor parallel: 4 all-reduces of the block's activations per block (6 with full
                recomputation), never hidden; expert parallel: dispatch + combine per MoE block, forward
                and backward (and again with full recomputation): fully exposed under 1F1B, hidden
                behind the compute of the paired chunk under DualPipe (exposed = max(0, a2a - compute));
                pipeline send/receive: on the critical path under 1F1B, hidden under DualPipe;
                data parallel (after the last micro-batch): ZeRO 0 all-reduce, ZeRO 1 reduce-scatter +
                all-gather, hidden behind one micro-batch's backward (gradients) and forward (parameters);
                ZeRO 2 reduce-scatters after every micro-batch; ZeRO 3 gathers and scatters every
                micro-batch, each hidden behind that micro-batch's compute where it can be.
    pipeline    step = m x tau + bubble, tau = the slowest stage's time per micro-batch (compute + exposed
                communication); bubble from DualPipe's table: 1F1B (pp-1)(F+B), DualPipe
                (pp/2-1)(F&B + B - 3W) with F&B = tau. DualPipe places stages s and pp-1-s on one GPU
                (2x parameters, (pp+1) micro-batches of activations), and needs an even pp and an even
                number of micro-batches >= 2 pp.
    optimizer   Adam is one streaming pass over the local optimizer shard (an `elementwise` op of the
                time model; its time is affine in the bytes, so it is evaluated as a + b x bytes).

Speed. Enumeration and evaluation are numpy arrays over all layouts. Whatever depends on only a few
layout fields is computed once per distinct key and gathered by index (`_lookup`): compute profiles per
(tp, micro-batch, precision), routed experts and all-to-all per (tp, micro-batch, ep, precision),
activations per (micro-batch, recomputation), parameters per (pp, schedule, tp), data-parallel
collectives per (pp, schedule, tp, dp, ep, ZeRO). The time model is therefore called once per distinct
op shape (a few thousand calls for a DeepSeek-V3 search, about 0.3 s), never per layout, and exactly:
no effective-throughput approximation is needed, except that the optimizer's streaming pass is affine
in its bytes. Pipeline stages holding the same kinds of layers are one position of the [positions,
layouts] arrays (at most 5 for DeepSeek-V3), so the arithmetic is a few hundred numpy operations per
chunk of 2048 layouts: about a million layouts per second on one core (bench/plan_speed.py).
`evaluate_reference` evaluates one layout at a time in plain Python (dsim.cost.memory.memory for 1F1B
memory, comm's functions called directly, every stage and layer in a loop); tests hold the two equal.

Serving (`plan_serving`): prefill or decode capacity of a deployment with data-parallel attention (or
tensor-parallel, `tp`) and expert-parallel routed experts, the batch bounded by the KV cache.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from dsim.config import ModelArgs
from dsim.cost import comm
from dsim.cost import timing
from dsim.cost.flops import flops
from dsim.cost.hardware import GPU, get_gpu, peak_flops
from dsim.cost.memory import (_replicated_under_tp, _stage_layers, stage_params, bytes_per_param, kv_cache_bytes_per_token,
                              layer_activation_bytes, memory, model_activation_bytes)
from dsim.cost.params import expert_params, is_moe_layer, params
from dsim.cost.timing import PlanOp, block_plan, op_kernels, op_time, step_plan

# ---------------------------------------------------------------------------------------------
# Choices and general assumptions
# ---------------------------------------------------------------------------------------------
RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("1f1b", "dualpipe")
MATMUL_DTYPES = ("bf16", "fp8")
ZERO_STAGES = (0, 1, 2, 3)
PHASES = ("prefill", "decode")

RESERVED_BYTES = 4e9            # CUDA context, NCCL and cuBLAS workspaces, allocator fragmentation (a round figure)
MAX_MICROBATCH_TOKENS = 32768   # searched micro-batches: powers of two up to this many tokens
PREFILL_TOKENS_PER_GPU = 16384  # serving: new prompt tokens one GPU takes per prefill step by default
GRAD_COMM_BYTES = 2.0           # gradients and parameters travel in bf16 (dsim.cost.comm.dp_volumes' default)
WEIGHT_DTYPE, GRAD_DTYPE, MASTER_DTYPE, ACT_DTYPE = "bf16", "fp32", "fp32", "bf16"

# Components whose GEMMs run in fp8 when the matmul precision is fp8. DeepSeek-V3 (sec. 3.3.1) keeps
# the embedding, the output head, the gate, the norms and the attention core in bf16/fp32.
FP8_COMPONENTS = ("attn_proj", "dense_ffn", "shared_experts")
# Ops that selective recomputation runs again in the backward (DeepSeek-V3 sec. 3.2.3: every RMSNorm
# and MLA's up-projections), by the labels of dsim.cost.timing.block_plan.
SELECTIVE_LABELS = ("wq_b", "wkv_b", "cat q, k")

ASSUMPTIONS = {
    "compute": "op times from dsim.cost.timing (kernels of dsim.model's PyTorch implementation), with the "
               "GPU's calibration: H100-SXM measurements; another GPU of the catalog borrows the H100's "
               "efficiencies applied to its own datasheet peaks",
    "fp8": "fp8 GEMMs for attention projections, dense FFN and experts (DeepSeek-V3's recipe); the routed "
           "experts' grouped GEMMs are scaled by the fp8/bf16 time ratio of a batched GEMM of the same shape "
           "(the time model has no fp8 grouped GEMM), plus one quantisation pass per GEMM input",
    "routing": "balanced expert load across expert-parallel ranks; within a rank, random routing "
               "(the time model's binomial expert load)",
    "overlap": "DualPipe hides expert all-to-all and pipeline sends behind the paired chunk's compute; "
               "1F1B hides neither; tensor-parallel all-reduces are never hidden; data-parallel collectives "
               "overlap one micro-batch's compute",
    "memory": f"bf16 weights and activations, fp32 gradients and master weights; {RESERVED_BYTES / 1e9:.0f} GB "
              "reserved per GPU for the CUDA context, communication buffers and fragmentation",
    "placement": "ranks ordered tp, then dp (ep inside it), then pp, 8 GPUs per node: tp inside a node, "
                 "pipeline neighbours on different nodes once tp x dp fills a node",
}


# ---------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_size(text: str | int | float, name: str = "size") -> float:
    """A count written with an optional K, M, B (or G) or T suffix: '14.8T' -> 1.48e13, '4k' -> 4000."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower().replace("_", "").replace(",", "")
        suffix = s[-1:] if s[-1:] in _SUFFIXES and s[-1:] != "" else ""
        try:
            value = float(s[:-1] if suffix else s) * _SUFFIXES[suffix]
        except ValueError:
            raise ValueError(f"{name} {text!r} is not a number with an optional K/M/B/T suffix "
                             f"(e.g. 14.8T, 4096, 62.9M)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {text!r}")
    return value


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _shard_args(args: ModelArgs, tp: int) -> ModelArgs:
    """The slice of the model one tensor-parallel rank computes: heads, FFN widths and vocabulary / tp
    (MLA's down-projections, norms and the gate stay whole, as in dsim.cost.memory)."""
    if tp == 1:
        return args
    change = dict(n_heads=args.n_heads // tp, inter_dim=args.inter_dim // tp,
                  moe_inter_dim=args.moe_inter_dim // tp, vocab_size=-(-args.vocab_size // tp))
    if args.attn_type == "gqa":
        change["n_kv_heads"] = args.kv_heads // tp
    return args.replace(**change)


def _tp_problem(args: ModelArgs, tp: int, gpus_per_node: int) -> str | None:
    """Why `tp` cannot split this model (None when it can)."""
    if tp > gpus_per_node or gpus_per_node % tp:
        return f"tp={tp} must divide the {gpus_per_node} GPUs of a node (tensor parallelism stays on NVLink)"
    for name, value in (("n_heads", args.n_heads), ("inter_dim", args.inter_dim),
                        ("moe_inter_dim", args.moe_inter_dim)):
        if value % tp:
            return f"tp={tp} must divide {name}={value}"
    if args.attn_type == "gqa" and args.kv_heads % tp:
        return f"tp={tp} must divide n_kv_heads={args.kv_heads}"
    return None


def _node_limit(args: ModelArgs, ep_nodes: int) -> int | None:
    """Nodes a token may reach: DeepSeek-V3's group-limited routing is node-limited routing when the
    expert groups map onto whole nodes (n_limited_groups groups -> that many nodes' worth)."""
    if args.n_expert_groups <= 1 or ep_nodes <= 1 or ep_nodes % args.n_expert_groups:
        return None
    return args.n_limited_groups * ep_nodes // args.n_expert_groups


# ---------------------------------------------------------------------------------------------
# The training job
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingJob:
    """What to train on what: the model, the cluster, the token budget and the batch.

    global_batch is in sequences of seq_len tokens per optimizer step (`TrainingJob.batch_from_tokens`
    converts a batch given in tokens).
    optimizer_dtype: Adam's moments ("fp32", or "bf16" as DeepSeek-V3 keeps them).
    calibration: the time model's efficiency constants (default: the GPU's committed calibration).
    """
    args: ModelArgs
    gpu: str | GPU = "H100-SXM"
    n_gpus: int = 256
    tokens: float = 1e12
    seq_len: int = 4096
    global_batch: int = 1024
    price_per_gpu_hour: float = 2.0
    gpus_per_node: int = 8
    optimizer_dtype: str = "fp32"
    reserved_bytes: float = RESERVED_BYTES
    calibration: timing.Calibration | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.args, ModelArgs):
            raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(self.args).__name__}")
        self.gpu = get_gpu(self.gpu)
        _check_int("n_gpus", self.n_gpus)
        _check_int("seq_len", self.seq_len)
        _check_int("global_batch", self.global_batch)
        _check_int("gpus_per_node", self.gpus_per_node)
        if self.n_gpus > self.gpus_per_node and self.n_gpus % self.gpus_per_node:
            raise ValueError(f"n_gpus={self.n_gpus} must be a multiple of gpus_per_node={self.gpus_per_node} "
                             f"(whole nodes) or at most one node")
        if not (isinstance(self.tokens, (int, float)) and self.tokens > 0):
            raise ValueError(f"tokens must be a positive number, got {self.tokens!r}")
        if not (isinstance(self.price_per_gpu_hour, (int, float)) and self.price_per_gpu_hour >= 0):
            raise ValueError(f"price_per_gpu_hour must be a number >= 0, got {self.price_per_gpu_hour!r}")
        if self.optimizer_dtype not in ("fp32", "bf16"):
            raise ValueError(f"optimizer_dtype must be 'fp32' or 'bf16', got {self.optimizer_dtype!r}")
        if not self.reserved_bytes >= 0:
            raise ValueError(f"reserved_bytes must be >= 0, got {self.reserved_bytes!r}")

    @staticmethod
    def batch_from_tokens(batch_tokens: float, seq_len: int) -> int:
        """Sequences per step for a global batch given in tokens (must be a whole number of sequences)."""
        seqs = batch_tokens / seq_len
        if abs(seqs - round(seqs)) > 1e-9 * seqs or round(seqs) < 1:
            raise ValueError(f"a global batch of {batch_tokens:,.0f} tokens is not a whole number of "
                             f"{seq_len}-token sequences")
        return int(round(seqs))

    @property
    def hbm_bytes(self) -> float:
        return float(self.gpu.hbm_bytes)

    @property
    def batch_tokens(self) -> int:
        return self.global_batch * self.seq_len


# ---------------------------------------------------------------------------------------------
# Precomputed quantities: everything a layout's numbers are made of
# ---------------------------------------------------------------------------------------------
class _OpTimes:
    """Times of ops and collectives for one model on one GPU, each computed once (memoised).

    Compute is returned as arrays [f, fb, w, sel]: forward seconds, forward + backward, the weight-gradient
    part of the backward, and what selective recomputation runs again."""

    def __init__(self, args: ModelArgs, gpu: GPU, calibration: timing.Calibration | None):
        self.args, self.gpu = args, gpu
        self.cal = calibration or timing.gpu_calibration(gpu)
        self._memo: dict[tuple, Any] = {}

    def memo(self, key: tuple, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def _op(self, p: PlanOp, dtype: str, backward: bool) -> float:
        key = ("op", p.op, dtype, backward, tuple(sorted(p.shape.items())))
        return self.memo(key, lambda: op_time(p.op, self.gpu, dtype, backward, self.cal, **p.shape))

    def _quant(self, elements: int, backward: bool) -> float:
        """One pass that quantises a GEMM input to fp8: read bf16, write fp8 (3 bytes per element)."""
        p = PlanOp("fp8", "quantize", "elementwise", dict(bytes=3 * int(elements), kernels=1), backward)
        return self._op(p, "bf16", backward)

    def sum_ops(self, ops: Iterable[PlanOp], dt: str) -> np.ndarray:
        """[forward, forward + backward, weight-gradient part, selective recomputation] of a list of ops
        (an op's backward counts only when the op has backward=True)."""
        f = fb = w = sel = 0.0
        for p in ops:
            d = "fp8" if (dt == "fp8" and p.op == "gemm" and p.component in FP8_COMPONENTS) else "bf16"
            tf = self._op(p, d, False)
            tfb = self._op(p, d, True) if p.backward else tf
            if d == "fp8":
                elems = p.shape["m"] * p.shape["k"] * p.shape.get("batch", 1)
                tf += self._quant(elems, False)
                tfb += self._quant(elems, p.backward)
            f, fb = f + tf, fb + tfb
            if p.op == "gemm":
                w += (tfb - tf) / 2          # dW is one of the two backward matmuls
            if p.op == "rmsnorm" or p.label.startswith(SELECTIVE_LABELS):
                sel += tf
        return np.array([f, fb, w, sel])

    def expert_time(self, tokens: int, experts: int, moe_inter: int, dt: str, train: bool) -> np.ndarray:
        """[f, fb, w, 0] of the routed experts on one GPU: `tokens` local tokens whose top-k copies land
        (balanced) on `experts` local experts of width moe_inter. The time model's `moe_ffn` op routes
        over its own experts; the router GEMM is corrected to score all n_routed_experts."""
        def build() -> np.ndarray:
            a = self.args
            K, E, D = a.n_activated_experts, a.n_routed_experts, a.dim
            # tokens * K rows over `experts` groups; with fewer local experts than K, keep the rows.
            toks, k = (tokens, K) if experts >= K else (-(-tokens * K // experts), experts)
            shape = dict(tokens=toks, hidden=D, moe_inter=moe_inter, experts=experts, top_k=k,
                         route_norm=a.renormalize)
            res = []
            for backward in ((False, True) if train else (False,)):
                total, grouped = self.memo(("moe_ffn", tuple(shape.items()), backward), lambda: _moe_ffn(
                    op_kernels("moe_ffn", self.gpu, "bf16", backward, self.cal, **shape)))

                def router(m: int, n: int) -> float:
                    return self._op(PlanOp("gate", "router", "gemm", dict(m=m, n=n, k=D, batch=1), backward),
                                    "fp32", backward)
                total += router(tokens, E) - router(toks, experts)
                if dt == "fp8":
                    rows = -(-toks * k // experts)
                    shp = PlanOp("routed_experts", "expert gemm", "gemm",
                                 dict(m=rows, n=moe_inter, k=D, batch=experts), backward)
                    ratio = self._op(shp, "fp8", backward) / self._op(shp, "bf16", backward)
                    total += grouped * (ratio - 1) + self._quant(toks * k * (D + moe_inter), backward)
                    grouped *= ratio
                res.append((total, grouped))
            (f, gf), (fb, gfb) = res[0], res[-1]
            return np.array([f, fb, (gfb - gf) / 2, 0.0])
        return self.memo(("experts", tokens, experts, moe_inter, dt, train), build)

    def coll(self, kind: str, nbytes: float, n: int, rpn: int) -> float:
        """One collective (dsim.cost.comm.collective_time) over n ranks, rpn of them per node."""
        if n <= 1 or nbytes <= 0:
            return 0.0
        return self.memo(("coll", kind, float(nbytes), n, rpn),
                         lambda: comm.collective_time(kind, nbytes, n, self.gpu, rpn))

    def a2a(self, tokens: int, ep: int, rpn: int, dt: str, n_experts: int | None = None) -> float:
        """Forward dispatch (fp8 with its scales, or bf16) + combine (bf16) of one MoE block: seconds on a
        GPU that sends `tokens` tokens to ep expert-parallel ranks, rpn of them per node."""
        a = self.args
        if ep == 1 or not a.is_moe:
            return 0.0
        return self.memo(("a2a", tokens, ep, rpn, dt, n_experts),
                         lambda: _a2a_time(a, self.gpu, tokens, ep, rpn, dt, n_experts))


def _moe_ffn(kernels: list) -> tuple[float, float]:
    """(all kernels' seconds, the grouped GEMMs' seconds) of the time model's MoE layer."""
    return sum(k.time_s for k in kernels), sum(k.time_s for k in kernels if k.kind == "grouped_gemm")


def _a2a_time(a: ModelArgs, gpu: GPU, tokens: int, ep: int, rpn: int, dt: str, n_experts: int | None) -> float:
    """dsim.cost.comm.moe_dispatch_time for the dispatch and the combine, with the node limit of
    group-limited routing when the groups map onto nodes."""
    E = n_experts or a.n_routed_experts
    limit = _node_limit(a, max(1, ep // rpn))
    t = 0.0
    for bpe in ((bytes_per_param("fp8") if dt == "fp8" else 2.0), 2.0):
        try:
            t += comm.moe_dispatch_time(tokens, a.dim, a.n_activated_experts, E, ep, gpu, rpn, limit, bpe)
        except ValueError:     # a node limit the expert counts cannot honour: route without it
            t += comm.moe_dispatch_time(tokens, a.dim, a.n_activated_experts, E, ep, gpu, rpn, None, bpe)
    return t


class _Tables(_OpTimes):
    """Per-model training quantities, computed once per distinct key from the cost modules."""

    def __init__(self, job: TrainingJob):
        super().__init__(job.args, job.gpu, job.calibration)
        a = self.args
        self.job = job
        self.moe_layer = a.n_dense_layers if a.is_moe else 0
        self.layer_is_moe = [a.is_moe and is_moe_layer(a, i) for i in range(a.n_layers)]
        self.mtp_is_moe = a.is_moe
        self._layer_params()
        self.flops_per_seq = float(flops(a, 1, job.seq_len, "train").total_causal)
        self.peak = peak_flops(self.gpu, "bf16")
        # Adam: read the fp32 gradient, read + write master weights and both moments, write the bf16 weight.
        ob = bytes_per_param(job.optimizer_dtype)
        self.adam_bytes_per_param = (bytes_per_param(GRAD_DTYPE) + 2 * bytes_per_param(MASTER_DTYPE) + 4 * ob
                                     + bytes_per_param(WEIGHT_DTYPE))
        self.state_bytes = dict(weights=bytes_per_param(WEIGHT_DTYPE), gradients=bytes_per_param(GRAD_DTYPE),
                                optimizer=bytes_per_param(MASTER_DTYPE) + 2 * ob)
        # the optimizer is one streaming elementwise pass: its time is affine in the bytes it moves
        t0 = op_time("elementwise", self.gpu, "bf16", False, self.cal, bytes=0)
        t1 = op_time("elementwise", self.gpu, "bf16", False, self.cal, bytes=10 ** 10)
        self.opt_a, self.opt_b = t0, (t1 - t0) / 1e10

    # ---- parameters ----
    def _layer_params(self) -> None:
        """Parameters of one dense block, one MoE block, the first stage's extras (embedding) and the last
        stage's (final norm, head, MTP), each split as (replicated under TP, split by TP, routed experts)
        with dsim.cost.memory's rule for what TP replicates."""
        a = self.args
        groups = {k: [0.0, 0.0, 0.0] for k in ("dense", "moe", "first", "last")}
        counts = params(a).modules
        dense_id = 0 if a.n_dense_layers else None
        moe_id = a.n_dense_layers if a.is_moe else None
        for name, n in counts.items():
            parts = name.split(".")
            if parts[0] == "layers":
                i = int(parts[1])
                if i not in (dense_id, moe_id):
                    continue                        # every block of a kind has the same parameters
                g = groups["dense" if i == dense_id else "moe"]
            else:                                   # embed -> first stage; norm, head, mtp.* -> last
                g = groups["first" if parts[0] == "embed" else "last"]
            g[2 if name.endswith("ffn.experts") else (0 if _replicated_under_tp(name) else 1)] += n
        self.params_by_group = {k: np.array(v) for k, v in groups.items()}
        self.tied_embed = float(counts["embed"]) if a.tie_embeddings else 0.0

    def params_per_tp(self, tp: int) -> dict[str, tuple[float, float]]:
        """group -> (non-expert parameters on one TP rank, routed-expert parameters on it before / ep)."""
        return self.memo(("params", tp), lambda: {k: (v[0] + v[1] / tp, v[2] / tp)
                                                  for k, v in self.params_by_group.items()})

    def largest_block(self, tp: int, ep: int) -> float:
        """Parameters of the largest block on one GPU (what ZeRO-3 gathers ahead of use)."""
        p = self.params_per_tp(tp)
        return max(p["dense"][0] if self.args.n_dense_layers else 0.0,
                   p["moe"][0] + p["moe"][1] / ep if self.args.is_moe else 0.0)

    # ---- activations ----
    def activations(self, mb: int, rc: str) -> tuple[float, float, float]:
        """Bytes one micro-batch keeps (one GPU, before / tp): a dense block, an MoE block, and the final
        norm, logits and MTP modules."""
        def build() -> tuple[float, float, float]:
            a, S = self.args, self.job.seq_len
            dense = layer_activation_bytes(a, 0, mb, S, ACT_DTYPE, "cuda", rc) if a.n_dense_layers else 0
            moe = layer_activation_bytes(a, self.moe_layer, mb, S, ACT_DTYPE, "cuda", rc) if a.is_moe else 0
            head = model_activation_bytes(a, mb, S, ACT_DTYPE, "cuda", rc, layers=range(0), head=True)
            return float(dense), float(moe), float(head)
        return self.memo(("act", mb, rc), build)

    # ---- compute ----
    def profile(self, tp: int, mb: int, dt: str) -> dict[str, np.ndarray]:
        """Per micro-batch of mb sequences on one TP rank: a dense block, an MoE block without its routed
        experts, the embedding, the head (final norm, logits, loss) and MTP's eh_proj (the ops of
        dsim.cost.timing.block_plan / step_plan for the rank's slice of the model)."""
        def build() -> dict[str, np.ndarray]:
            a, S = _shard_args(self.args, tp), self.job.seq_len
            out = {"dense": np.zeros(4), "moe": np.zeros(4)}
            if a.n_dense_layers:
                out["dense"] = self.sum_ops(block_plan(a, 0, mb, S, 0, "train"), dt)
            if a.is_moe:
                out["moe"] = self.sum_ops([p for p in block_plan(a, self.moe_layer, mb, S, 0, "train")
                                           if p.op != "moe_ffn"], dt)
            one = a.replace(n_layers=1, n_dense_layers=min(a.n_dense_layers, 1), n_mtp_layers=0)
            extras = [p for p in step_plan(one, mb, S, "train") if not p.label.startswith("layers.")]
            out["embed"] = self.sum_ops([p for p in extras if p.component == "embedding"], dt)
            out["head"] = self.sum_ops([p for p in extras if p.component != "embedding"], dt)
            eh = PlanOp("mtp", "eh_proj", "gemm", dict(m=mb * S, n=a.dim, k=2 * a.dim, batch=1), True)
            out["eh_proj"] = self.sum_ops([eh], dt)
            return out
        return self.memo(("profile", tp, mb, dt), build)

    def experts(self, tp: int, mb: int, ep: int, dt: str) -> np.ndarray:
        """The routed experts of one MoE block on one GPU: mb sequences, n_routed_experts / ep experts
        of width moe_inter_dim / tp."""
        a = self.args
        if not a.is_moe:
            return np.zeros(4)
        return self.expert_time(mb * self.job.seq_len, a.n_routed_experts // ep, a.moe_inter_dim // tp, dt, True)

    # ---- communication ----
    def tp_allreduce(self, tp: int, mb: int) -> float:
        """One tensor-parallel all-reduce of a block's activations (bf16; with sequence parallelism a
        reduce-scatter + all-gather of the same bytes)."""
        return self.coll("all_reduce", mb * self.job.seq_len * self.args.dim * 2.0, tp, self.job.gpus_per_node)

    def ep_a2a(self, tp: int, mb: int, ep: int, dt: str) -> float:
        """Dispatch + combine of one MoE block for a micro-batch (each TP rank sends its 1/tp of the tokens)."""
        return self.a2a(-(-mb * self.job.seq_len // tp), ep, max(1, self.job.gpus_per_node // tp), dt)

    def p2p(self, tp: int, mb: int, cross_node: bool) -> float:
        """One pipeline send of a micro-batch's activations (bf16, sequence-parallel: / tp)."""
        nbytes = mb * self.job.seq_len * self.args.dim * 2.0 / tp
        return self.coll("send_recv", nbytes, 2, 1 if cross_node else self.job.gpus_per_node)

    def dp_times(self, n_params: float, dp: int, zero: int, rpn: int) -> tuple[float, float]:
        """(reduce seconds, gather seconds) per step for `n_params` parameters over dp ranks
        (dsim.cost.comm.dp_volumes: ZeRO 0 all-reduce; 1-2 reduce-scatter + all-gather; 3 two all-gathers
        + reduce-scatter)."""
        n = int(round(n_params))
        if dp <= 1 or n == 0:
            return 0.0, 0.0

        def build() -> tuple[float, float]:
            red = gat = 0.0
            for v in comm.dp_volumes(n, dp, zero, GRAD_COMM_BYTES):
                t = v.calls * self.coll(v.kind, v.nbytes, v.n_ranks, rpn)
                if v.kind == "all_gather":
                    gat += t
                else:
                    red += t
            return red, gat
        return self.memo(("dp", n, dp, zero, rpn), build)

    def optimizer_time(self, shard_params: np.ndarray | float) -> np.ndarray | float:
        """Adam over `shard_params` parameters: a + b x bytes (one streaming pass)."""
        return self.opt_a + self.opt_b * self.adam_bytes_per_param * shard_params

    # ---- per pipeline position, padded to a common width (padding: zero counts) ----
    def padded_columns(self, pp: int, schedule: str, width: int) -> np.ndarray:
        """Rows of `width` positions (padding: zeros) for the evaluation: for memory the counts n_dense,
        n_moe, last and inflight; for compute the counts times the share a GPU runs per micro-batch
        (n_dense, n_moe, first, last), and the blocks and MoE blocks (MTP's included) it runs."""
        def build() -> np.ndarray:
            c = self.stage_columns(pp, schedule)
            share, n_mtp = c["compute"], self.args.n_mtp_layers
            rows = (c["n_dense"], c["n_moe"], c["last"], c["inflight"], share * c["n_dense"], share * c["n_moe"],
                    share * c["first"], share * c["last"], share * (c["n_dense"] + c["n_moe"] + n_mtp * c["last"]),
                    share * (c["n_moe"] + (n_mtp if self.mtp_is_moe else 0) * c["last"]))
            out = np.zeros((len(rows), width))
            for k, row in enumerate(rows):
                out[k, :len(row)] = row
            return out.ravel()
        return self.memo(("padded", pp, schedule, width), build)

    def column_params(self, pp: int, schedule: str, tp: int, width: int) -> np.ndarray:
        """[non-expert parameters per position (width), routed-expert parameters per position before / ep]."""
        def build() -> np.ndarray:
            cols, p = self.stage_columns(pp, schedule), self.params_per_tp(tp)
            nd, nm, first, last = (cols[k] for k in ("n_dense", "n_moe", "first", "last"))
            dense = nd * p["dense"][0] + nm * p["moe"][0] + first * p["first"][0] + last * p["last"][0]
            dense = dense + self.tied_embed / tp * last * (1 - first)   # a tied head away from the embedding
            out = np.zeros((2, width))
            out[0, :len(nd)], out[1, :len(nd)] = dense, nm * p["moe"][1] + last * p["last"][1]
            return out.ravel()
        return self.memo(("colparams", pp, schedule, tp, width), build)

    def column_dp(self, pp: int, schedule: str, tp: int, dp: int, ep: int, zero: int, width: int) -> np.ndarray:
        """[reduce seconds per position, gather seconds per position]: non-expert parameters over dp
        ranks, routed experts over dp / ep ranks (dsim.cost.comm.dp_volumes and collective_time)."""
        def build() -> np.ndarray:
            g = self.job.gpus_per_node
            p = self.column_params(pp, schedule, tp, width).reshape(2, width)
            out = np.zeros((2, width))
            for col in range(width):
                r1, g1 = self.dp_times(p[0, col], dp, zero, max(1, g // tp))
                r2, g2 = self.dp_times(p[1, col] / ep, dp // ep, zero, max(1, g // (tp * ep)))
                out[:, col] = r1 + r2, g1 + g2
            return out.ravel()
        return self.memo(("coldp", pp, schedule, tp, dp, ep, zero, width), build)

    # ---- pipeline stages ----
    def stage_columns(self, pp: int, schedule: str) -> dict[str, np.ndarray]:
        """The distinct pipeline positions of a pp-stage pipeline, as columns of the evaluation.

        1F1B: one column per distinct stage (numbers of dense and MoE layers, first, last); of stages
        alike, the earliest keeps the most micro-batches (pp - s), so it stands for all of them.
        DualPipe: one column per distinct pair (s, pp-1-s) held by one GPU; counts are the pair's sums.
        Returns the counts n_dense, n_moe, first, last and two factors: `compute` (the share of the
        counts a GPU runs per micro-batch: 1, or 1/2 for a DualPipe pair) and `inflight` (micro-batches
        of activations kept, per unit of the counts: pp - s, or (pp + 1) / 2 for a pair)."""
        def build() -> dict[str, np.ndarray]:
            stages = _stage_layers(self.args.n_layers, pp)
            sig = []
            for s, layers in enumerate(stages):
                nm = sum(self.layer_is_moe[i] for i in layers)
                sig.append((len(layers) - nm, nm, int(s == 0), int(s == pp - 1)))
            cols: dict[tuple, float] = {}
            if schedule == "1f1b":
                for s, g in enumerate(sig):
                    cols.setdefault(g, max(1, pp - s))
                share = 1.0
            else:
                for s in range(pp // 2):
                    g = tuple(x + y for x, y in zip(sig[s], sig[pp - 1 - s]))
                    cols.setdefault(g, (pp + 1) / 2)
                share = 0.5
            arr = np.array(list(cols), dtype=float).reshape(-1, 4)
            return dict(n_dense=arr[:, 0], n_moe=arr[:, 1], first=arr[:, 2], last=arr[:, 3],
                        inflight=np.array(list(cols.values()), dtype=float), compute=np.full(len(cols), share))
        return self.memo(("stages", pp, schedule), build)


_TABLE_CACHE: dict[str, _Tables] = {}


def _tables(job: TrainingJob) -> _Tables:
    """The job's tables, shared between jobs that differ only in cluster size, budget or batch."""
    key = json.dumps([job.args.to_dict(), job.gpu.name, job.seq_len, job.gpus_per_node, job.optimizer_dtype,
                      None if job.calibration is None else job.calibration.to_dict()], sort_keys=True, default=str)
    if key not in _TABLE_CACHE:
        if len(_TABLE_CACHE) > 16:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = _Tables(job)
    return _TABLE_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Enumerating layouts
# ---------------------------------------------------------------------------------------------
FIELDS = ("tp", "pp", "dp", "ep", "zero", "micro_batch", "recompute", "schedule", "dtype")


@dataclass
class Layouts:
    """Candidate layouts as parallel integer arrays (recompute, schedule, dtype are indices into
    RECOMPUTE, SCHEDULES, MATMUL_DTYPES); n_micro = micro-batches per step per pipeline."""
    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    zero: np.ndarray
    mb: np.ndarray
    rc: np.ndarray
    sched: np.ndarray
    dt: np.ndarray
    n_micro: np.ndarray

    def __len__(self) -> int:
        return len(self.tp)

    def take(self, idx: np.ndarray) -> "Layouts":
        return Layouts(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def row(self, i: int) -> dict[str, Any]:
        return dict(tp=int(self.tp[i]), pp=int(self.pp[i]), dp=int(self.dp[i]), ep=int(self.ep[i]),
                    zero=int(self.zero[i]), micro_batch=int(self.mb[i]), recompute=RECOMPUTE[self.rc[i]],
                    schedule=SCHEDULES[self.sched[i]], dtype=MATMUL_DTYPES[self.dt[i]],
                    n_microbatches=int(self.n_micro[i]))


def _check_fixed(job: TrainingJob, fixed: dict[str, Any]) -> None:
    """Clear errors for user-fixed layout values that cannot work on their own."""
    a, N = job.args, job.n_gpus
    unknown = sorted(set(fixed) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown layout field(s) {', '.join(unknown)}: choose from {', '.join(FIELDS)}")
    for name in ("tp", "pp", "dp", "ep", "micro_batch"):
        if fixed.get(name) is not None:
            _check_int(name, fixed[name])
    tp, pp, dp, ep = (fixed.get(k) for k in ("tp", "pp", "dp", "ep"))
    if tp is not None:
        if N % tp:
            raise ValueError(f"tp={tp} does not divide the {N} GPUs")
        problem = _tp_problem(a, tp, job.gpus_per_node)
        if problem:
            raise ValueError(problem)
    if pp is not None:
        if N % pp:
            raise ValueError(f"pp={pp} does not divide the {N} GPUs")
        if pp > a.n_layers:
            raise ValueError(f"pp={pp} must be at most n_layers={a.n_layers}")
    if dp is not None and N % dp:
        raise ValueError(f"dp={dp} does not divide the {N} GPUs")
    for names in (("tp", "pp"), ("tp", "dp"), ("pp", "dp"), ("tp", "pp", "dp")):
        vals = [fixed.get(k) for k in names]
        if all(v is not None for v in vals):
            prod = math.prod(vals)
            if (len(names) == 3 and prod != N) or N % prod:
                what = " x ".join(f"{k}={v}" for k, v in zip(names, vals))
                raise ValueError(f"{what} = {prod} does not {'equal' if len(names) == 3 else 'divide'} the {N} GPUs")
    if ep is not None:
        if not a.is_moe and ep != 1:
            raise ValueError(f"ep={ep} needs routed experts; {a.name} is dense: use ep=1")
        if a.is_moe and a.n_routed_experts % ep:
            raise ValueError(f"ep={ep} must divide n_routed_experts={a.n_routed_experts}")
        if dp is not None and dp % ep:
            raise ValueError(f"ep={ep} must divide dp={dp} (experts are split inside data parallelism)")
        if N % ep:
            raise ValueError(f"ep={ep} does not divide the {N} GPUs")
    if fixed.get("zero") is not None and fixed["zero"] not in ZERO_STAGES:
        raise ValueError(f"zero must be one of {ZERO_STAGES}, got {fixed['zero']!r}")
    if fixed.get("recompute") is not None and fixed["recompute"] not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {fixed['recompute']!r}")
    if fixed.get("schedule") is not None and fixed["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {fixed['schedule']!r}")
    if fixed.get("dtype") is not None:
        if fixed["dtype"] not in MATMUL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {fixed['dtype']!r}")
        if fixed["dtype"] == "fp8" and job.gpu.fp8_flops is None:
            raise ValueError(f"dtype='fp8' is not supported by {job.gpu.name} (no fp8 tensor cores)")
    mb = fixed.get("micro_batch")
    if mb is not None and job.global_batch % mb:
        raise ValueError(f"micro_batch={mb} does not divide the global batch of {job.global_batch} sequences")


def enumerate_layouts(job: TrainingJob, **fixed: Any) -> tuple[Layouts, dict[str, int]]:
    """Every layout of the job's GPUs that respects `fixed` (layout fields set to a value), and how many
    candidates were structurally invalid, by reason.

    Searched values: tp | gpus_per_node that splits the model's heads and widths; pp | GPUs / tp up to
    n_layers; ep | dp and | n_routed_experts (1 for dense models); ZeRO 0-3; micro-batches of powers of
    two up to MAX_MICROBATCH_TOKENS tokens; all recomputation levels; both schedules (1F1B only when
    pp = 1); bf16 and, where the GPU has fp8 tensor cores, fp8."""
    fixed = {k: v for k, v in fixed.items() if v is not None}
    _check_fixed(job, fixed)
    a, N, S, B = job.args, job.n_gpus, job.seq_len, job.global_batch
    g = job.gpus_per_node
    tps = [fixed["tp"]] if "tp" in fixed else [t for t in _divisors(N) if _tp_problem(a, t, g) is None]
    zeros = [fixed["zero"]] if "zero" in fixed else list(ZERO_STAGES)
    mb_max = max(1, MAX_MICROBATCH_TOKENS // S)
    mbs = [fixed["micro_batch"]] if "micro_batch" in fixed else [1 << i for i in range(7) if (1 << i) <= mb_max]
    rcs = [RECOMPUTE.index(fixed["recompute"])] if "recompute" in fixed else list(range(len(RECOMPUTE)))
    dts = ([MATMUL_DTYPES.index(fixed["dtype"])] if "dtype" in fixed else
           [i for i, d in enumerate(MATMUL_DTYPES) if d != "fp8" or job.gpu.fp8_flops is not None])
    invalid: dict[str, int] = {}

    def reject(reason: str, count: int) -> None:
        if count:
            invalid[reason] = invalid.get(reason, 0) + int(count)

    parts: list[dict[str, np.ndarray]] = []
    for tp in tps:
        pps = [fixed["pp"]] if "pp" in fixed else [p for p in _divisors(N // tp) if p <= a.n_layers]
        for pp in pps:
            if (N // tp) % pp:
                continue
            dp = N // (tp * pp)
            if "dp" in fixed and fixed["dp"] != dp:
                continue
            if "ep" in fixed:
                eps = [fixed["ep"]] if dp % fixed["ep"] == 0 else []
            else:
                eps = [e for e in _divisors(dp) if a.n_routed_experts % e == 0] if a.is_moe else [1]
            scheds = ([SCHEDULES.index(fixed["schedule"])] if "schedule" in fixed else
                      ([0] if pp == 1 else [0, 1]))
            grid = np.array(np.meshgrid(eps, zeros, mbs, rcs, scheds, dts, indexing="ij")).reshape(6, -1)
            if grid.size == 0:
                continue
            ep, zero, mb, rc, sched, dt = grid
            n = len(ep)
            ok = np.ones(n, dtype=bool)
            # (1) the global batch must split into dp replicas of whole micro-batches
            bad = B % (dp * mb) != 0
            reject(f"global batch of {B} sequences not divisible by dp x micro-batch", (bad & ok).sum())
            ok &= ~bad
            n_micro = np.where(bad, 1, B // np.maximum(dp * mb, 1))
            # (2) DualPipe: even pp, even number of micro-batches >= 2 pp
            bad = (sched == 1) & ((pp % 2 == 1) | (n_micro % 2 == 1) | (n_micro < 2 * pp))
            reject("dualpipe needs an even pp and an even number of micro-batches >= 2 pp", (bad & ok).sum())
            ok &= ~bad
            # (3) ZeRO-2/3 shard gradients or weights every micro-batch: not combined with pipelines
            bad = (zero >= 2) & (pp > 1)
            reject("ZeRO-2/3 is not combined with pipeline parallelism", (bad & ok).sum())
            ok &= ~bad
            # (4) communication groups must fill whole nodes once they leave one
            rpn = max(1, g // tp)
            bad = (ep > rpn) & (ep % rpn != 0)
            reject("expert-parallel group does not fill whole nodes", (bad & ok).sum())
            ok &= ~bad
            if dp > rpn and dp % rpn:
                reject("data-parallel group does not fill whole nodes", ok.sum())
                ok[:] = False
            rpn_e = np.maximum(1, g // (tp * ep))
            bad = (dp // ep > rpn_e) & ((dp // ep) % rpn_e != 0)
            reject("expert data-parallel group does not fill whole nodes", (bad & ok).sum())
            ok &= ~bad
            if ok.any():
                parts.append(dict(tp=np.full(ok.sum(), tp), pp=np.full(ok.sum(), pp), dp=np.full(ok.sum(), dp),
                                  ep=ep[ok], zero=zero[ok], mb=mb[ok], rc=rc[ok], sched=sched[ok], dt=dt[ok],
                                  n_micro=n_micro[ok]))
    if not parts:
        what = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "no fixed choices"
        why = "; ".join(f"{k}: {v}" for k, v in invalid.items()) or "no tp x pp x dp splits the GPUs that way"
        raise ValueError(f"no valid layout of {N} GPUs with {what} ({why})")
    cat = {k: np.concatenate([p[k] for p in parts]).astype(np.int64) for k in parts[0]}
    return Layouts(**cat), invalid


# ---------------------------------------------------------------------------------------------
# Evaluating layouts: numpy over all of them
# ---------------------------------------------------------------------------------------------
OUTPUTS = ("step_time_s", "compute_s", "exposed_comm_s", "bubble_s", "exposed_tp_s", "exposed_ep_s", "exposed_pp_s",
           "exposed_dp_s", "weights", "gradients", "optimizer", "activations", "buffers", "memory_per_gpu_bytes")
EXPOSED_KINDS = {"tensor": "exposed_tp_s", "expert": "exposed_ep_s", "pipeline": "exposed_pp_s", "data": "exposed_dp_s"}
MEMORY_KINDS = ("weights", "gradients", "optimizer", "activations", "buffers")
REASONS = ("weights alone exceed the GPU memory", "weights, gradients and optimizer states exceed the GPU memory",
           "activations exceed the memory left after the model states")


def _codes(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each row's value) of a column of small non-negative integers, in O(n)."""
    present = np.zeros(int(col.max()) + 1, dtype=bool)
    present[col] = True
    values = np.flatnonzero(present)
    return values, (np.cumsum(present) - 1)[col]


def _combine(keys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct combined codes of integer key columns (each given as `_codes(column)`), and for every row
    the index of its combined code."""
    code = np.zeros(len(keys[0][1]), dtype=np.int64)
    for values, idx in keys:
        code = code * len(values) + idx
    return _codes(code)


def _decode(uniq: np.ndarray, keys: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, ...]]:
    """The key tuples of combined codes."""
    out = []
    for c in uniq.tolist():
        key = []
        for values, _ in reversed(keys):
            c, r = divmod(c, len(values))
            key.append(int(values[r]))
        out.append(tuple(reversed(key)))
    return out


def _group(keys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The distinct rows of integer key columns (each given as `_codes(column)`) and, for every row, the
    index of its distinct key."""
    uniq, inv = _combine(keys)
    return _decode(uniq, keys), inv


def _lookup(T: _Tables, name: str, keys: list[tuple[np.ndarray, np.ndarray]], fn) -> tuple[np.ndarray, np.ndarray]:
    """fn(*key) once per distinct key of the key columns: (values [len(fn(...)), keys], one column per
    distinct key, and each row's column index). The table is memoised with the job's tables."""
    uniq, inv = _combine(keys)
    memo_key = ("lookup", name, uniq.tobytes(), tuple(v.tobytes() for v, _ in keys))
    vals = T.memo(memo_key, lambda: np.ascontiguousarray(np.array(
        [np.atleast_1d(np.asarray(fn(*k), dtype=float)) for k in _decode(uniq, keys)]).T))
    return vals, inv


def _first_max(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a [positions, layouts] array: the flat index (into a.ravel()) of each layout's first maximum,
    and the maximum. (np.argmax along axis 0 and a[k, i] indexing are several times slower.)"""
    mx = a.max(axis=0)
    k = np.full(a.shape[1], a.shape[0] - 1)
    for c in range(a.shape[0] - 2, -1, -1):
        k = np.where(a[c] == mx, c, k)
    return k * a.shape[1] + np.arange(a.shape[1]), mx


def evaluate(job: TrainingJob, L: Layouts, chunk: int = 2048, progress: Any = None) -> dict[str, np.ndarray]:
    """Step time (with its breakdown), memory per GPU (by kind, busiest GPU), whether it fits and why not,
    for every layout of `L`, as arrays (see OUTPUTS; `fits` bool, `reason` an index into REASONS or -1).

    Every quantity that depends on a few fields is computed per distinct key (`_lookup`) and gathered per
    layout; the pipeline positions of each (pp, schedule) are padded to one width, so the arithmetic is
    one pass over [positions, layouts] arrays, in chunks that stay in cache. `progress`: a tqdm bar or None."""
    T = _tables(job)
    f = {name: _codes(getattr(L, name)) for name in ("tp", "pp", "dp", "ep", "zero", "mb", "rc", "sched", "dt")}
    width = max(len(T.stage_columns(pp, SCHEDULES[s])["compute"]) for pp, s in _group([f["pp"], f["sched"]])[0])
    dts = lambda dt: MATMUL_DTYPES[dt]                                         # noqa: E731
    tables = dict(
        prof=_lookup(T, "prof", [f["tp"], f["mb"], f["dt"]], lambda tp, mb, dt: np.concatenate(
            [T.profile(tp, mb, dts(dt))[k] for k in ("dense", "moe", "embed", "head", "eh_proj")])),
        expt=_lookup(T, "expt", [f["tp"], f["mb"], f["ep"], f["dt"]], lambda tp, mb, ep, dt: np.append(
            T.experts(tp, mb, ep, dts(dt)), T.ep_a2a(tp, mb, ep, dts(dt)))),
        comm1=_lookup(T, "comm1", [f["tp"], f["mb"], f["dp"]], lambda tp, mb, dp: [
            T.tp_allreduce(tp, mb), T.p2p(tp, mb, tp * dp >= job.gpus_per_node)]),
        acts=_lookup(T, "acts", [f["mb"], f["rc"]], lambda mb, rc: T.activations(mb, RECOMPUTE[rc])),
        cols=_lookup(T, f"cols{width}", [f["pp"], f["sched"]],
                     lambda pp, s: T.padded_columns(pp, SCHEDULES[s], width)),
        params=_lookup(T, f"params{width}", [f["pp"], f["sched"], f["tp"]],
                       lambda pp, s, tp: T.column_params(pp, SCHEDULES[s], tp, width)),
        dp=_lookup(T, f"dp{width}", [f["pp"], f["sched"], f["tp"], f["dp"], f["ep"], f["zero"]],
                   lambda pp, s, tp, dp, ep, z: T.column_dp(pp, SCHEDULES[s], tp, dp, ep, z, width)),
        block=_lookup(T, "block", [f["tp"], f["ep"]], T.largest_block),
    )
    out = {k: np.zeros(len(L)) for k in OUTPUTS}
    for start in range(0, len(L), chunk):
        r = slice(start, min(len(L), start + chunk))
        x = {name: np.take(vals, inv[r], axis=1) for name, (vals, inv) in tables.items()}
        _evaluate_rows(job, T, L, r, x, width, out)
        if progress is not None:
            progress.update(r.stop - r.start)
    hbm = job.hbm_bytes
    states = out["weights"] + out["buffers"] + out["gradients"] + out["optimizer"]
    out["fits"] = out["memory_per_gpu_bytes"] <= hbm
    out["reason"] = np.where(out["fits"], -1, np.where(out["weights"] + out["buffers"] > hbm, 0,
                                                       np.where(states > hbm, 1, 2)))
    return out


def _evaluate_rows(job: TrainingJob, T: _Tables, L: Layouts, r: slice, x: dict[str, np.ndarray], width: int,
                   out: dict[str, np.ndarray]) -> None:
    """The arithmetic for layouts `r`: [positions, layouts] arrays (per-position stage counts times
    per-layout vectors), then the slowest position for time and the fullest for memory.

    Positions come first so that every per-layout vector broadcasts along the long, contiguous axis;
    choices (schedule, recomputation, ZeRO stage) are 0/1 weights rather than np.where, which is
    several times slower than arithmetic on these arrays."""
    n = r.stop - r.start
    n_mtp = float(job.args.n_mtp_layers)
    tp, dp, ep, zero, m = (v[r].astype(float) for v in (L.tp, L.dp, L.ep, L.zero, L.n_micro))
    pp = L.pp[r]
    rc, dual = L.rc[r], (L.sched[r] == 1).astype(float)
    sel_rc, full = (rc == 1).astype(float), (rc == 2).astype(float)
    z01, z2, z3 = (zero <= 1).astype(float), (zero == 2).astype(float), (zero == 3).astype(float)
    nd, nm, last, inflight, s_nd, s_nm, s_first, s_last, blocks, moe_blocks = x["cols"].reshape(10, width, n)

    # ---- compute per micro-batch: forward F, backward B (with recomputation), weight gradients W ----
    # (s_* are the stage counts times the share a GPU runs per micro-batch: 1, or 1/2 for a DualPipe pair)
    d, mo, emb, hd, eh = x["prof"].reshape(5, 4, n)        # each [f, fb, w, sel] x layouts
    moe = mo + x["expt"][:4]                                # an MoE block with its routed experts
    rec_d = sel_rc * d[3] + full * d[0]
    rec_m = sel_rc * mo[3] + full * moe[0]
    blk, rec_b = (moe, rec_m) if T.mtp_is_moe else (d, rec_d)   # the block inside an MTP module
    last_f = hd[0] + n_mtp * (blk[0] + eh[0] + hd[0])
    last_b = hd[1] - hd[0] + n_mtp * (blk[1] - blk[0] + rec_b + eh[1] - eh[0] + hd[1] - hd[0])
    last_w = hd[2] + n_mtp * (blk[2] + eh[2] + hd[2])
    F = s_nd * d[0] + s_nm * moe[0] + s_first * emb[0] + s_last * last_f
    B = (s_nd * (d[1] - d[0] + rec_d) + s_nm * (moe[1] - moe[0] + rec_m) + s_first * (emb[1] - emb[0])
         + s_last * last_b)
    FB = F + B

    # ---- communication per micro-batch, and what of it stays exposed ----
    tp_comm = blocks * (x["comm1"][0] * (4 + 2 * full))
    ep_comm = moe_blocks * (x["expt"][4] * (2 + full))
    pp_comm = (pp > 1) * 2 * x["comm1"][1]
    tau = FB + tp_comm + dual * np.maximum(0.0, ep_comm - FB) + (1 - dual) * (ep_comm + pp_comm)
    k, tau_k = _first_max(tau)                              # the slowest position
    F_k, B_k = F.ravel()[k], B.ravel()[k]
    W_k = (s_nd.ravel()[k] * d[2] + s_nm.ravel()[k] * moe[2] + s_first.ravel()[k] * emb[2]
           + s_last.ravel()[k] * last_w)
    bubble = dual * np.maximum(0.0, (pp // 2 - 1) * (tau_k + B_k - 3 * W_k)) + (1 - dual) * (pp - 1) * tau_k

    # ---- data-parallel collectives and the optimizer, after the last micro-batch ----
    params_ = x["params"].reshape(2, width, n)
    dense_p, exp_p = params_[0], params_[1] / ep
    whole = dense_p + exp_p                                  # parameters on the GPU
    saved = dense_p / dp + exp_p / (dp / ep) - whole        # what sharding over the replicas saves (< 0)
    opt_t = T.optimizer_time(whole + (zero >= 1) * saved)
    red, gat = x["dp"].reshape(2, width, n)
    grads_late = np.maximum(0.0, red - B)                   # gradient reduction after a micro-batch's backward
    params_late = np.maximum(0.0, gat - F)                  # parameter gathering before the next forward
    all_late = np.maximum(0.0, red + gat - FB)              # ZeRO-3: both, every micro-batch
    dp_exposed = (z01 + z2 * m) * grads_late + (1 - z3) * params_late + z3 * m * all_late
    j, tail = _first_max(dp_exposed + opt_t)
    out["step_time_s"][r] = m * tau_k + bubble + tail
    out["compute_s"][r] = m * (F_k + B_k) + opt_t.ravel()[j]
    out["exposed_comm_s"][r] = m * (tau_k - F_k - B_k) + dp_exposed.ravel()[j]
    out["bubble_s"][r] = bubble
    ep_k = ep_comm.ravel()[k]                               # exposed communication by kind
    out["exposed_tp_s"][r] = m * tp_comm.ravel()[k]
    out["exposed_ep_s"][r] = m * (dual * np.maximum(0.0, ep_k - F_k - B_k) + (1 - dual) * ep_k)
    out["exposed_pp_s"][r] = m * (1 - dual) * pp_comm
    out["exposed_dp_s"][r] = dp_exposed.ravel()[j]

    # ---- memory per GPU by kind, on the fullest position ----
    sb = T.state_bytes
    kinds = {kind: sb[kind] * (whole + (zero >= stage) * saved)
             for kind, stage in (("weights", 3), ("gradients", 2), ("optimizer", 1))}
    a = x["acts"]
    kinds["activations"] = inflight * (nd * a[0] + nm * a[1] + last * a[2]) / tp
    s, total = _first_max(kinds["weights"] + kinds["gradients"] + kinds["optimizer"] + kinds["activations"])
    for kind, v in kinds.items():
        out[kind][r] = v.ravel()[s]
    buffers = job.reserved_bytes + z3 * 2 * sb["weights"] * x["block"][0]
    out["buffers"][r] = buffers
    out["memory_per_gpu_bytes"][r] = total + buffers


# ---------------------------------------------------------------------------------------------
# The reference: one layout at a time, plain Python, the cost modules called directly
# ---------------------------------------------------------------------------------------------
def evaluate_reference(job: TrainingJob, layout: dict[str, Any]) -> dict[str, float]:
    """The numbers of one layout computed without arrays, stage by stage and layer by layer.

    It shares only the per-op times of the time model (the block profiles and routed experts, which call
    dsim.cost.timing) and composes everything else independently of `evaluate`: the stages, the
    schedules, the collectives (dsim.cost.comm's functions called directly), the parameters on each GPU
    (module by module) and the memory (dsim.cost.memory.memory itself for 1F1B). `layout` has the keys
    of Layouts.row. Slow; tests and bench/plan_speed.py hold `evaluate` to it."""
    T = _tables(job)
    a, S = job.args, job.seq_len
    tp, pp, dp, ep, zero, mb = (layout[k] for k in ("tp", "pp", "dp", "ep", "zero", "micro_batch"))
    rc, sched, dt, m = layout["recompute"], layout["schedule"], layout["dtype"], layout["n_microbatches"]
    g = job.gpus_per_node
    prof = T.profile(tp, mb, dt)
    ex = T.experts(tp, mb, ep, dt)
    full = rc == "full"

    def rec(kind_f: float, sel: float) -> float:
        return sel if rc == "selective" else (kind_f if full else 0.0)

    # compute (and communication) of each stage, per micro-batch
    stages = _stage_layers(a.n_layers, pp)
    t_ar = comm.collective_time("all_reduce", mb * S * a.dim * 2.0, tp, job.gpu, g) if tp > 1 else 0.0
    t_a2a = _a2a_time(a, job.gpu, -(-mb * S // tp), ep, max(1, g // tp), dt, None) if (ep > 1 and a.is_moe) else 0.0
    per_stage = []
    for s, layers in enumerate(stages):
        F = B = W = blocks = moe_blocks = 0.0
        kinds = ["moe" if T.layer_is_moe[i] else "dense" for i in layers]
        if s == pp - 1:
            kinds += ["mtp"] * a.n_mtp_layers
        for kind in kinds:
            base = "moe" if (kind == "moe" or (kind == "mtp" and T.mtp_is_moe)) else "dense"
            p = prof[base] + (ex if base == "moe" else 0.0)
            F += p[0]
            B += p[1] - p[0] + rec(p[0], prof[base][3])
            W += p[2]
            blocks += 1
            moe_blocks += base == "moe"
            if kind == "mtp":
                F += prof["eh_proj"][0] + prof["head"][0]
                B += prof["eh_proj"][1] - prof["eh_proj"][0] + prof["head"][1] - prof["head"][0]
                W += prof["eh_proj"][2] + prof["head"][2]
        if s == 0:
            F, B, W = F + prof["embed"][0], B + prof["embed"][1] - prof["embed"][0], W + prof["embed"][2]
        if s == pp - 1:
            F, B, W = F + prof["head"][0], B + prof["head"][1] - prof["head"][0], W + prof["head"][2]
        per_stage.append(dict(F=F, B=B, W=W, tp=blocks * t_ar * (6 if full else 4),
                              ep=moe_blocks * t_a2a * (3 if full else 2)))
    # what each GPU runs: one stage (1F1B) or two (DualPipe: s and pp-1-s, half the micro-batches each)
    ranks = [[s] for s in range(pp)] if sched == "1f1b" else [[s, pp - 1 - s] for s in range(pp)]
    cross = tp * dp >= g
    t_p2p = (comm.collective_time("send_recv", mb * S * a.dim * 2.0 / tp, 2, job.gpu, 1 if cross else g)
             if pp > 1 else 0.0)
    best = None
    for held in ranks:
        share = 1.0 / len(held)
        F = sum(per_stage[s]["F"] for s in held) * share
        B = sum(per_stage[s]["B"] for s in held) * share
        W = sum(per_stage[s]["W"] for s in held) * share
        tpc = sum(per_stage[s]["tp"] for s in held) * share
        epc = sum(per_stage[s]["ep"] for s in held) * share
        if sched == "dualpipe":
            kinds = dict(tp=tpc, ep=comm.exposed_comm_time(epc, F + B), pp=0.0)
        else:
            kinds = dict(tp=tpc, ep=epc, pp=2 * t_p2p)
        tau = F + B + kinds["tp"] + kinds["ep"] + kinds["pp"]
        if best is None or tau > best[0]:
            best = (tau, F, B, W, kinds)
    tau, F, B, W, exposed_kinds = best
    if sched == "dualpipe":
        bubble = comm.pipeline_bubble_time("dualpipe", pp, F, B, W, f_and_b=tau)
    else:
        bubble = comm.pipeline_bubble_time("1f1b", pp, F, tau - F) if pp > 1 else 0.0
    # parameters each GPU holds, data-parallel communication and the optimizer
    counts = params(a).modules
    tail_best = None
    mem_best = None
    for held in ranks:
        dense_n = exp_n = 0.0
        act = 0.0
        for s in held:
            layers = stages[s]
            first, last = s == 0, s == pp - 1
            d, e = stage_params(counts, layers, first, last, tp, ep)
            dense_n, exp_n = dense_n + d, exp_n + e
            if a.tie_embeddings and last and not first and not (sched == "dualpipe" and 0 in held):
                dense_n += counts["embed"] / tp
            act += model_activation_bytes(a, mb, S, ACT_DTYPE, "cuda", rc, layers=layers, head=last)
        F_r = sum(per_stage[s]["F"] for s in held) / len(held)
        B_r = sum(per_stage[s]["B"] for s in held) / len(held)
        red = gat = 0.0
        for n, group, rpn in ((dense_n, dp, max(1, g // tp)), (exp_n, dp // ep, max(1, g // (tp * ep)))):
            if group > 1 and int(round(n)):
                for v in comm.dp_volumes(int(round(n)), group, zero, GRAD_COMM_BYTES):
                    t = v.time(job.gpu, rpn)
                    if v.kind == "all_gather":
                        gat += t
                    else:
                        red += t
        if zero <= 1:
            exposed = comm.exposed_comm_time(red, B_r) + comm.exposed_comm_time(gat, F_r)
        elif zero == 2:
            exposed = m * comm.exposed_comm_time(red, B_r) + comm.exposed_comm_time(gat, F_r)
        else:
            exposed = m * comm.exposed_comm_time(red + gat, F_r + B_r)
        shard = dense_n / dp + exp_n / (dp // ep) if zero >= 1 else dense_n + exp_n
        opt = T.optimizer_time(shard)
        if tail_best is None or exposed + opt > tail_best[0]:
            tail_best = (exposed + opt, exposed, opt)
        # memory of this GPU
        if sched == "1f1b":
            continue
        sb = T.state_bytes
        shard_of = lambda stage: (dense_n / dp + exp_n / (dp // ep)) if zero >= stage else dense_n + exp_n  # noqa: E731
        kinds = dict(weights=sb["weights"] * shard_of(3), gradients=sb["gradients"] * shard_of(2),
                     optimizer=sb["optimizer"] * shard_of(1), activations=act * (pp + 1) / 2 / tp)
        if mem_best is None or sum(kinds.values()) > sum(mem_best.values()):
            mem_best = kinds
    if sched == "1f1b":
        est = memory(a, mode="train", batch=mb, seq_len=S, dtype=WEIGHT_DTYPE, grad_dtype=GRAD_DTYPE,
                     master_dtype=MASTER_DTYPE, optimizer_dtype=job.optimizer_dtype, tp=tp, pp=pp, dp=dp, ep=ep,
                     zero=zero, recompute=rc, act_dtype=ACT_DTYPE, device="cuda")
        mem_best = dict(weights=est.weights, gradients=est.gradients, optimizer=est.optimizer,
                        activations=est.activations)
    zero3 = 2 * T.state_bytes["weights"] * T.largest_block(tp, ep) if zero == 3 else 0.0
    mem_best["buffers"] = job.reserved_bytes + zero3
    total = sum(mem_best.values())
    step = m * tau + bubble + tail_best[0]
    return dict(step_time_s=step, compute_s=m * (F + B) + tail_best[2], exposed_comm_s=m * (tau - F - B) + tail_best[1],
                bubble_s=bubble, exposed_tp_s=m * exposed_kinds["tp"], exposed_ep_s=m * exposed_kinds["ep"],
                exposed_pp_s=m * exposed_kinds["pp"], exposed_dp_s=tail_best[1],
                memory_per_gpu_bytes=total, fits=total <= job.hbm_bytes, **mem_best)


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingPlan:
    """One layout with its step time, efficiency, memory per GPU and what the token budget costs."""
    tp: int
    pp: int
    ep: int
    dp: int
    zero: int
    micro_batch: int
    n_microbatches: int
    recompute: str
    schedule: str
    dtype: str
    step_time_s: float
    compute_s: float
    exposed_comm_s: float
    bubble_s: float
    mfu: float
    tokens_per_s: float
    days: float
    gpu_hours: float
    cost: float
    memory_per_gpu_bytes: float
    memory: dict[str, float]          # weights, gradients, optimizer, activations, buffers (bytes)
    exposed: dict[str, float]         # exposed communication by kind: tensor, expert, pipeline, data (s)
    fits: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def layout(self) -> str:
        return (f"tp{self.tp} pp{self.pp} ep{self.ep} dp{self.dp} zero{self.zero} mb{self.micro_batch} "
                f"{self.recompute} {self.schedule} {self.dtype}")


@dataclass
class PlanResult:
    """A search: how many layouts were evaluated, the best plans, and why the others were dropped."""
    job: TrainingJob
    layouts_evaluated: int
    plans: list[TrainingPlan]
    rejected: dict[str, int]          # memory: reason -> layouts that do not fit
    invalid: dict[str, int]           # structure: reason -> candidate layouts that are not valid
    n_fit: int

    def to_dict(self) -> dict[str, Any]:
        j = self.job
        return {"model": j.args.name, "gpu": j.gpu.name, "gpus": j.n_gpus, "tokens": j.tokens,
                "seq_len": j.seq_len, "global_batch": j.global_batch, "price_per_gpu_hour": j.price_per_gpu_hour,
                "layouts_evaluated": self.layouts_evaluated, "layouts_fitting": self.n_fit,
                "rejected": self.rejected, "invalid": self.invalid, "plans": [p.to_dict() for p in self.plans],
                "mfu_convention": "model FLOPs (causal attention, MTP included, no recomputation) per step / "
                                  "(step time x GPUs x dense bf16 peak)"}


def _plan_from(job: TrainingJob, L: Layouts, res: dict[str, np.ndarray], i: int) -> TrainingPlan:
    T = _tables(job)
    row = L.row(i)
    step = float(res["step_time_s"][i])
    tps = job.batch_tokens / step
    seconds = job.tokens / tps
    reason = None if res["fits"][i] else REASONS[int(res["reason"][i])]
    return TrainingPlan(
        tp=row["tp"], pp=row["pp"], ep=row["ep"], dp=row["dp"], zero=row["zero"], micro_batch=row["micro_batch"],
        n_microbatches=row["n_microbatches"], recompute=row["recompute"], schedule=row["schedule"],
        dtype=row["dtype"], step_time_s=step, compute_s=float(res["compute_s"][i]),
        exposed_comm_s=float(res["exposed_comm_s"][i]), bubble_s=float(res["bubble_s"][i]),
        mfu=T.flops_per_seq * job.global_batch / (step * job.n_gpus * T.peak), tokens_per_s=tps,
        days=seconds / 86400, gpu_hours=seconds * job.n_gpus / 3600,
        cost=seconds * job.n_gpus / 3600 * job.price_per_gpu_hour,
        memory_per_gpu_bytes=float(res["memory_per_gpu_bytes"][i]),
        memory={k: float(res[k][i]) for k in MEMORY_KINDS},
        exposed={k: float(res[v][i]) for k, v in EXPOSED_KINDS.items()},
        fits=bool(res["fits"][i]), reason=reason)


def plan_training(job: TrainingJob, top: int = 10, require_fit: bool = True, progress: bool = False,
                  **fixed: Any) -> PlanResult:
    """Search every layout (fixing the fields given in `fixed`: tp, pp, dp, ep, zero, micro_batch,
    recompute, schedule, dtype) and return the `top` fastest, best first.

    require_fit=False ranks layouts that do not fit too (each plan says whether it fits and why not).
    progress=True shows a tqdm bar on stderr (on a terminal, once the search takes half a second).
    Raises ValueError naming the problem when no layout is valid, or none fits (with require_fit)."""
    _check_int("top", top)
    L, invalid = enumerate_layouts(job, **fixed)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(L), desc="layouts", unit=" layouts", file=sys.stderr, delay=0.5,
                   disable=not sys.stderr.isatty(), leave=False)
    try:
        res = evaluate(job, L, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    fits = res["fits"]
    rejected: dict[str, int] = {}
    for code, reason in enumerate(REASONS):
        n = int((res["reason"] == code).sum())
        if n:
            rejected[reason] = n
    keep = np.flatnonzero(fits) if require_fit else np.arange(len(L))
    if require_fit and len(keep) == 0:
        worst = ", ".join(f"{n} {r}" for r, n in rejected.items())
        smallest = float(res["memory_per_gpu_bytes"].min())
        raise ValueError(f"no layout of {job.args.name} fits on {job.n_gpus} x {job.gpu.name} "
                         f"({job.hbm_bytes / 1e9:.0f} GB): the smallest needs {smallest / 1e9:.0f} GB per GPU "
                         f"({len(L)} layouts: {worst})")
    order = np.lexsort((L.dt[keep], L.sched[keep], L.rc[keep], L.mb[keep], L.zero[keep], L.ep[keep], L.pp[keep],
                        L.tp[keep], res["memory_per_gpu_bytes"][keep], res["step_time_s"][keep]))
    best = keep[order[:top]]
    plans = [_plan_from(job, L, res, int(i)) for i in best]
    return PlanResult(job=job, layouts_evaluated=len(L), plans=plans, rejected=rejected, invalid=invalid,
                      n_fit=int(fits.sum()))


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------
@dataclass
class ServePlan:
    """Capacity of one deployment unit in one phase (prefill or decode), per GPU and per node.

    batch: sequences one attention rank (a GPU, or a tensor-parallel group of tp GPUs) runs per step;
    max_batch: the most that fit next to the weights (the KV cache bound).
    tokens_per_s: prefill counts input tokens, cache hits included (DeepSeek's convention); decode counts
    output tokens. latency_s: decode, the time per output token; prefill, the time of one step."""
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
    tokens_per_s_per_gpu: float
    tokens_per_s_per_node: float
    latency_s: float
    cost_per_million_tokens: float
    memory: dict[str, float]
    memory_per_gpu_bytes: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Serving:
    """A deployment's per-GPU quantities for one phase (everything but the batch)."""

    def __init__(self, args: ModelArgs, gpu: str | GPU, phase: str, n_gpus: int, ep: int | None, tp: int,
                 context: int, prompt: int, cache_hit: float, dtype: str, kv_dtype: str, redundant_experts: int,
                 overlap: bool, gpus_per_node: int, reserved_bytes: float, calibration: timing.Calibration | None):
        if not isinstance(args, ModelArgs):
            raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
        if phase not in PHASES:
            raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
        self.gpu = get_gpu(gpu)
        _check_int("n_gpus", n_gpus)
        _check_int("tp", tp)
        _check_int("gpus_per_node", gpus_per_node)
        _check_int("redundant_experts", redundant_experts, 0)
        if n_gpus % tp:
            raise ValueError(f"tp={tp} does not divide the {n_gpus} GPUs")
        problem = _tp_problem(args, tp, gpus_per_node)
        if problem:
            raise ValueError(problem)
        if n_gpus > gpus_per_node and n_gpus % gpus_per_node:
            raise ValueError(f"n_gpus={n_gpus} must be a multiple of gpus_per_node={gpus_per_node} or at most one node")
        ep = n_gpus if ep is None else _check_int("ep", ep)
        if not args.is_moe:
            ep, redundant_experts = 1, 0
        elif n_gpus % ep:
            raise ValueError(f"ep={ep} does not divide the {n_gpus} GPUs")
        experts = args.n_routed_experts + redundant_experts
        if args.is_moe and experts % ep:
            raise ValueError(f"ep={ep} must divide n_routed_experts + redundant_experts = {experts}")
        if dtype not in MATMUL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {dtype!r}")
        if dtype == "fp8" and self.gpu.fp8_flops is None:
            raise ValueError(f"dtype='fp8' is not supported by {self.gpu.name} (no fp8 tensor cores)")
        if not (isinstance(cache_hit, (int, float)) and 0 <= cache_hit < 1):
            raise ValueError(f"cache_hit must be a fraction in [0, 1), got {cache_hit!r}")
        _check_int("context", context)
        _check_int("prompt", prompt)
        self.args, self.phase, self.n_gpus, self.tp, self.ep = args, phase, n_gpus, tp, ep
        self.dp = n_gpus // tp
        self.experts_per_gpu = experts // ep if args.is_moe else 0
        self.dtype, self.overlap, self.gpus_per_node = dtype, overlap, gpus_per_node
        self.reserved_bytes = reserved_bytes
        if phase == "decode":
            self.new, self.ctx = 1, context                    # one new token after `context` cached ones
        else:
            self.new = max(1, math.ceil((1 - cache_hit) * prompt))
            self.ctx = prompt - self.new                       # cache hits: a cached prefix the new tokens attend to
        self.prompt = prompt
        self.T = _OpTimes(args, self.gpu, calibration)
        # memory: weights of one GPU (no MTP module), KV cache per sequence, activations per sequence
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
                w += n * b / (1 if _replicated_under_tp(name) else tp)
        self.weight_bytes = w
        kv_split = tp if (args.attn_type != "mla" and args.kv_heads % tp == 0) else 1
        self.kv_per_seq = kv_cache_bytes_per_token(args, kv_dtype) * (self.ctx + self.new) / kv_split
        layer = args.n_dense_layers if args.is_moe else 0
        self.act_per_seq = layer_activation_bytes(args, layer, 1, self.new, ACT_DTYPE, "cuda") / tp
        free = self.gpu.hbm_bytes - reserved_bytes - self.weight_bytes
        self.max_batch = int(free // (self.kv_per_seq + self.act_per_seq)) if free > 0 else 0
        if self.max_batch < 1:
            raise ValueError(f"{args.name} does not fit for {phase} on {n_gpus} x {self.gpu.name} with ep={ep}, "
                             f"tp={tp}: weights {self.weight_bytes / 1e9:.1f} GB + one sequence's KV cache "
                             f"{self.kv_per_seq / 1e9:.2f} GB + {reserved_bytes / 1e9:.0f} GB reserved > "
                             f"{self.gpu.hbm_bytes / 1e9:.0f} GB")

    def step(self, batch: int) -> tuple[float, float, float]:
        """(step seconds, compute seconds, exposed communication seconds) for `batch` sequences per GPU."""
        a, T, tp = self.args, self.T, self.tp
        impl = "absorb" if self.phase == "decode" else "naive"    # DeepSeek: absorbed MLA to decode
        sa = _shard_args(a.replace(attn_impl=impl) if a.attn_type == "mla" else a, tp)
        mode = self.phase
        tokens = batch * self.new
        total = comp = exposed = 0.0
        for i in range(a.n_layers):
            moe = a.is_moe and is_moe_layer(a, i)
            key = ("serve-block", moe, batch)
            if key not in T._memo:
                ops = [p for p in block_plan(sa, a.n_dense_layers if moe else 0, batch, self.new, self.ctx, mode)
                       if p.op != "moe_ffn"]
                c = T.sum_ops(ops, self.dtype)[0]
                a2a = 0.0
                if moe:
                    # every GPU's experts get, balanced, the top-k copies of 1/tp of a TP group's tokens
                    c += T.expert_time(-(-tokens // tp), self.experts_per_gpu, a.moe_inter_dim, self.dtype, False)[0]
                    a2a = T.a2a(-(-tokens // tp), self.ep, max(1, self.gpus_per_node // tp), self.dtype,
                                self.experts_per_gpu * self.ep)
                hidden = min(a2a, c) if self.overlap else 0.0
                T._memo[key] = (c, a2a - hidden)
            c, e = T._memo[key]
            comp, exposed = comp + c, exposed + e
        # the last position's logits per sequence, and the embedding lookup
        ops = [PlanOp("embedding", "embed", "gather_rows", dict(rows=tokens, width=a.dim, dst_rows=a.vocab_size)),
               PlanOp("norms", "norm", "rmsnorm", dict(tokens=batch, hidden=a.dim)),
               PlanOp("head", "head", "gemm", dict(m=batch, n=-(-a.vocab_size // tp), k=a.dim, batch=1))]
        comp += T.sum_ops(ops, self.dtype)[0]
        total = comp + exposed
        return total, comp, exposed

    def plan(self, batch: int, price_per_gpu_hour: float) -> ServePlan:
        step, comp, exposed = self.step(batch)
        per_step = batch * (1 if self.phase == "decode" else self.prompt)   # per attention rank (TP group)
        tps = per_step / step / self.tp
        kv = self.kv_per_seq * batch
        acts = self.act_per_seq * batch
        mem = dict(weights=self.weight_bytes, kv_cache=kv, activations=acts, buffers=self.reserved_bytes)
        return ServePlan(phase=self.phase, model=self.args.name, gpu=self.gpu.name, n_gpus=self.n_gpus, tp=self.tp,
                         dp=self.dp, ep=self.ep, experts_per_gpu=self.experts_per_gpu, batch=batch,
                         max_batch=self.max_batch, new_tokens=self.new, context=self.ctx, step_time_s=step,
                         compute_s=comp, exposed_comm_s=exposed, tokens_per_s_per_gpu=tps,
                         tokens_per_s_per_node=tps * self.gpus_per_node,
                         latency_s=step, cost_per_million_tokens=price_per_gpu_hour / 3600 / tps * 1e6,
                         memory=mem, memory_per_gpu_bytes=sum(mem.values()))


def plan_serving(args: ModelArgs, gpu: str | GPU = "H800", phase: str = "decode", n_gpus: int = 8,
                 ep: int | None = None, tp: int = 1, batch: int | None = None, context: int = 4096,
                 prompt: int = 4096, cache_hit: float = 0.0, dtype: str = "fp8", kv_dtype: str = "bf16",
                 redundant_experts: int = 0, overlap: bool = True, latency_target: float | None = None,
                 price_per_gpu_hour: float = 2.0, gpus_per_node: int = 8, reserved_bytes: float = RESERVED_BYTES,
                 calibration: timing.Calibration | None = None) -> ServePlan:
    """Prefill or decode capacity of a deployment unit of `n_gpus` GPUs.

    Attention runs data-parallel over n_gpus / tp ranks (tp > 1: tensor-parallel groups); the routed
    experts are split over `ep` GPUs (default all of them), n_routed_experts + redundant_experts
    replicas, balanced (DeepSeek's EPLB). Weights in `dtype` (fp8 with 128 x 128 block scales for the
    linear layers; embedding, head, norms and gate in bf16), KV cache in `kv_dtype`.
    decode: each sequence has `context` cached tokens and adds one per step; batch defaults to the
        largest that fits (the KV cache bound), or the largest whose step meets `latency_target` seconds
        per output token.
    prefill: each sequence is a `prompt`-token prompt of which a fraction `cache_hit` is a cached prefix
        (not recomputed, but attended to); batch defaults to about PREFILL_TOKENS_PER_GPU new tokens.
    overlap: two micro-batches alternate so that each MoE block's all-to-all hides behind the other's
        compute (DeepSeek's dual micro-batch overlap): exposed = max(0, a2a - compute) per block.
    """
    s = _Serving(args, gpu, phase, n_gpus, ep, tp, context, prompt, cache_hit, dtype, kv_dtype, redundant_experts,
                 overlap, gpus_per_node, reserved_bytes, calibration)
    if batch is not None:
        _check_int("batch", batch)
        if batch > s.max_batch:
            raise ValueError(f"batch={batch} does not fit: at most {s.max_batch} sequences per GPU fit next to the "
                             f"weights ({s.kv_per_seq / 1e6:.0f} MB of KV cache each)")
    elif latency_target is not None:
        if not latency_target > 0:
            raise ValueError(f"latency_target must be > 0 seconds, got {latency_target!r}")
        if s.step(1)[0] > latency_target:
            raise ValueError(f"latency_target={latency_target * 1e3:.1f} ms cannot be met: one sequence takes "
                             f"{s.step(1)[0] * 1e3:.1f} ms per step")
        lo, hi = 1, s.max_batch
        while lo < hi:                                    # the step time grows with the batch
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
    s = _Serving(args, kwargs.pop("gpu", "H800"), kwargs.pop("phase", "decode"), kwargs.pop("n_gpus", 8),
                 kwargs.pop("ep", None), kwargs.pop("tp", 1), kwargs.pop("context", 4096), kwargs.pop("prompt", 4096),
                 kwargs.pop("cache_hit", 0.0), kwargs.pop("dtype", "fp8"), kwargs.pop("kv_dtype", "bf16"),
                 kwargs.pop("redundant_experts", 0), kwargs.pop("overlap", True), kwargs.pop("gpus_per_node", 8),
                 kwargs.pop("reserved_bytes", RESERVED_BYTES), kwargs.pop("calibration", None))
    price = kwargs.pop("price_per_gpu_hour", 2.0)
    if kwargs:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(kwargs))}")
    return [s.plan(int(b), price) for b in batches if 1 <= b <= s.max_batch]


# ---------------------------------------------------------------------------------------------
# The public record: DeepSeek-V3
# ---------------------------------------------------------------------------------------------
DEEPSEEK_V3_TRAINING = dict(
    source="DeepSeek-V3 Technical Report (arXiv 2412.19437), sec. 1, 3.1-3.3 and 4.2",
    gpu="H800", n_gpus=2048, tokens=14.8e12, seq_len=4096,
    global_batch=15360,        # sequences; ramped from 3072 over the first 469B tokens, then 15360
    layout=dict(tp=1, pp=16, ep=64, dp=128, zero=1, schedule="dualpipe", dtype="fp8", recompute="selective"),
    optimizer_dtype="bf16",    # AdamW moments in bf16; master weights and gradients in fp32
    published_gpu_hours=2.664e6, published_gpu_hours_per_trillion=180e3, published_days_per_trillion=3.7,
    price_per_gpu_hour=2.0,
)

DEEPSEEK_V3_SERVING = dict(
    source="deepseek-ai/open-infra-index, 202502OpenSourceWeek/day_6_one_more_thing_deepseekV3R1_inference_"
           "system_overview.md (24 h from 2025-02-27 12:00 UTC+8)",
    gpu="H800",
    prefill=dict(n_gpus=32, ep=32, redundant_experts=32, published_tokens_per_s_per_node=73.7e3),
    decode=dict(n_gpus=144, ep=144, redundant_experts=32, published_tokens_per_s_per_node=14.8e3),
    input_tokens=608e9, cache_hit_tokens=342e9, output_tokens=168e9, kv_length_per_output_token=4989,
    output_tokens_per_s_per_user=(20, 22),
)


def deepseek_v3_workload() -> dict[str, float]:
    """Average prompt and output lengths implied by the published totals: an output token sees on average
    P + D/2 cached tokens (4,989) and P / D = input tokens / output tokens (608B / 168B)."""
    r = DEEPSEEK_V3_SERVING
    ratio = r["input_tokens"] / r["output_tokens"]
    D = r["kv_length_per_output_token"] / (ratio + 0.5)
    return dict(prompt=ratio * D, output=D, cache_hit=r["cache_hit_tokens"] / r["input_tokens"])


def reproduce_deepseek_v3_training(recompute: str | None = "selective", calibration: timing.Calibration | None = None
                                   ) -> dict[str, Any]:
    """DeepSeek-V3's pre-training with the layout the report states (PP16 DualPipe, EP64 over 8 nodes,
    ZeRO-1 DP128, no TP, fp8, selective recomputation); the micro-batch, which the report does not give, is
    searched. Memory is reported, not required: see `fits`. Returns predicted and published GPU-hours."""
    r = DEEPSEEK_V3_TRAINING
    from dsim.config import preset
    job = TrainingJob(preset("deepseek-v3"), r["gpu"], n_gpus=r["n_gpus"], tokens=r["tokens"], seq_len=r["seq_len"],
                      global_batch=r["global_batch"], optimizer_dtype=r["optimizer_dtype"],
                      price_per_gpu_hour=r["price_per_gpu_hour"], calibration=calibration)
    layout = dict(r["layout"])
    if recompute is None:
        layout.pop("recompute")
    else:
        layout["recompute"] = recompute
    res = plan_training(job, top=1, require_fit=False, **layout)
    best = res.plans[0]
    per_t = best.gpu_hours / (r["tokens"] / 1e12)
    return dict(plan=best, job=job, predicted_gpu_hours=best.gpu_hours, published_gpu_hours=r["published_gpu_hours"],
                error=best.gpu_hours / r["published_gpu_hours"] - 1,
                predicted_gpu_hours_per_trillion=per_t,
                published_gpu_hours_per_trillion=r["published_gpu_hours_per_trillion"],
                predicted_days_per_trillion=best.days / (r["tokens"] / 1e12),
                published_days_per_trillion=r["published_days_per_trillion"], fits=best.fits)


def reproduce_deepseek_v3_serving(calibration: timing.Calibration | None = None,
                                  latency_target: float | None = None) -> dict[str, Any]:
    """DeepSeek-V3 prefill (EP32 over 4 nodes) and decode (EP144 over 18 nodes) per H800 node, with the
    workload the published totals imply (prompt length, cache hit rate, context per output token)."""
    from dsim.config import preset
    r, w = DEEPSEEK_V3_SERVING, deepseek_v3_workload()
    args = preset("deepseek-v3")
    pre = plan_serving(args, r["gpu"], "prefill", r["prefill"]["n_gpus"], ep=r["prefill"]["ep"],
                       redundant_experts=r["prefill"]["redundant_experts"], prompt=round(w["prompt"]),
                       cache_hit=w["cache_hit"], calibration=calibration)
    dec = plan_serving(args, r["gpu"], "decode", r["decode"]["n_gpus"], ep=r["decode"]["ep"],
                       redundant_experts=r["decode"]["redundant_experts"], context=r["kv_length_per_output_token"],
                       latency_target=latency_target, calibration=calibration)
    return dict(prefill=pre, decode=dec, workload=w,
                prefill_error=pre.tokens_per_s_per_node / r["prefill"]["published_tokens_per_s_per_node"] - 1,
                decode_error=dec.tokens_per_s_per_node / r["decode"]["published_tokens_per_s_per_node"] - 1)
