"""Attention ops: MLA (naive and absorbed) and MHA/GQA, with the SDPA core and cache writes."""

from __future__ import annotations

from dsim.cost.graph.ops import (
    E5M6_BITS,
    C,
    Ctx,
    Flops,
    GraphOp,
    Item,
    cached_bytes,
    elementwise,
    gemm,
    linear,
    make_op,
    matmul,
    matmul_flops,
    rms_norm,
)
from dsim.cost.graph.rules import attention_pairs, windowed_pairs


def _e5m6(elements: int) -> int:
    """Bytes of the wo input (the attention output) as DeepSeek-V3 caches it: E5M6 with tile
    scales (dsim.cost.graph.ops.E5M6_BITS)."""
    return cached_bytes(elements, E5M6_BITS)


def _cache_write(c: Ctx, label: str, nbytes: int) -> list[GraphOp]:
    """Inference writes the new keys/values (or latents) into the cache; training keeps none."""
    return [] if c.train else [elementwise(c, label, f"{c.block}.attn", C.ATTN_CORE, nbytes, 2)]


def _pairs(c: Ctx) -> tuple[int, int]:
    """(query, key) pairs over all heads: all of them (what the counter charges, the mask
    notwithstanding), and those the mask keeps: causal, and within the block's window (a sliding
    window, or DeepSeek-V3.2's index_topk chosen keys)."""
    B, S, ctx, H = c.batch, c.seq_len, c.context, c.args.n_heads
    kept = windowed_pairs(B, S, ctx, c.window) if c.window else attention_pairs(B, S, ctx, True)
    return attention_pairs(B, S, ctx, False) * H, kept * H


def _sdpa(c: Ctx, qk: int, dv: int, kv_heads: int, saved: list[Item]) -> GraphOp:
    """F.scaled_dot_product_attention on q [B, H, S, qk], k [B, kv_heads, S_kv, qk], v [B, kv_heads,
    S_kv, dv] (GQA: enable_gqa).

    Forward 2 (qk + dv) per (query, key) pair and head; the fused kernels' backward recomputes
    QK^T: 2 (3 qk + 2 dv) per pair, the math path's is twice the forward."""
    B, S, H, e = c.batch, c.seq_len, c.args.n_heads, c.e
    skv, (full, kept) = c.context + S, _pairs(c)
    recompute_qk = (2 * full * (3 * qk + 2 * dv), 2 * kept * (3 * qk + 2 * dv))
    bwd = recompute_qk if c.kernel == "fused" else ()
    f = matmul_flops(c, 2 * full * (qk + dv), 2 * kept * (qk + dv), bwd)
    q, k, v = c.T * H * qk * e, B * skv * kv_heads * qk * e, B * skv * kv_heads * dv * e
    io = dict(reads={"q": q, "k": k, "v": v}, writes={"out": c.T * H * dv * e})
    shape = dict(
        batch=B, seq_len=S, kv_seq_len=skv, n_heads=H, qk_head_dim=qk, v_head_dim=dv, causal=S > 1
    )
    if kv_heads != H:  # GQA: enable_gqa, keys and values of kv_heads heads
        shape["kv_heads"] = kv_heads
    time = [("sdpa", "attention", shape)]
    return make_op(c, "sdpa", f"{c.block}.attn", C.ATTN_CORE, time, flops=f, saved=saved, **io)


def mla(c: Ctx) -> list[GraphOp]:
    """MLA: low-rank query (or wq), latent c_kv = kv_norm(x W_DKV) [T, R] and one RoPE key
    k_pe [T, dr]; naive decompresses keys and values per head (wkv_b), absorbed multiplies W_UK
    into the query and W_UV into the output and attends against the latent."""
    a, T, D, H, e, p = c.args, c.T, c.args.dim, c.args.n_heads, c.e, f"{c.block}.attn"
    R, dr, dn = a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim
    dv, qk, A, q_lora = a.v_head_dim, a.qk_head_dim, C.ATTN_PROJ, a.q_lora_rank
    if q_lora:  # q = wq_b(q_norm(wq_a(x))): [T, D] -> [T, q_lora_rank] -> [T, H qk]
        ops = [
            linear(c, f"{p}.wq_a", A, T, q_lora, D),
            rms_norm(c, f"{p}.q_norm", T, q_lora, T * q_lora * e, True, "attn.q_norm"),
            linear(c, f"{p}.wq_b", A, T, H * qk, q_lora),
        ]
        ops += _indexer(c) if a.has_indexer else []
    else:
        ops = [linear(c, f"{p}.wq", A, T, H * qk, D)]
    # kv_norm's input is a slice of wkv_a's output, whose storage is R + dr wide.
    ops += [
        linear(c, f"{p}.wkv_a", A, T, R + dr, D),
        rms_norm(c, f"{p}.kv_norm", T, R, T * (R + dr) * e, True, "attn.kv_norm"),
        elementwise(c, "rope (q_pe, k_pe)", p, C.ROPE, 24 * T * dr * (H + 1), 6),
    ]
    if a.attn_impl == "absorb":
        wo_kept = [Item("attn.wo input", T * H * dv * e, fp8_bytes=_e5m6(T * H * dv))]
        return ops + _mla_absorbed(c) + [linear(c, f"{p}.wo", A, T, D, H * dv, saved=wo_kept)]
    if c.kernel == "fused":
        kept = [
            Item("attn.q (cat of q_nope, q_pe)", T * H * qk * e, True),
            Item("attn.k (cat of k_nope, k_pe)", T * H * qk * e, True),
            Item("attn.v (a slice: all of wkv_b's output stays)", T * H * (dn + dv) * e, True),
            Item("attn.out (also the wo input)", T * H * dv * e, fp8_bytes=_e5m6(T * H * dv)),
            Item("attn.logsumexp float32", c.batch * H * c.seq_len * 4),
        ]
        wo_kept = []
    else:
        f = 4 if c.cpu else e  # PyTorch's CPU math path computes in float32
        # v is a slice of wkv_b's output. Without a dtype cast, a batch of one reshapes it for
        # the batched matmul as a view (keeping the whole output); otherwise it is copied.
        v = T * H * (dn + dv) * f if (f == e and c.batch == 1) else T * H * dv * f
        kept = [
            Item("attn.q * scale (math path)", T * H * qk * f, True),
            Item("attn.k (math path)", T * H * qk * f, True),
            Item("attn.probs (math path)", c.batch * H * c.seq_len**2 * f, True),
            Item("attn.v for the batched matmul (math path)", v, True),
        ]
        wo_kept = [Item("attn.wo input (copy)", T * H * dv * e, fp8_bytes=_e5m6(T * H * dv))]
    ops += [
        linear(c, f"{p}.wkv_b", A, T, H * (dn + dv), R),
        elementwise(c, "cat q, k (expand k_pe)", p, C.ATTN_CORE, 8 * T * H * qk, 2),
    ]
    ops += _cache_write(c, "write k, v cache", 4 * T * H * (qk + dv))
    return ops + [_sdpa(c, qk, dv, H, kept), linear(c, f"{p}.wo", A, T, D, H * dv, saved=wo_kept)]


def _mla_absorbed(c: Ctx) -> list[GraphOp]:
    """MLA absorbed, between the RoPE and wo: four einsums and a float32 softmax.

    q_nope [B, S, H, dn] x W_UK [H, dn, R] -> [B, S, H, R]; scores = that . c_kv [B, S_kv, R] +
    q_pe . k_pe [B, S_kv, dr] -> [B, S, H, S_kv]; softmax; probs . c_kv -> [B, S, H, R];
    x W_UV [H, dv, R] -> [B, S, H, dv]. The score matrix is materialised: the math path."""
    a, B, S, T, H, e, p = c.args, c.batch, c.seq_len, c.T, c.args.n_heads, c.e, f"{c.block}.attn"
    R, dr, dn = a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim
    dv, qk, skv, kept = a.v_head_dim, a.qk_head_dim, c.context + S, _pairs(c)[1]
    q_uk, c_kv = T * H * R * e, B * skv * R * e  # q_nope W_UK, and the latents it attends to
    probs = [Item("attn.probs float32 (softmax output)", B * H * S * S * 4, True)]
    if e != 4:
        probs.append(Item("attn.probs cast to the activation dtype", B * H * S * S * e, True))
    A, K = C.ATTN_PROJ, C.ATTN_CORE
    g = gemm("absorb W_UK into q", T, R, dn, H)
    reads = {"q_nope": T * H * dn * e, "wkv_b[:, :dn]": H * dn * R * e}
    kept_q = [Item("attn.q (wq/wq_b output, sliced by the W_UK einsum)", T * H * qk * e, True)]
    w_uk = matmul(c, [g], p, A, reads, {"q_nope W_UK": q_uk}, kept_q)
    gemms = [gemm("scores q.c_kv", S * H, skv, R, B), gemm("scores q_pe.k_pe", S * H, skv, dr, B)]
    reads = {"q_nope W_UK": q_uk, "c_kv": c_kv, "q_pe": T * H * dr * e, "k_pe": B * skv * dr * e}
    kept_qk = [
        Item("attn.q_nope @ W_UK", q_uk, True),
        Item("attn.q_pe after RoPE", T * H * dr * e, True),
        Item("attn.k_pe after RoPE", T * dr * e, True),
    ]
    scores_bytes, causal = {"scores": B * H * S * skv * e}, 2 * kept * (R + dr)
    scores = matmul(c, gemms, p, K, reads, scores_bytes, kept_qk, causal)
    softmax_bytes = 22 * B * S * H * skv
    softmax = elementwise(c, "add, mask, softmax (fp32)", p, K, softmax_bytes, 4, probs)
    g, reads = gemm("p @ c_kv", S * H, R, skv, B), {"probs": B * H * S * skv * e, "c_kv": c_kv}
    pv = matmul(c, [g], p, K, reads, {"probs c_kv": q_uk}, causal=2 * kept * R)
    g, reads = gemm("W_UV", T, dv, R, H), {"probs c_kv": q_uk, "wkv_b[:, -dv:]": H * dv * R * e}
    kept_pv = [Item("attn.probs @ c_kv", q_uk)]
    w_uv = matmul(c, [g], p, A, reads, {"out": T * H * dv * e}, kept_pv)
    cache = _cache_write(c, "write latent cache", 4 * T * (R + dr))
    return [w_uk, *cache, scores, softmax, pv, w_uv]


def _no_backward(op: GraphOp) -> GraphOp:
    """The op with no backward FLOPs: nothing upstream of a non-differentiable choice gets a
    gradient (the indexer's output is a top-k mask)."""
    f = op.flops
    flops = Flops(f.forward, 0, f.forward_causal, 0)
    return GraphOp(
        op.name, op.module, op.component, flops, op.reads, op.writes, (), op.time, op.block
    )


def _indexer(c: Ctx) -> list[GraphOp]:
    """DeepSeek-V3.2's lightning indexer on the query latent [T, q_lora_rank] and x [T, D]:
    index queries [T, Hi, Di] (wq_b), one key per token [T, Di] (wk, LayerNorm, RoPE on the first
    qk_rope_head_dim dims), scores relu(q . k) [B, S, Hi, S_kv] for every (query, key) pair, the
    head-weighted sum [B, S, S_kv] (weights_proj) and a top-index_topk. Only the choice leaves it,
    so in dsim.model none of it is trained (DeepSeek trains it with a separate KL loss)."""
    a, B, S, T, e, p = c.args, c.batch, c.seq_len, c.T, c.e, f"{c.block}.attn.indexer"
    Hi, Di, D, skv = a.index_n_heads, a.index_head_dim, a.dim, c.context + c.seq_len
    full, kept = attention_pairs(B, S, c.context, False), attention_pairs(B, S, c.context, True)
    A, K = C.ATTN_PROJ, C.ATTN_CORE
    k_cache = B * skv * Di * e
    scores = matmul(
        c,
        [gemm("index scores q.k", S * Hi, skv, Di, B)],
        p,
        K,
        {"index q": T * Hi * Di * e, "index k": k_cache},
        {"scores": B * S * Hi * skv * e},
        causal=2 * kept * Hi * Di,
    )
    weighted = matmul(
        c,
        [gemm("index weighted sum", skv, 1, Hi, T)],
        p,
        K,
        {"scores": B * S * Hi * skv * e, "weights": T * Hi * e},
        {"index": B * S * skv * e},
        causal=2 * kept * Hi,
    )
    ops = [
        linear(c, f"{p}.wq_b", A, T, Hi * Di, a.q_lora_rank),
        linear(c, f"{p}.wk", A, T, Di, D),
        elementwise(
            c,
            "index k LayerNorm, rope (q, k)",
            p,
            C.ROPE,
            24 * T * a.qk_rope_head_dim * (Hi + 1) + 4 * T * Di * e,
            4,
        ),
        *_cache_write(c, "write index key cache", 2 * T * Di * e),
        scores,
        elementwise(c, "index relu", p, K, 2 * B * S * Hi * skv * e),
        linear(c, f"{p}.weights_proj", A, T, Hi, D),
        weighted,
        elementwise(c, "index mask, top-k, scatter", p, K, 3 * B * S * skv * 4, 3),
    ]
    assert full >= kept
    return [_no_backward(op) if op.flops else op for op in ops]


def gqa(c: Ctx) -> list[GraphOp]:
    """MHA/GQA: q [T, H hd], k and v [T, kv hd], RoPE on q and k, SDPA (keys and values shared by
    H / kv heads), wo [T, H hd] -> [T, D]."""
    a, T, D, H, e, p = c.args, c.T, c.args.dim, c.args.n_heads, c.e, f"{c.block}.attn"
    hd, kvh, A = a.head_size, a.kv_heads, C.ATTN_PROJ
    if c.kernel == "fused":
        kept = [
            Item("attn.q after RoPE", T * H * hd * e),
            Item("attn.k after RoPE", T * kvh * hd * e),
            Item("attn.v (wv output)", T * kvh * hd * e),
            Item("attn.out (also the wo input)", T * H * hd * e, fp8_bytes=_e5m6(T * H * hd)),
            Item("attn.logsumexp float32", c.batch * H * c.seq_len * 4),
        ]
        wo_kept = []
    else:
        f = 4 if c.cpu else e
        kept = [
            Item("attn.q * scale (math path)", T * H * hd * f),
            Item("attn.k repeated to all heads (math path)", T * H * hd * f),
            Item("attn.probs (math path)", c.batch * H * c.seq_len**2 * f, True),
            Item("attn.v repeated to all heads (math path)", T * H * hd * f),
        ]
        wo_kept = [Item("attn.wo input (copy)", T * H * hd * e, fp8_bytes=_e5m6(T * H * hd))]
    ops = [
        linear(c, f"{p}.wq", A, T, H * hd, D),
        linear(c, f"{p}.wk", A, T, kvh * hd, D),
        linear(c, f"{p}.wv", A, T, kvh * hd, D),
    ]
    if a.qk_norm == "head":  # Qwen3, GLM-4.5: over each head's hd numbers
        ops += [
            rms_norm(c, f"{p}.q_norm", T * H, hd, None, False, "attn.q_norm"),
            rms_norm(c, f"{p}.k_norm", T * kvh, hd, None, False, "attn.k_norm"),
        ]
    elif a.qk_norm == "proj":  # OLMoE: over the whole projection
        ops += [
            rms_norm(c, f"{p}.q_norm", T, H * hd, None, False, "attn.q_norm"),
            rms_norm(c, f"{p}.k_norm", T, kvh * hd, None, False, "attn.k_norm"),
        ]
    if a.clip_qkv:  # DBRX, OLMoE: q, k, v clamped
        ops.append(elementwise(c, "clip q, k, v", p, A, 2 * T * (H + 2 * kvh) * hd * e, 3))
    # RoPE on the first rope_dim dims of each head (partial rotary: a cat puts the rest back)
    rope = 24 * T * a.rope_dim * (H + kvh) + (4 * T * (H + kvh) * hd * e if a.rope_dim < hd else 0)
    ops.append(elementwise(c, "rope (q, k)", p, C.ROPE, rope, 6))
    ops += _cache_write(c, "write k, v cache", 8 * T * kvh * hd)
    core = _sink_attention(c) if a.attn_sink else [_sdpa(c, hd, hd, kvh, kept)]
    return ops + core + [linear(c, f"{p}.wo", A, T, D, H * hd, saved=wo_kept)]


def _sink_attention(c: Ctx) -> list[GraphOp]:
    """Attention with gpt-oss's sinks, as dsim.model computes it (no fused kernel takes a sink):
    keys and values repeated to all H heads, scores q k^T [B, H, S, S_kv] plus the mask, the
    sink logit joined to each row, a float32 softmax, its key columns times v."""
    a, B, S, T, H, e, p = c.args, c.batch, c.seq_len, c.T, c.args.n_heads, c.e, f"{c.block}.attn"
    hd, kvh, skv, K = a.head_size, a.kv_heads, c.context + S, C.ATTN_CORE
    kept = _pairs(c)[1]
    kv = B * skv * H * hd * e  # k or v repeated to every head
    scores = B * H * S * skv
    repeat = [] if kvh == H else [elementwise(c, "repeat k, v to all heads", p, K, 4 * kv // 2, 2)]
    qk = matmul(
        c,
        [gemm("scores q.k", S, skv, hd, B * H)],
        p,
        K,
        {"q": T * H * hd * e, "k": kv},
        {"scores": scores * e},
        [Item("attn.q, k (math path)", T * H * hd * e + kv)],
        causal=2 * kept * hd,
    )
    probs = [
        Item("attn.probs float32 (with the sink column)", (scores + B * H * S) * 4, True),
        Item("attn.probs cast to the activation dtype", scores * e, True),
        Item("attn.v repeated to all heads", kv),
    ]
    softmax = elementwise(c, "scale, mask, cat sink, softmax (fp32)", p, K, 22 * scores, 4, probs)
    pv = matmul(
        c,
        [gemm("probs @ v", S, hd, skv, B * H)],
        p,
        K,
        {"probs": scores * e, "v": kv},
        {"out": T * H * hd * e},
        causal=2 * kept * hd,
    )
    return [*repeat, qk, softmax, pv]
