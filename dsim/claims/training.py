"""Checks of training claims: recomputation memory, training cost and energy."""

from __future__ import annotations

import dataclasses
import math

from dsim.claims.models import deepseek_llm_7b, llama31_8b
from dsim.claims.references import ref, src
from dsim.claims.verdict import (
    Claim,
    Verdict,
    agree,
    at_least,
    at_most,
    below_max,
    check,
    fmt,
    get_claim,
    make,
    not_stated,
    pct,
    range_ends,
    within,
)
from dsim.config import preset
from dsim.cost import get_gpu, memory


# ---------------------------------------------------------------------------------------------
# Memory of training: recomputation
# ---------------------------------------------------------------------------------------------
@check("a1-grad-ckpt-30pct")
def recompute_saving(c: Claim) -> Verdict:
    m, stated = llama31_8b(), c.q["peak_memory_reduction_pct"]
    lines = [
        f"dsim.cost.memory({m.name}, training on one GPU, mixed-precision Adam), sequences of 4096 "
        "tokens:"
    ]
    cut = {}
    for b in range(1, 9):
        none, full = (memory(m, batch=b, seq_len=4096, recompute=r) for r in ("none", "full"))
        cut[b] = 1 - full.total / none.total
        lines.append(
            f"batch {b}: peak {fmt(none.total)} -> {fmt(full.total)} bytes with full "
            f"recomputation: {pct(cut[b])}"
        )
    near = min(cut, key=lambda b: abs(cut[b] * 100 - stated))
    rs = [
        agree("batch 1", stated, cut[1] * 100),
        agree(f"batch {near} (the closest)", stated, cut[near] * 100),
        agree("batch 8", stated, cut[8] * 100),
    ]
    lines.append(
        "the saving is the activations' share of the peak, which grows with batch x sequence"
    )
    return make(c, rs, "%", lines, ["dsim.cost.memory"])


@check("a4-ckpt-48-22gb")
def recompute_48_22(c: Claim) -> Verdict:
    m = deepseek_llm_7b()
    stated = c.q["reduction_pct"]
    layout = dict(batch=1, dp=8, zero=3)
    seq = min(
        range(1024, 16385, 512),
        key=lambda s: abs(memory(m, seq_len=s, **layout).total - c.q["memory_before_bytes"]),
    )
    peak = memory(m, seq_len=seq, **layout).total
    lines = [
        f"no model is given; {m.name}, ZeRO-3 over 8 GPUs, one sequence of {seq} tokens peaks at "
        f"{fmt(peak)} "
        f"bytes per GPU (dsim.cost.memory), close to 48 GB; stated cut 1 - 22/48 = {stated} %"
    ]
    cut = {}
    for r in ("selective", "full"):
        got = memory(m, seq_len=seq, recompute=r, **layout).total
        cut[r] = 1 - got / peak
        lines.append(f"recompute={r}: {fmt(got)} bytes, {pct(cut[r])} less")
    lines.append(
        "selective recomputation (norms; MLA up-projections in DeepSeek-V3) saves little in an MHA "
        "model; "
        "full recomputation can cut more than the stated 54 %"
    )
    rs = [
        agree("selective recomputation, as stated", stated, cut["selective"] * 100, tol=0.15),
        not_stated(
            at_least("full recomputation (the largest possible cut)", stated, cut["full"] * 100)
        ),
    ]
    return make(c, rs, "%", lines, ["dsim.cost.memory"], tol=0.15)


@check("a2-grad-ckpt-sqrt")
def sqrt_checkpointing(c: Claim) -> Verdict:
    from dsim.cost.memory import layer_activation_bytes

    v3 = preset("deepseek-v3")
    layer = v3.n_dense_layers
    A = layer_activation_bytes(v3, layer, 1, 4096, recompute="none")
    keep = layer_activation_bytes(v3, layer, 1, 4096, recompute="full")

    def best(L: int) -> float:  # checkpoints every k layers; one segment recomputed at a time
        return min(-(-L // k) * keep + k * A for k in range(1, L + 1))

    Ls = (64, 256, 1024)
    exps = [math.log(best(b) / best(a)) / math.log(b / a) for a, b in zip(Ls, Ls[1:])]
    return make(
        c,
        agree(
            "exponent of activation memory in the layer count",
            c.q["memory_exponent_after"],
            exps[-1],
            tol=0.1,
        ),
        "exponent",
        [
            "DeepSeek-V3 MoE layer at 4096 tokens: dsim.cost.memory.layer_activation_bytes "
            f"{fmt(A)} kept without "
            f"recomputation, {fmt(keep)} with (the layer input)",
            f"store every layer: L x {fmt(A)}, exponent 1; checkpoint every k layers: ceil(L/k) x "
            f"{fmt(keep)} + k x {fmt(A)}",
            "best k, L = " + ", ".join(f"{L}: {fmt(best(L))}" for L in Ls),
            "fitted exponent "
            + ", ".join(f"{e:.3f}" for e in exps)
            + " -> O(sqrt L) (Chen et al. 2016)",
        ],
        ["dsim.cost.memory.layer_activation_bytes"],
        tol=0.1,
    )


# ---------------------------------------------------------------------------------------------
# Training cost and energy
# ---------------------------------------------------------------------------------------------
@check("a1-data-ratio-1to10")
def tokens_per_param(c: Claim) -> Verdict:
    p, r, d = c.q["params"], c.q["ratio_tokens_per_param"], c.q["dataset_tokens"]
    return make(
        c,
        agree("tokens per parameter implied by 800B tokens", r, d / p),
        "tokens/param",
        [
            f"1:10 of {fmt(p)} params = {fmt(r * p)} tokens, not {fmt(d)}",
            f"{fmt(d)} / {fmt(p)} = {d / p:g} tokens per parameter (compute-optimal: ~20, Hoffmann "
            "et al. 2022)",
        ],
        ["arithmetic"],
    )


@check("a1-c4-size")
def c4_size(c: Claim) -> Verdict:
    stated = c.q["dataset_tokens"]
    return make(
        c,
        agree("C4 (English)", stated, ref("c4_en_tokens")),
        "tokens",
        [
            f"C4.EN has {fmt(ref('c4_en_tokens'))} tokens; stated {fmt(stated)} is "
            f"{stated / ref('c4_en_tokens'):.1f}x that"
        ],
        [src("c4_en_tokens")],
    )


@check("a2-gpt3-gpus")
def gpt3_gpus(c: Claim) -> Verdict:
    n_flops = 6 * ref("gpt3_params") * ref("gpt3_tokens")
    per_gpu = n_flops / (ref("gpt3_gpus") * ref("gpt3_train_days") * 86400)
    return make(
        c,
        range_ends(
            "'tens of thousands' = 20,000 to 99,999",
            c.q["gpus_min"],
            c.q["gpus_max"],
            ref("gpt3_gpus"),
        ),
        "GPUs",
        [
            f"6 x {fmt(ref('gpt3_params'))} x {fmt(ref('gpt3_tokens'))} = {fmt(n_flops)} FLOPs "
            f"(published {fmt(ref('gpt3_train_flops'))})",
            f"on {ref('gpt3_gpus'):,.0f} V100 for {ref('gpt3_train_days')} days: {fmt(per_gpu)} "
            "FLOP/s each = "
            f"{per_gpu / ref('v100_fp16_flops'):.0%} of the V100's {fmt(ref('v100_fp16_flops'))}: "
            "consistent",
            f"so about {ref('gpt3_gpus'):,.0f} GPUs (one 'wan'), not tens of thousands",
        ],
        [src("gpt3_gpus"), src("gpt3_train_flops"), src("v100_fp16_flops")],
    )


@check("a2-data-100b-vs-570b")
def training_tokens(c: Claim) -> Verdict:
    label, optimal = "published and compute-optimal token counts", 20 * c.inputs["params"]
    rs = [
        dataclasses.replace(
            agree(label, c.q["gpt3_tokens"], ref("gpt3_tokens")), part="GPT-3 (published)"
        ),
        dataclasses.replace(
            at_most(label, c.q["deepseek_tokens"], optimal),
            part="DeepSeek, 1B model (20 tokens per parameter)",
        ),
    ]
    return make(
        c,
        rs,
        "tokens",
        [
            f"GPT-3 trained on {fmt(ref('gpt3_tokens'))} tokens; 570 is the GB of its filtered "
            "Common Crawl text",
            f"a compute-optimal 1B model needs about 20 tokens per parameter (Hoffmann et al. "
            f"2022): {fmt(optimal)} <= 100B, so that half is plausible",
            f"DeepSeek's real models trained on more: LLM {fmt(ref('deepseek_llm_tokens'))}, V2 "
            f"{fmt(ref('v2_tokens'))}, "
            f"V3 {fmt(ref('v3_tokens'))} tokens",
        ],
        [src("gpt3_tokens"), src("gpt3_cc_filtered_gb"), src("v3_tokens")],
    )


@check("a2-1b-gpu-hours")
def gpu_hours_6nd(c: Claim) -> Verdict:
    n, a100 = c.inputs["params"], get_gpu("A100-80GB-SXM")
    rs, lines = [], []
    for label, tokens, stated in (
        ("DeepSeek, 100B tokens", c.inputs["tokens_deepseek"], c.q["deepseek_gpu_hours"]),
        ("GPT-3 style, 570B tokens", c.inputs["tokens_gpt3"], c.q["gpt3_gpu_hours"]),
    ):
        total = 6 * n * tokens
        hours = {mfu: total / (a100.bf16_flops * mfu) / 3600 for mfu in (0.3, 0.4, 0.5)}
        rs.append(within(f"{label}, A100 at 30-50 % MFU", stated, hours[0.5], hours[0.3]))
        lines.append(
            f"{label}: 6 x {fmt(n)} x {fmt(tokens)} = {fmt(total)} FLOPs / ({fmt(a100.bf16_flops)} "
            "x MFU) = "
            + ", ".join(f"{k:.0%}: {v:,.0f} h" for k, v in hours.items())
            + f"; stated {stated:,} h = {total / (a100.bf16_flops * stated * 3600):.0%} MFU"
        )
    lines.append(
        "consistent with 6ND on an A100; the whole difference is 5.7x fewer tokens, not the "
        "architecture"
    )
    return make(
        c,
        rs,
        "GPU-hours",
        lines,
        ["dsim.cost.hardware A100-80GB-SXM", "6ND (dsim.cost.flops.six_nd)"],
    )


@check("a2-1b-energy-mwh")
def energy_per_gpu_hour(c: Claim) -> Verdict:
    a100 = get_gpu("A100-80GB-SXM")
    all_in = ref("dgx_a100_kw") / 8 * ref("pue")
    rs, lines = [], []
    for label, mwh, hours in (
        ("DeepSeek", c.q["deepseek_mwh"], c.inputs["deepseek_gpu_hours"]),
        ("GPT-3 style", c.q["gpt3_mwh"], c.inputs["gpt3_gpu_hours"]),
    ):
        rs.append(below_max(f"{label}: energy of its own GPU-hours", mwh, hours * all_in / 1e3))
        lines.append(
            f"{label}: {mwh} MWh / {hours:,} GPU-hours = {mwh * 1e3 / hours:.1f} kW per GPU"
        )
    lines.append(
        f"an A100 draws {a100.tdp_watts / 1e3:g} kW (TDP); with its server share (DGX A100 "
        f"{ref('dgx_a100_kw')} kW / 8) and PUE {ref('pue')}: {all_in:.2f} kW all-in"
    )
    return make(
        c,
        rs,
        "MWh",
        lines,
        ["dsim.cost.hardware A100 tdp_watts", src("dgx_a100_kw"), src("pue")],
        bound="energy <= GPU-hours x all-in power per GPU",
    )


@check("a2-gpt3-energy-households")
def households(c: Claim) -> Verdict:
    e = ref("gpt3_energy_mwh")
    names = {"us": "US", "world": "world-average", "cn": "Chinese"}
    rs = [
        r
        for k in names
        for r in range_ends(
            f"{names[k]} household ({ref(f'household_{k}_mwh')} MWh/yr)",
            c.q["households_min"],
            c.q["households_max"],
            e / ref(f"household_{k}_mwh"),
        )
    ]
    return make(
        c,
        rs,
        "households",
        [
            f"GPT-3: {e:,} MWh; households = {e:,} / annual use: "
            + ", ".join(f"{k} {e / ref(f'household_{k}_mwh'):.0f}" for k in ("us", "world", "cn")),
            "'several hundred' (200 to 999) holds except with a US household",
        ],
        [src("gpt3_energy_mwh"), src("household_us_mwh")],
    )


@check("a4-bank-hw-65pct")
def bank_hardware_cut(c: Claim) -> Verdict:
    cut = 1 - c.inputs["gpus_after"] / c.inputs["gpus_before"]
    return make(
        c,
        agree("1 - after/before", c.q["reduction_pct"], cut * 100),
        "%",
        [
            f"1 - {c.inputs['gpus_after']} / {c.inputs['gpus_before']} = {pct(cut)} (the anecdote "
            "itself is unsourced)"
        ],
        ["arithmetic"],
    )


@check("a2-compute-5-8x-perf-3pct")
def compute_ratio(c: Claim) -> Verdict:
    hours = get_claim("a2-1b-gpu-hours")
    ratio = hours.q["gpt3_gpu_hours"] / hours.q["deepseek_gpu_hours"]
    r6 = hours.inputs["tokens_gpt3"] / hours.inputs["tokens_deepseek"]
    lo, hi = c.q["compute_reduction_low_x"], c.q["compute_reduction_high_x"]
    rs = [
        *range_ends("the article's own GPU-hours", lo, hi, ratio),
        *range_ends("6ND with its token counts", lo, hi, r6),
    ]
    return make(
        c,
        rs,
        "x",
        [
            f"{hours.q['gpt3_gpu_hours']:,} / {hours.q['deepseek_gpu_hours']:,} = {ratio:.2f}x; "
            "6ND: "
            f"{fmt(hours.inputs['tokens_gpt3'])} / {fmt(hours.inputs['tokens_deepseek'])} = "
            f"{r6:.2f}x; both in "
            f"{lo}-{hi}x; the <3 % quality gap is not recomputable"
        ],
        ["arithmetic"],
    )
