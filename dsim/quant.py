"""Quantization: INT8, INT4 and FP8 (DeepSeek-V3's block scaling), calibration, QAT, and what it costs.

A weight or activation x is stored as small integers (or FP8 numbers) q plus a few scales s with
x ~ s * q. Everything here is plain PyTorch that runs on a CPU, written to be read next to the real
kernels:

    integer    quantize / dequantize        INT8, INT4 (two per byte), symmetric or asymmetric,
                                            per tensor, per output channel, per group of input
                                            channels; QuantizedTensor holds data + scales
    FP8        act_quant / weight_quant /   DeepSeek-V3's scheme with the names and shapes of
               weight_dequant / fp8_gemm    deepseek-ai/DeepSeek-V3 inference/kernel.py: E4M3,
                                            1x128 activation tiles, 128x128 weight blocks, a GEMM
                                            that promotes each 128-wide K block to fp32, and a
                                            model of the tensor core's ~14-bit adder (aligned_sum)
    modules    QuantLinear, QuantExperts,   W8A8, W4A16 and FP8-block layers; quantize_model swaps
               quantize_model               them into a Transformer and reports bytes by kind
    calibrate  calibrate, calibrate_model   static activation ranges: absmax, percentile, MSE, KL
    QAT        fake_quant, prepare_qat,     straight-through fake quantization and a short
               finish_qat, qat_finetune     fine-tune that makes the model robust to INT4
    measure    accuracy_size_table          bits per byte and bytes for each scheme

Shapes in comments: M rows (tokens), K input width (reduction), N output width, E experts,
G groups per row, g group size, b block size.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

try:
    from numba import njit
except ImportError:  # pragma: no cover - the KL search then runs as plain Python (slow, same result)
    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

from dsim.model import Experts, Routing

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0                      # largest finite E4M3 number: torch.finfo(torch.float8_e4m3fn).max
FP8_MIN_AMAX = 1e-4                  # DeepSeek clamps a tile's amax to 1e-4 so that a zero tile has a scale
SCHEMES = ("w8a8", "w4a16", "fp8")
LAYERS = ("all", "experts", "attention")
Granularity = Literal["tensor", "channel", "group"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------
# Input checks: every public function fails with a ValueError that says what to change
# ------------------------------------------------------------------------------------------
def _check_float(x: torch.Tensor, what: str = "tensor") -> None:
    """x must be a finite floating-point tensor (NaN or inf would poison every scale of its group)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"cannot quantize {what} of type {type(x).__name__}: expected a torch.Tensor")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"cannot quantize a {x.dtype} {what}: expected float16, bfloat16, float32 or float64 "
                         "(integer, bool, complex and already-FP8 tensors have no meaningful absmax scaling)")
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"cannot quantize a {what} that holds {n_nan} NaN and {n_inf} inf value(s): "
                         "the scale of every group that contains one would be NaN/inf")


def _check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"bits = {bits!r} is not supported: choose 4 or 8")


def _check_block(block_size: int, what: str = "block_size") -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{what} = {block_size!r} is invalid: must be an integer >= 1")


def _check_scale_dtype(scale_dtype: torch.dtype) -> None:
    if scale_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"scale_dtype = {scale_dtype} is not supported: bfloat16, float16 or float32")


def _check_scale_fmt(scale_fmt: str | None) -> None:
    if scale_fmt not in (None, "ue8m0"):
        raise ValueError(f"scale_fmt = {scale_fmt!r} is not supported: None (fp32 scales) or 'ue8m0' "
                         "(power-of-two scales)")


# ------------------------------------------------------------------------------------------
# Integer quantization
# ------------------------------------------------------------------------------------------
@dataclass
class QuantizedTensor:
    """A quantized tensor as a checkpoint stores it: the codes, their scales, and what they mean.

    data:  int8 [..., K] (symmetric INT8), uint8 [..., K] (asymmetric INT8),
           uint8 [..., ceil(K/2)] (INT4, two codes per byte, low nibble first), or
           float8_e4m3fn [..., N, K] (FP8 blocks). K is padded up to a multiple of the group
           size when quantize(..., pad=True) was asked to.
    scale: per tensor [], per channel [..., 1], per group [..., K/g] (e.g. [out, in/128]), FP8
           blocks [..., ceil(N/b), ceil(K/b)]; bfloat16 for integer codes (unless quantize() was
           given another scale_dtype), float32 for FP8 (DeepSeek's weight_scale_inv).
           x ~ scale * (code - zero_point).
    zero_point: uint8 with the scale's shape (asymmetric only), else None.
    bits: 4 or 8.
    group_size: input channels that share one scale (the block side for FP8; the row width per
           channel; None per tensor).
    shape: the original tensor's shape.
    fmt: "int" or "fp8_e4m3"; granularity: "tensor", "channel", "group" or "block".
    scale_fmt: FP8 only: None (fp32 scales) or "ue8m0" (powers of two).
    """
    data: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bits: int
    group_size: int | None
    shape: torch.Size
    fmt: str = "int"
    granularity: str = "channel"
    scale_fmt: str | None = None

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors actually stored: codes + scales (+ zero points)."""
        tensors = [self.data, self.scale] + ([self.zero_point] if self.zero_point is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self).to(dtype)

    def select(self, e: int) -> "QuantizedTensor":
        """Slice e of a stacked tensor (one routed expert of [E, N, K] weights)."""
        per_tensor = self.scale.dim() == 0
        return QuantizedTensor(self.data[e], self.scale if per_tensor else self.scale[e],
                               None if self.zero_point is None else
                               (self.zero_point if per_tensor else self.zero_point[e]),
                               self.bits, self.group_size, self.shape[1:], self.fmt, self.granularity,
                               self.scale_fmt)


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """Integer range of the codes: symmetric [-(2^(b-1)-1), 2^(b-1)-1], asymmetric [0, 2^b - 1].

    The symmetric range is "restricted" (no -128 / -8) so that +x and -x round to +q and -q.
    """
    _check_bits(bits)
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _to_groups(x: torch.Tensor, granularity: str, group_size: int, pad: bool) -> torch.Tensor:
    """View x [..., K] as [..., G, g], the elements of each row of the result sharing one scale."""
    if x.dim() == 0:
        raise ValueError("cannot quantize a 0-dimensional tensor: give it at least one dimension")
    if granularity == "tensor":
        return x.reshape(1, -1)                                                    # [1, numel]
    width = x.shape[-1]
    if granularity == "channel":
        return x.unsqueeze(-2)                                                     # [..., 1, K]
    if granularity != "group":
        raise ValueError(f"granularity = {granularity!r} is not supported: 'tensor', 'channel' or 'group'")
    _check_block(group_size, "group_size")
    if width % group_size:
        if not pad:
            raise ValueError(f"group_size = {group_size} does not divide the last dimension {width}: choose a "
                             f"divisor of {width} or pass pad=True to zero-pad it to "
                             f"{math.ceil(width / group_size) * group_size}")
        x = F.pad(x, (0, math.ceil(width / group_size) * group_size - width))
    return x.reshape(*x.shape[:-1], -1, group_size)                                # [..., G, g]


def _int_qparams(xg: torch.Tensor, bits: int, symmetric: bool,
                 scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Absmax (symmetric) or min/max (asymmetric) scale and zero point of each group: [..., G, 1].

    symmetric:  s = max|x| / qmax
    asymmetric: s = (max(x, 0) - min(x, 0)) / (2^b - 1),  z = round(-min(x, 0) / s)
    s is rounded up to `scale_dtype` (the format the checkpoint stores) before it is used, so that
    dequantization from the stored scale is exact and max|x| / s never exceeds qmax. An all-zero
    group gets s = 1.
    """
    lo, hi = qrange(bits, symmetric)
    if symmetric:
        scale = xg.abs().amax(dim=-1, keepdim=True) / hi
    else:
        mn = xg.amin(dim=-1, keepdim=True).clamp(max=0)
        mx = xg.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (mx - mn) / hi
    scale = torch.where(scale > 0, scale.clamp(min=torch.finfo(scale_dtype).tiny), torch.ones_like(scale))
    stored = scale.to(scale_dtype)                 # round up, so that the group's range still fits
    stored = torch.where(stored.float() < scale, torch.nextafter(stored, torch.full_like(stored, math.inf)), stored)
    scale = stored.float()
    if symmetric:
        return scale, None
    zero = torch.clamp(torch.round(-mn / scale), lo, hi)
    return scale, zero


def _int_round(xg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Codes q = clamp(round(x / s) + z, qmin, qmax) as float (round half to even, like the hardware)."""
    lo, hi = qrange(bits, zero is None)
    q = torch.round(xg / scale)
    if zero is not None:
        q = q + zero
    return torch.clamp(q, lo, hi)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes (0..15) per byte along the last dim: [..., K] -> uint8 [..., ceil(K/2)].

    Element 2i goes to the low nibble of byte i and element 2i+1 to the high nibble. An odd K is
    padded with one zero code.
    """
    codes = codes.to(torch.uint8)
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("pack_int4 needs codes in 0..15")
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of pack_int4: uint8 [..., ceil(K/2)] -> uint8 codes [..., width]."""
    both = torch.stack([packed & 0x0F, packed >> 4], dim=-1)                       # [..., K/2, 2]
    return both.flatten(-2)[..., :width]


def quantize(x: torch.Tensor, bits: int = 8, granularity: Granularity = "channel", group_size: int = 128,
             symmetric: bool = True, pad: bool = False, scale_dtype: torch.dtype = torch.bfloat16) -> QuantizedTensor:
    """Quantize x [..., K] to INT8 or INT4 with absmax (symmetric) or min/max (asymmetric) scales.

    granularity: "tensor" (one scale), "channel" (one per row: per output channel of a weight
        [out, in]), "group" (one per `group_size` consecutive input channels: scales [out, in/g]).
    pad: zero-pad K to a multiple of group_size instead of raising when it does not divide K.
    scale_dtype: how scales are stored: bfloat16 (default, 2 bytes, what dsim.cost.weight_bytes
        counts for INT8/INT4), float16 (GPTQ/AWQ checkpoints) or float32.
    The arithmetic is fp32; dequantize(quantize(x)) == scale * (code - zero) exactly.
    """
    _check_float(x)
    _check_bits(bits)
    _check_scale_dtype(scale_dtype)
    shape = x.shape
    xg = _to_groups(x.float(), granularity, group_size, pad)                       # [..., G, g]
    scale, zero = _int_qparams(xg, bits, symmetric, scale_dtype)                   # [..., G, 1]
    q = _int_round(xg, scale, zero, bits)                                          # [..., G, g]
    if granularity == "tensor":
        q, scale = q.reshape(shape), scale.reshape(())
        zero = None if zero is None else zero.reshape(())
        gsize = None
    else:
        q, scale = q.flatten(-2), scale.squeeze(-1)                                # [..., K'], [..., G]
        zero = None if zero is None else zero.squeeze(-1)
        gsize = group_size if granularity == "group" else shape[-1]
    if bits == 8:
        data = q.to(torch.int8) if symmetric else q.to(torch.uint8)
    else:                                                                          # INT4: codes 0..15
        data = pack_int4(q + 8 if symmetric else q)                                # symmetric: offset 8
    return QuantizedTensor(data, scale.to(scale_dtype), None if zero is None else zero.to(torch.uint8), bits,
                           gsize, shape, "int", granularity)


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """float32 tensor of qt.shape: scale * (code - zero_point) (FP8: weight_dequant)."""
    if qt.fmt == "fp8_e4m3":
        return weight_dequant(qt.data, qt.scale, qt.group_size)
    if qt.bits == 8:
        q = qt.data.float()
    else:                                          # codes per row: padded K for groups, else K
        width = qt.scale.shape[-1] * qt.group_size if qt.granularity == "group" else qt.shape[-1]
        q = unpack_int4(qt.data, width).float()
        if qt.symmetric:
            q = q - 8
    if qt.granularity == "tensor":
        zero = 0.0 if qt.zero_point is None else qt.zero_point.float()
        return ((q - zero) * qt.scale.float()).reshape(qt.shape)
    qg = q.reshape(*q.shape[:-1], qt.scale.shape[-1], -1)                          # [..., G, g]
    if qt.zero_point is not None:
        qg = qg - qt.zero_point.float().unsqueeze(-1)
    x = (qg * qt.scale.float().unsqueeze(-1)).flatten(-2)                          # [..., K']
    return x[..., :qt.shape[-1]]                                                   # drop the padding


# ------------------------------------------------------------------------------------------
# FP8, as DeepSeek-V3 does it (names and shapes of deepseek-ai/DeepSeek-V3 inference/kernel.py)
# ------------------------------------------------------------------------------------------
def _fp8_scale(amax: torch.Tensor, scale_fmt: str | None) -> torch.Tensor:
    """s = max(amax, 1e-4) / 448, rounded up to a power of two for scale_fmt='ue8m0'."""
    s = amax.clamp(min=FP8_MIN_AMAX) / FP8_MAX
    if scale_fmt == "ue8m0":                      # an 8-bit exponent-only scale: x/s stays <= 448
        s = torch.exp2(torch.ceil(torch.log2(s)))
    return s


def _to_fp8(x: torch.Tensor) -> torch.Tensor:
    """Round to E4M3 (nearest even). Clamp first: an out-of-range cast is NaN on some backends."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def act_quant(x: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to FP8 with one scale per 1 x block_size tile of the last dim.

    x: [..., K] -> y: float8_e4m3fn [..., K], s: float32 [..., ceil(K/b)], with x ~ y * s per tile.
    DeepSeek's kernel asserts K % b == 0; here a partial last tile is zero-padded (zeros never
    change an absmax), which is what a masked load does.
    """
    _check_float(x, "activation")
    _check_block(block_size)
    _check_scale_fmt(scale_fmt)
    K = x.shape[-1]
    nb = math.ceil(K / block_size)
    tiles = F.pad(x.float(), (0, nb * block_size - K)).reshape(*x.shape[:-1], nb, block_size)  # [..., K/b, b]
    s = _fp8_scale(tiles.abs().amax(dim=-1, keepdim=True), scale_fmt)              # [..., K/b, 1]
    y = _to_fp8(tiles / s).reshape(*x.shape[:-1], nb * block_size)[..., :K]
    return y.contiguous(), s.squeeze(-1)


def weight_quant(x: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight [..., N, K] to FP8 with one scale per block_size x block_size block.

    Returns y: float8_e4m3fn [..., N, K] and s: float32 [..., ceil(N/b), ceil(K/b)] (DeepSeek's
    checkpoints call it `weight_scale_inv`: the factor that dequantizes). Edge blocks are
    zero-padded.
    """
    _check_float(x, "weight")
    _check_block(block_size)
    _check_scale_fmt(scale_fmt)
    if x.dim() < 2:
        raise ValueError(f"weight_quant needs a weight of at least 2 dimensions [..., N, K], got shape {tuple(x.shape)}")
    N, K = x.shape[-2:]
    bn, bk = math.ceil(N / block_size), math.ceil(K / block_size)
    xp = F.pad(x.float(), (0, bk * block_size - K, 0, bn * block_size - N))
    blocks = xp.reshape(*x.shape[:-2], bn, block_size, bk, block_size)            # [..., N/b, b, K/b, b]
    s = _fp8_scale(blocks.abs().amax(dim=(-3, -1), keepdim=True), scale_fmt)      # [..., N/b, 1, K/b, 1]
    y = _to_fp8(blocks / s).reshape(xp.shape)[..., :N, :K]
    return y.contiguous(), s.reshape(*x.shape[:-2], bn, bk)


def weight_dequant(x: torch.Tensor, s: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """FP8 weight [..., N, K] and block scales [..., ceil(N/b), ceil(K/b)] -> default-dtype weight."""
    _check_block(block_size)
    N, K = x.shape[-2:]
    if s.shape[-2:] != (math.ceil(N / block_size), math.ceil(K / block_size)):
        raise ValueError(f"scale shape {tuple(s.shape)} does not match weight {tuple(x.shape)} in "
                         f"{block_size}x{block_size} blocks")
    full = s.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)[..., :N, :K]
    return (x.float() * full).to(torch.get_default_dtype())


def quantize_fp8(w: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None) -> QuantizedTensor:
    """weight_quant wrapped in a QuantizedTensor (so that nbytes and dequantize work alike)."""
    y, s = weight_quant(w, block_size, scale_fmt)
    return QuantizedTensor(y, s, None, 8, block_size, w.shape, "fp8_e4m3", "block", scale_fmt)


def aligned_sum(terms: torch.Tensor, mantissa_bits: int = 13, rounding: str = "truncate") -> torch.Tensor:
    """Sum the last dim as a tensor core's adder does: align, cut to `mantissa_bits`, add.

    Every term is shifted to the exponent of the largest one and keeps only `mantissa_bits` bits
    below that exponent's leading bit; the low bits are dropped ("truncate", toward zero) or
    rounded ("nearest"); the aligned terms are then added exactly. Fasi, Higham, Mikaitis and
    Pranesh (2021) found this behaviour in NVIDIA tensor cores; DeepSeek-V3 (section 3.3.2) says
    Hopper's FP8 accumulation keeps "around 14 bits" (13 here plus the leading bit).
    terms: [..., n] -> [...].
    """
    if not 1 <= mantissa_bits <= 23:
        raise ValueError(f"mantissa_bits = {mantissa_bits} must be in 1..23")
    if rounding not in ("truncate", "nearest"):
        raise ValueError(f"rounding = {rounding!r} must be 'truncate' or 'nearest'")
    top = terms.abs().amax(dim=-1, keepdim=True)
    ulp = torch.exp2(torch.floor(torch.log2(torch.where(top > 0, top, torch.ones_like(top)))) - mantissa_bits)
    cut = torch.trunc(terms / ulp) if rounding == "truncate" else torch.round(terms / ulp)
    return (cut * ulp).sum(dim=-1)        # exact: n+1 multiples of ulp below 2^(mantissa_bits+1) ulp each


def _accumulate(a: torch.Tensor, b: torch.Tensor, mantissa_bits: int | None, chunk: int, rounding: str) -> torch.Tensor:
    """a [M, L] @ b [N, L]^T, summed in fp32 or the way an FP8 tensor core sums.

    The tensor-core model: for each chunk of `chunk` products (a WGMMA instruction takes K=32 FP8
    values), the running sum and the products are added by aligned_sum. Products of two FP8
    numbers are exact in fp32. The notebook holds this model against H100 measurements.
    """
    if mantissa_bits is None:
        return a @ b.T
    acc = a.new_zeros(a.shape[0], b.shape[0])                                      # [M, N]
    for k0 in range(0, a.shape[1], chunk):
        products = a[:, None, k0:k0 + chunk] * b[None, :, k0:k0 + chunk]          # [M, N, chunk]
        acc = aligned_sum(torch.cat([acc[..., None], products], dim=-1), mantissa_bits, rounding)
    return acc


def fp8_gemm(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor, block_size: int = 128, *,
             acc_mantissa_bits: int | None = None, acc_chunk: int = 32, promote: bool = True,
             rounding: str = "truncate") -> torch.Tensor:
    """C = A B^T from FP8 operands and their scales, as DeepSeek-V3's fp8_gemm computes it.

    a: FP8 [..., K] with a_s [..., ceil(K/b)] (act_quant) or one scale; b: FP8 [N, K] with
    b_s [ceil(N/b), ceil(K/b)] (weight_quant) or one scale. Returns [..., N] in the default dtype.

    promote=True (DeepSeek): every b-wide K block is summed by the "tensor core" (in fp32, or by the
    tensor-core model of _accumulate when acc_mantissa_bits is given), then multiplied by its two
    scales and added to an fp32 accumulator "on the CUDA cores". Fine-grained scales need this: a scale that changes
    every 128 elements of K can only be applied when a partial sum leaves the tensor core.
    promote=False: the whole K goes through the tensor-core model and one pair of per-tensor scales
    is applied at the end (what a per-tensor FP8 GEMM with cuBLAS "fast accumulation" does).
    """
    _check_block(block_size)
    K, N = a.shape[-1], b.shape[0]
    if b.shape[-1] != K:
        raise ValueError(f"fp8_gemm: a has K={K} but b has K={b.shape[-1]} (b must be [N, K])")
    lead = a.shape[:-1]
    A, B = a.reshape(-1, K).float(), b.float()                                     # [M, K], [N, K]
    M, nk = A.shape[0], math.ceil(K / block_size)
    per_tensor = a_s.numel() == 1 and b_s.numel() == 1
    if not promote:
        if not per_tensor:
            raise ValueError("fp8_gemm(promote=False) needs per-tensor scales: block scales are applied when "
                             "a partial sum is promoted out of the tensor core")
        acc = _accumulate(A, B, acc_mantissa_bits, acc_chunk, rounding)
        return (acc * a_s.float().reshape(()) * b_s.float().reshape(())).reshape(*lead, N).to(torch.get_default_dtype())
    if per_tensor:
        As = a_s.float().reshape(1, 1).expand(M, nk)
        Bs = b_s.float().reshape(1, 1).expand(N, nk)
    else:
        if tuple(a_s.shape) != (*lead, nk) or tuple(b_s.shape) != (math.ceil(N / block_size), nk):
            raise ValueError(f"fp8_gemm: scales {tuple(a_s.shape)} and {tuple(b_s.shape)} do not match a "
                             f"{tuple(a.shape)} and b {tuple(b.shape)} in blocks of {block_size}")
        As = a_s.float().reshape(M, nk)                                            # [M, K/b]
        Bs = b_s.float().repeat_interleave(block_size, dim=0)[:N]                  # [N, K/b]
    out = A.new_zeros(M, N)                                                        # fp32 accumulator
    for i in range(nk):
        k0, k1 = i * block_size, min(K, (i + 1) * block_size)
        partial = _accumulate(A[:, k0:k1], B[:, k0:k1], acc_mantissa_bits, acc_chunk, rounding)
        out += partial * As[:, i:i + 1] * Bs[:, i][None, :]                       # promotion
    return out.reshape(*lead, N).to(torch.get_default_dtype())


def accumulation_error(K: int, M: int = 64, N: int = 64, mantissa_bits: int = 13, chunk: int = 32,
                       promote_every: int = 128, dist: str = "normal", rounding: str = "truncate",
                       seed: int = 0) -> dict[str, float]:
    """Relative error of an FP8 GEMM's accumulation alone, with and without promotion, at one K.

    A [M, K] and B [N, K] are drawn (dist "normal": N(0, 1); "abs_normal": |N(0, 1)|, all products
    positive), quantized per tensor to FP8, and multiplied three ways: the exact product of the FP8
    values (fp64 reference), the tensor-core model over the whole K (no promotion), and the model
    flushed into fp32 every `promote_every` elements (promotion). Errors are
    ||C - C_ref||_F / ||C_ref||_F ("_rel") and max_ij |C - C_ref| / max_ij |C_ref| ("_max_rel").
    """
    if dist not in ("normal", "abs_normal"):
        raise ValueError(f"dist = {dist!r} must be 'normal' or 'abs_normal'")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=gen)
    b = torch.randn(N, K, generator=gen)
    if dist == "abs_normal":
        a, b = a.abs(), b.abs()
    a_s, b_s = _fp8_scale(a.abs().amax(), None), _fp8_scale(b.abs().amax(), None)
    qa, qb = _to_fp8(a / a_s), _to_fp8(b / b_s)
    ref = (qa.double() @ qb.double().T) * a_s.double() * b_s.double()
    out = {}
    for name, kw in (("no_promotion", dict(promote=False)), ("promotion", dict(promote=True))):
        c = fp8_gemm(qa, a_s, qb, b_s, promote_every, acc_mantissa_bits=mantissa_bits, acc_chunk=chunk,
                     rounding=rounding, **kw).double()
        out[f"{name}_rel"] = float((c - ref).norm() / ref.norm())
        out[f"{name}_max_rel"] = float((c - ref).abs().max() / ref.abs().max())
    return out


# ------------------------------------------------------------------------------------------
# Quantized layers
# ------------------------------------------------------------------------------------------
def quantize_weight(w: torch.Tensor, scheme: str, group_size: int | None = 128,
                    scale_fmt: str | None = None) -> QuantizedTensor:
    """A weight [..., N, K] quantized as `scheme` stores it.

    w8a8:  INT8 symmetric per output channel (an integer GEMM applies one weight scale per output
           column after accumulating, so finer weight scales would need FP8-style promotion).
    w4a16: INT4 symmetric per output channel (group_size=None) or per group of input channels.
    fp8:   E4M3 in group_size x group_size blocks (DeepSeek-V3: 128).
    """
    if scheme == "w8a8":
        return quantize(w, 8, "channel")
    if scheme == "w4a16":
        return quantize(w, 4, "channel") if group_size is None else quantize(w, 4, "group", group_size)
    if scheme == "fp8":
        return quantize_fp8(w, group_size or 128, scale_fmt)
    raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")


def _linear_w8a8(x: torch.Tensor, w: QuantizedTensor, act_scale: torch.Tensor | None) -> torch.Tensor:
    """INT8 x INT8 -> INT32 GEMM, then the two scales: y = (q_x q_w^T) * s_x * s_w.

    Activations get one scale per token (dynamic: absmax of the row, computed on the fly) or one
    static per-tensor scale from calibration. The integer accumulation is exact in float64 here, as
    it is in the int32 accumulator of an INT8 tensor core (|sum| < 2^31).
    """
    _check_float(x, "activation")
    xf = x.float()
    if act_scale is None:
        s_x = xf.abs().amax(dim=-1, keepdim=True) / 127                            # [..., 1] per token
        s_x = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
    else:
        s_x = act_scale.float()                                                    # [] per tensor
    q_x = torch.clamp(torch.round(xf / s_x), -127, 127)
    acc = q_x.double() @ w.data.double().T                                         # [..., N] exact integers
    return (acc.float() * s_x * w.scale.float().reshape(-1)).to(x.dtype)


def quant_linear(x: torch.Tensor, w: QuantizedTensor, scheme: str, act_scale: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T for a quantized weight W [N, K] under `scheme`. x: [..., K] -> [..., N]."""
    if scheme == "w8a8":
        return _linear_w8a8(x, w, act_scale)
    if scheme == "w4a16":                          # weight-only: dequantize, multiply in x's dtype
        return F.linear(x, w.dequantize(x.dtype))
    if scheme == "fp8":                            # DeepSeek's linear(): act_quant + fp8_gemm
        x_q, x_s = act_quant(x, w.group_size, w.scale_fmt)
        return fp8_gemm(x_q, x_s, w.data, w.scale, w.group_size).to(x.dtype)
    raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")


def _register_qt(module: nn.Module, prefix: str, qt: QuantizedTensor) -> None:
    """Store a QuantizedTensor's tensors as buffers (they move with .to() and appear in state_dict)."""
    module.register_buffer(f"{prefix}qweight", qt.data)
    module.register_buffer(f"{prefix}scale", qt.scale)
    module.register_buffer(f"{prefix}zero_point", qt.zero_point)
    setattr(module, f"_{prefix}meta", dict(bits=qt.bits, group_size=qt.group_size, shape=qt.shape, fmt=qt.fmt,
                                           granularity=qt.granularity, scale_fmt=qt.scale_fmt))


def _get_qt(module: nn.Module, prefix: str) -> QuantizedTensor:
    return QuantizedTensor(getattr(module, f"{prefix}qweight"), getattr(module, f"{prefix}scale"),
                           getattr(module, f"{prefix}zero_point"), **getattr(module, f"_{prefix}meta"))


class QuantLinear(nn.Module):
    """A bias-free linear layer y = x W^T whose weight is stored quantized (W8A8, W4A16 or FP8).

    Buffers: qweight (codes), scale, zero_point (None here: all schemes are symmetric), act_scale
    (W8A8 only: None = dynamic per-token activation scales, else a calibrated per-tensor scale).
    `weight` returns the dequantized weight for code that reads it (MLA's absorbed path does, as
    DeepSeek's model.py calls weight_dequant there).
    """

    def __init__(self, qweight: QuantizedTensor, scheme: str):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.out_features, self.in_features = qweight.shape
        _register_qt(self, "", qweight)
        self.register_buffer("act_scale", None)
        self._observed: list[torch.Tensor] | None = None      # calibration: inputs seen while observing

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, group_size: int | None = 128,
                    scale_fmt: str | None = None) -> "QuantLinear":
        if linear.bias is not None:
            raise ValueError("QuantLinear handles bias-free layers only (every dsim linear layer is)")
        return cls(quantize_weight(linear.weight.detach(), scheme, group_size, scale_fmt), scheme)

    @property
    def qt(self) -> QuantizedTensor:
        return _get_qt(self, "")

    @property
    def weight(self) -> torch.Tensor:
        return self.qt.dequantize()

    @property
    def nbytes(self) -> int:
        return self.qt.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observed is not None:
            self._observed.append(x.detach().flatten())
        return quant_linear(x, self.qt, self.scheme, self.act_scale)

    def extra_repr(self) -> str:
        qt = self.qt
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"granularity={qt.granularity}, group_size={qt.group_size}")


class QuantExperts(nn.Module):
    """Routed experts with stacked quantized weights, each expert quantized on its own.

    w1, w3: [E, I, D], w2: [E, D, I] as in dsim.model.Experts; scales per expert: [E, I, 1] per
    channel, [E, I, D/g] per group, [E, I/b, D/b] in FP8 blocks. The forward pass is the per-expert
    loop (the grouped-GEMM path computes the same thing). W8A8 may carry two calibrated
    activation scales: `act_scale` for the input x and `act_scale_hidden` for w2's input.
    """

    def __init__(self, w1: QuantizedTensor, w2: QuantizedTensor, w3: QuantizedTensor, scheme: str):
        super().__init__()
        self.scheme, self.n_experts = scheme, w1.shape[0]
        for name, qt in (("w1", w1), ("w2", w2), ("w3", w3)):
            _register_qt(self, f"{name}_", qt)
        self.register_buffer("act_scale", None)
        self.register_buffer("act_scale_hidden", None)
        self._observed: dict[str, list[torch.Tensor]] | None = None

    @classmethod
    def from_experts(cls, experts: Experts, scheme: str, group_size: int | None = 128,
                     scale_fmt: str | None = None) -> "QuantExperts":
        q = {n: quantize_weight(getattr(experts, n).detach(), scheme, group_size, scale_fmt) for n in ("w1", "w2", "w3")}
        return cls(q["w1"], q["w2"], q["w3"], scheme)

    @property
    def nbytes(self) -> int:
        return sum(_get_qt(self, f"{n}_").nbytes for n in ("w1", "w2", "w3"))

    def dequantized(self, name: str) -> torch.Tensor:
        """The stacked weight `name` ("w1", "w2", "w3") dequantized: [E, out, in]."""
        return _get_qt(self, f"{name}_").dequantize()

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x: [n, D] -> [n, D]."""
        if self._observed is not None:
            self._observed["in"].append(x.detach().flatten())
        w1, w2, w3 = (_get_qt(self, f"{n}_").select(e) for n in ("w1", "w2", "w3"))
        h = F.silu(quant_linear(x, w1, self.scheme, self.act_scale)) * quant_linear(x, w3, self.scheme, self.act_scale)
        if self._observed is not None:
            self._observed["hidden"].append(h.detach().flatten())
        return quant_linear(h, w2, self.scheme, self.act_scale_hidden)

    forward_loop = Experts.forward_loop

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "loop") -> torch.Tensor:
        return self.forward_loop(x, indices, weights)

    def extra_repr(self) -> str:
        qt = _get_qt(self, "w1_")
        return f"n_experts={self.n_experts}, scheme={self.scheme}, granularity={qt.granularity}, group_size={qt.group_size}"


# ------------------------------------------------------------------------------------------
# Whole models: what to quantize, and what it stores
# ------------------------------------------------------------------------------------------
KINDS = ("embedding", "attention", "dense_ffn", "shared_experts", "routed_experts", "gate", "norms", "head", "other")
LINEAR_KINDS = ("attention", "dense_ffn", "shared_experts", "routed_experts", "other")


def kind_of(name: str) -> str:
    """Which part of a dsim Transformer a parameter or buffer name belongs to (see KINDS)."""
    parts = name.split(".")
    if parts[0] == "embed":
        return "embedding"
    if parts[0] == "head":
        return "head"
    if any(p.endswith("norm") for p in parts[:-1]):
        return "norms"
    if "attn" in parts:
        return "attention"
    if "ffn" in parts:
        after = parts[parts.index("ffn") + 1]
        if after == "gate":
            return "gate"
        if after.startswith("experts"):
            return "routed_experts"
        if after == "shared_experts":
            return "shared_experts"
        return "dense_ffn"
    return "other"


def bytes_by_kind(model: nn.Module) -> dict[str, int]:
    """Bytes of everything a checkpoint of `model` holds (parameters and persistent buffers), by kind.

    Tied tensors count once; non-persistent buffers (RoPE tables) count as nothing.
    """
    out = {k: 0 for k in KINDS}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out[kind_of(name)] += t.numel() * t.element_size()
    return out


@dataclass
class QuantReport:
    """What quantize_model did: the modules it replaced and the bytes before and after, by kind."""
    scheme: str
    layers: str
    group_size: int | None
    before: dict[str, int]
    after: dict[str, int]
    replaced: list[str] = field(default_factory=list)

    @property
    def total_before(self) -> int:
        return sum(self.before.values())

    @property
    def total_after(self) -> int:
        return sum(self.after.values())

    def rows(self) -> list[dict]:
        return [dict(kind=k, bytes_before=self.before[k], bytes_after=self.after[k],
                     ratio=self.after[k] / self.before[k] if self.before[k] else float("nan"))
                for k in KINDS if self.before[k]]

    def __str__(self) -> str:
        lines = [f"{self.scheme} ({self.layers}, group_size={self.group_size}): {len(self.replaced)} modules",
                 f"{'kind':<16}{'before':>12}{'after':>12}{'ratio':>8}"]
        lines += [f"{r['kind']:<16}{r['bytes_before']:>12,}{r['bytes_after']:>12,}{r['ratio']:>8.3f}" for r in self.rows()]
        lines.append(f"{'total':<16}{self.total_before:>12,}{self.total_after:>12,}"
                     f"{self.total_after / self.total_before:>8.3f}")
        return "\n".join(lines)


def _targets(model: nn.Module, layers: str) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(parent, attribute, module, full name) of every module quantize_model would replace.

    "all": every nn.Linear except the output head, and the routed experts. The embedding, the head,
    the gate and the norms stay in high precision, as in DeepSeek-V3 (paper, section 3.3.1).
    "attention": the attention projections. "experts": the routed experts only.
    """
    if layers not in LAYERS:
        raise ValueError(f"layers = {layers!r} is not supported: choose one of {', '.join(LAYERS)}")
    out = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}" if parent_name else attr
            if isinstance(child, Experts):
                if layers in ("all", "experts"):
                    out.append((parent, attr, child, name))
            elif isinstance(child, nn.Linear) and name != "head":
                kind = kind_of(name + ".weight")
                if layers == "all" or (layers == "attention" and kind == "attention"):
                    out.append((parent, attr, child, name))
    return out


def quantize_model(model: nn.Module, scheme: str, layers: str = "all", group_size: int | None = 128,
                   scale_fmt: str | None = None) -> QuantReport:
    """Replace linear layers and routed experts of `model` in place by quantized ones.

    scheme: "w8a8", "w4a16" (group_size=None: per channel) or "fp8" (group_size is the block side).
    layers: "all", "experts" or "attention" (see _targets). Returns the bytes before and after.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")
    if group_size is not None:
        _check_block(group_size, "group_size")
    targets = _targets(model, layers)
    for _, _, module, name in targets:
        if parametrize.is_parametrized(module):
            raise ValueError(f"{name} carries a QAT parametrization: call finish_qat(model) instead")
    before = bytes_by_kind(model)
    for parent, attr, module, name in targets:
        if isinstance(module, Experts):
            new = QuantExperts.from_experts(module, scheme, group_size, scale_fmt)
        else:
            new = QuantLinear.from_linear(module, scheme, group_size, scale_fmt)
        setattr(parent, attr, new)
    return QuantReport(scheme, layers, None if scheme == "w8a8" else group_size, before, bytes_by_kind(model),
                       [name for *_, name in targets])


# ------------------------------------------------------------------------------------------
# Calibration of activation ranges
# ------------------------------------------------------------------------------------------
@njit(cache=True)
def _kl_search(hist: np.ndarray, n_levels: int) -> int:
    """TensorRT's entropy calibration: the number of histogram bins i whose clipping to n_levels
    quantization levels loses the least information, KL(P || Q).

    P: hist[:i] with everything beyond bin i folded into its last bin (the clipped distribution).
    Q: hist[:i] merged into n_levels equal runs of bins, each run's mass spread evenly over its
       non-empty bins (what quantization with threshold i keeps). Both are smoothed with eps.
    """
    n_bins = hist.shape[0]
    eps = 1e-4
    best_i, best_kl = n_bins, np.inf
    for i in range(n_levels, n_bins + 1):
        p = hist[:i].astype(np.float64)
        p[i - 1] += hist[i:].sum()
        q = np.zeros(i)
        for j in range(n_levels):
            start, stop = j * i // n_levels, (j + 1) * i // n_levels
            total, nonzero = 0.0, 0
            for k in range(start, stop):
                total += hist[k]
                nonzero += hist[k] != 0
            if nonzero > 0:
                for k in range(start, stop):
                    if hist[k] != 0:
                        q[k] = total / nonzero
        kl = 0.0
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p_zero, q_zero = (p == 0).sum(), (q == 0).sum()
        p_eps = eps * p_zero / max(i - p_zero, 1)
        q_eps = eps * q_zero / max(i - q_zero, 1)
        for k in range(i):
            pk = p[k] / ps
            pk = eps if pk == 0 else pk - p_eps
            qk = q[k] / qs
            qk = eps if qk == 0 else qk - q_eps
            if pk > 0 and qk > 0:
                kl += pk * np.log(pk / qk)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def calibrate(x: torch.Tensor, method: str = "absmax", bits: int = 8, percentile: float = 99.99,
              num_bins: int = 2048, max_samples: int = 1 << 16) -> float:
    """The clipping threshold T of a symmetric per-tensor quantizer for samples x (scale T / qmax).

    absmax:     T = max|x|, nothing clipped.
    percentile: T = the `percentile`-th percentile of |x|.
    mse:        T minimising E[(x - dequant(quant(x)))^2] over 100 thresholds in (0, max|x|].
    kl:         TensorRT's entropy calibration over a `num_bins` histogram of |x| (see _kl_search).
    mse uses at most `max_samples` evenly strided samples (deterministic).
    """
    _check_float(x, "calibration sample")
    _check_bits(bits)
    if method not in ("absmax", "percentile", "mse", "kl"):
        raise ValueError(f"method = {method!r} is not supported: absmax, percentile, mse or kl")
    a = x.detach().abs().float().flatten()
    if a.numel() == 0:
        raise ValueError("calibrate needs at least one sample")
    amax = float(a.max())
    qmax = 2 ** (bits - 1) - 1
    if amax == 0 or method == "absmax":
        return amax
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile = {percentile} must be in (0, 100]")
        k = max(1, math.ceil(percentile / 100 * a.numel()))
        return float(a.kthvalue(k).values)
    if method == "mse":
        s = a[:: max(1, a.numel() // max_samples)]                                 # [n] samples
        thresholds = amax * torch.arange(1, 101, dtype=torch.float32) / 100        # [100]
        scale = (thresholds / qmax)[:, None]                                       # [100, 1]
        err = ((torch.clamp(torch.round(s / scale), -qmax, qmax) * scale - s) ** 2).mean(dim=1)
        return float(thresholds[int(err.argmin())])
    hist = torch.histc(a, bins=num_bins, min=0.0, max=amax).double().numpy()        # method == "kl"
    return _kl_search(hist, qmax + 1) * amax / num_bins


@torch.no_grad()
def calibrate_model(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "absmax",
                    **kwargs) -> dict[str, float]:
    """Give every W8A8 layer of a quantized model a static per-tensor activation scale.

    Runs `model` on the token batches [B, S], records the inputs of each QuantLinear (and the input
    and hidden activations of each QuantExperts), and sets act_scale = calibrate(...) / 127.
    Returns the thresholds by name. Until this runs, W8A8 scales activations per token on the fly.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantExperts)) and m.scheme == "w8a8"]
    if not layers:
        raise ValueError("calibrate_model needs a model with W8A8 layers: call quantize_model(model, 'w8a8') first")
    for _, m in layers:
        m.act_scale = None
        if isinstance(m, QuantExperts):
            m.act_scale_hidden = None
            m._observed = {"in": [], "hidden": []}
        else:
            m._observed = []
    was_training = model.training
    model.eval()
    try:
        for tokens in batches:
            model(tokens)
    finally:
        model.train(was_training)
    thresholds: dict[str, float] = {}
    for name, m in layers:
        observed, m._observed = m._observed, None
        if isinstance(m, QuantExperts):
            for key, attr in (("in", "act_scale"), ("hidden", "act_scale_hidden")):
                if observed[key]:
                    t = calibrate(torch.cat(observed[key]), method, 8, **kwargs)
                    thresholds[f"{name}.{key}"] = t
                    setattr(m, attr, torch.tensor(max(t, 1e-12) / 127))
        elif observed:
            t = calibrate(torch.cat(observed), method, 8, **kwargs)
            thresholds[name] = t
            m.act_scale = torch.tensor(max(t, 1e-12) / 127)
    return thresholds


# ------------------------------------------------------------------------------------------
# Quantization-aware training
# ------------------------------------------------------------------------------------------
def fake_quant(x: torch.Tensor, bits: int = 4, granularity: Granularity = "channel", group_size: int = 128,
               symmetric: bool = True, scale_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Quantize and dequantize x in the forward pass; pass the gradient straight through (STE).

    forward: exactly dequantize(quantize(x, ...)); backward: d out / d x = identity (the rounding
    has zero gradient almost everywhere, so QAT pretends it is the identity). Scales are computed
    from x without gradient.
    """
    _check_float(x)
    _check_bits(bits)
    with torch.no_grad():
        xg = _to_groups(x.float(), granularity, group_size, pad=False)
        scale, zero = _int_qparams(xg, bits, symmetric, scale_dtype)
        q = _int_round(xg, scale, zero, bits)
        deq = ((q - zero) if zero is not None else q) * scale
        deq = deq.reshape(x.shape).to(x.dtype)
    return x + (deq - x).detach()


class FakeQuant(nn.Module):
    """A parametrization (torch.nn.utils.parametrize): the layer sees fake_quant(weight)."""

    def __init__(self, bits: int = 4, group_size: int | None = 128):
        super().__init__()
        _check_bits(bits)
        self.bits, self.group_size = bits, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.group_size is None:
            return fake_quant(w, self.bits, "channel")
        return fake_quant(w, self.bits, "group", self.group_size)


def prepare_qat(model: nn.Module, bits: int = 4, group_size: int | None = 128, layers: str = "all") -> list[str]:
    """Make every layer that quantize_model would quantize see fake-quantized weights (in place)."""
    names = []
    for _, _, module, name in _targets(model, layers):
        for attr in (("w1", "w2", "w3") if isinstance(module, Experts) else ("weight",)):
            parametrize.register_parametrization(module, attr, FakeQuant(bits, group_size))
        names.append(name)
    return names


def finish_qat(model: nn.Module, layers: str = "all", group_size: int | None = 128) -> QuantReport:
    """Drop the fake-quant parametrizations (keeping the trained latent weights) and quantize W4A16.

    The quantized model computes what the QAT model computed: quantize() of the latent weights
    gives exactly the weights that fake_quant showed the forward pass.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    return quantize_model(model, "w4a16", layers, group_size)


def qat_finetune(model: nn.Module, data: torch.Tensor, steps: int = 50, lr: float = 1e-3, group_size: int | None = 128,
                 layers: str = "all", batch_size: int = 16, seq_len: int = 128, seed: int = 0,
                 fake: bool = True) -> tuple[QuantReport | None, list[float]]:
    """Fine-tune `model` on token data with INT4 fake-quantized weights, then quantize it W4A16.

    Plain next-byte cross-entropy, AdamW (no weight decay), cosine decay from lr to 0, gradient
    clipping 1.0. fake=False runs the same fine-tune without fake quantization (a control that
    separates "more training" from "quantization-aware") and leaves the model in fp32.
    Returns (the quantization report or None, the loss per step in bits per byte).
    """
    from dsim.train import LOG2E, get_batch, lm_loss

    if fake:
        prepare_qat(model, 4, group_size, layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = get_batch(data, batch_size, seq_len, gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item() * LOG2E)
    model.eval()
    return (finish_qat(model, layers, group_size) if fake else None), losses


# ------------------------------------------------------------------------------------------
# Measured: accuracy against size
# ------------------------------------------------------------------------------------------
def to_bf16(model: nn.Module) -> nn.Module:
    """Cast floating-point parameters and buffers to bfloat16 in place. (model.to(torch.bfloat16)
    would also cast the complex RoPE table to a real one, silently breaking the positions.)"""
    for m in model.modules():
        for tensors in (m._parameters, m._buffers):
            for name, t in tensors.items():
                if t is not None and t.is_floating_point():
                    t.data = t.data.to(torch.bfloat16)
    return model


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of a model; the MoE layers' last routing (tensors inside the autograd graph of the
    last forward pass, which cannot be deep-copied) is left behind."""
    saved = {}
    for m in model.modules():
        if isinstance(getattr(m, "routing", None), Routing):
            saved[m], m.routing = m.routing, None
    try:
        return copy.deepcopy(model)
    finally:
        for m, routing in saved.items():
            m.routing = routing


def accuracy_size_table(model: nn.Module, heldout: torch.Tensor, group_size: int = 128,
                        train_data: torch.Tensor | None = None, qat_steps: int = 50, qat_lr: float = 1e-3,
                        evaluate: Callable[..., float] | None = None, **eval_kwargs) -> list[dict]:
    """Bits per byte on held-out text and checkpoint bytes for fp32, bf16 and each quantized scheme.

    Every scheme quantizes a copy of `model` (layers="all": attention, dense FFN, shared and routed
    experts; embedding, head, gate and norms stay as they are). group_size is the INT4 group and the
    FP8 block side (DeepSeek: 128; the tiny model's widths of 32 and 64 need 32). With train_data,
    two more rows: QAT INT4 (fine-tuned qat_steps with fake quantization, then W4A16 per group),
    and its control, the same fine-tune in fp32. evaluate(model, heldout, **eval_kwargs) defaults to
    dsim.train.evaluate (bits per byte).
    Row keys: scheme, weights, activations, bits_per_byte, delta_bpb (vs fp32), bytes (whole
    checkpoint), linear_bytes (the quantizable layers), ratio (bytes / fp32 bytes).
    """
    if evaluate is None:
        from dsim.train import evaluate
    g = group_size
    variants: list[tuple[str, str, str, Callable[[nn.Module], None]]] = [
        ("fp32", "fp32", "fp32", lambda m: None),
        ("bf16", "bf16", "bf16", to_bf16),
        ("W8A8", "INT8 per channel", "INT8 per token", lambda m: quantize_model(m, "w8a8")),
        ("W4A16 per-channel", "INT4 per channel", "fp32", lambda m: quantize_model(m, "w4a16", group_size=None)),
        (f"W4A16 g{g}", f"INT4 per {g} inputs", "fp32", lambda m: quantize_model(m, "w4a16", group_size=g)),
        (f"FP8 {g}x{g}", f"E4M3 per {g}x{g} block", f"E4M3 per 1x{g} tile", lambda m: quantize_model(m, "fp8", group_size=g)),
    ]
    if train_data is not None:
        variants += [
            (f"fp32 +{qat_steps} steps", "fp32", "fp32",
             lambda m: qat_finetune(m, train_data, qat_steps, qat_lr, g, fake=False)),
            (f"QAT INT4 g{g}", f"INT4 per {g} inputs", "fp32",
             lambda m: qat_finetune(m, train_data, qat_steps, qat_lr, g)),
        ]
    rows = []
    for name, weights, acts, apply in variants:
        m = clone_model(model).eval()
        apply(m)
        kinds = bytes_by_kind(m)
        rows.append(dict(scheme=name, weights=weights, activations=acts,
                         bits_per_byte=float(evaluate(m, heldout, **eval_kwargs)),
                         bytes=sum(kinds.values()), linear_bytes=sum(kinds[k] for k in LINEAR_KINDS)))
    base = rows[0]
    for r in rows:
        r["delta_bpb"] = r["bits_per_byte"] - base["bits_per_byte"]
        r["ratio"] = r["bytes"] / base["bytes"]
    return rows
