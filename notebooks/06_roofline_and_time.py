# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The roofline, and a time model that predicts real runs
#
# How long does a GEMM, an attention call or a whole MoE layer take on an H100? The datasheet gives two
# numbers, a peak FLOP rate and a peak memory bandwidth, and the *roofline* turns them into a lower bound.
# This notebook puts real H100 measurements (`dsim/data/timing_h100.json`, taken by
# `bench/timing_measure.py`) on that roofline, then uses `dsim.cost.op_time`, a model that adds tiles,
# waves, kernel launches and the copies an MoE layer makes, with efficiency constants fitted to a
# *calibration* set of shapes (the first cell prints how many), and checks it on a *validation* set of other
# shapes.
# Everything below is computed from the committed JSON, on a CPU.

# %%
# %matplotlib inline
from pathlib import Path

from dsim import viz

viz.setup()
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

import dsim
from dsim.config import preset
from dsim.cost import timing as tm
from dsim.cost.hardware import get_gpu, list_gpus, peak_flops

REPO = Path(dsim.__file__).resolve().parents[1]
DATA = REPO / "dsim" / "data" / "timing_h100.json"
if not DATA.exists():  # placeholder until the H100 measurements are committed
    DATA = Path("/tmp/timing_cpu.json")
data = tm.load_measurements(DATA)
env = data["env"]
GPU = get_gpu(env["gpu"]) if env["gpu"] in list_gpus() else get_gpu("H100-SXM")
records = [r for r in data["records"] if "error" not in r]
calib = [r for r in records if r["split"] == "calibration"]
valid = [r for r in records if r["split"] == "validation"]
committed = tm.DATA_DIR / f"timing_calibration_{tm.gpu_key(GPU)}.json"
cal = (
    tm.gpu_calibration(GPU)
    if committed.exists() and DATA.parent == tm.DATA_DIR
    else tm.fit_calibration(calib, GPU)
)
print(
    f"measured on: {env['device_name']} (torch {env['torch']}), {len(calib)} calibration and "
    f"{len(valid)} validation records"
)
print(
    f"model: {GPU.name}, {GPU.sm_count} SMs, bf16 peak {peak_flops(GPU, 'bf16') / 1e12:.1f} TFLOP/s, "
    f"HBM {GPU.hbm_bw / 1e12:.2f} TB/s; calibration: {cal.source}"
)
print(
    f"constants: {len(cal.constants())} (tm.Calibration), of which the calibration records constrain "
    f"{len(cal.fitted_constants())}; the others keep their default"
)


# %% [markdown]
# ## The roofline
#
# An op that computes $F$ FLOPs and must move $B$ bytes to and from HBM can finish no sooner than
#
# $$t \ge \max\left(\frac{F}{P_\text{peak}},\ \frac{B}{W_\text{peak}}\right),$$
#
# so its attainable FLOP rate is $\min(P_\text{peak},\ I \cdot W_\text{peak})$ with the *arithmetic intensity*
# $I = F/B$ in FLOP per byte. Below the *ridge point* $I^* = P_\text{peak}/W_\text{peak}$ an op is memory-bound.
# Each dot below is a measured op placed at its intensity and the FLOP rate it actually reached; the dashed roof
# is the datasheet, the solid one the *achievable* roof with the fitted efficiencies.


# %% tags=["anchor:roofline", "remove-input"]
def work(r):
    return tm.roofline_work(r["op"], GPU, r["dtype"], r["backward"], **r["shape"])


P, W = peak_flops(GPU, "bf16"), GPU.hbm_bw
ridge = P / W
print(
    f"ridge point: {ridge:.0f} FLOP/byte (datasheet); achievable: {cal.mma_eff * P / (cal.bw_eff * W):.0f} FLOP/byte "
    f"({cal.mma_eff:.0%} of the peak FLOP rate, {cal.bw_eff:.0%} of the peak bandwidth)"
)
fig, ax = plt.subplots(figsize=(7, 4.2))
I = np.logspace(-1, 4, 200)
ax.loglog(I, np.minimum(P, I * W) / 1e12, "k--", lw=1, label="datasheet roofline")
ax.loglog(
    I,
    np.minimum(cal.mma_eff * P, I * cal.bw_eff * W) / 1e12,
    "k-",
    lw=1,
    label="achievable (fitted)",
)
styles = {
    "gemm": ("o", "C0"),
    "moe_ffn": ("s", "C3"),
    "attention": ("^", "C2"),
    "grouped_gemm": ("D", "C1"),
}
for op, (marker, color) in styles.items():
    pts = [
        (f / b, f / r["time_s"])
        for r in records
        if r["op"] == op and r["dtype"] == "bf16"
        for f, f32, b in [work(r)]
        if f > 0
    ]
    if pts:
        x, y = zip(*pts)
        ax.scatter(x, np.array(y) / 1e12, marker=marker, color=color, s=14, alpha=0.7, label=op)
ax.set_xlabel("arithmetic intensity (FLOP / byte)")
ax.set_ylabel("TFLOP/s")
ax.set_title(f"measured ops on the {GPU.name} roofline")
ax.legend(fontsize=8, loc="lower right")
viz.show(
    fig,
    "Measured ops on the H100 roofline: each op's throughput against its arithmetic intensity, under the datasheet roofline (dashed) and the fitted achievable one.",
)

# %% [markdown]
# Two things stand out. Far right, big GEMMs and MoE layers are compute-bound, yet they stay well below
# the peak: the tensor cores are fed by tiles, and a tile of the output costs the same whether it is full or
# padded. Far left, decode-size GEMMs (a few tokens against a large weight) are memory-bound and sit under the
# bandwidth slope. Memory-bound ops (norms, elementwise, the gate) have almost no FLOPs, so their chart is
# bandwidth against size:

# %% tags=["anchor:bandwidth", "remove-input"]
fig, ax = plt.subplots(figsize=(7, 3.4))
for op, marker in (("elementwise", "o"), ("rmsnorm", "s"), ("gate", "^")):
    pts = [(b, b / r["time_s"]) for r in records if r["op"] == op for f, f32, b in [work(r)]]
    if pts:
        x, y = zip(*pts)
        ax.loglog(x, np.array(y) / 1e12, marker, ms=4, alpha=0.7, label=op)
ax.axhline(W / 1e12, color="k", ls="--", lw=1, label="datasheet bandwidth")
ax.axhline(cal.bw_eff * W / 1e12, color="k", lw=1, label="achievable (fitted)")
ax.set_xlabel("bytes moved")
ax.set_ylabel("TB/s")
ax.legend(fontsize=8)
ax.set_title("memory-bound ops: small ones pay the launch, large ones stream")
viz.show(
    fig,
    "Memory-bound ops: achieved bandwidth against bytes moved; small ops pay the launch, large ones stream near the fitted bandwidth.",
)
one = cal.op_start_s + cal.launch_s
print(
    f"fitted: a lone kernel costs {one * 1e6:.2f} us before it moves a byte ({cal.op_start_s * 1e6:.2f} us of "
    f"first-launch latency, then {cal.launch_s * 1e6:.2f} us per kernel in a chain); that is the time to move "
    f"{one * cal.bw_eff * W / 1e6:.1f} MB at the achievable bandwidth"
)

# %% [markdown]
# ## Predicted against measured
#
# The model (`dsim/cost/timing/`) writes each op as the kernels it launches, and gives each kernel
# `launch + max(compute, memory)`, where compute time counts whole tiles in whole waves over the SMs and memory
# time counts the bytes really moved (the MoE layer's sort, gathers and weighted sum included). The efficiencies
# are fitted on the calibration shapes; the plot shows the validation shapes, which the fit never saw, with the
# datasheet roofline's prediction of the same ops in grey. (`gemm:fp32` is the MoE router's fp32 GEMM, measured
# for the gate's sake.)

# %% tags=["anchor:validation", "remove-input"]
rows = tm.validate(valid, cal, GPU)
fig, ax = plt.subplots(figsize=(5.6, 5.2))
meas = np.array([r["measured_s"] for r in rows])
pred = np.array([r["predicted_s"] for r in rows])
roof = np.array([r["roofline_s"] for r in rows])
lo, hi = meas.min() / 2, meas.max() * 2
x = np.array([lo, hi])
ax.fill_between(x, x * 0.75, x * 1.25, color="0.92", label="within 25%")
ax.fill_between(x, x * 0.9, x * 1.1, color="0.82", label="within 10%")
ax.loglog(x, x, "k-", lw=0.8)
ax.scatter(meas, roof, s=8, color="0.6", label="datasheet roofline")
for i, op in enumerate(sorted({r["op"] for r in rows})):
    sel = [j for j, r in enumerate(rows) if r["op"] == op]
    ax.scatter(meas[sel], pred[sel], s=12, color=f"C{i}", label=f"model: {op}")
ax.set_xlim(lo, hi)
ax.set_ylim(lo / 20, hi)
ax.set_xlabel("measured (s)")
ax.set_ylabel("predicted (s)")
ax.legend(fontsize=7, loc="upper left")
ax.set_title("validation shapes (held out from the fit)")
viz.show(
    fig,
    "Predicted against measured times on the validation shapes, held out from the fit, with the datasheet roofline for comparison; shaded: within 10% and 25%.",
)
summary = tm.error_summary(rows, "kind")
print(f"{'op kind':14}{'cases':>6}{'median':>9}{'worst':>9}   roofline: {'median':>7}{'worst':>9}")
for kind, s in summary.items():
    print(
        f"{kind:14}{s['n']:6}{s['median']:9.1%}{s['worst']:9.1%}             {s['roofline_median']:7.1%}"
        f"{s['roofline_worst']:9.1%}"
    )

# %% tags=["anchor:worst", "remove-input"]
worst = sorted(rows, key=lambda r: -abs(r["error"]))[:5]
print("the five worst-predicted validation cases:")
for r in worst:
    shape = ", ".join(
        f"{k}={v}" for k, v in r["shape"].items() if v is not None and k not in ("numel",)
    )
    print(
        f"  {r['op']:12}{' fwd+bwd' if r['backward'] else '':8} {shape}\n{'':22}measured "
        f"{r['measured_s'] * 1e6:9.1f} us, model {r['error']:+.1%}"
    )

# %% [markdown]
# ## Where an MoE layer loses efficiency
#
# An MoE layer runs the same FLOPs as a dense FFN of its activated width, but in pieces: expert $e$ gets
# $n_e$ of the $T \cdot k$ token copies. Two effects follow.
#
# **Tile quantization per expert.** A grouped GEMM computes each expert's rows in tiles of $B_M$ rows, so expert $e$
# costs $\lceil n_e / B_M \rceil$ tile rows whatever $n_e$ is; with random routing $n_e \sim \text{Binomial}(T, k/E)$.
# The useful fraction of the computed rows is $\mathbb{E}[n_e] / (B_M\, \mathbb{E}\lceil n_e/B_M \rceil)$.
# PyTorch's grouped GEMM (`torch._grouped_mm`, CUTLASS) uses 64x128 tiles when experts get at most 128 rows on
# average, 128x256 tiles above.
#
# **Memory traffic around the GEMMs.** Sorting the copies by expert, gathering them, weighting and scattering the
# results back moves several times the layer's activations; when experts get few tokens, reading every expert's
# weights dominates (decode).

# %% tags=["anchor:moe", "remove-input"]
fams = {
    "DeepSeek-V2-Lite (64 experts, top-6)": (2048, 1408, 64, 6),
    "DeepSeek-V3 (256 experts, top-8)": (7168, 2048, 256, 8),
    "Mixtral-8x7B (8 experts, top-2)": (4096, 14336, 8, 2),
}
tokens = np.unique(np.logspace(5, 15, 41, base=2).astype(int))
fig, axes = plt.subplots(1, 2, figsize=(7.3, 3.6))
for i, (name, (D, I_, E, K)) in enumerate(fams.items()):
    layer = dict(dim=D, moe_inter_dim=I_, n_routed_experts=E, n_activated_experts=K)
    tf = [
        3
        * 6
        * t
        * K
        * D
        * I_
        / tm.op_time("moe_ffn", GPU, backward=True, calibration=cal, tokens=int(t), **layer)
        / 1e12
        for t in tokens
    ]
    axes[0].semilogx(tokens, tf, color=f"C{i}", label=name)
    m = [
        (r["shape"]["tokens"], 3 * 6 * r["shape"]["tokens"] * K * D * I_ / r["time_s"] / 1e12)
        for r in records
        if r["op"] == "moe_ffn"
        and r["backward"]
        and all(r["shape"][a] == v for a, v in layer.items())
    ]
    if m:
        axes[0].semilogx(*zip(*m), "o", color=f"C{i}", ms=5)
axes[0].set_xlabel("tokens")
axes[0].set_ylabel("TFLOP/s (expert GEMMs, fwd+bwd)")
axes[0].set_title("MoE layer throughput: model (lines), measured (dots)")
axes[0].legend(fontsize=7)
rows_per_expert = np.arange(8, 1025, 8)
for bm in (64, 128):
    useful = [
        r / (bm * tm.expert_load(int(r * 256 / 8), 8, 256, bm)[0] / 256) for r in rows_per_expert
    ]
    axes[1].plot(rows_per_expert, useful, label=f"{bm}-row tiles")
axes[1].set_xlabel("mean rows per expert (T k / E)")
axes[1].set_ylabel("useful fraction of tile rows")
axes[1].set_title("tile quantization, 256 experts, random routing")
axes[1].legend(fontsize=8)
viz.show(
    fig,
    "MoE layer throughput against tokens, model and measurement (left), and the useful fraction of tile rows for 256 experts under random routing (right).",
)


# %% tags=["anchor:moe-kernels", "remove-input"]
def groups(kernels):
    out = {}
    for k in kernels:
        part = (
            "grouped GEMMs"
            if k.kind == "grouped_gemm"
            else "gate"
            if k.name.startswith("gate.")
            else "sort and gathers"
            if k.kind in ("sort", "gather", "atomic", "index_put")
            else "weighting and sums (strided kernels)"
            if k.kind in ("strided", "reduce")
            else "launches, elementwise and small"
        )
        out[part] = out.get(part, 0.0) + k.time_s
    return out


shape = dict(tokens=4096, dim=7168, moe_inter_dim=2048, n_routed_experts=256, n_activated_experts=8)
fig, ax = plt.subplots(figsize=(7, 2.2))
left = 0.0
for direction, bwd in (("forward", False), ("forward + backward", True)):
    parts = groups(tm.op_kernels("moe_ffn", GPU, backward=bwd, calibration=cal, **shape))
    total = sum(parts.values())
    print(
        f"DeepSeek-V3 MoE layer, 4096 tokens, {direction}: {total * 1e3:.2f} ms = "
        + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
    )
    left = 0.0
    for j, (part, t) in enumerate(sorted(parts.items())):
        ax.barh(direction, t * 1e3, left=left, color=f"C{j}", label=part if bwd else None)
        left += t * 1e3
ax.set_xlabel("ms (model)")
ax.legend(fontsize=7, loc="lower right")
viz.show(fig, "One MoE layer's forward and backward time by kernel group, from the model.")

# %% [markdown]
# The measurement run also profiled one layer kernel by kernel (`torch.profiler`, in the committed JSON).
# Here is the measured profile of a DeepSeek-V2-Lite-sized layer, forward and backward, next to the model's
# kernel list for the same layer; the kernel names say what ran (CUTLASS grouped GEMMs, gathers, PyTorch's
# non-vectorized elementwise kernels for the weighting, radix-sort passes).

# %%
prof = [
    p for p in data.get("profiles", []) if p["op"] == "moe_ffn" and p["backward"] and "kernels" in p
]
if prof:
    p = prof[0]
    total = sum(k["time_s"] for k in p["kernels"])
    print(
        f"measured profile, {p['shape']}: {sum(k['count'] for k in p['kernels'])} kernels, {total * 1e3:.2f} ms of kernel time"
    )
    for k in p["kernels"][:8]:
        print(f"  {k['time_s'] * 1e6:8.1f} us  x{k['count']:<3} {k['name'][:90]}")
    ks = tm.op_kernels("moe_ffn", GPU, backward=True, calibration=cal, **p["shape"])
    print(
        f"model: {sum(k.count for k in ks)} kernels, {sum(k.time_s for k in ks) * 1e3:.2f} ms (launch gaps included)"
    )
    for k in sorted(ks, key=lambda k: -k.time_s)[:8]:
        print(f"  {k.time_s * 1e6:8.1f} us  {k.name}  {k.note}")

# %% [markdown]
# Each memory-bound kernel of the model's list names the tensors it reads and writes, so that it can be held
# against a line of the profile (T tokens, D dim, I moe_inter_dim, E n_routed_experts, K n_activated_experts,
# N = T K copies):

# %%
layer = prof[0]["shape"] if prof else shape
print(f"model, forward of {layer}:")
for k in tm.op_kernels("moe_ffn", GPU, backward=False, calibration=cal, **layer):
    if k.name in (
        "gate.topk (select, sort the k)",
        "experts.ys * weights",
        "experts.sum over the K experts",
    ):
        print(f"{k.name}: {k.count} kernel(s), {k.bytes / 1e6:.1f} MB, {k.time_s * 1e6:.1f} us")
        for verb, tensors in (("reads", k.reads), ("writes", k.writes)):
            print(f"  {verb}: " + ", ".join(f"{t} {b / 1e6:.2f} MB" for t, b in tensors.items()))

# %% [markdown]
# ## Decode against prefill
#
# A GEMM of $m$ tokens against a $k \times n$ bf16 weight does $2mkn$ FLOPs and must read $2kn$ bytes of weight, so
# its intensity is about $m$ FLOP/byte: below the ridge point every decode step is memory-bound, and its time is
# roughly the bytes of all weights it touches divided by the bandwidth. In an MoE layer the $m$ that matters is the
# tokens *per expert*, $Tk/E$, which is tiny in decode.

# %% tags=["anchor:decode", "remove-input"]
args = preset("deepseek-v2-lite")
prefill = tm.step_time(args, 1, 4096, "prefill", GPU, calibration=cal)
print(
    f"{args.name}: prefill of 4096 tokens {prefill.total_s * 1e3:.1f} ms, "
    f"{prefill.total_s / 4096 * 1e6:.1f} us per token"
)
print(f"{'decode batch':>13}{'step (ms)':>11}{'per token (us)':>16}{'vs prefill':>12}")
for b in (1, 8, 64, 256):
    d = tm.step_time(args, b, 4096, "decode", GPU, calibration=cal)
    print(
        f"{b:13}{d.total_s * 1e3:11.2f}{d.total_s / b * 1e6:16.1f}{d.total_s / b / (prefill.total_s / 4096):11.1f}x"
    )
parts = tm.step_time(args, 8, 4096, "decode", GPU, calibration=cal).breakdown()
print(
    "decode step, batch 8, by component: "
    + ", ".join(
        f"{k} {v * 1e3:.2f} ms" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:5]
    )
)


# %% [markdown]
# ## Try it
#
# Pick a GPU and a layer. GPUs other than the H100 and H200 reuse the H100's fitted efficiencies with their
# own datasheet peaks, SM counts and bandwidth (an extrapolation, marked as such).


# %% tags=["nbval-ignore-output"]
def show_moe(
    gpu="H100-SXM",
    tokens=4096,
    dim=7168,
    moe_inter_dim=2048,
    n_routed_experts=256,
    n_activated_experts=8,
    backward=True,
):
    c = cal if gpu == GPU.name else None
    K = min(n_activated_experts, n_routed_experts)
    s = dict(
        tokens=tokens,
        dim=dim,
        moe_inter_dim=moe_inter_dim,
        n_routed_experts=n_routed_experts,
        n_activated_experts=K,
    )
    t = tm.op_time("moe_ffn", gpu, backward=backward, calibration=c, **s)
    roof = tm.roofline_time("moe_ffn", gpu, backward=backward, **s)
    flops = 6 * tokens * K * dim * moe_inter_dim * (3 if backward else 1)
    print(
        f"{gpu}: {t * 1e3:.3f} ms, {flops / t / 1e12:.0f} TFLOP/s of expert GEMMs; datasheet roofline "
        f"{roof * 1e3:.3f} ms; {tokens * K / n_routed_experts:.1f} rows per expert on average"
    )
    print((c or tm.gpu_calibration(gpu)).source)
    ks = sorted(
        tm.op_kernels("moe_ffn", gpu, backward=backward, calibration=c, **s),
        key=lambda k: -k.time_s,
    )[:6]
    for k in ks:
        print(f"  {k.time_s * 1e6:9.1f} us  {k.name}  {k.note}")


gpus = ["H100-SXM", "H200", "H800", "H100-PCIe", "A100-80GB-SXM"]
display(
    widgets.interactive(
        show_moe,
        gpu=widgets.Dropdown(options=gpus, value="H100-SXM", description="GPU"),
        tokens=widgets.IntSlider(value=4096, min=16, max=65536, step=16, description="tokens"),
        dim=widgets.Dropdown(options=[1024, 2048, 4096, 5120, 7168], value=7168, description="dim"),
        moe_inter_dim=widgets.Dropdown(
            options=[512, 768, 1408, 1536, 2048, 14336], value=2048, description="moe_inter_dim"
        ),
        n_routed_experts=widgets.Dropdown(
            options=[8, 16, 64, 128, 160, 256], value=256, description="experts"
        ),
        n_activated_experts=widgets.IntSlider(value=8, min=1, max=8, description="top-k"),
        backward=widgets.Checkbox(value=True, description="with backward"),
    )
)


# %% tags=["nbval-ignore-output"]
def show_gemm(gpu="H100-SXM", m=4096, n=4096, k=4096):
    c = cal if gpu == GPU.name else None
    ks = tm.op_kernels("gemm", gpu, calibration=c, m=m, n=n, k=k)
    t, roof = ks[0].time_s, tm.roofline_time("gemm", gpu, m=m, n=n, k=k)
    print(
        f"{gpu}: y[{m},{n}] = x[{m},{k}] @ w[{k},{n}]: {t * 1e6:.1f} us ({2 * m * n * k / t / 1e12:.0f} TFLOP/s), "
        f"{ks[0].note}; datasheet roofline {roof * 1e6:.1f} us"
    )


display(
    widgets.interactive(
        show_gemm,
        gpu=widgets.Dropdown(options=gpus, value="H100-SXM", description="GPU"),
        m=widgets.IntSlider(value=4096, min=1, max=16384, description="m (tokens)"),
        n=widgets.IntSlider(value=4096, min=64, max=32768, step=64, description="n"),
        k=widgets.IntSlider(value=4096, min=64, max=32768, step=64, description="k"),
    )
)

# %% [markdown]
# ## Worked questions

# %% [markdown] tags=["anchor:answers"]
# **Q1.** A DeepSeek-V3 MoE layer (256 experts, top-8, hidden 7168, expert width 2048, no shared expert) sees
# 4096 tokens. How long do its forward and backward take on the GPU, and how far is that from the datasheet
# roofline?

# %% tags=["anchor:answers", "remove-input"]
s = dict(tokens=4096, dim=7168, moe_inter_dim=2048, n_routed_experts=256, n_activated_experts=8)
t = tm.op_time("moe_ffn", GPU, backward=True, calibration=cal, **s)
roof = tm.roofline_time("moe_ffn", GPU, backward=True, **s)
print(
    f"model: {t * 1e3:.2f} ms; datasheet roofline: {roof * 1e3:.2f} ms ({t / roof:.2f}x); "
    f"rows per expert {4096 * 8 / 256:.0f}, so the grouped GEMMs use "
    f"{'64x128' if 4096 * 8 / 256 <= 128 else '128x256'} tiles"
)

# %% [markdown]
# **Q2.** For a DeepSeek-V2-Lite layer (64 experts, top-6), at how many tokens does `torch._grouped_mm` switch from
# its small to its large tile, and what does the switch do to the layer's throughput?

# %% tags=["anchor:answers", "remove-input"]
D, I_, E, K = 2048, 1408, 64, 6
switch = 128 * E // K + 1  # the first T with T*K/E > 128
for t in (switch - 1, switch):
    layer = dict(tokens=t, dim=D, moe_inter_dim=I_, n_routed_experts=E, n_activated_experts=K)
    tt = tm.op_time("moe_ffn", GPU, backward=True, calibration=cal, **layer)
    note = [
        k.note
        for k in tm.op_kernels("moe_ffn", GPU, calibration=cal, **layer)
        if k.kind == "grouped_gemm"
    ][0]
    print(
        f"T = {t}: {t * K / E:.2f} rows per expert, {note}; fwd+bwd {tt * 1e3:.3f} ms, "
        f"{18 * t * K * D * I_ / tt / 1e12:.0f} TFLOP/s"
    )

# %% [markdown]
# **Q3.** Decoding DeepSeek-V2-Lite with batch 8 and 4096 tokens of context: how much faster is an H200 than an H100, and why
# not by the ratio of their peak FLOP rates?

# %% tags=["anchor:answers", "remove-input"]
h100 = tm.step_time(args, 8, 4096, "decode", "H100-SXM")
h200 = tm.step_time(args, 8, 4096, "decode", "H200")
print(
    f"H100 {h100.total_s * 1e3:.2f} ms, H200 {h200.total_s * 1e3:.2f} ms: {h100.total_s / h200.total_s:.2f}x faster; "
    f"bandwidth ratio {get_gpu('H200').hbm_bw / get_gpu('H100-SXM').hbm_bw:.2f}, bf16 peak ratio "
    f"{peak_flops('H200', 'bf16') / peak_flops('H100-SXM', 'bf16'):.2f}"
)
print(
    f"calibrations: H100 {tm.gpu_calibration('H100-SXM').source}; H200 {tm.gpu_calibration('H200').source}"
)

# %% [markdown]
# **Q4.** How wrong is the datasheet roofline on the validation GEMMs of decode size (at most 64 tokens), and how
# wrong is the model?

# %% tags=["anchor:answers", "remove-input"]
dec = [r for r in rows if r["op"] == "gemm" and r["shape"]["m"] <= 64]
if dec:
    e_model = np.abs([r["error"] for r in dec])
    e_roof = np.abs([r["roofline_error"] for r in dec])
    print(
        f"{len(dec)} decode-size GEMMs: roofline median {np.median(e_roof):.0%}, worst {e_roof.max():.0%}; "
        f"model median {np.median(e_model):.1%}, worst {e_model.max():.1%}"
    )
