"""Checks of byte claims: weights at each precision, training state, quantization."""

from __future__ import annotations

from dsim.claims.models import llama31_8b, quant_bytes_per_param
from dsim.claims.references import ref, src
from dsim.claims.verdict import (
    TOLERANCE,
    Claim,
    Verdict,
    above_min,
    agree,
    at_most,
    below_max,
    check,
    fmt,
    get_claim,
    make,
    pct,
)
from dsim.config import preset
from dsim.cost import (
    bytes_per_param,
    get_gpu,
    kv_cache_bytes_per_token,
    memory,
    params,
    weight_bytes,
)

# ---------------------------------------------------------------------------------------------
# Bytes: weights, training state, quantization
# ---------------------------------------------------------------------------------------------
_DTYPE_OF_BITS = {16: "fp16", 8: "int8", 4: "int4"}


def _bytes_lines(n: int, bits: int, stated: float) -> tuple[float, list[str]]:
    """Bytes of n weights at `bits` (+ one bf16 scale per 128 weights below 16 bits), explained."""
    dtype = _DTYPE_OF_BITS[bits]
    b = weight_bytes(n, dtype, 128)
    line = f"{fmt(n)} params x {bits} bits / 8 = {fmt(n * bits / 8)} bytes"
    if bits < 16:
        line += (
            f"; with a bf16 scale per 128 weights dsim.cost.weight_bytes = {fmt(b)} "
            f"(dsim.quant QuantizedTensor.nbytes: {quant_bytes_per_param(bits, 128):.6f} "
            "bytes/param)"
        )
    lines = [
        line,
        f"stated {fmt(stated)} / computed {fmt(b)} = {stated / b:.3f}"
        + (
            f": {fmt(stated)} bytes hold only {stated * 8 / n:.2f} bits per parameter"
            if stated < b * 0.95
            else ""
        ),
    ]
    return b, lines


@check("a1-fp16-16gb", "a0-v100-65b-int8-21gb")
def stated_precision_bytes(c: Claim) -> Verdict:
    """The claim names the bit width: bytes = params x bits / 8 (+ scales); fewer bytes is
    impossible."""
    n, bits = int(c.inputs["params"]), c.inputs["bits"]
    stated = c.q.get("bytes") or c.q["model_bytes"]
    b, lines = _bytes_lines(n, bits, stated)
    floor = n * bits / 8
    r = (
        above_min(f"{_DTYPE_OF_BITS[bits]} as stated", stated, floor)
        if stated < floor * (1 - TOLERANCE)
        else agree(f"{_DTYPE_OF_BITS[bits]}, weights only", stated, b)
    )
    if "gpu_mem_bytes" in c.q:
        i4 = weight_bytes(n, "int4", 128)
        lines.append(f"even INT4 needs {fmt(i4)} bytes; the GPU has {fmt(c.q['gpu_mem_bytes'])}")
    lines.append("weights only: the KV cache and activations come on top")
    return make(
        c,
        r,
        "bytes",
        lines,
        ["dsim.cost.weight_bytes", "dsim.quant.quantize (QuantizedTensor.nbytes)"],
        bound=f"{fmt(n)} numbers of {bits} bits need at least {fmt(floor)} bytes",
    )


@check("a1-w4a16-4.2gb")
def w4a16_size(c: Claim) -> Verdict:
    """INT4 weights: all of them, or all but the embedding and head (kept in 16 bits by W4A16
    checkpoints)."""
    n, stated = int(c.inputs["params"]), c.q["model_bytes"]
    b, lines = _bytes_lines(n, c.inputs["bits"], stated)
    m = llama31_8b()
    p = params(m)
    keep = p.breakdown["embedding"] + p.breakdown["head"]
    mixed = weight_bytes(p.total - keep, "int4", 128) + weight_bytes(keep, "fp16")
    lines.append(
        f"{m.name}: int4 body {fmt(p.total - keep)} + fp16 embedding and head {fmt(keep)} -> "
        f"{fmt(mixed)} bytes"
    )
    return make(
        c,
        [
            agree("every weight in INT4", stated, b),
            agree(f"{m.name}, embedding and head kept in FP16", stated, mixed),
        ],
        "bytes",
        lines,
        [
            "dsim.cost.weight_bytes",
            "dsim.cost.params",
            "dsim.quant.quantize (QuantizedTensor.nbytes)",
        ],
    )


@check("a0-offload-1.5t-full-memory")
def unstated_precision_bytes(c: Claim) -> Verdict:
    """The claim names no precision: try each format; the bits per parameter it implies."""
    n, stated = int(c.inputs["params"]), c.q["gpu_memory_bytes"]
    rs, lines = [], []
    for dtype in _DTYPE_OF_BITS.values():
        b = weight_bytes(n, dtype, 128)
        rs.append(agree(dtype, stated, b))
        lines.append(f"{dtype}: dsim.cost.weight_bytes({fmt(n)}) = {fmt(b)}")
    lines.append(
        f"stated {fmt(stated)} implies {stated * 8 / n:.2f} bits per parameter: no standard format"
    )
    return make(c, rs, "bytes", lines, ["dsim.cost.weight_bytes"])


@check("a0-offload-1.5t-resident-memory")
def offload_resident(c: Claim) -> Verdict:
    active, stated, total = c.q["active_params"], c.q["gpu_memory_bytes"], c.q["params"]
    implied_bpp = get_claim("a0-offload-1.5t-full-memory").q["gpu_memory_bytes"] / total
    a100 = get_gpu("A100-80GB-SXM")
    expert = c.inputs["params_per_expert"]
    rs = [
        above_min("FP16 weights", stated, weight_bytes(int(active), "fp16")),
        above_min(
            f"the article's own {implied_bpp:.1f} bytes/param (1.2 TB / 1.5T)",
            stated,
            active * implied_bpp,
        ),
        above_min("INT4, group 128", stated, weight_bytes(int(active), "int4", 128)),
    ]
    swap = expert * implied_bpp / a100.pcie_bw
    return make(
        c,
        rs,
        "bytes",
        [
            f"the {fmt(active)} active parameters must stay on the GPUs: FP16 "
            f"{fmt(weight_bytes(int(active), 'fp16'))}, "
            f"at {implied_bpp:.1f} B/param {fmt(active * implied_bpp)}, INT4 "
            f"{fmt(weight_bytes(int(active), 'int4', 128))}",
            f"8 x A100-80GB = {fmt(8 * a100.hbm_bytes)}; 8 x 40 GB = "
            f"{fmt(8 * get_gpu('A100-40GB-SXM').hbm_bytes)}",
            f"routing changes experts token by token: swapping one {fmt(expert)}-param expert over "
            "PCIe "
            f"({fmt(a100.pcie_bw)} B/s) takes {swap:.1f} s",
        ],
        ["dsim.cost.weight_bytes", "dsim.cost.hardware (A100 HBM, PCIe)"],
        bound="resident bytes >= bytes of the active parameters",
    )


def _training_bytes_per_param() -> float:
    """bf16 weights + bf16 gradients + fp32 master + two fp32 Adam moments (mixed precision)."""
    return 2 * bytes_per_param("bf16") + 3 * bytes_per_param("fp32")


@check("a0-single-node-340b-training", "a0-trillion-8-shards")
def training_fit(c: Claim) -> Verdict:
    n, gpus = c.inputs["params"], c.inputs["gpus"]
    a100 = get_gpu("A100-80GB-SXM")
    node = gpus * a100.hbm_bytes
    bpp = _training_bytes_per_param()
    max_train = node / bpp
    max_weights = node / bytes_per_param("bf16")
    rs = [
        below_max("training state, 16 bytes/param", n, max_train),
        below_max("bf16 weights alone", n, max_weights),
    ]
    return make(
        c,
        rs,
        "params",
        [
            "mixed-precision Adam: 2 (bf16 weights) + 2 (bf16 grads) + 4 (fp32 master) + 8 (fp32 "
            f"m, v) = {bpp:g} bytes/param",
            f"{gpus} x A100 {fmt(a100.hbm_bytes)} = {fmt(node)} bytes -> at most {fmt(max_train)} "
            "params of training "
            f"state, {fmt(max_weights)} of bf16 weights alone (before activations)",
            f"{fmt(n)} params need {fmt(n * bpp)} bytes of state, {n * bpp / node:.1f}x the GPUs' "
            "memory "
            f"({fmt(n * bpp / gpus)} per GPU); only CPU/NVMe offload (ZeRO-Infinity) could hold it",
        ],
        ["dsim.cost.bytes_per_param", "dsim.cost.hardware A100-80GB-SXM"],
        bound="model and optimizer state must fit in GPU memory",
    )


@check("a1-a100-lora-4b")
def lora_fits_a100(c: Claim) -> Verdict:
    n, cap = int(c.inputs["params"]), get_gpu("A100-80GB-SXM").hbm_bytes
    most = cap / bytes_per_param("bf16")
    return make(
        c,
        below_max("frozen bf16 base + small adapters", n, most),
        "params",
        [
            f"LoRA keeps the base frozen in bf16: {fmt(n)} x 2 = {fmt(n * 2)} bytes of {fmt(cap)}",
            f"weights alone would allow up to {fmt(most)} params: 4B holds, but understates the "
            "A100 ~10x "
            "(activations and adapter state take part of the rest)",
        ],
        ["dsim.cost.bytes_per_param", "dsim.cost.hardware A100-80GB-SXM"],
        bound="weights must fit in HBM",
    )


@check("a1-t4-16gb-inference")
def t4_fit(c: Claim) -> Verdict:
    cap, m = ref("t4_hbm_bytes"), llama31_8b()
    real = params(m).total
    kv = kv_cache_bytes_per_token(m) * 2048
    rs = [
        at_most(
            f"{dtype} weights + one 2048-token KV cache",
            cap,
            weight_bytes(real, dtype, 128) + kv,
            tol=0,
            fail="cannot_hold",
        )
        for dtype in ("fp16", "int8", "int4")
    ]
    return make(
        c,
        rs,
        "bytes",
        [
            f"{m.name}: {fmt(real)} params; KV cache 2048 tokens x "
            f"{fmt(kv_cache_bytes_per_token(m))} B = {fmt(kv)}",
            ", ".join(
                f"{d}: {fmt(weight_bytes(real, d, 128))} + KV" for d in ("fp16", "int8", "int4")
            )
            + f" vs T4 / MI25 {fmt(cap)}",
        ],
        [
            "dsim.cost.params",
            "dsim.cost.weight_bytes",
            "dsim.cost.kv_cache_bytes_per_token",
            src("t4_hbm_bytes"),
        ],
        bound="weights and KV cache must fit in the card's memory",
    )


@check("a3-int8-quarter-of-fp32")
def int8_fraction_of_fp32(c: Claim) -> Verdict:
    i8 = quant_bytes_per_param(8, None)
    frac = i8 / bytes_per_param("fp32")
    return make(
        c,
        agree("per-channel INT8 vs FP32", c.q["size_fraction"], frac),
        "fraction",
        [
            f"dsim.quant per-channel INT8: {i8:.5f} bytes/param (codes + one bf16 scale per "
            "1024-wide row)",
            f"{i8:.5f} / 4 = {frac:.4f} of FP32; layers quantize_dynamic leaves alone stay FP32",
        ],
        ["dsim.quant.quantize (QuantizedTensor.nbytes)", "dsim.cost.bytes_per_param"],
    )


@check("a2-int8-storage-75pct")
def int8_storage_cut(c: Claim) -> Verdict:
    i8 = quant_bytes_per_param(8, 128)
    rs = [
        agree(f"vs {base}", c.q["storage_reduction_pct"], (1 - i8 / bytes_per_param(base)) * 100)
        for base in ("fp32", "fp16")
    ]
    return make(
        c,
        rs,
        "%",
        [
            f"dsim.quant INT8, group 128: {i8:.6f} bytes/param",
            f"vs FP32: 1 - {i8:.4f}/4 = {pct(1 - i8 / 4)}; vs FP16/BF16: 1 - {i8:.4f}/2 = "
            f"{pct(1 - i8 / 2)} (pruning would add an unquantified share)",
        ],
        ["dsim.quant.quantize (QuantizedTensor.nbytes)", "dsim.cost.bytes_per_param"],
    )


@check("a4-absmax-per-128")
def absmax_group(c: Claim) -> Verdict:
    import torch

    from dsim.quant import act_quant

    g = c.inputs["group_size"]
    over = (quant_bytes_per_param(8, g) - 1) * 8
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(0))
    _, s = act_quant(x)
    v3_block = x.shape[-1] // s.shape[-1]
    return make(
        c,
        agree("DeepSeek-V3's FP8 tile width", g, v3_block, tol=0),
        "elements",
        [
            f"dsim.quant.act_quant (DeepSeek-V3's kernel): one scale per {v3_block} elements",
            f"scale overhead with bf16 scales: 16 / {g} = {over:.3f} bits per weight (dsim.quant "
            f"INT8 group {g})",
            "the article's own quantize_layer uses one scale per tensor, not per 128 channels",
        ],
        ["dsim.quant.act_quant", "dsim.quant.quantize"],
    )


@check("a4-quantize-layer-code")
def quantize_layer_code(c: Claim) -> Verdict:
    import torch

    from dsim.quant import dequantize, qrange, quantize

    bits = c.inputs["bits"]
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))

    def quantize_layer_as_written(w: torch.Tensor, bits: int) -> torch.Tensor:
        """Article a4's recorded formula: one step for the tensor, absmax / (2^(bits-1) - 1)."""
        step = w.abs().max().item() / (2 ** (bits - 1) - 1)
        return (w / step).round() * step

    ours = dequantize(quantize(w, bits=bits, granularity="tensor", scale_dtype=torch.float32))
    diff = float((quantize_layer_as_written(w, bits) - ours).abs().max())
    qmax = (1 << (bits - 1)) - 1
    return make(
        c,
        agree("q_max of the article's formula vs dsim.quant.qrange", qmax, qrange(bits)[1], tol=0),
        "",
        [
            f"article: scale = max|W| / (2^({bits}-1) - 1) = max|W| / {qmax}; "
            f"dsim.quant.qrange({bits}) = {qrange(bits)}",
            "re-implemented and run on a 64 x 256 weight: max |difference| from dsim.quant "
            f"per-tensor = {diff:.3g}",
            "correct fake quantization, but the training loop shown never calls it (it only uses "
            "FP16 autocast)",
        ],
        ["re-implementation of the article's quantize_layer", "dsim.quant.quantize / dequantize"],
    )


@check("a1-qlora-4bit-16bit")
def qlora_bits(c: Claim) -> Verdict:
    rs = [
        agree("base weight bits", c.q["base_bits"], ref("qlora_base_bits"), tol=0),
        agree("adapter bits", c.q["adapter_bits"], ref("qlora_adapter_bits"), tol=0),
    ]
    return make(
        c,
        rs,
        "bits",
        [
            f"QLoRA: {ref('qlora_base_bits'):g}-bit NF4 base, {ref('qlora_adapter_bits'):g}-bit "
            "adapters; "
            f"dsim.cost.bytes_per_param('int4', None) x 8 = {bytes_per_param('int4', None) * 8:g} "
            "bits"
        ],
        [src("qlora_base_bits"), "dsim.cost.bytes_per_param"],
    )


@check("a4-adam-fp32")
def adam_precision(c: Claim) -> Verdict:
    v3 = preset("deepseek-v3")
    per = {}
    for opt in ("fp32", "bf16"):
        m = memory(v3, seq_len=1, pp=16, dp=128, ep=64, zero=0, optimizer_dtype=opt)
        per[opt] = m.optimizer / m.details["params_on_gpu"]
    rs = [
        agree(
            "FP32 master weights (DeepSeek-V3 keeps them)", c.q["optimizer_state_bits"], 32, tol=0
        ),
        agree(
            "FP32 Adam moments, DeepSeek-V3 (it keeps them in BF16)",
            c.q["optimizer_state_bits"],
            16,
            tol=0,
        ),
    ]
    return make(
        c,
        rs,
        "bits",
        [
            "dsim.cost.memory(deepseek-v3) optimizer bytes per parameter: fp32 moments "
            f"{per['fp32']:g}, "
            f"bf16 moments {per['bf16']:g} (each with a 4-byte fp32 master copy)",
            "standard mixed precision keeps both in FP32; DeepSeek-V3 (section 3.3.3) stores the "
            "moments in BF16",
        ],
        ["dsim.cost.memory", "DeepSeek-V3 technical report, section 3.3.3"],
    )
