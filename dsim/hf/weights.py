"""Weight names of Hugging Face transformers' DeepSeek-V3 layout, mapped to dsim's.

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
    "self_attn.q_proj": "attn.wq",
    "self_attn.q_a_proj": "attn.wq_a",
    "self_attn.q_a_layernorm": "attn.q_norm",
    "self_attn.q_b_proj": "attn.wq_b",
    "self_attn.kv_a_proj_with_mqa": "attn.wkv_a",
    "self_attn.kv_a_layernorm": "attn.kv_norm",
    "self_attn.kv_b_proj": "attn.wkv_b",
    "self_attn.o_proj": "attn.wo",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.w1",
    "mlp.up_proj": "ffn.w3",
    "mlp.down_proj": "ffn.w2",
    "mlp.gate": "ffn.gate",
    "mlp.shared_experts.gate_proj": "ffn.shared_experts.w1",
    "mlp.shared_experts.up_proj": "ffn.shared_experts.w3",
    "mlp.shared_experts.down_proj": "ffn.shared_experts.w2",
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
                w1, w3 = t.chunk(2, dim=1)  # [E, 2I, D] -> 2 x [E, I, D]
                out[prefix + "ffn.experts.w1"], out[prefix + "ffn.experts.w3"] = w1, w3
            elif module == "mlp.experts" and leaf == "down_proj":
                out[prefix + "ffn.experts.w2"] = t  # [E, D, I]
            elif module == "mlp.gate" and leaf == "e_score_correction_bias":
                out[prefix + "ffn.gate.bias"] = t
            elif module in _LAYER_NAMES:
                out[prefix + _LAYER_NAMES[module] + "." + leaf] = t
            else:
                raise ValueError(f"unexpected Hugging Face weight {name!r}")
        else:
            raise ValueError(f"unexpected Hugging Face weight {name!r}")
    return out
