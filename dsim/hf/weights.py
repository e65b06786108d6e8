"""Weight names of Hugging Face transformers' layouts, mapped to dsim's.

dsim keeps DeepSeek's own module names (`wq_a`, `wkv_b`, `ffn.gate`, ...); transformers renames them
(`q_a_proj`, `kv_b_proj`, `mlp.gate`, ...) and stores the routed experts as fused 3-D tensors
(`gate_up_proj` [E, 2I, D], `down_proj` [E, D, I]; gpt-oss transposed and with gate and up
interleaved). DBRX has its own names (`transformer.blocks.i.norm_attn_norm.attn.Wqkv`, ...).

One more difference is the RoPE layout. dsim rotates adjacent pairs (x0, x1), (x2, x3), ... as
DeepSeek's and Meta's reference code do. transformers' Llama-style models rotate the two halves
(x_i, x_{i + r/2}) instead, with their checkpoints permuted to match; DeepSeek's MLA checkpoints
keep the reference layout (rope_interleave), but V3.2's indexer uses the halves. So the rows of the
rotated projections (and of their biases and qk-norm weights) are permuted back here; attention
scores are unchanged by it.

This module is the one place that knows the mapping, used by the equivalence tests and by anyone
loading a real checkpoint.
"""

from __future__ import annotations

import torch

from dsim.config import ModelArgs

# transformers' per-layer module -> dsim's (for 2-D weights, biases and norms)
_LAYER_NAMES = {
    "self_attn.q_proj": "attn.wq",
    "self_attn.k_proj": "attn.wk",
    "self_attn.v_proj": "attn.wv",
    "self_attn.q_norm": "attn.q_norm",
    "self_attn.k_norm": "attn.k_norm",
    "self_attn.q_a_proj": "attn.wq_a",
    "self_attn.q_a_layernorm": "attn.q_norm",
    "self_attn.q_b_proj": "attn.wq_b",
    "self_attn.kv_a_proj_with_mqa": "attn.wkv_a",
    "self_attn.kv_a_layernorm": "attn.kv_norm",
    "self_attn.kv_b_proj": "attn.wkv_b",
    "self_attn.o_proj": "attn.wo",
    "self_attn.indexer.wq_b": "attn.indexer.wq_b",
    "self_attn.indexer.wk": "attn.indexer.wk",
    "self_attn.indexer.k_norm": "attn.indexer.k_norm",
    "self_attn.indexer.weights_proj": "attn.indexer.weights_proj",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn.w1",
    "mlp.up_proj": "ffn.w3",
    "mlp.down_proj": "ffn.w2",
    "mlp.gate": "ffn.gate",
    "mlp.shared_experts.gate_proj": "ffn.shared_experts.w1",
    "mlp.shared_experts.up_proj": "ffn.shared_experts.w3",
    "mlp.shared_experts.down_proj": "ffn.shared_experts.w2",
    "mlp.shared_expert.gate_proj": "ffn.shared_experts.w1",
    "mlp.shared_expert.up_proj": "ffn.shared_experts.w3",
    "mlp.shared_expert.down_proj": "ffn.shared_experts.w2",
    "mlp.shared_expert_gate": "ffn.shared_gate",
}
# (module, leaf) pairs renamed as a whole
_LEAF_NAMES = {
    ("mlp.gate", "e_score_correction_bias"): "ffn.gate.bias",
    ("mlp.router", "weight"): "ffn.gate.weight",
    ("mlp.router", "bias"): "ffn.gate.logit_bias",
    ("self_attn", "sinks"): "attn.sink",
}


def from_hf_state_dict(hf: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Convert a transformers `*ForCausalLM` state dict (any family dsim.hf.config reads) to
    `dsim.model.Transformer` names, shapes and RoPE layout."""
    if any(name.startswith("transformer.") for name in hf):
        hf = _dbrx_names(hf, args)
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
            if module == "mlp.experts":
                out.update({prefix + k: v for k, v in _experts(leaf, t, args).items()})
            elif (module, leaf) in _LEAF_NAMES:
                out[prefix + _LEAF_NAMES[module, leaf]] = t
            elif module in _LAYER_NAMES:
                out[prefix + _LAYER_NAMES[module] + "." + leaf] = t
            else:
                raise ValueError(f"unexpected Hugging Face weight {name!r}")
        else:
            raise ValueError(f"unexpected Hugging Face weight {name!r}")
    for name in [n for n in out if n.endswith("ffn.gate.weight")]:
        # dsim's gate always has DeepSeek-V3's balancing bias; families without one get zeros
        out.setdefault(name[: -len("weight")] + "bias", torch.zeros(len(out[name])))
    return _to_adjacent_pairs(out, args)


def _experts(leaf: str, t: torch.Tensor, args: ModelArgs) -> dict[str, torch.Tensor]:
    """Fused expert tensors -> dsim's w1, w3 [E, I, D], w2 [E, D, I] (and gpt-oss's biases)."""
    if args.expert_bias:  # gpt-oss: gate_up_proj [E, D, 2I] with gate, up interleaved
        if leaf == "gate_up_proj":
            return {
                "ffn.experts.w1": t[..., ::2].transpose(1, 2),
                "ffn.experts.w3": t[..., 1::2].transpose(1, 2),
            }
        if leaf == "gate_up_proj_bias":
            return {"ffn.experts.b1": t[..., ::2], "ffn.experts.b3": t[..., 1::2]}
        if leaf == "down_proj":  # [E, I, D]
            return {"ffn.experts.w2": t.transpose(1, 2)}
        if leaf == "down_proj_bias":
            return {"ffn.experts.b2": t}
    elif leaf == "gate_up_proj":
        w1, w3 = t.chunk(2, dim=1)  # [E, 2I, D] -> 2 x [E, I, D]
        return {"ffn.experts.w1": w1, "ffn.experts.w3": w3}
    elif leaf == "down_proj":
        return {"ffn.experts.w2": t}  # [E, D, I]
    raise ValueError(f"unexpected Hugging Face expert weight {leaf!r}")


def _dbrx_names(hf: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """DBRX's names -> the Llama-style names above (Wqkv split, experts fused as transformers 5
    stores the others)."""
    E, I, D = args.n_routed_experts, args.moe_inter_dim, args.dim
    q_width, kv_width = args.n_heads * args.head_size, args.kv_heads * args.head_size
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}  # layer prefix -> {"w1": .., "v1": ..}
    for name, t in hf.items():
        if name == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = t
        elif name == "transformer.norm_f.weight":
            out["model.norm.weight"] = t
        elif name == "lm_head.weight":
            out[name] = t
        elif name.startswith("transformer.blocks."):
            _, _, i, rest = name.split(".", 3)
            p = f"model.layers.{i}."
            if rest == "norm_attn_norm.attn.Wqkv.weight":
                q, k, v = t.split([q_width, kv_width, kv_width], dim=0)
                out[p + "self_attn.q_proj.weight"], out[p + "self_attn.k_proj.weight"] = q, k
                out[p + "self_attn.v_proj.weight"] = v
            elif rest in ("ffn.experts.mlp.w1", "ffn.experts.mlp.v1"):
                pending.setdefault(p, {})[rest[-2:]] = t.view(E, I, D)  # gate (w1), up (v1)
            elif rest == "ffn.experts.mlp.w2":
                out[p + "mlp.experts.down_proj"] = t.view(E, I, D).transpose(1, 2)
            else:
                renamed = {
                    "norm_attn_norm.norm_1.weight": "input_layernorm.weight",
                    "norm_attn_norm.norm_2.weight": "post_attention_layernorm.weight",
                    "norm_attn_norm.attn.out_proj.weight": "self_attn.o_proj.weight",
                    "ffn.router.layer.weight": "mlp.gate.weight",
                }
                if rest not in renamed:
                    raise ValueError(f"unexpected Hugging Face weight {name!r}")
                out[p + renamed[rest]] = t
        else:
            raise ValueError(f"unexpected Hugging Face weight {name!r}")
    for p, parts in pending.items():
        if set(parts) != {"w1", "v1"}:
            raise ValueError(f"DBRX weights of {p} lack ffn.experts.mlp.w1 or v1")
        out[p + "mlp.experts.gate_up_proj"] = torch.cat([parts["w1"], parts["v1"]], dim=1)
    return out


def _pair_order(head: int, rotary: int, n_heads: int) -> torch.Tensor:
    """Row order that turns halves layout into adjacent pairs: within each head of width `head`,
    dsim's dim 2j is transformers' dim j and 2j + 1 is j + rotary/2 (j < rotary/2); the dims past
    `rotary` stay in place."""
    j = torch.arange(rotary)
    one = torch.cat([j // 2 + (j % 2) * (rotary // 2), torch.arange(rotary, head)])
    return torch.cat([h * head + one for h in range(n_heads)])


def _to_adjacent_pairs(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Permute the rows that RoPE rotates from transformers' halves layout to dsim's pairs."""
    orders: dict[str, torch.Tensor] = {}
    if args.attn_type != "mla":
        hd, rd = args.head_size, args.rope_dim
        q, kv = _pair_order(hd, rd, args.n_heads), _pair_order(hd, rd, args.kv_heads)
        per_head = _pair_order(hd, rd, 1)
        orders.update(
            {"attn.wq.weight": q, "attn.wq.bias": q, "attn.wk.weight": kv, "attn.wk.bias": kv}
        )
        if args.qk_norm == "head":
            orders.update({"attn.q_norm.weight": per_head, "attn.k_norm.weight": per_head})
        elif args.qk_norm == "proj":
            orders.update({"attn.q_norm.weight": q, "attn.k_norm.weight": kv})
    if args.has_indexer:
        di, dr = args.index_head_dim, args.qk_rope_head_dim
        one = _pair_order(di, dr, 1)
        orders.update(
            {
                "attn.indexer.wq_b.weight": _pair_order(di, dr, args.index_n_heads),
                "attn.indexer.wk.weight": one,
                "attn.indexer.k_norm.weight": one,
                "attn.indexer.k_norm.bias": one,
            }
        )
    out = {}
    for name, t in sd.items():
        suffix = name.split(".", 2)[-1] if name.startswith("layers.") else None
        out[name] = t[orders[suffix]] if suffix in orders else t
    return out
