"""Models the checks use besides dsim's presets: the dense models the articles compare with
(Llama 3.1 8B, DeepSeek LLM 7B/67B), the articles' MoE examples, and the bytes per parameter of
dsim.quant's integer formats measured on a real tensor."""

from __future__ import annotations

from functools import cache

from dsim.claims.verdict import fmt
from dsim.config import ModelArgs, preset


# ---------------------------------------------------------------------------------------------
# Models the checks use (besides the presets)
# ---------------------------------------------------------------------------------------------
def _dense(
    name: str,
    vocab: int,
    dim: int,
    inter: int,
    layers: int,
    heads: int,
    kv_heads: int = 0,
    head_dim: int = 128,
    seq: int = 4096,
) -> ModelArgs:
    return ModelArgs(
        vocab_size=vocab,
        dim=dim,
        inter_dim=inter,
        n_layers=layers,
        n_dense_layers=layers,
        n_heads=heads,
        n_routed_experts=0,
        n_shared_experts=0,
        n_activated_experts=0,
        attn_type="gqa" if kv_heads else "mha",
        head_dim=head_dim,
        n_kv_heads=kv_heads,
        max_seq_len=seq,
        original_seq_len=seq,
        name=name,
    )


@cache
def llama31_8b() -> ModelArgs:
    """DeepSeek-R1-Distill-Llama-8B, the only DeepSeek '8B': Llama-3.1-8B's config.json (dense,
    GQA 32/8)."""
    return _dense("r1-distill-llama-8b", 128256, 4096, 14336, 32, 32, kv_heads=8, seq=8192)


@cache
def deepseek_llm_7b() -> ModelArgs:
    """deepseek-ai/deepseek-llm-7b-base config.json (dense, MHA)."""
    return _dense("deepseek-llm-7b", 102400, 4096, 11008, 30, 32)


@cache
def deepseek_llm_67b() -> ModelArgs:
    """deepseek-ai/deepseek-llm-67b-base config.json (dense, GQA 64/8)."""
    return _dense("deepseek-llm-67b", 102400, 8192, 22016, 95, 64, kv_heads=8)


@cache
def moe_8b() -> ModelArgs:
    """The article's premise, an 8B-total top-2-of-8 MoE: Mixtral's shape with experts 2048 wide."""
    return preset("mixtral-8x7b", moe_inter_dim=2048).replace(name="moe-8b-top2of8")


def toy_moe(n_experts: int, expert_size: float, top_k: int, dim: int = 16384) -> ModelArgs:
    """One MoE layer whose experts hold `expert_size` parameters each, with a negligible attention
    (one head of width 2) and embedding (one token): the article's experts and nothing else."""
    inter = round(expert_size / (3 * dim))
    return ModelArgs(
        vocab_size=1,
        dim=dim,
        inter_dim=0,
        moe_inter_dim=inter,
        n_layers=1,
        n_dense_layers=0,
        n_heads=1,
        n_routed_experts=n_experts,
        n_shared_experts=0,
        n_activated_experts=top_k,
        attn_type="gqa",
        head_dim=2,
        n_kv_heads=1,
        max_seq_len=16,
        original_seq_len=16,
        name=f"{n_experts}x{fmt(expert_size)} top-{top_k}",
    )


DEEPSEEK_MOE = ("deepseekmoe-16b", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3")


def deepseek_models() -> dict[str, ModelArgs]:
    """Every DeepSeek release dsim can build: dense LLM 7B and 67B, and the MoE presets."""
    out = {"deepseek-llm-7b": deepseek_llm_7b(), "deepseek-llm-67b": deepseek_llm_67b()}
    out.update({n: preset(n) for n in DEEPSEEK_MOE})
    return out


@cache
def quant_bytes_per_param(bits: int, group_size: int | None, symmetric: bool = True) -> float:
    """Bytes per element of a weight quantized by dsim.quant (codes + bf16 scales + zero points),
    measured with QuantizedTensor.nbytes on a 256 x 1024 tensor."""
    import torch

    from dsim.quant import quantize

    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    qt = quantize(
        w,
        bits=bits,
        granularity="group" if group_size else "channel",
        group_size=group_size or 1024,
        symmetric=symmetric,
    )
    return qt.nbytes / w.numel()
