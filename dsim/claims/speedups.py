"""Checks of speed-up claims: bounds from bytes moved and peak throughputs, and
measured GEMMs."""

from __future__ import annotations

import json
from importlib import resources

from dsim.claims.models import quant_bytes_per_param
from dsim.claims.references import ref, src
from dsim.claims.verdict import Claim, Verdict, agree, below_max, check, fmt, make
from dsim.cost import bytes_per_param, get_gpu, peak_flops


# ---------------------------------------------------------------------------------------------
# Speed-ups: bounds from bytes and peaks, and measurements
# ---------------------------------------------------------------------------------------------
def _measured_speedup(kernel: str) -> tuple[float, str]:
    """The largest speed-up over bf16 measured for `kernel` in dsim/data/quant_gpu.json."""
    data = json.loads(resources.files("dsim").joinpath("data/quant_gpu.json").read_text())
    best = max(
        (r for r in data["timing"] if r.get("kernel") == kernel and "speedup_vs_bf16" in r),
        key=lambda r: r["speedup_vs_bf16"],
    )
    return best["speedup_vs_bf16"], (
        f"{data['device']}: {best['shape']} m={best['m']} n={best['n']} k={best['k']}"
    )


@check("a4-quant-table-bf16-1.2x", "a4-quant-table-fp16-1.0x")
def same_width_speedup(c: Claim) -> Verdict:
    """16-bit formats against FP16: same bytes, so only a different tensor-core peak could help."""
    a100, h100 = get_gpu("A100-80GB-SXM"), get_gpu("H100-SXM")
    peak = a100.bf16_flops / a100.fp16_flops
    return make(
        c,
        agree("same bytes, same tensor-core peak", c.q["speedup_x"], peak),
        "x",
        [
            f"bytes per param: bf16 {bytes_per_param('bf16'):g}, fp16 {bytes_per_param('fp16'):g}",
            f"tensor peak: A100 {fmt(a100.bf16_flops)} / {fmt(a100.fp16_flops)} = {peak:g}; H100 "
            f"{fmt(h100.bf16_flops)} / {fmt(h100.fp16_flops)} = "
            f"{h100.bf16_flops / h100.fp16_flops:g}",
            "BF16 buys range and stability, not speed; the FP16 row is the table's baseline",
        ],
        ["dsim.cost.hardware", "dsim.cost.bytes_per_param"],
    )


@check("a4-quant-table-int8-2.5x", "a4-quant-table-int4-4.8x")
def low_bit_speedup(c: Claim) -> Verdict:
    """speed-up <= max(bytes ratio, tensor-peak ratio): a step takes max(compute, memory) time."""
    bits, stated = c.q["bits"], c.q["speedup_x"]
    a100 = get_gpu("A100-80GB-SXM")
    q = quant_bytes_per_param(bits, 128)
    by, by_ideal = bytes_per_param("fp16") / q, 16 / bits
    comp = (peak_flops(a100, "int8") if bits == 8 else ref("a100_int4_ops")) / peak_flops(
        a100, "fp16"
    )
    bound = max(by_ideal, comp)
    meas, where = _measured_speedup("int8")
    return make(
        c,
        below_max("bound from bytes and tensor peaks", stated, bound),
        "x",
        [
            f"memory-bound: fp16 2 bytes / {bits}-bit {q:.4f} bytes (group-128 bf16 scales) = "
            f"{by:.3f}x "
            f"({by_ideal:g}x with no scales at all)",
            f"compute-bound: A100 {bits}-bit tensor peak / fp16 = {comp:g}x"
            + ("" if bits == 8 else f" ({src('a100_int4_ops')}; H100 has no INT4 tensor cores)"),
            f"a step takes max(compute, memory) time, so no regime beats {bound:g}x",
            f"measured (dsim/data/quant_gpu.json): best INT8 GEMM {meas:.2f}x over bf16 ({where})",
        ],
        ["dsim.cost.hardware", "dsim.quant (QuantizedTensor.nbytes)", "dsim/data/quant_gpu.json"],
        bound=f"speed-up <= max(bytes ratio, peak ratio) = {bound:g}x",
    )


@check("a2-int8-speed-2-3x", "a3-int8-3.2x-speed")
def int8_speedup_baselines(c: Claim) -> Verdict:
    stated = c.q.get("speedup_x") or c.q["speedup_high_x"]
    q = quant_bytes_per_param(8, 128)
    a100 = get_gpu("A100-80GB-SXM")
    vs16 = max(bytes_per_param("fp16") / q, peak_flops(a100, "int8") / peak_flops(a100, "fp16"))
    vs32 = bytes_per_param("fp32") / q
    meas, where = _measured_speedup("int8")
    rs = [
        below_max("baseline FP32, memory-bound (CPU quantize_dynamic)", stated, vs32),
        below_max("baseline FP16 on a GPU", stated, vs16),
    ]
    return make(
        c,
        rs,
        "x",
        [
            f"INT8 group 128: {q:.4f} bytes/param (dsim.quant)",
            f"vs FP32: 4 / {q:.4f} = {vs32:.2f}x when memory-bound (CPU INT8 kernels also compute "
            "faster than FP32)",
            f"vs FP16: bytes {2 / q:.2f}x, A100 tensor peak "
            f"{peak_flops(a100, 'int8') / peak_flops(a100, 'fp16'):g}x "
            f"-> at most {vs16:g}x",
            f"measured on an H100: best INT8 GEMM {meas:.2f}x over bf16 ({where}), below even the "
            "FP16 bound",
        ],
        ["dsim.quant", "dsim.cost.hardware", "dsim/data/quant_gpu.json"],
        bound="speed-up <= max(bytes ratio, peak ratio)",
    )
