"""Integer quantization and the stored form of every scheme.

QuantizedTensor holds codes + scales as a checkpoint stores them (INT8, INT4 two per byte, or
FP8 blocks); quantize / dequantize do INT8 and INT4, symmetric or asymmetric, per tensor, per
output channel or per group of input channels; quantize_fp8 wraps dsim.quant.fp8.weight_quant in
a QuantizedTensor so that nbytes and dequantize work alike.

Shapes in comments: K input width, N output width, G groups per row, g group size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dsim.quant.checks import (
    FLOAT32_MAX,
    check_bits,
    check_block,
    check_float,
    check_int,
    check_scale_dtype,
)
from dsim.quant.fp8 import weight_dequant, weight_quant

Granularity = Literal["tensor", "channel", "group"]


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
        tensors = [self.data, self.scale] + (
            [self.zero_point] if self.zero_point is not None else []
        )
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self).to(dtype)

    def select(self, e: int) -> QuantizedTensor:
        """Slice e of a stacked tensor (one routed expert of [E, N, K] weights)."""
        if len(self.shape) < 2:
            raise ValueError(f"select needs a stacked tensor [E, ...], this one is {self.shape}")
        check_int(e, "select index e", 0)
        if e >= self.shape[0]:
            raise ValueError(
                f"select index e = {e} is out of range: the tensor stacks {self.shape[0]}"
            )
        per_tensor = self.scale.dim() == 0
        return QuantizedTensor(
            self.data[e],
            self.scale if per_tensor else self.scale[e],
            None
            if self.zero_point is None
            else (self.zero_point if per_tensor else self.zero_point[e]),
            self.bits,
            self.group_size,
            self.shape[1:],
            self.fmt,
            self.granularity,
            self.scale_fmt,
        )


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """Integer range of the codes: symmetric [-(2^(b-1)-1), 2^(b-1)-1], asymmetric [0, 2^b - 1].

    The symmetric range is "restricted" (no -128 / -8) so that +x and -x round to +q and -q.
    """
    check_bits(bits)
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _to_groups(
    x: torch.Tensor, granularity: str, group_size: int, pad: bool | None = None
) -> torch.Tensor:
    """View x [..., K] as [..., G, g], the elements of each row of the result sharing one scale.

    pad: zero-pad K up to a multiple of group_size (True), raise (False), or raise without
    suggesting padding (None: the caller has no pad option to offer).
    """
    if x.dim() == 0:
        raise ValueError("cannot quantize a 0-dimensional tensor: give it at least one dimension")
    if x.numel() == 0:
        raise ValueError(
            f"cannot quantize an empty tensor of shape {tuple(x.shape)}: it has no range to scale"
        )
    if granularity == "tensor":
        return x.reshape(1, -1)  # [1, numel]
    width = x.shape[-1]
    if granularity == "channel":
        return x.unsqueeze(-2)  # [..., 1, K]
    if granularity != "group":
        raise ValueError(
            f"granularity = {granularity!r} is not supported: 'tensor', 'channel' or 'group'"
        )
    check_block(group_size, "group_size")
    if width % group_size:
        padded = math.ceil(width / group_size) * group_size
        if not pad:
            hint = f" or pass pad=True to zero-pad it to {padded}" if pad is False else ""
            raise ValueError(
                f"group_size = {group_size} does not divide the last dimension {width}: "
                f"choose a divisor of {width}{hint}"
            )
        x = F.pad(x, (0, padded - width))
    return x.reshape(*x.shape[:-1], -1, group_size)  # [..., G, g]


# ANCHOR: int_qparams
def _int_qparams(
    xg: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Absmax (symmetric) or min/max (asymmetric) scale and zero point of each group: [..., G, 1].

    symmetric:  s = max|x| / qmax
    asymmetric: s = (max(x, 0) - min(x, 0)) / (2^b - 1),  z = round(-min(x, 0) / s)
    s is rounded up to `scale_dtype` (the format the checkpoint stores) before it is used, so that
    dequantization from the stored scale is exact and max|x| / s never exceeds qmax. An all-zero
    group gets s = 1; a scale below the smallest normal number of `scale_dtype` is raised to it
    (never zero). A range whose scale `scale_dtype` cannot hold (float16: max|x| > 65504 * qmax)
    raises ValueError.
    """
    lo, hi = qrange(bits, symmetric)
    if symmetric:
        scale = xg.abs().amax(dim=-1, keepdim=True) / hi
    else:
        mn = xg.amin(dim=-1, keepdim=True).clamp(max=0)
        mx = xg.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (mx - mn) / hi
        # max - min can overflow float32 although both fit (+-3e38): take those in float64
        wide = ((mx.double() - mn.double()) / hi).float()
        scale = torch.where(torch.isinf(scale), wide, scale)
    scale = torch.where(
        scale > 0, scale.clamp(min=torch.finfo(scale_dtype).tiny), torch.ones_like(scale)
    )
    stored = scale.to(scale_dtype)  # round up, so that the group's range still fits
    stored = torch.where(
        stored.float() < scale, torch.nextafter(stored, torch.full_like(stored, math.inf)), stored
    )
    if not bool(torch.isfinite(stored).all()):  # float16 tops out at 65504
        limit = torch.finfo(scale_dtype).max * hi
        raise ValueError(
            f"cannot quantize to INT{bits} with {scale_dtype} scales: "
            f"{'max|x|' if symmetric else 'max(x, 0) - min(x, 0)'} = "
            f"{float((scale * hi).max()):.6g} exceeds {limit:.6g}, the largest range whose scale "
            f"{scale_dtype} can store; use scale_dtype=torch.bfloat16 or torch.float32"
        )
    scale = stored.float()
    zero = None if symmetric else torch.clamp(torch.round(-mn / scale), lo, hi)
    reach = hi if symmetric else torch.maximum(zero - lo, hi - zero)  # largest |code - zero|
    if not bool(torch.isfinite(reach * scale).all()):  # |x| within ~1% of float32's maximum
        raise ValueError(
            f"cannot quantize to INT{bits}: the scale rounded up to {scale_dtype} makes the "
            f"largest code dequantize beyond float32's maximum {FLOAT32_MAX:.4g} (max|x| = "
            f"{float(xg.abs().max()):.4g}); rescale the tensor"
        )
    return scale, zero
    # ANCHOR_END: int_qparams


def _int_round(
    xg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int
) -> torch.Tensor:
    """Codes q = clamp(round(x / s) + z, qmin, qmax) as float (round half to even, like the
    hardware)."""
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
    if codes.dim() == 0 or codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(
            f"pack_int4 needs integer codes [..., K], got {codes.dtype} of shape "
            f"{tuple(codes.shape)}"
        )
    if codes.numel() and not 0 <= int(codes.min()) <= int(codes.max()) <= 15:
        raise ValueError("pack_int4 needs codes in 0..15")
    codes = codes.to(torch.uint8)
    if codes.shape[-1] % 2:
        codes = F.pad(codes, (0, 1))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of pack_int4: uint8 [..., ceil(K/2)] -> uint8 codes [..., width]."""
    if packed.dtype != torch.uint8 or packed.dim() == 0:
        raise ValueError(
            "unpack_int4 needs uint8 bytes [..., ceil(K/2)] (pack_int4's output), got "
            f"{packed.dtype} of shape {tuple(packed.shape)}"
        )
    check_int(width, "width", 0)
    if width > 2 * packed.shape[-1]:
        raise ValueError(
            f"width = {width} is more codes than {packed.shape[-1]} bytes hold (two per byte)"
        )
    both = torch.stack([packed & 0x0F, packed >> 4], dim=-1)  # [..., K/2, 2]
    return both.flatten(-2)[..., :width]


def quantize(
    x: torch.Tensor,
    bits: int = 8,
    granularity: Granularity = "channel",
    group_size: int = 128,
    symmetric: bool = True,
    pad: bool | None = False,
    scale_dtype: torch.dtype = torch.bfloat16,
) -> QuantizedTensor:
    """Quantize x [..., K] to INT8 or INT4 with absmax (symmetric) or min/max (asymmetric) scales.

    granularity: "tensor" (one scale), "channel" (one per row: per output channel of a weight
        [out, in]), "group" (one per `group_size` consecutive input channels: scales [out, in/g]).
    pad: zero-pad K to a multiple of group_size instead of raising when it does not divide K
        (None: raise without suggesting pad=True, for callers that do not offer it).
    scale_dtype: how scales are stored: bfloat16 (default, 2 bytes, what dsim.cost.weight_bytes
        counts for INT8/INT4), float16 (GPTQ/AWQ checkpoints) or float32.
    The arithmetic is fp32; dequantize(quantize(x)) == scale * (code - zero) exactly.
    """
    check_float(x)
    check_bits(bits)
    check_scale_dtype(scale_dtype)
    shape = x.shape
    xg = _to_groups(x.float(), granularity, group_size, pad)  # [..., G, g]
    scale, zero = _int_qparams(xg, bits, symmetric, scale_dtype)  # [..., G, 1]
    q = _int_round(xg, scale, zero, bits)  # [..., G, g]
    if granularity == "tensor":
        q, scale = q.reshape(shape), scale.reshape(())
        zero = None if zero is None else zero.reshape(())
        gsize = None
    else:
        q, scale = q.flatten(-2), scale.squeeze(-1)  # [..., K'], [..., G]
        zero = None if zero is None else zero.squeeze(-1)
        gsize = group_size if granularity == "group" else shape[-1]
    if bits == 8:
        data = q.to(torch.int8) if symmetric else q.to(torch.uint8)
    else:  # INT4: codes 0..15
        data = pack_int4((q + 8 if symmetric else q).to(torch.uint8))  # symmetric: offset 8
    return QuantizedTensor(
        data,
        scale.to(scale_dtype),
        None if zero is None else zero.to(torch.uint8),
        bits,
        gsize,
        shape,
        "int",
        granularity,
    )


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """float32 tensor of qt.shape: scale * (code - zero_point) (FP8: weight_dequant)."""
    if qt.fmt == "fp8_e4m3":
        return weight_dequant(qt.data, qt.scale, qt.group_size)
    if qt.bits == 8:
        q = qt.data.float()
    else:  # codes per row: padded K for groups, else K
        width = qt.scale.shape[-1] * qt.group_size if qt.granularity == "group" else qt.shape[-1]
        q = unpack_int4(qt.data, width).float()
        if qt.symmetric:
            q = q - 8
    if qt.granularity == "tensor":
        zero = 0.0 if qt.zero_point is None else qt.zero_point.float()
        return ((q - zero) * qt.scale.float()).reshape(qt.shape)
    qg = q.reshape(*q.shape[:-1], qt.scale.shape[-1], -1)  # [..., G, g]
    if qt.zero_point is not None:
        qg = qg - qt.zero_point.float().unsqueeze(-1)
    x = (qg * qt.scale.float().unsqueeze(-1)).flatten(-2)  # [..., K']
    return x[..., : qt.shape[-1]]  # drop the padding


def quantize_fp8(
    w: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None
) -> QuantizedTensor:
    """weight_quant wrapped in a QuantizedTensor (so that nbytes and dequantize work alike)."""
    y, s = weight_quant(w, block_size, scale_fmt)
    return QuantizedTensor(y, s, None, 8, block_size, w.shape, "fp8_e4m3", "block", scale_fmt)
