"""Quantization: INT8, INT4 and FP8 (DeepSeek-V3's block scaling), calibration, QAT, and what it
costs.

A weight or activation x is stored as small integers (or FP8 numbers) q plus a few scales s with
x ~ s * q. Everything here is plain PyTorch that runs on a CPU, written to be read next to the real
kernels, one concept per module:

    integer      quantize / dequantize        INT8, INT4 (two per byte), symmetric or asymmetric,
                                              per tensor, per output channel, per group of input
                                              channels; QuantizedTensor holds data + scales
    fp8          act_quant / weight_quant /   DeepSeek-V3's scheme with the names and shapes of
                 weight_dequant / fp8_gemm    deepseek-ai/DeepSeek-V3 inference/kernel.py: E4M3,
                                              1x128 activation tiles, 128x128 weight blocks, a GEMM
                                              that promotes each 128-wide K block to fp32, and a
                                              model of the tensor core's ~14-bit adder
                                              (aligned_sum)
    layers       QuantLinear, QuantExperts    W8A8, W4A16 and FP8-block layers
    convert      quantize_model, QuantReport  swaps them into a Transformer and reports bytes by
                                              kind
    calibration  calibrate, calibrate_model   static activation ranges: absmax, percentile, MSE, KL
    qat          fake_quant, prepare_qat,     straight-through fake quantization and a short
                 finish_qat, qat_finetune     fine-tune that makes the model robust to INT4
    accuracy     accuracy_size_table          held-out loss and bytes for each scheme
    checks       the input checks             a ValueError that says what to change

Every public name is re-exported here: `from dsim import quant as Q; Q.quantize(...)`.
Shapes in comments: M rows (tokens), K input width (reduction), N output width, E experts,
G groups per row, g group size, b block size.
"""

from dsim.quant.accuracy import accuracy_size_table, clone_model, to_bf16
from dsim.quant.calibration import calibrate, calibrate_model
from dsim.quant.convert import (
    KINDS,
    LAYERS,
    LINEAR_KINDS,
    QuantReport,
    bytes_by_kind,
    kind_of,
    quantize_model,
)
from dsim.quant.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    FP8_MIN_AMAX,
    accumulation_error,
    act_quant,
    aligned_sum,
    fp8_gemm,
    weight_dequant,
    weight_quant,
)
from dsim.quant.integer import (
    Granularity,
    QuantizedTensor,
    dequantize,
    pack_int4,
    qrange,
    quantize,
    quantize_fp8,
    unpack_int4,
)
from dsim.quant.layers import SCHEMES, QuantExperts, QuantLinear, quant_linear, quantize_weight
from dsim.quant.qat import FakeQuant, fake_quant, finish_qat, prepare_qat, qat_finetune

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "FP8_MIN_AMAX",
    "KINDS",
    "LAYERS",
    "LINEAR_KINDS",
    "SCHEMES",
    "FakeQuant",
    "Granularity",
    "QuantExperts",
    "QuantLinear",
    "QuantReport",
    "QuantizedTensor",
    "accumulation_error",
    "accuracy_size_table",
    "act_quant",
    "aligned_sum",
    "bytes_by_kind",
    "calibrate",
    "calibrate_model",
    "clone_model",
    "dequantize",
    "fake_quant",
    "finish_qat",
    "fp8_gemm",
    "kind_of",
    "pack_int4",
    "prepare_qat",
    "qat_finetune",
    "qrange",
    "quant_linear",
    "quantize",
    "quantize_fp8",
    "quantize_model",
    "quantize_weight",
    "to_bf16",
    "unpack_int4",
    "weight_dequant",
    "weight_quant",
]
