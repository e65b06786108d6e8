"""Validation of the ModelArgs fields that the families beyond DeepSeek and Mixtral need
(Qwen2/3-MoE, OLMoE, DBRX, gpt-oss, GLM-4.5, DeepSeek-V3.2, Llama, Mistral).

Kept apart from ModelArgs.validate (which calls it last) so that dsim/config.py stays short; it
imports nothing of dsim, so dsim.config may import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def validate_family_fields(args: Any, need: Callable[[bool, str, str], None]) -> None:
    """Raise (through `need(ok, field, allowed)`) for an invalid value of a family field of
    `args`, a ModelArgs."""
    for name in (
        "qkv_bias",
        "o_bias",
        "attn_sink",
        "rope_truncate",
        "shared_expert_gate",
        "router_bias",
        "expert_bias",
    ):
        need(isinstance(getattr(args, name), bool), name, "True or False")
    for name in ("rotary_dim", "sliding_window", "index_n_heads", "index_head_dim", "index_topk"):
        value = getattr(args, name)
        need(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            name,
            "an integer >= 0",
        )
    for name in ("clip_qkv", "swiglu_limit"):
        value = getattr(args, name)
        need(
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0,
            name,
            "a finite number >= 0 (0: off)",
        )
    need(args.qk_norm in ("none", "head", "proj"), "qk_norm", "'none', 'head' or 'proj'")
    need(args.norm_type in ("rmsnorm", "layernorm"), "norm_type", "'rmsnorm' or 'layernorm'")
    gqa_only = {
        "qk_norm": args.qk_norm != "none",
        "rotary_dim": args.rotary_dim > 0,
        "clip_qkv": args.clip_qkv > 0,
        "attn_sink": args.attn_sink,
    }
    for name, used in gqa_only.items():
        need(args.attn_type != "mla" or not used, name, "off for MLA (an MHA/GQA feature)")
    if args.attn_type != "mla":
        need(
            args.head_dim > 0 or args.dim % args.n_heads == 0,
            "head_dim",
            f"given (> 0) when n_heads={args.n_heads} does not divide dim={args.dim}",
        )
    if args.attn_type != "mla" and args.rotary_dim and args.rotary_dim < args.head_size:
        # transformers scales only the rotated dims by YaRN's attention factor; dsim scales the
        # whole score (right for a fully rotated head, as gpt-oss has)
        need(not args.uses_yarn, "rotary_dim", "the whole head when YaRN is on")
    if args.attn_type != "mla" and args.rotary_dim:
        need(
            args.rotary_dim % 2 == 0 and args.rotary_dim <= args.head_size,
            "rotary_dim",
            f"0 or an even integer <= head_dim={args.head_size}",
        )
    layers = args.window_layers
    need(
        isinstance(layers, tuple)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in layers),
        "window_layers",
        "a tuple of layer indices",
    )
    need(
        list(layers) == sorted(set(layers)) and all(0 <= i < args.n_layers for i in layers),
        "window_layers",
        f"sorted distinct layer indices in [0, n_layers={args.n_layers})",
    )
    need(
        bool(layers) == (args.sliding_window > 0),
        "window_layers",
        "non-empty exactly when sliding_window > 0",
    )
    if args.shared_expert_gate:
        need(
            args.n_shared_experts >= 1,
            "shared_expert_gate",
            "False when there is no shared expert (n_shared_experts = 0)",
        )
    for name in ("router_bias", "expert_bias"):
        need(
            not getattr(args, name) or args.n_routed_experts > 0,
            name,
            "False when there are no routed experts",
        )
    index = (args.index_n_heads, args.index_head_dim, args.index_topk)
    need(
        all(index) or not any(index),
        "index_topk",
        "set together with index_n_heads and index_head_dim (all > 0) or all 0",
    )
    if args.index_topk:
        need(
            args.attn_type == "mla" and args.q_lora_rank > 0,
            "index_topk",
            "0 unless attn_type='mla' with q_lora_rank > 0 (the indexer reads the query latent)",
        )
        need(
            args.qk_rope_head_dim <= args.index_head_dim,
            "index_head_dim",
            f">= qk_rope_head_dim={args.qk_rope_head_dim} (its first dims carry RoPE)",
        )
