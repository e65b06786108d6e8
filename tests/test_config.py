"""ModelArgs: validation with clear errors, presets, and Hugging Face config.json reading."""

import json

import pytest

from dsim.config import ModelArgs, preset, preset_names, scaled_down

V3_HF = {  # the architecture keys of deepseek-ai/DeepSeek-V3's config.json
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "ep_size": 1,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "num_experts_per_tok": 8,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 3,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-06,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "attention_bias": False,
    "attention_dropout": 0.0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "bos_token_id": 0,
    "eos_token_id": 1,
}
MIXTRAL_HF = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "router_aux_loss_coef": 0.02,
    "output_router_logits": False,
    "torch_dtype": "bfloat16",
}


def test_v3_config_json_equals_preset(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(V3_HF))
    args = ModelArgs.from_hf_config(path)
    assert args.replace(name="deepseek-v3") == preset("deepseek-v3")


def test_mixtral_config_equals_preset():
    assert ModelArgs.from_hf_config(MIXTRAL_HF).replace(name="mixtral-8x7b") == preset(
        "mixtral-8x7b"
    )


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({**V3_HF, "hidden_sizee": 1}, "unknown key(s) hidden_sizee"),
        ({**V3_HF, "num_key_value_heads": 8}, "contradictory"),
        ({**MIXTRAL_HF, "n_routed_experts": 16}, "unknown key(s) n_routed_experts"),
        ({**V3_HF, "model_type": "gpt2"}, "not supported"),
        ({**V3_HF, "num_experts_per_tok": 300}, "n_activated_experts"),
        ({**V3_HF, "moe_layer_freq": 2}, "moe_layer_freq"),
    ],
)
def test_bad_hf_configs_name_the_problem(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelArgs.from_hf_config(cfg)


def test_malformed_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelArgs.from_hf_config(path)
    with pytest.raises(ValueError, match="not found"):
        ModelArgs.from_hf_config(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("dim", 0, ">= 1"),
        ("n_activated_experts", 9, "between 1 and n_routed_experts=8"),
        ("n_expert_groups", 3, "divisor of n_routed_experts"),
        ("n_limited_groups", 5, "between 1 and n_expert_groups"),
        ("score_func", "relu", "'softmax' or 'sigmoid'"),
        ("attn_type", "mqa", "'mla', 'mha' or 'gqa'"),
        ("qk_rope_head_dim", 3, "even integer"),
        ("capacity_factor", -1.0, ">= 0"),
        ("n_dense_layers", 5, "between 0 and n_layers"),
    ],
)
def test_invalid_values_name_field_and_range(field, value, allowed):
    changes = {field: value}
    if field == "n_limited_groups":
        changes["n_expert_groups"] = 4
    with pytest.raises(ValueError, match=f"ModelArgs.{field}") as e:
        preset("tiny", **changes)
    assert allowed in str(e.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*tiny"):
        preset("gpt5")


def test_scaled_down_keeps_structure():
    for name in preset_names():
        big, small = preset(name), scaled_down(preset(name))
        assert (small.attn_type, small.score_func, small.renormalize, small.n_mtp_layers) == (
            big.attn_type,
            big.score_func,
            big.renormalize,
            big.n_mtp_layers,
        )
        assert (small.n_shared_experts > 0) == (big.n_shared_experts > 0)
        assert (small.n_dense_layers > 0) == (big.n_dense_layers > 0)
        assert (small.q_lora_rank > 0) == (big.q_lora_rank > 0)
        assert (small.n_expert_groups > 1) == (big.n_expert_groups > 1)
        assert small.uses_yarn == big.uses_yarn


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("route_scale", float("inf"), "finite number > 0"),
        ("mscale", float("nan"), "finite number >= 0"),
        ("norm_eps", float("inf"), "finite number > 0"),
        ("rope_theta", float("inf"), "finite number > 1"),
        ("rope_factor", float("inf"), "finite number >= 1"),
        ("capacity_factor", float("inf"), "finite number >= 0"),
        ("tie_embeddings", "no", "True or False"),
        ("route_norm", 1, "None, True or False"),
        ("dim", True, "integer >= 1"),
        ("n_expert_groups", True, "integer >= 0"),
        ("beta_slow", 40, "<= beta_fast=32"),
        ("route_scale", "2.5", "finite number > 0"),
        ("norm_eps", "1e-6", "finite number > 0"),
        ("dim", "64", "integer >= 1"),
    ],
)
def test_values_that_break_the_forward_pass_are_refused(field, value, allowed):
    """Issue 19, defect 6: inf/NaN floats gave NaN or zero logits, a truthy string tied the
    embeddings, a bool passed as an int (width 1), beta_slow > beta_fast inverted YaRN's ramp, and
    strings raised a TypeError naming no field."""
    with pytest.raises(ValueError, match=f"ModelArgs.{field}") as e:
        preset("tiny", **{field: value})
    assert allowed in str(e.value)


def test_fields_are_validated_on_assignment_and_left_unchanged():
    """Issue 19, defect 6: a field changed after construction was never validated again."""
    import copy
    import dataclasses
    import math
    import pickle

    args = preset("tiny")
    for field, value in (("dim", 0), ("route_scale", math.nan), ("n_routed_experts", 1)):
        before = getattr(args, field)
        with pytest.raises(ValueError, match="ModelArgs"):
            setattr(args, field, value)
        assert getattr(args, field) == before  # the invalid value was undone
    assert args == preset("tiny")
    args.attn_impl = "absorb"  # a valid change goes through
    assert args.attn_impl == "absorb"
    # copies, pickles and dataclasses.replace keep validating
    for other in (copy.deepcopy(args), pickle.loads(pickle.dumps(args))):
        assert other == args
        with pytest.raises(ValueError, match="ModelArgs.n_heads"):
            other.n_heads = 0
    assert dataclasses.replace(args, dim=32).dim == 32
    with pytest.raises(ValueError, match="ModelArgs.dim"):
        dataclasses.replace(args, dim=-1)


def test_first_layers_keeps_the_windows_and_dense_layers_it_cuts_to():
    oss = ModelArgs(n_layers=4, sliding_window=8, window_layers=(1, 3), n_dense_layers=0)
    assert oss.first_layers(3).window_layers == (1,)
    one = oss.first_layers(1)  # layer 0 is full attention: no window is left
    assert (one.n_layers, one.window_layers, one.sliding_window) == (1, (), 0)
    v3 = preset("deepseek-v3").first_layers(2, n_mtp_layers=0)
    assert (v3.n_layers, v3.n_dense_layers, v3.n_mtp_layers) == (2, 2, 0)
