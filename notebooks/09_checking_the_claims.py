# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["remove-cell"]
# # Checking the claims
#
# Five Chinese articles about DeepSeek (the book's seed material) make 112 claims, inventoried in
# `dsim/claims/claims_data.json`, each told in our own words with where it stands and how it is
# read. This notebook recomputes every numeric one with dsim's cost models
# (`dsim.claims.check_all()`), shows each claim with its computation and verdict, and works
# through a few of them by hand. The book's chapter 9 includes its tagged cells.

# %% tags=["remove-cell"]
# %matplotlib inline
import matplotlib

matplotlib.rcParams["figure.dpi"] = 80
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from dsim import claims as C
from dsim.claims import NOT_NUMERIC, VERDICTS, check_all, fmt, reference_checks, report

verdicts = check_all()
by_id = {v.claim_id: v for v in verdicts}
numeric = [v for v in verdicts if v.verdict != NOT_NUMERIC]

# %% tags=["anchor:counts", "remove-input"]
print(
    f"{len(verdicts)} claims from {len(C.ARTICLES)} articles: {len(numeric)} numeric, "
    f"{len(verdicts) - len(numeric)} not numeric; {len(set(C.CHECKS.values()))} check functions"
)
display(HTML(report.counts_table(verdicts)))

# %% tags=["anchor:scatter", "remove-input"]
points = [v for v in numeric if v.stated and v.computed and v.stated > 0 and v.computed > 0]
fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=160)
for kind in VERDICTS:
    xy = [(v.computed, v.stated) for v in points if v.verdict == kind]
    if xy:
        x, y = zip(*xy)
        ax.scatter(x, y, s=22, color=report.COLORS[kind], label=f"{kind} ({len(xy)})")
lo = min(min(v.stated, v.computed) for v in points) / 3
hi = max(max(v.stated, v.computed) for v in points) * 3
ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
for f in (2, 0.5):
    ax.plot([lo, hi], [lo * f, hi * f], color="k", lw=0.6, ls="--")
ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
ax.set(xlabel="computed by dsim (first reading)", ylabel="stated in the article")
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% tags=["anchor:a0", "remove-input"]
display(HTML(report.article_table(verdicts, "a0")))

# %% tags=["anchor:a1", "remove-input"]
display(HTML(report.article_table(verdicts, "a1")))

# %% tags=["anchor:a2", "remove-input"]
display(HTML(report.article_table(verdicts, "a2")))

# %% tags=["anchor:a3", "remove-input"]
display(HTML(report.article_table(verdicts, "a3")))

# %% tags=["anchor:a4", "remove-input"]
display(HTML(report.article_table(verdicts, "a4")))

# %% tags=["anchor:unchecked", "remove-input"]
display(HTML(report.unchecked_table(verdicts)))

# %% [markdown]
# ## Worked examples
#
# Each example redoes one check by hand with the same dsim functions the checker uses, and prints
# a line starting with "Answer" for the chapter's problems.

# %% tags=["anchor:q1"]
claim = C.get_claim("a3-calc-moe-flops")
e, s, cf = (claim.inputs[k] for k in ("expert_num", "expert_size", "capacity_factor"))
charged = min(e, round(cf * e))  # the article's formula: capacity factor x experts, capped
printed = charged * 2 * s**2
assert printed == C.calculate_moe_flops_as_written(**claim.inputs)
stated = claim.quantities["stated_output_flops_per_token"]
print(f"round({cf} x {e}) = {round(cf * e)}, capped at {e}: {charged} experts x 2 x {s}^2")
print(
    f"Answer 9.1: it prints {printed:,} (2^{int(np.log2(printed))}), {printed / stated:.1f}x "
    f"the {stated:,} the article shows"
)

# %% tags=["anchor:q2"]
from dsim.cost import weight_bytes

n, stated = 65e9, 21e9
print(
    f"65e9 x 8 bits / 8 = {fmt(n)} bytes; with bf16 scales per 128: "
    f"{fmt(weight_bytes(int(n), 'int8', 128))}"
)
print(f"Answer 9.2: 21 GB for 65B parameters is {stated * 8 / n:.2f} bits per parameter;")
print(f"  even INT4 needs {fmt(weight_bytes(int(n), 'int4', 128))} bytes")

# %% tags=["anchor:q3"]
from dsim.claims.models import deepseek_llm_67b, llama31_8b
from dsim.cost import get_gpu, peak_flops

a100 = get_gpu("A100-80GB-SXM")
step = max(2 / C.quant_bytes_per_param(8, 128), peak_flops(a100, "int8") / peak_flops(a100, "fp16"))
meas, where = C._measured_speedup("int8")
small = C.serving_speedup(llama31_8b(), 1, 8)
large = C.serving_speedup(deepseek_llm_67b(), 2, 8)
print(f"one step: at most {step:.3g}x; an INT8 GEMM measured on an H100: {meas:.2f}x")
print(f"  ({where})")
print(f"Answer 9.3: one step gains at most {step:.3g}x; serving gains {small:.2f}x (8B, one A100)")
print(f"  to {large:.2f}x (67B, two A100s): 2.5x depends on the deployment")

# %% tags=["anchor:q4"]
from dsim.config import preset
from dsim.cost import params

p = params(preset("deepseek-v3"))
for k in ("routed_experts", "gate", "attn_proj", "shared_experts", "embedding", "head"):
    print(f"  {k:15s} {fmt(p.breakdown[k]):>10s}  {p.breakdown[k] / p.total_no_mtp:8.3%}")
print(
    f"Answer 9.4: routed experts {p.breakdown['routed_experts'] / p.total_no_mtp:.1%} and the "
    f"router {p.breakdown['gate'] / p.total_no_mtp:.4%} of DeepSeek-V3's {fmt(p.total_no_mtp)}"
)

# %% tags=["anchor:q5"]
for n in (1024, 2048, 4096, 8192, 32768, 131072):
    print(f"  {n:7,d} tokens: {C.window_saving(n, 512, 8):6.1%} of attention-score FLOPs saved")
length = C.window_length_for(0.60, 512, 8)
print(f"Answer 9.5: 60 % at {length:,} tokens; the saving grows toward 100 % with the length")

# %% tags=["anchor:q6"]
q = C.get_claim("a2-1b-energy-mwh").quantities
v = by_id["a2-1b-energy-mwh"]
kw = q["deepseek_mwh"] * 1e3 / q["deepseek_gpu_hours"]
all_in = v.readings[0].computed * 1e3 / q["deepseek_gpu_hours"]
print(f"Answer 9.6: {kw:.1f} kW per GPU, against {all_in:.2f} kW all-in for an A100 ({v.verdict})")

# %% tags=["anchor:q7"]
for r in reference_checks():
    print(
        f"{r.claim_id:22s} {r.verdict:6s} "
        + "; ".join(f"{fmt(x.stated)} vs {fmt(x.computed)}" for x in r.readings)
    )
v3 = next(r for r in reference_checks() if r.claim_id == "ref-deepseek-v3")
print(
    f"Answer 9.7: DeepSeek-V3 671B / 37B {v3.verdict}: dsim counts "
    f"{fmt(v3.readings[0].computed)} / {fmt(v3.readings[1].computed)}"
)
