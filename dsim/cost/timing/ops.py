"""Ops as the kernels they launch, and their predicted time (`op_kernels`, `op_time`).

An op takes the first kernel's launch latency, then the time of each of its kernels (kernels.py).
The lists follow what PyTorch runs for dsim.model, kernel by kernel, as profiled on an H100
(tests/cost/test_timing.py holds their FLOPs equal to a trace of the module).

What each op times (exactly what bench/timing_measure.py measures), `op_time(op, **shape)`:
  gemm(m, n, k[, batch])     y[m, n] = x[m, k] @ w[k, n] (F.linear); backward adds dX and dW.
  moe_ffn(tokens, dim, moe_inter_dim, n_routed_experts, n_activated_experts[, renormalize])
                             dsim.model.MoE without shared
                             experts: the gate (fp32 router GEMM, softmax, top-k, combine weights)
                             and Experts.forward_grouped (sort the T*K token copies by expert,
                             gather them, grouped GEMMs w1 and w3, SiLU(h1)*h3, grouped GEMM w2,
                             gather back into token order, weighted sum over the K experts).
                             Routing is random (each token's top-k experts uniformly spread), so an
                             expert gets Binomial(T, K/E) rows. backward: forward and backward to
                             the input, the gate and the expert weights.
  attention(batch, seq_len, n_heads, qk_head_dim, v_head_dim, causal[, kv_seq_len, kv_heads])
                             F.scaled_dot_product_attention on [batch, n_heads, seq_len, d]
                             (kv_seq_len keys, default seq_len; decode: seq_len=1); with
                             kv_heads < n_heads (GQA, enable_gqa) keys and values are
                             [batch, kv_heads, kv_seq_len, d] and read once per KV head, and
                             a decode packs each group's query heads into one tile (checked on
                             an H100: dsim/data/timing_attention_h100.json's GQA rows).
  rmsnorm(tokens, dim)       F.rms_norm.
  elementwise(bytes[, kernels, kind, numel])   memory-bound kernels moving `bytes` in total (read
                             + written); kind (ELEMENTWISE_KINDS) says which PyTorch kernel.
  gate(tokens, dim, n_routed_experts, n_activated_experts[, renormalize])   dsim.model.Gate
                             (softmax, no groups), forward.
  grouped_gemm(tokens, n, k, groups)     dsim.model.grouped_mm with `groups` equal groups.
  sort(n), gather_rows / index_select_rows / index_add_rows(rows, width, dst_rows)   the MoE's
                             pieces.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dsim.cost.dtypes import DTYPES, dtype_name
from dsim.cost.graph.rules import attention_pairs
from dsim.cost.hardware import GPU, get_gpu, peak_flops
from dsim.cost.timing.calibration import Calibration, attention_efficiency, gpu_calibration
from dsim.cost.timing.kernels import (
    ATTN_BLOCKS,
    MAX_ATTN_TOKENS,
    MAX_MOE_TOKENS,
    Kernel,
    KernelModel,
    attn_schedule,
    expert_load,
)
from dsim.cost.timing.moe_kernels import gate_kernels, moe_kernels

# op -> (required shape arguments, optional ones with defaults)
OPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "gemm": (("m", "n", "k"), {"batch": 1}),
    "moe_ffn": (
        ("tokens", "dim", "moe_inter_dim", "n_routed_experts", "n_activated_experts"),
        {"renormalize": True},
    ),
    "attention": (
        ("batch", "seq_len", "n_heads", "qk_head_dim", "v_head_dim", "causal"),
        {"kv_seq_len": None, "kv_heads": None},
    ),
    "rmsnorm": (("tokens", "dim"), {}),
    # kind: see ELEMENTWISE_KINDS
    "elementwise": (("bytes",), {"kernels": 1, "kind": None, "numel": None}),
    "gate": (("tokens", "dim", "n_routed_experts", "n_activated_experts"), {"renormalize": True}),
    "grouped_gemm": (("tokens", "n", "k", "groups"), {}),
    "sort": (("n",), {"groups": None}),
    "gather_rows": (("rows", "width", "dst_rows"), {}),
    "index_select_rows": (("rows", "width", "dst_rows"), {}),
    "index_add_rows": (("rows", "width", "dst_rows"), {}),
}

# The number formats the time model times (dsim.cost.dtypes has more: int4 is not modelled).
# GEMMs run in any of them; the other ops in bf16 or fp16 (the norms and elementwise ops in any).
TIMED_DTYPES = ("bf16", "fp16", "fp32", "tf32", "fp8", "int8")


# ---------------------------------------------------------------------------------------------
# Ops as kernel lists
# ---------------------------------------------------------------------------------------------
def _gemm_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    m, n, k, b = s["m"], s["n"], s["k"], s["batch"]
    ks = [x.gemm("y = x @ w", m, n, k, b)]
    if backward:
        ks += [x.gemm("dx = dy @ w^T", m, k, n, b), x.gemm("dw = x^T @ dy", k, n, m, b)]
    return ks


def _grouped_gemm_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    """dsim.model.grouped_mm with `groups` equal groups: out[tokens, n] = xs @ w[g]^T."""
    T, n, k, g = s["tokens"], s["n"], s["k"], s["groups"]
    per = T / g
    tiles = lambda bm: g * math.ceil(per / bm)  # noqa: E731
    ks = [
        x.mem("offsets = cumsum(counts)", 16.0 * g),
        x.grouped("out = xs @ w^T", tiles, T, n, k, g, g, per),
    ]
    if backward:
        ks += [
            x.grouped_wgrad("dw = dout^T @ xs", T, n, k, g, g, per),
            x.grouped("dxs = dout @ w", tiles, T, k, n, g, g, per),
        ]
    return ks


def _rows_kernels(x: KernelModel, op: str, s: dict, backward: bool) -> list[Kernel]:
    rows, width, dst = s["rows"], s["width"], s["dst_rows"]
    gather = x.gather("gather rows", rows, width, dst)
    atomic = [
        x.mem("zeros", 2.0 * dst * width, write=2.0 * dst * width),
        x.mem("index_add_ rows", 2.0 * rows * width + 8.0 * rows + 4.0 * dst * width, "atomic"),
    ]
    if op == "gather_rows":  # x[idx]: backward is index_put_(accumulate) with a sort
        ks = [gather]
        if backward:
            ks += [
                x.mem("zeros", 2.0 * dst * width, write=2.0 * dst * width),
                x.sort("sort indices", rows, key_bits=max(1, (dst - 1).bit_length())),
                x.mem(
                    "index_put_ accumulate",
                    2.0 * rows * width + 4.0 * dst * width + 16.0 * rows,
                    kind="index_put",
                    count=2,
                ),
            ]
    elif op == "index_select_rows":  # index_select: backward is index_add_
        ks = [gather] + (atomic if backward else [])
    else:  # index_add_: backward is index_select
        ks = atomic + ([gather] if backward else [])
    return ks


def _attention_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    b, sq, h = s["batch"], s["seq_len"], s["n_heads"]
    dqk, dv, causal = s["qk_head_dim"], s["v_head_dim"], s["causal"]
    skv, hk = s["kv_seq_len"] or sq, s["kv_heads"] or h
    if hk < h and sq == 1 and not causal and not backward:
        # GQA decoding: the kernel packs the query heads of a group as the rows of one tile
        # (FlashAttention's "seqlen_q / ngroups swap"): hk heads of h / hk queries each, the same
        # FLOPs and bytes on fewer, fuller tiles. Measured on an H100 (timing_attention_h100.json)
        sq, h = h // hk, hk
    backend = attention_backend(dqk, dv, x.cal)
    pairs = attention_pairs(1, sq, skv - sq, causal)  # the queries are the last sq positions
    flops_f = 2.0 * b * h * pairs * (dqk + dv)
    # q in, o out per query head; k and v once per KV head (GQA: the query heads of a group run
    # side by side and share the tiles they read)
    io = 2.0 * b * (h * sq * (dqk + dv) + hk * skv * (dqk + dv))
    if backend == "math":
        ks = [
            x.gemm("scores = q @ k^T", sq, skv, dqk, b * h),
            x.mem("mask + softmax", 10.0 * b * h * sq * skv, count=3),
            x.gemm("o = p @ v", sq, dv, skv, b * h),
        ]
        if backward:
            ks += [
                x.gemm("dp = do @ v^T", sq, skv, dv, b * h),
                x.gemm("dv = p^T @ do", skv, dv, sq, b * h),
                x.mem("softmax backward", 10.0 * b * h * sq * skv, count=2),
                x.gemm("dq = ds @ k", sq, dqk, skv, b * h),
                x.gemm("dk = ds^T @ q", skv, dqk, sq, b * h),
            ]
        return ks
    c, name = x.cal, backend.replace("_attention", "")
    variant = f"{'mha' if dqk == dv else 'mla'}_{'causal' if causal else 'full'}"
    eff_f = attention_efficiency(c, name, "fwd", variant)
    eff_b = attention_efficiency(c, name, "bwd", variant)
    (bm, bn), (bm_b, bn_b) = ATTN_BLOCKS[name]
    per_sm = peak_flops(x.gpu, x.dtype) / x.sms
    # forward: one block per bm queries, looping over bn-key blocks (up to the diagonal if causal)
    n_q = math.ceil(sq / bm)

    def forward(splits: int) -> list[Kernel]:
        units, count = attn_schedule(
            n_q, bm, bn, sq, skv, causal, splits, b * h * splits, x.sms, False
        )
        t_c = (units + c.attn_fill * count) * 2.0 * bm * bn * (dqk + dv) / (per_sm * eff_f)
        ctas = b * h * n_q * splits
        t_m = (io + 4.0 * b * h * sq) / (x.bw * min(1.0, ctas * c.sm_bw / x.sms))
        note = f"{backend}, {ctas} blocks" + (f", {splits} key splits" if splits > 1 else "")
        t = c.launch_s + max(t_c, t_m)
        ks = [Kernel(f"{name} forward", "attention", flops_f, io, t, note)]
        if splits > 1:
            ks.append(x.mem("combine key splits", 4.0 * b * h * sq * dv * splits))
        return ks

    # decoding: the keys may be split to fill the SMs; the kernel takes the fastest split count
    # (each count's time grows with the keys, so the fastest one's does too: monotone)
    most = max(1, math.ceil(x.sms / (b * h * n_q))) if sq <= 64 and not backward else 1
    ks = min((forward(s) for s in range(1, most + 1)), key=lambda k: sum(q.time_s for q in k))
    if backward:
        # backward: one block per bn_b keys, looping over the bm_b-query blocks that see them
        n_k = math.ceil(skv / bn_b)
        units_b, count_b = attn_schedule(n_k, bm_b, bn_b, sq, skv, causal, 1, b * h, x.sms, True)
        flops_b = 2.0 * b * h * pairs * (3 * dqk + 2 * dv)
        work_b = (units_b + c.attn_fill * count_b) * 2.0 * bm_b * bn_b  # FLOPs per head dim
        t_cb = work_b * (3 * dqk + 2 * dv) / (per_sm * eff_b)
        # + dO, lse, fp32 dq accumulator
        io_b = 2 * io + 2.0 * b * h * (sq * dv) + 4.0 * b * h * sq * (1 + dqk)
        t_mb = io_b / (x.bw * min(1.0, b * h * n_k * c.sm_bw / x.sms))
        ks += [
            x.mem(f"{name} backward: rowsum(dO * O)", 4.0 * b * h * sq * dv + 4.0 * b * h * sq),
            Kernel(
                f"{name} backward",
                "attention",
                flops_b,
                io_b,
                c.launch_s + max(t_cb, t_mb),
                f"{backend}, {b * h * n_k} blocks",
            ),
            x.mem(f"{name} backward: dq to bf16", 6.0 * b * h * sq * dqk),
        ]
    return ks


def attention_backend(qk_head_dim: int, v_head_dim: int, cal: Calibration | None = None) -> str:
    """The SDPA backend that runs these head dims (as measured on the calibrated GPU)."""
    cal = cal or Calibration()
    if qk_head_dim == v_head_dim and qk_head_dim <= 256 and qk_head_dim % 8 == 0:
        return cal.attn_backend_equal
    return cal.attn_backend_unequal


def _rmsnorm_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    """F.rms_norm (PyTorch's fused layer-norm kernels): one block per row.

    Forward reads x and writes y; a row of 4096 or more elements does not stay in registers and is
    read twice. Backward: a dx kernel and a dweight kernel (partial sums, then a reduction), whose
    traffic relative to the minimum is rms_bwd_passes."""
    T, D = s["tokens"], s["dim"]
    e, r = x.elt, x.cal.rms_bwd_passes
    reads = 1 if D < 4096 else 2
    ks = [
        x.rowwise("rms_norm", T, e * D, (reads + 1) * e * T * D + e * D + 4.0 * T, write=e * T * D)
    ]
    if backward:
        ks += [
            x.rowwise(
                "rms_norm backward: dx", T, 0, r * (3.0 * e * T * D + 4.0 * T), write=e * T * D
            ),
            x.rowwise("rms_norm backward: dweight", T, 0, r * 2.0 * e * T * D + 8.0 * D * 64),
        ]
    return ks


# Elementwise kinds: share of the bytes written, and whether PyTorch runs them as a vectorized
# kernel (bf16 in and out, same shapes), as a strided one (a dtype change bf16 -> fp32, a broadcast
# [N, D] * [N, 1]), or as a reduction over a middle dimension ([N/8, 8, D].sum(1)). chain:
# `kernels` tiny in-place adds back to back.
ELEMENTWISE_KINDS = {
    "add": (1 / 3, "mem"),
    "mul": (1 / 3, "mem"),
    "copy": (1 / 2, "mem"),
    "silu": (1 / 2, "mem"),
    "cast": (2 / 3, "strided"),
    "bcast_mul": (1 / 2, "strided"),
    "sum_k": (1 / 9, "reduce"),
    "chain": (1 / 2, "mem"),
}


def _elementwise_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    k, nbytes = int(s["kernels"]), float(s["bytes"])
    # no kind: a binary op, vectorized; numel: the elements of the big operand
    share, kind = ELEMENTWISE_KINDS.get(s["kind"], (1 / 3, "mem"))
    traffic = dict(kind=kind, count=k, write=nbytes * share, elements=s["numel"] or nbytes / 4)
    ks = [x.mem(s["kind"] or "elementwise", nbytes, **traffic)]
    if backward:
        ks.append(x.mem("backward (same traffic)", nbytes, **traffic))
    return ks


def _op_kernels(op: str, x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    if op == "gemm":
        return _gemm_kernels(x, s, backward)
    if op == "moe_ffn":
        return moe_kernels(x, s, backward)
    if op == "attention":
        return _attention_kernels(x, s, backward)
    if op == "rmsnorm":
        return _rmsnorm_kernels(x, s, backward)
    if op == "elementwise":
        return _elementwise_kernels(x, s, backward)
    if op == "gate":
        return gate_kernels(
            x,
            s["tokens"],
            s["dim"],
            s["n_routed_experts"],
            s["n_activated_experts"],
            s["renormalize"],
            backward,
            "",
        )
    if op == "grouped_gemm":
        return _grouped_gemm_kernels(x, s, backward)
    if op == "sort":
        return [x.sort("argsort", s["n"])]
    return _rows_kernels(x, op, s, backward)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def timed_dtype(dtype: object) -> str:
    """The canonical name of a dtype the time model times ("bfloat16" -> "bf16"), or a ValueError
    naming the field and the allowed names (int4 and formats dsim.cost.dtypes lacks are refused)."""
    try:
        return dtype_name(dtype, TIMED_DTYPES)
    except ValueError:
        allowed = ", ".join(TIMED_DTYPES)
        raise ValueError(
            f"unknown dtype {dtype!r} for the time model: dtype must be one of {allowed}"
        ) from None


def _check(
    op: str, gpu: str | GPU, dtype: str, backward: bool, shape: dict[str, Any]
) -> tuple[GPU, str, dict]:
    """Validate the arguments; return the GPU, the canonical dtype and the full shape."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: choose one of {', '.join(OPS)}")
    g = get_gpu(gpu)
    d = timed_dtype(dtype)
    if op not in ("gemm", "elementwise", "rmsnorm") and d not in ("bf16", "fp16"):
        raise ValueError(
            f"dtype {dtype!r} is not modelled for op {op!r}: dsim runs it in bf16 or fp16"
        )
    peak_flops(g, d)  # raises when this GPU lacks the dtype
    if not isinstance(backward, bool):
        raise ValueError(f"backward must be True or False, got {backward!r}")
    if backward and op in ("gate", "sort"):
        raise ValueError(
            f"backward=True is not modelled for op {op!r} on its own (it is part of moe_ffn)"
        )
    required, optional = OPS[op]
    unknown = sorted(set(shape) - set(required) - set(optional))
    if unknown:
        also = f" and optionally {', '.join(optional)}" if optional else ""
        raise ValueError(
            f"op {op!r} got unexpected argument(s) {', '.join(unknown)}: it takes "
            f"{', '.join(required)}{also}"
        )
    missing = [a for a in required if a not in shape]
    if missing:
        raise ValueError(
            f"op {op!r} is missing argument(s) {', '.join(missing)} "
            f"(it takes {', '.join(required)})"
        )
    full = {**optional, **shape}
    for name, value in full.items():
        if name in ("causal", "renormalize"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        elif name == "kind":
            if value is not None and value not in ELEMENTWISE_KINDS:
                raise ValueError(
                    f"kind must be one of {', '.join(ELEMENTWISE_KINDS)} (or None), got {value!r}"
                )
        elif value is None and name in optional:
            continue
        else:
            least = 0 if name == "bytes" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    kv = full.get("kv_seq_len")
    if op in ("moe_ffn", "gate") and full["tokens"] > MAX_MOE_TOKENS:
        raise ValueError(
            f"tokens must be <= {MAX_MOE_TOKENS:,} for the MoE time model (it sums the binomial "
            f"load of an expert over a window that grows with the tokens), got {full['tokens']:,}"
        )
    for name in ("seq_len", "kv_seq_len") if op == "attention" else ():
        if full[name] is not None and full[name] > MAX_ATTN_TOKENS:
            raise ValueError(
                f"{name} must be <= {MAX_ATTN_TOKENS:,} for the attention time model (it schedules "
                f"every block of queries and keys), got {full[name]:,}"
            )
    kvh = full.get("kv_heads")
    if op == "attention" and kvh is not None and full["n_heads"] % kvh:
        raise ValueError(
            f"kv_heads must divide n_heads (each KV head serves a group of query heads), got "
            f"kv_heads={kvh} and n_heads={full['n_heads']}"
        )
    if op == "attention" and full["causal"] and kv is not None and kv < full["seq_len"]:
        raise ValueError(
            f"kv_seq_len must be >= seq_len for causal attention, got kv_seq_len={kv} and "
            f"seq_len={full['seq_len']}"
        )
    if op in ("moe_ffn", "gate") and full["n_activated_experts"] > full["n_routed_experts"]:
        raise ValueError(
            f"n_activated_experts must be <= n_routed_experts, got n_activated_experts="
            f"{full['n_activated_experts']} and n_routed_experts={full['n_routed_experts']}"
        )
    return g, d, full


def op_kernels(
    op: str,
    gpu: str | GPU = "H100-SXM",
    dtype: str = "bf16",
    backward: bool = False,
    calibration: Calibration | None = None,
    **shape: Any,
) -> list[Kernel]:
    """The kernels `op` launches on `gpu`, each with its FLOPs, bytes and predicted time (s).

    Same arguments as `op_time`; the times add up to op_time(...)."""
    g, d, full = _check(op, gpu, dtype, backward, shape)
    cal = calibration or gpu_calibration(g)
    start = Kernel("(op start: first launch latency)", "launch", 0.0, 0.0, cal.op_start_s, count=0)
    return [start] + _op_kernels(op, KernelModel(g, cal, d), full, backward)


def op_time(
    op: str,
    gpu: str | GPU = "H100-SXM",
    dtype: str = "bf16",
    backward: bool = False,
    calibration: Calibration | None = None,
    **shape: Any,
) -> float:
    """Predicted GPU time (seconds) of one op; backward=True means forward plus backward.

    op and its shape arguments (module docstring for what each times exactly):
      "gemm" m, n, k [, batch];
      "moe_ffn" tokens, dim, moe_inter_dim, n_routed_experts, n_activated_experts [, renormalize];
      "attention" batch, seq_len, n_heads, qk_head_dim, v_head_dim, causal [, kv_seq_len,
      kv_heads];
      "rmsnorm" tokens, dim; "elementwise" bytes [, kernels];
      "gate" tokens, dim, n_routed_experts, n_activated_experts [, renormalize];
      "grouped_gemm" tokens, n, k, groups; "sort" n; "gather_rows" / "index_select_rows" /
      "index_add_rows" rows, width, dst_rows.
    gpu: a dsim.cost.hardware name or GPU; dtype: "bf16" (default), "fp16", "fp32", "tf32", "fp8",
    "int8" (GEMMs), bf16/fp16 for the MoE layer and attention.
    calibration: efficiency constants to use instead of the GPU's committed ones.

    >>> op_time("gemm", m=8192, n=8192, k=8192) > 2 * 8192**3 / 989.5e12
    True
    """
    return float(sum(k.time_s for k in op_kernels(op, gpu, dtype, backward, calibration, **shape)))


def roofline_work(
    op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False, **shape: Any
) -> tuple[float, float, float]:
    """What a perfect kernel must do: (FLOPs at the dtype's peak, fp32 CUDA-core FLOPs, bytes).

    FLOPs are the op's useful FLOPs (a causal mask's skipped pairs excluded; the MoE gate's router
    GEMM is fp32); bytes are inputs read once and outputs written once (the MoE layer: x, y and the
    weights of the experts that get tokens; its backward: dy, dx, those weights again and their
    gradients). Memory-bound ops report the bytes of their kernels."""
    g, d, s = _check(op, gpu, dtype, backward, shape)
    e = DTYPES[d].bytes
    f, f32 = 0.0, 0.0
    if op == "gemm":
        m, n, k, o, bt = s["m"], s["n"], s["k"], max(e, 2), s["batch"]
        f = 2.0 * bt * m * n * k
        b = bt * (e * (m * k + k * n) + o * m * n)
        if backward:  # dx = dy w^T and dw = x^T dy
            f = 3 * f
            b += bt * (e * (m * n + n * k) + o * m * k + e * (k * m + m * n) + o * k * n)
        if d == "fp32":
            f32, f = f, 0.0
    elif op in ("moe_ffn", "gate"):
        T, D, E, K = s["tokens"], s["dim"], s["n_routed_experts"], s["n_activated_experts"]
        f32 = 2.0 * T * D * E * (3 if backward else 1)
        if op == "gate":
            b = 2.0 * T * D + 2.0 * E * D + 12.0 * T * K
        else:
            I = s["moe_inter_dim"]
            _, active, _ = expert_load(T, K, E, 64)
            f = 6.0 * T * K * D * I * (3 if backward else 1)
            b = 4.0 * T * D + 2.0 * E * D + 6.0 * active * D * I
            if backward:
                b += 4.0 * T * D + 2.0 * E * D + 6.0 * active * D * I + 6.0 * E * D * I
    elif op == "attention":
        b_, sq, h = s["batch"], s["seq_len"], s["n_heads"]
        dqk, dv, skv = s["qk_head_dim"], s["v_head_dim"], s["kv_seq_len"] or sq
        hk = s["kv_heads"] or h
        pairs = attention_pairs(1, sq, skv - sq, s["causal"])
        fwd_bwd = 1.0 + (3 * dqk + 2 * dv) / (dqk + dv) if backward else 1.0
        f = 2.0 * b_ * h * pairs * (dqk + dv) * fwd_bwd
        b = 2.0 * b_ * (h * sq + hk * skv) * (dqk + dv) * (3 if backward else 1)
    elif op == "grouped_gemm":
        passes = 3 if backward else 1
        f = 2.0 * s["tokens"] * s["n"] * s["k"] * passes
        b = 2.0 * (s["tokens"] * (s["n"] + s["k"]) + s["groups"] * s["n"] * s["k"]) * passes
    elif op == "sort":
        b = 32.0 * s["n"]  # read the keys, write keys and indices (int64)
    else:
        b = sum(k.bytes for k in _op_kernels(op, KernelModel(g, Calibration(), d), s, backward))
    return f, f32, b


def roofline_time(
    op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False, **shape: Any
) -> float:
    """The datasheet roofline: max(FLOPs / peak FLOP/s, unavoidable bytes / peak HBM bandwidth).

    Work as in `roofline_work`; no launch, no tiles, no efficiency: op_time is never below it."""
    f, f32, b = roofline_work(op, gpu, dtype, backward, **shape)
    g = get_gpu(gpu)
    d = timed_dtype(dtype)
    return max(f / peak_flops(g, d) + f32 / peak_flops(g, "fp32"), b / g.hbm_bw)
