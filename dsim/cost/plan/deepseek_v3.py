"""The public record: DeepSeek-V3's published training and serving figures, and the planner's
reproduction of them.

DEEPSEEK_V3_TRAINING: the pre-training run of the technical report (2048 H800s, 14.8T tokens,
PP16 DualPipe, EP64, ZeRO-1, fp8). DEEPSEEK_V3_SERVING: the inference system's published 24-hour
figures (open-infra-index, day 6). `reproduce_deepseek_v3_training` / `_serving` run the planner on
them and return predicted against published numbers.
"""

from __future__ import annotations

from typing import Any

from dsim.config import preset
from dsim.cost import timing
from dsim.cost.memory import ActivationRecipe
from dsim.cost.plan.job import TrainingJob
from dsim.cost.plan.search import plan_training
from dsim.cost.plan.serve import plan_serving

DEEPSEEK_V3_TRAINING = dict(
    source="DeepSeek-V3 Technical Report (arXiv 2412.19437), sec. 1, 3.1-3.3 and 4.2",
    gpu="H800",
    n_gpus=2048,
    tokens=14.8e12,
    seq_len=4096,
    global_batch=15360,  # sequences; ramped from 3072 over the first 469B tokens, then 15360
    layout=dict(
        tp=1, pp=16, ep=64, dp=128, zero=1, schedule="dualpipe", dtype="fp8", recompute="selective"
    ),
    optimizer_dtype="bf16",  # AdamW moments in bf16; master weights and gradients in fp32
    # fp8 activation caching and SwiGLU recomputation (sec. 3.3.3), plus two kernel assumptions
    # the report does not state (dsim.cost.memory.DEEPSEEK_V3_RECIPE)
    recipe="deepseek-v3",
    published_gpu_hours=2.664e6,
    published_gpu_hours_per_trillion=180e3,
    published_days_per_trillion=3.7,
    price_per_gpu_hour=2.0,
)

DEEPSEEK_V3_SERVING = dict(
    source="deepseek-ai/open-infra-index, 202502OpenSourceWeek/"
    "day_6_one_more_thing_deepseekV3R1_inference_system_overview.md (24 h from 2025-02-27 12:00 "
    "UTC+8)",
    gpu="H800",
    prefill=dict(n_gpus=32, ep=32, redundant_experts=32, published_tokens_per_s_per_node=73.7e3),
    decode=dict(n_gpus=144, ep=144, redundant_experts=32, published_tokens_per_s_per_node=14.8e3),
    input_tokens=608e9,
    cache_hit_tokens=342e9,
    output_tokens=168e9,
    kv_length_per_output_token=4989,
    output_tokens_per_s_per_user=(20, 22),
)


def deepseek_v3_workload() -> dict[str, float]:
    """Average prompt and output lengths implied by the published totals: an output token sees on
    average P + D/2 cached tokens (4,989) and P / D = input tokens / output tokens (608B / 168B)."""
    r = DEEPSEEK_V3_SERVING
    ratio = r["input_tokens"] / r["output_tokens"]
    D = r["kv_length_per_output_token"] / (ratio + 0.5)
    return dict(prompt=ratio * D, output=D, cache_hit=r["cache_hit_tokens"] / r["input_tokens"])


def reproduce_deepseek_v3_training(
    recompute: str | None = "selective",
    calibration: timing.Calibration | None = None,
    recipe: str | ActivationRecipe | None = None,
) -> dict[str, Any]:
    """DeepSeek-V3's pre-training with the layout the report states (PP16 DualPipe, EP64 over 8
    nodes, ZeRO-1 DP128, no TP, fp8, selective recomputation) and its way of keeping activations
    (`recipe`, default DEEPSEEK_V3_TRAINING["recipe"]: dsim.cost.memory.DEEPSEEK_V3_RECIPE; "plain"
    for what autograd keeps for dsim.model); the micro-batch, which the report does not give, is
    searched. Memory is reported, not required: see `fits`. Returns predicted and published
    GPU-hours."""
    r = DEEPSEEK_V3_TRAINING
    job = TrainingJob(
        preset("deepseek-v3"),
        r["gpu"],
        n_gpus=r["n_gpus"],
        tokens=r["tokens"],
        seq_len=r["seq_len"],
        global_batch=r["global_batch"],
        optimizer_dtype=r["optimizer_dtype"],
        price_per_gpu_hour=r["price_per_gpu_hour"],
        calibration=calibration,
        recipe=r["recipe"] if recipe is None else recipe,
    )
    layout = dict(r["layout"])
    if recompute is None:
        layout.pop("recompute")
    else:
        layout["recompute"] = recompute
    res = plan_training(job, top=1, require_fit=False, **layout)
    best = res.plans[0]
    per_t = best.gpu_hours / (r["tokens"] / 1e12)
    return dict(
        plan=best,
        job=job,
        predicted_gpu_hours=best.gpu_hours,
        published_gpu_hours=r["published_gpu_hours"],
        error=best.gpu_hours / r["published_gpu_hours"] - 1,
        predicted_gpu_hours_per_trillion=per_t,
        published_gpu_hours_per_trillion=r["published_gpu_hours_per_trillion"],
        predicted_days_per_trillion=best.days / (r["tokens"] / 1e12),
        published_days_per_trillion=r["published_days_per_trillion"],
        fits=best.fits,
    )


def reproduce_deepseek_v3_serving(
    calibration: timing.Calibration | None = None, latency_target: float | None = None
) -> dict[str, Any]:
    """DeepSeek-V3 prefill (EP32 over 4 nodes) and decode (EP144 over 18 nodes) per H800 node, with
    the workload the published totals imply (prompt length, cache hit rate, context per output
    token)."""
    r, w = DEEPSEEK_V3_SERVING, deepseek_v3_workload()
    args = preset("deepseek-v3")
    pre = plan_serving(
        args,
        r["gpu"],
        "prefill",
        r["prefill"]["n_gpus"],
        ep=r["prefill"]["ep"],
        redundant_experts=r["prefill"]["redundant_experts"],
        prompt=round(w["prompt"]),
        cache_hit=w["cache_hit"],
        calibration=calibration,
    )
    dec = plan_serving(
        args,
        r["gpu"],
        "decode",
        r["decode"]["n_gpus"],
        ep=r["decode"]["ep"],
        redundant_experts=r["decode"]["redundant_experts"],
        context=r["kv_length_per_output_token"],
        latency_target=latency_target,
        calibration=calibration,
    )
    return dict(
        prefill=pre,
        decode=dec,
        workload=w,
        prefill_error=pre.tokens_per_s_per_node / r["prefill"]["published_tokens_per_s_per_node"]
        - 1,
        decode_error=dec.tokens_per_s_per_node / r["decode"]["published_tokens_per_s_per_node"] - 1,
    )
