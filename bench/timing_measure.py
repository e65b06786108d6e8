#!/usr/bin/env python
"""Measure op times on this GPU, for dsim's time model (dsim/cost/timing/).

One run measures two disjoint grids of shapes:
  calibration  the shapes `fit_calibration` fits the model's few efficiency constants on;
  validation   other shapes (other model widths, token counts, sequence lengths) on which the
               fitted model is then judged, so its error is an out-of-sample error.
Op kinds (what each record times is defined precisely in dsim/cost/timing/ops.py's docstring):
  gemm          y[m,n] = x[m,k] @ w[k,n] (F.linear), bf16 (and fp32 for the router)
  moe_ffn       dsim.model.MoE without shared experts: gate + permute + 3 grouped GEMMs + unpermute
  attention     F.scaled_dot_product_attention (backend recorded), MHA 128/128 and MLA 192/128 dims,
                and GQA (enable_gqa, kv_heads < n_heads; validation only)
  rmsnorm, elementwise, gate   memory-bound ops
  grouped_gemm, sort, gather_rows, index_select_rows, index_add_rows   pieces of the MoE layer
                (calibration only) so that each efficiency is fitted where it is isolated.

How a time is taken (GPU): before each repeat the L2 cache is flushed (a 256 MiB read) and the
GPU is put to sleep for a moment (torch.cuda._sleep) so that the CPU has queued the whole op
before the GPU reaches it; CUDA events around the op then give its GPU time (kernels and the
gaps between them) with a cold L2, free of Python's dispatch overhead. The median of the repeats
is recorded. On a CPU (--device cpu) plain wall-clock time is used; that mode only exercises the
code paths (--quick: a tiny grid in seconds).

Usage:
  python bench/timing_measure.py --out dsim/data/timing_h100.json          # ~3-4 min on an H100
  python bench/timing_measure.py --device cpu --quick --out /tmp/timing_cpu.json
  python bench/timing_measure.py --only moe_ffn --merge --out dsim/data/timing_h100.json
At the end it runs bench/validate_timing.py on the new file (skip with --no-validate).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dsim.config import ModelArgs  # noqa: E402
from dsim.model import Gate, MoE, grouped_mm  # noqa: E402

SCHEMA = 1
L2_FLUSH_BYTES = 256 * 2**20  # > 4x the L2 of an H100 (50 MiB) or H200 (60 MiB)

# ---------------------------------------------------------------------------------------------
# The grids. A case: op, split, backward, dtype, shape (the keyword arguments of op_time).
# ---------------------------------------------------------------------------------------------
# MoE layer widths (dim, moe_inter_dim, n_routed_experts, n_activated_experts). Calibration and
# validation use different models so that the validation error says how the model does on a
# layer it has never seen.
MOE_CAL = [(3072, 8192, 8, 2), (2048, 1024, 32, 4), (5120, 1536, 160, 6), (4096, 1536, 128, 8)]
MOE_VAL = [
    (4096, 14336, 8, 2),  # Mixtral-8x7B
    (6144, 16384, 8, 2),  # Mixtral-8x22B
    (2048, 1408, 64, 6),  # DeepSeekMoE-16B / DeepSeek-V2-Lite
    (2048, 768, 128, 8),  # Qwen3-30B-A3B-like
    (1024, 512, 64, 8),  # OLMoE-like, small
    (7168, 2048, 256, 8),
]  # DeepSeek-V3


def case(
    op: str, split: str, shape: dict[str, Any], backward: bool = False, dtype: str = "bf16"
) -> dict:
    return dict(op=op, split=split, backward=backward, dtype=dtype, shape=shape)


def full_grid() -> list[dict]:
    cases: list[dict] = []
    C, V = "calibration", "validation"
    # GEMMs: training sizes (many tokens) and decode sizes (a few tokens against a large weight).
    for s in (512, 1024, 2048, 3072, 4096, 6144, 8192):
        cases.append(case("gemm", C, dict(m=s, n=s, k=s)))
    for m in (256, 1024, 4096, 16384):
        for n, k in (
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (1536, 5120),
            (24576, 1536),
            (2048, 2048),
        ):
            cases.append(case("gemm", C, dict(m=m, n=n, k=k)))
    for m in (1024, 4096, 16384):  # a thin inner dimension: the tile epilogue shows
        for n, k in ((16384, 256), (12288, 768)):
            cases.append(case("gemm", C, dict(m=m, n=n, k=k)))
    for m in (1, 8, 32, 128):
        for n, k in ((4096, 4096), (14336, 4096), (4096, 14336), (1536, 5120)):
            cases.append(case("gemm", C, dict(m=m, n=n, k=k)))
    for m in (1, 128, 1024, 8192, 32768):  # the router's fp32 GEMM
        for n, k in ((16, 4096), (64, 2048), (256, 7168)):
            cases.append(case("gemm", C, dict(m=m, n=n, k=k), dtype="fp32"))
    for m in (512, 3000, 8192, 12288):
        for n, k in (
            (18432, 7168),
            (7168, 18432),
            (7168, 16384),
            (32768, 512),
            (10944, 2048),
            (5120, 5120),
        ):
            cases.append(case("gemm", V, dict(m=m, n=n, k=k)))
    for m in (1, 4, 16, 64):
        for n, k in (
            (18432, 7168),
            (7168, 16384),
            (24576, 1536),
            (576, 7168),
            (32768, 512),
            (10944, 2048),
        ):
            cases.append(case("gemm", V, dict(m=m, n=n, k=k)))
    for m in (2048, 16384):
        for n, k in ((8, 4096), (160, 5120), (256, 7168)):
            cases.append(case("gemm", V, dict(m=m, n=n, k=k), dtype="fp32"))

    # MoE layers (routed experts + gate), forward and forward+backward.
    for fam in MOE_CAL:
        for t in (128, 1024, 4096, 16384):
            for bwd in (False, True):
                cases.append(case("moe_ffn", C, moe_shape(fam, t), bwd))
    for fam in MOE_VAL:
        tokens = (64, 512, 2048, 8192) if fam[2] >= 256 else (64, 512, 2048, 8192, 16384)
        for t in tokens:
            for bwd in (False, True):
                cases.append(case("moe_ffn", V, moe_shape(fam, t), bwd))
    # Grouped GEMM alone (balanced experts): forward, and forward+backward (dX and dW).
    for groups, n, k in ((8, 14336, 4096), (64, 1408, 2048), (256, 2048, 7168), (32, 1024, 4096)):
        for rows in (16, 128, 512, 2048):
            if groups * rows * max(n, k) * 2 > 8e9:
                continue
            for bwd in (False, True):
                cases.append(
                    case(
                        "grouped_gemm", C, dict(tokens=groups * rows, n=n, k=k, groups=groups), bwd
                    )
                )
    # Pieces of the permutation.
    for rows, width in ((4096, 2048), (32768, 4096), (131072, 2048), (262144, 7168)):
        for bwd in (False, True):
            for op in ("gather_rows", "index_select_rows", "index_add_rows"):
                cases.append(case(op, C, dict(rows=rows, width=width, dst_rows=rows // 8), bwd))
    for n, groups in (
        (8192, 8),
        (131072, 64),
        (1048576, 256),
        (4096, 160),
        (1024, 64),
        (2048, 256),
        (32768, 16),
        (262144, 128),
    ):
        cases.append(case("sort", C, dict(n=n, groups=groups)))

    # Attention: MHA-like head dims (flash) and MLA head dims (qk 192 != v 128).
    cal_bsh = (
        (1, 1024, 16),
        (4, 2048, 16),
        (1, 4096, 32),
        (2, 8192, 8),
        (8, 512, 32),
        (16, 256, 16),
    )
    val_bsh = (
        (2, 1024, 32),
        (1, 2048, 128),
        (4, 4096, 16),
        (1, 8192, 16),
        (8, 1536, 8),
        (32, 384, 16),
    )
    for split, grid in ((C, cal_bsh), (V, val_bsh)):
        for b, s, h in grid:
            for qk, v in ((128, 128), (192, 128)):
                for causal in (True, False):
                    for bwd in (False, True):
                        cases.append(
                            case(
                                "attention",
                                split,
                                dict(
                                    batch=b,
                                    seq_len=s,
                                    n_heads=h,
                                    qk_head_dim=qk,
                                    v_head_dim=v,
                                    causal=causal,
                                ),
                                bwd,
                            )
                        )
    for split, grid in (
        (C, ((8, 4096, 32), (64, 2048, 16), (1, 32768, 32))),
        (V, ((16, 8192, 32), (128, 1024, 16), (4, 16384, 128))),
    ):
        for b, s, h in grid:  # decode: one query, s keys
            for qk, v in ((128, 128), (192, 128)):
                cases.append(
                    case(
                        "attention",
                        split,
                        dict(
                            batch=b,
                            seq_len=1,
                            kv_seq_len=s,
                            n_heads=h,
                            qk_head_dim=qk,
                            v_head_dim=v,
                            causal=False,
                        ),
                    )
                )

    # GQA (enable_gqa): keys and values of kv_heads heads, each shared by a group of query heads.
    # Validation only (the fit never sees them): they check the time model's reading of GQA.
    gqa = dict(qk_head_dim=128, v_head_dim=128)
    for b, s, h, hk in ((16, 8192, 32, 8), (64, 4096, 64, 4), (4, 32768, 64, 8)):  # decode
        shape = dict(batch=b, seq_len=1, kv_seq_len=s, n_heads=h, kv_heads=hk, causal=False)
        cases.append(case("attention", V, {**shape, **gqa}))
    for b, s, h, hk in ((2, 4096, 32, 8), (1, 8192, 64, 4)):  # prefill and training
        for bwd in (False, True):
            shape = dict(batch=b, seq_len=s, n_heads=h, kv_heads=hk, causal=True)
            cases.append(case("attention", V, {**shape, **gqa}, bwd))

    # Memory-bound ops.
    for t in (1, 32, 256, 4096, 16384, 65536):
        for d in (1024, 4096):
            for bwd in (False, True):
                cases.append(case("rmsnorm", C, dict(tokens=t, dim=d), bwd))
    for t in (1, 64, 1000, 8192, 32768):
        for d in (2048, 3072, 5120, 7168):
            for bwd in (False, True):
                cases.append(case("rmsnorm", V, dict(tokens=t, dim=d), bwd))
    for kind in ("add", "copy", "cast", "bcast_mul", "sum_k"):
        for e in (14, 16, 18, 20, 22, 24, 26, 28):
            cases.append(case("elementwise", C, elementwise_shape(kind, 2**e)))
    for k in (1, 2, 4, 8, 16, 32):  # k tiny kernels back to back: launch latency and gaps
        cases.append(
            case("elementwise", C, dict(bytes=16384 * k, kind="chain", numel=4096, kernels=k))
        )
    for kind in ("mul", "silu", "cast", "add", "copy", "bcast_mul", "sum_k"):
        for n in (
            3000 * 1024 // 1000,
            50_000 * 1024 // 1000,
            700_000 * 1024 // 1000,
            5_000_000,
            30_000_000,
            120_000_000,
            400_000_000,
        ):
            n = n // 8192 * 8192 if kind in ("bcast_mul", "sum_k") and n >= 8192 else n
            if kind in ("bcast_mul", "sum_k") and n < 8192:
                continue
            cases.append(case("elementwise", V, elementwise_shape(kind, n)))
    for k in (3, 12, 24):
        cases.append(
            case("elementwise", V, dict(bytes=16384 * k, kind="chain", numel=4096, kernels=k))
        )
    for t in (1, 64, 256, 1024, 4096, 32768):
        for d, e, k in ((4096, 8, 2), (2048, 64, 6), (3072, 32, 4), (5120, 256, 8)):
            cases.append(
                case("gate", C, dict(tokens=t, dim=d, n_routed_experts=e, n_activated_experts=k))
            )
    for t in (1, 128, 2048, 16384):
        for d, e, k in (
            (7168, 256, 8),
            (5120, 160, 6),
            (2048, 128, 8),
            (4096, 8, 2),
            (6144, 8, 2),
            (2048, 64, 6),
            (1024, 64, 8),
            (2560, 96, 4),
            (7168, 64, 4),
            (1536, 16, 2),
        ):
            cases.append(
                case("gate", V, dict(tokens=t, dim=d, n_routed_experts=e, n_activated_experts=k))
            )
    return cases


def quick_grid() -> list[dict]:
    """A tiny grid that exercises every code path in seconds on a CPU."""
    C, V = "calibration", "validation"
    cases = [
        case("gemm", C, dict(m=64, n=128, k=96)),
        case("gemm", V, dict(m=3, n=256, k=64)),
        case("gemm", C, dict(m=128, n=8, k=64), dtype="fp32"),
        case("grouped_gemm", C, dict(tokens=64, n=32, k=48, groups=4), True),
        case("sort", C, dict(n=1000, groups=8)),
    ]
    for op in ("gather_rows", "index_select_rows", "index_add_rows"):
        cases.append(case(op, C, dict(rows=256, width=64, dst_rows=32), True))
    for split, t in ((C, 32), (V, 48)):
        for bwd in (False, True):
            cases.append(case("moe_ffn", split, moe_shape((64, 32, 8, 2), t), bwd))
            cases.append(
                case(
                    "attention",
                    split,
                    dict(batch=1, seq_len=t, n_heads=2, qk_head_dim=24, v_head_dim=16, causal=True),
                    bwd,
                )
            )
            cases.append(case("rmsnorm", split, dict(tokens=t, dim=64), bwd))
    cases.append(
        case(
            "attention",
            V,
            dict(
                batch=2,
                seq_len=1,
                kv_seq_len=40,
                n_heads=2,
                qk_head_dim=16,
                v_head_dim=16,
                causal=False,
            ),
        )
    )
    cases += [
        case("elementwise", C, elementwise_shape("add", 4096)),
        case("elementwise", C, elementwise_shape("bcast_mul", 8192)),
        case("elementwise", C, elementwise_shape("sum_k", 8192)),
        case("elementwise", C, dict(bytes=16384 * 4, kind="chain", numel=4096, kernels=4)),
        case("elementwise", V, elementwise_shape("silu", 5000)),
        case("gate", C, dict(tokens=32, dim=64, n_routed_experts=8, n_activated_experts=2)),
        case("gate", V, dict(tokens=16, dim=32, n_routed_experts=16, n_activated_experts=4)),
    ]
    return cases


def moe_shape(fam: tuple[int, int, int, int], tokens: int) -> dict:
    dim, inter, experts, top_k = fam
    return dict(
        tokens=tokens,
        dim=dim,
        moe_inter_dim=inter,
        n_routed_experts=experts,
        n_activated_experts=top_k,
    )


# bytes moved per element (read + written, bf16 = 2 bytes; cast reads bf16, writes fp32; bcast_mul:
# [n/1024, 1024] * [n/1024, 1]; sum_k: [n/8192, 8, 1024].sum(1), as the MoE layer's weighted sum)
_EW_BYTES = {"add": 6, "mul": 6, "copy": 4, "silu": 4, "cast": 6, "bcast_mul": 4, "sum_k": 2.25}


def elementwise_shape(kind: str, numel: int) -> dict:
    return dict(bytes=int(_EW_BYTES[kind] * numel), kind=kind, numel=numel)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
class Timer:
    """Times a callable: GPU time with CUDA events (cold L2, CPU queued ahead), or CPU wall time."""

    def __init__(self, device: torch.device, quick: bool):
        self.device, self.quick = device, quick
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.flush_buf = torch.empty(
                L2_FLUSH_BYTES // 4, dtype=torch.float32, device=device
            ).fill_(1.0)
            self.cycles_per_ms = self._sleep_rate()

    def _sleep_rate(self) -> float:
        """GPU clock cycles per millisecond of torch.cuda._sleep, measured once."""
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)
        s.record()
        torch.cuda._sleep(2_000_000)
        e.record()
        torch.cuda.synchronize()
        return 2_000_000 / max(s.elapsed_time(e), 1e-3)

    def once(self, fn: Callable[[], Any], setup: Callable[[], Any] | None) -> float:
        if setup:
            setup()
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / 1e3

    def measure(
        self, fn: Callable[[], Any], setup: Callable[[], Any] | None = None, sleep_ms: float = 0.3
    ) -> dict[str, Any]:
        """Median time (s) of repeats of fn; setup runs before each, outside the timed region."""
        first = self.once(fn, setup)  # warm-up (allocations, heuristics)
        est = min(first, self.once(fn, setup))  # second warm-up, and an estimate
        if self.quick:
            reps = 3
        else:
            reps = int(min(25, max(5, math.ceil(0.04 / max(est, 1e-6)))))
        if not self.cuda:
            times = []
            for _ in range(reps):
                if setup:
                    setup()
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        else:
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(reps)
            ]
            torch.cuda.synchronize()
            for s, e in events:
                if setup:
                    setup()
                self.flush_buf.sum()  # evict the L2 by reading 256 MiB
                torch.cuda._sleep(int(self.cycles_per_ms * sleep_ms))  # let the CPU queue the op
                s.record()
                fn()
                e.record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1e3 for s, e in events]
        times.sort()
        return dict(time_s=times[len(times) // 2], min_s=times[0], max_s=times[-1], reps=reps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Case builders: each returns (fn, setup, extra) for one case.
# ---------------------------------------------------------------------------------------------
DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _randn(
    *shape: int, device: torch.device, dtype=torch.bfloat16, grad: bool = False
) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def _backward_fn(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]):
    """fn = forward + backward (random output gradient); setup clears the leaves' gradients."""
    grad_out: list[torch.Tensor] = []

    def fn() -> None:
        out = forward()
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])

    def setup() -> None:
        for t in leaves:
            t.grad = None

    return fn, setup


def moe_layer_args(dim: int, inter: int, experts: int, top_k: int) -> ModelArgs:
    """One MoE layer as the time model's moe_ffn and gate ops describe it: softmax routing over
    `experts`, top_k renormalised, no shared expert."""
    return ModelArgs(
        dim=dim,
        moe_inter_dim=inter,
        n_routed_experts=experts,
        n_activated_experts=top_k,
        n_shared_experts=0,
        n_layers=1,
        n_dense_layers=0,
        inter_dim=0,
        score_func="softmax",
        route_norm=True,
        name="timing",
    )


def in_bf16(module: type[torch.nn.Module], args: ModelArgs, device: torch.device):
    """module(args) with its weights built directly in bf16 on the device."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return module(args)
    finally:
        torch.set_default_dtype(default)


class MoECache:
    """Keeps one MoE module per (dim, moe_inter_dim, n_routed_experts, n_activated_experts) while
    its cases run (weights are large)."""

    def __init__(self):
        self.key, self.moe = None, None

    def get(self, fam: tuple[int, int, int, int], device: torch.device) -> MoE:
        if fam != self.key:
            self.moe, self.key = None, None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            dim, inter, experts, top_k = fam
            self.moe = in_bf16(MoE, moe_layer_args(dim, inter, experts, top_k), device)
            self.key = fam
        return self.moe


MOE_CACHE = MoECache()


def build(c: dict, device: torch.device):
    op, s, bwd, dtype = c["op"], c["shape"], c["backward"], DT[c["dtype"]]
    extra: dict[str, Any] = {}
    setup = None
    if op == "gemm":
        x = _randn(s["m"], s["k"], device=device, dtype=dtype, grad=bwd)
        w = (_randn(s["n"], s["k"], device=device, dtype=dtype) * s["k"] ** -0.5).requires_grad_(
            bwd
        )
        fn = lambda: F.linear(x, w)  # noqa: E731
        if bwd:
            fn, setup = _backward_fn(lambda: F.linear(x, w), [x, w])
    elif op == "moe_ffn":
        fam = (s["dim"], s["moe_inter_dim"], s["n_routed_experts"], s["n_activated_experts"])
        moe = MOE_CACHE.get(fam, device)
        x = _randn(s["tokens"], s["dim"], device=device, grad=bwd)
        with torch.no_grad():
            moe(x)
        counts = torch.bincount(
            moe.routing.indices.flatten(), minlength=s["n_routed_experts"]
        ).tolist()
        extra["expert_counts"] = dict(
            max=max(counts),
            min=min(counts),
            tiles64=sum(math.ceil(n / 64) for n in counts),
            tiles128=sum(math.ceil(n / 128) for n in counts),
        )
        if bwd:
            fn, setup0 = _backward_fn(lambda: moe(x), [x])

            def setup() -> None:
                setup0()
                moe.zero_grad(set_to_none=True)
        else:

            def fn():
                with torch.no_grad():
                    return moe(x)
    elif op == "grouped_gemm":
        g, rows = s["groups"], s["tokens"] // s["groups"]
        xs = _randn(s["tokens"], s["k"], device=device, grad=bwd)
        w = (_randn(g, s["n"], s["k"], device=device) * s["k"] ** -0.5).requires_grad_(bwd)
        counts = torch.full((g,), rows, device=device, dtype=torch.long)
        fn = lambda: grouped_mm(xs, w, counts)  # noqa: E731
        if bwd:
            fn, setup = _backward_fn(lambda: grouped_mm(xs, w, counts), [xs, w])
    elif op in ("gather_rows", "index_select_rows", "index_add_rows"):
        rows, width, dst = s["rows"], s["width"], s["dst_rows"]
        idx = torch.randint(0, dst, (rows,), device=device)
        if op == "index_add_rows":
            src = _randn(rows, width, device=device, grad=bwd)

            def fwd():
                return torch.zeros(dst, width, device=device, dtype=torch.bfloat16).index_add_(
                    0, idx, src
                )

        elif op == "gather_rows":
            src = _randn(dst, width, device=device, grad=bwd)

            def fwd():
                return src[idx]

        else:
            src = _randn(dst, width, device=device, grad=bwd)

            def fwd():
                return src.index_select(0, idx)

        leaves = [src]
        fn = fwd
        if bwd:
            fn, setup = _backward_fn(fwd, leaves)
    elif op == "sort":
        keys = torch.randint(0, s["groups"], (s["n"],), device=device)
        fn = lambda: torch.argsort(keys, stable=True)  # noqa: E731
    elif op == "attention":
        b, sq, h, qk, v = s["batch"], s["seq_len"], s["n_heads"], s["qk_head_dim"], s["v_head_dim"]
        skv, hk = s.get("kv_seq_len") or sq, s.get("kv_heads") or h
        leaves = [
            _randn(b, sq, h, qk, device=device, grad=bwd),
            _randn(b, skv, hk, qk, device=device, grad=bwd),
            _randn(b, skv, hk, v, device=device, grad=bwd),
        ]
        q, k, vv = (
            t.transpose(1, 2) for t in leaves
        )  # [B, H, S, d] views, as dsim.model.attention
        causal, gqa = s["causal"], {"enable_gqa": True} if hk != h else {}
        fwd = lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=causal, **gqa)  # noqa: E731
        extra["backend"] = sdpa_backend(q, k, vv, causal, **gqa)
        fn = fwd
        if bwd:
            fn, setup = _backward_fn(fwd, leaves)
    elif op == "rmsnorm":
        x = _randn(s["tokens"], s["dim"], device=device, grad=bwd)
        w = torch.ones(s["dim"], device=device, dtype=torch.bfloat16, requires_grad=bwd)
        fwd = lambda: F.rms_norm(x, (s["dim"],), w, 1e-6)  # noqa: E731
        fn = fwd
        if bwd:
            fn, setup = _backward_fn(fwd, [x, w])
    elif op == "elementwise":
        n, kind = s["numel"], s["kind"]
        a, b = _randn(n, device=device), _randn(n, device=device)
        out = torch.empty_like(a)
        if kind == "chain":

            def fn():
                for _ in range(s["kernels"]):
                    a.add_(1.0)
        elif kind == "bcast_mul":
            a2, w = a.view(-1, 1024), _randn(n // 1024, 1, device=device)
            fn = lambda: a2 * w  # noqa: E731
        elif kind == "sum_k":
            a3 = a.view(-1, 8, 1024)
            fn = lambda: a3.sum(1)  # noqa: E731
        else:
            fn = {
                "add": lambda: torch.add(a, b, out=out),
                "copy": lambda: out.copy_(a),
                "mul": lambda: a * b,
                "silu": lambda: F.silu(a),
                "cast": lambda: a.float(),
            }[kind]
    elif op == "gate":
        args = moe_layer_args(s["dim"], 16, s["n_routed_experts"], s["n_activated_experts"])
        gate = in_bf16(Gate, args, device)
        x = _randn(s["tokens"], s["dim"], device=device)

        def fn():
            with torch.no_grad():
                return gate(x)
    else:
        raise ValueError(f"unknown op {op!r}")
    return fn, setup, extra


def sdpa_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, enable_gqa: bool = False
) -> str:
    """The backend F.scaled_dot_product_attention picks for these inputs (flash,
    efficient, cudnn, math)."""
    try:
        from torch.nn.attention import SDPBackend

        gqa = {"enable_gqa": True} if enable_gqa else {}
        choice = torch._fused_sdp_choice(q, k, v, None, 0.0, causal, **gqa)
        return SDPBackend(choice).name.lower()
    except Exception as e:  # private API; keep the measurement going
        return f"unknown ({type(e).__name__})"


# ---------------------------------------------------------------------------------------------
# Kernel profiles of a few cases: which kernels run and how long each takes (for the breakdowns).
# ---------------------------------------------------------------------------------------------
def profile_case(c: dict, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn, setup, _ = build(c, device)
    for _ in range(2):
        if setup:
            setup()
        fn()
    sync(device)
    if setup:
        setup()
    kind = (
        torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    )
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    kernels: dict[str, list[float]] = {}
    sequence: list[tuple[float, str, float]] = []
    for evt in prof.events():
        if getattr(evt, "device_type", None) == kind:
            dur = evt.time_range.elapsed_us() if hasattr(evt, "time_range") else 0.0
            name = evt.name if len(evt.name) < 200 else evt.name[:197] + "..."
            kernels.setdefault(name, []).append(dur)
            sequence.append(
                (evt.time_range.start if hasattr(evt, "time_range") else 0.0, name, dur)
            )
    rows = sorted(([n, len(d), sum(d) * 1e-6] for n, d in kernels.items()), key=lambda r: -r[2])
    sequence.sort()
    return dict(
        op=c["op"],
        backward=c["backward"],
        shape=c["shape"],
        dtype=c["dtype"],
        kernels=[dict(name=n, count=k, time_s=t) for n, k, t in rows],
        sequence=[dict(name=n, time_s=d * 1e-6) for _, n, d in sequence[:300]],
    )


PROFILE_CASES = [
    case("moe_ffn", "profile", moe_shape((2048, 1408, 64, 6), 4096), False),
    case("moe_ffn", "profile", moe_shape((2048, 1408, 64, 6), 4096), True),
    case("moe_ffn", "profile", moe_shape((7168, 2048, 256, 8), 512), True),
    case("moe_ffn", "profile", moe_shape((4096, 14336, 8, 2), 64), False),
    case(
        "attention",
        "profile",
        dict(batch=2, seq_len=4096, n_heads=16, qk_head_dim=128, v_head_dim=128, causal=True),
        True,
    ),
    case(
        "attention",
        "profile",
        dict(batch=2, seq_len=4096, n_heads=16, qk_head_dim=192, v_head_dim=128, causal=True),
        True,
    ),
    case(
        "attention",
        "profile",
        dict(
            batch=8,
            seq_len=1,
            kv_seq_len=4096,
            n_heads=32,
            qk_head_dim=128,
            v_head_dim=128,
            causal=False,
        ),
    ),
    case(
        "attention",
        "profile",
        dict(
            batch=8,
            seq_len=1,
            kv_seq_len=4096,
            n_heads=32,
            qk_head_dim=192,
            v_head_dim=128,
            causal=False,
        ),
    ),
    case("gemm", "profile", dict(m=8192, n=8192, k=8192)),
    case("gemm", "profile", dict(m=1024, n=1024, k=1024)),
    case("gemm", "profile", dict(m=3000, n=7168, k=18432)),
    case("gemm", "profile", dict(m=12288, n=32768, k=512)),
    case("gemm", "profile", dict(m=1, n=18432, k=7168)),
    case("gemm", "profile", dict(m=16, n=4096, k=4096)),
    case("gemm", "profile", dict(m=64, n=576, k=7168)),
    case("gemm", "profile", dict(m=16384, n=64, k=2048), dtype="fp32"),
    case("grouped_gemm", "profile", dict(tokens=8 * 2048, n=14336, k=4096, groups=8), True),
    case("grouped_gemm", "profile", dict(tokens=64 * 16, n=1408, k=2048, groups=64), True),
    case("rmsnorm", "profile", dict(tokens=8192, dim=4096), True),
    case(
        "gate", "profile", dict(tokens=4096, dim=2048, n_routed_experts=64, n_activated_experts=6)
    ),
    case("gather_rows", "profile", dict(rows=32768, width=4096, dst_rows=4096), True),
    case("index_select_rows", "profile", dict(rows=32768, width=4096, dst_rows=4096), True),
    case("sort", "profile", dict(n=131072, groups=64)),
]


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def catalog_name(device_name: str) -> str:
    """The dsim.cost.hardware name of a CUDA device ('NVIDIA H100 80GB HBM3' -> 'H100-SXM')."""
    n = device_name.upper()
    if "H200" in n:
        return "H200"
    if "H800" in n:
        return "H800"
    if "H100" in n:
        return "H100-PCIe" if "PCIE" in n else "H100-SXM"
    if "A100" in n:
        return "A100-40GB-SXM" if "40GB" in n else "A100-80GB-SXM"
    return device_name


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = dict(
        torch=torch.__version__, python=platform.python_version(), device_type=device.type
    )
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            gpu=catalog_name(torch.cuda.get_device_name(device)),
            sm_count=p.multi_processor_count,
            memory_bytes=p.total_memory,
            capability=list(torch.cuda.get_device_capability(device)),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
        for attr in ("L2_cache_size", "clock_rate", "memory_clock_rate"):
            if hasattr(p, attr):
                env[attr] = getattr(p, attr)
    else:
        env.update(
            device_name=platform.processor() or "cpu", gpu="cpu", threads=torch.get_num_threads()
        )
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="output JSON (e.g. dsim/data/timing_h100.json)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument(
        "--quick", action="store_true", help="tiny grid, 3 repeats (tests the code paths)"
    )
    ap.add_argument("--only", default="", help="comma-separated op kinds to measure (default: all)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured op kinds in an existing --out",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the kernel profiles")
    ap.add_argument(
        "--no-validate", action="store_true", help="do not run bench/validate_timing.py afterwards"
    )
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "CUDA is not available: use --device cpu --quick to test the code paths",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    start = time.time()
    cases = quick_grid() if a.quick else full_grid()
    only = {o.strip() for o in a.only.split(",") if o.strip()}
    if only:
        cases = [c for c in cases if c["op"] in only]
    # (the grids list the MoE cases layer width by layer width, so each module is built once)
    timer = Timer(device, a.quick)
    env = environment(device)
    print(
        f"timing_measure: {len(cases)} cases on {env['device_name']} (torch {env['torch']})",
        flush=True,
    )

    records: list[dict] = []
    last_op, n_done = None, 0
    for i, c in enumerate(cases):
        if c["op"] != last_op:
            print(f"  [{time.time() - start:6.1f}s] {c['op']} ...", flush=True)
            last_op = c["op"]
            MOE_CACHE.moe = MOE_CACHE.key = None  # free the last MoE layer's weights
            if device.type == "cuda":
                torch.cuda.empty_cache()
        try:
            fn, setup, extra = build(c, device)
            sleep_ms = (
                5.0 if c["op"] == "moe_ffn" else 2.0 if c["op"] == "gate" or c["backward"] else 0.3
            )
            res = timer.measure(fn, setup, sleep_ms)
            records.append({**c, **res, **({"extra": extra} if extra else {})})
            n_done += 1
        except torch.cuda.OutOfMemoryError as e:
            records.append({**c, "error": f"OOM: {str(e)[:200]}"})
            print(f"    OOM in {c['op']} {c['shape']}", flush=True)
        except Exception as e:  # record and keep going
            records.append({**c, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(
                f"    error in {c['op']} {c['shape']}: {type(e).__name__}: {str(e)[:200]}",
                flush=True,
            )
        finally:
            fn = setup = None
        if (i + 1) % 50 == 0:
            print(f"  [{time.time() - start:6.1f}s] {i + 1}/{len(cases)} cases", flush=True)
    MOE_CACHE.moe = MOE_CACHE.key = None
    if device.type == "cuda":
        torch.cuda.empty_cache()

    profiles: list[dict] = []
    if not a.no_profile and not only:
        print(f"  [{time.time() - start:6.1f}s] kernel profiles ...", flush=True)
        pcases = (
            PROFILE_CASES
            if not a.quick
            else [case("moe_ffn", "profile", moe_shape((64, 32, 8, 2), 32), True)]
        )
        for c in pcases:
            try:
                profiles.append(profile_case(c, device))
            except Exception as e:
                profiles.append({**c, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        MOE_CACHE.moe = MOE_CACHE.key = None

    out = Path(a.out)
    data = dict(
        schema=SCHEMA,
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        elapsed_s=round(time.time() - start, 1),
        env=env,
        quick=a.quick,
        method=(
            "median of repeats; GPU: CUDA events around one call, L2 flushed (256 MiB read) "
            "and the GPU slept before each so the CPU had queued the op; CPU: wall clock"
        ),
        records=records,
        profiles=profiles,
    )
    if a.merge and out.exists():
        old = json.loads(out.read_text())
        kept = [r for r in old["records"] if r["op"] not in {c["op"] for c in cases}]
        data = {
            **old,
            "records": kept + records,
            "merged": old.get("merged", [])
            + [dict(ops=sorted(only), env=env, created=data["created"])],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    errors = sum("error" in r for r in records)
    print(
        f"timing_measure: {n_done} measured, {errors} errors, "
        f"{time.time() - start:.0f}s; wrote {out}",
        flush=True,
    )

    if not a.no_validate:
        sys.path.insert(0, str(REPO / "bench"))
        try:
            import validate_timing

            validate_timing.main(["--data", str(out)])
        except Exception as e:  # the measurements are safe on disk already
            print(f"validate_timing failed: {type(e).__name__}: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
