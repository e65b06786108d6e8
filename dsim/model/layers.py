"""Building blocks shared by attention and the blocks: RMSNorm, RoPE with YaRN, the
causal mask and the KV-cache buffer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / rms(x) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LayerNorm(nn.Module):
    """Layer norm with a weight and no bias (DBRX): (x - mean(x)) / std(x) * weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


def make_norm(dim: int, args: ModelArgs) -> nn.Module:
    """The block norm that args.norm_type names, of width dim."""
    if args.norm_type == "layernorm":
        return LayerNorm(dim, args.norm_eps)
    return RMSNorm(dim, args.norm_eps)


# ------------------------------------------------------------------------------------------
# Rotary position embedding with YaRN
# ------------------------------------------------------------------------------------------
def precompute_freqs_cis(args: ModelArgs) -> torch.Tensor:
    """Complex rotations e^{i*pos*freq} for every position and frequency: [max_seq_len, rope_dim/2].

    With YaRN (max_seq_len > original_seq_len) low frequencies are interpolated by `rope_factor`,
    high frequencies are kept, and a linear ramp between `beta_fast` and `beta_slow` rotations
    blends the two, as in DeepSeek's reference.
    """
    dim, base = args.rope_dim, args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if args.uses_yarn:

        def correction_dim(rotations: float) -> float:
            return (
                dim
                * math.log(args.original_seq_len / (rotations * 2 * math.pi))
                / (2 * math.log(base))
            )

        low, high = correction_dim(args.beta_fast), correction_dim(args.beta_slow)
        if args.rope_truncate:  # gpt-oss keeps the bounds fractional (truncate: false)
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # prevent a division by zero, as DeepSeek's linear_ramp_factor does
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        smooth = 1 - ramp
        freqs = freqs / args.rope_factor * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of the last dim.
    x: [B, S, H, d], freqs: [S, d/2]."""
    dtype = x.dtype
    # contiguous: a slice at an odd offset (an odd kv_lora_rank) cannot be viewed as complex
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    xc = xc * freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    return torch.view_as_real(xc).flatten(3).to(dtype)


def causal_mask(seqlen: int, start_pos: int, device: torch.device, window: int = 0) -> torch.Tensor:
    """Additive mask [S, start_pos + S]: query i (at position start_pos + i) sees keys
    0..start_pos + i, or only the last `window` of them (itself included) when window > 0."""
    mask = torch.full((seqlen, start_pos + seqlen), float("-inf"), device=device).triu_(
        start_pos + 1
    )
    if window > 0:  # key j is too old when start_pos + i - j >= window
        too_old = torch.ones_like(mask, dtype=torch.bool).tril_(start_pos - window)
        mask = mask.masked_fill_(too_old, float("-inf"))
    return mask


def cache_buffer(
    module: nn.Module, name: str, bsz: int, *shape: int, like: torch.Tensor
) -> torch.Tensor:
    """The attention module's cache `name`: [max_batch_size, max_seq_len, *shape], allocated on
    first use."""
    args: ModelArgs = module.args
    buf = module.cache.get(name)
    if buf is None or buf.dtype != like.dtype or buf.device != like.device:
        if bsz > args.max_batch_size:
            raise ValueError(
                f"batch size {bsz} exceeds ModelArgs.max_batch_size={args.max_batch_size}"
            )
        buf = torch.zeros(
            args.max_batch_size, args.max_seq_len, *shape, dtype=like.dtype, device=like.device
        )
        module.cache[name] = buf
    return buf
