"""Input checks of dsim.quant: every public function fails with a ValueError that says what to
change."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT32_MAX = torch.finfo(torch.float32).max  # the arithmetic is float32: |x| must fit


def check_float(x: torch.Tensor, what: str = "tensor") -> None:
    """x must be a finite floating-point tensor (NaN or inf would poison every scale of its
    group) whose values fit in float32, the type every quantizer computes in."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"cannot quantize {what} of type {type(x).__name__}: expected a torch.Tensor"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"cannot quantize a {x.dtype} {what}: expected float16, bfloat16, float32 or float64 "
            "(integer, bool, complex and already-FP8 tensors have no meaningful absmax scaling)"
        )
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(
            f"cannot quantize a {what} that holds {n_nan} NaN and {n_inf} inf value(s): "
            "the scale of every group that contains one would be NaN/inf"
        )
    if x.dtype == torch.float64 and x.numel() and float(x.abs().max()) > FLOAT32_MAX:
        raise ValueError(
            f"cannot quantize a float64 {what} with |x| up to {float(x.abs().max()):.3g}: "
            f"quantization computes in float32, whose largest value is {FLOAT32_MAX:.4g}"
        )


def check_int(value: int, what: str, minimum: int) -> None:
    """value must be an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} = {value!r} is invalid: must be an integer >= {minimum}")


def check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (4, 8):
        raise ValueError(f"bits = {bits!r} is not supported: choose 4 or 8")


def check_block(block_size: int, what: str = "block_size") -> None:
    check_int(block_size, what, 1)


def check_scale_dtype(scale_dtype: torch.dtype) -> None:
    if scale_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(
            f"scale_dtype = {scale_dtype} is not supported: bfloat16, float16 or float32"
        )


def check_scale_fmt(scale_fmt: str | None) -> None:
    if scale_fmt not in (None, "ue8m0"):
        raise ValueError(
            f"scale_fmt = {scale_fmt!r} is not supported: None (fp32 scales) or 'ue8m0' "
            "(power-of-two scales)"
        )
