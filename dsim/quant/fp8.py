"""FP8 as DeepSeek-V3 does it, with the names and shapes of deepseek-ai/DeepSeek-V3
inference/kernel.py: E4M3 numbers, 1x128 activation tiles (act_quant), 128x128 weight blocks
(weight_quant, weight_dequant), a GEMM that promotes each 128-wide K block to fp32 (fp8_gemm),
and a model of the tensor core's ~14-bit adder (aligned_sum, accumulation_error).

Shapes in comments: M rows (tokens), K input width (reduction), N output width, b block size.
"""

import math

import torch
import torch.nn.functional as F

from dsim.quant.checks import (
    FLOAT32_MAX,
    check_block,
    check_float,
    check_int,
    check_scale_fmt,
)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 number: torch.finfo(torch.float8_e4m3fn).max
FP8_MIN_AMAX = 1e-4  # DeepSeek clamps a tile's amax to 1e-4 so that a zero tile has a scale


def _fp8_scale(amax: torch.Tensor, scale_fmt: str | None) -> torch.Tensor:
    """s = max(amax, 1e-4) / 448, rounded up to a power of two for scale_fmt='ue8m0'."""
    s = amax.clamp(min=FP8_MIN_AMAX) / FP8_MAX
    if scale_fmt == "ue8m0":  # an 8-bit exponent-only scale: x/s stays <= 448
        s = torch.exp2(torch.ceil(torch.log2(s)))
    if s.numel() and float(s.max()) * FP8_MAX > FLOAT32_MAX:  # only within 2x of float32's max
        raise ValueError(
            f"cannot quantize to FP8 with max|x| = {float(amax.max()):.4g}: its scale "
            f"{float(s.max()):.4g} (scale_fmt={scale_fmt!r}) times 448 overflows float32 "
            f"({FLOAT32_MAX:.4g}) on dequantization; rescale the tensor"
        )
    return s


def _to_fp8(x: torch.Tensor) -> torch.Tensor:
    """Round to E4M3 (nearest even). Clamp first: an out-of-range cast is NaN on some backends."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


# ANCHOR: act_quant
def act_quant(
    x: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to FP8 with one scale per 1 x block_size tile of the last dim.

    x: [..., K] -> y: float8_e4m3fn [..., K], s: float32 [..., ceil(K/b)], with x ~ y * s per tile.
    DeepSeek's kernel asserts K % b == 0; here a partial last tile is zero-padded (zeros never
    change an absmax), which is what a masked load does.
    """
    check_float(x, "activation")
    check_block(block_size)
    check_scale_fmt(scale_fmt)
    if x.dim() == 0:
        raise ValueError("act_quant needs activations [..., K] of at least 1 dimension, got 0")
    K = x.shape[-1]
    nb = math.ceil(K / block_size)
    tiles = F.pad(x.float(), (0, nb * block_size - K)).reshape(
        *x.shape[:-1], nb, block_size
    )  # [..., K/b, b]
    s = _fp8_scale(tiles.abs().amax(dim=-1, keepdim=True), scale_fmt)  # [..., K/b, 1]
    y = _to_fp8(tiles / s).reshape(*x.shape[:-1], nb * block_size)[..., :K]
    return y.contiguous(), s.squeeze(-1)
    # ANCHOR_END: act_quant


def weight_quant(
    x: torch.Tensor, block_size: int = 128, scale_fmt: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight [..., N, K] to FP8 with one scale per block_size x block_size block.

    Returns y: float8_e4m3fn [..., N, K] and s: float32 [..., ceil(N/b), ceil(K/b)] (DeepSeek's
    checkpoints call it `weight_scale_inv`: the factor that dequantizes). Edge blocks are
    zero-padded.
    """
    check_float(x, "weight")
    check_block(block_size)
    check_scale_fmt(scale_fmt)
    if x.dim() < 2:
        raise ValueError(
            "weight_quant needs a weight of at least 2 dimensions [..., N, K], "
            f"got shape {tuple(x.shape)}"
        )
    N, K = x.shape[-2:]
    bn, bk = math.ceil(N / block_size), math.ceil(K / block_size)
    xp = F.pad(x.float(), (0, bk * block_size - K, 0, bn * block_size - N))
    blocks = xp.reshape(*x.shape[:-2], bn, block_size, bk, block_size)  # [..., N/b, b, K/b, b]
    s = _fp8_scale(
        blocks.abs().amax(dim=(-3, -1), keepdim=True), scale_fmt
    )  # [..., N/b, 1, K/b, 1]
    y = _to_fp8(blocks / s).reshape(xp.shape)[..., :N, :K]
    return y.contiguous(), s.reshape(*x.shape[:-2], bn, bk)


def weight_dequant(x: torch.Tensor, s: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """FP8 weight [..., N, K] and block scales [..., ceil(N/b), ceil(K/b)] -> default-dtype
    weight."""
    check_block(block_size)
    if not isinstance(x, torch.Tensor) or not isinstance(s, torch.Tensor) or x.dim() < 2:
        raise ValueError(
            "weight_dequant needs a weight tensor [..., N, K] and its scales [..., N/b, K/b], got "
            f"{getattr(x, 'shape', type(x).__name__)} and {getattr(s, 'shape', type(s).__name__)}"
        )
    N, K = x.shape[-2:]
    blocks = (*x.shape[:-2], math.ceil(N / block_size), math.ceil(K / block_size))
    if tuple(s.shape) != blocks:
        raise ValueError(
            f"scale shape {tuple(s.shape)} does not match weight {tuple(x.shape)} in "
            f"{block_size}x{block_size} blocks"
        )
    full = s.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)[
        ..., :N, :K
    ]
    return (x.float() * full).to(torch.get_default_dtype())


def aligned_sum(
    terms: torch.Tensor, mantissa_bits: int = 13, rounding: str = "truncate"
) -> torch.Tensor:
    """Sum the last dim as a tensor core's adder does: align, cut to `mantissa_bits`, add.

    Every term is shifted to the exponent of the largest one and keeps only `mantissa_bits` bits
    below that exponent's leading bit; the low bits are dropped ("truncate", toward zero) or
    rounded ("nearest"); the aligned terms are then added exactly. Fasi, Higham, Mikaitis and
    Pranesh (2021) found this behaviour in NVIDIA tensor cores; DeepSeek-V3 (section 3.3.2) says
    Hopper's FP8 accumulation keeps "around 14 bits" (13 here plus the leading bit).
    terms: [..., n] -> [...].
    """
    if (
        isinstance(mantissa_bits, bool)
        or not isinstance(mantissa_bits, int)
        or not (1 <= mantissa_bits <= 23)
    ):
        raise ValueError(f"mantissa_bits = {mantissa_bits} must be in 1..23")
    if rounding not in ("truncate", "nearest"):
        raise ValueError(f"rounding = {rounding!r} must be 'truncate' or 'nearest'")
    if terms.dim() == 0 or terms.shape[-1] == 0:
        raise ValueError(f"aligned_sum needs terms [..., n >= 1], got shape {tuple(terms.shape)}")
    top = terms.abs().amax(dim=-1, keepdim=True)
    ulp = torch.exp2(
        torch.floor(torch.log2(torch.where(top > 0, top, torch.ones_like(top)))) - mantissa_bits
    )
    cut = torch.trunc(terms / ulp) if rounding == "truncate" else torch.round(terms / ulp)
    return (cut * ulp).sum(dim=-1)  # exact: n+1 multiples of ulp below 2^(mantissa_bits+1) ulp each


def _accumulate(
    a: torch.Tensor, b: torch.Tensor, mantissa_bits: int | None, chunk: int, rounding: str
) -> torch.Tensor:
    """a [M, L] @ b [N, L]^T, summed in fp32 or the way an FP8 tensor core sums.

    The tensor-core model: for each chunk of `chunk` products (a WGMMA instruction takes K=32 FP8
    values), the running sum and the products are added by aligned_sum. Products of two FP8
    numbers are exact in fp32. The notebook holds this model against H100 measurements.
    """
    if mantissa_bits is None:
        return a @ b.T
    acc = a.new_zeros(a.shape[0], b.shape[0])  # [M, N]
    for k0 in range(0, a.shape[1], chunk):
        products = a[:, None, k0 : k0 + chunk] * b[None, :, k0 : k0 + chunk]  # [M, N, chunk]
        acc = aligned_sum(torch.cat([acc[..., None], products], dim=-1), mantissa_bits, rounding)
    return acc


def fp8_gemm(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    block_size: int = 128,
    *,
    acc_mantissa_bits: int | None = None,
    acc_chunk: int = 32,
    promote: bool = True,
    rounding: str = "truncate",
) -> torch.Tensor:
    """C = A B^T from FP8 operands and their scales, as DeepSeek-V3's fp8_gemm computes it.

    a: FP8 [..., K] with a_s [..., ceil(K/b)] (act_quant) or one scale; b: FP8 [N, K] with
    b_s [ceil(N/b), ceil(K/b)] (weight_quant) or one scale. Returns [..., N] in the default dtype.

    promote=True (DeepSeek): every b-wide K block is summed by the "tensor core" (in fp32, or by the
    tensor-core model of _accumulate when acc_mantissa_bits is given), then multiplied by its two
    scales and added to an fp32 accumulator "on the CUDA cores". Fine-grained scales need this: a
    scale that changes every 128 elements of K can only be applied when a partial sum leaves the
    tensor core.
    promote=False: the whole K goes through the tensor-core model and one pair of per-tensor scales
    is applied at the end (what a per-tensor FP8 GEMM with cuBLAS "fast accumulation" does).
    """
    check_block(block_size)
    check_block(acc_chunk, "acc_chunk")
    if a.dim() < 1 or b.dim() != 2:
        raise ValueError(
            f"fp8_gemm needs a [..., K] and b [N, K], got shapes {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    K, N = a.shape[-1], b.shape[0]
    if K == 0:
        raise ValueError("fp8_gemm needs K >= 1 (a [..., K] has K = 0)")
    if b.shape[-1] != K:
        raise ValueError(f"fp8_gemm: a has K={K} but b has K={b.shape[-1]} (b must be [N, K])")
    lead = a.shape[:-1]
    A, B = a.reshape(-1, K).float(), b.float()  # [M, K], [N, K]
    M, nk = A.shape[0], math.ceil(K / block_size)
    per_tensor = a_s.numel() == 1 and b_s.numel() == 1
    if not promote:
        if not per_tensor:
            raise ValueError(
                "fp8_gemm(promote=False) needs per-tensor scales: block scales are applied when "
                "a partial sum is promoted out of the tensor core"
            )
        acc = _accumulate(A, B, acc_mantissa_bits, acc_chunk, rounding)
        return (
            (acc * a_s.float().reshape(()) * b_s.float().reshape(()))
            .reshape(*lead, N)
            .to(torch.get_default_dtype())
        )
    if per_tensor:
        As = a_s.float().reshape(1, 1).expand(M, nk)
        Bs = b_s.float().reshape(1, 1).expand(N, nk)
    else:
        if tuple(a_s.shape) != (*lead, nk) or tuple(b_s.shape) != (math.ceil(N / block_size), nk):
            raise ValueError(
                f"fp8_gemm: scales {tuple(a_s.shape)} and {tuple(b_s.shape)} do not match a "
                f"{tuple(a.shape)} and b {tuple(b.shape)} in blocks of {block_size}"
            )
        As = a_s.float().reshape(M, nk)  # [M, K/b]
        Bs = b_s.float().repeat_interleave(block_size, dim=0)[:N]  # [N, K/b]
    out = A.new_zeros(M, N)  # fp32 accumulator
    for i in range(nk):
        k0, k1 = i * block_size, min(K, (i + 1) * block_size)
        partial = _accumulate(A[:, k0:k1], B[:, k0:k1], acc_mantissa_bits, acc_chunk, rounding)
        out += partial * As[:, i : i + 1] * Bs[:, i][None, :]  # promotion
    return out.reshape(*lead, N).to(torch.get_default_dtype())


def accumulation_error(
    K: int,
    M: int = 64,
    N: int = 64,
    mantissa_bits: int = 13,
    chunk: int = 32,
    promote_every: int = 128,
    dist: str = "normal",
    rounding: str = "truncate",
    seed: int = 0,
) -> dict[str, float]:
    """Relative error of an FP8 GEMM's accumulation alone, with and without promotion, at one K.

    A [M, K] and B [N, K] are drawn (dist "normal": N(0, 1); "abs_normal": |N(0, 1)|, all products
    positive), quantized per tensor to FP8, and multiplied three ways: the exact product of the FP8
    values (fp64 reference), the tensor-core model over the whole K (no promotion), and the model
    flushed into fp32 every `promote_every` elements (promotion). Errors are
    ||C - C_ref||_F / ||C_ref||_F ("_rel") and max_ij |C - C_ref| / max_ij |C_ref| ("_max_rel").
    """
    for name, value in (("K", K), ("M", M), ("N", N), ("chunk", chunk)):
        check_int(value, name, 1)
    check_block(promote_every, "promote_every")
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
        c = fp8_gemm(
            qa,
            a_s,
            qb,
            b_s,
            promote_every,
            acc_mantissa_bits=mantissa_bits,
            acc_chunk=chunk,
            rounding=rounding,
            **kw,
        ).double()
        out[f"{name}_rel"] = float((c - ref).norm() / ref.norm())
        out[f"{name}_max_rel"] = float((c - ref).abs().max() / ref.abs().max())
    return out
