"""Attention: multi-head latent attention (MLA, naive and absorbed, with DeepSeek-V3.2's sparse
indexer) and MHA/GQA (with the other families' options: biases, qk-norm, partial rotary, clip_qkv,
attention sinks, sliding windows), on PyTorch's fused scaled-dot-product kernel where it applies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs
from dsim.model.layers import (
    RMSNorm,
    apply_rotary_emb,
    cache_update,
    causal_mask,
    ragged_causal_mask,
)


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
            # the latent norms keep eps 1e-6 whatever norm_eps is, as DeepSeek's reference and
            # transformers do
            self.q_norm = RMSNorm(self.q_lora_rank, 1e-6)
            self.wq_b = nn.Linear(self.q_lora_rank, self.n_heads * self.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(args.dim, self.n_heads * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(args.dim, self.kv_lora_rank + self.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora_rank, 1e-6)
        self.wkv_b = nn.Linear(
            self.kv_lora_rank, self.n_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False
        )
        self.wo = nn.Linear(self.n_heads * self.v_head_dim, args.dim, bias=False)
        self.softmax_scale = args.softmax_scale
        self.indexer = Indexer(args) if args.has_indexer else None
        self.cache: dict[str, torch.Tensor] = {}

    def forward(
        self,
        x: torch.Tensor,
        start_pos: int,
        freqs_cis: torch.Tensor,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D] -> [B, S, D]. slots [B]: the cache rows of the batch rows (default: row b
        in cache row b); positions [B]: each row's position in a one-token step (S == 1), with
        start_pos their maximum (see `cache_update`)."""
        bsz, seqlen, _ = x.shape  # x: [B, S, D]
        sparse = None  # DeepSeek-V3.2: additive mask [B, S, T], 0 at the index_topk chosen keys
        if self.q_lora_rank == 0:
            q = self.wq(x)
        else:
            q_latent = self.q_norm(self.wq_a(x))  # [B, S, q_lora_rank]
            q = self.wq_b(q_latent)
            if self.indexer is not None:
                sparse = self.indexer(
                    x, q_latent, start_pos, freqs_cis, use_cache, slots, positions
                )
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
                k = cache_update(self, "k", k, start_pos, slots, positions)
                v = cache_update(self, "v", v, start_pos, slots, positions)
            out = attention(
                q, k, v, self.softmax_scale, start_pos, mask=sparse, positions=positions
            )  # [B, S, H, dv]
        else:
            # Absorb W_UK into the query: q_nope . (c W_UK_h) = (q_nope W_UK_h^T) . c
            wkv_b = self.wkv_b.weight.view(self.n_heads, -1, self.kv_lora_rank)  # [H, dn+dv, R]
            q_nope = torch.einsum(
                "bshd,hdc->bshc", q_nope, wkv_b[:, : self.qk_nope_head_dim]
            )  # [B, S, H, R]
            k_pe = k_pe.squeeze(2)
            if use_cache:
                kv = cache_update(self, "kv", kv, start_pos, slots, positions)
                k_pe = cache_update(self, "pe", k_pe, start_pos, slots, positions)
            scores = (
                torch.einsum("bshc,btc->bsht", q_nope, kv)
                + torch.einsum("bshr,btr->bsht", q_pe, k_pe)
            ) * self.softmax_scale  # [B, S, H, T]
            if positions is not None:  # rows at different positions: [B, 1, 1, T]
                scores = scores + ragged_causal_mask(positions, kv.shape[1]).unsqueeze(2)
            elif seqlen > 1:
                scores = scores + causal_mask(seqlen, start_pos, x.device)[None, :, None, :]
            if sparse is not None:
                scores = scores + sparse.unsqueeze(2)
            scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
            out = torch.einsum("bsht,btc->bshc", scores, kv)  # [B, S, H, R]
            out = torch.einsum(
                "bshc,hdc->bshd", out, wkv_b[:, -self.v_head_dim :]
            )  # W_UV: [B, S, H, dv]
        return self.wo(out.flatten(2))


class Indexer(nn.Module):
    """DeepSeek-V3.2's lightning indexer: picks the index_topk keys each query attends to.

    index(s, t) = sum_h w_h(x_s) * relu(q_h(s) . k(t) / sqrt(d)) / sqrt(H_i), with its own small
    heads: queries from MLA's query latent (wq_b), one shared key per token (wk, then a LayerNorm
    with bias), per-head weights w = weights_proj(x). The first qk_rope_head_dim dims of queries
    and keys carry RoPE. The choice is not differentiable: the indexer steers, MLA computes.
    The cache holds one key of width index_head_dim per token and layer.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.n_heads, self.head_dim, self.topk = (
            args.index_n_heads,
            args.index_head_dim,
            args.index_topk,
        )
        self.rope_dim = args.qk_rope_head_dim
        self.wq_b = nn.Linear(args.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(args.dim, self.n_heads, bias=False)
        self.cache: dict[str, torch.Tensor] = {}

    def forward(
        self,
        x: torch.Tensor,
        q_latent: torch.Tensor,
        start_pos: int,
        freqs_cis: torch.Tensor,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D], q_latent: [B, S, q_lora_rank] -> additive mask [B, S, T] (T = start_pos
        + S): 0 at the chosen keys, -inf elsewhere. slots, positions: as in MLA.forward."""
        bsz, seqlen, _ = x.shape
        q = self.wq_b(q_latent).view(bsz, seqlen, self.n_heads, self.head_dim)
        q = rotate_leading(q, freqs_cis, self.rope_dim)  # [B, S, Hi, Di]
        k = rotate_leading(self.k_norm(self.wk(x)).unsqueeze(2), freqs_cis, self.rope_dim)
        k = k.squeeze(2)  # [B, S, Di]
        if use_cache:
            k = cache_update(self, "k", k, start_pos, slots, positions)
        scores = F.relu(torch.einsum("bshd,btd->bsht", q, k) * self.head_dim**-0.5)
        weights = self.weights_proj(x) * self.n_heads**-0.5  # [B, S, Hi]
        index = torch.einsum("bsht,bsh->bst", scores, weights)  # [B, S, T]
        if positions is None:
            index = index + causal_mask(seqlen, start_pos, x.device)
        else:
            index = index + ragged_causal_mask(positions, index.shape[-1])
        chosen = index.topk(min(self.topk, index.shape[-1]), dim=-1).indices
        # Future keys may fill the top-k of early queries; the causal mask removes them later.
        return torch.full_like(index, float("-inf")).scatter_(-1, chosen, 0.0)


class GQA(nn.Module):
    """Grouped-query attention (MHA when n_kv_heads == n_heads) with the options of the other
    families, each off by default:

        qkv_bias, o_bias   biases on the projections (Qwen2-MoE, GLM-4.5, gpt-oss)
        qk_norm            RMSNorm of q and k per head (Qwen3, GLM-4.5) or over the projection
                           (OLMoE), before RoPE
        clip_qkv           q, k, v clamped to [-clip_qkv, clip_qkv] after the norm (OLMoE, DBRX)
        rotary_dim         RoPE on the first rotary_dim dims of each head only (GLM-4.5)
        attn_sink          a learned per-head logit in every softmax (gpt-oss)
        window             this layer's sliding window (Mistral, gpt-oss); 0: full attention
    """

    def __init__(self, args: ModelArgs, window: int = 0):
        super().__init__()
        self.args, self.window = args, window
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_size
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.wq = nn.Linear(args.dim, q_width, bias=args.qkv_bias)
        self.wk = nn.Linear(args.dim, kv_width, bias=args.qkv_bias)
        self.wv = nn.Linear(args.dim, kv_width, bias=args.qkv_bias)
        self.wo = nn.Linear(q_width, args.dim, bias=args.o_bias)
        if args.qk_norm != "none":
            per_head = args.qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else q_width, args.norm_eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else kv_width, args.norm_eps)
        self.sink = nn.Parameter(torch.zeros(self.n_heads)) if args.attn_sink else None
        self.softmax_scale = args.softmax_scale
        self.cache: dict[str, torch.Tensor] = {}

    def forward(
        self,
        x: torch.Tensor,
        start_pos: int,
        freqs_cis: torch.Tensor,
        use_cache: bool = False,
        slots: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D] -> [B, S, D]; slots, positions: as in MLA.forward."""
        bsz, seqlen, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)  # [B, S, H*hd], [B, S, Hkv*hd] x 2
        if self.args.qk_norm == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(bsz, seqlen, self.n_heads, self.head_dim)
        k = k.view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        if self.args.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.args.clip_qkv > 0:
            c = self.args.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        rope_dim = self.args.rope_dim
        q, k = rotate_leading(q, freqs_cis, rope_dim), rotate_leading(k, freqs_cis, rope_dim)
        if use_cache:
            k = cache_update(self, "k", k, start_pos, slots, positions)
            v = cache_update(self, "v", v, start_pos, slots, positions)
        out = attention(
            q,
            k,
            v,
            self.softmax_scale,
            start_pos,
            window=self.window,
            sink=self.sink,
            positions=positions,
        )  # [B, S, H, hd]
        return self.wo(out.flatten(2))


def rotate_leading(x: torch.Tensor, freqs_cis: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """RoPE on the first rope_dim dims of the last axis (all of them when rope_dim equals it).
    x: [B, S, H, d]."""
    if rope_dim == x.shape[-1]:
        return apply_rotary_emb(x, freqs_cis)
    rot, rest = torch.split(x, [rope_dim, x.shape[-1] - rope_dim], dim=-1)
    return torch.cat([apply_rotary_emb(rot, freqs_cis), rest], dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    start_pos: int,
    window: int = 0,
    sink: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal scaled-dot-product attention. q: [B, S, H, d], k/v: [B, T, Hkv, d] -> [B, S, H, dv].

    window > 0 limits each query to its last `window` keys; sink: [H] logits that join every
    softmax without a value (gpt-oss); mask: an extra additive mask [B, S, T] (DeepSeek-V3.2's
    chosen keys); positions [B]: row b's one query (S == 1) is at positions[b] rather than at
    start_pos. Uses PyTorch's fused kernel (`F.scaled_dot_product_attention`, which handles
    GQA's shared heads) unless there is a sink.
    """
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, d]
    gqa = k.shape[1] != q.shape[1]
    plain = sink is None and window == 0 and mask is None and positions is None
    if plain and start_pos == 0:
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=q.shape[2] > 1, scale=scale, enable_gqa=gqa
        )
        return out.transpose(1, 2)
    if positions is None:
        full = causal_mask(q.shape[2], start_pos, q.device, window).to(q.dtype)  # [S, T]
    else:
        full = ragged_causal_mask(positions, k.shape[2], window).unsqueeze(1).to(q.dtype)
    if mask is not None:
        full = full + mask.unsqueeze(1).to(q.dtype)  # [B, 1, S, T]
    if sink is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    if gqa:  # [B, Hkv, T, d] -> [B, H, T, d]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * scale + full  # [B, H, S, T]
    sinks = sink.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
    probs = torch.cat([scores, sinks], dim=-1).softmax(dim=-1, dtype=torch.float32)
    return (probs[..., :-1].to(v.dtype) @ v).transpose(1, 2)  # the sink's share goes nowhere
