"""Published figures the checks compare against (REFERENCES: value and source, for what the GPU
catalog of dsim.cost.hardware does not hold), and reference_checks(): DeepSeek's and GPT-3's
published sizes recomputed by dsim, checked the same way as the claims."""

from __future__ import annotations

from dsim.claims.verdict import Claim, Verdict, agree, fmt, make
from dsim.config import PUBLISHED_PARAMS, preset
from dsim.cost import params

# ---------------------------------------------------------------------------------------------
# Published figures a check compares against (value, source). GPU figures come from
# dsim.cost.hardware; these are the ones the catalog does not hold.
# ---------------------------------------------------------------------------------------------
REFERENCES: dict[str, tuple[float, str]] = {
    "gpt3_params": (175e9, "Brown et al. 2020, GPT-3 paper, table 2.1"),
    "gpt3_tokens": (300e9, "Brown et al. 2020, GPT-3 paper, section 2.2 (300B training tokens)"),
    "gpt3_cc_filtered_gb": (
        570,
        "Brown et al. 2020, section 2.2: filtered Common Crawl is 570 GB of text",
    ),
    "gpt3_train_flops": (3.14e23, "Brown et al. 2020, appendix D; Patterson et al. 2021, table 4"),
    "gpt3_gpus": (10_000, "Patterson et al. 2021, table 4: 10,000 V100 GPUs"),
    "gpt3_train_days": (14.8, "Patterson et al. 2021, table 4: 14.8 days"),
    "gpt3_energy_mwh": (1287, "Patterson et al. 2021, table 4: 1,287 MWh"),
    "v100_fp16_flops": (125e12, "NVIDIA V100 SXM2 datasheet: 125 TFLOPS tensor"),
    "household_us_mwh": (11.7, "World Energy Council (2010), as quoted by shrinkthatfootprint.com"),
    "household_world_mwh": (3.5, "World Energy Council (2010): average electrified household"),
    "household_cn_mwh": (1.3, "World Energy Council (2010): China"),
    "c4_en_tokens": (
        156e9,
        "Dodge et al. 2021, 'Documenting large webtext corpora', table 1: C4.EN",
    ),
    "deepseek_llm_tokens": (2e12, "DeepSeek LLM paper (arXiv:2401.02954): 2T tokens"),
    "v2_tokens": (8.1e12, "DeepSeek-V2 paper (arXiv:2405.04434): 8.1T tokens"),
    "v3_tokens": (14.8e12, "DeepSeek-V3 technical report (arXiv:2412.19437): 14.8T tokens"),
    "bert_large_params": (340e6, "Devlin et al. 2019: BERT-large 340M"),
    "megatron_bert_params": (3.9e9, "Shoeybi et al. 2019: Megatron-BERT 3.9B"),
    "qlora_base_bits": (4, "Dettmers et al. 2023 (QLoRA): 4-bit NormalFloat base weights"),
    "qlora_adapter_bits": (16, "Dettmers et al. 2023 (QLoRA): BF16 LoRA adapters"),
    "a100_int4_ops": (1248e12, "NVIDIA A100 datasheet: INT4 tensor 1,248 TOPS dense"),
    "dgx_a100_kw": (6.5, "NVIDIA DGX A100 user guide: 6.5 kW maximum system power, 8 GPUs"),
    "pue": (1.5, "assumption: a typical data-centre power usage effectiveness"),
    "t4_hbm_bytes": (16e9, "NVIDIA T4 datasheet: 16 GB GDDR6"),
    "snapdragon_8g2_bw": (
        67.2e9,
        "Qualcomm Snapdragon 8 Gen 2: LPDDR5X-8400, 64-bit bus = 67.2 GB/s",
    ),
    "rv1126_bw": (
        12.8e9,
        "Rockchip RV1126: 32-bit LPDDR4 at 3200 MT/s = 12.8 GB/s (assumption: best case)",
    ),
    "capacity_factor_switch": (
        1.25,
        "Fedus et al. 2021 (Switch Transformer): capacity factors 1.0-1.25",
    ),
}


def ref(name: str) -> float:
    return REFERENCES[name][0]


def src(name: str) -> str:
    return REFERENCES[name][1]


# ---------------------------------------------------------------------------------------------
# Reference facts: the published numbers the checks lean on, checked the same way
# ---------------------------------------------------------------------------------------------
def reference_checks() -> list[Verdict]:
    """DeepSeek's and GPT-3's published sizes recomputed by dsim (not claims of the articles)."""
    out = []
    for name, (total, active, source) in PUBLISHED_PARAMS.items():
        p = params(preset(name))
        act = p.active_no_embedding if name.startswith("deepseek-v") else p.active
        c = Claim(
            id=f"ref-{name}",
            article="reference",
            topic="params",
            numeric=True,
            check="dsim.cost.params",
            claim=f"{name}: {fmt(total)} parameters in total, "
            f"{fmt(active)} activated per token ({source})",
        )
        conv = "active_no_embedding" if name.startswith("deepseek-v") else "active"
        out.append(
            make(
                c,
                [
                    agree("total (main model, no MTP)", total, p.total_no_mtp),
                    agree(f"activated ({conv})", active, act),
                ],
                "params",
                [
                    f"dsim.cost.params(preset('{name}')): total_no_mtp {fmt(p.total_no_mtp)}, "
                    f"{conv} {fmt(act)}"
                ],
                ["dsim.cost.params", source],
            )
        )
    gpt3 = 6 * ref("gpt3_params") * ref("gpt3_tokens")
    c = Claim(
        id="ref-gpt3-flops",
        article="reference",
        topic="training_cost",
        numeric=True,
        check="6ND",
        claim="GPT-3's training took 3.14e23 FLOPs",
    )
    out.append(
        make(
            c,
            agree("6 N D", ref("gpt3_train_flops"), gpt3),
            "FLOPs",
            [f"6 x {fmt(ref('gpt3_params'))} x {fmt(ref('gpt3_tokens'))} = {fmt(gpt3)}"],
            [src("gpt3_train_flops")],
        )
    )
    return out
