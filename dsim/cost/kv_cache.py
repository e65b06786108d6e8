"""The KV cache: the numbers each layer keeps per sequence, as a deployment keeps them.

MHA/GQA keep keys and values (a sliding-window layer only its window), MLA its latent and RoPE
key (absorbed, what a deployment caches) or per-head keys and values (naive), DeepSeek-V3.2 also
its indexer's key. `dsim.cost.memory` sums them per GPU; the serving planner per sequence.
"""

from __future__ import annotations

from typing import Literal

from dsim.config import ModelArgs
from dsim.cost.dtypes import bytes_per_param


def kv_cache_layer_elements(
    args: ModelArgs,
    layer_id: int,
    seq_len: int,
    impl: Literal["naive", "absorb"] | None = None,
) -> int:
    """Numbers Block(layer_id) caches for one sequence of seq_len tokens, as a deployment keeps
    them.

    MHA/GQA: keys and values, 2 n_kv_heads head_size per token; a sliding-window layer (Mistral,
        gpt-oss) keeps only its last sliding_window tokens (dsim.model's cache, allocated for
        max_seq_len, keeps all: what a serving engine keeps is costed here).
    MLA absorbed (the default for MLA, what a deployment caches): the latent c_kv and the shared
        RoPE key, kv_lora_rank + qk_rope_head_dim per token.
    MLA naive: decompressed keys and values per head, n_heads (qk_head_dim + v_head_dim).
    DeepSeek-V3.2 adds its indexer's key, index_head_dim per token.
    """
    impl = impl or "absorb"
    if impl not in ("naive", "absorb"):
        raise ValueError(f"impl must be 'naive', 'absorb' or None, got {impl!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}")
    if args.attn_type == "mla":
        per_token = (
            args.kv_lora_rank + args.qk_rope_head_dim
            if impl == "absorb"
            else args.n_heads * (args.qk_head_dim + args.v_head_dim)
        )
        return (per_token + args.index_head_dim * args.has_indexer) * seq_len
    tokens = min(seq_len, args.sliding_window) if layer_id in args.window_layers else seq_len
    return 2 * args.kv_heads * args.head_size * tokens


def kv_cache_elements(
    args: ModelArgs,
    seq_len: int,
    layers: range | None = None,
    impl: Literal["naive", "absorb"] | None = None,
) -> int:
    """Numbers cached for one sequence of seq_len tokens by `layers` (default all; MTP modules
    keep no cache): the full-attention layers alike, the sliding-window ones alike, so the sum
    is two products (no loop over the layers)."""
    layers = range(args.n_layers) if layers is None else layers
    windowed = [i for i in args.window_layers if i in layers]
    n_full = len(layers) - len(windowed)
    full = kv_cache_layer_elements(args, args.n_layers, seq_len, impl)  # never a window layer
    return n_full * full + sum(kv_cache_layer_elements(args, i, seq_len, impl) for i in windowed)


def kv_cache_elements_per_token(
    args: ModelArgs, impl: Literal["naive", "absorb"] | None = None, seq_len: int | None = None
) -> float:
    """Numbers cached per token over all layers (MTP modules keep no cache), averaged over a
    sequence of seq_len tokens (`kv_cache_layer_elements`). seq_len matters only with sliding
    windows, and is then required."""
    if seq_len is None:
        if args.sliding_window:
            raise ValueError(
                "seq_len is required for a model with sliding windows "
                f"(sliding_window={args.sliding_window}): its cache per token depends on length"
            )
        seq_len = 1
    n = kv_cache_elements(args, seq_len, None, impl)
    return n // seq_len if n % seq_len == 0 else n / seq_len


def kv_cache_bytes_per_token(
    args: ModelArgs,
    dtype: str | float = "bf16",
    impl: Literal["naive", "absorb"] | None = None,
    group_size: int | None = 128,
    seq_len: int | None = None,
) -> float:
    """Bytes of KV cache per token, all layers, for the cache the model keeps by default for
    inference (MLA: the absorbed latent + RoPE key; `impl="naive"` for per-head keys and values);
    averaged over seq_len tokens, which a model with sliding windows requires."""
    return kv_cache_elements_per_token(args, impl, seq_len) * bytes_per_param(dtype, group_size)
