"""Checks of parameter claims: totals, active counts, splits, ranges of published models."""

from __future__ import annotations

import dataclasses

from dsim.claims.models import (
    DEEPSEEK_MOE,
    deepseek_llm_7b,
    deepseek_models,
    llama31_8b,
    moe_8b,
    toy_moe,
)
from dsim.claims.references import ref, src
from dsim.claims.verdict import (
    TOLERANCE,
    Claim,
    Reading,
    Verdict,
    above_min,
    agree,
    at_least,
    at_most,
    check,
    fmt,
    make,
    not_stated,
    pct,
    range_ends,
)
from dsim.config import PUBLISHED_PARAMS, preset
from dsim.cost import params


# ---------------------------------------------------------------------------------------------
# Parameters: totals, active counts, splits
# ---------------------------------------------------------------------------------------------
@check("a0-moe-1.5t-total")
def moe_total_from_experts(c: Claim) -> Verdict:
    n, size, stated = c.inputs["num_experts"], c.inputs["params_per_expert"], c.q["total_params"]
    p = params(toy_moe(n, size, 2))
    experts = p.breakdown["routed_experts"]
    return make(
        c,
        agree("16 experts of 96B", stated, experts),
        "params",
        [
            f"{n} experts x {fmt(size)} params = {fmt(n * size)}",
            "dsim.cost.params(one MoE layer with these experts).breakdown['routed_experts'] = "
            f"{fmt(experts)}",
            f"stated {fmt(stated)} / {fmt(experts)} = {experts and stated / experts:.3f}: the "
            "experts alone "
            f"already exceed 1.5T, leaving no room for attention, embeddings or router",
        ],
        ["dsim.cost.params"],
    )


@check("a0-moe-1.5t-active")
def moe_active_top_k(c: Claim) -> Verdict:
    n, size, stated = c.q["num_experts"], c.inputs["params_per_expert"], c.q["active_params"]
    rs, lines = [], []
    for k, why in (
        (2, "top-2, the default of the article's own gating code"),
        (4, "top-4 (not stated anywhere)"),
    ):
        a = params(toy_moe(n, size, k)).active_breakdown["routed_experts"]
        r = agree(why, stated, a)
        rs.append(r if k == 2 else not_stated(r))
        lines.append(
            f"top-{k} of {n}: dsim.cost.params(...).active_breakdown['routed_experts'] = {k} x "
            f"{fmt(size)} = {fmt(a)}"
        )
    lines.append(
        "375e9 = 1.5e12 / 4 exactly: a quarter of the total, as if 4 of 16 experts were active "
        "and "
        "nothing were shared (DeepSeek-V3 activates "
        f"{pct(PUBLISHED_PARAMS['deepseek-v3'][1] / PUBLISHED_PARAMS['deepseek-v3'][0])})"
    )
    return make(c, rs, "params", lines, ["dsim.cost.params", "the article's MoEGating(top_k=2)"])


@check("a4-200b-35b-top2-of-8")
def moe_min_active(c: Claim) -> Verdict:
    total, n, k, stated = (
        c.q["total_params"],
        c.q["num_experts"],
        c.q["top_k"],
        c.q["active_params_max"],
    )
    p = params(toy_moe(n, total / n, k))
    floor = p.active_breakdown["routed_experts"]
    return make(
        c,
        above_min("all 200B in experts (the most favourable split)", stated, floor),
        "params",
        [
            f"smallest possible active count: every parameter in the {n} experts, none shared",
            f"dsim.cost.params({n} experts of {fmt(total / n)}, "
            f"top-{k}).active_breakdown['routed_experts'] = {fmt(floor)}",
            f"stated 'under {fmt(stated)}' < {fmt(floor)}: impossible; any shared attention or "
            "embedding adds to it",
        ],
        ["dsim.cost.params"],
        bound="top-k of E experts activates at least k/E of the expert parameters",
    )


@check("a3-175b-40b-active")
def active_floor_from_split(c: Claim) -> Verdict:
    total, stated = c.q["total_params"], c.q["active_params"]
    always = (c.inputs["shared_frac"] + c.inputs["router_frac"]) * total
    return make(
        c,
        above_min("the article's own 35/60/5 split", stated, always),
        "params",
        [
            f"shared 35 % + routing 5 % of {fmt(total)} = {fmt(always)} parameters every token "
            "uses",
            f"stated active {fmt(stated)} < {fmt(always)} before a single expert is counted",
        ],
        ["arithmetic on the article's split (a3-param-split-shared-expert-router)"],
        bound="active parameters include every shared parameter",
    )


@check("a3-param-split-shared-expert-router")
def param_split(c: Claim) -> Verdict:
    lines, rs = [], []
    for name in ("deepseek-v3", "deepseek-v2", "deepseekmoe-16b"):
        p = params(preset(name))
        b, total = p.breakdown, p.total_no_mtp
        router, experts = b["gate"] / total, b["routed_experts"] / total
        shared = 1 - router - experts
        lines.append(
            f"{name}: dsim.cost.params breakdown / total_no_mtp {fmt(total)}: routed experts "
            f"{pct(experts)}, gate {pct(router)}, everything else {pct(shared)}"
        )
        if name == "deepseek-v3":
            label = "DeepSeek-V3's split"
            rs = [
                dataclasses.replace(agree(label, c.q[key], share * 100), part=part)
                for key, share, part in (
                    ("shared_pct", shared, "shared layers"),
                    ("expert_pct", experts, "experts"),
                    ("router_pct", router, "router"),
                )
            ]
    lines.append(
        "experts hold ~90-97 % and the router a few hundredths of a percent, not 60 % and 5 %"
    )
    return make(c, rs, "%", lines, ["dsim.cost.params(preset(...)).breakdown"])


@check("a1-param-utilization-65pct")
def active_share(c: Claim) -> Verdict:
    m = moe_8b()
    p = params(m)
    share = p.active / p.total
    dense = params(llama31_8b())
    dshare = dense.active / dense.total
    label = "share of its weights a token uses"
    rs = [
        agree(label, c.q["moe_utilization_pct"], share * 100, note="8B top-2-of-8 MoE"),
        *range_ends(
            label,
            c.q["dense_utilization_pct_low"],
            c.q["dense_utilization_pct_high"],
            dshare * 100,
            what="dense",
        ),
    ]
    rs[0] = dataclasses.replace(rs[0], part="MoE")
    return make(
        c,
        rs,
        "%",
        [
            f"{m.name}: dsim.cost.params active {fmt(p.active)} / total {fmt(p.total)} = "
            f"{pct(share)}",
            f"dense {llama31_8b().name}: active / total = {pct(dshare)}",
            "the natural reading inverts the claim: a dense model uses all its weights, an MoE a "
            "fraction",
        ],
        ["dsim.cost.params"],
    )


@check("a2-lora-bert-99pct")
def lora_bert(c: Claim) -> Verdict:
    L, d, r, v = 12, c.inputs["d_model"], c.inputs["rank"], 30522
    layer = 4 * d * d + 4 * d + 2 * d * 4 * d + 4 * d + d + 4 * d  # attention, FFN, 2 LayerNorms
    base = v * d + 512 * d + 2 * d + 2 * d + L * layer + d * d + d  # embeddings + layers + pooler
    added = L * c.inputs["matrices"] * r * (d + d)
    cut = 1 - added / base
    return make(
        c,
        at_least("rank 8 on Wq and Wv of BERT-base", c.q["trainable_reduction_pct"], cut * 100),
        "%",
        [
            f"BERT-base parameters (embeddings, {L} layers, pooler) = {base:,d}",
            f"LoRA rank {r} on Wq, Wv: {L} x 2 x {r} x ({d} + {d}) = {added:,d} trainable",
            f"reduction 1 - {added:,d} / {base:,d} = {pct(cut, 4)} (>= 99 %); the >95 % quality is "
            "not recomputable",
        ],
        ["arithmetic (BERT-base shapes)", "Hu et al. 2021 (LoRA)"],
    )


@check("a4-lora-rank16-1pct")
def lora_query_key(c: Claim) -> Verdict:
    rows, rs, r = [], [], c.inputs["rank"]
    for m in (deepseek_llm_7b(), llama31_8b()):
        total = params(m).total
        q_out, k_out = m.n_heads * m.head_size, m.kv_heads * m.head_size
        added = m.n_layers * r * ((m.dim + q_out) + (m.dim + k_out))
        rs.append(
            at_most(
                f"rank {r} on Wq and Wk of {m.name}", c.q["increment_pct_max"], added / total * 100
            )
        )
        rows.append(
            f"{m.name}: {m.n_layers} x {r} x (({m.dim} + {q_out}) + ({m.dim} + {k_out})) = "
            f"{added:,d} "
            f"added / dsim.cost.params total {fmt(total)} = {pct(added / total)}"
        )
    return make(c, rs, "%", rows, ["dsim.cost.params"])


def range_check(
    c: Claim,
    label: str,
    lo: float,
    hi: float,
    values: dict[str, float],
    unit: str,
    sources: list[str],
    tol: float = TOLERANCE,
    extra: list[Reading] | None = None,
) -> Verdict:
    """A stated 'typical range' [lo, hi] against the values of DeepSeek's models, checked at both
    ends: the low end holds when no model lies below it, the high end when none lies above it
    (within tol). `extra`: further parts of the same reading (other rows of the article's table)."""
    small, large = min(values, key=values.get), max(values, key=values.get)
    what = "DeepSeek" if extra else ""
    rs = range_ends(label, lo, hi, values[small], values[large], tol, what=what)
    lines = [
        f"stated range {fmt(lo)}-{fmt(hi)}; DeepSeek models: "
        + ", ".join(
            f"{k} {fmt(v)}" + ("" if lo * (1 - tol) <= v <= hi * (1 + tol) else " (outside)")
            for k, v in values.items()
        ),
        f"low end {fmt(lo)} against the smallest, {small} {fmt(values[small])}; high end "
        f"{fmt(hi)} against the largest, {large} {fmt(values[large])}",
    ]
    return make(c, rs + (extra or []), unit, lines, sources, tol=tol)


@check("a3-param-table-heads", "a3-param-table-hidden", "a3-param-table-vocab")
def preset_range(c: Claim) -> Verdict:
    field_, key = {
        "a3-param-table-heads": ("n_heads", "heads"),
        "a3-param-table-hidden": ("dim", "hidden"),
        "a3-param-table-vocab": ("vocab_size", "vocab"),
    }[c.id]
    values = {k: getattr(m, field_) for k, m in deepseek_models().items()}
    return range_check(
        c,
        f"{field_} of DeepSeek's models",
        c.q[f"{key}_min"],
        c.q[f"{key}_max"],
        values,
        field_,
        [f"ModelArgs.{field_} of dsim presets and DeepSeek LLM 7B/67B configs"],
    )


@check("a2-table-expert-count")
def expert_count_range(c: Claim) -> Verdict:
    values = {k: preset(k).n_routed_experts for k in DEEPSEEK_MOE}
    return range_check(
        c,
        "routed experts of DeepSeek's MoE models",
        c.q["experts_min"],
        c.q["experts_max"],
        values,
        "experts",
        ["ModelArgs.n_routed_experts of dsim presets"],
    )


@check("a2-table-param-scale")
def param_scale_range(c: Claim) -> Verdict:
    values = {k: params(m).total_no_mtp for k, m in deepseek_models().items()}
    label = "the table's parameter counts"
    gpt3 = dataclasses.replace(agree(label, c.q["gpt3_params"], ref("gpt3_params")), part="GPT-3")
    bert = range_ends(
        label,
        c.q["bert_min_params"],
        c.q["bert_max_params"],
        ref("bert_large_params"),
        ref("megatron_bert_params"),
        what="BERT",
    )
    v = range_check(
        c,
        label,
        c.q["deepseek_min_params"],
        c.q["deepseek_max_params"],
        values,
        "params",
        [
            "dsim.cost.params(...).total_no_mtp",
            src("gpt3_params"),
            src("bert_large_params"),
            src("megatron_bert_params"),
        ],
        extra=[gpt3, *bert],
    )
    extra = (
        f"\nGPT-3 {fmt(c.q['gpt3_params'])} = published {fmt(ref('gpt3_params'))} (right); BERT "
        f"{fmt(c.q['bert_min_params'])}-{fmt(c.q['bert_max_params'])} = BERT-large "
        f"{fmt(ref('bert_large_params'))} "
        f"to Megatron-BERT {fmt(ref('megatron_bert_params'))} (BERT-base is 110M)"
    )
    return dataclasses.replace(v, arithmetic=v.arithmetic + extra)


@check("a3-param-table-expert-capacity")
def expert_capacity(c: Claim) -> Verdict:
    lo, hi = c.q["expert_capacity_min"], c.q["expert_capacity_max"]
    v3 = preset("deepseek-v3")
    count = {k: preset(k).n_routed_experts for k in DEEPSEEK_MOE}
    k, e = v3.n_activated_experts, v3.n_routed_experts
    # tokens per expert = capacity_factor * T * k / E, capacity factor 1, V3's k = 8 of E = 256
    per_expert = {T: T * k / e for T in (512, 4096)}
    rs = [
        *not_stated(
            range_ends(
                "number of routed experts (the article names expert_count as another key)",
                lo,
                hi,
                min(count.values()),
                max(count.values()),
            )
        ),
        *not_stated(
            range_ends(
                "capacity factor (the article's own code has capacity_factor = 1.2 beside it)",
                lo,
                hi,
                1.0,
                ref("capacity_factor_switch"),
            )
        ),
        *range_ends(
            "tokens one expert takes, DeepSeek-V3, capacity factor 1, a batch of 512 tokens",
            lo,
            hi,
            per_expert[512],
        ),
        *range_ends(
            "tokens one expert takes, DeepSeek-V3, capacity factor 1, one 4096-token sequence",
            lo,
            hi,
            per_expert[4096],
        ),
    ]
    return make(
        c,
        rs,
        "",
        [
            "no DeepSeek config has 'expert_capacity'; GShard and Switch use the word for the "
            "tokens one expert may take per batch, T x capacity factor x k / E",
            "routed experts: " + ", ".join(f"{n} {v}" for n, v in count.items()),
            "capacity factor: 1.0-1.25 in GShard/Switch; dsim's deepseek-v3 preset "
            f"capacity_factor = {v3.capacity_factor} (no dropping)",
            f"per-expert token capacity = T x {k} / {e}: "
            + ", ".join(f"T={T}: {fmt(n)}" for T, n in per_expert.items())
            + "; the batch T, which the article does not give, decides where it falls",
        ],
        ["dsim presets", src("capacity_factor_switch")],
    )
