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
