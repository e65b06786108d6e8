"""Reading config.json strictly: a missing, null, boolean or non-numeric size names its key (never a
default from the tiny preset), architecture keys dsim cannot represent are refused by name, and
the CLI turns each into one line and exit status 2."""

import json

import pytest

from dsim.cli import main
from dsim.config import ModelArgs
from dsim.hf.keys import IGNORED
from tests.test_config import MIXTRAL_HF, V3_HF
from tests.test_hf_families import FAMILIES
from tests.test_hf_fixtures import FIXTURES


def without(cfg: dict, key: str) -> dict:
    return {k: v for k, v in cfg.items() if k != key}


@pytest.mark.parametrize(
    "cfg, message",
    [
        (without(V3_HF, "hidden_size"), "required key 'hidden_size' is missing"),
        ({**V3_HF, "hidden_size": None}, "hidden_size = None is invalid"),
        ({**V3_HF, "hidden_size": True}, "hidden_size = True is invalid"),
        ({**V3_HF, "hidden_size": "7168"}, "hidden_size = '7168' is invalid"),
        ({**V3_HF, "hidden_size": 7168.5}, "hidden_size = 7168.5 is invalid"),
        ({**V3_HF, "num_hidden_layers": 0}, "num_hidden_layers = 0 is invalid"),
        (without(V3_HF, "q_lora_rank"), "required key 'q_lora_rank' is missing"),
        (without(V3_HF, "norm_topk_prob"), "required key 'norm_topk_prob' is missing"),
        ({**V3_HF, "rms_norm_eps": "tiny"}, "rms_norm_eps = 'tiny' is invalid"),
        ({**V3_HF, "rope_theta": float("nan")}, "rope_theta = nan is invalid"),
        ({**V3_HF, "hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
        ({**V3_HF, "attention_bias": True}, "attention_bias = True is not supported"),
        ({**V3_HF, "rope_scaling": "yarn"}, "rope_scaling must be a JSON object"),
        (without(MIXTRAL_HF, "num_local_experts"), "required key 'num_local_experts'"),
        ({**MIXTRAL_HF, "num_attention_heads": 7, "num_key_value_heads": 7}, "does not divide"),
        ({**MIXTRAL_HF, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "'linear'"),
        ({**FAMILIES["qwen2_moe"], "shared_expert_intermediate_size": 40}, "not a multiple"),
        ({**FAMILIES["qwen3_moe"], "use_sliding_window": True}, "use_sliding_window"),
        ({**FAMILIES["qwen3_moe"], "mlp_only_layers": [0]}, "mlp_only_layers"),
        ({**FAMILIES["dbrx"], "ffn_config": {"ffn_hidden_size": 16}}, "'moe_num_experts'"),
        ({**FAMILIES["gpt_oss"], "layer_types": ["sliding_attention"]}, "layer_types"),
        ({**FAMILIES["gpt_oss"], "experts_per_token": 3}, "experts_per_token = 3"),
        ({**FAMILIES["llama"], "mlp_bias": True}, "mlp_bias = True is not supported"),
        ({**FAMILIES["mistral"], "attention_bias": False}, "unknown key(s) attention_bias"),
        ({"dim": 8, "n_layers": 1, "n_heads": 2, "vocab_size": 9}, "required key 'inter_dim'"),
    ],
)
def test_bad_keys_name_the_key(cfg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelArgs.from_hf_config(cfg)


def test_ignored_keys_are_documented_and_change_nothing():
    extra = {key: 0 for key in ("initializer_range", "router_aux_loss_coef", "use_cache")}
    assert set(extra) <= IGNORED
    assert ModelArgs.from_hf_config({**MIXTRAL_HF, **extra}) == ModelArgs.from_hf_config(MIXTRAL_HF)


def test_gated_shared_expert_width_is_n_shared_times_moe_inter_dim():
    args = ModelArgs.from_hf_config(
        {**FAMILIES["qwen2_moe"], "shared_expert_intermediate_size": 48}
    )
    assert (args.n_shared_experts, args.moe_inter_dim, args.shared_expert_gate) == (3, 16, True)
    none = ModelArgs.from_hf_config({**FAMILIES["qwen2_moe"], "shared_expert_intermediate_size": 0})
    assert none.n_shared_experts == 0 and not none.shared_expert_gate


@pytest.mark.parametrize(
    "content, message",
    [
        (json.dumps(without(V3_HF, "hidden_size")), "required key 'hidden_size' is missing"),
        (json.dumps({**V3_HF, "hidden_size": None}), "hidden_size = None is invalid"),
        (json.dumps({**V3_HF, "hidden_size": True}), "hidden_size = True is invalid"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["params", "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    if isinstance(content, bytes):
        assert str(path) in err


def test_cli_refuses_what_is_not_a_regular_file(capsys):
    assert main(["params", "--model", "/dev/null"]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_kimi_k2_is_deepseek_v3():
    kimi = ModelArgs.from_hf_config({**V3_HF, "model_type": "kimi_k2"})
    assert kimi.replace(name="x") == ModelArgs.from_hf_config(V3_HF).replace(name="x")


def test_heads_that_do_not_divide_dim_need_an_explicit_head_dim():
    with pytest.raises(ValueError, match="ModelArgs.head_dim = 0 is invalid"):
        ModelArgs(attn_type="mha", dim=64, n_heads=7, n_layers=1, n_dense_layers=1)
    assert ModelArgs(attn_type="mha", dim=64, n_heads=7, head_dim=8, n_layers=1, n_dense_layers=1)


def test_family_args_survive_a_json_round_trip():
    """Checkpoints store ModelArgs as JSON: window_layers comes back as a list."""
    args = ModelArgs.from_hf_config(FAMILIES["gpt_oss"])
    assert ModelArgs(**json.loads(json.dumps(args.to_dict()))) == args


def test_glm_mtp_depth_under_either_name():
    glm = FAMILIES["glm4_moe"]
    assert ModelArgs.from_hf_config({**glm, "num_nextn_predict_layers": 1}).n_mtp_layers == 1
    assert ModelArgs.from_hf_config({**glm, "num_mtp_layers": 1}).n_mtp_layers == 1
    assert ModelArgs.from_hf_config(glm).n_mtp_layers == 0
    with pytest.raises(ValueError, match="contradictory"):
        ModelArgs.from_hf_config({**glm, "num_mtp_layers": 1, "num_nextn_predict_layers": 0})


def test_partial_rotary_with_yarn_is_refused():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    with pytest.raises(ValueError, match="rotary_dim"):
        ModelArgs.from_hf_config({**FAMILIES["glm4_moe"], "rope_scaling": yarn})


def test_dbrx_sub_configs_as_transformers_serializes_them():
    """DBRX-Instruct's config as MLX's dbrx-instruct-4bit publishes it (re-saved by transformers)
    repeats PretrainedConfig's output and generation defaults inside attn_config and ffn_config,
    and MLX adds its storage key `quantization`: none of them is architecture, so the config
    reads, with DBRX-Instruct's published sizes, and the sub-configs stay strict."""
    cfg = json.loads((FIXTURES / "dbrx-instruct.json").read_text())
    assert cfg["attn_config"]["top_k"] == 50 and "quantization" in cfg  # the clutter is there
    args = ModelArgs.from_hf_config(cfg)
    assert (args.dim, args.n_heads, args.kv_heads, args.n_layers) == (6144, 48, 8, 40)
    assert (args.n_routed_experts, args.n_activated_experts, args.moe_inter_dim) == (16, 4, 10752)
    assert args.clip_qkv == 8 and args.rope_theta == 500000 and not args.tie_embeddings
    with pytest.raises(ValueError, match="attn_config has unknown key"):  # still strict
        ModelArgs.from_hf_config({**cfg, "attn_config": {**cfg["attn_config"], "window": 8}})
