"""Readers of the GQA families and DBRX, and the pieces every reader shares (RoPE/YaRN, sliding
windows, head_dim): a `config.json` -> ModelArgs fields. DeepSeek's families live in
dsim.hf.deepseek.

Each reader takes a `Keys` (dsim.hf.keys) and returns the ModelArgs keyword arguments. Sizes are
required; a behaviour switch that the config omits takes the default of the format's own reader
(transformers' config class for that model_type, DeepSeek's `ModelArgs` for the native format),
written out here next to the key. A key value dsim cannot represent is refused, naming the key.

    deepseek, deepseek_v2, deepseek_v3, kimi_k2, deepseek_v32    dsim.hf.deepseek.read_deepseek
    llama, mistral, mixtral, qwen2_moe, qwen3_moe, olmoe,
    gpt_oss, glm4_moe                                            read_gqa (per-family switches)
    dbrx                                                         read_dbrx (nested configs)
    DeepSeek's inference/configs/*.json (no model_type)          dsim.hf.deepseek.read_native
"""

from __future__ import annotations

from typing import Any

from dsim.hf.keys import Keys

GQA_TYPES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "gpt_oss",
    "glm4_moe",
)


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------
def _rope(k: Keys, max_seq_len: int, theta: Any = None) -> dict[str, Any]:
    """rope_theta and YaRN from `rope_theta` and `rope_scaling` / `rope_parameters` (transformers 5
    moves rope_theta into rope_parameters). No scaling: original_seq_len = max_seq_len."""
    scaling = None
    for key in ("rope_scaling", "rope_parameters"):
        value = k.raw(key, None)
        if value is not None:
            if scaling is not None:
                raise ValueError(f"{k.where}: give rope_scaling or rope_parameters, not both")
            scaling = k.nested(key)
    out: dict[str, Any] = {}
    if theta is not None:
        out["rope_theta"] = theta
    elif scaling is not None and scaling.has("rope_theta"):
        out["rope_theta"] = scaling.number("rope_theta")
        k.ignore("rope_theta")
    else:
        out["rope_theta"] = k.number("rope_theta")
    kind = "default"
    if scaling is not None:
        if scaling.has("rope_type") and scaling.has("type"):
            scaling.ignore("type")
        key = "rope_type" if scaling.has("rope_type") else "type"
        kind = scaling.choice(key, ("default", "yarn", "llama3"))
        scaling.ignore("partial_rotary_factor")  # read by the family reader (GLM-4.5)
    if kind == "default":
        out["original_seq_len"] = max_seq_len
        if scaling is not None:
            scaling.finish()
        return out
    if kind == "llama3":  # Llama 3.1: no default for any of its four numbers
        out.update(
            rope_scaling="llama3",
            rope_factor=scaling.number("factor"),
            original_seq_len=scaling.int("original_max_position_embeddings", minimum=1),
            low_freq_factor=scaling.number("low_freq_factor"),
            high_freq_factor=scaling.number("high_freq_factor"),
        )
        scaling.finish()
        return out
    mscale = scaling.number("mscale", 1.0)
    mscale_all_dim = scaling.number("mscale_all_dim", mscale)
    if mscale != mscale_all_dim:  # transformers then scales cos/sin as well: not represented
        raise ValueError(
            f"{scaling.where}: mscale = {mscale} differs from mscale_all_dim = {mscale_all_dim}; "
            "dsim applies one YaRN mscale (DeepSeek's rule)"
        )
    scaling.choice("attention_factor", (None,), None)
    out.update(
        rope_factor=scaling.number("factor"),
        original_seq_len=scaling.int("original_max_position_embeddings", minimum=1),
        beta_fast=scaling.number("beta_fast", 32),
        beta_slow=scaling.number("beta_slow", 1),
        mscale=mscale,
        rope_truncate=scaling.flag("truncate", True),
    )
    for name in ("beta_fast", "beta_slow"):
        if out[name] == int(out[name]):
            out[name] = int(out[name])
    scaling.finish()
    return out


def _silu(k: Keys, key: str = "hidden_act") -> None:
    k.choice(key, ("silu",), "silu")


def _moe_every_layer(k: Keys) -> None:
    """Qwen's decoder_sparse_step / mlp_only_layers: dsim places MoE in every layer here."""
    k.choice("decoder_sparse_step", (1,), 1)
    layers = k.raw("mlp_only_layers", [])
    if layers not in ([], None):
        raise ValueError(f"{k.where}: mlp_only_layers = {layers!r} is not supported: use []")


def _window(k: Keys, n_layers: int, default_types: list[str] | None = None) -> dict[str, Any]:
    """sliding_window and layer_types -> sliding_window, window_layers."""
    types = k.raw("layer_types", None) or default_types
    window = k.int("sliding_window", None, minimum=1, null=None)
    if types is None:
        if window is None:
            return {}
        return dict(sliding_window=window, window_layers=tuple(range(n_layers)))
    if not isinstance(types, list) or len(types) != n_layers:
        raise ValueError(f"{k.where}: layer_types must list num_hidden_layers={n_layers} entries")
    for t in types:
        if t not in ("sliding_attention", "full_attention"):
            raise ValueError(
                f"{k.where}: layer_types entry {t!r} is not supported: dsim reads "
                "'sliding_attention' or 'full_attention'"
            )
    layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    if layers and window is None:
        raise ValueError(f"{k.where}: layer_types has sliding layers but sliding_window is null")
    return dict(sliding_window=window, window_layers=layers) if layers else {}


def _head_dim(k: Keys, dim: int, n_heads: int) -> int:
    """head_dim, or hidden_size / num_attention_heads when absent (it must divide)."""
    head_dim = k.int("head_dim", None, minimum=1, null=None)
    if head_dim is None:
        if dim % n_heads:
            raise ValueError(
                f"{k.where}: num_attention_heads = {n_heads} does not divide hidden_size = "
                f"{dim} and head_dim is not given"
            )
        head_dim = dim // n_heads
    return head_dim


# ----------------------------------------------------------------------------------------------
# GQA families
# ----------------------------------------------------------------------------------------------
def read_gqa(k: Keys, family: str) -> dict[str, Any]:
    """Llama, Mistral, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, gpt-oss and GLM-4.5."""
    f: dict[str, Any] = dict(
        vocab_size=k.int("vocab_size", minimum=1),
        dim=k.int("hidden_size", minimum=1),
        n_layers=k.int("num_hidden_layers", minimum=1),
        n_heads=k.int("num_attention_heads", minimum=1),
        max_seq_len=k.int("max_position_embeddings", minimum=1),
        norm_eps=k.number("rms_norm_eps"),
        tie_embeddings=k.flag("tie_word_embeddings", False),
    )
    f["head_dim"] = _head_dim(k, f["dim"], f["n_heads"])
    kv = k.int("num_key_value_heads", minimum=1)
    f["attn_type"] = "mha" if kv == f["n_heads"] else "gqa"
    f["n_kv_heads"] = 0 if kv == f["n_heads"] else kv
    _silu(k)
    n = f["n_layers"]
    moe = dict(n_dense_layers=0, inter_dim=0, n_shared_experts=0, score_func="softmax")
    if family in ("llama", "mistral"):
        f.update(
            inter_dim=k.int("intermediate_size", minimum=1),
            n_dense_layers=n,
            n_routed_experts=0,
            n_shared_experts=0,
            n_activated_experts=0,
            moe_inter_dim=0,
        )
        if family == "llama":
            f["qkv_bias"] = f["o_bias"] = k.flag("attention_bias", False)
            k.choice("mlp_bias", (False,), False)
        else:
            f.update(_window(k, n))
    elif family == "mixtral":
        f.update(
            moe,
            moe_inter_dim=k.int("intermediate_size", minimum=1),
            n_routed_experts=k.int("num_local_experts", minimum=1),
            n_activated_experts=k.int("num_experts_per_tok", minimum=1),
            route_norm=True,  # softmax over the top-k logits
        )
        f.update(_window(k, n))
    elif family in ("qwen2_moe", "qwen3_moe", "olmoe"):
        f.update(
            moe,
            moe_inter_dim=k.int(
                "moe_intermediate_size" if family != "olmoe" else "intermediate_size"
            ),
            n_routed_experts=k.int("num_experts", minimum=1),
            n_activated_experts=k.int("num_experts_per_tok", minimum=1),
            route_norm=k.flag("norm_topk_prob", False),
        )
        if family == "olmoe":
            clip = k.raw("clip_qkv", None)  # null: no clipping
            f.update(qk_norm="proj", clip_qkv=0.0 if clip is None else k.number("clip_qkv"))
            f["qkv_bias"] = f["o_bias"] = k.flag("attention_bias", False)
        else:
            _moe_every_layer(k)
            k.ignore(
                "intermediate_size"
            )  # the dense FFN of mlp_only_layers, of which there are none
            if k.flag("use_sliding_window", False):
                raise ValueError(f"{k.where}: use_sliding_window = true is not supported")
            k.ignore("sliding_window", "max_window_layers", "layer_types")
        if family == "qwen2_moe":
            f["qkv_bias"] = k.flag("qkv_bias", True)
            f.update(_gated_shared_expert(k, f["moe_inter_dim"]))
        if family == "qwen3_moe":
            f["qk_norm"] = "head"
            f["qkv_bias"] = f["o_bias"] = k.flag("attention_bias", False)
    elif family == "gpt_oss":
        f.update(
            moe,
            moe_inter_dim=k.int("intermediate_size", minimum=1),
            n_routed_experts=k.int("num_local_experts", minimum=1),
            n_activated_experts=k.int("num_experts_per_tok", minimum=1),
            route_norm=True,  # softmax over the top-k logits
            attn_sink=True,
            router_bias=True,
            expert_bias=True,
            swiglu_limit=k.number("swiglu_limit", 7.0),
        )
        f["qkv_bias"] = f["o_bias"] = k.flag("attention_bias", True)
        k.choice("swiglu_alpha", (1.702,), 1.702)
        # openai's own names, duplicated in the published config: they must agree
        k.choice("experts_per_token", (f["n_activated_experts"],), f["n_activated_experts"])
        default_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        f.update(_window(k, n, default_types))
        if not k.has("rope_scaling") and not k.has("rope_parameters"):
            raise ValueError(f"{k.where}: required key 'rope_scaling' is missing (gpt-oss: YaRN)")
    elif family == "glm4_moe":
        f.update(
            inter_dim=k.int("intermediate_size", minimum=1),
            moe_inter_dim=k.int("moe_intermediate_size", minimum=1),
            n_dense_layers=k.int("first_k_dense_replace"),
            n_routed_experts=k.int("n_routed_experts", minimum=1),
            n_shared_experts=k.int("n_shared_experts"),
            n_activated_experts=k.int("num_experts_per_tok", minimum=1),
            n_expert_groups=k.int("n_group", 1, minimum=1),
            n_limited_groups=k.int("topk_group", 1, minimum=1),
            route_scale=k.number("routed_scaling_factor", 1.0),
            route_norm=k.flag("norm_topk_prob", True),
            score_func="sigmoid",  # with a balancing bias (e_score_correction_bias), as V3
            n_mtp_layers=_mtp_depth(k),
            qkv_bias=k.flag("attention_bias", False),
            qk_norm="head" if k.flag("use_qk_norm", False) else "none",
        )
        factor = _partial_rotary(k)
        rotary = f["head_dim"] * factor
        if rotary != int(rotary) or int(rotary) % 2:
            raise ValueError(
                f"{k.where}: partial_rotary_factor = {factor} gives {rotary} rotary dims of "
                f"head_dim = {f['head_dim']}: must be an even integer"
            )
        f["rotary_dim"] = 0 if int(rotary) == f["head_dim"] else int(rotary)
    f.update(_rope(k, f["max_seq_len"]))
    if family == "gpt_oss":
        k.choice("initial_context_length", (f["original_seq_len"],), f["original_seq_len"])
    return f


def _mtp_depth(k: Keys) -> int:
    """GLM-4.5's MTP depth: num_nextn_predict_layers as published, or num_mtp_layers as
    transformers 5 writes it (both given: they must agree); neither: 0."""
    published = k.int("num_nextn_predict_layers", None, null=None)
    written = k.int("num_mtp_layers", None, null=None)
    if published is not None and written is not None and published != written:
        raise ValueError(
            f"{k.where} is contradictory: num_nextn_predict_layers = {published} but "
            f"num_mtp_layers = {written}"
        )
    return next((d for d in (published, written) if d is not None), 0)


def _partial_rotary(k: Keys) -> float:
    """GLM-4.5's partial_rotary_factor, top level or in rope_parameters (transformers 5)."""
    rope = k.cfg.get("rope_parameters") or {}
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        k.ignore("partial_rotary_factor")
        return Keys(rope, f"{k.where}: rope_parameters").number("partial_rotary_factor")
    return k.number("partial_rotary_factor", 0.5)


def _gated_shared_expert(k: Keys, moe_inter_dim: int) -> dict[str, Any]:
    """Qwen2-MoE's shared expert of width shared_expert_intermediate_size, gated by a sigmoid:
    n_shared_experts = width / moe_inter_dim (it must divide)."""
    width = k.int("shared_expert_intermediate_size")
    if width == 0:
        return {}
    if moe_inter_dim == 0 or width % moe_inter_dim:
        raise ValueError(
            f"{k.where}: shared_expert_intermediate_size = {width} is not a multiple of "
            f"moe_intermediate_size = {moe_inter_dim}: dsim sizes the shared expert as "
            "n_shared_experts * moe_inter_dim"
        )
    return dict(n_shared_experts=width // moe_inter_dim, shared_expert_gate=True)


# ----------------------------------------------------------------------------------------------
# DBRX
# ----------------------------------------------------------------------------------------------
def read_dbrx(k: Keys) -> dict[str, Any]:
    """Databricks' DBRX: fine-grained experts, GQA with clip_qkv, LayerNorm without bias."""
    attn, ffn = k.nested("attn_config"), k.nested("ffn_config")
    f: dict[str, Any] = dict(
        vocab_size=k.int("vocab_size", minimum=1),
        dim=k.int("d_model", minimum=1),
        n_layers=k.int("n_layers", minimum=1),
        n_heads=k.int("n_heads", minimum=1),
        max_seq_len=k.int("max_seq_len", minimum=1),
        tie_embeddings=k.flag("tie_word_embeddings", False),
        norm_type="layernorm",
        norm_eps=1e-5,  # nn.LayerNorm's default, which DBRX uses
        n_dense_layers=0,
        inter_dim=0,
        n_shared_experts=0,
        score_func="softmax",
        moe_inter_dim=ffn.int("ffn_hidden_size", minimum=1),
        n_routed_experts=ffn.int("moe_num_experts", minimum=1),
        n_activated_experts=ffn.int("moe_top_k", minimum=1),
    )
    f["head_dim"] = _head_dim(Keys({}, k.where), f["dim"], f["n_heads"])
    kv = attn.int("kv_n_heads", minimum=1)
    f["attn_type"] = "mha" if kv == f["n_heads"] else "gqa"
    f["n_kv_heads"] = 0 if kv == f["n_heads"] else kv
    clip = attn.raw("clip_qkv", None)
    f["clip_qkv"] = 0.0 if clip is None else attn.number("clip_qkv")
    p = ffn.raw("moe_normalize_expert_weights", 1)
    if p not in (None, 1, 1.0):  # an Lp renormalisation with p != 1 is not a sum
        raise ValueError(
            f"{ffn.where}: moe_normalize_expert_weights = {p!r} is not supported: dsim reads 1 "
            "(renormalise to sum 1) or null"
        )
    f["route_norm"] = p is not None
    act = ffn.raw("ffn_act_fn", None)
    if act not in (None, {"name": "silu"}):
        raise ValueError(f"{ffn.where}: ffn_act_fn = {act!r} is not supported: use silu")
    ffn.ignore("moe_jitter_eps", "moe_loss_weight", "uniform_expert_assignment")
    attn.ignore("attn_pdrop")
    for block in (attn, ffn):  # PretrainedConfig's default in a sub-config: not the model's
        if block.has("tie_word_embeddings"):
            block.ignore("tie_word_embeddings")
    theta = attn.number("rope_theta") if attn.has("rope_theta") else None
    f.update(_rope(k, f["max_seq_len"], theta))
    attn.finish()
    ffn.finish()
    return f
