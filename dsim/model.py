"""A DeepSeek-style Mixture-of-Experts transformer, small enough to read in one sitting.

Modelled on deepseek-ai/DeepSeek-V3 `inference/model.py` (same module and weight names: `wq_a`,
`wkv_b`, `gate`, `shared_experts`, ...) and on karpathy/nanoGPT, without tensor parallelism or FP8
so that every line is about the architecture. It trains (forward and backward) on a CPU at the
`tiny` preset and runs real layer sizes on a GPU.

    Transformer
      embed                      token embedding                       [vocab, dim]
      layers[i]: Block
        attn_norm, attn          MLA (or MHA / GQA)
        ffn_norm,  ffn           MLP for the first n_dense_layers, MoE after
      norm, head                 final RMSNorm and output projection   [vocab, dim]
      mtp[d]: MTPModule          multi-token prediction, sharing embed and head

Shapes in comments: B batch, S sequence, T = B*S tokens, D dim, H heads, E routed experts,
K activated experts (top-k), I moe_inter_dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs
from dsim.kernels import _grouped_mm_ok as _grouped_mm_ok  # re-exported for bench/
from dsim.kernels import _Permute, grouped_mm


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / rms(x) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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

        low = max(math.floor(correction_dim(args.beta_fast)), 0)
        high = min(math.ceil(correction_dim(args.beta_slow)), dim - 1)
        ramp = torch.clamp(
            (torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low + 1e-3), 0, 1
        )
        smooth = 1 - ramp
        freqs = freqs / args.rope_factor * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float32), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of the last dim.
    x: [B, S, H, d], freqs: [S, d/2]."""
    dtype = x.dtype
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    xc = xc * freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    return torch.view_as_real(xc).flatten(3).to(dtype)


def causal_mask(seqlen: int, start_pos: int, device: torch.device) -> torch.Tensor:
    """Additive mask [S, start_pos + S]: query i (at position start_pos + i) sees keys
    0..start_pos + i."""
    return torch.full((seqlen, start_pos + seqlen), float("-inf"), device=device).triu_(
        start_pos + 1
    )


# ------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Feed-forward: dense MLP, the gate, routed experts, MoE
# ------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x). Used for dense layers and shared experts."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class Routing:
    """What the gate decided for T tokens; kept on the MoE module for losses and statistics."""

    scores: torch.Tensor  # [T, E] affinities (softmax or sigmoid), before bias and group masking
    indices: torch.Tensor  # [T, K] chosen experts
    weights: torch.Tensor  # [T, K] combine weights (zero where a token was dropped)
    logits: torch.Tensor  # [T, E] raw router logits (for the z-loss)
    dropped: int = 0  # (token, expert) assignments dropped by the capacity limit


class Gate(nn.Module):
    """DeepSeek's router: scores, a bias that steers the choice only, group-limited top-k.

    1. scores s = softmax(x W^T) or sigmoid(x W^T)                        [T, E]
    2. choice scores c = s + bias (bias: the auxiliary-loss-free balancing term, a buffer updated
       outside autograd; zero unless training updates it)
    3. with groups: score each group (sum of its top-2 c, or its max), keep the n_limited_groups
       best, mask the other groups' experts with -inf
    4. top-k over c picks the experts; the combine weights are gathered from s (never from c),
       renormalised if route_norm (sigmoid), times route_scale.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.topk = args.n_activated_experts
        self.n_groups, self.topk_groups = args.n_expert_groups, args.n_limited_groups
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> Routing:
        logits = F.linear(x.float(), self.weight.float())  # [T, E], fp32 as DeepSeek
        scores = logits.softmax(dim=-1) if self.args.score_func == "softmax" else logits.sigmoid()
        choice = scores + self.bias
        if self.n_groups > 1:
            grouped = choice.view(x.size(0), self.n_groups, -1)  # [T, G, E/G]
            if self.args.group_score == "max":
                group_scores = grouped.amax(dim=-1)
            else:
                group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # [T, G]
            keep = group_scores.topk(self.topk_groups, dim=-1)[1]
            dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            choice = grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(1)
        indices = choice.topk(self.topk, dim=-1)[1]  # [T, K]
        weights = scores.gather(1, indices)
        if self.args.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.args.route_scale
        return Routing(scores=scores, indices=indices, weights=weights, logits=logits)


class Experts(nn.Module):
    """E routed SwiGLU experts stored as stacked weights, so that a grouped GEMM can run them all.

    w1, w3: [E, I, D]   w2: [E, D, I]   (expert e computes w2[e] (silu(w1[e] x) * w3[e] x))
    """

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        for w in (self.w1, self.w2, self.w3):
            nn.init.normal_(w, std=w.shape[-1] ** -0.5)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x: [n, D] -> [n, D]."""
        return F.linear(F.silu(F.linear(x, self.w1[e])) * F.linear(x, self.w3[e]), self.w2[e])

    def forward_loop(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The readable reference: for each expert, gather its tokens, run it, scatter-add back."""
        y = torch.zeros_like(x)  # [T, D]
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts).tolist()
        for e in range(self.n_experts):
            if counts[e] == 0:
                continue
            token, slot = torch.where(indices == e)
            y.index_add_(0, token, self.expert(e, x[token]) * weights[token, slot, None])
        return y

    def forward_grouped(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Sort the T*K (token, expert) pairs by expert, run one grouped GEMM per weight, unsort.

        Uses `torch._grouped_mm` where this torch and device support it, else a padded batched GEMM.
        Rows move only by gathers, forward and backward (`_Permute`: no scatter-add, no atomics),
        and nothing here waits for the GPU (no host sync), so the CPU queues the whole layer ahead.
        """
        T, K = indices.shape
        flat = indices.flatten()  # [T*K] expert of each pair
        order = torch.argsort(flat, stable=True)  # pairs sorted by expert
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(T * K, device=order.device)  # where each pair went
        # tokens per expert [E]: a scatter-add, as torch.bincount syncs with the host on CUDA
        counts = flat.new_zeros(self.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
        xs = _Permute.apply(x, order // K, inverse, K)  # [T*K, D] sorted by expert
        h = F.silu(grouped_mm(xs, self.w1, counts)) * grouped_mm(xs, self.w3, counts)
        ys = _Permute.apply(
            grouped_mm(h, self.w2, counts), inverse, order, 1
        )  # [T*K, D] in pair order
        return (ys.view(T, K, -1) * weights.unsqueeze(-1)).sum(1)  # weighted sum over the K experts

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "grouped"
    ) -> torch.Tensor:
        return (
            self.forward_loop(x, indices, weights)
            if impl == "loop"
            else self.forward_grouped(x, indices, weights)
        )


class MoE(nn.Module):
    """DeepSeekMoE: shared experts that see every token plus routed experts picked by the gate."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.gate = Gate(args)
        self.experts = Experts(args.n_routed_experts, args.dim, args.moe_inter_dim)
        self.shared_experts = (
            MLP(args.dim, args.n_shared_experts * args.moe_inter_dim)
            if args.n_shared_experts
            else None
        )
        self.routing: Routing | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.args.dim)  # [T, D]
        routing = self.gate(x)
        weights = routing.weights
        if self.args.capacity_factor > 0:
            keep = capacity_mask(
                routing,
                self.args.n_routed_experts,
                self.args.capacity_factor,
                self.args.drop_policy,
            )
            routing.dropped = int((~keep).sum())
            weights = routing.weights = weights * keep
        self.routing = routing
        y = self.experts(x, routing.indices, weights.type_as(x), self.args.expert_impl)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.view(shape)


def capacity_mask(
    routing: Routing, n_experts: int, capacity_factor: float, policy: str
) -> torch.Tensor:
    """[T, K] bool: which (token, expert) assignments fit in each expert's capacity.

    capacity = ceil(capacity_factor * T * K / E). Over-full experts keep their highest-score
    assignments (policy "score") or their earliest tokens (policy "position").
    """
    T, K = routing.indices.shape
    capacity = math.ceil(capacity_factor * T * K / n_experts)
    flat = routing.indices.flatten()
    if policy == "score":
        priority = routing.scores.gather(1, routing.indices).flatten()  # higher keeps first
    else:
        priority = -torch.arange(
            T * K, device=flat.device, dtype=torch.float32
        )  # earlier keeps first
    # Sort by (expert, -priority); a row's rank inside its expert decides whether it fits.
    order = torch.argsort(priority, descending=True, stable=True)
    order = order[torch.argsort(flat[order], stable=True)]
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(T * K, device=flat.device) - starts[flat[order]]
    return (rank < capacity).view(T, K)


# ------------------------------------------------------------------------------------------
# Blocks, multi-token prediction, the transformer
# ------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.attn = MLA(args) if args.attn_type == "mla" else GQA(args)
        self.ffn = MLP(args.dim, args.inter_dim) if layer_id < args.n_dense_layers else MoE(args)
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor, use_cache: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), start_pos, freqs_cis, use_cache)
        return x + self.ffn(self.ffn_norm(x))


class MTPModule(nn.Module):
    """One multi-token-prediction depth (DeepSeek-V3 section 2.2).

    h'_i = M [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})], then a full transformer block, then the
    shared output head after this module's own final norm. The embedding and the head are the main
    model's (shared, not owned here). The concatenation order (embedding first) follows the
    released V3 weights (`enorm`, `hnorm`, `eh_proj`).
    """

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.enorm = RMSNorm(args.dim, args.norm_eps)
        self.hnorm = RMSNorm(args.dim, args.norm_eps)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.block = Block(layer_id, args)
        self.norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        """h: [B, S', D] previous depth's hidden states; emb: [B, S', D] embeddings of the tokens k
        ahead."""
        h = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return self.block(h, 0, freqs_cis)


class Transformer(nn.Module):
    """The decoder-only MoE language model."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.head.weight = self.embed.weight
        # MTP blocks use the MoE FFN when the model has MoE layers (as V3's layer 61 does).
        mtp_layer_id = args.n_layers if args.is_moe else 0
        self.mtp = nn.ModuleList(MTPModule(mtp_layer_id, args) for _ in range(args.n_mtp_layers))
        # A plain attribute, not a buffer: Module.to(torch.bfloat16) would cast the complex
        # rotations to real numbers. hidden() moves it to the tokens' device; it stays complex64.
        self.freqs_cis = precompute_freqs_cis(args)
        nn.init.normal_(self.embed.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embed.weight" and not name.endswith("gate.weight"):
                nn.init.normal_(p, std=p.shape[1] ** -0.5)

    def hidden(
        self, tokens: torch.Tensor, start_pos: int = 0, use_cache: bool = False
    ) -> torch.Tensor:
        """Last block's output, before the final norm: [B, S] token ids -> [B, S, D]."""
        bsz, seqlen = tokens.shape
        if start_pos + seqlen > self.args.max_seq_len:
            raise ValueError(
                f"start_pos + sequence length = {start_pos + seqlen} exceeds "
                f"ModelArgs.max_seq_len={self.args.max_seq_len}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.args.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.args.vocab_size})")
        if self.freqs_cis.device != tokens.device:
            self.freqs_cis = self.freqs_cis.to(tokens.device)
        freqs_cis = self.freqs_cis[start_pos : start_pos + seqlen]
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h, start_pos, freqs_cis, use_cache)
        return h

    def forward(
        self, tokens: torch.Tensor, start_pos: int = 0, use_cache: bool = False
    ) -> torch.Tensor:
        """Logits for every position: [B, S] -> [B, S, V]. With use_cache, keys/values (or MLA
        latents) of positions start_pos.. are kept, so a later call can decode from
        start_pos + S."""
        return self.head(self.norm(self.hidden(tokens, start_pos, use_cache)))

    def mtp_logits(self, h: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Logits of each MTP depth k = 1..D from the main hidden states h [B, S, D] and
        tokens [B, S].

        Depth k at position i combines h^{k-1}_i with the embedding of t_{i+k} and predicts
        t_{i+k+1}; it returns [B, S-k, V] (position i in 0..S-k-1).
        """
        out = []
        for k, module in enumerate(self.mtp, start=1):
            seqlen = tokens.shape[1] - k
            h = module(h[:, :seqlen], self.embed(tokens[:, k:]), self.freqs_cis[:seqlen])
            out.append(self.head(module.norm(h)))
        return out

    def moe_layers(self) -> list[MoE]:
        """Every MoE FFN (main layers then MTP blocks), for routing statistics and balancing."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def reset_cache(self) -> None:
        for m in self.modules():
            if isinstance(m, (MLA, GQA)):
                m.cache.clear()

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Greedy (temperature 0) or sampled decoding with the KV cache.
        prompt: [B, S] -> [B, S + n]."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.reset_cache()
        tokens, pos = prompt, 0
        step_in = prompt
        for _ in range(max_new_tokens):
            logits = self(step_in, start_pos=pos, use_cache=True)[:, -1]
            pos += step_in.shape[1]
            if temperature > 0:
                nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            step_in = nxt
        self.reset_cache()
        return tokens
