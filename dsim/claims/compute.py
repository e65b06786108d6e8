"""Checks of FLOP claims: MoE FLOPs, ratios, long context and sliding windows."""

from __future__ import annotations

import math

from dsim.claims.models import llama31_8b, moe_8b
from dsim.claims.verdict import (
    Claim,
    Verdict,
    agree,
    at_least,
    below_max,
    check,
    fmt,
    make,
    not_stated,
    pct,
)
from dsim.config import ModelArgs, preset
from dsim.cost import flops, params


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
def calculate_moe_flops_as_written(
    expert_num: int, expert_size: int, capacity_factor: float
) -> int:
    """What article a3's `calculate_moe_flops` returns, from its recorded formula: the capacity
    factor times the expert count (Python's round, capped at the count) experts, each charged
    2 x size^2."""
    experts_charged = min(expert_num, round(capacity_factor * expert_num))
    return experts_charged * 2 * expert_size**2


@check("a3-calc-moe-flops")
def calc_moe_flops(c: Claim) -> Verdict:
    e, s, cf = c.inputs["expert_num"], c.inputs["expert_size"], c.inputs["capacity_factor"]
    printed = calculate_moe_flops_as_written(e, s, cf)
    stated = c.q["stated_output_flops_per_token"]
    layer = ModelArgs(
        vocab_size=1,
        dim=s,
        inter_dim=0,
        moe_inter_dim=s,
        n_layers=1,
        n_dense_layers=0,
        n_heads=32,
        n_routed_experts=e,
        n_shared_experts=0,
        n_activated_experts=2,
        attn_type="mha",
        head_dim=s // 32,
        max_seq_len=16,
        original_seq_len=16,
    )
    real = flops(layer, batch=1, seq_len=1, mode="prefill").breakdown["routed_experts"]
    return make(
        c,
        agree("what the code prints", stated, printed, tol=0),
        "FLOPs",
        [
            f"round({cf} x {e}) = {round(cf * e)}; min({e}, {round(cf * e)}) = "
            f"{min(e, round(cf * e))} active experts",
            f"2 x {s} x {s} = {2 * s * s:,d} FLOPs per expert",
            f"{min(e, round(cf * e))} x {2 * s * s:,d} = {printed:,d} (= "
            f"2^{math.log2(printed):.0f}); print() shows {printed}",
            f"stated {stated:,d} is {printed / stated:.1f}x smaller than what the code prints",
            "the formula is also wrong: top-k, not the capacity factor, picks the experts; with "
            "top-2 SwiGLU experts "
            f"of width {s}, dsim.cost.flops(...).breakdown['routed_experts'] = {real:,d} per token",
        ],
        ["re-implementation of the article's calculate_moe_flops", "dsim.cost.flops"],
    )


@check("a1-flops-ratio-vs-100b")
def flops_ratio(c: Claim) -> Verdict:
    small, large = c.q["flops_small"], c.q["flops_large"]
    from_flops = 1 - small / large
    from_params = 1 - c.inputs["params_small"] / c.inputs["params_large"]
    return make(
        c,
        [
            at_least("the article's own FLOPs", c.q["energy_reduction_pct"], from_flops * 100),
            at_least(
                "2 N FLOPs per token, 8B vs 100B", c.q["energy_reduction_pct"], from_params * 100
            ),
        ],
        "%",
        [
            f"1 - {fmt(small)} / {fmt(large)} = {pct(from_flops)}",
            f"1 - (2 x 8e9) / (2 x 100e9) = {pct(from_params)}; both exceed the stated 'over 80 %' "
            "(energy taken proportional to FLOPs on the same hardware)",
        ],
        ["arithmetic"],
    )


@check("a1-flops-absolute-per-inference")
def flops_per_inference(c: Claim) -> Verdict:
    m = llama31_8b()
    per_token = flops(m, batch=1, seq_len=1, mode="decode", context=0).total
    request = flops(m, batch=1, seq_len=2048, mode="prefill").total
    longest = flops(m.replace(max_seq_len=131072), batch=1, seq_len=131072, mode="prefill").total
    stated = c.q["flops_small"]
    return make(
        c,
        [
            agree("one 2048-token request", stated, request),
            agree("one request filling Llama-3.1's 131,072-token context", stated, longest),
        ],
        "FLOPs",
        [
            f"dsim.cost.flops({m.name}): {fmt(per_token)} FLOPs per token (about 2 x "
            f"{fmt(params(m).active_no_embedding)} params)",
            f"one request of 2048 tokens (prefill): {fmt(request)}; of 131,072 tokens, the longest "
            f"context the model takes: {fmt(longest)}",
            f"stated {fmt(stated)} = {fmt(stated / per_token)} tokens' worth, "
            f"{stated / request:.0f}x one request; "
            "precision (FP16) does not change a FLOP count, and an MoE would need fewer FLOPs per "
            "token, not more",
        ],
        ["dsim.cost.flops"],
    )


@check("a1-equiv-13b-dense-compute")
def moe_max_flops(c: Claim) -> Verdict:
    m = moe_8b()
    real = flops(m, batch=1, seq_len=1, mode="decode", context=0).total
    everything = flops(
        m.replace(n_activated_experts=m.n_routed_experts),
        batch=1,
        seq_len=1,
        mode="decode",
        context=0,
    ).total
    dense13 = 2 * c.inputs["dense_params"]
    return make(
        c,
        below_max("all 8 experts active (the upper bound)", dense13, everything),
        "FLOPs/token",
        [
            f"dsim.cost.flops({m.name}, top-2): {fmt(real)} FLOPs per token",
            f"even with all {m.n_routed_experts} experts active: {fmt(everything)} (the most an "
            "8B-total model can do)",
            f"a 13B dense model: 2 x {fmt(c.inputs['dense_params'])} = {fmt(dense13)}, "
            f"{dense13 / everything:.2f}x more than the bound",
        ],
        ["dsim.cost.flops"],
        bound="an MoE does at most the FLOPs of a dense model of its total size",
    )


def _long_context_model(kind: str, moe: bool, active_only: bool = False) -> ModelArgs:
    """The '1.5T' model of a0 (16 experts of 96B: 125 layers x 3 x 16384 x 15625 each, top-4) with
    an attention of a usual shape, or a dense model of the same total (or active) size."""
    D, L, I = 16384, 125, 15625
    attn = (
        dict(attn_type="mha", n_heads=128, head_dim=128)
        if kind == "mha"
        else dict(
            attn_type="mla",
            n_heads=128,
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            attn_impl="absorb",
        )
    )
    common = dict(
        vocab_size=129280, dim=D, n_layers=L, max_seq_len=262144, original_seq_len=262144, **attn
    )
    if moe:
        return ModelArgs(
            inter_dim=0,
            moe_inter_dim=I,
            n_dense_layers=0,
            n_routed_experts=16,
            n_shared_experts=0,
            n_activated_experts=4,
            **common,
        )
    return ModelArgs(
        inter_dim=(4 if active_only else 16) * I,
        n_dense_layers=L,
        n_routed_experts=0,
        n_shared_experts=0,
        n_activated_experts=0,
        **common,
    )


@check("a0-long-context-200k-efficiency")
def long_context_gain(c: Claim) -> Verdict:
    n, stated = int(c.q["context_tokens"]), c.q["efficiency_gain_pct"]
    window = (
        512 + 8
    )  # the article's own long-sequence design (a4: 512-token window + 8 global tokens)
    lines, rs = [], []
    for label, kind, ctx, active_only, said in (
        (
            "vs dense of equal total, windowed attention (512 + 8 keys, a4's sizes)",
            "mha",
            window,
            False,
            True,
        ),
        ("vs dense of equal total, full MHA over 200K keys", "mha", n, False, False),
        (
            "vs dense of equal total, MLA (DeepSeek-V3's attention) over 200K",
            "mla",
            n,
            False,
            False,
        ),
        ("vs dense of equal active size, windowed attention", "mha", window, True, True),
    ):
        fm = flops(
            _long_context_model(kind, True), batch=1, seq_len=1, mode="decode", context=ctx
        ).total
        fd = flops(
            _long_context_model(kind, False, active_only),
            batch=1,
            seq_len=1,
            mode="decode",
            context=ctx,
        ).total
        gain = 1 - fm / fd
        r = at_least(label, stated, gain * 100)
        rs.append(r if said else not_stated(r))
        lines.append(
            f"{label}: dsim.cost.flops per decoded token MoE {fmt(fm)} / dense {fmt(fd)} -> saving "
            f"{pct(gain)}"
        )
    p = params(_long_context_model("mha", True))
    lines.insert(
        0,
        f"model: 16 experts x 125 layers x 3 x 16384 x 15625 = 16 x 96e9 expert params, top-4 "
        f"(375B active), plus attention: dsim.cost.params total {fmt(p.total)}, active "
        f"{fmt(p.active)}",
    )
    lines.append("MoE cuts only the FFN; at 200K tokens the attention core decides the saving")
    lines.append(
        "the article's own long-sequence design is a sliding window with global memory (its "
        "section 2): the full-attention and MLA readings are context"
    )
    return make(c, rs, "%", lines, ["dsim.cost.flops", "dsim.cost.params"])


def window_saving(n: int, window: int, global_tokens: int) -> float:
    """Share of causal attention-score pairs a sliding window (plus global tokens) removes at
    length n."""
    from dsim.cost.flops import attention_pairs

    full = attention_pairs(1, n, 0, causal=True)
    w = window
    windowed = (n * (n + 1) // 2 if n <= w else w * (w + 1) // 2 + (n - w) * w) + global_tokens * n
    return 1 - windowed / full


def window_length_for(saving: float, window: int, global_tokens: int) -> int:
    """The shortest sequence length at which the window saves at least `saving` (bisection)."""
    lo, hi = window, 1 << 24
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if window_saving(mid, window, global_tokens) < saving else (lo, mid)
    return hi


@check("a4-sliding-window-60pct")
def sliding_window(c: Claim) -> Verdict:
    w, g, stated = c.inputs["window_tokens"], c.inputs["global_tokens"], c.q["reduction_pct"]

    def saving(n: int) -> float:
        return window_saving(n, w, g)

    hi = window_length_for(stated / 100, w, g)
    v3 = preset("deepseek-v3")
    f = flops(v3, batch=1, seq_len=4096, mode="prefill")
    core = f.breakdown_causal["attn_core"] / f.total_causal
    rs = [
        agree(f"attention scores at {n} tokens", stated, saving(n) * 100)
        for n in (2048, 4096, 32768, 131072)
    ]
    rs.append(
        not_stated(
            agree("whole DeepSeek-V3 forward at 4096 tokens", stated, saving(4096) * core * 100)
        )
    )
    return make(
        c,
        rs,
        "%",
        [
            "causal pairs n(n+1)/2 (dsim.cost.flops.attention_pairs) vs windowed sum(min(i+1, "
            f"{w})) + {g} n",
            "saving: " + ", ".join(f"{n}: {pct(saving(n))}" for n in (2048, 4096, 32768, 131072)),
            f"exactly {stated} % only at n = {hi} tokens (dsim.claims.window_length_for)",
            f"the core is {pct(core)} of DeepSeek-V3's forward FLOPs at 4096 tokens "
            "(dsim.cost.flops, causal), "
            f"so the whole model saves {pct(saving(4096) * core)}; DeepSeek uses MLA, not sliding "
            "windows",
        ],
        ["dsim.cost.flops.attention_pairs", "dsim.cost.flops"],
    )
