"""How long one serving step takes: the time model's ops for a step of mixed shape.

A step of one attention rank (a GPU with data-parallel attention, or a tensor-parallel group)
decodes some sequences (each verifying 1 + MTP draft tokens) and prefills some prompt chunks. Its
time comes from dsim's time model (dsim.cost.timing), through the same per-GPU tables the
steady-state serving plan uses (dsim.cost.plan.serve.Serving, OpTimes):

- a decode-only step is the decode plan (absorbed MLA), a prefill-only step the prefill plan;
- a mixed step runs the linear layers once over all its tokens, and each attention core at its
  own shape (the decode part's and the prefill part's);
- the routed experts see the step's tokens, balanced over the expert-parallel GPUs, and the
  dispatch/combine all-to-all hides behind compute when two micro-batches alternate (two or more
  sequences per rank), as in `Serving.step`.

Times are those of the time model: GPU time with the CPU queued ahead (CUDA graphs), which is
how production decode runs. `decode_attention="flashmla"` prices the decode attention core as one
fused kernel (one pass over the cache: max(FLOPs / tensor-core rate, bytes / HBM rate) at the
GPU's calibrated efficiencies), what DeepSeek's FlashMLA does, instead of the three kernels
`dsim.model` runs (scores, an fp32 softmax that writes the score matrix, the weighted sum).

`ConstantStepCost` and `LinearStepCost` are the other step-time models the simulator takes: a
fixed time (queueing theory's deterministic server) and a linear fit to measured steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dsim.config import ModelArgs
from dsim.cost import timing
from dsim.cost.components import Component
from dsim.cost.graph import is_moe_layer, served_context
from dsim.cost.graph.rules import layer_window
from dsim.cost.kv_cache import kv_cache_bytes_per_token
from dsim.cost.layout import kv_tp_split
from dsim.cost.memory import layer_activation_bytes
from dsim.cost.plan.job import ACT_DTYPE, RESERVED_BYTES, shard_args
from dsim.cost.plan.serve import Serving
from dsim.cost.timing import PlanOp, block_plan

DECODE_ATTENTION = ("dsim", "flashmla")


@dataclass(frozen=True)
class StepShape:
    """What one attention rank runs in one step."""

    decode_seqs: int = 0  # sequences that decode
    decode_tokens: int = 1  # tokens each of them runs: 1, or 1 + MTP draft tokens to verify
    decode_context: int = 0  # mean cached tokens of those sequences
    prefill_seqs: int = 0  # prompts with a chunk in this step
    prefill_tokens: int = 0  # new tokens of all the chunks
    prefill_context: int = 0  # mean cached tokens ahead of each chunk (prefix hits, earlier chunks)

    @property
    def tokens(self) -> int:
        return self.decode_seqs * self.decode_tokens + self.prefill_tokens


class StepTimer(Protocol):
    """Anything that gives the seconds of a step of a given shape (the busiest rank's)."""

    def __call__(self, shape: StepShape) -> float: ...


class ConstantStepCost:
    """Every step takes `seconds` (a deterministic server)."""

    def __init__(self, seconds: float):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = float(seconds)

    def __call__(self, shape: StepShape) -> float:
        return self.seconds


@dataclass(frozen=True)
class LinearStepCost:
    """seconds = base + per_seq * decode_seqs + per_kv * decode_seqs * decode_context
    + per_token * tokens + per_pair * prefill attention pairs. Fitted by `fit` (scipy's
    least_squares on relative error) to measured steps; for measured small models where no
    time model of the device exists (a CPU)."""

    base: float
    per_seq: float
    per_kv: float
    per_token: float
    per_pair: float

    @staticmethod
    def features(shape: StepShape) -> np.ndarray:
        pairs = shape.prefill_tokens * (shape.prefill_context + shape.prefill_tokens / 2)
        return np.array(
            [
                1.0,
                shape.decode_seqs,
                shape.decode_seqs * shape.decode_context,
                shape.tokens,
                pairs / max(1, shape.prefill_seqs),
            ]
        )

    def __call__(self, shape: StepShape) -> float:
        c = np.array([self.base, self.per_seq, self.per_kv, self.per_token, self.per_pair])
        return float(max(c @ self.features(shape), 1e-9))

    @classmethod
    def fit(cls, shapes: list[StepShape], seconds: list[float]) -> LinearStepCost:
        from scipy.optimize import least_squares

        if len(shapes) != len(seconds) or len(shapes) < 5:
            raise ValueError("fit needs at least 5 measured steps, one time per shape")
        X = np.array([cls.features(s) for s in shapes])
        y = np.asarray(seconds, dtype=float)
        if not np.all(np.isfinite(y) & (y > 0)):
            raise ValueError("measured step times must be finite and > 0")
        scale = np.maximum(X.max(0), 1.0)
        res = least_squares(
            lambda c: (X / scale) @ c / y - 1, x0=np.full(5, 1e-3), bounds=(0, np.inf)
        )
        return cls(*(res.x / scale))


def _bucket(x: float, steps_per_octave: int = 32) -> int:
    """x rounded onto a geometric grid (about 2 % apart) above 64; exact below."""
    if x <= 64:
        return int(round(x))
    return int(round(2 ** (round(math.log2(x) * steps_per_octave) / steps_per_octave)))


class StepCost:
    """Seconds of one step of a serving unit from dsim's time model (see the module docstring).

    The unit: `n_gpus` GPUs of `gpu`, attention data-parallel over n_gpus / tp ranks, routed
    experts over `ep` GPUs (n_routed_experts + redundant_experts replicas, balanced), weights in
    `dtype`, KV cache in `kv_dtype`. `kv_capacity_tokens` is what one rank's cache holds next to
    the weights, a reserve and the activations of `max_step_tokens` tokens. MLA decodes absorbed
    and prefills naive (`prefill_mla`), as DeepSeek serves it; dsim.model's serving loop runs
    absorbed in both (`prefill_mla="absorb"`)."""

    def __init__(
        self,
        args: ModelArgs,
        gpu: str = "H800",
        n_gpus: int = 8,
        ep: int | None = None,
        tp: int = 1,
        dtype: str = "fp8",
        kv_dtype: str = "bf16",
        redundant_experts: int = 0,
        overlap: bool = True,
        gpus_per_node: int = 8,
        reserved_bytes: float = RESERVED_BYTES,
        decode_attention: str = "dsim",
        prefill_mla: str = "naive",
        max_step_tokens: int = 16384,
        calibration: timing.Calibration | None = None,
    ):
        if prefill_mla not in ("naive", "absorb"):
            raise ValueError(f"prefill_mla must be 'naive' or 'absorb', got {prefill_mla!r}")
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(
                f"decode_attention must be one of {', '.join(DECODE_ATTENTION)}, "
                f"got {decode_attention!r}"
            )
        s = Serving(
            args, gpu, "decode", n_gpus, ep, tp, 1, 1, 0.0, dtype, kv_dtype, redundant_experts,
            overlap, gpus_per_node, reserved_bytes, calibration,
        )  # fmt: skip
        self.serving, self.args, self.tp, self.dtype = s, args, tp, dtype
        self.gpu, self.n_gpus, self.gpus_per_node = s.gpu, n_gpus, gpus_per_node
        self.decode_attention = decode_attention
        self.max_step_tokens = max_step_tokens
        # a sliding-window layer keeps at most its window: the bytes of a token are the most while
        # a sequence is within the window (every layer keeps every token), so counting every token
        # at that price never overcommits the cache of longer sequences (which need less)
        within = dict(seq_len=args.sliding_window) if args.sliding_window else {}
        per_token = kv_cache_bytes_per_token(args, kv_dtype, **within)
        self.kv_bytes_per_token = per_token / kv_tp_split(args, tp)
        layer = next((i for i in range(args.n_layers) if is_moe_layer(args, i)), 0)
        acts = layer_activation_bytes(args, layer, 1, max_step_tokens, ACT_DTYPE, "cuda") / tp
        free = s.gpu.hbm_bytes - reserved_bytes - s.weight_bytes - acts
        self.kv_capacity_tokens = int(free // self.kv_bytes_per_token) if free > 0 else 0
        if self.kv_capacity_tokens < 1:
            raise ValueError(
                f"{args.name} leaves no room for a KV cache on {s.gpu.name} with ep={s.ep}, "
                f"tp={tp}: weights {s.weight_bytes / 1e9:.1f} GB + activations of "
                f"{max_step_tokens} tokens {acts / 1e9:.1f} GB + {reserved_bytes / 1e9:.0f} GB "
                f"reserved >= {s.gpu.hbm_bytes / 1e9:.0f} GB"
            )
        # distinct kinds of block: (MoE or dense, attention window), with a representative layer
        kinds: dict[tuple[bool, int], list[int]] = {}
        for i in range(args.n_layers):
            kinds.setdefault((args.is_moe and is_moe_layer(args, i), layer_window(args, i)), [])
            kinds[(args.is_moe and is_moe_layer(args, i), layer_window(args, i))].append(i)
        self.kinds = {k: (v[0], len(v)) for k, v in kinds.items()}
        mla = args.attn_type == "mla"
        self.dec_args = shard_args(args.replace(attn_impl="absorb") if mla else args, tp)
        self.pre_args = shard_args(args.replace(attn_impl=prefill_mla) if mla else args, tp)
        self._memo: dict[tuple, float] = {}

    # -- the parts of a step ---------------------------------------------------------------------
    def _fused_decode_attention(self, seqs: int, q_tokens: int, ctx: int, window: int) -> float:
        """One fused kernel over the cache (FlashMLA-like): seconds per block."""
        a, cal = self.dec_args, self.serving.op_times.cal
        keys = min(ctx + q_tokens, window) if window else ctx + q_tokens
        if a.attn_type == "mla":  # scores over c_kv and k_pe, then p @ c_kv
            width = 2 * a.kv_lora_rank + a.qk_rope_head_dim
        else:  # scores q.k, then p @ v, each head_size wide
            width = 2 * a.head_size
        flops = 2.0 * seqs * q_tokens * a.n_heads * keys * width
        cache = self.kv_bytes_per_token / self.args.n_layers * keys * seqs
        compute = flops / (self.gpu.bf16_flops * cal.mma_eff)
        memory = cache / (self.gpu.hbm_bw * cal.bw_eff)
        return cal.launch_s + max(compute, memory)

    def _block_ops(self, layer: int, shape: StepShape) -> tuple[list[PlanOp], float]:
        """The non-expert ops of one block for this step, and any extra seconds (a fused
        decode attention core)."""
        d, p = shape.decode_seqs, shape.prefill_seqs
        extra = 0.0
        dec, pre = [], []
        if d:  # a sliding-window layer's cache holds its window only (`served_context`)
            ctx = served_context(self.args, layer, shape.decode_context)
            dec = block_plan(self.dec_args, layer, d, shape.decode_tokens, ctx, "decode")
            if self.decode_attention == "flashmla":
                dec = [o for o in dec if o.component != Component.ATTN_CORE]
                window = layer_window(self.args, layer)
                extra = self._fused_decode_attention(
                    d, shape.decode_tokens, shape.decode_context, window
                )
        if p:
            new = -(-shape.prefill_tokens // p)
            ctx = served_context(self.args, layer, shape.prefill_context)
            pre = block_plan(self.pre_args, layer, p, new, ctx, "prefill")
        ops = dec + pre
        if d and p:  # one pass of the linear layers over all tokens; each attention at its shape
            linear = block_plan(self.pre_args, layer, 1, shape.tokens, 0, "prefill")
            ops = [o for o in linear if o.component != Component.ATTN_CORE] + [
                o for o in dec + pre if o.component == Component.ATTN_CORE
            ]
        return [o for o in ops if o.op != "moe_ffn"], extra

    def _time(self, shape: StepShape) -> float:
        s = self.serving
        seqs = shape.decode_seqs + shape.prefill_seqs
        overlap = s.overlap and seqs >= 2  # two micro-batches need two sequences
        total = 0.0
        for (moe, _), (layer, count) in self.kinds.items():
            ops, extra = self._block_ops(layer, shape)
            total += count * sum(s.block_time(ops, shape.tokens, moe, overlap, extra))
        rows = shape.decode_seqs * shape.decode_tokens + shape.prefill_seqs  # logits wanted
        return total + sum(s.ends_time(shape.tokens, rows))

    def __call__(self, shape: StepShape) -> float:
        if shape.tokens < 1:
            raise ValueError("a step needs at least one token")
        key = StepShape(
            shape.decode_seqs,
            shape.decode_tokens,
            _bucket(shape.decode_context) if shape.decode_seqs else 0,
            shape.prefill_seqs,
            _bucket(shape.prefill_tokens),
            _bucket(shape.prefill_context) if shape.prefill_seqs else 0,
        )
        t = self._memo.get(key)
        if t is None:
            t = self._memo[key] = self._time(key)
        return t
