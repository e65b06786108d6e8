"""Attention: multi-head latent attention (MLA, naive and absorbed) and MHA/GQA, on PyTorch's
fused scaled-dot-product kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs
from dsim.model.layers import RMSNorm, apply_rotary_emb, cache_buffer, causal_mask


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3).

    Keys and values are compressed into one latent c_kv = kv_norm(x W_DKV) of width kv_lora_rank,
    plus one decoupled RoPE key k_pe shared by all heads. The query is low-rank too when
    q_lora_rank > 0. `naive` decompresses c_kv into per-head keys and values (and caches those);
    `absorb` multiplies W_UK into the query and W_UV into the output, so attention runs against the
    latent directly and the cache holds only c_kv and k_pe: kv_lora_rank + qk_rope_head_dim numbers
    per token and layer.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.n_heads = args.n_heads
        self.q_lora_rank, self.kv_lora_rank = args.q_lora_rank, args.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = args.qk_nope_head_dim, args.qk_rope_head_dim
        self.qk_head_dim, self.v_head_dim = args.qk_head_dim, args.v_head_dim
        if self.q_lora_rank > 0:
            self.wq_a = nn.Linear(args.dim, self.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(self.q_lora_rank, args.norm_eps)
            self.wq_b = nn.Linear(self.q_lora_rank, self.n_heads * self.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(args.dim, self.n_heads * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(args.dim, self.kv_lora_rank + self.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora_rank, args.norm_eps)
        self.wkv_b = nn.Linear(
            self.kv_lora_rank, self.n_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False
        )
        self.wo = nn.Linear(self.n_heads * self.v_head_dim, args.dim, bias=False)
        self.softmax_scale = args.softmax_scale
        self.cache: dict[str, torch.Tensor] = {}

    def forward(
        self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor, use_cache: bool = False
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape  # x: [B, S, D]
        end_pos = start_pos + seqlen
        q = self.wq(x) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(bsz, seqlen, self.n_heads, self.qk_head_dim)  # [B, S, H, dqk]
        q_nope, q_pe = torch.split(q, [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_pe = apply_rotary_emb(q_pe, freqs_cis)
        kv, k_pe = torch.split(self.wkv_a(x), [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis)  # [B, S, 1, dr]
        kv = self.kv_norm(kv)  # [B, S, R] the latent
        if self.args.attn_impl == "naive":
            q = torch.cat([q_nope, q_pe], dim=-1)
            kv = self.wkv_b(kv).view(
                bsz, seqlen, self.n_heads, self.qk_nope_head_dim + self.v_head_dim
            )
            k_nope, v = torch.split(kv, [self.qk_nope_head_dim, self.v_head_dim], dim=-1)
            k = torch.cat([k_nope, k_pe.expand(-1, -1, self.n_heads, -1)], dim=-1)  # [B, S, H, dqk]
            if use_cache:
                k_cache = cache_buffer(self, "k", bsz, self.n_heads, self.qk_head_dim, like=k)
                v_cache = cache_buffer(self, "v", bsz, self.n_heads, self.v_head_dim, like=v)
                k_cache[:bsz, start_pos:end_pos], v_cache[:bsz, start_pos:end_pos] = k, v
                k, v = k_cache[:bsz, :end_pos], v_cache[:bsz, :end_pos]
            out = attention(q, k, v, self.softmax_scale, start_pos)  # [B, S, H, dv]
        else:
            # Absorb W_UK into the query: q_nope . (c W_UK_h) = (q_nope W_UK_h^T) . c
            wkv_b = self.wkv_b.weight.view(self.n_heads, -1, self.kv_lora_rank)  # [H, dn+dv, R]
            q_nope = torch.einsum(
                "bshd,hdc->bshc", q_nope, wkv_b[:, : self.qk_nope_head_dim]
            )  # [B, S, H, R]
            k_pe = k_pe.squeeze(2)
            if use_cache:
                kv_cache = cache_buffer(self, "kv", bsz, self.kv_lora_rank, like=kv)
                pe_cache = cache_buffer(self, "pe", bsz, self.qk_rope_head_dim, like=k_pe)
                kv_cache[:bsz, start_pos:end_pos], pe_cache[:bsz, start_pos:end_pos] = kv, k_pe
                kv, k_pe = kv_cache[:bsz, :end_pos], pe_cache[:bsz, :end_pos]
            scores = (
                torch.einsum("bshc,btc->bsht", q_nope, kv)
                + torch.einsum("bshr,btr->bsht", q_pe, k_pe)
            ) * self.softmax_scale  # [B, S, H, T]
            if seqlen > 1:
                scores = scores + causal_mask(seqlen, start_pos, x.device)[None, :, None, :]
            scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
            out = torch.einsum("bsht,btc->bshc", scores, kv)  # [B, S, H, R]
            out = torch.einsum(
                "bshc,hdc->bshd", out, wkv_b[:, -self.v_head_dim :]
            )  # W_UV: [B, S, H, dv]
        return self.wo(out.flatten(2))


class GQA(nn.Module):
    """Grouped-query attention (MHA when n_kv_heads == n_heads), RoPE on the whole head, for
    comparison."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_size
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        self.softmax_scale = args.softmax_scale
        self.cache: dict[str, torch.Tensor] = {}

    def forward(
        self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor, use_cache: bool = False
    ) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = apply_rotary_emb(self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim), freqs_cis)
        k = apply_rotary_emb(
            self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim), freqs_cis
        )
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        if use_cache:
            k_cache = cache_buffer(self, "k", bsz, self.n_kv_heads, self.head_dim, like=k)
            v_cache = cache_buffer(self, "v", bsz, self.n_kv_heads, self.head_dim, like=v)
            (
                k_cache[:bsz, start_pos : start_pos + seqlen],
                v_cache[:bsz, start_pos : start_pos + seqlen],
            ) = k, v
            k, v = k_cache[:bsz, : start_pos + seqlen], v_cache[:bsz, : start_pos + seqlen]
        out = attention(q, k, v, self.softmax_scale, start_pos)
        return self.wo(out.flatten(2))


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start_pos: int
) -> torch.Tensor:
    """Causal scaled-dot-product attention. q: [B, S, H, d], k/v: [B, T, Hkv, d] -> [B, S, H, dv].

    Uses PyTorch's fused kernel (`F.scaled_dot_product_attention`), which handles GQA's shared
    heads.
    """
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = k.shape[1] != q.shape[1]
    if start_pos == 0 and q.shape[2] == k.shape[2]:
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=q.shape[2] > 1, scale=scale, enable_gqa=gqa
        )
    else:
        mask = causal_mask(q.shape[2], start_pos, q.device).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)
