"""Building blocks shared by attention and the blocks: RMSNorm, RoPE with YaRN, the
causal masks and the KV-cache buffer."""

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

    With Llama 3.1's scaling (rope_scaling "llama3") see `llama3_scaled`. With YaRN (max_seq_len >
    original_seq_len) low frequencies are interpolated by `rope_factor`,
    high frequencies are kept, and a linear ramp between `beta_fast` and `beta_slow` rotations
    blends the two, as in DeepSeek's reference.
    """
    dim, base = args.rope_dim, args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if args.rope_scaling == "llama3":
        freqs = llama3_scaled(freqs, args)
    elif args.uses_yarn:

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


def llama3_scaled(freqs: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Llama 3.1's RoPE scaling: a frequency whose wavelength 2 pi / f exceeds original_seq_len /
    low_freq_factor is divided by rope_factor, one under original_seq_len / high_freq_factor is
    kept, and in between the two are blended by how many turns it makes in original_seq_len."""
    wavelen = 2 * math.pi / freqs
    turns = args.original_seq_len / wavelen
    smooth = (turns - args.low_freq_factor) / (args.high_freq_factor - args.low_freq_factor)
    blended = (1 - smooth) * freqs / args.rope_factor + smooth * freqs
    long = wavelen > args.original_seq_len / args.low_freq_factor
    short = wavelen < args.original_seq_len / args.high_freq_factor
    return torch.where(long, freqs / args.rope_factor, torch.where(short, freqs, blended))


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of the last dim.
    x: [B, S, H, d], freqs: [S, d/2] (shared by the rows) or [B, S, d/2] (a position per row)."""
    dtype = x.dtype
    # contiguous: a slice at an odd offset (an odd kv_lora_rank) cannot be viewed as complex
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    xc = xc * freqs_cis.view(-1, xc.size(1), 1, xc.size(-1))
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


def ragged_causal_mask(positions: torch.Tensor, length: int, window: int = 0) -> torch.Tensor:
    """Additive mask [B, 1, length] for one query per row, row b's at position positions[b]: it
    sees keys 0..positions[b], or only the last `window` of them when window > 0. The keys past a
    row's own position (up to the batch's longest) are other requests' stale cache entries."""
    keys = torch.arange(length, device=positions.device)  # [T]
    pos = positions[:, None]  # [B, 1]
    hidden = keys > pos
    if window > 0:
        hidden |= pos - keys >= window
    mask = torch.zeros(hidden.shape, device=positions.device).masked_fill_(hidden, float("-inf"))
    return mask.unsqueeze(1)


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


def cache_update(
    module: nn.Module,
    name: str,
    new: torch.Tensor,
    start_pos: int,
    slots: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write new [B, S, *shape] into the module's cache `name` and return the cached entries the
    queries attend to, [B, T, *shape].

    Row b is kept in cache row b, or in row slots[b] (a serving loop gives each request a slot);
    at positions start_pos..start_pos+S-1 (T = start_pos + S), or, for a one-token step of rows at
    different positions, at positions[b], with start_pos = max(positions) (T = start_pos + 1).
    """
    bsz, seqlen = new.shape[:2]
    buf = cache_buffer(module, name, bsz, *new.shape[2:], like=new)
    if slots is None:
        buf[:bsz, start_pos : start_pos + seqlen] = new
        return buf[:bsz, : start_pos + seqlen]
    if positions is None:
        buf[slots, start_pos : start_pos + seqlen] = new
        return buf[slots, : start_pos + seqlen]
    buf[slots, positions] = new[:, 0]
    return buf[slots, : start_pos + 1]
