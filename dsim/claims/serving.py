"""Checks of serving claims: latency and throughput bounds, paged KV cache."""

from __future__ import annotations

from dsim.claims.models import llama31_8b
from dsim.claims.references import ref, src
from dsim.claims.verdict import (
    Claim,
    Verdict,
    above_min,
    agree,
    at_most,
    below_max,
    check,
    fmt,
    make,
    pct,
)
from dsim.cost import flops, get_gpu, kv_cache_bytes_per_token, params, weight_bytes


# ---------------------------------------------------------------------------------------------
# Serving: latency and throughput bounds
# ---------------------------------------------------------------------------------------------
@check("a1-p99-120ms-1000-concurrent")
def decode_latency(c: Claim) -> Verdict:
    from dsim.cost import step_time

    m, gpus, batch, ctx = llama31_8b(), c.q["gpus"], c.inputs["batch"], c.inputs["context_tokens"]
    a100 = get_gpu("A100-80GB-SXM")
    per_gpu = batch // gpus  # the 8B model fits one GPU: data parallel
    w = weight_bytes(params(m).total, "bf16")
    kv = kv_cache_bytes_per_token(m) * per_gpu * ctx
    step = (w + kv) / a100.hbm_bw
    modeled = step_time(m, batch=per_gpu, seq_len=ctx, mode="decode", gpu=a100).total_s
    out_tokens = 256
    prefill = flops(m, batch=1, seq_len=ctx, mode="prefill").total / a100.bf16_flops
    stated = c.q["p99_latency_ms"] / 1e3
    rs = [
        at_most(
            "per output token (HBM roofline floor)",
            stated * 1e3,
            step * 1e3,
            tol=0,
            fail="cannot_hold",
        ),
        at_most(
            f"whole request: 2048-token prompt + {out_tokens} output tokens",
            stated * 1e3,
            (prefill + out_tokens * step) * 1e3,
            tol=0,
            fail="cannot_hold",
        ),
    ]
    return make(
        c,
        rs,
        "ms",
        [
            f"{m.name}, 1000 requests over {gpus} A100-80GB (data parallel: {per_gpu} each), "
            f"{ctx}-token contexts",
            f"one decode step reads weights {fmt(w)} + KV {per_gpu} x {ctx} x "
            f"{fmt(kv_cache_bytes_per_token(m))} = {fmt(kv)} "
            f"bytes / {fmt(a100.hbm_bw)} B/s = {step * 1e3:.1f} ms (a floor); dsim.cost.step_time "
            "(eager PyTorch kernels, "
            f"H100 efficiencies on the A100 datasheet): {modeled * 1e3:.1f} ms",
            "a whole request: its own prefill "
            f"{fmt(flops(m, batch=1, seq_len=ctx, mode='prefill').total)} FLOPs / "
            f"{fmt(a100.bf16_flops)} FLOP/s = {prefill * 1e3:.0f} ms + {out_tokens} decode steps = "
            f"{(prefill + out_tokens * step) * 1e3:.0f} ms",
            "(both times are floors: a request cannot finish faster)",
        ],
        [
            "dsim.cost.params",
            "dsim.cost.kv_cache_bytes_per_token",
            "dsim.cost.flops",
            "dsim.cost.step_time",
            "dsim.cost.hardware A100-80GB-SXM",
        ],
        bound="a decode step cannot read its bytes faster than HBM bandwidth",
    )


@check("a1-snapdragon-15tok")
def phone_tokens_per_s(c: Claim) -> Verdict:
    n, bw = params(llama31_8b()).total, ref("snapdragon_8g2_bw")
    i4, f16 = weight_bytes(n, "int4", 128), weight_bytes(n, "fp16")
    rs = [
        below_max("INT4 weights, memory roofline", c.q["tok_per_s"], bw / i4),
        below_max("FP16 weights (they do not fit phone RAM anyway)", c.q["tok_per_s"], bw / f16),
    ]
    return make(
        c,
        rs,
        "tok/s",
        [
            "a decode step reads every weight once: tokens/s <= bandwidth / weight bytes",
            f"INT4 g128: {fmt(bw)} / {fmt(i4)} = {bw / i4:.1f} tok/s; FP16: {fmt(bw)} / {fmt(f16)} "
            f"= {bw / f16:.1f} tok/s",
            f"{c.q['tok_per_s']} tok/s needs {c.q['tok_per_s'] / (bw / i4):.0%} of peak bandwidth "
            "with INT4; "
            "pruning (unquantified) could lower the bytes",
        ],
        ["dsim.cost.params", "dsim.cost.weight_bytes", src("snapdragon_8g2_bw")],
        bound="a decode step reads all weights from DRAM",
    )


@check("a1-rv1126-300ms")
def rv1126_latency(c: Claim) -> Verdict:
    n, bw = params(llama31_8b()).total, ref("rv1126_bw")
    i4 = weight_bytes(n, "int4", 128)
    t = i4 / bw
    return make(
        c,
        above_min("INT4 8B model on the chip, one token", c.q["latency_ms"], t * 1e3),
        "ms",
        [
            f"INT4 g128 weights {fmt(i4)} bytes (the board typically has 1-2 GB of DRAM)",
            f"one token: {fmt(i4)} / {fmt(bw)} B/s = {t * 1e3:.0f} ms, above the 300 ms budget "
            "before any "
            "speech processing; a spoken reply needs many tokens",
        ],
        ["dsim.cost.params", "dsim.cost.weight_bytes", src("rv1126_bw")],
        bound="a decode step reads all weights from DRAM",
    )


@check("a1-kv-block-40pct")
def paged_kv(c: Claim) -> Verdict:
    m, stated, block, max_len = llama31_8b(), c.q["kv_compression_pct"], 16, 4096
    per_token = kv_cache_bytes_per_token(m)
    lengths = range(1, max_len + 1)  # a batch with every length once
    contiguous = len(lengths) * max_len * per_token
    paged = sum(-(-n // block) * block for n in lengths) * per_token
    saving = 1 - paged / contiguous
    rs = [
        below_max(
            "memory saved by paging vs max-length reservation (possible range)",
            stated,
            saving * 100,
        ),
        agree("bytes per cached token (compression)", stated, 0.0),
    ]
    return make(
        c,
        rs,
        "%",
        [
            f"{m.name}: dsim.cost.kv_cache_bytes_per_token = {fmt(per_token)} bytes, with or "
            "without blocks",
            f"a batch of lengths 1..{max_len}: reserved {max_len} tokens each {fmt(contiguous)} "
            f"bytes; blocks of {block}: "
            f"{fmt(paged)} -> {pct(saving)} saved; any saving between 0 and this is possible",
            "paging removes over-allocation; it does not compress a single entry (0 % smaller)",
        ],
        ["dsim.cost.kv_cache_bytes_per_token"],
    )
