"""The model's rules that every cost view shares, written once.

Which layers are MoE, which layer id the MTP blocks are built with, which MTP depths run and on how
many positions, a step's shape (decode: one new token after the cache), how many (query, key)
pairs attention computes, and which attention kernel PyTorch runs.
"""

from __future__ import annotations

from typing import Literal

from dsim.config import ModelArgs

Mode = Literal["train", "prefill", "decode"]
AttnKernel = Literal["fused", "math"]
Device = Literal["cuda", "cpu"]
MODES = ("train", "prefill", "decode")


def is_moe_layer(args: ModelArgs, layer_id: int) -> bool:
    """Whether `Block(layer_id)` has an MoE FFN (the model's rule: layer_id >= n_dense_layers)."""
    return layer_id >= args.n_dense_layers


def first_moe_layer(args: ModelArgs) -> int | None:
    """The first block with an MoE FFN (the one a cost view times as "the MoE block"), or None
    for a dense model."""
    return args.n_dense_layers if args.is_moe else None


def mtp_layer_id(args: ModelArgs) -> int:
    """The layer id an MTP block is built with: an MoE block when the model has MoE layers."""
    return args.n_layers if args.is_moe else 0


def mtp_depths(args: ModelArgs, seq_len: int) -> list[tuple[int, int]]:
    """(depth k, positions) of every MTP module that runs: depth k sees seq_len - k positions."""
    return [(k, seq_len - k) for k in range(1, args.n_mtp_layers + 1) if seq_len - k > 0]


def step_shape(mode: str, seq_len: int, context: int | None) -> tuple[int, int]:
    """(new tokens per sequence, cached tokens before them) of a step. Decode runs one new token
    after `context` cached ones (default seq_len: the (seq_len + 1)-th token)."""
    if mode == "decode":
        return 1, (seq_len if context is None else context)
    return seq_len, context or 0


def layer_window(args: ModelArgs, layer_id: int) -> int:
    """Keys a query of Block(layer_id) may attend to at most (0: all earlier ones): the sliding
    window in `window_layers` (Mistral, gpt-oss), DeepSeek-V3.2's index_topk chosen keys in every
    MLA layer. (An MTP block, layer_id n_layers, has no window but does have the indexer.)"""
    if args.has_indexer:
        return args.index_topk
    return args.sliding_window if layer_id in args.window_layers else 0


def served_context(args: ModelArgs, layer_id: int, context: int) -> int:
    """Cached tokens a serving deployment's Block(layer_id) attends to after `context` earlier
    ones: a sliding-window layer keeps only its last window - 1 (with the new token, its window:
    the cache `dsim.cost.kv_cache` counts); every other layer all of them. (dsim.model itself
    keeps and masks the whole cache.)"""
    if layer_id in args.window_layers:
        return min(context, args.sliding_window - 1)
    return context


def windowed_pairs(batch: int, seq_len: int, context: int, window: int) -> int:
    """Causal (query, key) pairs when each query sees at most its last `window` keys (itself
    included): query at position p sees min(p + 1, window) keys, summed over p = context ..
    context + seq_len - 1 (closed form, no loop)."""

    def upto(n: int) -> int:  # sum of min(p + 1, window) for p < n
        return (
            n * (n + 1) // 2 if n <= window else window * (window + 1) // 2 + (n - window) * window
        )

    return batch * (upto(context + seq_len) - upto(context))


def attention_pairs(batch: int, seq_len: int, context: int, causal: bool) -> int:
    """(query, key) pairs per head: all of them (S x (context + S)), or those a causal mask keeps.

    Query i of a chunk starting at position `context` sees context + i + 1 keys, so the kept pairs
    are S * context + S (S + 1) / 2 per sequence. The time model's attention op, with kv_seq_len
    keys for seq_len queries, asks for context = kv_seq_len - seq_len (its queries are the last
    seq_len positions); without a mask kv_seq_len may be the shorter (context < 0), with one not.
    """
    if causal:
        if context < 0:
            raise ValueError(
                f"causal attention needs context >= 0 (kv_seq_len >= seq_len), got {context}"
            )
        return batch * (seq_len * context + seq_len * (seq_len + 1) // 2)
    return batch * seq_len * (context + seq_len)


def sdpa_kernel(args: ModelArgs, device: str = "cuda") -> AttnKernel:
    """Which attention path PyTorch runs for the model's `F.scaled_dot_product_attention` calls.

    On a CPU the fused flash kernel needs equal query and value head sizes, so MLA-naive
    (d_qk = qk_nope + qk_rope != v_head_dim) runs the unfused math path; on a GPU the memory-
    efficient / cuDNN kernels take any head sizes. (MLA-absorb never calls SDPA: it is "math"; nor
    does attention with gpt-oss's sinks, which joins an extra logit to every softmax.)
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if args.attn_type != "mla":
        return "math" if args.attn_sink else "fused"  # sinks: explicit matmuls and softmax
    unequal_on_cpu = device == "cpu" and args.qk_head_dim != args.v_head_dim
    return "math" if args.attn_impl == "absorb" or unequal_on_cpu else "fused"
