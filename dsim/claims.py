"""Checking the seed articles' numbers with dsim.

Five Chinese articles about DeepSeek (the book's seed material) make many numeric claims.
`claims_data.json` (package data) inventories every one of them: an English paraphrase, the stated
quantities, the inputs a check needs, the topic, and whether the claim is numeric at all (benchmark
scores, advice and code descriptions are not). This module recomputes each numeric claim with
dsim's cost models and gives it a verdict:

    holds        the stated number agrees with the computed one within a tolerance (5 % unless
                 the check says otherwise), or lies inside a computed feasible range;
    off          it disagrees, by a factor or a percentage;
    cannot_hold  it violates a bound that no implementation can beat: bytes below bits x count / 8,
                 active parameters below top-k of the experts, a speed-up above the ratio of peak
                 throughputs and of bytes moved, a model larger than the memory it must fit in;
    depends      the claim is ambiguous; each reading is computed and gets its own verdict
                 (`Verdict.readings`), and the readings disagree.

A claim that is not numeric gets the verdict `not_numeric` with the inventory's reason.

Each kind of check is one small function registered for the claim ids it checks
(`@check("a1-fp16-16gb", ...)`); `check_all()` runs them and `summary()` prints the table.
Every verdict carries the arithmetic as text and the sources it used (dsim functions, the GPU
catalog, committed measurements, published figures in `REFERENCES`).

    from dsim.claims import check_all, check_claim, summary
    print(check_claim("a3-calc-moe-flops").arithmetic)
    print(summary())
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable

from dsim.config import PUBLISHED_PARAMS, ModelArgs, preset
from dsim.cost import (bubble_fraction_1f1b, bytes_per_param, exposed_comm_time, flops, get_gpu,
                       kv_cache_bytes_per_token, memory, params, peak_flops, tp_volume, weight_bytes)

VERDICTS = ("holds", "off", "cannot_hold", "depends")
NOT_NUMERIC = "not_numeric"
TOLERANCE = 0.05
ARTICLES = {
    "000_648e38935dd2b9e3.txt": "a0: parameter scale (1.5T MoE, offloading)",
    "001_04275804c2f0b6f3.txt": "a1: DeepSeek-8B engineering",
    "002_ca5ffbd08cee82b3.txt": "a2: principles and low compute",
    "003_7d9d29d2b6dc4aed.txt": "a3: parameter guide",
    "004_0d1d97e7b669c1ba.txt": "a4: architecture and optimisation",
}

# ---------------------------------------------------------------------------------------------
# Published figures a check compares against (value, source). GPU figures come from
# dsim.cost.hardware; these are the ones the catalog does not hold.
# ---------------------------------------------------------------------------------------------
REFERENCES: dict[str, tuple[float, str]] = {
    "gpt3_params": (175e9, "Brown et al. 2020, GPT-3 paper, table 2.1"),
    "gpt3_tokens": (300e9, "Brown et al. 2020, GPT-3 paper, section 2.2 (300B training tokens)"),
    "gpt3_cc_filtered_gb": (570, "Brown et al. 2020, section 2.2: filtered Common Crawl is 570 GB of text"),
    "gpt3_train_flops": (3.14e23, "Brown et al. 2020, appendix D; Patterson et al. 2021, table 4"),
    "gpt3_gpus": (10_000, "Patterson et al. 2021, table 4: 10,000 V100 GPUs"),
    "gpt3_train_days": (14.8, "Patterson et al. 2021, table 4: 14.8 days"),
    "gpt3_energy_mwh": (1287, "Patterson et al. 2021, table 4: 1,287 MWh"),
    "v100_fp16_flops": (125e12, "NVIDIA V100 SXM2 datasheet: 125 TFLOPS tensor"),
    "household_us_mwh": (11.7, "World Energy Council (2010), as quoted by shrinkthatfootprint.com"),
    "household_world_mwh": (3.5, "World Energy Council (2010): average electrified household"),
    "household_cn_mwh": (1.3, "World Energy Council (2010): China"),
    "c4_en_tokens": (156e9, "Dodge et al. 2021, 'Documenting large webtext corpora', table 1: C4.EN"),
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
    "snapdragon_8g2_bw": (67.2e9, "Qualcomm Snapdragon 8 Gen 2: LPDDR5X-8400, 64-bit bus = 67.2 GB/s"),
    "rv1126_bw": (12.8e9, "Rockchip RV1126: 32-bit LPDDR4 at 3200 MT/s = 12.8 GB/s (assumption: best case)"),
    "capacity_factor_switch": (1.25, "Fedus et al. 2021 (Switch Transformer): capacity factors 1.0-1.25"),
}


def ref(name: str) -> float:
    return REFERENCES[name][0]


def src(name: str) -> str:
    return REFERENCES[name][1]


# ---------------------------------------------------------------------------------------------
# Claims and verdicts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One entry of claims_data.json."""
    id: str
    article: str
    claim: str
    topic: str
    numeric: bool
    check: str
    quantities: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    reason: str = ""
    note: str = ""
    formula: str = ""
    expected: dict = field(default_factory=dict)
    verdict_hint: str = ""
    why: str = ""

    @property
    def q(self) -> dict:
        return self.quantities


@dataclass(frozen=True)
class Reading:
    """One interpretation of a claim, computed: what it states, what dsim computes, the verdict."""
    label: str
    stated: float
    computed: float
    verdict: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.stated / self.computed if self.computed else math.inf


@dataclass(frozen=True)
class Verdict:
    """The check of one claim.

    stated, computed: the claim's number and dsim's (of the first reading) in `unit`;
    ratio = stated / computed. verdict: holds / off / cannot_hold / depends, or not_numeric.
    arithmetic: the computation as text. sources: what it used. readings: every interpretation
    with its own verdict (one for an unambiguous claim). reason: why a claim is not checked.
    """
    claim_id: str
    article: str
    topic: str
    claim: str
    verdict: str
    stated: float | None = None
    computed: float | None = None
    unit: str = ""
    arithmetic: str = ""
    sources: tuple[str, ...] = ()
    readings: tuple[Reading, ...] = ()
    tolerance: float = TOLERANCE
    bound: str = ""
    reason: str = ""

    @property
    def ratio(self) -> float | None:
        if self.stated is None or not self.computed:
            return None
        return self.stated / self.computed

    @property
    def off_by(self) -> str:
        """'x2.5' when stated and computed differ by a factor of 2 or more, else '+12.0%'."""
        r = self.ratio
        if r is None:
            return ""
        if r >= 2 or r <= 0.5:
            return f"x{max(r, 1 / r):.3g}" if r > 0 else "sign"
        return f"{(r - 1) * 100:+.1f}%"

    @property
    def article_label(self) -> str:
        return ARTICLES.get(self.article, self.article)[:2]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_claims() -> tuple[Claim, ...]:
    """Every claim of claims_data.json, in file order."""
    text = resources.files("dsim").joinpath("claims_data.json").read_text(encoding="utf-8")
    known = set(Claim.__dataclass_fields__)
    return tuple(Claim(**{k: v for k, v in d.items() if k in known}) for d in json.loads(text))


def get_claim(claim_id: str) -> Claim:
    for c in load_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"unknown claim {claim_id!r}; see [c.id for c in load_claims()]")


# ---------------------------------------------------------------------------------------------
# Formatting and the verdict rules
# ---------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 4) -> str:
    """A number for the arithmetic text: 1,234 / 1.536e12 / 0.0113."""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (abs(x) >= 1 and float(x).is_integer() and abs(x) < 1e7):
        return f"{int(x):,d}" if abs(x) < 1e7 else f"{x:.{digits}g}".replace("e+", "e")
    return f"{x:.{digits}g}".replace("e+", "e").replace("e-0", "e-")


def pct(x: float, digits: int = 3) -> str:
    return f"{x * 100:.{digits}g} %"


def agree(label: str, stated: float, computed: float, tol: float = TOLERANCE, note: str = "") -> Reading:
    """The claim states a value: holds within tol, else off."""
    ok = abs(stated / computed - 1) <= tol if computed else stated == 0
    return Reading(label, stated, computed, "holds" if ok else "off", note)


def at_least(label: str, stated: float, computed: float, tol: float = TOLERANCE, note: str = "",
             fail: str = "off") -> Reading:
    """The claim says 'over / at least stated': holds if the computed value reaches it."""
    return Reading(label, stated, computed, "holds" if computed >= stated * (1 - tol) else fail, note)


def at_most(label: str, stated: float, computed: float, tol: float = TOLERANCE, note: str = "",
            fail: str = "off") -> Reading:
    """The claim says 'under / at most stated': holds if the computed value stays below it. With
    fail="cannot_hold" the computed value is a floor no implementation can go below."""
    return Reading(label, stated, computed, "holds" if computed <= stated * (1 + tol) else fail, note)


def below_max(label: str, stated: float, bound: float, tol: float = TOLERANCE, note: str = "") -> Reading:
    """stated must not exceed a physical or logical maximum `bound` (a speed-up, a capacity)."""
    return Reading(label, stated, bound, "cannot_hold" if stated > bound * (1 + tol) else "holds", note)


def above_min(label: str, stated: float, bound: float, tol: float = TOLERANCE, note: str = "") -> Reading:
    """stated must not fall below a physical or logical minimum `bound` (bytes, active parameters)."""
    return Reading(label, stated, bound, "cannot_hold" if stated < bound * (1 - tol) else "holds", note)


def within(label: str, stated: float, lo: float, hi: float, note: str = "") -> Reading:
    """The claim's value must lie in a computed feasible range [lo, hi]; computed = the midpoint."""
    return Reading(label, stated, (lo + hi) / 2, "holds" if lo <= stated <= hi else "off", note)


def in_range(label: str, lo: float, hi: float, computed: float, note: str = "") -> Reading:
    """The claim states a range [lo, hi]: holds if the computed value lies in it; stated = the midpoint."""
    return Reading(label, (lo + hi) / 2, computed, "holds" if lo <= computed <= hi else "off", note)


def combine(readings: tuple[Reading, ...] | list[Reading]) -> str:
    """One verdict for all readings: theirs when they agree, else depends."""
    kinds = {r.verdict for r in readings}
    return kinds.pop() if len(kinds) == 1 else "depends"


def make(c: Claim, readings: list[Reading] | Reading, unit: str, arithmetic: str | list[str],
         sources: list[str] | tuple[str, ...], bound: str = "", tol: float = TOLERANCE) -> Verdict:
    """The Verdict of claim c from its readings (the first one gives stated and computed); the
    readings are appended to the arithmetic when there are several."""
    rs = (readings,) if isinstance(readings, Reading) else tuple(readings)
    text = "\n".join(arithmetic) if isinstance(arithmetic, list) else arithmetic
    if len(rs) > 1:
        text += "\n" + "\n".join(f"  reading '{r.label}': stated {fmt(r.stated)} vs {fmt(r.computed)} -> {r.verdict}"
                                 + (f" ({r.note})" if r.note else "") for r in rs)
    return Verdict(claim_id=c.id, article=c.article, topic=c.topic, claim=c.claim, verdict=combine(rs),
                   stated=rs[0].stated, computed=rs[0].computed, unit=unit, arithmetic=text,
                   sources=tuple(sources), readings=rs, tolerance=tol, bound=bound)


# ---------------------------------------------------------------------------------------------
# Models the checks use (besides the presets)
# ---------------------------------------------------------------------------------------------
def _dense(name: str, vocab: int, dim: int, inter: int, layers: int, heads: int, kv_heads: int = 0,
           head_dim: int = 128, seq: int = 4096) -> ModelArgs:
    return ModelArgs(vocab_size=vocab, dim=dim, inter_dim=inter, n_layers=layers, n_dense_layers=layers,
                     n_heads=heads, n_routed_experts=0, n_shared_experts=0, n_activated_experts=0,
                     attn_type="gqa" if kv_heads else "mha", head_dim=head_dim, n_kv_heads=kv_heads,
                     max_seq_len=seq, original_seq_len=seq, name=name)


@lru_cache(maxsize=None)
def llama31_8b() -> ModelArgs:
    """DeepSeek-R1-Distill-Llama-8B, the only DeepSeek '8B': Llama-3.1-8B's config.json (dense, GQA 32/8)."""
    return _dense("r1-distill-llama-8b", 128256, 4096, 14336, 32, 32, kv_heads=8, seq=8192)


@lru_cache(maxsize=None)
def deepseek_llm_7b() -> ModelArgs:
    """deepseek-ai/deepseek-llm-7b-base config.json (dense, MHA)."""
    return _dense("deepseek-llm-7b", 102400, 4096, 11008, 30, 32)


@lru_cache(maxsize=None)
def deepseek_llm_67b() -> ModelArgs:
    """deepseek-ai/deepseek-llm-67b-base config.json (dense, GQA 64/8)."""
    return _dense("deepseek-llm-67b", 102400, 8192, 22016, 95, 64, kv_heads=8)


@lru_cache(maxsize=None)
def moe_8b() -> ModelArgs:
    """The article's premise, an 8B-total top-2-of-8 MoE: Mixtral's shape with experts 2048 wide."""
    return preset("mixtral-8x7b", moe_inter_dim=2048).replace(name="moe-8b-top2of8")


def toy_moe(n_experts: int, expert_size: float, top_k: int, dim: int = 16384) -> ModelArgs:
    """One MoE layer whose experts hold `expert_size` parameters each, with a negligible attention
    (one head of width 2) and embedding (one token): the article's experts and nothing else."""
    inter = round(expert_size / (3 * dim))
    return ModelArgs(vocab_size=1, dim=dim, inter_dim=0, moe_inter_dim=inter, n_layers=1, n_dense_layers=0,
                     n_heads=1, n_routed_experts=n_experts, n_shared_experts=0, n_activated_experts=top_k,
                     attn_type="gqa", head_dim=2, n_kv_heads=1, max_seq_len=16, original_seq_len=16,
                     name=f"{n_experts}x{fmt(expert_size)} top-{top_k}")


DEEPSEEK_MOE = ("deepseekmoe-16b", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3")


def deepseek_models() -> dict[str, ModelArgs]:
    """Every DeepSeek release dsim can build: dense LLM 7B and 67B, and the MoE presets."""
    out = {"deepseek-llm-7b": deepseek_llm_7b(), "deepseek-llm-67b": deepseek_llm_67b()}
    out.update({n: preset(n) for n in DEEPSEEK_MOE})
    return out


@lru_cache(maxsize=None)
def quant_bytes_per_param(bits: int, group_size: int | None, symmetric: bool = True) -> float:
    """Bytes per element of a weight quantized by dsim.quant (codes + bf16 scales + zero points),
    measured with QuantizedTensor.nbytes on a 256 x 1024 tensor."""
    import torch
    from dsim.quant import quantize
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    qt = quantize(w, bits=bits, granularity="group" if group_size else "channel",
                  group_size=group_size or 1024, symmetric=symmetric)
    return qt.nbytes / w.numel()


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
CHECKS: dict[str, Callable[[Claim], Verdict]] = {}


def check(*claim_ids: str) -> Callable[[Callable[[Claim], Verdict]], Callable[[Claim], Verdict]]:
    """Register a check function for these claim ids."""
    def register(fn: Callable[[Claim], Verdict]) -> Callable[[Claim], Verdict]:
        for cid in claim_ids:
            if cid in CHECKS:
                raise ValueError(f"claim {cid!r} already has a check ({CHECKS[cid].__name__})")
            CHECKS[cid] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------------
# Parameters: totals, active counts, splits
# ---------------------------------------------------------------------------------------------
@check("a0-moe-1.5t-total")
def moe_total_from_experts(c: Claim) -> Verdict:
    n, size, stated = c.inputs["num_experts"], c.inputs["params_per_expert"], c.q["total_params"]
    p = params(toy_moe(n, size, 2))
    experts = p.breakdown["routed_experts"]
    return make(c, agree("16 experts of 96B", stated, experts), "params", [
        f"{n} experts x {fmt(size)} params = {fmt(n * size)}",
        f"dsim.cost.params(one MoE layer with these experts).breakdown['routed_experts'] = {fmt(experts)}",
        f"stated {fmt(stated)} / {fmt(experts)} = {experts and stated / experts:.3f}: the experts alone "
        f"already exceed 1.5T, leaving no room for attention, embeddings or router"],
        ["dsim.cost.params"])


@check("a0-moe-1.5t-active")
def moe_active_top_k(c: Claim) -> Verdict:
    n, size, stated = c.q["num_experts"], c.inputs["params_per_expert"], c.q["active_params"]
    rs, lines = [], []
    for k, why in ((2, "top-2, the default of the article's own gating code"), (4, "top-4 (not stated anywhere)")):
        a = params(toy_moe(n, size, k)).active_breakdown["routed_experts"]
        rs.append(agree(why, stated, a))
        lines.append(f"top-{k} of {n}: dsim.cost.params(...).active_breakdown['routed_experts'] = {k} x {fmt(size)} = {fmt(a)}")
    lines.append(f"375e9 = 1.5e12 / 4 exactly: a quarter of the total, as if 4 of 16 experts were active and "
                 f"nothing were shared (DeepSeek-V3 activates {pct(PUBLISHED_PARAMS['deepseek-v3'][1] / PUBLISHED_PARAMS['deepseek-v3'][0])})")
    return make(c, rs, "params", lines, ["dsim.cost.params", "the article's MoEGating(top_k=2)"])


@check("a4-200b-35b-top2-of-8")
def moe_min_active(c: Claim) -> Verdict:
    total, n, k, stated = c.q["total_params"], c.q["num_experts"], c.q["top_k"], c.q["active_params_max"]
    p = params(toy_moe(n, total / n, k))
    floor = p.active_breakdown["routed_experts"]
    return make(c, above_min("all 200B in experts (the most favourable split)", stated, floor), "params", [
        f"smallest possible active count: every parameter in the {n} experts, none shared",
        f"dsim.cost.params({n} experts of {fmt(total / n)}, top-{k}).active_breakdown['routed_experts'] = {fmt(floor)}",
        f"stated 'under {fmt(stated)}' < {fmt(floor)}: impossible; any shared attention or embedding adds to it"],
        ["dsim.cost.params"], bound="top-k of E experts activates at least k/E of the expert parameters")


@check("a3-175b-40b-active")
def active_floor_from_split(c: Claim) -> Verdict:
    total, stated = c.q["total_params"], c.q["active_params"]
    always = (c.inputs["shared_frac"] + c.inputs["router_frac"]) * total
    return make(c, above_min("the article's own 35/60/5 split", stated, always), "params", [
        f"shared 35 % + routing 5 % of {fmt(total)} = {fmt(always)} parameters every token uses",
        f"stated active {fmt(stated)} < {fmt(always)} before a single expert is counted"],
        ["arithmetic on the article's split (a3-param-split-shared-expert-router)"],
        bound="active parameters include every shared parameter")


@check("a3-param-split-shared-expert-router")
def param_split(c: Claim) -> Verdict:
    lines, rs = [], []
    for name in ("deepseek-v3", "deepseek-v2", "deepseekmoe-16b"):
        p = params(preset(name))
        b, total = p.breakdown, p.total_no_mtp
        router, experts = b["gate"] / total, b["routed_experts"] / total
        shared = 1 - router - experts
        lines.append(f"{name}: dsim.cost.params breakdown / total_no_mtp {fmt(total)}: routed experts "
                     f"{pct(experts)}, gate {pct(router)}, everything else {pct(shared)}")
        if name == "deepseek-v3":
            rs = [agree("router share, DeepSeek-V3", c.q["router_pct"], router * 100),
                  agree("expert share, DeepSeek-V3", c.q["expert_pct"], experts * 100),
                  agree("shared share, DeepSeek-V3", c.q["shared_pct"], shared * 100)]
    lines.append("experts hold ~90-97 % and the router a few hundredths of a percent, not 60 % and 5 %")
    return make(c, rs, "%", lines, ["dsim.cost.params(preset(...)).breakdown"])


@check("a1-param-utilization-65pct")
def active_share(c: Claim) -> Verdict:
    m = moe_8b()
    p = params(m)
    share = p.active / p.total
    dense = params(llama31_8b())
    return make(c, [agree("share of weights a token uses, 8B top-2-of-8 MoE", c.q["moe_utilization_pct"], share * 100),
                    agree("same for a dense model (stated 30-40 %)", c.q["dense_utilization_pct_high"],
                          dense.active / dense.total * 100)], "%", [
        f"{m.name}: dsim.cost.params active {fmt(p.active)} / total {fmt(p.total)} = {pct(share)}",
        f"dense {llama31_8b().name}: active / total = {pct(dense.active / dense.total)}",
        "the natural reading inverts the claim: a dense model uses all its weights, an MoE a fraction"],
        ["dsim.cost.params"])


@check("a2-lora-bert-99pct")
def lora_bert(c: Claim) -> Verdict:
    L, d, r, v = 12, c.inputs["d_model"], c.inputs["rank"], 30522
    layer = 4 * d * d + 4 * d + 2 * d * 4 * d + 4 * d + d + 4 * d       # attention, FFN, 2 LayerNorms
    base = v * d + 512 * d + 2 * d + 2 * d + L * layer + d * d + d     # embeddings + layers + pooler
    added = L * c.inputs["matrices"] * r * (d + d)
    cut = 1 - added / base
    return make(c, at_least("rank 8 on Wq and Wv of BERT-base", c.q["trainable_reduction_pct"], cut * 100), "%", [
        f"BERT-base parameters (embeddings, {L} layers, pooler) = {base:,d}",
        f"LoRA rank {r} on Wq, Wv: {L} x 2 x {r} x ({d} + {d}) = {added:,d} trainable",
        f"reduction 1 - {added:,d} / {base:,d} = {pct(cut, 4)} (>= 99 %); the >95 % quality is not recomputable"],
        ["arithmetic (BERT-base shapes)", "Hu et al. 2021 (LoRA)"])


@check("a4-lora-rank16-1pct")
def lora_query_key(c: Claim) -> Verdict:
    rows, rs, r = [], [], c.inputs["rank"]
    for m in (deepseek_llm_7b(), llama31_8b()):
        total = params(m).total
        q_out, k_out = m.n_heads * m.head_size, m.kv_heads * m.head_size
        added = m.n_layers * r * ((m.dim + q_out) + (m.dim + k_out))
        rs.append(at_most(f"rank {r} on Wq and Wk of {m.name}", c.q["increment_pct_max"], added / total * 100))
        rows.append(f"{m.name}: {m.n_layers} x {r} x (({m.dim} + {q_out}) + ({m.dim} + {k_out})) = {added:,d} "
                    f"added / dsim.cost.params total {fmt(total)} = {pct(added / total)}")
    return make(c, rs, "%", rows, ["dsim.cost.params"])


def range_check(c: Claim, label: str, lo: float, hi: float, values: dict[str, float], unit: str,
                sources: list[str], tol: float = TOLERANCE) -> Verdict:
    """A stated 'typical range' [lo, hi] against the values of DeepSeek's models: holds when every
    model lies inside (within tol), else off, measured at the model farthest outside."""
    inside = {k: v for k, v in values.items() if lo * (1 - tol) <= v <= hi * (1 + tol)}
    lines = [f"stated range {fmt(lo)}-{fmt(hi)}; DeepSeek models: "
             + ", ".join(f"{k} {fmt(v)}" + ("" if k in inside else " (outside)") for k, v in values.items()),
             f"{len(inside)} of {len(values)} inside"]
    if len(inside) == len(values):
        r = Reading(label, hi, max(values.values()), "holds")
    else:
        far = max((v for v in values.values() if v not in inside.values()), key=lambda v: max(v / hi, lo / v))
        edge = hi if far > hi else lo
        r = Reading(label, edge, far, "off")
        lines.append(f"farthest outside: {fmt(far)} against the range's {fmt(edge)}")
    return make(c, r, unit, lines, sources, tol=tol)


@check("a3-param-table-heads", "a3-param-table-hidden", "a3-param-table-vocab")
def preset_range(c: Claim) -> Verdict:
    field_, key = {"a3-param-table-heads": ("n_heads", "heads"), "a3-param-table-hidden": ("dim", "hidden"),
                   "a3-param-table-vocab": ("vocab_size", "vocab")}[c.id]
    values = {k: getattr(m, field_) for k, m in deepseek_models().items()}
    return range_check(c, f"{field_} of DeepSeek's models", c.q[f"{key}_min"], c.q[f"{key}_max"], values, field_,
                       [f"ModelArgs.{field_} of dsim presets and DeepSeek LLM 7B/67B configs"])


@check("a2-table-expert-count")
def expert_count_range(c: Claim) -> Verdict:
    values = {k: preset(k).n_routed_experts for k in DEEPSEEK_MOE}
    return range_check(c, "routed experts of DeepSeek's MoE models", c.q["experts_min"], c.q["experts_max"],
                       values, "experts", ["ModelArgs.n_routed_experts of dsim presets"])


@check("a2-table-param-scale")
def param_scale_range(c: Claim) -> Verdict:
    values = {k: params(m).total_no_mtp for k, m in deepseek_models().items()}
    v = range_check(c, "total parameters of DeepSeek's models", c.q["deepseek_min_params"], c.q["deepseek_max_params"],
                    values, "params", ["dsim.cost.params(...).total_no_mtp", src("gpt3_params"),
                                       src("bert_large_params"), src("megatron_bert_params")])
    extra = (f"\nGPT-3 {fmt(c.q['gpt3_params'])} = published {fmt(ref('gpt3_params'))} (right); BERT "
             f"{fmt(c.q['bert_min_params'])}-{fmt(c.q['bert_max_params'])} = BERT-large {fmt(ref('bert_large_params'))} "
             f"to Megatron-BERT {fmt(ref('megatron_bert_params'))} (BERT-base is 110M)")
    return dataclasses.replace(v, arithmetic=v.arithmetic + extra)


@check("a3-param-table-expert-capacity")
def expert_capacity(c: Claim) -> Verdict:
    lo, hi = c.q["expert_capacity_min"], c.q["expert_capacity_max"]
    v3 = preset("deepseek-v3")
    count = max(preset(k).n_routed_experts for k in DEEPSEEK_MOE)
    # tokens per expert = capacity_factor * T * k / E, capacity factor 1, V3's k = 8 of E = 256
    per_expert = {T: T * v3.n_activated_experts / v3.n_routed_experts for T in (512, 2048)}
    rs = [Reading("number of routed experts (largest: DeepSeek-V3)", hi, count, "off"),
          Reading("capacity factor (Switch: 1.0-1.25; DeepSeek-V3 drops no tokens)", lo,
                  ref("capacity_factor_switch"), "off"),
          within("tokens one expert takes per batch, DeepSeek-V3, capacity factor 1", (lo + hi) / 2,
                 per_expert[512], per_expert[2048], note="T = 512 to 2048 tokens per batch")]
    return make(c, rs, "", [
        "no DeepSeek config has 'expert_capacity'; three readings:",
        f"routed experts: {', '.join(f'{k} {preset(k).n_routed_experts}' for k in DEEPSEEK_MOE)}",
        f"capacity factor: ~1 in GShard/Switch; dsim's deepseek-v3 preset capacity_factor = {v3.capacity_factor} (no dropping)",
        f"per-expert token capacity = T x {v3.n_activated_experts} / {v3.n_routed_experts}: "
        + ", ".join(f"T={T}: {fmt(n)}" for T, n in per_expert.items())],
        ["dsim presets", src("capacity_factor_switch")])


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
def calculate_moe_flops_as_written(expert_num: int, expert_size: int, capacity_factor: float) -> int:
    """What article a3's `calculate_moe_flops` returns, from its recorded formula: the capacity factor
    times the expert count (Python's round, capped at the count) experts, each charged 2 x size^2."""
    experts_charged = min(expert_num, round(capacity_factor * expert_num))
    return experts_charged * 2 * expert_size ** 2


@check("a3-calc-moe-flops")
def calc_moe_flops(c: Claim) -> Verdict:
    e, s, cf = c.inputs["expert_num"], c.inputs["expert_size"], c.inputs["capacity_factor"]
    printed = calculate_moe_flops_as_written(e, s, cf)
    stated = c.q["stated_output_flops_per_token"]
    layer = ModelArgs(vocab_size=1, dim=s, inter_dim=0, moe_inter_dim=s, n_layers=1, n_dense_layers=0, n_heads=32,
                      n_routed_experts=e, n_shared_experts=0, n_activated_experts=2, attn_type="mha",
                      head_dim=s // 32, max_seq_len=16, original_seq_len=16)
    real = flops(layer, batch=1, seq_len=1, mode="prefill").breakdown["routed_experts"]
    return make(c, agree("what the code prints", stated, printed, tol=0), "FLOPs", [
        f"round({cf} x {e}) = {round(cf * e)}; min({e}, {round(cf * e)}) = {min(e, round(cf * e))} active experts",
        f"2 x {s} x {s} = {2 * s * s:,d} FLOPs per expert",
        f"{min(e, round(cf * e))} x {2 * s * s:,d} = {printed:,d} (= 2^{math.log2(printed):.0f}); print() shows {printed}",
        f"stated {stated:,d} is {printed / stated:.1f}x smaller than what the code prints",
        f"the formula is also wrong: top-k, not the capacity factor, picks the experts; with top-2 SwiGLU experts "
        f"of width {s}, dsim.cost.flops(...).breakdown['routed_experts'] = {real:,d} per token"],
        ["re-implementation of the article's calculate_moe_flops", "dsim.cost.flops"])


@check("a1-flops-ratio-vs-100b")
def flops_ratio(c: Claim) -> Verdict:
    small, large = c.q["flops_small"], c.q["flops_large"]
    from_flops = 1 - small / large
    from_params = 1 - c.inputs["params_small"] / c.inputs["params_large"]
    return make(c, [at_least("the article's own FLOPs", c.q["energy_reduction_pct"], from_flops * 100),
                    at_least("2 N FLOPs per token, 8B vs 100B", c.q["energy_reduction_pct"], from_params * 100)], "%", [
        f"1 - {fmt(small)} / {fmt(large)} = {pct(from_flops)}",
        f"1 - (2 x 8e9) / (2 x 100e9) = {pct(from_params)}; both exceed the stated 'over 80 %' "
        "(energy taken proportional to FLOPs on the same hardware)"],
        ["arithmetic"])


@check("a1-flops-absolute-per-inference")
def flops_per_inference(c: Claim) -> Verdict:
    m = llama31_8b()
    per_token = flops(m, batch=1, seq_len=1, mode="decode", context=0).total
    request = flops(m, batch=1, seq_len=2048, mode="prefill").total
    stated = c.q["flops_small"]
    return make(c, agree("one 2048-token request", stated, request), "FLOPs", [
        f"dsim.cost.flops({m.name}): {fmt(per_token)} FLOPs per token (about 2 x {fmt(params(m).active_no_embedding)} params)",
        f"one request of 2048 tokens (prefill): {fmt(request)}",
        f"stated {fmt(stated)} = {fmt(stated / per_token)} tokens' worth, {stated / request:.0f}x one request; "
        "precision (FP16) does not change a FLOP count, and an MoE would need fewer FLOPs per token, not more"],
        ["dsim.cost.flops"])


@check("a1-equiv-13b-dense-compute")
def moe_max_flops(c: Claim) -> Verdict:
    m = moe_8b()
    real = flops(m, batch=1, seq_len=1, mode="decode", context=0).total
    everything = flops(m.replace(n_activated_experts=m.n_routed_experts), batch=1, seq_len=1, mode="decode",
                       context=0).total
    dense13 = 2 * c.inputs["dense_params"]
    return make(c, below_max("all 8 experts active (the upper bound)", dense13, everything), "FLOPs/token", [
        f"dsim.cost.flops({m.name}, top-2): {fmt(real)} FLOPs per token",
        f"even with all {m.n_routed_experts} experts active: {fmt(everything)} (the most an 8B-total model can do)",
        f"a 13B dense model: 2 x {fmt(c.inputs['dense_params'])} = {fmt(dense13)}, "
        f"{dense13 / everything:.2f}x more than the bound"],
        ["dsim.cost.flops"], bound="an MoE does at most the FLOPs of a dense model of its total size")


def _long_context_model(kind: str, moe: bool, active_only: bool = False) -> ModelArgs:
    """The '1.5T' model of a0 (16 experts of 96B: 125 layers x 3 x 16384 x 15625 each, top-4) with an
    attention of a usual shape, or a dense model of the same total (or active) size."""
    D, L, I = 16384, 125, 15625
    attn = dict(attn_type="mha", n_heads=128, head_dim=128) if kind == "mha" else dict(
        attn_type="mla", n_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, attn_impl="absorb")
    common = dict(vocab_size=129280, dim=D, n_layers=L, max_seq_len=262144, original_seq_len=262144, **attn)
    if moe:
        return ModelArgs(inter_dim=0, moe_inter_dim=I, n_dense_layers=0, n_routed_experts=16, n_shared_experts=0,
                         n_activated_experts=4, **common)
    return ModelArgs(inter_dim=(4 if active_only else 16) * I, n_dense_layers=L, n_routed_experts=0,
                     n_shared_experts=0, n_activated_experts=0, **common)


@check("a0-long-context-200k-efficiency")
def long_context_gain(c: Claim) -> Verdict:
    n, stated = int(c.q["context_tokens"]), c.q["efficiency_gain_pct"]
    window = 512 + 8   # the article's own long-sequence design (a4: 512-token window + 8 global tokens)
    lines, rs = [], []
    for label, kind, ctx, active_only in (("vs dense of equal total, windowed attention (512 + 8 keys, a4's sizes)", "mha", window, False),
                                          ("vs dense of equal total, full MHA over 200K keys", "mha", n, False),
                                          ("vs dense of equal total, MLA (DeepSeek-V3's attention) over 200K", "mla", n, False),
                                          ("vs dense of equal active size, windowed attention", "mha", window, True)):
        fm = flops(_long_context_model(kind, True), batch=1, seq_len=1, mode="decode", context=ctx).total
        fd = flops(_long_context_model(kind, False, active_only), batch=1, seq_len=1, mode="decode", context=ctx).total
        gain = 1 - fm / fd
        rs.append(at_least(label, stated, gain * 100))
        lines.append(f"{label}: dsim.cost.flops per decoded token MoE {fmt(fm)} / dense {fmt(fd)} -> saving {pct(gain)}")
    p = params(_long_context_model("mha", True))
    lines.insert(0, f"model: 16 experts x 125 layers x 3 x 16384 x 15625 = 16 x 96e9 expert params, top-4 "
                    f"(375B active), plus attention: dsim.cost.params total {fmt(p.total)}, active {fmt(p.active)}")
    lines.append("MoE cuts only the FFN; at 200K tokens the attention core decides the saving")
    return make(c, rs, "%", lines, ["dsim.cost.flops", "dsim.cost.params"])


def window_saving(n: int, window: int, global_tokens: int) -> float:
    """Share of causal attention-score pairs a sliding window (plus global tokens) removes at length n."""
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
    rs = [agree(f"attention scores at {n} tokens", stated, saving(n) * 100) for n in (2048, 4096, 32768, 131072)]
    rs.append(agree("whole DeepSeek-V3 forward at 4096 tokens", stated, saving(4096) * core * 100))
    return make(c, rs, "%", [
        f"causal pairs n(n+1)/2 (dsim.cost.flops.attention_pairs) vs windowed sum(min(i+1, {w})) + {g} n",
        "saving: " + ", ".join(f"{n}: {pct(saving(n))}" for n in (2048, 4096, 32768, 131072)),
        f"exactly {stated} % only at n = {hi} tokens (dsim.claims.window_length_for)",
        f"the core is {pct(core)} of DeepSeek-V3's forward FLOPs at 4096 tokens (dsim.cost.flops, causal), "
        f"so the whole model saves {pct(saving(4096) * core)}; DeepSeek uses MLA, not sliding windows"],
        ["dsim.cost.flops.attention_pairs", "dsim.cost.flops"])


# ---------------------------------------------------------------------------------------------
# Bytes: weights, training state, quantization
# ---------------------------------------------------------------------------------------------
_DTYPE_OF_BITS = {16: "fp16", 8: "int8", 4: "int4"}


def _bytes_lines(n: int, bits: int, stated: float) -> tuple[float, list[str]]:
    """Bytes of n weights at `bits` (+ one bf16 scale per 128 weights below 16 bits), explained."""
    dtype = _DTYPE_OF_BITS[bits]
    b = weight_bytes(n, dtype, 128)
    line = f"{fmt(n)} params x {bits} bits / 8 = {fmt(n * bits / 8)} bytes"
    if bits < 16:
        line += (f"; with a bf16 scale per 128 weights dsim.cost.weight_bytes = {fmt(b)} "
                 f"(dsim.quant QuantizedTensor.nbytes: {quant_bytes_per_param(bits, 128):.6f} bytes/param)")
    lines = [line, f"stated {fmt(stated)} / computed {fmt(b)} = {stated / b:.3f}"
             + (f": {fmt(stated)} bytes hold only {stated * 8 / n:.2f} bits per parameter" if stated < b * 0.95 else "")]
    return b, lines


@check("a1-fp16-16gb", "a0-v100-65b-int8-21gb")
def stated_precision_bytes(c: Claim) -> Verdict:
    """The claim names the bit width: bytes = params x bits / 8 (+ scales); fewer bytes is impossible."""
    n, bits = int(c.inputs["params"]), c.inputs["bits"]
    stated = c.q.get("bytes") or c.q["model_bytes"]
    b, lines = _bytes_lines(n, bits, stated)
    floor = n * bits / 8
    r = (above_min(f"{_DTYPE_OF_BITS[bits]} as stated", stated, floor) if stated < floor * (1 - TOLERANCE)
         else agree(f"{_DTYPE_OF_BITS[bits]}, weights only", stated, b))
    if "gpu_mem_bytes" in c.q:
        i4 = weight_bytes(n, "int4", 128)
        lines.append(f"even INT4 needs {fmt(i4)} bytes; the GPU has {fmt(c.q['gpu_mem_bytes'])}")
    lines.append("weights only: the KV cache and activations come on top")
    return make(c, r, "bytes", lines, ["dsim.cost.weight_bytes", "dsim.quant.quantize (QuantizedTensor.nbytes)"],
                bound=f"{fmt(n)} numbers of {bits} bits need at least {fmt(floor)} bytes")


@check("a1-w4a16-4.2gb")
def w4a16_size(c: Claim) -> Verdict:
    """INT4 weights: all of them, or all but the embedding and head (kept in 16 bits by W4A16 checkpoints)."""
    n, stated = int(c.inputs["params"]), c.q["model_bytes"]
    b, lines = _bytes_lines(n, c.inputs["bits"], stated)
    m = llama31_8b()
    p = params(m)
    keep = p.breakdown["embedding"] + p.breakdown["head"]
    mixed = weight_bytes(p.total - keep, "int4", 128) + weight_bytes(keep, "fp16")
    lines.append(f"{m.name}: int4 body {fmt(p.total - keep)} + fp16 embedding and head {fmt(keep)} -> {fmt(mixed)} bytes")
    return make(c, [agree("every weight in INT4", stated, b),
                    agree(f"{m.name}, embedding and head kept in FP16", stated, mixed)], "bytes", lines,
                ["dsim.cost.weight_bytes", "dsim.cost.params", "dsim.quant.quantize (QuantizedTensor.nbytes)"])


@check("a0-offload-1.5t-full-memory")
def unstated_precision_bytes(c: Claim) -> Verdict:
    """The claim names no precision: try each format; the bits per parameter it implies."""
    n, stated = int(c.inputs["params"]), c.q["gpu_memory_bytes"]
    rs, lines = [], []
    for bits, dtype in _DTYPE_OF_BITS.items():
        b = weight_bytes(n, dtype, 128)
        rs.append(agree(dtype, stated, b))
        lines.append(f"{dtype}: dsim.cost.weight_bytes({fmt(n)}) = {fmt(b)}")
    lines.append(f"stated {fmt(stated)} implies {stated * 8 / n:.2f} bits per parameter: no standard format")
    return make(c, rs, "bytes", lines, ["dsim.cost.weight_bytes"])


@check("a0-offload-1.5t-resident-memory")
def offload_resident(c: Claim) -> Verdict:
    active, stated, total = c.q["active_params"], c.q["gpu_memory_bytes"], c.q["params"]
    implied_bpp = get_claim("a0-offload-1.5t-full-memory").q["gpu_memory_bytes"] / total
    a100 = get_gpu("A100-80GB-SXM")
    expert = c.inputs["params_per_expert"]
    rs = [above_min("FP16 weights", stated, weight_bytes(int(active), "fp16")),
          above_min(f"the article's own {implied_bpp:.1f} bytes/param (1.2 TB / 1.5T)", stated, active * implied_bpp),
          above_min("INT4, group 128", stated, weight_bytes(int(active), "int4", 128))]
    swap = expert * implied_bpp / a100.pcie_bw
    return make(c, rs, "bytes", [
        f"the {fmt(active)} active parameters must stay on the GPUs: FP16 {fmt(weight_bytes(int(active), 'fp16'))}, "
        f"at {implied_bpp:.1f} B/param {fmt(active * implied_bpp)}, INT4 {fmt(weight_bytes(int(active), 'int4', 128))}",
        f"8 x A100-80GB = {fmt(8 * a100.hbm_bytes)}; 8 x 40 GB = {fmt(8 * get_gpu('A100-40GB-SXM').hbm_bytes)}",
        f"routing changes experts token by token: swapping one {fmt(expert)}-param expert over PCIe "
        f"({fmt(a100.pcie_bw)} B/s) takes {swap:.1f} s"],
        ["dsim.cost.weight_bytes", "dsim.cost.hardware (A100 HBM, PCIe)"],
        bound="resident bytes >= bytes of the active parameters")


def _training_bytes_per_param() -> float:
    """bf16 weights + bf16 gradients + fp32 master + two fp32 Adam moments (mixed precision)."""
    return 2 * bytes_per_param("bf16") + 3 * bytes_per_param("fp32")


@check("a0-single-node-340b-training", "a0-trillion-8-shards")
def training_fit(c: Claim) -> Verdict:
    n, gpus = c.inputs["params"], c.inputs["gpus"]
    a100 = get_gpu("A100-80GB-SXM")
    node = gpus * a100.hbm_bytes
    bpp = _training_bytes_per_param()
    max_train = node / bpp
    max_weights = node / bytes_per_param("bf16")
    rs = [below_max("training state, 16 bytes/param", n, max_train),
          below_max("bf16 weights alone", n, max_weights)]
    return make(c, rs, "params", [
        f"mixed-precision Adam: 2 (bf16 weights) + 2 (bf16 grads) + 4 (fp32 master) + 8 (fp32 m, v) = {bpp:g} bytes/param",
        f"{gpus} x A100 {fmt(a100.hbm_bytes)} = {fmt(node)} bytes -> at most {fmt(max_train)} params of training "
        f"state, {fmt(max_weights)} of bf16 weights alone (before activations)",
        f"{fmt(n)} params need {fmt(n * bpp)} bytes of state, {n * bpp / node:.1f}x the GPUs' memory "
        f"({fmt(n * bpp / gpus)} per GPU); only CPU/NVMe offload (ZeRO-Infinity) could hold it"],
        ["dsim.cost.bytes_per_param", "dsim.cost.hardware A100-80GB-SXM"],
        bound="model and optimizer state must fit in GPU memory")


@check("a1-a100-lora-4b")
def lora_fits_a100(c: Claim) -> Verdict:
    n, cap = int(c.inputs["params"]), get_gpu("A100-80GB-SXM").hbm_bytes
    most = cap / bytes_per_param("bf16")
    return make(c, below_max("frozen bf16 base + small adapters", n, most), "params", [
        f"LoRA keeps the base frozen in bf16: {fmt(n)} x 2 = {fmt(n * 2)} bytes of {fmt(cap)}",
        f"weights alone would allow up to {fmt(most)} params: 4B holds, but understates the A100 ~10x "
        "(activations and adapter state take part of the rest)"],
        ["dsim.cost.bytes_per_param", "dsim.cost.hardware A100-80GB-SXM"], bound="weights must fit in HBM")


@check("a1-t4-16gb-inference")
def t4_fit(c: Claim) -> Verdict:
    cap, m = ref("t4_hbm_bytes"), llama31_8b()
    real = params(m).total
    kv = kv_cache_bytes_per_token(m) * 2048
    rs = [at_most(f"{dtype} weights + one 2048-token KV cache", cap, weight_bytes(real, dtype, 128) + kv, tol=0,
                  fail="cannot_hold") for dtype in ("fp16", "int8", "int4")]
    return make(c, rs, "bytes", [
        f"{m.name}: {fmt(real)} params; KV cache 2048 tokens x {fmt(kv_cache_bytes_per_token(m))} B = {fmt(kv)}",
        ", ".join(f"{d}: {fmt(weight_bytes(real, d, 128))} + KV" for d in ("fp16", "int8", "int4"))
        + f" vs T4 / MI25 {fmt(cap)}"],
        ["dsim.cost.params", "dsim.cost.weight_bytes", "dsim.cost.kv_cache_bytes_per_token", src("t4_hbm_bytes")],
        bound="weights and KV cache must fit in the card's memory")


@check("a3-int8-quarter-of-fp32")
def int8_fraction_of_fp32(c: Claim) -> Verdict:
    i8 = quant_bytes_per_param(8, None)
    frac = i8 / bytes_per_param("fp32")
    return make(c, agree("per-channel INT8 vs FP32", c.q["size_fraction"], frac), "fraction", [
        f"dsim.quant per-channel INT8: {i8:.5f} bytes/param (codes + one bf16 scale per 1024-wide row)",
        f"{i8:.5f} / 4 = {frac:.4f} of FP32; layers quantize_dynamic leaves alone stay FP32"],
        ["dsim.quant.quantize (QuantizedTensor.nbytes)", "dsim.cost.bytes_per_param"])


@check("a2-int8-storage-75pct")
def int8_storage_cut(c: Claim) -> Verdict:
    i8 = quant_bytes_per_param(8, 128)
    rs = [agree(f"vs {base}", c.q["storage_reduction_pct"], (1 - i8 / bytes_per_param(base)) * 100)
          for base in ("fp32", "fp16")]
    return make(c, rs, "%", [
        f"dsim.quant INT8, group 128: {i8:.6f} bytes/param",
        f"vs FP32: 1 - {i8:.4f}/4 = {pct(1 - i8 / 4)}; vs FP16/BF16: 1 - {i8:.4f}/2 = "
        f"{pct(1 - i8 / 2)} (pruning would add an unquantified share)"],
        ["dsim.quant.quantize (QuantizedTensor.nbytes)", "dsim.cost.bytes_per_param"])


@check("a4-absmax-per-128")
def absmax_group(c: Claim) -> Verdict:
    from dsim.quant import act_quant
    import torch
    g = c.inputs["group_size"]
    over = (quant_bytes_per_param(8, g) - 1) * 8
    x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(0))
    _, s = act_quant(x)
    v3_block = x.shape[-1] // s.shape[-1]
    return make(c, agree("DeepSeek-V3's FP8 tile width", g, v3_block, tol=0), "elements", [
        f"dsim.quant.act_quant (DeepSeek-V3's kernel): one scale per {v3_block} elements",
        f"scale overhead with bf16 scales: 16 / {g} = {over:.3f} bits per weight (dsim.quant INT8 group {g})",
        "the article's own quantize_layer uses one scale per tensor, not per 128 channels"],
        ["dsim.quant.act_quant", "dsim.quant.quantize"])


@check("a4-quantize-layer-code")
def quantize_layer_code(c: Claim) -> Verdict:
    import torch
    from dsim.quant import dequantize, qrange, quantize
    bits = c.inputs["bits"]
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))

    def quantize_layer_as_written(w: torch.Tensor, bits: int) -> torch.Tensor:
        """Article a4's recorded formula: one step for the tensor, absmax / (2^(bits-1) - 1)."""
        step = w.abs().max().item() / (2 ** (bits - 1) - 1)
        return (w / step).round() * step

    ours = dequantize(quantize(w, bits=bits, granularity="tensor", scale_dtype=torch.float32))
    diff = float((quantize_layer_as_written(w, bits) - ours).abs().max())
    qmax = (1 << (bits - 1)) - 1
    return make(c, agree("q_max of the article's formula vs dsim.quant.qrange", qmax, qrange(bits)[1], tol=0), "", [
        f"article: scale = max|W| / (2^({bits}-1) - 1) = max|W| / {qmax}; dsim.quant.qrange({bits}) = {qrange(bits)}",
        f"re-implemented and run on a 64 x 256 weight: max |difference| from dsim.quant per-tensor = {diff:.3g}",
        "correct fake quantization, but the training loop shown never calls it (it only uses FP16 autocast)"],
        ["re-implementation of the article's quantize_layer", "dsim.quant.quantize / dequantize"])


@check("a1-qlora-4bit-16bit")
def qlora_bits(c: Claim) -> Verdict:
    rs = [agree("base weight bits", c.q["base_bits"], ref("qlora_base_bits"), tol=0),
          agree("adapter bits", c.q["adapter_bits"], ref("qlora_adapter_bits"), tol=0)]
    return make(c, rs, "bits", [f"QLoRA: {ref('qlora_base_bits'):g}-bit NF4 base, {ref('qlora_adapter_bits'):g}-bit adapters; "
                                f"dsim.cost.bytes_per_param('int4', None) x 8 = {bytes_per_param('int4', None) * 8:g} bits"],
                [src("qlora_base_bits"), "dsim.cost.bytes_per_param"])


@check("a4-adam-fp32")
def adam_precision(c: Claim) -> Verdict:
    v3 = preset("deepseek-v3")
    per = {}
    for opt in ("fp32", "bf16"):
        m = memory(v3, seq_len=1, pp=16, dp=128, ep=64, zero=0, optimizer_dtype=opt)
        per[opt] = m.optimizer / m.details["params_on_gpu"]
    rs = [agree("FP32 master weights (DeepSeek-V3 keeps them)", c.q["optimizer_state_bits"], 32, tol=0),
          agree("FP32 Adam moments, DeepSeek-V3 (it keeps them in BF16)", c.q["optimizer_state_bits"], 16, tol=0)]
    return make(c, rs, "bits", [
        f"dsim.cost.memory(deepseek-v3) optimizer bytes per parameter: fp32 moments {per['fp32']:g}, "
        f"bf16 moments {per['bf16']:g} (each with a 4-byte fp32 master copy)",
        "standard mixed precision keeps both in FP32; DeepSeek-V3 (section 3.3.3) stores the moments in BF16"],
        ["dsim.cost.memory", "DeepSeek-V3 technical report, section 3.3.3"])


# ---------------------------------------------------------------------------------------------
# Speed-ups: bounds from bytes and peaks, and measurements
# ---------------------------------------------------------------------------------------------
def _measured_speedup(kernel: str) -> tuple[float, str]:
    """The largest speed-up over bf16 measured for `kernel` in dsim/data/quant_gpu.json."""
    data = json.loads(resources.files("dsim").joinpath("data/quant_gpu.json").read_text())
    best = max((r for r in data["timing"] if r.get("kernel") == kernel and "speedup_vs_bf16" in r),
               key=lambda r: r["speedup_vs_bf16"])
    return best["speedup_vs_bf16"], (f"{data['device']}: {best['shape']} m={best['m']} n={best['n']} "
                                     f"k={best['k']}")


@check("a4-quant-table-bf16-1.2x", "a4-quant-table-fp16-1.0x")
def same_width_speedup(c: Claim) -> Verdict:
    """16-bit formats against FP16: same bytes, so only a different tensor-core peak could help."""
    a100, h100 = get_gpu("A100-80GB-SXM"), get_gpu("H100-SXM")
    peak = a100.bf16_flops / a100.fp16_flops
    return make(c, agree("same bytes, same tensor-core peak", c.q["speedup_x"], peak), "x", [
        f"bytes per param: bf16 {bytes_per_param('bf16'):g}, fp16 {bytes_per_param('fp16'):g}",
        f"tensor peak: A100 {fmt(a100.bf16_flops)} / {fmt(a100.fp16_flops)} = {peak:g}; H100 "
        f"{fmt(h100.bf16_flops)} / {fmt(h100.fp16_flops)} = {h100.bf16_flops / h100.fp16_flops:g}",
        "BF16 buys range and stability, not speed; the FP16 row is the table's baseline"],
        ["dsim.cost.hardware", "dsim.cost.bytes_per_param"])


@check("a4-quant-table-int8-2.5x", "a4-quant-table-int4-4.8x")
def low_bit_speedup(c: Claim) -> Verdict:
    """speed-up <= max(bytes ratio, tensor-peak ratio): a step takes max(compute, memory) time."""
    bits, stated = c.q["bits"], c.q["speedup_x"]
    a100 = get_gpu("A100-80GB-SXM")
    q = quant_bytes_per_param(bits, 128)
    by, by_ideal = bytes_per_param("fp16") / q, 16 / bits
    comp = (peak_flops(a100, "int8") if bits == 8 else ref("a100_int4_ops")) / peak_flops(a100, "fp16")
    bound = max(by_ideal, comp)
    meas, where = _measured_speedup("int8")
    return make(c, below_max("bound from bytes and tensor peaks", stated, bound), "x", [
        f"memory-bound: fp16 2 bytes / {bits}-bit {q:.4f} bytes (group-128 bf16 scales) = {by:.3f}x "
        f"({by_ideal:g}x with no scales at all)",
        f"compute-bound: A100 {bits}-bit tensor peak / fp16 = {comp:g}x"
        + ("" if bits == 8 else f" ({src('a100_int4_ops')}; H100 has no INT4 tensor cores)"),
        f"a step takes max(compute, memory) time, so no regime beats {bound:g}x",
        f"measured (dsim/data/quant_gpu.json): best INT8 GEMM {meas:.2f}x over bf16 ({where})"],
        ["dsim.cost.hardware", "dsim.quant (QuantizedTensor.nbytes)", "dsim/data/quant_gpu.json"],
        bound=f"speed-up <= max(bytes ratio, peak ratio) = {bound:g}x")


@check("a2-int8-speed-2-3x", "a3-int8-3.2x-speed")
def int8_speedup_baselines(c: Claim) -> Verdict:
    stated = c.q.get("speedup_x") or c.q["speedup_high_x"]
    q = quant_bytes_per_param(8, 128)
    a100 = get_gpu("A100-80GB-SXM")
    vs16 = max(bytes_per_param("fp16") / q, peak_flops(a100, "int8") / peak_flops(a100, "fp16"))
    vs32 = bytes_per_param("fp32") / q
    meas, where = _measured_speedup("int8")
    rs = [below_max("baseline FP32, memory-bound (CPU quantize_dynamic)", stated, vs32),
          below_max("baseline FP16 on a GPU", stated, vs16)]
    return make(c, rs, "x", [
        f"INT8 group 128: {q:.4f} bytes/param (dsim.quant)",
        f"vs FP32: 4 / {q:.4f} = {vs32:.2f}x when memory-bound (CPU INT8 kernels also compute faster than FP32)",
        f"vs FP16: bytes {2 / q:.2f}x, A100 tensor peak {peak_flops(a100, 'int8') / peak_flops(a100, 'fp16'):g}x "
        f"-> at most {vs16:g}x",
        f"measured on an H100: best INT8 GEMM {meas:.2f}x over bf16 ({where}), below even the FP16 bound"],
        ["dsim.quant", "dsim.cost.hardware", "dsim/data/quant_gpu.json"],
        bound="speed-up <= max(bytes ratio, peak ratio)")


# ---------------------------------------------------------------------------------------------
# Serving: latency and throughput bounds
# ---------------------------------------------------------------------------------------------
@check("a1-p99-120ms-1000-concurrent")
def decode_latency(c: Claim) -> Verdict:
    from dsim.cost import step_time
    m, gpus, batch, ctx = llama31_8b(), c.q["gpus"], c.inputs["batch"], c.inputs["context_tokens"]
    a100 = get_gpu("A100-80GB-SXM")
    per_gpu = batch // gpus                                   # the 8B model fits one GPU: data parallel
    w = weight_bytes(params(m).total, "bf16")
    kv = kv_cache_bytes_per_token(m) * per_gpu * ctx
    step = (w + kv) / a100.hbm_bw
    modeled = step_time(m, batch=per_gpu, seq_len=ctx, mode="decode", gpu=a100).total_s
    out_tokens = 256
    prefill = flops(m, batch=1, seq_len=ctx, mode="prefill").total / a100.bf16_flops
    stated = c.q["p99_latency_ms"] / 1e3
    rs = [at_most("per output token (HBM roofline floor)", stated * 1e3, step * 1e3, tol=0, fail="cannot_hold"),
          at_most(f"whole request: 2048-token prompt + {out_tokens} output tokens", stated * 1e3,
                  (prefill + out_tokens * step) * 1e3, tol=0, fail="cannot_hold")]
    return make(c, rs, "ms", [
        f"{m.name}, 1000 requests over {gpus} A100-80GB (data parallel: {per_gpu} each), {ctx}-token contexts",
        f"one decode step reads weights {fmt(w)} + KV {per_gpu} x {ctx} x {fmt(kv_cache_bytes_per_token(m))} = {fmt(kv)} "
        f"bytes / {fmt(a100.hbm_bw)} B/s = {step * 1e3:.1f} ms (a floor); dsim.cost.step_time (eager PyTorch kernels, "
        f"H100 efficiencies on the A100 datasheet): {modeled * 1e3:.1f} ms",
        f"a whole request: its own prefill {fmt(flops(m, batch=1, seq_len=ctx, mode='prefill').total)} FLOPs / "
        f"{fmt(a100.bf16_flops)} FLOP/s = {prefill * 1e3:.0f} ms + {out_tokens} decode steps = "
        f"{(prefill + out_tokens * step) * 1e3:.0f} ms",
        "(both times are floors: a request cannot finish faster)"],
        ["dsim.cost.params", "dsim.cost.kv_cache_bytes_per_token", "dsim.cost.flops", "dsim.cost.step_time",
         "dsim.cost.hardware A100-80GB-SXM"], bound="a decode step cannot read its bytes faster than HBM bandwidth")


@check("a1-snapdragon-15tok")
def phone_tokens_per_s(c: Claim) -> Verdict:
    n, bw = params(llama31_8b()).total, ref("snapdragon_8g2_bw")
    i4, f16 = weight_bytes(n, "int4", 128), weight_bytes(n, "fp16")
    rs = [below_max("INT4 weights, memory roofline", c.q["tok_per_s"], bw / i4),
          below_max("FP16 weights (they do not fit phone RAM anyway)", c.q["tok_per_s"], bw / f16)]
    return make(c, rs, "tok/s", [
        "a decode step reads every weight once: tokens/s <= bandwidth / weight bytes",
        f"INT4 g128: {fmt(bw)} / {fmt(i4)} = {bw / i4:.1f} tok/s; FP16: {fmt(bw)} / {fmt(f16)} = {bw / f16:.1f} tok/s",
        f"{c.q['tok_per_s']} tok/s needs {c.q['tok_per_s'] / (bw / i4):.0%} of peak bandwidth with INT4; "
        "pruning (unquantified) could lower the bytes"],
        ["dsim.cost.params", "dsim.cost.weight_bytes", src("snapdragon_8g2_bw")],
        bound="a decode step reads all weights from DRAM")


@check("a1-rv1126-300ms")
def rv1126_latency(c: Claim) -> Verdict:
    n, bw = params(llama31_8b()).total, ref("rv1126_bw")
    i4 = weight_bytes(n, "int4", 128)
    t = i4 / bw
    return make(c, above_min("INT4 8B model on the chip, one token", c.q["latency_ms"], t * 1e3), "ms", [
        f"INT4 g128 weights {fmt(i4)} bytes (the board typically has 1-2 GB of DRAM)",
        f"one token: {fmt(i4)} / {fmt(bw)} B/s = {t * 1e3:.0f} ms, above the 300 ms budget before any "
        "speech processing; a spoken reply needs many tokens"],
        ["dsim.cost.params", "dsim.cost.weight_bytes", src("rv1126_bw")],
        bound="a decode step reads all weights from DRAM")


@check("a1-kv-block-40pct")
def paged_kv(c: Claim) -> Verdict:
    m, stated, block, max_len = llama31_8b(), c.q["kv_compression_pct"], 16, 4096
    per_token = kv_cache_bytes_per_token(m)
    lengths = range(1, max_len + 1)                       # a batch with every length once
    contiguous = len(lengths) * max_len * per_token
    paged = sum(-(-n // block) * block for n in lengths) * per_token
    saving = 1 - paged / contiguous
    rs = [below_max("memory saved by paging vs max-length reservation (possible range)", stated, saving * 100),
          agree("bytes per cached token (compression)", stated, 0.0)]
    return make(c, rs, "%", [
        f"{m.name}: dsim.cost.kv_cache_bytes_per_token = {fmt(per_token)} bytes, with or without blocks",
        f"a batch of lengths 1..{max_len}: reserved {max_len} tokens each {fmt(contiguous)} bytes; blocks of {block}: "
        f"{fmt(paged)} -> {pct(saving)} saved; any saving between 0 and this is possible",
        "paging removes over-allocation; it does not compress a single entry (0 % smaller)"],
        ["dsim.cost.kv_cache_bytes_per_token"])


# ---------------------------------------------------------------------------------------------
# Memory of training: recomputation
# ---------------------------------------------------------------------------------------------
@check("a1-grad-ckpt-30pct")
def recompute_saving(c: Claim) -> Verdict:
    m, stated = llama31_8b(), c.q["peak_memory_reduction_pct"]
    lines = [f"dsim.cost.memory({m.name}, training on one GPU, mixed-precision Adam), sequences of 4096 tokens:"]
    cut = {}
    for b in range(1, 9):
        none, full = (memory(m, batch=b, seq_len=4096, recompute=r) for r in ("none", "full"))
        cut[b] = 1 - full.total / none.total
        lines.append(f"batch {b}: peak {fmt(none.total)} -> {fmt(full.total)} bytes with full recomputation: {pct(cut[b])}")
    near = min(cut, key=lambda b: abs(cut[b] * 100 - stated))
    rs = [agree("batch 1", stated, cut[1] * 100), agree(f"batch {near} (the closest)", stated, cut[near] * 100),
          agree("batch 8", stated, cut[8] * 100)]
    lines.append("the saving is the activations' share of the peak, which grows with batch x sequence")
    return make(c, rs, "%", lines, ["dsim.cost.memory"])


@check("a4-ckpt-48-22gb")
def recompute_48_22(c: Claim) -> Verdict:
    m = deepseek_llm_7b()
    stated = c.q["reduction_pct"]
    layout = dict(batch=1, dp=8, zero=3)
    seq = min(range(1024, 16385, 512), key=lambda s: abs(memory(m, seq_len=s, **layout).total - c.q["memory_before_bytes"]))
    peak = memory(m, seq_len=seq, **layout).total
    lines = [f"no model is given; {m.name}, ZeRO-3 over 8 GPUs, one sequence of {seq} tokens peaks at {fmt(peak)} "
             f"bytes per GPU (dsim.cost.memory), close to 48 GB; stated cut 1 - 22/48 = {stated} %"]
    cut = {}
    for r in ("selective", "full"):
        got = memory(m, seq_len=seq, recompute=r, **layout).total
        cut[r] = 1 - got / peak
        lines.append(f"recompute={r}: {fmt(got)} bytes, {pct(cut[r])} less")
    lines.append("selective recomputation (norms; MLA up-projections in DeepSeek-V3) saves little in an MHA model; "
                 "full recomputation can cut more than the stated 54 %")
    rs = [agree("selective recomputation, as stated", stated, cut["selective"] * 100, tol=0.15),
          at_least("full recomputation (the largest possible cut)", stated, cut["full"] * 100)]
    return make(c, rs, "%", lines, ["dsim.cost.memory"], tol=0.15)


@check("a2-grad-ckpt-sqrt")
def sqrt_checkpointing(c: Claim) -> Verdict:
    from dsim.cost.memory import layer_activation_bytes
    v3 = preset("deepseek-v3")
    layer = v3.n_dense_layers
    A = layer_activation_bytes(v3, layer, 1, 4096, recompute="none")
    keep = layer_activation_bytes(v3, layer, 1, 4096, recompute="full")

    def best(L: int) -> float:   # checkpoints every k layers; one segment recomputed at a time
        return min(-(-L // k) * keep + k * A for k in range(1, L + 1))

    Ls = (64, 256, 1024)
    exps = [math.log(best(b) / best(a)) / math.log(b / a) for a, b in zip(Ls, Ls[1:])]
    return make(c, agree("exponent of activation memory in the layer count", c.q["memory_exponent_after"], exps[-1],
                         tol=0.1), "exponent", [
        f"DeepSeek-V3 MoE layer at 4096 tokens: dsim.cost.memory.layer_activation_bytes {fmt(A)} kept without "
        f"recomputation, {fmt(keep)} with (the layer input)",
        f"store every layer: L x {fmt(A)}, exponent 1; checkpoint every k layers: ceil(L/k) x {fmt(keep)} + k x {fmt(A)}",
        "best k, L = " + ", ".join(f"{L}: {fmt(best(L))}" for L in Ls),
        "fitted exponent " + ", ".join(f"{e:.3f}" for e in exps) + " -> O(sqrt L) (Chen et al. 2016)"],
        ["dsim.cost.memory.layer_activation_bytes"], tol=0.1)


# ---------------------------------------------------------------------------------------------
# Training cost and energy
# ---------------------------------------------------------------------------------------------
@check("a1-data-ratio-1to10")
def tokens_per_param(c: Claim) -> Verdict:
    p, r, d = c.q["params"], c.q["ratio_tokens_per_param"], c.q["dataset_tokens"]
    return make(c, agree("tokens per parameter implied by 800B tokens", r, d / p), "tokens/param", [
        f"1:10 of {fmt(p)} params = {fmt(r * p)} tokens, not {fmt(d)}",
        f"{fmt(d)} / {fmt(p)} = {d / p:g} tokens per parameter (compute-optimal: ~20, Hoffmann et al. 2022)"],
        ["arithmetic"])


@check("a1-c4-size")
def c4_size(c: Claim) -> Verdict:
    stated = c.q["dataset_tokens"]
    return make(c, agree("C4 (English)", stated, ref("c4_en_tokens")), "tokens", [
        f"C4.EN has {fmt(ref('c4_en_tokens'))} tokens; stated {fmt(stated)} is {stated / ref('c4_en_tokens'):.1f}x that"],
        [src("c4_en_tokens")])


@check("a2-gpt3-gpus")
def gpt3_gpus(c: Claim) -> Verdict:
    n_flops = 6 * ref("gpt3_params") * ref("gpt3_tokens")
    per_gpu = n_flops / (ref("gpt3_gpus") * ref("gpt3_train_days") * 86400)
    return make(c, agree("'tens of thousands' = at least 20,000", c.q["gpus_min"], ref("gpt3_gpus")), "GPUs", [
        f"6 x {fmt(ref('gpt3_params'))} x {fmt(ref('gpt3_tokens'))} = {fmt(n_flops)} FLOPs "
        f"(published {fmt(ref('gpt3_train_flops'))})",
        f"on {ref('gpt3_gpus'):,.0f} V100 for {ref('gpt3_train_days')} days: {fmt(per_gpu)} FLOP/s each = "
        f"{per_gpu / ref('v100_fp16_flops'):.0%} of the V100's {fmt(ref('v100_fp16_flops'))}: consistent",
        f"so about {ref('gpt3_gpus'):,.0f} GPUs (one 'wan'), not tens of thousands"],
        [src("gpt3_gpus"), src("gpt3_train_flops"), src("v100_fp16_flops")])


@check("a2-data-100b-vs-570b")
def training_tokens(c: Claim) -> Verdict:
    rs = [agree("GPT-3's training tokens", c.q["gpt3_tokens"], ref("gpt3_tokens")),
          agree("DeepSeek-V3's training tokens", c.q["deepseek_tokens"], ref("v3_tokens"))]
    return make(c, rs, "tokens", [
        f"GPT-3 trained on {fmt(ref('gpt3_tokens'))} tokens; 570 is the GB of its filtered Common Crawl text",
        f"DeepSeek trained on more, not less: LLM {fmt(ref('deepseek_llm_tokens'))}, V2 {fmt(ref('v2_tokens'))}, "
        f"V3 {fmt(ref('v3_tokens'))} tokens"],
        [src("gpt3_tokens"), src("gpt3_cc_filtered_gb"), src("v3_tokens")])


@check("a2-1b-gpu-hours")
def gpu_hours_6nd(c: Claim) -> Verdict:
    n, a100 = c.inputs["params"], get_gpu("A100-80GB-SXM")
    rs, lines = [], []
    for label, tokens, stated in (("DeepSeek, 100B tokens", c.inputs["tokens_deepseek"], c.q["deepseek_gpu_hours"]),
                                  ("GPT-3 style, 570B tokens", c.inputs["tokens_gpt3"], c.q["gpt3_gpu_hours"])):
        total = 6 * n * tokens
        hours = {mfu: total / (a100.bf16_flops * mfu) / 3600 for mfu in (0.3, 0.4, 0.5)}
        rs.append(within(f"{label}, A100 at 30-50 % MFU", stated, hours[0.5], hours[0.3]))
        lines.append(f"{label}: 6 x {fmt(n)} x {fmt(tokens)} = {fmt(total)} FLOPs / ({fmt(a100.bf16_flops)} x MFU) = "
                     + ", ".join(f"{k:.0%}: {v:,.0f} h" for k, v in hours.items())
                     + f"; stated {stated:,} h = {total / (a100.bf16_flops * stated * 3600):.0%} MFU")
    lines.append("consistent with 6ND on an A100; the whole difference is 5.7x fewer tokens, not the architecture")
    return make(c, rs, "GPU-hours", lines, ["dsim.cost.hardware A100-80GB-SXM", "6ND (dsim.cost.flops.six_nd)"])


@check("a2-1b-energy-mwh")
def energy_per_gpu_hour(c: Claim) -> Verdict:
    a100 = get_gpu("A100-80GB-SXM")
    all_in = ref("dgx_a100_kw") / 8 * ref("pue")
    rs, lines = [], []
    for label, mwh, hours in (("DeepSeek", c.q["deepseek_mwh"], c.inputs["deepseek_gpu_hours"]),
                              ("GPT-3 style", c.q["gpt3_mwh"], c.inputs["gpt3_gpu_hours"])):
        rs.append(below_max(f"{label}: energy of its own GPU-hours", mwh, hours * all_in / 1e3))
        lines.append(f"{label}: {mwh} MWh / {hours:,} GPU-hours = {mwh * 1e3 / hours:.1f} kW per GPU")
    lines.append(f"an A100 draws {a100.tdp_watts / 1e3:g} kW (TDP); with its server share (DGX A100 "
                 f"{ref('dgx_a100_kw')} kW / 8) and PUE {ref('pue')}: {all_in:.2f} kW all-in")
    return make(c, rs, "MWh", lines, ["dsim.cost.hardware A100 tdp_watts", src("dgx_a100_kw"), src("pue")],
                bound="energy <= GPU-hours x all-in power per GPU")


@check("a2-gpt3-energy-households")
def households(c: Claim) -> Verdict:
    e = ref("gpt3_energy_mwh")
    names = {"us": "US", "world": "world-average", "cn": "Chinese"}
    rs = [at_least(f"{names[k]} household ({ref(f'household_{k}_mwh')} MWh/yr)", c.q["households_min"],
                   e / ref(f"household_{k}_mwh")) for k in names]
    return make(c, rs, "households", [
        f"GPT-3: {e:,} MWh; households = {e:,} / annual use: "
        + ", ".join(f"{k} {e / ref(f'household_{k}_mwh'):.0f}" for k in ("us", "world", "cn")),
        "'several hundred' (>= 200) holds except with a US household"],
        [src("gpt3_energy_mwh"), src("household_us_mwh")])


@check("a4-bank-hw-65pct")
def bank_hardware_cut(c: Claim) -> Verdict:
    cut = 1 - c.inputs["gpus_after"] / c.inputs["gpus_before"]
    return make(c, agree("1 - after/before", c.q["reduction_pct"], cut * 100), "%", [
        f"1 - {c.inputs['gpus_after']} / {c.inputs['gpus_before']} = {pct(cut)} (the anecdote itself is unsourced)"],
        ["arithmetic"])


@check("a2-compute-5-8x-perf-3pct")
def compute_ratio(c: Claim) -> Verdict:
    hours = get_claim("a2-1b-gpu-hours")
    ratio = hours.q["gpt3_gpu_hours"] / hours.q["deepseek_gpu_hours"]
    r6 = hours.inputs["tokens_gpt3"] / hours.inputs["tokens_deepseek"]
    lo, hi = c.q["compute_reduction_low_x"], c.q["compute_reduction_high_x"]
    rs = [in_range("the article's own GPU-hours", lo, hi, ratio), in_range("6ND with its token counts", lo, hi, r6)]
    return make(c, rs, "x", [
        f"{hours.q['gpt3_gpu_hours']:,} / {hours.q['deepseek_gpu_hours']:,} = {ratio:.2f}x; 6ND: "
        f"{fmt(hours.inputs['tokens_gpt3'])} / {fmt(hours.inputs['tokens_deepseek'])} = {r6:.2f}x; both in "
        f"{lo}-{hi}x; the <3 % quality gap is not recomputable"], ["arithmetic"])


# ---------------------------------------------------------------------------------------------
# Kernels, communication, pipelines
# ---------------------------------------------------------------------------------------------
@check("a2-layernorm-fusion-15-20pct")
def fusion_share(c: Claim) -> Verdict:
    from dsim.cost import op_time
    lo, hi = c.q["gain_low_pct"], c.q["gain_high_pct"]
    rs, lines = [], ["fusing removes the norm's own kernel: gain = t_norm / (t_norm + t_gemm), dsim.cost.op_time on an H100"]
    for tokens, D, what in ((4096, 4096, "training/prefill, width 4096"), (1, 4096, "decode, width 4096"),
                            (4096, 768, "training, width 768 (BERT-base)")):
        ln = op_time("rmsnorm", tokens=tokens, hidden=D)
        g = op_time("gemm", m=tokens, n=3 * D, k=D)
        share = ln / (ln + g)
        rs.append(in_range(what, lo * (1 - TOLERANCE), hi * (1 + TOLERANCE), share * 100))
        lines.append(f"{what}: norm {ln * 1e6:.1f} us + QKV GEMM [{tokens} x {D}] x [{D} x {3 * D}] {g * 1e6:.1f} us "
                     f"-> {pct(share)}")
    return make(c, rs, "%", lines, ["dsim.cost.op_time (H100 calibration)"])


@check("a2-comm-overlap-30-10")
def overlap(c: Claim) -> Verdict:
    m = deepseek_llm_7b()
    f = flops(m, batch=1, seq_len=4096, mode="train")
    compute = 1.0
    before = c.q["overhead_before_pct"] / 100
    comm = before / (1 - before) * compute                # comm is 30 % of the step without overlap
    fwd, bwd = f.forward / f.total, f.backward / f.total
    rs, lines = [], [f"without overlap comm = 30 % of the step: comm = {comm:.3f} x compute",
                     f"dsim.cost.flops({m.name}, train): forward {pct(fwd)} and backward {pct(bwd)} of the compute"]
    for label, hide in (("gradient all-reduce hidden behind the backward", bwd),
                        ("hidden behind the forward only (the article's wording)", fwd),
                        ("tensor-parallel all-reduce on the critical path", 0.0)):
        left = exposed_comm_time(comm, hide * compute)
        share = left / (compute + left)
        rs.append(at_most(label, c.q["overhead_after_pct"], share * 100))
        lines.append(f"{label}: dsim.cost.exposed_comm_time({comm:.3f}, {hide:.3f}) = {left:.3f} -> {pct(share)} of the step")
    return make(c, rs, "%", lines, ["dsim.cost.flops", "dsim.cost.exposed_comm_time"])


@check("a2-grad-compress-60pct")
def grad_compression(c: Claim) -> Verdict:
    stated = c.q["comm_reduction_pct"]
    f32, f16 = bytes_per_param("fp32"), bytes_per_param("fp16")
    idx = c.inputs["index_bytes"]
    keep32 = (1 - stated / 100) * f32 / (f16 + idx)
    keep16 = (1 - stated / 100) * f16 / (f16 + idx)
    keep = 0.25   # a usual top-k sparsification ratio (keep a quarter of the entries)
    sparse = 1 - keep * (f16 + idx) / f32
    rs = [agree("FP32 gradients sent as FP16, dense", stated, (1 - f16 / f32) * 100),
          agree("BF16 gradients (the usual mixed-precision baseline) sent as FP16", stated, 0.0),
          agree(f"FP32 -> FP16 plus keeping {keep:.0%} of the entries, int32 indices", stated, sparse * 100)]
    return make(c, rs, "%", [
        f"FP32 -> FP16: 1 - {f16:g}/{f32:g} = {pct(1 - f16 / f32)}",
        f"keeping {keep:.0%} of the entries as FP16 value + int32 index: 1 - {keep} x ({f16:g} + {idx}) / {f32:g} = {pct(sparse)}",
        f"sparse (value {f16:g} B + index {idx} B): 60 % needs keeping {keep32:.1%} of entries (FP32 baseline) or "
        f"{keep16:.1%} (BF16 baseline, where the 16-bit step itself saves nothing)"],
        ["dsim.cost.bytes_per_param"])


@check("a4-tp-comm-5pct")
def tp_overhead(c: Claim) -> Verdict:
    from dsim.cost import layer_time
    m, tp, tokens = deepseek_llm_67b(), 8, 4096
    compute = layer_time(m, batch=1, seq_len=tokens, mode="train", gpu="H100-SXM").total_s / tp
    vol = tp_volume(batch=1, seq=tokens, hidden=m.dim, n_layers=1, tp=tp)
    rs, lines = [], [f"{m.name}, one layer, {tokens} tokens, training: dsim.cost.layer_time / {tp} = "
                     f"{compute * 1e3:.2f} ms per rank; 4 all-reduces of {fmt(vol.nbytes)} bytes (dsim.cost.tp_volume)"]
    for label, rpn in (("TP8 inside one NVLink node, no overlap", 8), ("TP8 across nodes over InfiniBand", 1)):
        t = vol.time("H100-SXM", ranks_per_node=rpn)
        share = t / (t + compute)
        rs.append(at_most(label, c.q["overhead_pct_max"], share * 100))
        lines.append(f"{label}: {t * 1e3:.2f} ms -> {pct(share)} of the layer")
    t = vol.time("H100-SXM", ranks_per_node=8)
    left = exposed_comm_time(t, compute)
    rs.append(at_most("TP8 in a node, all-reduces overlapped with independent compute", c.q["overhead_pct_max"],
                      left / (left + compute) * 100))
    lines.append(f"overlapped (e.g. with another micro-batch): exposed {left * 1e3:.2f} ms")
    return make(c, rs, "%", lines, ["dsim.cost.layer_time", "dsim.cost.tp_volume", "dsim.cost.exposed_comm_time"])


@check("a4-pp-8-stages-mb64")
def pipeline_bubble(c: Claim) -> Verdict:
    p, m = c.inputs["stages"], c.inputs["micro_batches"]
    accum = 4   # a4-grad-accum-4: the article's gradient accumulation steps
    need = next(k for k in range(1, 10_000) if bubble_fraction_1f1b(p, k) <= 0.10)
    rs = [at_least("64 micro-batches per step", need, m, tol=0),
          at_least(f"micro-batch size 64, {accum} micro-batches (the article's accumulation steps)", need, accum, tol=0)]
    return make(c, rs, "micro-batches", [
        f"1F1B bubble (p-1)/(m+p-1), dsim.cost.bubble_fraction_1f1b: p={p}, m={m}: {pct(bubble_fraction_1f1b(p, m))}; "
        f"m={accum}: {pct(bubble_fraction_1f1b(p, accum))}",
        f"a bubble under 10 % (a usual target) needs m >= {need} micro-batches: stated = that need, computed = "
        "the micro-batches each reading gives"],
        ["dsim.cost.bubble_fraction_1f1b"])


# ---------------------------------------------------------------------------------------------
# Running the checks
# ---------------------------------------------------------------------------------------------
def _not_numeric(c: Claim) -> Verdict:
    return Verdict(claim_id=c.id, article=c.article, topic=c.topic, claim=c.claim, verdict=NOT_NUMERIC,
                   reason=c.reason or "not a numeric claim", arithmetic=c.note)


def check_claim(claim: Claim | str) -> Verdict:
    """The verdict on one claim (a Claim or its id)."""
    c = get_claim(claim) if isinstance(claim, str) else claim
    if not c.numeric:
        return _not_numeric(c)
    if c.id not in CHECKS:
        raise ValueError(f"numeric claim {c.id!r} has no registered check")
    return CHECKS[c.id](c)


def check_all() -> list[Verdict]:
    """Verdicts on every claim of claims_data.json, in file order (non-numeric ones as not_numeric)."""
    return [check_claim(c) for c in load_claims()]


def counts(verdicts: list[Verdict] | None = None) -> dict[str, Counter]:
    """Verdict counts by article label (a0..a4)."""
    out: dict[str, Counter] = {}
    for v in verdicts if verdicts is not None else check_all():
        out.setdefault(v.article_label, Counter())[v.verdict] += 1
    return out


def summary(verdicts: list[Verdict] | None = None, width: int = 60) -> str:
    """A text table of every claim: article, topic, id, verdict, stated, computed, off by."""
    vs = verdicts if verdicts is not None else check_all()
    head = f"{'art':3s} {'topic':13s} {'claim':{width}s} {'verdict':11s} {'stated':>10s} {'computed':>10s} {'off by':>8s}"
    rows = [head, "-" * len(head)]
    for v in sorted(vs, key=lambda v: (v.article, v.topic, v.claim_id)):
        s = "" if v.stated is None else fmt(v.stated, 3)
        k = "" if v.computed is None else fmt(v.computed, 3)
        off = v.off_by if v.verdict in ("off", "cannot_hold") else ""
        rows.append(f"{v.article_label:3s} {v.topic:13s} {v.claim_id[:width]:{width}s} {v.verdict:11s} {s:>10s} {k:>10s} {off:>8s}")
    rows.append("")
    for art, cnt in sorted(counts(vs).items()):
        rows.append(f"{art}: " + ", ".join(f"{k} {cnt[k]}" for k in (*VERDICTS, NOT_NUMERIC) if cnt[k]))
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Reference facts: the published numbers the checks lean on, checked the same way
# ---------------------------------------------------------------------------------------------
def reference_checks() -> list[Verdict]:
    """DeepSeek's and GPT-3's published sizes recomputed by dsim (not claims of the articles)."""
    out = []
    for name, (total, active, source) in PUBLISHED_PARAMS.items():
        p = params(preset(name))
        act = p.active_no_embedding if name.startswith("deepseek-v") else p.active
        c = Claim(id=f"ref-{name}", article="reference", topic="params", numeric=True, check="dsim.cost.params",
                  claim=f"{name}: {fmt(total)} parameters in total, {fmt(active)} activated per token ({source})")
        conv = "active_no_embedding" if name.startswith("deepseek-v") else "active"
        out.append(make(c, [agree("total (main model, no MTP)", total, p.total_no_mtp), agree(f"activated ({conv})", active, act)],
                        "params", [f"dsim.cost.params(preset('{name}')): total_no_mtp {fmt(p.total_no_mtp)}, {conv} {fmt(act)}"],
                        ["dsim.cost.params", source]))
    gpt3 = 6 * ref("gpt3_params") * ref("gpt3_tokens")
    c = Claim(id="ref-gpt3-flops", article="reference", topic="training_cost", numeric=True, check="6ND",
              claim="GPT-3's training took 3.14e23 FLOPs")
    out.append(make(c, agree("6 N D", ref("gpt3_train_flops"), gpt3), "FLOPs",
                    [f"6 x {fmt(ref('gpt3_params'))} x {fmt(ref('gpt3_tokens'))} = {fmt(gpt3)}"], [src("gpt3_train_flops")]))
    return out
