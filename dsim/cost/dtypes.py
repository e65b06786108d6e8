"""Number formats: the one table of how big an element is, and the names a user may type.

Every cost module asks this table: memory (weights, optimizer states, KV cache), the time model
(bytes a kernel moves), the hardware catalog (which peak a dtype runs at) and the planner.

    bits         bits of one element (int4 packs two per byte; tf32 is stored in 32 bits)
    scale_bytes  bytes of one scale of a quantised format, shared by `group_size` elements:
                 float32 for fp8 (DeepSeek-V3's `weight_scale_inv`), bfloat16 for integer formats
    block        elements per scale when the format itself fixes it (OCP microscaling: MXFP4 has
                 one 8-bit power-of-two scale per 32 elements, gpt-oss's expert weights); 0 when
                 the user's group_size decides
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """One number format."""

    name: str
    bits: int
    scale_bytes: int = 0  # 0: not a quantised format (no scales)
    block: int = 0  # elements per scale fixed by the format (MX formats: 32); 0: group_size

    @property
    def bytes(self) -> float:
        """Bytes of one element, scales excluded (int4: 0.5)."""
        return self.bits / 8


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("fp32", 32),
        DType("tf32", 32),
        DType("bf16", 16),
        DType("fp16", 16),
        DType("fp8", 8, scale_bytes=4),
        DType("int8", 8, scale_bytes=2),
        DType("int4", 4, scale_bytes=2),
        DType("mxfp4", 4, scale_bytes=1, block=32),
    )
}

# Other spellings a user may type (torch's names among them), lower case.
ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
}


def dtype_name(dtype: object, allowed: tuple[str, ...] | None = None, field: str = "dtype") -> str:
    """The canonical name of `dtype` ("bfloat16" -> "bf16"), or a ValueError naming `field` and the
    allowed names (all of DTYPES unless `allowed` narrows them)."""
    allowed = tuple(DTYPES) if allowed is None else allowed
    key = str(dtype).lower() if isinstance(dtype, str) else None
    name = ALIASES.get(key, key)
    if name not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {dtype!r}")
    return name


def get_dtype(dtype: object, field: str = "dtype") -> DType:
    """The DType of a name or alias."""
    return DTYPES[dtype_name(dtype, field=field)]


# ---------------------------------------------------------------------------------------------
# Bytes per element, scales included
# ---------------------------------------------------------------------------------------------
# Bits per element by canonical name (the activation code below sizes its tensors with it).
DTYPE_BITS = {name: d.bits for name, d in DTYPES.items()}


def _dtype(dtype: str | float, name: str = "dtype") -> DType | float:
    """The DType of a name or alias, or a number of bits per element (a format without scales)."""
    if isinstance(dtype, (int, float)) and not isinstance(dtype, bool):
        if not 0 < dtype <= 64:
            raise ValueError(f"{name} as bits per element must be in (0, 64], got {dtype!r}")
        return float(dtype)
    try:
        return get_dtype(dtype, name)
    except ValueError:
        raise ValueError(
            f"{name} must be one of {', '.join(DTYPES)} or a number of bits, got {dtype!r}"
        ) from None


def _check_dtype(dtype: str | float, name: str = "dtype") -> None:
    _dtype(dtype, name)


def _bits(dtype: str | float) -> float:
    d = _dtype(dtype)
    return d if isinstance(d, float) else float(d.bits)


def _scale_bytes(d: DType | float, group_size: int | None) -> int:
    """Bytes of one scale of `d` (0 for a format without scales), after checking group_size."""
    scale = 0 if isinstance(d, float) else d.scale_bytes
    if scale and group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(
            f"group_size must be an integer >= 1 (elements per scale) or None, got {group_size!r}"
        )
    return scale


def bytes_per_param(dtype: str | float, group_size: int | None = 128) -> float:
    """Average bytes one element costs in `dtype`, scales included: bits/8 + scale_bytes/group_size.

    `dtype` may also be a number of bits per element with no scales (DeepSeek-V2 serves its KV cache
    at 6 bits per element on average).

    fp32 4, bf16/fp16 2, fp8 1 + 4/group_size, int8 1 + 2/group_size, int4 0.5 + 2/group_size,
    mxfp4 0.5 + 1/32 (its block of 32 is the format's: group_size does not change it).
    group_size is the number of elements that share one scale (DeepSeek-V3's fp8 weights use 128 x
    128 blocks: group_size=16384); None means no scales. Unquantised types ignore it.
    """
    d = _dtype(dtype)
    scale = _scale_bytes(d, group_size)
    bits = d if isinstance(d, float) else d.bits
    group_size = getattr(d, "block", 0) or group_size  # MX formats fix their own block
    return bits / 8 + (scale / group_size if (scale and group_size) else 0.0)


def weight_bytes(numel: int, dtype: str, group_size: int | None = 128) -> int:
    """Exact bytes of one tensor of `numel` elements in `dtype`: packed elements plus one scale per
    started group (int4 packs two elements per byte)."""
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an integer >= 0, got {numel!r}")
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    d = _dtype(dtype)
    scale = _scale_bytes(d, group_size)
    group_size = d.block or group_size  # MX formats fix their own block
    data = -(-numel * d.bits // 8)
    scales = -(-numel // group_size) * scale if (scale and group_size) else 0
    return data + scales
