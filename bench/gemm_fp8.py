#!/usr/bin/env python
"""FP8 and INT8 GEMMs against bf16 on a real GPU: speed at decode and prefill sizes, and accuracy
of FP8 accumulation as K grows (with and without promotion to fp32).

    python bench/gemm_fp8.py --out dsim/data/quant_gpu.json          # H100: about a minute
    python bench/gemm_fp8.py --device cpu --quick --out /tmp/q.json  # the same logic, tiny, on CPU

Timing
    C[m, n] = A[m, k] B[n, k]^T for DeepSeek-V3 expert shapes (gate+up fused: n=4096, k=7168; down:
    n=7168, k=2048), m = 1..64 (decode) and 4096, 16384 (prefill), with
      bf16            torch.mm
      fp8_tensor      torch._scaled_mm, one scale per tensor, use_fast_accum=True
      fp8_tensor_acc  the same with use_fast_accum=False (cuBLAS promotes partial sums to fp32)
      fp8_rowwise     one scale per row of A and per row of B (per token / per output channel)
      fp8_block       DeepSeek-V3's 1x128 activation tiles x 128x128 weight blocks, when this
                      torch offers it (several scale layouts are probed; the JSON says which works)
      int8            torch._int_mm (INT8 x INT8 -> INT32, no scaling epilogue)
    GEMM only: the operands are quantized beforehand. Each case runs `inner` calls captured in a
    CUDA graph (no launch overhead), cycling over enough weight copies that they do not fit in L2;
    after warm-up, the median over repeats is kept. Ratios are against bf16 measured in this run.

Accuracy
    For K = 256 .. 16384: A, B ~ N(0, 1) (and |N(0, 1)|), quantized to FP8 per tensor; the error
    ||C - C_ref||_F / ||C_ref||_F against the exact product of the FP8 values (fp64), for the real
    _scaled_mm with and without fast accumulation, the real blockwise GEMM, and dsim.quant's
    tensor-core model (dsim.quant.aligned_sum: terms aligned to the largest, cut to 13 bits, in
    chunks of 32 products) with and without promotion every 128 elements.

Every case that fails records its error instead of stopping the run. Output: JSON with the
device name, torch and CUDA versions, what was probed, and one record per case.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dsim.quant import FP8_DTYPE, FP8_MAX, act_quant, fp8_gemm, weight_quant  # noqa: E402

SHAPES = {"moe_gate_up": (4096, 7168), "moe_down": (7168, 2048)}  # name: (n, k)
M_DECODE, M_PREFILL = [1, 8, 16, 32, 64], [4096, 16384]
K_SWEEP = [256, 512, 1024, 2048, 4096, 8192, 16384]
L2_BYTES = 50 * 2**20  # H100 SXM: 50 MiB


def err_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


# ------------------------------------------------------------------------------------------
# Operands
# ------------------------------------------------------------------------------------------
def fp8_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ q * s with one fp32 scale s = amax / 448."""
    s = x.abs().amax().float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s


def fp8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per row: [rows, 1]."""
    s = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), s.contiguous()


def int8_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 127
    return torch.round(x.float() / s).clamp(-127, 127).to(torch.int8), s


# ------------------------------------------------------------------------------------------
# The blockwise FP8 GEMM: probe what this torch accepts, keep what computes the right thing
# ------------------------------------------------------------------------------------------
def col_major(x: torch.Tensor) -> torch.Tensor:
    """The same 2-D values stored column by column: strides (1, rows), also when a dim is 1."""
    out = torch.empty_strided(tuple(x.shape), (1, x.shape[0]), dtype=x.dtype, device=x.device)
    return out.copy_(x)


def block_layouts(
    a_s: torch.Tensor, b_s: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Candidate memory layouts of DeepSeek's scales a_s [m, k/128] and b_s [n/128, k/128]."""
    kb = a_s.shape[1]
    l4 = -(-kb // 4) * 4
    b_pad = torch.nn.functional.pad(b_s, (0, l4 - kb))  # [n/128, L4]
    return {
        "a_colmajor/b_padL4_T": (
            col_major(a_s),
            col_major(b_pad.t()),
        ),  # [L4, n/128], strides (1, L4)
        "a_colmajor/b_T": (col_major(a_s), col_major(b_s.t())),  # [k/128, n/128]
        "a_rowmajor/b_rowmajor": (a_s.contiguous(), b_s.contiguous()),
        "a_rowmajor/b_kmajor": (a_s.contiguous(), b_s.t().contiguous()),
    }


def block_gemm_candidates(a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16):
    """(name, zero-arg callable) for every API x layout that might run a
    1x128 x 128x128 FP8 GEMM."""
    F = torch.nn.functional
    out = []
    for lname, (sa, sb) in block_layouts(a_s, b_s).items():
        if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
            st = F.ScalingType
            out.append(
                (
                    f"F.scaled_mm/{lname}",
                    lambda sa=sa, sb=sb: F.scaled_mm(
                        a_q,
                        b_q.t(),
                        sa,
                        st.BlockWise1x128,
                        sb,
                        st.BlockWise128x128,
                        output_dtype=out_dtype,
                    ),
                )
            )
        out.append(
            (
                f"torch._scaled_mm/{lname}",
                lambda sa=sa, sb=sb: torch._scaled_mm(
                    a_q, b_q.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype
                ),
            )
        )
    return out


# (m, n, k): k/128 = 3, 4, 2. A single row (m=1) is left out of the probe: cuBLAS's blockwise kernel
# refuses it on some versions, which the timing table then records case by case.
PROBE_SHAPES = [(256, 384, 384), (16, 256, 512), (64, 128, 256)]


def probe_block_gemm(device: str) -> tuple[str | None, dict[str, str]]:
    """Find a blockwise call that runs AND matches dequantize-then-matmul (relative error < 1%) on
    every probe shape (k/128 not a multiple of 4, a single row, ...)."""
    g = torch.Generator(device=device).manual_seed(0)
    operands = []
    for m, n, k in PROBE_SHAPES:
        a_q, a_s = act_quant(torch.randn(m, k, device=device, generator=g), 128)
        b_q, b_s = weight_quant(torch.randn(n, k, device=device, generator=g), 128)
        operands.append((a_q, a_s, b_q, b_s, fp8_gemm(a_q, a_s, b_q, b_s, 128).double()))
    tried: dict[str, str] = {}
    names = [name for name, _ in block_gemm_candidates(*operands[0][:4])]
    for name in names:
        for (m, n, k), (a_q, a_s, b_q, b_s, ref) in zip(PROBE_SHAPES, operands):
            try:
                out = block_gemm_fn(name, a_q, a_s, b_q, b_s)().double()
                rel = float((out - ref).norm() / ref.norm())
                if rel >= 1e-2:
                    tried[name] = f"m={m} n={n} k={k}: runs but wrong, rel err {rel:.2e}"
                    break
                tried[name] = f"ok on {len(PROBE_SHAPES)} shapes, last rel err {rel:.2e}"
            except Exception as e:  # noqa: BLE001 - record whatever this torch says
                tried[name] = f"m={m} n={n} k={k}: {err_text(e)}"
                break
        else:
            return name, tried
    return None, tried


def block_gemm_fn(name: str, a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16):
    return dict(block_gemm_candidates(a_q, a_s, b_q, b_s, out_dtype))[name]


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
def time_calls(calls: list, device: str, warmup: int, reps: int) -> tuple[float, str]:
    """Median milliseconds per call of the zero-arg `calls` (run in order, one
    pass = len(calls) calls).

    CUDA: one pass is captured in a CUDA graph and replayed, timed with CUDA events; if capture
    fails, eager passes are timed with events. CPU: perf_counter.
    """

    def one_pass():
        for c in calls:
            c()

    if device == "cpu":
        for _ in range(warmup):
            one_pass()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            one_pass()
            times.append((time.perf_counter() - t0) * 1e3 / len(calls))
        return statistics.median(times), "perf_counter"
    one_pass()  # compile / pick kernels before capture
    torch.cuda.synchronize()
    method, run = "cuda_graph", None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            one_pass()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            one_pass()
        run = graph.replay
    except Exception:  # noqa: BLE001
        method, run = "eager", one_pass
        torch.cuda.synchronize()
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times), method


def make_cases(
    m: int, n: int, k: int, device: str, copies: int, block_name: str | None
) -> dict[str, list]:
    """For each kernel, a list of zero-arg calls that cycle over `copies` different weights."""
    g = torch.Generator(device=device).manual_seed(m * 31 + n)
    a = torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)
    ws = [
        (torch.randn(n, k, device=device, generator=g) * 0.02).to(torch.bfloat16)
        for _ in range(copies)
    ]
    cases: dict[str, list] = {"bf16": [lambda w=w: torch.mm(a, w.t()) for w in ws]}
    a8, sa = fp8_tensorwise(a)
    w8 = [fp8_tensorwise(w) for w in ws]
    for name, fast in (("fp8_tensor", True), ("fp8_tensor_acc", False)):
        cases[name] = [
            lambda q=q, s=s, fast=fast: torch._scaled_mm(
                a8, q.t(), scale_a=sa, scale_b=s, out_dtype=torch.bfloat16, use_fast_accum=fast
            )
            for q, s in w8
        ]
    ar, sar = fp8_rowwise(a)
    wr = [fp8_rowwise(w) for w in ws]
    cases["fp8_rowwise"] = [
        lambda q=q, s=s: torch._scaled_mm(
            ar, q.t(), scale_a=sar, scale_b=s.t(), out_dtype=torch.bfloat16, use_fast_accum=True
        )
        for q, s in wr
    ]
    if block_name is not None and k % 128 == 0 and n % 128 == 0:
        ab, sab = act_quant(a.float(), 128)
        wb = [weight_quant(w.float(), 128) for w in ws]
        cases["fp8_block"] = [block_gemm_fn(block_name, ab, sab, q, s) for q, s in wb]
    ai, _ = int8_rowwise(a)
    wi = [int8_rowwise(w)[0] for w in ws]
    cases["int8"] = [lambda q=q: torch._int_mm(ai, q.t()) for q in wi]
    return cases


def timing(device: str, quick: bool, block_name: str | None, deadline: float) -> list[dict]:
    shapes = {"small": (256, 512)} if quick else SHAPES
    ms_list = [1, 64] if quick else M_DECODE + M_PREFILL
    warmup, reps = (1, 3) if quick else (5, 10)
    rows = []
    for shape, (n, k) in shapes.items():
        for m in ms_list:
            if time.time() > deadline:
                rows.append(
                    dict(shape=shape, m=m, n=n, k=k, kernel="*", error="skipped: time budget")
                )
                continue
            copies = (
                1 if device == "cpu" else max(2, math.ceil(4 * L2_BYTES / (n * k)))
            )  # fp8 weights: n*k bytes
            copies = min(copies, 8)
            cases = make_cases(m, n, k, device, copies, block_name)
            bf16_ms = None
            for kernel, calls in cases.items():
                row = dict(shape=shape, m=m, n=n, k=k, kernel=kernel, weight_copies=copies)
                try:
                    calls[0]()  # does it run at all?
                    ms, method = time_calls(
                        calls * (20 // len(calls) + 1) if device != "cpu" else calls,
                        device,
                        warmup,
                        reps,
                    )
                    row.update(ms=ms, method=method, tflops=2 * m * n * k / (ms * 1e-3) / 1e12)
                    if kernel == "bf16":
                        bf16_ms = ms
                    if bf16_ms:
                        row["speedup_vs_bf16"] = bf16_ms / ms
                except Exception as e:  # noqa: BLE001
                    row["error"] = err_text(e)
                rows.append(row)
                print(
                    f"{shape:12s} m={m:6d} {kernel:15s} "
                    + (
                        f"{row['ms']:.4f} ms  "
                        f"x{row.get('speedup_vs_bf16', float('nan')):.2f} vs bf16"
                        if "ms" in row
                        else row["error"]
                    ),
                    flush=True,
                )
            del cases
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------
# Accuracy of FP8 accumulation as K grows
# ------------------------------------------------------------------------------------------
def accuracy(device: str, quick: bool, block_name: str | None, deadline: float) -> list[dict]:
    mn = 32 if quick else 256
    ks = [256, 1024, 2048] if quick else K_SWEEP
    rows = []
    for dist in ("normal", "abs_normal"):
        for k in ks:
            if time.time() > deadline:
                rows.append(dict(k=k, dist=dist, kernel="*", error="skipped: time budget"))
                continue
            g = torch.Generator(device=device).manual_seed(k)
            a = torch.randn(mn, k, device=device, generator=g)
            b = torch.randn(mn, k, device=device, generator=g)
            if dist == "abs_normal":
                a, b = a.abs(), b.abs()
            qa, sa = fp8_tensorwise(a)
            qb, sb = fp8_tensorwise(b)
            ref = (qa.double() @ qb.double().t()) * sa.double() * sb.double()
            ref_exact = a.double() @ b.double().t()

            def record(kernel, fn, reference=ref):
                row = dict(k=k, dist=dist, kernel=kernel, m=mn, n=mn)
                try:
                    c = fn()
                    row["out_dtype"] = str(c.dtype).replace("torch.", "")
                    c = c.double()
                    row["rel_err"] = float((c - reference).norm() / reference.norm())
                    row["max_rel_err"] = float((c - reference).abs().max() / reference.abs().max())
                    row["rel_err_vs_unquantized"] = float((c - ref_exact).norm() / ref_exact.norm())
                except Exception as e:  # noqa: BLE001
                    row["error"] = err_text(e)
                rows.append(row)

            for kernel, fast in (("scaled_mm_fast_accum", True), ("scaled_mm", False)):

                def real(fast=fast):
                    try:
                        return torch._scaled_mm(
                            qa,
                            qb.t(),
                            scale_a=sa,
                            scale_b=sb,
                            out_dtype=torch.float32,
                            use_fast_accum=fast,
                        )
                    except Exception:  # noqa: BLE001 - some builds want a 16-bit output
                        return torch._scaled_mm(
                            qa,
                            qb.t(),
                            scale_a=sa,
                            scale_b=sb,
                            out_dtype=torch.bfloat16,
                            use_fast_accum=fast,
                        )

                record(kernel, real)
            record(
                "emulated_no_promotion",
                lambda: fp8_gemm(qa, sa, qb, sb, 128, acc_mantissa_bits=13, promote=False),
            )
            record(
                "emulated_promotion_128",
                lambda: fp8_gemm(qa, sa, qb, sb, 128, acc_mantissa_bits=13, promote=True),
            )
            if block_name is not None:
                a_q, a_s = act_quant(a, 128)
                b_q, b_s = weight_quant(b, 128)
                ref_block = fp8_gemm(a_q, a_s, b_q, b_s, 128).double()  # exact up to fp32 sums

                def blockwise():
                    try:  # fp32 output if offered
                        return block_gemm_fn(block_name, a_q, a_s, b_q, b_s, torch.float32)()
                    except Exception:  # noqa: BLE001
                        return block_gemm_fn(block_name, a_q, a_s, b_q, b_s, torch.bfloat16)()

                record("scaled_mm_blockwise", blockwise, ref_block)
    for r in rows:
        if "rel_err" in r:
            print(
                f"{r['dist']:10s} K={r['k']:6d} {r['kernel']:24s} rel err {r['rel_err']:.2e}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny sizes (for CPU and tests)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="stop starting new cases after this many seconds",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available: use --device cpu --quick")
    t0 = time.time()
    deadline = t0 + args.budget_s
    block_name, probe = probe_block_gemm(args.device)
    print(f"blockwise FP8 GEMM: {block_name or 'not available'}", flush=True)
    result = dict(
        schema=1,
        device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        capability=list(torch.cuda.get_device_capability()) if args.device == "cuda" else None,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        quick=args.quick,
        block_gemm=block_name,
        block_gemm_probe=probe,
        note=(
            "GEMM only (operands quantized beforehand); int8 has no scaling epilogue; "
            "ratios vs bf16 of this run"
        ),
    )
    result["accuracy_vs_k"] = accuracy(args.device, args.quick, block_name, deadline)
    result["timing"] = timing(args.device, args.quick, block_name, deadline)
    result["elapsed_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} in {result['elapsed_s']:.1f} s")
    return result


if __name__ == "__main__":
    main()
