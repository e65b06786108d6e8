"""Validation of ModelArgs: every field's allowed range, as ValueErrors naming the field.

`validate_core` checks the fields of DeepSeek's and Mixtral's models, `validate_family_fields`
those the other families need (Qwen2/3-MoE, OLMoE, DBRX, gpt-oss, GLM-4.5, DeepSeek-V3.2, Llama,
Mistral). ModelArgs.validate calls both with its `need(ok, field, allowed)`; they live here so
that dsim/config.py stays short. This module imports nothing of dsim, so dsim.config may import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    """A finite int or float (not a bool, not a string, not inf or NaN)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_core(args: Any, need: Callable[[bool, str, str], None]) -> None:
    """Raise (through `need`) for an invalid value of a field DeepSeek's and Mixtral's models use:
    sizes, routing, attention, RoPE/YaRN."""
    # a bool is an int to Python, but `dim = True` is no width
    positive = "vocab_size dim n_layers n_heads max_seq_len max_batch_size original_seq_len"
    counts = (
        "inter_dim moe_inter_dim n_dense_layers n_routed_experts n_shared_experts "
        "n_activated_experts n_expert_groups n_limited_groups q_lora_rank kv_lora_rank "
        "qk_nope_head_dim qk_rope_head_dim v_head_dim head_dim n_kv_heads n_mtp_layers"
    )
    for minimum, names in ((1, positive), (0, counts)):
        for name in names.split():
            v = getattr(args, name)
            need(_is_int(v) and v >= minimum, name, f"an integer >= {minimum}")
    for name, low, strict, note in (
        ("route_scale", 0, True, ""),
        ("capacity_factor", 0, False, " (0 disables token dropping)"),
        ("norm_eps", 0, True, ""),
        ("rope_theta", 1, True, ""),
        ("rope_factor", 1, False, ""),
        ("mscale", 0, False, ""),
        ("beta_fast", 0, True, ""),
        ("beta_slow", 0, True, ""),
    ):  # inf or NaN here turns every logit into NaN (or zero)
        v = getattr(args, name)
        ok = _is_real(v) and (v > low if strict else v >= low)
        need(ok, name, f"a finite number {'>' if strict else '>='} {low}{note}")
    need(args.beta_fast > args.beta_slow, "beta_slow", f"< beta_fast={args.beta_fast}")
    need(
        args.n_dense_layers <= args.n_layers,
        "n_dense_layers",
        f"between 0 and n_layers={args.n_layers}",
    )
    need(args.score_func in ("softmax", "sigmoid"), "score_func", "'softmax' or 'sigmoid'")
    need(args.group_score in ("top2_sum", "max"), "group_score", "'top2_sum' or 'max'")
    need(args.attn_type in ("mla", "mha", "gqa"), "attn_type", "'mla', 'mha' or 'gqa'")
    need(args.attn_impl in ("naive", "absorb"), "attn_impl", "'naive' or 'absorb'")
    need(args.expert_impl in ("grouped", "loop"), "expert_impl", "'grouped' or 'loop'")
    need(args.drop_policy in ("score", "position"), "drop_policy", "'score' or 'position'")
    need(
        args.route_norm is None or isinstance(args.route_norm, bool),
        "route_norm",
        "None, True or False",
    )
    need(isinstance(args.tie_embeddings, bool), "tie_embeddings", "True or False")
    need(isinstance(args.name, str), "name", "a string")
    need(args.n_dense_layers == args.n_layers or args.inter_dim >= 0, "inter_dim", ">= 0")
    need(
        args.n_dense_layers == 0 or args.inter_dim >= 1,
        "inter_dim",
        ">= 1 when there are dense layers",
    )
    if args.n_routed_experts > 0 and args.n_layers > args.n_dense_layers:
        need(args.moe_inter_dim >= 1, "moe_inter_dim", ">= 1 when there are MoE layers")
        need(
            1 <= args.n_activated_experts <= args.n_routed_experts,
            "n_activated_experts",
            f"between 1 and n_routed_experts={args.n_routed_experts}",
        )
        need(
            args.n_expert_groups >= 1 and args.n_routed_experts % args.n_expert_groups == 0,
            "n_expert_groups",
            f"a divisor of n_routed_experts={args.n_routed_experts}",
        )
        need(
            1 <= args.n_limited_groups <= args.n_expert_groups,
            "n_limited_groups",
            f"between 1 and n_expert_groups={args.n_expert_groups}",
        )
        per_group = args.n_routed_experts // args.n_expert_groups
        if args.n_expert_groups > 1:
            need(
                args.group_score == "max" or per_group >= 2,
                "n_expert_groups",
                "such that each group holds >= 2 experts (group score = sum of the top-2)",
            )
            need(
                args.n_limited_groups * per_group >= args.n_activated_experts,
                "n_limited_groups",
                ">= n_activated_experts / experts per group = "
                f"{args.n_activated_experts}/{per_group}",
            )
    elif args.n_layers > args.n_dense_layers:
        raise ValueError(
            "ModelArgs.n_routed_experts = 0 is invalid: must be >= 1 when n_dense_layers < n_layers"
        )
    if args.attn_type == "mla":
        need(args.kv_lora_rank >= 1, "kv_lora_rank", ">= 1 for MLA")
        need(
            args.qk_rope_head_dim >= 2 and args.qk_rope_head_dim % 2 == 0,
            "qk_rope_head_dim",
            "an even integer >= 2 for MLA",
        )
        need(args.qk_nope_head_dim >= 1, "qk_nope_head_dim", ">= 1 for MLA")
        need(args.v_head_dim >= 1, "v_head_dim", ">= 1 for MLA")
    else:
        need(
            args.head_size >= 2 and args.head_size % 2 == 0,
            "head_dim",
            "0 (dim // n_heads) or an even integer >= 2",
        )
        need(
            args.n_heads % args.kv_heads == 0,
            "n_kv_heads",
            f"a divisor of n_heads={args.n_heads}",
        )
        if args.attn_type == "mha":
            need(
                args.kv_heads == args.n_heads,
                "n_kv_heads",
                "0 or n_heads for MHA (use attn_type='gqa')",
            )


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
