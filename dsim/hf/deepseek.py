"""DeepSeek's families: the Hugging Face configs of DeepSeekMoE ("deepseek"), V2, V3, Kimi-K2 (V3's
architecture) and V3.2 (V3 plus the sparse-attention indexer), and DeepSeek's own
`inference/configs/*.json`, whose keys are DeepSeek's ModelArgs names (dsim's too).
"""

from __future__ import annotations

from typing import Any

from dsim.hf.families import _head_dim, _rope, _silu
from dsim.hf.keys import MISSING, Keys

DEEPSEEK_TYPES = ("deepseek", "deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek_v32")


# ----------------------------------------------------------------------------------------------
# DeepSeek (V1 MoE, V2, V3, Kimi-K2, V3.2)
# ----------------------------------------------------------------------------------------------
def read_deepseek(k: Keys, family: str) -> dict[str, Any]:
    """DeepSeekMoE ("deepseek", MHA), V2 and V3 (MLA), Kimi-K2 (V3's architecture) and V3.2
    (V3 plus the sparse-attention indexer)."""
    v1 = family == "deepseek"
    f: dict[str, Any] = dict(
        vocab_size=k.int("vocab_size", minimum=1),
        dim=k.int("hidden_size", minimum=1),
        inter_dim=k.int("intermediate_size"),
        moe_inter_dim=k.int("moe_intermediate_size"),
        n_layers=k.int("num_hidden_layers", minimum=1),
        n_dense_layers=k.int("first_k_dense_replace"),
        n_heads=k.int("num_attention_heads", minimum=1),
        n_routed_experts=k.int("n_routed_experts"),
        n_shared_experts=k.int("n_shared_experts", null=0),
        n_activated_experts=k.int("num_experts_per_tok"),
        max_seq_len=k.int("max_position_embeddings", minimum=1),
        norm_eps=k.number("rms_norm_eps"),
        tie_embeddings=k.flag("tie_word_embeddings", False),
        n_mtp_layers=k.int("num_nextn_predict_layers", 0),
    )
    _silu(k)
    k.choice("moe_layer_freq", (1,), 1)
    k.choice("attention_bias", (False,), False)
    k.choice("rope_interleave", (True,), True)
    default_score = "sigmoid" if family in ("deepseek_v3", "kimi_k2", "deepseek_v32") else "softmax"
    f["score_func"] = k.choice("scoring_func", ("softmax", "sigmoid"), default_score)
    f["route_scale"] = k.number("routed_scaling_factor", 1.0)
    f["route_norm"] = k.flag("norm_topk_prob", False if v1 else MISSING)
    method = k.choice(
        "topk_method",
        ("greedy", "group_limited_greedy", "noaux_tc"),
        "noaux_tc" if f["score_func"] == "sigmoid" else "greedy",
    )
    f["group_score"] = "max" if method == "group_limited_greedy" else "top2_sum"
    f["n_expert_groups"] = k.int("n_group", 1, minimum=1, null=1)
    f["n_limited_groups"] = k.int("topk_group", 1, minimum=1, null=1)
    kv_heads = k.int("num_key_value_heads", f["n_heads"], minimum=1)
    if v1 or not k.raw("kv_lora_rank", None):
        f.update(attn_type="mha", head_dim=_head_dim(k, f["dim"], f["n_heads"]))
        if kv_heads != f["n_heads"]:
            raise ValueError(
                f"{k.where}: num_key_value_heads = {kv_heads} is not supported for DeepSeek's MHA: "
                f"must equal num_attention_heads = {f['n_heads']}"
            )
    else:
        if kv_heads != f["n_heads"]:
            raise ValueError(
                f"{k.where} is contradictory: MLA needs num_key_value_heads == "
                f"num_attention_heads, got {kv_heads} and {f['n_heads']}"
            )
        k.ignore("head_dim")  # transformers' DeepseekV3Config sets it to qk_rope_head_dim
        f.update(
            attn_type="mla",
            q_lora_rank=k.int("q_lora_rank", null=0),  # null: a full-rank query projection
            kv_lora_rank=k.int("kv_lora_rank", minimum=1),
            qk_nope_head_dim=k.int("qk_nope_head_dim", minimum=1),
            qk_rope_head_dim=k.int("qk_rope_head_dim", minimum=2),
            v_head_dim=k.int("v_head_dim", minimum=1),
        )
    if family == "deepseek_v32":
        f.update(
            index_n_heads=k.int("index_n_heads", minimum=1),
            index_head_dim=k.int("index_head_dim", minimum=1),
            index_topk=k.int("index_topk", minimum=1),
        )
    f.update(_rope(k, f["max_seq_len"]))
    return f


# ----------------------------------------------------------------------------------------------
# DeepSeek's native inference/configs/*.json
# ----------------------------------------------------------------------------------------------
NATIVE_KEYS = ("vocab_size", "dim", "n_layers", "n_heads")


def is_native(cfg: dict[str, Any]) -> bool:
    """DeepSeek's own format: no model_type, DeepSeek's ModelArgs names."""
    return "model_type" not in cfg and all(key in cfg for key in NATIVE_KEYS)


def read_native(k: Keys) -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3 `inference/configs/*.json`: the field names are DeepSeek's ModelArgs
    names, which dsim's copy. Sizes are required; the switches default as DeepSeek's ModelArgs
    does (max_seq_len 16384, original_seq_len 4096, YaRN factor 40, ...), so the file means what
    DeepSeek's reference code makes of it. The reference builds no MTP module (n_mtp_layers 0)
    and gives the gate its balancing bias only at dim 7168 (V3); without it, groups are scored by
    their best expert (group_score "max")."""
    sizes = (
        "vocab_size",
        "dim",
        "inter_dim",
        "moe_inter_dim",
        "n_layers",
        "n_dense_layers",
        "n_heads",
        "n_routed_experts",
        "n_shared_experts",
        "n_activated_experts",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
    )
    f: dict[str, Any] = {name: k.int(name) for name in sizes}
    f.update(
        n_expert_groups=k.int("n_expert_groups", 1, minimum=1),
        n_limited_groups=k.int("n_limited_groups", 1, minimum=1),
        score_func=k.choice("score_func", ("softmax", "sigmoid"), "softmax"),
        route_scale=k.number("route_scale", 1.0),
        q_lora_rank=k.int("q_lora_rank", 0),
        max_seq_len=k.int("max_seq_len", 4096 * 4, minimum=1),
        original_seq_len=k.int("original_seq_len", 4096, minimum=1),
        rope_theta=k.number("rope_theta", 10000.0),
        rope_factor=k.number("rope_factor", 40),
        beta_fast=k.int("beta_fast", 32),
        beta_slow=k.int("beta_slow", 1),
        mscale=k.number("mscale", 1.0),
        max_batch_size=k.int("max_batch_size", 8, minimum=1),
        attn_type="mla",
        group_score="top2_sum" if f["dim"] == 7168 else "max",
    )
    if any(k.has(key) for key in ("index_n_heads", "index_head_dim", "index_topk")):
        f.update(
            index_n_heads=k.int("index_n_heads", minimum=1),
            index_head_dim=k.int("index_head_dim", minimum=1),
            index_topk=k.int("index_topk", minimum=1),
        )
    k.choice("dtype", ("bf16", "fp8", "fp4"), "bf16")  # weight storage, not the math
    return f
