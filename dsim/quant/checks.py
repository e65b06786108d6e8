"""Input checks of dsim.quant: every public function fails with a ValueError that says what to
change."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(x: torch.Tensor, what: str = "tensor") -> None:
    """x must be a finite floating-point tensor (NaN or inf would poison every scale of its
    group)."""
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


def check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"bits = {bits!r} is not supported: choose 4 or 8")


def check_block(block_size: int, what: str = "block_size") -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{what} = {block_size!r} is invalid: must be an integer >= 1")


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
