"""Real published configs (dsim/data/hf_configs, sources in SOURCE.md): dsim reads each, and
the parameter count of dsim.model built from it equals transformers' count for the same config,
both models built on the meta device (no memory, no time)."""

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers

from dsim.config import ModelArgs, preset
from dsim.hf import hf_config
from dsim.model import Transformer

FIXTURES = Path(__file__).resolve().parents[1] / "dsim" / "data" / "hf_configs"
HF_FIXTURES = [
    "gpt-oss-20b",
    "qwen3-30b-a3b",
    "mistral-7b-instruct-v0.1",
    "llama-2-7b-chat",
    "llama-3.1-8b",
    "llama-3.1-70b-instruct",
    "mixtral-8x7b-v0.1",
    "qwen2-57b-a14b",
    "gpt-oss-120b",
    "qwen3-235b-a22b",
    "kimi-k2-instruct",
    "olmoe-1b-7b-0125-instruct",
    "dbrx-instruct",
]
# published with num_nextn_predict_layers >= 1: dsim builds the MTP modules, transformers does not
MTP_FIXTURES = ["deepseek-v3", "deepseek-r1", "deepseek-v3.2", "glm-4.5-air"]
NATIVE_FIXTURES = [
    "config_16B",
    "config_236B",
    "config_671B",
    "config_v3.1",
    "config_671B_v3.2",
]


def dsim_params(args: ModelArgs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(args).parameters())


# Kimi-K2 publishes model_type kimi_k2 with architectures DeepseekV3ForCausalLM; transformers has no
# kimi_k2 type, and Moonshot's deployment guide names deepseek_v3 as the type to run it as.
TRANSFORMERS_TYPE = {"kimi_k2": "deepseek_v3"}


def hf_params(model_type: str, cfg: dict) -> int:
    model_type = TRANSFORMERS_TYPE.get(model_type, model_type)
    # a deep copy: transformers 5 rewrites nested dicts in place (it puts rope_theta into
    # rope_scaling), which would change the shared test configs for the tests that run later
    config = transformers.AutoConfig.for_model(model_type, **copy.deepcopy(cfg))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def for_transformers(cfg: dict) -> tuple[str, dict]:
    """The model type and the keys to build a published config in transformers, without its
    storage format (transformers would quantize on load; MLX's `quantization` it does not know)."""
    hf = copy.deepcopy(cfg)
    model_type = hf.pop("model_type")
    hf.pop("quantization_config", None)
    hf.pop("quantization", None)
    ffn = hf.get("ffn_config", {})
    if isinstance(ffn.get("moe_normalize_expert_weights"), int):
        # DBRX: transformers 4.39 wrote the integer 1; transformers 5 validates a float
        ffn["moe_normalize_expert_weights"] = float(ffn["moe_normalize_expert_weights"])
    return model_type, hf


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_published_config_params_equal_transformers(name):
    cfg = json.loads((FIXTURES / f"{name}.json").read_text())
    args = ModelArgs.from_hf_config(FIXTURES / f"{name}.json")
    assert dsim_params(args) == hf_params(*for_transformers(cfg))


@pytest.mark.parametrize("name", MTP_FIXTURES)
def test_published_config_params_differ_by_exactly_the_mtp_modules(name):
    """Configs that publish MTP modules (num_nextn_predict_layers): dsim builds them, transformers
    does not, so the counts differ by exactly the MTP modules' parameters."""
    cfg = json.loads((FIXTURES / f"{name}.json").read_text())
    args = ModelArgs.from_hf_config(FIXTURES / f"{name}.json")
    assert args.n_mtp_layers == cfg["num_nextn_predict_layers"] >= 1
    with torch.device("meta"):
        mtp = sum(p.numel() for p in Transformer(args).mtp.parameters())
    assert mtp > 0 and dsim_params(args) - hf_params(*for_transformers(cfg)) == mtp


@pytest.mark.parametrize("name", NATIVE_FIXTURES)
def test_deepseek_native_config_params_equal_transformers(name):
    """DeepSeek's inference/configs: read by their keys, counted against transformers' DeepSeek-V3
    (V3.2: DeepSeek-V3.2) built from the same architecture."""
    args = ModelArgs.from_hf_config(FIXTURES / f"deepseek-native-{name}.json")
    cfg = hf_config(args)
    model_type = "deepseek_v3"
    if args.has_indexer:
        model_type = "deepseek_v32"
        cfg.update(
            index_n_heads=args.index_n_heads,
            index_head_dim=args.index_head_dim,
            index_topk=args.index_topk,
        )
        cfg.pop("rope_interleave")
    assert args.n_mtp_layers == 0  # DeepSeek's reference builds no MTP module
    assert dsim_params(args) == hf_params(model_type, cfg)


def test_native_v3_reads_like_the_hf_config():
    """DeepSeek's config_671B.json and the V3 preset (from the HF config.json) are one model, up
    to what the native format does not say (MTP depth; norm_eps is DeepSeek's 1e-6 either way), the
    reference's own max_seq_len default, and route_norm left to DeepSeek's rule (None: renormalise
    because score_func is sigmoid) where the preset states True."""
    native = ModelArgs.from_hf_config(FIXTURES / "deepseek-native-config_671B.json")
    v3 = preset("deepseek-v3")
    assert native.route_norm is None and native.renormalize
    same = dict(name=v3.name, n_mtp_layers=1, max_seq_len=v3.max_seq_len, route_norm=True)
    assert native.replace(**same) == v3


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b-instruct"])
def test_llama31_reads_with_its_rope_scaling(name):
    args = ModelArgs.from_hf_config(FIXTURES / f"{name}.json")
    assert args.rope_scaling == "llama3" and not args.uses_yarn
    assert (args.rope_factor, args.original_seq_len) == (8.0, 8192)
    assert (args.low_freq_factor, args.high_freq_factor) == (1.0, 4.0)


@pytest.mark.parametrize("family", ["glm4_moe", "deepseek_v32"])
def test_mtp_is_the_stated_difference(family):
    """GLM-4.5 and DeepSeek-V3 publish num_nextn_predict_layers = 1; transformers builds no MTP
    module, dsim does: the counts differ by exactly the MTP modules' parameters."""
    from tests.test_hf_families import FAMILIES

    cfg = {**FAMILIES[family], "num_nextn_predict_layers": 1}
    args = ModelArgs.from_hf_config(cfg)
    assert args.n_mtp_layers == 1
    with torch.device("meta"):
        mtp = sum(p.numel() for p in Transformer(args).mtp.parameters())
    hf = dict(cfg)
    model_type = hf.pop("model_type")
    assert mtp > 0 and dsim_params(args) - hf_params(model_type, hf) == mtp


def test_v3_and_mixtral_config_keys_count_like_transformers():
    """The published DeepSeek-V3 and Mixtral-8x7B keys kept in tests/test_config.py: Mixtral
    equal, V3 larger by exactly its MTP module (num_nextn_predict_layers = 1), which transformers
    does not build."""
    from tests.test_config import MIXTRAL_HF, V3_HF

    for cfg in (MIXTRAL_HF, V3_HF):
        args = ModelArgs.from_hf_config(cfg)
        with torch.device("meta"):
            mtp = sum(p.numel() for p in Transformer(args).mtp.parameters())
        hf = {k: v for k, v in cfg.items() if k != "model_type"}
        assert dsim_params(args) - hf_params(cfg["model_type"], hf) == mtp
        assert (mtp > 0) == (cfg is V3_HF)
