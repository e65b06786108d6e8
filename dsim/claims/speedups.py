"""Checks of speed-up claims: bounds from bytes moved and peak throughputs, and
measured GEMMs."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

from dsim.claims.models import deepseek_llm_67b, llama31_8b, quant_bytes_per_param
from dsim.claims.references import ref, src
from dsim.claims.verdict import (
    Claim,
    Verdict,
    agree,
    check,
    fmt,
    make,
    not_stated,
    per_step_bound,
    range_ends,
)
from dsim.config import ModelArgs
from dsim.cost import (
    bytes_per_param,
    flops,
    get_gpu,
    kv_cache_bytes_per_token,
    params,
    peak_flops,
    weight_bytes,
)


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


def serving_speedup(model: ModelArgs, gpus: int, bits: int, context: int = 4096) -> float:
    """Decode throughput with `bits`-bit weights (group-128 scales) over FP16 weights when the
    memory the smaller weights free holds more sequences: the batch is as large as the KV caches
    of `context`-token sequences allow on `gpus` A100-80GB, and each step takes the longer of
    reading weights and caches from HBM and computing at the FP16 tensor peak."""
    a100 = get_gpu("A100-80GB-SXM")
    n = params(model).total
    kv_seq = kv_cache_bytes_per_token(model) * context
    per_token = flops(model, batch=1, seq_len=1, mode="decode", context=context).total
    out = {}
    for dtype in ("fp16", _DTYPE_OF_BITS[bits]):
        w = weight_bytes(n, dtype, 128)
        batch = int((gpus * a100.hbm_bytes - w) // kv_seq)
        if batch < 1:
            raise ValueError(f"{model.name} in {dtype} does not fit {gpus} x A100-80GB")
        step = max(
            (w + batch * kv_seq) / (gpus * a100.hbm_bw),
            batch * per_token / (gpus * peak_flops(a100, "fp16")),
        )
        out[dtype] = batch / step
    return out[_DTYPE_OF_BITS[bits]] / out["fp16"]


_DTYPE_OF_BITS = {8: "int8", 4: "int4"}
_SERVING = (("8B on one A100-80GB", llama31_8b, 1), ("67B on two A100-80GB", deepseek_llm_67b, 2))


def _serving_readings(lo: float, hi: float, bits: int) -> tuple[list, list[str]]:
    """The serving readings of a deployment speed-up (lo = hi, or a range checked at both ends):
    a model that fits easily, one that barely fits in FP16 (the freed memory then multiplies the
    batch)."""
    rs, lines = [], []
    for label, model, gpus in _SERVING:
        x = serving_speedup(model(), gpus, bits)
        name = f"serving, {label}, freed memory to a larger batch"
        rs += [agree(name, hi, x)] if lo == hi else range_ends(name, lo, hi, x)
        lines.append(
            f"serving {model().name} on {gpus} x A100-80GB, 4096-token sequences, batch as large "
            f"as the KV caches allow (dsim.claims.serving_speedup): {x:.2f}x over FP16"
        )
    return rs, lines


@check("a4-quant-table-int8-2.5x", "a4-quant-table-int4-4.8x")
def low_bit_speedup(c: Claim) -> Verdict:
    """A step speed-up <= max(bytes ratio, tensor-peak ratio): a step takes max(compute, memory)
    time. The table's rows are deployments (inference serving, edge devices), so the bound makes
    them off at most under that reading, and serving readings are computed beside it."""
    bits, stated = c.q["bits"], c.q["speedup_x"]
    a100 = get_gpu("A100-80GB-SXM")
    q = quant_bytes_per_param(bits, 128)
    by, by_ideal = bytes_per_param("fp16") / q, 16 / bits
    comp = (peak_flops(a100, "int8") if bits == 8 else ref("a100_int4_ops")) / peak_flops(
        a100, "fp16"
    )
    bound = max(by_ideal, comp)
    meas, where = _measured_speedup("int8")
    serve, serve_lines = _serving_readings(stated, stated, bits)
    return make(
        c,
        [per_step_bound("one step at the same batch", stated, bound, deployment=True), *serve],
        "x",
        [
            f"memory-bound: fp16 2 bytes / {bits}-bit {q:.4f} bytes (group-128 bf16 scales) = "
            f"{by:.3f}x "
            f"({by_ideal:g}x with no scales at all)",
            f"compute-bound: A100 {bits}-bit tensor peak / fp16 = {comp:g}x"
            + ("" if bits == 8 else f" ({src('a100_int4_ops')}; H100 has no INT4 tensor cores)"),
            f"a step takes max(compute, memory) time, so no step beats {bound:g}x",
            f"measured (dsim/data/quant_gpu.json): best INT8 GEMM {meas:.2f}x over bf16 ({where})",
            *serve_lines,
        ],
        [
            "dsim.cost.hardware",
            "dsim.quant (QuantizedTensor.nbytes)",
            "dsim/data/quant_gpu.json",
            "dsim.cost.weight_bytes",
            "dsim.cost.kv_cache_bytes_per_token",
        ],
        bound=f"one step: speed-up <= max(bytes ratio, peak ratio) = {bound:g}x",
    )


@check("a2-int8-speed-2-3x", "a3-int8-3.2x-speed")
def int8_speedup_baselines(c: Claim) -> Verdict:
    """INT8 inference speed-ups with no stated baseline (a2, a range checked at both ends) or with
    the article's own CPU quantize_dynamic code (a3, an FP32 baseline)."""
    lo, hi = (
        (c.q["speedup_low_x"], c.q["speedup_high_x"])
        if "speedup_high_x" in c.q
        else (c.q["speedup_x"], c.q["speedup_x"])
    )
    cpu_code = c.id.startswith("a3")  # a3 shows torch.quantization.quantize_dynamic (fbgemm)
    q = quant_bytes_per_param(8, 128)
    a100 = get_gpu("A100-80GB-SXM")
    vs16 = max(bytes_per_param("fp16") / q, peak_flops(a100, "int8") / peak_flops(a100, "fp16"))
    vs32 = bytes_per_param("fp32") / q
    meas, where = _measured_speedup("int8")

    def ends(label: str, bound: float) -> list:
        if lo == hi:
            return [per_step_bound(label, hi, bound, deployment=True)]
        return [
            dataclasses.replace(per_step_bound(label, x, bound, deployment=True), part=part)
            for x, part in ((lo, "low end"), (hi, "high end"))
        ]

    gpu = ends("baseline FP16 on a GPU, one step", vs16)
    serve, serve_lines = _serving_readings(lo, hi, 8)
    rs = [*ends("baseline FP32, one memory-bound step (CPU quantize_dynamic)", vs32)]
    rs += not_stated(gpu + serve) if cpu_code else gpu + serve
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
            f"-> at most {vs16:g}x per step",
            f"measured on an H100: best INT8 GEMM {meas:.2f}x over bf16 ({where}), below even the "
            "FP16 bound",
            *serve_lines,
        ]
        + (
            [
                "the article's own code is CPU quantize_dynamic on an FP32 model: the GPU readings "
                "are context"
            ]
            if cpu_code
            else []
        ),
        ["dsim.quant", "dsim.cost.hardware", "dsim/data/quant_gpu.json"],
        bound="one step: speed-up <= max(bytes ratio, peak ratio)",
    )
