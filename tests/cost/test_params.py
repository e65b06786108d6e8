"""Parameter counts equal the real model's, tensor by tensor, and reproduce the published totals."""

import math

import pytest
from family_variants import FAMILY_VARIANTS

from dsim.config import PUBLISHED_PARAMS, preset, preset_names, scaled_down
from dsim.cost import params
from dsim.cost.params import COMPONENTS
from dsim.model import Transformer

VARIANTS = {
    "default": {},
    "mtp": dict(n_mtp_layers=2),
    "tied": dict(tie_embeddings=True),
    "gqa": dict(attn_type="gqa", head_dim=8, n_kv_heads=2),
    "mha": dict(attn_type="mha", head_dim=8, n_kv_heads=0),
    "mla-full-rank-q": dict(attn_type="mla", q_lora_rank=0),
    **FAMILY_VARIANTS,  # the other families' options (issue 15)
}


def small(name, variant):
    return scaled_down(preset(name), **VARIANTS[variant])


def component_of(name: str) -> str:
    """The breakdown component of a named parameter of Transformer."""
    if name.startswith("mtp."):
        return "mtp"
    if name == "embed.weight":
        return "embedding"
    if name == "head.weight":
        return "head"
    if ".attn." in name:
        return "attn_proj"  # every weight of the attention module, its q_norm and kv_norm included
    if name.endswith("norm.weight"):
        return "norms"
    if ".ffn.gate." in name:
        return "gate"
    if ".ffn.experts." in name:
        return "routed_experts"
    if ".ffn.shared_experts." in name or ".ffn.shared_gate." in name:
        return "shared_experts"
    assert ".ffn.w" in name, name
    return "dense_ffn"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", preset_names())
def test_equals_model_parameters(name, variant):
    args = small(name, variant)
    model = Transformer(args)
    p = params(args)
    assert p.total == sum(t.numel() for t in model.parameters())
    by_component = dict.fromkeys(COMPONENTS, 0)
    for n, t in model.named_parameters():
        by_component[component_of(n)] += t.numel()
    assert p.breakdown == by_component
    # Module by module: every dotted name in p.modules owns exactly the model's parameters under it.
    named = dict(model.named_parameters())
    covered = set()
    for module, count in p.modules.items():
        mine = [n for n in named if n == module or n.startswith(module + ".")]
        assert sum(named[n].numel() for n in mine) == count, module
        covered.update(mine)
    assert covered == set(named)


def test_active_counts_top_k_of_the_routed_experts():
    args = preset("deepseek-v3")
    p = params(args)
    k_over_e = args.n_activated_experts / args.n_routed_experts
    assert p.active_breakdown["routed_experts"] == p.breakdown["routed_experts"] * k_over_e
    for c in COMPONENTS:
        if c not in ("routed_experts", "mtp"):
            assert p.active_breakdown[c] == p.breakdown[c]
    assert p.active == sum(p.active_breakdown.values()) - p.active_mtp
    assert p.active_no_embedding == p.active - args.vocab_size * args.dim


# Published (total, activated) and the convention that reproduces each, to the printed precision.
#   total:  "all" = params(args).total (main + MTP), "no_mtp" = without the MTP modules.
#   active: "all" = embedding table and head included, "no_embedding" = without the input embedding.
#   rounding: "round" = nearest value at the printed precision; "truncate" = digits cut off.
CONVENTIONS = {
    # V3's 671B counts the main model only; 37B is the activated count without the embedding table
    # (36.6B; with it, 37.6B would print as 38B). The MTP module adds 11.6B (test below).
    "deepseek-v3": ("no_mtp", "no_embedding", "round"),
    "deepseek-v2": (
        "all",
        "no_embedding",
        "round",
    ),  # 20.9B -> 21B (with the embedding 21.4B, also 21B)
    # V2-Lite's 2.4B: without the embedding it is 2.451B, which rounds to 2.5B;
    # the paper cut the digit.
    "deepseek-v2-lite": ("all", "no_embedding", "truncate"),
    "deepseekmoe-16b": ("all", "all", "round"),  # 2.83B; without the embedding 2.62B would be 2.6B
    "mixtral-8x7b": ("all", "all", "round"),  # 12.88B; without the embedding 12.75B would be 12.7B
}


def printed(value: float, published: float, mode: str) -> float:
    """`value` at the precision `published` is printed with: whole billions or one decimal."""
    unit = 1e9 if published % 1e9 == 0 else 1e8
    return (round(value / unit) if mode == "round" else math.floor(value / unit)) * unit


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_published_totals(name):
    total_conv, active_conv, rounding = CONVENTIONS[name]
    p = params(preset(name))
    total = p.total if total_conv == "all" else p.total_no_mtp
    active = p.active if active_conv == "all" else p.active_no_embedding
    pub_total, pub_active, _ = PUBLISHED_PARAMS[name]
    assert printed(total, pub_total, "round") == pytest.approx(pub_total)
    assert printed(active, pub_active, rounding) == pytest.approx(pub_active)


def test_deepseek_v3_mtp_module():
    """README_WEIGHTS.md: "11.5B unique parameters, excluding the shared 0.9B Embedding and
    0.9B output Head". Counting the module (enorm, hnorm, eh_proj, one MoE block, norm)
    gives 11.61B: within 1%."""
    p = params(preset("deepseek-v3"))
    assert p.mtp == pytest.approx(11.5e9, rel=0.01)
    # Hugging Face's 685B checkpoint stores the MTP module with its own
    # copies of embedding and head.
    hf = p.total_no_mtp + p.mtp + p.breakdown["embedding"] + p.breakdown["head"]
    assert hf == pytest.approx(685e9, rel=0.001)


def test_single_function_per_concept():
    """Attention parameters come from one function used by total and active alike: GQA with as many
    KV heads as query heads is MHA, and the counts agree."""
    mha = preset("deepseekmoe-16b")
    gqa = mha.replace(attn_type="gqa", n_kv_heads=mha.n_heads)
    assert params(mha).breakdown == params(gqa).breakdown
    fewer = mha.replace(attn_type="gqa", n_kv_heads=4)
    saved = 2 * mha.dim * (mha.n_heads - 4) * mha.head_size * mha.n_layers
    assert params(mha).total - params(fewer).total == saved
    assert params(mha).active - params(fewer).active == saved


def test_bad_input():
    with pytest.raises(ValueError, match="args"):
        params("deepseek-v3")
