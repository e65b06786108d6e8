"""Small-model settings with the other MoE families' options switched on (issue 15), shared by the
parameter and FLOP tests: each variant turns on several options at once, on top of a preset
scaled down by `dsim.config.scaled_down`."""

FAMILY_VARIANTS = {
    "qwen3-glm": dict(
        attn_type="gqa",
        head_dim=8,
        n_kv_heads=2,
        qkv_bias=True,
        qk_norm="head",
        rotary_dim=4,
        original_seq_len=64,  # partial rotary without YaRN (the model refuses the two together)
    ),
    "olmoe-dbrx": dict(
        attn_type="gqa",
        head_dim=8,
        n_kv_heads=2,
        qk_norm="proj",
        clip_qkv=8.0,
        norm_type="layernorm",
    ),
    "gpt-oss": dict(
        attn_type="gqa",
        head_dim=8,
        n_kv_heads=2,
        qkv_bias=True,
        o_bias=True,
        attn_sink=True,
        sliding_window=6,
        window_layers=(0,),
        router_bias=True,
        expert_bias=True,
        swiglu_limit=7.0,
    ),
    "qwen2-moe": dict(shared_expert_gate=True, n_shared_experts=1),
    "deepseek-v3.2": dict(
        attn_type="mla", q_lora_rank=16, index_n_heads=2, index_head_dim=8, index_topk=6
    ),
}
