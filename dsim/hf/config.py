"""Hugging Face `config.json` to and from ModelArgs.

args_from_hf_config reads a config of the DeepSeek-V2/V3 or Mixtral families
(ModelArgs.from_hf_config is its public entry point); hf_config writes the `DeepseekV3Config`
keywords of a ModelArgs (MLA only), which the equivalence test with transformers builds its model
from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dsim.config import ModelArgs

# HF key -> ModelArgs field, for the DeepSeek-V2/V3 and Mixtral families.
_HF_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "intermediate_size": "inter_dim",
    "moe_intermediate_size": "moe_inter_dim",
    "num_hidden_layers": "n_layers",
    "first_k_dense_replace": "n_dense_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "n_routed_experts": "n_routed_experts",
    "num_local_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "n_group": "n_expert_groups",
    "topk_group": "n_limited_groups",
    "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale",
    "norm_topk_prob": "route_norm",
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "head_dim": "head_dim",
    "max_position_embeddings": "max_seq_len",
    "rope_theta": "rope_theta",
    "num_nextn_predict_layers": "n_mtp_layers",
    "tie_word_embeddings": "tie_embeddings",
    "rms_norm_eps": "norm_eps",
}
# Keys that carry no architecture (training, tokens, serialization) and are ignored.
_HF_IGNORED = {
    "architectures",
    "auto_map",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
    "use_cache",
    "attention_bias",
    "attention_dropout",
    "hidden_act",
    "pretraining_tp",
    "aux_loss_alpha",
    "seq_aux",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
    "sliding_window",
    "quantization_config",
    "ep_size",
    "moe_layer_freq",
    "topk_method",
    "rope_scaling",
    "rope_parameters",
    "rope_interleave",
    "_name_or_path",
    "max_window_layers",
    "use_sliding_window",
    "id2label",
    "label2id",
    "return_dict",
    "tokenizer_class",
}
_HF_FAMILIES = {"deepseek_v2", "deepseek_v3", "deepseek", "mixtral"}


def args_from_hf_config(src: str | Path | dict[str, Any], **overrides: Any) -> ModelArgs:
    """ModelArgs from a Hugging Face `config.json` of the DeepSeek-V2/V3 or Mixtral families: a path
    to the file or to its directory, or the parsed dict. overrides replace fields afterwards.
    Unknown keys, unsupported families and contradictions raise a ValueError naming them."""
    if isinstance(src, dict):
        cfg = dict(src)
    else:
        path = Path(src)
        if path.is_dir():
            path = path / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    family = cfg.get("model_type")
    if family not in _HF_FAMILIES:
        raise ValueError(
            f"config.json model_type={family!r} is not supported: "
            f"use one of {', '.join(sorted(_HF_FAMILIES))}"
        )
    unknown = sorted(k for k in cfg if k not in _HF_KEYS and k not in _HF_IGNORED)
    if unknown:
        raise ValueError(
            f"config.json has unknown key(s) {', '.join(unknown)}: dsim reads "
            f"{', '.join(sorted(_HF_KEYS))}"
        )
    if (
        "n_routed_experts" in cfg
        and "num_local_experts" in cfg
        and cfg["n_routed_experts"] != cfg["num_local_experts"]
    ):
        raise ValueError(
            f"config.json is contradictory: n_routed_experts={cfg['n_routed_experts']} but "
            f"num_local_experts={cfg['num_local_experts']}"
        )
    fields: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in _HF_KEYS and value is not None:
            fields[_HF_KEYS[key]] = value
    fields.setdefault("q_lora_rank", 0)  # HF writes null for a full-rank query projection
    if family == "mixtral":
        fields.update(
            attn_type="gqa"
            if fields.get("n_kv_heads", 0) not in (0, fields.get("n_heads"))
            else "mha",
            n_dense_layers=0,
            moe_inter_dim=cfg.get("intermediate_size", 0),
            inter_dim=0,
            n_shared_experts=0,
            score_func="softmax",
            route_norm=True,
            original_seq_len=fields.get("max_seq_len", 4096),
        )
        if fields["attn_type"] == "mha":
            fields["n_kv_heads"] = 0
    else:
        fields["attn_type"] = "mla" if fields.get("kv_lora_rank") else "mha"
        if fields["attn_type"] == "mla":
            fields.pop("head_dim", None)
            kv = fields.pop("n_kv_heads", None)
            if kv not in (None, fields.get("n_heads")):
                raise ValueError(
                    f"config.json is contradictory: MLA needs num_key_value_heads == "
                    f"num_attention_heads, got {kv} and {fields.get('n_heads')}"
                )
        else:
            fields.pop("n_kv_heads", None)
        if cfg.get("topk_method") == "group_limited_greedy":
            fields["group_score"] = "max"
        if "route_norm" in fields and family == "deepseek_v3":
            pass  # V3 writes norm_topk_prob explicitly; keep it
        if cfg.get("moe_layer_freq", 1) != 1:
            raise ValueError(
                f"config.json moe_layer_freq={cfg['moe_layer_freq']} is not supported: "
                "dsim places an MoE FFN in every layer after first_k_dense_replace"
            )
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        if rope and rope.get("type", rope.get("rope_type")) == "yarn":
            fields.update(
                rope_factor=rope.get("factor", 40),
                beta_fast=rope.get("beta_fast", 32),
                beta_slow=rope.get("beta_slow", 1),
                mscale=rope.get("mscale_all_dim") or rope.get("mscale", 1.0),
                original_seq_len=rope.get("original_max_position_embeddings", 4096),
            )
            if "rope_theta" in rope:
                fields["rope_theta"] = rope["rope_theta"]
        else:
            fields["original_seq_len"] = fields.get("max_seq_len", 4096)
            if rope and "rope_theta" in rope:
                fields["rope_theta"] = rope["rope_theta"]
    if fields["attn_type"] != "mla" and not fields.get("head_dim"):
        fields["head_dim"] = (
            fields["dim"] // fields["n_heads"]
        )  # HF's default when the key is absent
    fields.setdefault("name", str(cfg.get("_name_or_path") or family))
    fields.update(overrides)
    valid = {f.name for f in dataclasses.fields(ModelArgs)}
    bad = sorted(set(fields) - valid)
    if bad:
        raise ValueError(f"unknown ModelArgs field(s) {', '.join(bad)}")
    return ModelArgs(**fields)


def hf_config(args: ModelArgs) -> dict:
    """A `DeepseekV3Config` keyword dict describing the same architecture as `args` (MLA only)."""
    if args.attn_type != "mla":
        raise ValueError(
            f"ModelArgs.attn_type = {args.attn_type!r}: the DeepSeek-V3 layout needs 'mla'"
        )
    cfg = dict(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.inter_dim,
        moe_intermediate_size=args.moe_inter_dim,
        num_hidden_layers=args.n_layers,
        first_k_dense_replace=args.n_dense_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads,
        n_routed_experts=args.n_routed_experts,
        n_shared_experts=args.n_shared_experts,
        num_experts_per_tok=args.n_activated_experts,
        n_group=args.n_expert_groups,
        topk_group=args.n_limited_groups,
        routed_scaling_factor=args.route_scale,
        norm_topk_prob=args.renormalize,
        q_lora_rank=args.q_lora_rank or None,
        kv_lora_rank=args.kv_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        tie_word_embeddings=args.tie_embeddings,
        rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
    )
    if args.uses_yarn:
        cfg["rope_parameters"] = {
            "rope_type": "yarn",
            "rope_theta": args.rope_theta,
            "factor": args.rope_factor,
            "original_max_position_embeddings": args.original_seq_len,
            "beta_fast": args.beta_fast,
            "beta_slow": args.beta_slow,
            "mscale": args.mscale,
            "mscale_all_dim": args.mscale,
        }
    return cfg
