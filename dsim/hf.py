"""Weights to and from Hugging Face transformers' DeepSeek-V3 layout.

dsim keeps DeepSeek's own module names (`wq_a`, `wkv_b`, `ffn.gate`, ...); transformers renames them
(`q_a_proj`, `kv_b_proj`, `mlp.gate`, ...) and stores the routed experts as fused 3-D tensors
(`gate_up_proj` [E, 2I, D], `down_proj` [E, D, I]). This module is the one place that knows the
mapping, used by the equivalence test and by anyone loading a real checkpoint.
"""
from __future__ import annotations

import torch

from dsim.config import ModelArgs

# transformers' per-layer suffix -> dsim's (for 2-D weights and norms)
_LAYER_NAMES = {
    "self_attn.q_proj": "attn.wq", "self_attn.q_a_proj": "attn.wq_a", "self_attn.q_a_layernorm": "attn.q_norm",
    "self_attn.q_b_proj": "attn.wq_b", "self_attn.kv_a_proj_with_mqa": "attn.wkv_a",
    "self_attn.kv_a_layernorm": "attn.kv_norm", "self_attn.kv_b_proj": "attn.wkv_b", "self_attn.o_proj": "attn.wo",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.w1", "mlp.up_proj": "ffn.w3", "mlp.down_proj": "ffn.w2",
    "mlp.gate": "ffn.gate", "mlp.shared_experts.gate_proj": "ffn.shared_experts.w1",
    "mlp.shared_experts.up_proj": "ffn.shared_experts.w3", "mlp.shared_experts.down_proj": "ffn.shared_experts.w2",
}


def from_hf_state_dict(hf: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Convert a `DeepseekV3ForCausalLM` state dict to `dsim.model.Transformer` names and shapes."""
    out: dict[str, torch.Tensor] = {}
    for name, t in hf.items():
        if name == "model.embed_tokens.weight":
            out["embed.weight"] = t
        elif name == "model.norm.weight":
            out["norm.weight"] = t
        elif name == "lm_head.weight":
            out["head.weight"] = t
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, leaf = rest.rsplit(".", 1)
            prefix = f"layers.{i}."
            if module == "mlp.experts" and leaf == "gate_up_proj":
                w1, w3 = t.chunk(2, dim=1)                        # [E, 2I, D] -> 2 x [E, I, D]
                out[prefix + "ffn.experts.w1"], out[prefix + "ffn.experts.w3"] = w1, w3
            elif module == "mlp.experts" and leaf == "down_proj":
                out[prefix + "ffn.experts.w2"] = t                # [E, D, I]
            elif module == "mlp.gate" and leaf == "e_score_correction_bias":
                out[prefix + "ffn.gate.bias"] = t
            elif module in _LAYER_NAMES:
                out[prefix + _LAYER_NAMES[module] + "." + leaf] = t
            else:
                raise ValueError(f"unexpected Hugging Face weight {name!r}")
        else:
            raise ValueError(f"unexpected Hugging Face weight {name!r}")
    return out


def hf_config(args: ModelArgs) -> dict:
    """A `DeepseekV3Config` keyword dict describing the same architecture as `args` (MLA only)."""
    if args.attn_type != "mla":
        raise ValueError(f"ModelArgs.attn_type = {args.attn_type!r}: the DeepSeek-V3 layout needs 'mla'")
    cfg = dict(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.inter_dim,
        moe_intermediate_size=args.moe_inter_dim, num_hidden_layers=args.n_layers,
        first_k_dense_replace=args.n_dense_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads, n_routed_experts=args.n_routed_experts,
        n_shared_experts=args.n_shared_experts, num_experts_per_tok=args.n_activated_experts,
        n_group=args.n_expert_groups, topk_group=args.n_limited_groups, routed_scaling_factor=args.route_scale,
        norm_topk_prob=args.renormalize, q_lora_rank=args.q_lora_rank or None, kv_lora_rank=args.kv_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim, qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim, max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps,
        tie_word_embeddings=args.tie_embeddings, rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
    )
    if args.uses_yarn:
        cfg["rope_parameters"] = {
            "rope_type": "yarn", "rope_theta": args.rope_theta, "factor": args.rope_factor,
            "original_max_position_embeddings": args.original_seq_len, "beta_fast": args.beta_fast,
            "beta_slow": args.beta_slow, "mscale": args.mscale, "mscale_all_dim": args.mscale,
        }
    return cfg
