"""Checks of kernel, communication and pipeline claims."""

from __future__ import annotations

from dsim.claims.models import deepseek_llm_7b, deepseek_llm_67b
from dsim.claims.verdict import (
    Claim,
    Verdict,
    agree,
    at_least,
    at_most,
    check,
    fmt,
    make,
    not_stated,
    pct,
    range_ends,
)
from dsim.cost import bubble_fraction_1f1b, bytes_per_param, exposed_comm_time, flops, tp_volume


# ---------------------------------------------------------------------------------------------
# Kernels, communication, pipelines
# ---------------------------------------------------------------------------------------------
@check("a2-layernorm-fusion-15-20pct")
def fusion_share(c: Claim) -> Verdict:
    from dsim.cost import op_time

    lo, hi = c.q["gain_low_pct"], c.q["gain_high_pct"]
    rs, lines = (
        [],
        [
            "fusing removes the norm's own kernel: gain = t_norm / (t_norm + t_gemm), "
            "dsim.cost.op_time on an H100"
        ],
    )
    for tokens, D, what in (
        (4096, 4096, "training/prefill, width 4096"),
        (1, 4096, "decode, width 4096"),
        (4096, 768, "training, width 768 (BERT-base)"),
    ):
        ln = op_time("rmsnorm", tokens=tokens, dim=D)
        g = op_time("gemm", m=tokens, n=3 * D, k=D)
        share = ln / (ln + g)
        rs += range_ends(what, lo, hi, share * 100)
        lines.append(
            f"{what}: norm {ln * 1e6:.1f} us + QKV GEMM [{tokens} x {D}] x [{D} x {3 * D}] "
            f"{g * 1e6:.1f} us "
            f"-> {pct(share)}"
        )
    return make(c, rs, "%", lines, ["dsim.cost.op_time (H100 calibration)"])


@check("a2-comm-overlap-30-10")
def overlap(c: Claim) -> Verdict:
    m = deepseek_llm_7b()
    f = flops(m, batch=1, seq_len=4096, mode="train")
    compute = 1.0
    before = c.q["overhead_before_pct"] / 100
    comm = before / (1 - before) * compute  # comm is 30 % of the step without overlap
    fwd, bwd = f.forward / f.total, f.backward / f.total
    rs, lines = (
        [],
        [
            f"without overlap comm = 30 % of the step: comm = {comm:.3f} x compute",
            f"dsim.cost.flops({m.name}, train): forward {pct(fwd)} and backward {pct(bwd)} of the "
            "compute",
        ],
    )
    for label, hide, said in (
        ("gradient all-reduce hidden behind the backward", bwd, False),
        ("hidden behind the forward only (the article's wording)", fwd, True),
        ("tensor-parallel all-reduce on the critical path", 0.0, False),
    ):
        left = exposed_comm_time(comm, hide * compute)
        share = left / (compute + left)
        r = at_most(label, c.q["overhead_after_pct"], share * 100)
        rs.append(r if said else not_stated(r))
        lines.append(
            f"{label}: dsim.cost.exposed_comm_time({comm:.3f}, {hide:.3f}) = {left:.3f} -> "
            f"{pct(share)} of the step"
        )
    return make(c, rs, "%", lines, ["dsim.cost.flops", "dsim.cost.exposed_comm_time"])


@check("a2-grad-compress-60pct")
def grad_compression(c: Claim) -> Verdict:
    stated = c.q["comm_reduction_pct"]
    f32, f16 = bytes_per_param("fp32"), bytes_per_param("fp16")
    idx = c.inputs["index_bytes"]
    keep32 = (1 - stated / 100) * f32 / (f16 + idx)
    keep16 = (1 - stated / 100) * f16 / (f16 + idx)
    keep = 0.25  # a usual top-k sparsification ratio (keep a quarter of the entries)
    sparse = 1 - keep * (f16 + idx) / f32
    sparse16 = 1 - keep * (f16 + idx) / f16
    rs = [
        not_stated(agree("FP32 gradients sent as FP16, dense", stated, (1 - f16 / f32) * 100)),
        not_stated(
            agree("BF16 gradients (the usual mixed-precision baseline) sent as FP16", stated, 0.0)
        ),
        agree(
            f"FP32 -> FP16 plus keeping {keep:.0%} of the entries, int32 indices",
            stated,
            sparse * 100,
        ),
        agree(
            f"BF16 -> FP16 plus keeping {keep:.0%} of the entries, int32 indices",
            stated,
            sparse16 * 100,
        ),
    ]
    return make(
        c,
        rs,
        "%",
        [
            f"FP32 -> FP16: 1 - {f16:g}/{f32:g} = {pct(1 - f16 / f32)}",
            f"keeping {keep:.0%} of the entries as FP16 value + int32 index: 1 - {keep} x ({f16:g} "
            f"+ {idx}) / {f32:g} = {pct(sparse)} (FP32 gradients), 1 - {keep} x ({f16:g} + {idx})"
            f" / {f16:g} = {pct(sparse16)} (BF16 gradients)",
            "the article names both 16-bit values and sparse transmission: the dense readings "
            "are context",
            f"sparse (value {f16:g} B + index {idx} B): 60 % needs keeping {keep32:.1%} of entries "
            "(FP32 baseline) or "
            f"{keep16:.1%} (BF16 baseline, where the 16-bit step itself saves nothing)",
        ],
        ["dsim.cost.bytes_per_param"],
    )


@check("a4-tp-comm-5pct")
def tp_overhead(c: Claim) -> Verdict:
    from dsim.cost import layer_time

    m, tp, tokens = deepseek_llm_67b(), 8, 4096
    compute = layer_time(m, batch=1, seq_len=tokens, mode="train", gpu="H100-SXM").total_s / tp
    vol = tp_volume(batch=1, seq_len=tokens, dim=m.dim, n_layers=1, tp=tp)
    rs, lines = (
        [],
        [
            f"{m.name}, one layer, {tokens} tokens, training: dsim.cost.layer_time / {tp} = "
            f"{compute * 1e3:.2f} ms per rank; 4 all-reduces of {fmt(vol.nbytes)} bytes "
            "(dsim.cost.tp_volume)"
        ],
    )
    for label, rpn in (
        ("TP8 inside one NVLink node, no overlap", 8),
        ("TP8 across nodes over InfiniBand", 1),
    ):
        t = vol.time("H100-SXM", ranks_per_node=rpn)
        share = t / (t + compute)
        rs.append(at_most(label, c.q["overhead_pct_max"], share * 100))
        lines.append(f"{label}: {t * 1e3:.2f} ms -> {pct(share)} of the layer")
    t = vol.time("H100-SXM", ranks_per_node=8)
    left = exposed_comm_time(t, compute)
    rs.append(
        at_most(
            "TP8 in a node, all-reduces overlapped with independent compute",
            c.q["overhead_pct_max"],
            left / (left + compute) * 100,
        )
    )
    lines.append(f"overlapped (e.g. with another micro-batch): exposed {left * 1e3:.2f} ms")
    return make(
        c,
        rs,
        "%",
        lines,
        ["dsim.cost.layer_time", "dsim.cost.tp_volume", "dsim.cost.exposed_comm_time"],
    )


@check("a4-pp-8-stages-mb64")
def pipeline_bubble(c: Claim) -> Verdict:
    p, m = c.inputs["stages"], c.inputs["micro_batches"]
    accum = 4  # a4-grad-accum-4: the article's gradient accumulation steps
    need = next(k for k in range(1, 10_000) if bubble_fraction_1f1b(p, k) <= 0.10)
    rs = [
        at_least("64 micro-batches per step", need, m, tol=0),
        at_least(
            f"micro-batch size 64, {accum} micro-batches (the article's accumulation steps)",
            need,
            accum,
            tol=0,
        ),
    ]
    return make(
        c,
        rs,
        "micro-batches",
        [
            f"1F1B bubble (p-1)/(m+p-1), dsim.cost.bubble_fraction_1f1b: p={p}, m={m}: "
            f"{pct(bubble_fraction_1f1b(p, m))}; "
            f"m={accum}: {pct(bubble_fraction_1f1b(p, accum))}",
            f"a bubble under 10 % (a usual target) needs m >= {need} micro-batches; each reading "
            "gives the micro-batches per step (computed) against that need (stated)",
        ],
        ["dsim.cost.bubble_fraction_1f1b"],
    )
