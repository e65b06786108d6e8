"""Every family dsim reads computes what transformers computes.

For each family: a tiny config.json-style dict, transformers' model of that family built from it
with random fp32 weights (every parameter drawn, biases and norms included, so that no feature
hides behind a zero or a one), its state dict loaded into dsim.model through dsim.hf.weights, and
the logits compared at a tight tolerance. The same dict goes through ModelArgs.from_hf_config, so
the reader is tested with the model.
"""

import pytest
import torch
import transformers

from dsim.config import ModelArgs
from dsim.hf import from_hf_state_dict
from dsim.model import Transformer

ATOL, RTOL = 1e-5, 1e-4
BASE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)
FAMILIES = {
    "llama": dict(BASE, model_type="llama", attention_bias=True),
    "mistral": dict(BASE, model_type="mistral", sliding_window=8),
    "mixtral": dict(BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        BASE, **MOE, model_type="qwen2_moe", num_experts=8, shared_expert_intermediate_size=32
    ),
    "qwen3_moe": dict(
        BASE, **MOE, model_type="qwen3_moe", num_experts=8, head_dim=16, norm_topk_prob=True
    ),
    "olmoe": dict(BASE, model_type="olmoe", num_experts=8, num_experts_per_tok=2, clip_qkv=0.5),
    "gpt_oss": dict(
        BASE,
        model_type="gpt_oss",
        num_local_experts=4,
        num_experts_per_tok=2,
        head_dim=8,
        sliding_window=8,
        swiglu_limit=0.2,
        rope_scaling=dict(
            rope_type="yarn",
            factor=4.0,
            beta_fast=32.0,
            beta_slow=1.0,
            truncate=False,
            original_max_position_embeddings=16,
        ),
    ),
    "glm4_moe": dict(
        BASE,
        **MOE,
        model_type="glm4_moe",
        head_dim=16,
        n_routed_experts=8,
        n_shared_experts=1,
        first_k_dense_replace=1,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        use_qk_norm=True,
        attention_bias=True,
        partial_rotary_factor=0.5,
    ),
    "dbrx": dict(
        model_type="dbrx",
        vocab_size=97,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_seq_len=64,
        attn_config=dict(kv_n_heads=2, clip_qkv=0.3, rope_theta=10000.0),
        ffn_config=dict(
            ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2, moe_normalize_expert_weights=1.0
        ),
    ),
    "deepseek_v32": dict(
        BASE,
        **MOE,
        model_type="deepseek_v32",
        num_key_value_heads=4,
        first_k_dense_replace=1,
        n_routed_experts=8,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        index_n_heads=16,  # enough heads that no key scores relu(...) = 0 in all (a tie)
        index_head_dim=8,
        index_topk=6,
    ),
}


def hf_model(cfg_json: dict) -> transformers.PreTrainedModel:
    """transformers' model of cfg_json's family, fp32, every parameter random (seeded)."""
    cfg = dict(cfg_json)
    cfg = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2 if p.dim() == 1 else 0.3 / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
    return model


def dsim_model(cfg_json: dict, hf: transformers.PreTrainedModel) -> Transformer:
    args = ModelArgs.from_hf_config(cfg_json)
    model = Transformer(args).eval()
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), args), strict=True)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers(family):
    cfg = FAMILIES[family]
    hf = hf_model(cfg)
    model = dsim_model(cfg, hf)
    tokens = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(tokens).logits, model(tokens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", ["mistral", "gpt_oss", "deepseek_v32"])
def test_cached_decoding_equals_full_forward(family):
    """Sliding windows, sinks and the indexer hold with the KV cache too (one token at a time)."""
    cfg = FAMILIES[family]
    model = dsim_model(cfg, hf_model(cfg))
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        model.reset_cache()
        steps = [model(tokens[:, :12], 0, use_cache=True)]
        steps += [model(tokens[:, i : i + 1], i, use_cache=True) for i in range(12, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=RTOL)


def test_features_are_really_on():
    """The tiny configs exercise what they claim: a window shorter than the sequence, clipping
    and the indexer's top-k binding, and the gpt-oss clamp reached."""
    args = {f: ModelArgs.from_hf_config(c) for f, c in FAMILIES.items()}
    assert args["mistral"].sliding_window == 8 and args["mistral"].window_layers == (0, 1)
    assert args["gpt_oss"].window_layers == (0,) and args["gpt_oss"].attn_sink
    assert args["gpt_oss"].uses_yarn and not args["gpt_oss"].rope_truncate
    assert args["glm4_moe"].rotary_dim == 8 and args["glm4_moe"].qk_norm == "head"
    assert args["qwen2_moe"].n_shared_experts == 2 and args["qwen2_moe"].shared_expert_gate
    assert args["olmoe"].qk_norm == "proj" and args["olmoe"].clip_qkv == 0.5
    assert args["dbrx"].norm_type == "layernorm" and args["dbrx"].clip_qkv == 0.3
    assert args["deepseek_v32"].index_topk == 6 < 24
    assert args["llama"].qkv_bias and args["llama"].o_bias and not args["llama"].is_moe


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scaled_down_keeps_each_family_buildable(family):
    """scaled_down (used to hold the cost models to the model) keeps every family's features on
    and gives a model that runs forward and backward."""
    from dsim.config import scaled_down

    args = ModelArgs.from_hf_config(FAMILIES[family])
    small = scaled_down(args)
    for name in ("qk_norm", "attn_sink", "qkv_bias", "shared_expert_gate", "norm_type"):
        assert getattr(small, name) == getattr(args, name)
    assert bool(small.sliding_window) == bool(args.sliding_window)
    assert bool(small.index_topk) == bool(args.index_topk)
    torch.manual_seed(0)
    model = Transformer(small)
    model(torch.randint(0, small.vocab_size, (2, 24))).square().mean().backward()
