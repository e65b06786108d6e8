"""The training job and the planner's choices and assumptions.

A `TrainingJob` says what to train on what: the model, the GPU type and count, the token budget,
the sequence length and the global batch. The constants below are the values a layout may take
(RECOMPUTE, SCHEDULES, MATMUL_DTYPES, ZERO_STAGES) and the planner's general assumptions (reserved
memory, number formats of the model states, which components run in fp8), stated in ASSUMPTIONS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsim.config import ModelArgs
from dsim.cost import timing
from dsim.cost.checks import check_real
from dsim.cost.components import Component
from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.layout import (
    ZERO_STAGES,  # noqa: F401  (a choice of the layouts, re-exported)
    tp_split_problem,
)
from dsim.cost.memory import DEEPSEEK_V3_RECIPE, PLAIN, ActivationRecipe

# ---------------------------------------------------------------------------------------------
# Choices and general assumptions
# ---------------------------------------------------------------------------------------------
RECOMPUTE = ("none", "selective", "full")
SCHEDULES = ("1f1b", "dualpipe")
MATMUL_DTYPES = ("bf16", "fp8")
PHASES = ("prefill", "decode")

# Activation recipes by name (dsim.cost.memory.ActivationRecipe), for TrainingJob and the CLI.
ACTIVATION_RECIPES = {"plain": PLAIN, "deepseek-v3": DEEPSEEK_V3_RECIPE}

RESERVED_BYTES = (
    4e9  # CUDA context, NCCL and cuBLAS workspaces, allocator fragmentation (a round figure)
)
# The largest job the planner takes: it searches the divisors of the GPU count, and counts
# tokens in int64 arrays.
MAX_GPUS = 1 << 20
MAX_BATCH_TOKENS = 1 << 53
MAX_MICROBATCH_TOKENS = 32768  # searched micro-batches: powers of two up to this many tokens
PREFILL_TOKENS_PER_GPU = (
    16384  # serving: new prompt tokens one GPU takes per prefill step by default
)
GRAD_COMM_BYTES = (
    2.0  # gradients and parameters travel in bf16 (dsim.cost.comm.dp_volumes' default)
)
WEIGHT_DTYPE, GRAD_DTYPE, MASTER_DTYPE, ACT_DTYPE = "bf16", "fp32", "fp32", "bf16"

# Components whose GEMMs run in fp8 when the matmul precision is fp8. DeepSeek-V3 (sec. 3.3.1) keeps
FP8_COMPONENTS = (Component.ATTN_PROJ, Component.DENSE_FFN, Component.SHARED_EXPERTS)
# Ops that selective recomputation runs again in the backward (DeepSeek-V3 sec. 3.2.3: every RMSNorm
# and MLA's up-projections), by the labels of dsim.cost.timing.block_plan.
SELECTIVE_LABELS = ("wq_b", "wkv_b", "cat q, k")
# The matmuls among them (graph op names), whose forward FLOPs count as hardware FLOPs.
RECOMPUTED_MATMULS = ("wq_b", "wkv_b")

ASSUMPTIONS = {
    "compute": "op times from dsim.cost.timing (kernels of dsim.model's PyTorch implementation), "
    "with the GPU's calibration: H100-SXM and H200 measurements; A100 and H800 take the H100's "
    "efficiencies with the tensor-core ones scaled to reproduce published runs on them "
    "(dsim.cost.timing.calibration.RUN_SCALES); other GPUs borrow the H100's, applied to their "
    "own datasheet peaks",
    "fp8": "fp8 GEMMs for attention projections, dense FFN and experts (DeepSeek-V3's recipe); the "
    "routed experts' grouped GEMMs are scaled by the fp8/bf16 time ratio of a batched GEMM of the "
    "same shape (the time model has no fp8 grouped GEMM), plus one quantisation pass per GEMM "
    "input",
    "routing": "balanced expert load across expert-parallel ranks; within a rank, random routing "
    "(the time model's binomial expert load)",
    "overlap": "DualPipe hides expert all-to-all and pipeline sends behind the paired chunk's "
    "compute; 1F1B hides neither; tensor-parallel all-reduces are never hidden; data-parallel "
    "collectives overlap one micro-batch's compute",
    "memory": "bf16 weights and activations, fp32 gradients and master weights; "
    f"{RESERVED_BYTES / 1e9:.0f} GB reserved per GPU for the CUDA context, communication buffers "
    "and fragmentation",
    "placement": "ranks ordered tp, then dp (ep inside it), then pp, 8 GPUs per node: tp inside a "
    "node, pipeline neighbours on different nodes once tp x dp fills a node",
}


# ---------------------------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------------------------
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_size(text: str | int | float, name: str = "size") -> float:
    """A count written with an optional K, M, B (or G) or T suffix: '14.8T' -> 1.48e13, '4k' ->
    4000."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower().replace("_", "").replace(",", "")
        suffix = s[-1:] if s[-1:] in _SUFFIXES and s[-1:] != "" else ""
        try:
            value = float(s[:-1] if suffix else s) * _SUFFIXES[suffix]
        except ValueError:
            raise ValueError(
                f"{name} {text!r} is not a number with an optional K/M/B/T suffix "
                f"(e.g. 14.8T, 4096, 62.9M)"
            ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {text!r}")
    return value


def check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def shard_args(args: ModelArgs, tp: int) -> ModelArgs:
    """The slice of the model one tensor-parallel rank computes: heads, FFN widths and vocabulary /
    tp (MLA's down-projections, norms and the gate stay whole: dsim.cost.layout.TP_REPLICATED)."""
    if tp == 1:
        return args
    change = dict(
        n_heads=args.n_heads // tp,
        inter_dim=args.inter_dim // tp,
        moe_inter_dim=args.moe_inter_dim // tp,
        vocab_size=-(-args.vocab_size // tp),
    )
    if args.attn_type == "gqa":
        change["n_kv_heads"] = args.kv_heads // tp
    if args.attn_type != "mla":  # keep the head width (head_dim 0 means dim // n_heads)
        change["head_dim"] = args.head_size
    return args.replace(**change)


def tp_problem(args: ModelArgs, tp: int, gpus_per_node: int) -> str | None:
    """Why `tp` cannot split this model (None when it can)."""
    if tp > gpus_per_node or gpus_per_node % tp:
        return (
            f"tp={tp} must divide the {gpus_per_node} GPUs of a node "
            "(tensor parallelism stays on NVLink)"
        )
    return tp_split_problem(args, tp)


def node_limit(args: ModelArgs, ep_nodes: int) -> int | None:
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

    global_batch: sequences of seq_len tokens per optimizer step (`TrainingJob.batch_from_tokens`
        converts a batch given in tokens).
    optimizer_dtype: Adam's moments ("fp32", or "bf16" as DeepSeek-V3 keeps them).
    calibration: the time model's efficiency constants (default: the GPU's committed calibration).
    recipe: how activations are kept (dsim.cost.memory.ActivationRecipe, or a name of
        ACTIVATION_RECIPES; default "plain": what autograd keeps for dsim.model).
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
    recipe: ActivationRecipe | str = "plain"

    def __post_init__(self) -> None:
        if isinstance(self.recipe, str):
            if self.recipe not in ACTIVATION_RECIPES:
                raise ValueError(
                    f"recipe must be one of {', '.join(ACTIVATION_RECIPES)} or an "
                    f"ActivationRecipe, got {self.recipe!r}"
                )
            self.recipe = ACTIVATION_RECIPES[self.recipe]
        elif not isinstance(self.recipe, ActivationRecipe):
            raise ValueError(f"recipe must be an ActivationRecipe or a name, got {self.recipe!r}")
        if not isinstance(self.args, ModelArgs):
            raise ValueError(
                f"args must be a dsim.config.ModelArgs, got {type(self.args).__name__}"
            )
        self.gpu = get_gpu(self.gpu)
        check_int("n_gpus", self.n_gpus)
        check_int("seq_len", self.seq_len)
        check_int("global_batch", self.global_batch)
        check_int("gpus_per_node", self.gpus_per_node)
        if self.n_gpus > self.gpus_per_node and self.n_gpus % self.gpus_per_node:
            raise ValueError(
                f"n_gpus={self.n_gpus} must be a multiple of gpus_per_node={self.gpus_per_node} "
                f"(whole nodes) or at most one node"
            )
        check_real("tokens", self.tokens, 0.0, strict=True)
        check_real("price_per_gpu_hour", self.price_per_gpu_hour)
        if self.n_gpus > MAX_GPUS or self.batch_tokens > MAX_BATCH_TOKENS:
            raise ValueError(
                f"n_gpus must be <= {MAX_GPUS:,} and global_batch x seq_len <= "
                f"{MAX_BATCH_TOKENS:,} tokens, got n_gpus={self.n_gpus:,} and "
                f"{self.global_batch:,} x {self.seq_len:,}"
            )
        if self.optimizer_dtype not in ("fp32", "bf16"):
            raise ValueError(
                f"optimizer_dtype must be 'fp32' or 'bf16', got {self.optimizer_dtype!r}"
            )
        check_real("reserved_bytes", self.reserved_bytes)

    @staticmethod
    def batch_from_tokens(batch_tokens: float, seq_len: int) -> int:
        """Sequences per step for a global batch given in tokens (must be a whole number of
        sequences)."""
        seqs = batch_tokens / seq_len
        if abs(seqs - round(seqs)) > 1e-9 * seqs or round(seqs) < 1:
            raise ValueError(
                f"a global batch of {batch_tokens:,.0f} tokens is not a whole number of "
                f"{seq_len}-token sequences"
            )
        return int(round(seqs))

    @property
    def hbm_bytes(self) -> float:
        return float(self.gpu.hbm_bytes)

    @property
    def batch_tokens(self) -> int:
        return self.global_batch * self.seq_len
