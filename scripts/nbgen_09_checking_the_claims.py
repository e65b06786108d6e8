"""Writes notebooks/09_checking_the_claims.ipynb (unexecuted); execute it with nbconvert afterwards:

.venv/bin/python scripts/nbgen_09_checking_the_claims.py
.venv/bin/jupyter nbconvert --to notebook --execute --inplace notebooks/09_checking_the_claims.ipynb
"""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def title(text):
    cell = md(text)
    cell.metadata["tags"] = ["remove-cell"]  # the chapter has its own heading
    return cell


widget_cell = code("""picker = widgets.Dropdown(options=[(f"{v.claim_id} ({v.verdict})", v.claim_id) for v in verdicts],
                          value="a3-calc-moe-flops", description="claim", layout=widgets.Layout(width="520px"))
view = widgets.HTML(claim_html(picker.value))
picker.observe(lambda change: setattr(view, "value", claim_html(change["new"])), names="value")
display(widgets.VBox([picker, view]))""")
# Widget views carry a fresh model id on every run: nbval cannot compare them (the static view below can).
widget_cell.metadata["tags"] = ["nbval-ignore-output"]

cells = [
    title("""# Checking the claims

Five Chinese articles about DeepSeek (the book's seed material) make 112 claims, inventoried in
`dsim/claims_data.json`. This notebook recomputes every numeric one with dsim's cost models
(`dsim.claims.check_all()`), shows the verdicts, and works through a few of them by hand."""),
    code("""%matplotlib inline
import html
from collections import Counter
import matplotlib
matplotlib.rcParams["figure.dpi"] = 80
import matplotlib.pyplot as plt
import numpy as np
import ipywidgets as widgets
from IPython.display import HTML, display

from dsim import claims as C
from dsim.claims import NOT_NUMERIC, VERDICTS, check_all, check_claim, counts, fmt, reference_checks

verdicts = check_all()
by_id = {v.claim_id: v for v in verdicts}
numeric = [v for v in verdicts if v.verdict != NOT_NUMERIC]
print(f"{len(verdicts)} claims from {len(C.ARTICLES)} articles: {len(numeric)} numeric, "
      f"{len(verdicts) - len(numeric)} not numeric; every numeric one checked by one of "
      f"{len(set(C.CHECKS.values()))} check functions")
kinds = (*VERDICTS, NOT_NUMERIC)
table = counts(verdicts)
print(f"{'article':46s}" + "".join(f"{k:>12s}" for k in kinds) + f"{'total':>7s}")
for path, name in C.ARTICLES.items():
    n = table[name[:2]]
    print(f"{name:46s}" + "".join(f"{n[k]:12d}" for k in kinds) + f"{sum(n.values()):7d}")
total = sum(table.values(), start=Counter())
print(f"{'all':46s}" + "".join(f"{total[k]:12d}" for k in kinds) + f"{sum(total.values()):7d}")"""),
    md("""## 1. Every numeric claim and its verdict

Grouped by article and topic. *stated* is the article's number, *computed* dsim's (for an ambiguous
claim, its first reading), both in the unit shown; *off by* is their ratio. `holds`: within 5 % (or
inside a computed feasible range); `off`: it is not; `cannot_hold`: it breaks a bound no implementation
can beat; `depends`: the readings of an ambiguous claim disagree (section 4 shows each reading)."""),
    code("""COLORS = {"holds": "#2a7d2a", "off": "#c77c00", "cannot_hold": "#b00020", "depends": "#1f5fa8",
          NOT_NUMERIC: "#777777"}

def badge(verdict):
    return f"<span style='color:{COLORS[verdict]};font-weight:bold'>{verdict}</span>"

def verdict_table(vs):
    rows, last = [], None
    for v in sorted(vs, key=lambda v: (v.article, v.topic, v.claim_id)):
        if v.article != last:
            rows.append(f"<tr><th colspan='7' style='text-align:left'>{html.escape(C.ARTICLES[v.article])}</th></tr>")
            last = v.article
        off = v.off_by if v.verdict in ("off", "cannot_hold") else ""
        rows.append(f"<tr><td>{v.topic}</td><td><code>{v.claim_id}</code></td><td>{badge(v.verdict)}</td>"
                    f"<td style='text-align:right'>{fmt(v.stated, 3)}</td><td style='text-align:right'>{fmt(v.computed, 3)}</td>"
                    f"<td>{html.escape(v.unit)}</td><td style='text-align:right'>{off}</td></tr>")
    head = "<tr><th>topic</th><th>claim</th><th>verdict</th><th>stated</th><th>computed</th><th>unit</th><th>off by</th></tr>"
    return "<table>" + head + "".join(rows) + "</table>"

display(HTML(verdict_table(numeric)))"""),
    md("""## 2. Stated against computed

Each numeric claim is a point: the article's number against dsim's, on logarithmic axes (units differ
from claim to claim, so only the distance from the diagonal means anything). On the diagonal the two
agree; the dashed lines are a factor of 2 either way. Claims whose first reading computes zero or less
(nothing to plot on a log axis) are listed below the figure."""),
    code("""points = [v for v in numeric if v.stated and v.computed and v.stated > 0 and v.computed > 0]
fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
for kind in VERDICTS:
    pts = [(v.computed, v.stated) for v in points if v.verdict == kind]
    if pts:
        x, y = zip(*pts)
        ax.scatter(x, y, s=28, color=COLORS[kind], label=f"{kind} ({len(pts)})", alpha=0.8)
lo = min(min(v.stated, v.computed) for v in points) / 3
hi = max(max(v.stated, v.computed) for v in points) * 3
ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
for f in (2, 0.5):
    ax.plot([lo, hi], [lo * f, hi * f], color="k", lw=0.6, ls="--")
for i, v in enumerate(sorted(points, key=lambda v: -abs(np.log(v.stated / v.computed)))[:4]):
    ax.annotate(v.claim_id, (v.computed, v.stated), fontsize=7, xytext=(6, -12 if i % 2 else 6),
                textcoords="offset points")
ax.set_xscale("log"); ax.set_yscale("log")
ax.set_xlim(lo, hi); ax.set_ylim(lo, hi)
ax.set_xlabel("computed by dsim"); ax.set_ylabel("stated in the article")
ax.set_title("Numeric claims: stated vs computed")
ax.legend(fontsize=8, loc="upper left")

labels = [name[:2] for name in C.ARTICLES.values()]
bottom = np.zeros(len(labels))
for kind in kinds:
    vals = np.array([table[a][kind] for a in labels])
    bx.bar(labels, vals, bottom=bottom, color=COLORS[kind], label=kind)
    bottom += vals
bx.set_ylim(0, bottom.max() * 1.35)
bx.set_ylabel("claims"); bx.set_title("Verdicts by article"); bx.legend(fontsize=8, ncol=3, loc="upper center")
plt.tight_layout()
plt.show()
print(f"{len(points)} of {len(numeric)} numeric claims plotted; not plotted (first reading <= 0): "
      + ", ".join(v.claim_id for v in numeric if v not in points))"""),
    md("""## 3. Worked examples

Each example redoes one check by hand, in the open, with the same dsim functions the checker uses; each
prints a line starting with "Answer" for the chapter's questions.

**3.1 An example function, run.** Article a3 shows a function `calculate_moe_flops` and the number it
supposedly prints for a "DeepSeek-175B" configuration. Re-implemented from its formula:"""),
    code("""def moe_flops_as_printed(expert_num, expert_size, capacity_factor):
    # the recorded formula: capacity factor x expert count experts (Python's round, capped), 2 x size^2 each
    charged = min(expert_num, round(capacity_factor * expert_num))
    return charged * 2 * expert_size ** 2

claim = C.get_claim("a3-calc-moe-flops")
printed = moe_flops_as_printed(**claim.inputs)
print(f"inputs {claim.inputs}: round({claim.inputs['capacity_factor']} x {claim.inputs['expert_num']}) = "
      f"{round(claim.inputs['capacity_factor'] * claim.inputs['expert_num'])}, capped at {claim.inputs['expert_num']} experts")
print(f"the code prints {printed} = 2^{int(np.log2(printed))}; the article says "
      f"{claim.quantities['stated_output_flops_per_token']:,}")
assert printed == C.calculate_moe_flops_as_written(**claim.inputs)
print(f"Answer 9.1: it prints {printed:,}, {printed / claim.quantities['stated_output_flops_per_token']:.1f}x the stated number")"""),
    md("""**3.2 Bits are not bytes.** Article a0: an 8-bit quantized 65B-parameter model fits in 21 GB. A number
stored in 8 bits takes one byte, whatever the method; scales only add to it."""),
    code("""from dsim.cost import weight_bytes, bytes_per_param
n, stated = 65e9, 21e9
print(f"65e9 x 8 bits / 8 = {fmt(n)} bytes; with one bf16 scale per 128 weights: {fmt(weight_bytes(int(n), 'int8', 128))}")
print(f"dsim.quant, measured on a real tensor: {C.quant_bytes_per_param(8, 128):.6f} bytes per parameter "
      f"(dsim.cost.bytes_per_param says {bytes_per_param('int8', 128):.6f})")
print(f"Answer 9.2: 21 GB for 65B parameters is {stated * 8 / n:.2f} bits per parameter; INT4 would still need "
      f"{fmt(weight_bytes(int(n), 'int4', 128))} bytes")"""),
    md("""**3.3 A speed-up no hardware gives.** Article a4's table: INT8 runs 2.5x faster than FP16. A step takes
the longer of its compute time and its memory time; INT8 at most halves the bytes and at most doubles the
tensor-core rate, so neither time can shrink by more than the larger of the two ratios. The H100
measurements in `dsim/data/quant_gpu.json` show what real GEMMs reach."""),
    code("""from dsim.cost import get_gpu, peak_flops
a100 = get_gpu("A100-80GB-SXM")
bytes_ratio = bytes_per_param("fp16") / C.quant_bytes_per_param(8, 128)
peak_ratio = peak_flops(a100, "int8") / peak_flops(a100, "fp16")
meas, where = C._measured_speedup("int8")
print(f"bytes: 2 / {C.quant_bytes_per_param(8, 128):.4f} = {bytes_ratio:.3f}x;  A100 peaks: {fmt(peak_flops(a100, 'int8'))} / "
      f"{fmt(peak_flops(a100, 'fp16'))} = {peak_ratio:g}x")
print(f"measured: best INT8 GEMM over bf16 {meas:.2f}x ({where})")
print(f"Answer 9.3: at most {max(16 / 8, peak_ratio):g}x is possible (2.5x cannot hold); the H100 INT8 GEMMs reached {meas:.2f}x")"""),
    md("""**3.4 Active is not total.** Articles a3 and a4 both put 5 % or more of the parameters in the router and
still claim a small active count. The breakdown of DeepSeek-V3 by `dsim.cost.params`, and the smallest
active count top-2 of 8 experts allows for a 200B model:"""),
    code("""from dsim.config import preset
from dsim.cost import params
p = params(preset("deepseek-v3"))
for k in ("routed_experts", "gate", "attn_proj", "shared_experts", "embedding", "head"):
    print(f"  {k:15s} {fmt(p.breakdown[k]):>10s}  {p.breakdown[k] / p.total_no_mtp:8.3%}")
floor = params(C.toy_moe(8, 200e9 / 8, 2)).active_breakdown["routed_experts"]
print(f"200B in 8 experts, top-2: at least {fmt(floor)} active (the article: under 35B)")
print(f"Answer 9.4: routed experts {p.breakdown['routed_experts'] / p.total_no_mtp:.1%} and the router "
      f"{p.breakdown['gate'] / p.total_no_mtp:.4%} of DeepSeek-V3's {fmt(p.total_no_mtp)} parameters")"""),
    md("""**3.5 A percentage without its length.** Article a4: a 512-token window plus 8 global tokens cuts attention
compute by 60 %. The saving depends on the sequence length, which the article does not give:"""),
    code("""for n in (1024, 2048, 4096, 8192, 32768, 131072):
    print(f"  {n:7,d} tokens: {C.window_saving(n, 512, 8):6.1%} of the causal attention-score FLOPs saved")
length = C.window_length_for(0.60, 512, 8)
print(f"Answer 9.5: the saving reaches 60 % at {length:,} tokens and keeps growing toward 100 % with the length")"""),
    md("""**3.6 Energy per GPU.** Article a2 gives both GPU-hours and megawatt-hours for training a 1B model, so
their ratio is the power each GPU drew:"""),
    code("""v = by_id["a2-1b-energy-mwh"]
print(v.arithmetic)
q = C.get_claim("a2-1b-energy-mwh").quantities
print(f"Answer 9.6: {q['deepseek_mwh'] * 1e3 / q['deepseek_gpu_hours']:.1f} kW per GPU, against "
      f"{fmt(v.readings[0].computed * 1e3 / q['deepseek_gpu_hours'])} kW all-in for an A100 ({v.verdict})")"""),
    md("""**3.7 What the checks lean on.** The checks compare against DeepSeek's published sizes. dsim recomputes
them from the released configurations (DeepSeek-V2/V3 count activated parameters without the embedding
table, DeepSeekMoE and Mixtral with it):"""),
    code("""for v in reference_checks():
    print(f"{v.claim_id:22s} {v.verdict:6s}  " + "; ".join(f"{r.label}: {fmt(r.stated)} vs {fmt(r.computed)}" for r in v.readings))
v3 = next(v for v in reference_checks() if v.claim_id == "ref-deepseek-v3")
print(f"Answer 9.7: DeepSeek-V3 671B / 37B {v3.verdict}: dsim counts {fmt(v3.readings[0].computed)} / {fmt(v3.readings[1].computed)}")"""),
    md("""## 4. One claim, all its arithmetic

Pick a claim: its text, verdict, every reading and the arithmetic. (In the book the widget shows its first
value; the cell after it prints the same view as text.)"""),
    code("""def claim_html(claim_id):
    v = by_id[claim_id]
    parts = [f"<p><code>{v.claim_id}</code> ({html.escape(C.ARTICLES.get(v.article, v.article))}, {v.topic}): "
             f"{html.escape(v.claim)}</p><p>verdict: {badge(v.verdict)}</p>"]
    if v.verdict == NOT_NUMERIC:
        parts.append(f"<p>not checked: {html.escape(v.reason)}</p>")
    else:
        rows = "".join(f"<tr><td>{html.escape(r.label)}</td><td style='text-align:right'>{fmt(r.stated)}</td>"
                       f"<td style='text-align:right'>{fmt(r.computed)}</td><td>{badge(r.verdict)}</td></tr>" for r in v.readings)
        parts.append(f"<table><tr><th>reading</th><th>stated</th><th>computed ({html.escape(v.unit)})</th><th>verdict</th></tr>{rows}</table>")
        if v.bound:
            parts.append(f"<p>bound: {html.escape(v.bound)}</p>")
        parts.append(f"<p>sources: {html.escape('; '.join(v.sources))}</p>")
    if v.arithmetic:
        parts.append(f"<pre>{html.escape(v.arithmetic)}</pre>")
    return "".join(parts)

def claim_text(claim_id):
    v = by_id[claim_id]
    lines = [f"{v.claim_id}: {v.claim}", f"verdict: {v.verdict}"]
    if v.verdict == NOT_NUMERIC:
        lines.append(f"not checked: {v.reason}")
    else:
        lines.append(f"stated {fmt(v.stated)} vs computed {fmt(v.computed)} {v.unit}")
        lines.append("sources: " + "; ".join(v.sources))
    return "\\n".join(lines + ([v.arithmetic] if v.arithmetic else []))"""),
    widget_cell,
    code("""print(claim_text("a3-calc-moe-flops"))"""),
    md("""## 5. Claims that are not checked

Benchmark scores, anecdotes, advice and descriptions of code carry no number dsim can recompute. Each keeps
the inventory's reason, and often a note on what is wrong with it anyway."""),
    code("""rows, last = [], None
for v in sorted((v for v in verdicts if v.verdict == NOT_NUMERIC), key=lambda v: (v.article, v.claim_id)):
    if v.article != last:
        rows.append(f"<tr><th colspan='3' style='text-align:left'>{html.escape(C.ARTICLES[v.article])}</th></tr>")
        last = v.article
    rows.append(f"<tr><td><code>{v.claim_id}</code></td><td>{html.escape(v.reason)}</td>"
                f"<td>{html.escape(v.arithmetic)}</td></tr>")
display(HTML("<table><tr><th>claim</th><th>why not checked</th><th>note</th></tr>" + "".join(rows) + "</table>"))"""),
]

nb = nbf.v4.new_notebook()
nb.cells = cells
nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
out = Path(__file__).resolve().parents[1] / "notebooks" / "09_checking_the_claims.ipynb"
nbf.write(nb, out)
print(f"wrote {out}")
