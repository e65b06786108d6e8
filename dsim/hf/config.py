"""Hugging Face `config.json` (and DeepSeek's native config) to and from ModelArgs.

args_from_hf_config reads a config of any family in dsim.hf.deepseek and dsim.hf.families
(ModelArgs.from_hf_config is its public entry point): it loads the file safely (a regular file,
bounded, UTF-8 JSON, every error naming the path), picks the reader by `model_type` (or recognises
DeepSeek's native format by its keys), and refuses any key that no reader consumed and
dsim.hf.keys.IGNORED does not list.
hf_config writes the `DeepseekV3Config` keywords of a ModelArgs (MLA only), which the equivalence
test with transformers builds its model from.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from typing import Any

from dsim.config import ModelArgs
from dsim.hf import deepseek, families
from dsim.hf.keys import Keys

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KiB; refuse to read a huge file


def read_config_file(src: str | Path) -> dict[str, Any]:
    """The JSON object of a config file (or of `config.json` inside a directory)."""
    path = Path(src)
    if path.is_dir():
        path = path / "config.json"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"config file {path} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} is {info.st_size} bytes: over the 16 MiB limit")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def supported_families() -> list[str]:
    return sorted(deepseek.DEEPSEEK_TYPES + families.GQA_TYPES + ("dbrx",))


def args_from_hf_config(src: str | Path | dict[str, Any], **overrides: Any) -> ModelArgs:
    """ModelArgs from a Hugging Face `config.json` (a path to the file or to its directory, or the
    parsed dict) of a family in `supported_families()`, or from DeepSeek's native
    `inference/configs/*.json`. overrides replace fields afterwards. Missing or malformed keys,
    unknown keys, unsupported values and families raise a ValueError naming them."""
    cfg = dict(src) if isinstance(src, dict) else read_config_file(src)
    where = "config.json" if isinstance(src, dict) else str(src)
    k = Keys(cfg, where)
    family = cfg.get("model_type")
    if deepseek.is_native(cfg):
        fields, family = deepseek.read_native(k), "deepseek-native"
    elif family in deepseek.DEEPSEEK_TYPES:
        fields = deepseek.read_deepseek(k, family)
    elif family in families.GQA_TYPES:
        fields = families.read_gqa(k, family)
    elif family == "dbrx":
        fields = families.read_dbrx(k)
    else:
        raise ValueError(
            f"{where}: model_type = {family!r} is not supported: use one of "
            f"{', '.join(supported_families())}, or DeepSeek's native config (keys "
            f"{', '.join(deepseek.NATIVE_KEYS)}, no model_type)"
        )
    k.finish()
    name = cfg.get("_name_or_path")
    fields["name"] = name if isinstance(name, str) and name else family
    fields.update(overrides)
    valid = {f.name for f in dataclasses.fields(ModelArgs)}
    bad = sorted(set(fields) - valid)
    if bad:
        raise ValueError(f"unknown ModelArgs field(s) {', '.join(bad)}")
    try:
        return ModelArgs(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


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
