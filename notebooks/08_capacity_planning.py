# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["remove-cell"]
# # Capacity planning
#
# Which parallel layout trains a DeepSeek-style MoE fastest on a given cluster, what it costs, and what a
# serving deployment delivers. Everything below is computed by `dsim.cost.plan` from the cost modules
# (parameters, FLOPs, memory, the time model calibrated on H100 measurements, communication) and held
# against DeepSeek's published figures. Runs in well under a minute on a CPU.

# %%
# %matplotlib inline

from dsim import viz

viz.setup()
answer = viz.Answers(chapter=8)
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from dsim.cli import human, table
from dsim.config import preset
from dsim.cost.flops import flops
from dsim.cost.hardware import peak_flops
from dsim.cost.plan import (
    ASSUMPTIONS,
    DEEPSEEK_V3_SERVING,
    DEEPSEEK_V3_TRAINING,
    TrainingJob,
    deepseek_v3_workload,
    plan_serving,
    plan_training,
    reproduce_deepseek_v3_serving,
    reproduce_deepseek_v3_training,
    serving_curve,
)
from dsim.cost.timing import gpu_calibration

V3 = preset("deepseek-v3")
GB = 1e9


def layout(p):
    return f"tp{p.tp} pp{p.pp} ep{p.ep} dp{p.dp} zero{p.zero} mb{p.micro_batch} {p.recompute} {p.schedule} {p.dtype}"


def plan_rows(plans):
    return [
        [
            i,
            layout(p),
            f"{p.step_time_s:.2f}",
            f"{p.compute_s:.2f}",
            f"{p.exposed_comm_s:.2f}",
            f"{p.bubble_s:.2f}",
            f"{p.mfu:.1%}",
            f"{p.days:.1f}",
            human(p.gpu_hours),
            f"{p.memory_per_gpu_bytes / GB:.1f}",
        ]
        for i, p in enumerate(plans, 1)
    ]


PLAN_HEADER = [
    "#",
    "layout",
    "step s",
    "compute",
    "comm",
    "bubble",
    "MFU",
    "days",
    "GPU-h",
    "GB/GPU",
]
print("time model:", gpu_calibration("H800").source)

# %% [markdown]
# ## 1. DeepSeek-V3's pre-training, reproduced
#
# The technical report states the layout: 2048 H800 GPUs, 16-way pipeline parallelism with the DualPipe
# schedule, 64-way expert parallelism over 8 nodes, ZeRO-1 data parallelism (so dp = 2048 / 16 = 128), no
# tensor parallelism, fp8 matmuls, recomputation of the RMSNorms and of MLA's up-projections, AdamW moments
# in bf16, sequences of 4096 tokens and a batch of 15360 sequences. It reports 180K H800 GPU-hours per
# trillion tokens (3.7 days on the cluster) and 2,664K GPU-hours for the 14.8T tokens of pre-training.
#
# `reproduce_deepseek_v3_training` fixes that layout and searches only the micro-batch, which the report
# does not state. Nothing is fitted to the published figures: the compute efficiencies come from the time
# model calibrated on H100 measurements and applied to the H800's datasheet (the same tensor cores), the
# interconnect from the H800's bandwidths as DeepSeek measured them.

# %% tags=["anchor:reproduce", "remove-input"]
stated = reproduce_deepseek_v3_training()  # the layout of the report
full = reproduce_deepseek_v3_training(recompute="full")  # the same with full recomputation
pub = DEEPSEEK_V3_TRAINING
rows = []
for name, rep in (("stated (selective recomputation)", stated), ("full recomputation", full)):
    p = rep["plan"]
    rows.append(
        [
            name,
            f"{rep['predicted_gpu_hours'] / 1e3:,.0f}K",
            f"{pub['published_gpu_hours'] / 1e3:,.0f}K",
            f"{rep['error']:+.1%}",
            f"{rep['predicted_gpu_hours_per_trillion'] / 1e3:.0f}K",
            f"{rep['predicted_days_per_trillion']:.2f}",
            f"{p.mfu:.1%}",
            f"mb{p.micro_batch}",
            f"{p.memory_per_gpu_bytes / GB:.0f}",
            "yes" if p.fits else "no",
        ]
    )
rows.append(
    [
        "published",
        "",
        f"{pub['published_gpu_hours'] / 1e3:,.0f}K",
        "",
        f"{pub['published_gpu_hours_per_trillion'] / 1e3:.0f}K",
        f"{pub['published_days_per_trillion']}",
        "",
        "",
        "",
        "",
    ]
)
print(
    table(
        rows,
        [
            "DeepSeek-V3, 2048 x H800",
            "GPU-hours",
            "published",
            "error",
            "per 1T tok",
            "days per 1T",
            "MFU",
            "micro",
            "GB/GPU",
            "fits",
        ],
        "lrrrrrrrrl",
    )
)
flops_per_token = flops(V3, 1, 4096).total_causal / 4096
tokens_per_gpu_s = 1e12 / (pub["published_gpu_hours_per_trillion"] * 3600)
published_mfu = flops_per_token * tokens_per_gpu_s / peak_flops("H800", "bf16")
print(
    f"\nmodel FLOPs per token (causal attention, MTP included): {flops_per_token / 1e9:.0f} GFLOP"
)
print(
    f"the published 180K GPU-hours per trillion tokens is {tokens_per_gpu_s:,.0f} tokens/s per GPU, "
    f"an MFU of {published_mfu:.1%} of the bf16 peak"
)
answer(
    1,
    f"the stated layout predicts {stated['error']:+.1%} against the published GPU-hours "
    f"({full['error']:+.1%} with full recomputation)",
)
answer(
    2,
    f"published figures imply {published_mfu:.1%} MFU; dsim predicts {stated['plan'].mfu:.1%} "
    f"(stated layout) and {full['plan'].mfu:.1%} (full recomputation)",
)

# %% [markdown]
# Where the step goes, and what each GPU holds. The stated layout spends almost all its time computing:
# DualPipe hides the all-to-all behind the paired chunk's compute, and its bubble is small because
# there are many micro-batches per pipeline. Memory tells a different story: with dsim's activation model
# (every tensor `dsim.model` keeps, in bf16) the stated recomputation does not fit in 80 GB, while full
# recomputation does. DeepSeek keeps less: it caches the inputs of its fp8 GEMMs in fp8, recomputes SwiGLU
# and keeps no fp32 copies for the gate; `dsim.model` is a plain PyTorch model that does none of these.

# %% tags=["anchor:reproduce-table", "remove-input"]
for name, rep in (("stated", stated), ("full recomputation", full)):
    p = rep["plan"]
    parts = ", ".join(f"{k} {v / GB:.1f} GB" for k, v in p.memory.items())
    print(
        f"{name:18s} step {p.step_time_s:.2f} s = compute {p.compute_s:.2f} + exposed communication "
        f"{p.exposed_comm_s:.2f} + bubble {p.bubble_s:.2f}; {p.n_microbatches} micro-batches"
    )
    print(
        f"{'':18s} memory per GPU: {parts} -> {p.memory_per_gpu_bytes / GB:.0f} GB"
        + ("" if p.fits else f" ({p.reason})")
    )
print("\nassumptions:")
for k, v in ASSUMPTIONS.items():
    print(f"  {k:10s} {v}")

# %% [markdown]
# ## 2. What the planner would choose
#
# The same cluster, model and batch, with every layout open: about ten thousand candidates, evaluated as
# numpy arrays (`bench/plan_speed.py` measures the speed).

# %% tags=["anchor:planner", "remove-input"]
job = TrainingJob(
    V3,
    "H800",
    n_gpus=2048,
    tokens=14.8e12,
    seq_len=4096,
    global_batch=15360,
    optimizer_dtype="bf16",
)
res = plan_training(job, top=3000)
print(f"{res.layouts_evaluated:,} layouts evaluated, {res.n_fit:,} fit in 80 GB; rejected:")
for reason, n in res.rejected.items():
    print(f"  {n:6,}  {reason}")
print(table(plan_rows(res.plans[:5]), PLAN_HEADER, "rlrrrrrrrr"))
rank = next(
    i
    for i, p in enumerate(res.plans, 1)
    if (p.pp, p.ep, p.schedule, p.dtype) == (16, 64, "dualpipe", "fp8")
)
best, ds = res.plans[0], res.plans[rank - 1]
answer(
    3,
    f"the planner picks {layout(best)}; DeepSeek's PP16 / EP64 / DualPipe / fp8 first appears at "
    f"rank {rank} ({layout(ds)}), {ds.step_time_s / best.step_time_s - 1:+.1%} step time",
)


# %% [markdown]
# ## 3. Clusters and GPUs
#
# The fastest layout that fits for DeepSeek-V3 on 256 and 2048 H100s (batch 15360 sequences of 4096),
# then the time to train 14.8T tokens as the cluster grows, on A100 (80 GB, no fp8), H100 and H200. The
# price is the same $2 per GPU-hour for every GPU, so cost follows GPU-hours.


# %%
def v3_job(gpu, n):
    return TrainingJob(
        V3, gpu, n_gpus=n, tokens=14.8e12, seq_len=4096, global_batch=15360, optimizer_dtype="bf16"
    )


for n in (256, 2048):
    r = plan_training(v3_job("H100", n), top=3)
    print(f"{n} x H100: {r.layouts_evaluated:,} layouts, {r.n_fit:,} fit")
    print(table(plan_rows(r.plans), PLAN_HEADER, "rlrrrrrrrr"))
    print()

# %% tags=["anchor:clusters", "remove-input"]
counts = [256, 512, 1024, 2048, 4096]
sweep = {}
for gpu in ("A100", "H100", "H200"):
    for n in counts:
        try:
            sweep[gpu, n] = plan_training(v3_job(gpu, n), top=1).plans[0]
        except ValueError:  # nothing fits
            sweep[gpu, n] = None
fig, axes = plt.subplots(1, 3, figsize=(7.3, 3.6))
for gpu, color in (("A100", "tab:gray"), ("H100", "tab:blue"), ("H200", "tab:orange")):
    ns = [n for n in counts if sweep[gpu, n]]
    ps = [sweep[gpu, n] for n in ns]
    axes[0].plot(ns, [p.days for p in ps], "o-", color=color, label=gpu)
    axes[1].plot(ns, [p.mfu * 100 for p in ps], "o-", color=color, label=gpu)
    axes[2].plot(ns, [p.cost / 1e6 for p in ps], "o-", color=color, label=gpu)
for ax, title in zip(
    axes, ("days for 14.8T tokens", "MFU (% of bf16 peak)", r"cost at \$2/GPU-hour (\$M)")
):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs")
    ax.set_title(title)
    ax.legend()
axes[0].set_yscale("log")
fig.suptitle("DeepSeek-V3: the fastest layout that fits, per cluster")
viz.show(
    fig,
    "DeepSeek-V3 pre-training on clusters of each GPU: days, MFU and cost of the fastest layout that fits, against the number of GPUs.",
)
rows = [
    [gpu] + [f"{sweep[gpu, n].days:.0f} d" if sweep[gpu, n] else "-" for n in counts]
    for gpu in ("A100", "H100", "H200")
]
print(table(rows, ["days"] + [f"{n} GPUs" for n in counts]))
p = {g: sweep[g, 2048] for g in ("A100", "H100", "H200")}
answer(
    4,
    "on 2048 GPUs, "
    + "; ".join(f"{g} {q.days:.0f} days, ${q.cost / 1e6:.2f}M ({layout(q)})" for g, q in p.items()),
)

# %% [markdown]
# ### Memory by kind
#
# What the chosen layouts keep on each GPU. Expert parallelism divides the experts' weights, gradients and
# optimizer states by ep, ZeRO-1 divides the optimizer states by the data-parallel replicas, pipeline
# parallelism divides the layers; activations are the part the schedule and recomputation decide.

# %% tags=["anchor:memory", "remove-input"]
cases = {
    "256 x H100": plan_training(v3_job("H100", 256), top=1).plans[0],
    "2048 x H100": sweep["H100", 2048],
    "2048 x H200": sweep["H200", 2048],
    "DeepSeek (stated)": stated["plan"],
    "DeepSeek (full rc)": full["plan"],
}
kinds = ["weights", "gradients", "optimizer", "activations", "buffers"]
fig, ax = plt.subplots(figsize=(7.3, 3.6))
bottom = np.zeros(len(cases))
for kind in kinds:
    vals = np.array([p.memory[kind] / GB for p in cases.values()])
    ax.bar(list(cases), vals, bottom=bottom, label=kind)
    bottom += vals
ax.axhline(80, color="k", ls="--", lw=1, label="80 GB (H100, H800)")
ax.axhline(141, color="tab:gray", ls=":", lw=1, label="141 GB (H200)")
ax.set_ylabel("GB per GPU")
ax.legend(fontsize=8, ncol=2)
ax.set_title("memory on the busiest GPU")
plt.setp(ax.get_xticklabels(), rotation=15)
viz.show(
    fig,
    "Memory on the busiest GPU by kind for DeepSeek-V3's layouts, against the 80 GB and 141 GB limits.",
)
for name, p in cases.items():
    print(f"{name:18s} {layout(p)}")

# %% [markdown]
# ### Where communication becomes exposed
#
# Fix DeepSeek's cluster and pipeline (2048 H800, PP16, ZeRO-1, fp8, full recomputation, one sequence
# per micro-batch) and vary the expert parallelism. Up to 8 ranks the all-to-all stays on NVLink; beyond,
# it crosses InfiniBand, about a third of the bandwidth. Under 1F1B every byte is on the critical path;
# DualPipe overlaps it with the paired chunk's compute.

# %% tags=["anchor:exposed", "remove-input"]
eps = [1, 2, 4, 8, 16, 32, 64, 128]
bars = {}
for sched in ("1f1b", "dualpipe"):
    for ep in eps:
        r = plan_training(
            v3_job("H800", 2048),
            top=1,
            require_fit=False,
            tp=1,
            pp=16,
            ep=ep,
            zero=1,
            micro_batch=1,
            recompute="full",
            dtype="fp8",
            schedule=sched,
        )
        bars[sched, ep] = r.plans[0]
fig, axes = plt.subplots(1, 2, figsize=(7.3, 3.8), sharey=True)
x = np.arange(len(eps))
for ax, sched in zip(axes, ("1f1b", "dualpipe")):
    ps = [bars[sched, e] for e in eps]
    parts = {
        "compute": [p.compute_s for p in ps],
        "expert all-to-all": [p.exposed["expert"] for p in ps],
        "data-parallel collectives": [p.exposed["data"] for p in ps],
        "pipeline sends": [p.exposed["pipeline"] for p in ps],
        "pipeline bubble": [p.bubble_s for p in ps],
    }
    bottom = np.zeros(len(eps))
    for label, vals in parts.items():
        ax.bar(x, vals, bottom=bottom, label=label)
        bottom += np.array(vals)
    ax.set_xticks(x, [str(v) for v in eps])
    ax.set_xlabel("expert parallelism (ep)")
    ax.set_title(f"{sched}: step time on 2048 x H800, PP16")
    ax.legend(fontsize=8)
axes[0].set_ylabel("seconds per step")
viz.show(
    fig,
    "Step time on 2048 x H800 with PP16, split into compute and exposed communication, against the expert-parallel size, for 1F1B (left) and DualPipe (right).",
)
rows = [
    [ep]
    + [f"{bars[s, ep].exposed[k]:.2f}" for s in ("1f1b", "dualpipe") for k in ("expert", "data")]
    + [f"{bars[s, ep].step_time_s:.1f}" for s in ("1f1b", "dualpipe")]
    + ["yes" if bars["dualpipe", ep].fits else "no"]
    for ep in eps
]
print(
    table(
        rows,
        [
            "ep",
            "a2a 1F1B",
            "data 1F1B",
            "a2a DualPipe",
            "data DualPipe",
            "step 1F1B",
            "step DualPipe",
            "fits (DualPipe)",
        ],
    )
)
first = next(
    ep for ep in eps if bars["1f1b", ep].exposed["expert"] > 0.05 * bars["1f1b", ep].step_time_s
)
answer(
    5,
    f"under 1F1B the exposed expert all-to-all passes 5% of the step at ep={first}; at ep=64 "
    f"DualPipe leaves {bars['dualpipe', 64].exposed['expert']:.2f} s of the {bars['1f1b', 64].exposed['expert']:.2f} s "
    f"that 1F1B exposes",
)


# %% [markdown]
# At small ep every GPU holds many experts: their gradients are reduced over the many data-parallel
# replicas that share them, which is what is exposed there. As ep grows, that traffic shrinks and the
# all-to-all grows: under 1F1B it ends up on the critical path, DualPipe hides nearly all of it.

# %% [markdown]
# ## 4. An interactive planner
#
# Pick a model, a GPU and a cluster size; the three fastest layouts that fit, for 1T tokens with batches
# of 4M tokens (1024 sequences of 4096). In the book the widget shows its first setting.


# %%
def planner(model="deepseek-v3", gpu="H100", gpus=1024):
    job = TrainingJob(preset(model), gpu, n_gpus=gpus, tokens=1e12, seq_len=4096, global_batch=1024)
    try:
        r = plan_training(job, top=3)
    except ValueError as e:
        print(e)
        return
    print(f"{model} on {gpus} x {job.gpu.name}: {r.layouts_evaluated:,} layouts, {r.n_fit:,} fit")
    print(table(plan_rows(r.plans), PLAN_HEADER, "rlrrrrrrrr"))


planner("deepseek-v2", "H100", 256)

# %% tags=["nbval-ignore-output"]
display(
    widgets.interactive(
        planner,
        model=widgets.Dropdown(
            options=["deepseek-v3", "deepseek-v2", "mixtral-8x7b", "deepseek-v2-lite"],
            value="deepseek-v3",
        ),
        gpu=widgets.Dropdown(options=["H100", "H200", "H800", "A100"], value="H100"),
        gpus=widgets.Dropdown(options=[64, 128, 256, 512, 1024, 2048, 4096], value=1024),
    )
)

# %% [markdown]
# ## 4b. Public training runs
#
# Every published run with enough detail (model, hardware, tokens, and GPU-hours, MFU or per-GPU
# throughput) is in `dsim/data/public_runs.json` with its source; the planner fixes what the source
# publishes and searches the rest. Whole-run GPU-hours are divided by one goodput factor (failures,
# restarts, evaluation), stated once and fitted to no row.

# %% tags=["anchor:public-runs", "remove-input"]
from dsim.cost.plan import GOODPUT, public_runs_table

runs = public_runs_table()
header = ["run", "GPU", "layout (dsim's plan)", "metric", "published", "dsim", "error", "role"]
rows = [
    [
        r["name"],
        r["gpu"],
        r["layout"],
        r["metric"],
        f"{r['published']:,.4g}",
        f"{r['predicted']:,.4g}",
        f"{r['error']:+.1%}",
        r["role"],
    ]
    for r in runs
]
display(viz.table(rows, header))
print(f"goodput {GOODPUT:.0%} on whole-run GPU-hours (Llama 3 paper, sec. 3.3.4)")
for r in (r for r in runs if r["reason"]):
    print(f"{r['name']} ({r['error']:+.0%}): {r['reason']}")
within = sum(r["within"] for r in runs)
answer(8, f"{within} of {len(runs)} public runs within 15 %; the others carry a stated reason")

# %% tags=["anchor:public-runs-fig", "remove-input"]
ratio = np.array([1 + r["error"] for r in runs])
x = np.arange(len(runs))
fig, ax = viz.figure(height=3.6)
ax.axhspan(0.85, 1.15, color="tab:green", alpha=0.15, label="within 15 %")
for role, marker in (("fit", "s"), ("validate", "o")):
    k = [i for i, r in enumerate(runs) if r["role"] == role]
    ax.plot(x[k], ratio[k], marker, label=f"{role} runs")
ax.set_yscale("log")
ax.set_ylabel("dsim / published")
ax.legend(fontsize=8)
ax.set_xticks(x, [r["name"] for r in runs], rotation=30, ha="right", fontsize=8)
viz.show(
    fig,
    "dsim's prediction over the published figure for each public training run; runs "
    "that fit a GPU's efficiency are squares, the runs that check it circles.",
)

# %% [markdown]
# ## 5. Serving
#
# DeepSeek's inference overview (open-source week, day 6) reports, for a 24-hour window, an average of
# about 73.7k input tokens per second per H800 node in prefill (cache hits included) and 14.8k output
# tokens per second per node in decode. Prefill runs EP32 over 4 nodes, decode EP144 over 18 nodes, both
# with 32 redundant experts and data-parallel attention; matmuls and dispatch in fp8, attention core and
# combine in bf16. The workload comes from the same post: 608B input tokens of which 342B hit the cache,
# 168B output tokens, and on average 4,989 cached tokens per output token. With prompts of P tokens and
# outputs of D tokens, an output token sees P + D/2 cached tokens on average and P/D = 608/168, which
# gives P and D.

# %% tags=["anchor:serving", "remove-input"]
w = deepseek_v3_workload()
print(
    f"workload: prompt {w['prompt']:.0f} tokens, output {w['output']:.0f} tokens, cache hit {w['cache_hit']:.2%}"
)
rep = reproduce_deepseek_v3_serving()
slo = reproduce_deepseek_v3_serving(latency_target=1 / 20)
pubs = DEEPSEEK_V3_SERVING
rows = []
for name, p, err, ref in (
    ("prefill, EP32", rep["prefill"], rep["prefill_error"], pubs["prefill"]),
    ("decode, EP144, KV-cache bound", rep["decode"], rep["decode_error"], pubs["decode"]),
    ("decode, EP144, 20 tokens/s per user", slo["decode"], slo["decode_error"], pubs["decode"]),
):
    rows.append(
        [
            name,
            p.batch,
            f"{p.step_time_s * 1e3:.0f} ms",
            f"{p.tokens_per_s_per_node:,.0f}",
            f"{ref['published_tokens_per_s_per_node']:,.0f}",
            f"{err:+.0%}",
            f"{p.exposed_comm_s * 1e3:.1f} ms",
            f"{p.memory_per_gpu_bytes / GB:.0f}",
        ]
    )
print(
    table(
        rows,
        [
            "DeepSeek-V3 on H800",
            "batch",
            "step",
            "tokens/s/node",
            "published",
            "error",
            "exposed a2a",
            "GB/GPU",
        ],
    )
)
d = rep["decode"]
answer(
    6,
    f"{d.max_batch} sequences of {pubs['kv_length_per_output_token']:,} cached tokens fit per GPU "
    f"next to {d.memory['weights'] / GB:.0f} GB of weights; {d.tokens_per_s_per_node:,.0f} output tokens/s per node "
    f"({rep['decode_error']:+.0%} from the published 14.8k), {1 / d.latency_s:.1f} tokens/s per user",
)

# %% [markdown]
# Where a decode step goes: the ops of one MoE block at the KV-cache-bound batch, timed by the same model.
# The attention core of `dsim.model`'s absorbed MLA runs three kernels (scores, a float32 softmax that
# writes the whole score matrix, and the weighted sum), where DeepSeek's FlashMLA fuses them into one
# pass over the cache; the time model prices the kernels dsim runs. The last line is not a prediction
# but a bound that locates the gap: the step if the attention core cost only one pass over the cache at
# the calibrated HBM bandwidth.

# %% tags=["anchor:serving-memory", "remove-input"]
from dsim.cost.plan import FP8_COMPONENTS
from dsim.cost.timing import block_plan, op_time

args = V3.replace(attn_impl="absorb")
by = {}
for op in block_plan(args, 3, d.batch, 1, d.context, "decode"):
    if op.op == "moe_ffn":
        continue
    dt = "fp8" if op.op == "gemm" and op.component in FP8_COMPONENTS else "bf16"
    by[op.component] = by.get(op.component, 0.0) + op_time(op.op, "H800", dt, False, **op.shape)
total = sum(by.values())
for comp, t in sorted(by.items(), key=lambda kv: -kv[1]):
    print(
        f"{comp:16s} {t * 1e3:6.3f} ms  {t / total:5.1%}   (one block, routed experts not included)"
    )
# the same step with the attention core as one fused pass over the cache (dsim.serving.StepCost's
# FlashMLA option: max(FLOPs, cache bytes) at the calibrated rates, one launch)
from dsim.serving import StepCost, StepShape

fused = StepCost(V3, "H800", 144, 144, redundant_experts=32, decode_attention="flashmla")
floor_step = fused(StepShape(decode_seqs=d.batch, decode_context=d.context))
print(
    f"whole step {d.step_time_s * 1e3:.0f} ms; with the attention core as one pass over the cache "
    f"(FlashMLA): {floor_step * 1e3:.0f} ms, {d.batch / floor_step * 8:,.0f} output tokens/s per node"
)

# %% [markdown]
# ### Throughput against batch, and the KV-cache limit
#
# Decode on DeepSeek's EP144 deployment: a larger batch reuses each weight read for more tokens, so
# throughput per GPU grows, and each user waits longer per token. The KV cache stops the batch: each
# sequence keeps its 4,989 cached tokens of latent (576 numbers per layer).

# %% tags=["anchor:decode", "remove-input"]
batches = [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256]
deploy = dict(phase="decode", n_gpus=144, redundant_experts=32, context=4989)
limit = {gpu: plan_serving(V3, gpu, **deploy).max_batch for gpu in ("H800", "H200")}
curves = {
    gpu: serving_curve(V3, sorted(set(batches + [limit[gpu]])), gpu=gpu, **deploy) for gpu in limit
}
curve = curves["H800"]
fig, ax = plt.subplots(figsize=(7.3, 3.8))
for gpu, color in (("H800", "tab:blue"), ("H200", "tab:orange")):
    c = curves[gpu]
    ax.plot(
        [p.batch for p in c],
        [p.tokens_per_s_per_node / 1e3 for p in c],
        "o-",
        color=color,
        label=f"{gpu}: tokens/s per node",
    )
    ax.axvline(limit[gpu], color=color, ls=":", lw=1.5)
    ax.annotate(
        f"KV limit {gpu}: {limit[gpu]}",
        (limit[gpu], 1),
        rotation=90,
        fontsize=8,
        ha="right",
        va="bottom",
    )
ax.axhline(14.8, color="k", ls="--", lw=1, label="published (H800), 14.8k")
ax.set_xlabel("sequences per GPU")
ax.set_ylabel("thousand output tokens/s per node")
ax2 = ax.twinx()
ax2.plot(
    [p.batch for p in curve],
    [1 / p.latency_s for p in curve],
    "s--",
    color="tab:green",
    ms=3,
    label="H800: tokens/s per user",
)
ax2.set_ylabel("tokens/s per user")
h1, l1 = ax.get_legend_handles_labels()
h2, l2 = ax2.get_legend_handles_labels()
ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center left", bbox_to_anchor=(1.12, 0.5))
ax.set_title("DeepSeek-V3 decode, EP144, 4,989 cached tokens per sequence")
viz.show(
    fig,
    "DeepSeek-V3 decode at EP144 with 4,989 cached tokens per sequence: output tokens per second per node and per user against the batch per GPU, with the KV-cache limit of each GPU and the published 14.8k.",
)
print(
    table(
        [
            [
                gpu,
                limit[gpu],
                f"{curves[gpu][-1].tokens_per_s_per_node:,.0f}",
                f"{1 / curves[gpu][-1].latency_s:.1f}",
            ]
            for gpu in limit
        ],
        ["GPU", "KV-bound batch", "tokens/s per node", "tokens/s per user"],
    )
)

# %% [markdown]
# ### Data-parallel or tensor-parallel attention
#
# MLA caches one latent per token, the same for every head: tensor parallelism splits the heads but every
# rank must still hold the whole cache. Serving DeepSeek-V3 on one 8 x H200 node, with all 256 experts
# spread over its 8 GPUs:

# %% tags=["anchor:dp-attention", "remove-input"]
rows = []
for tp in (1, 2, 4, 8):
    p = plan_serving(V3, "H200", "decode", 8, tp=tp, context=4096)
    rows.append(
        [
            f"tp {tp} x dp {p.dp}",
            p.max_batch,
            f"{p.memory['weights'] / GB:.0f}",
            f"{p.step_time_s * 1e3:.0f} ms",
            f"{p.tokens_per_s_per_gpu:,.0f}",
            f"${p.cost_per_million_tokens:.2f}",
        ]
    )
print(
    table(
        rows,
        [
            "attention",
            "batch (KV bound)",
            "weights GB/GPU",
            "step",
            "tokens/s per GPU",
            "$ per M tokens",
        ],
    )
)
dp1, tp8 = (
    plan_serving(V3, "H200", "decode", 8, tp=1, context=4096),
    plan_serving(V3, "H200", "decode", 8, tp=8, context=4096),
)
answer(
    7,
    f"data-parallel attention serves {dp1.tokens_per_s_per_gpu / tp8.tokens_per_s_per_gpu:.1f}x the "
    f"tokens per GPU of tp 8 ({dp1.tokens_per_s_per_gpu:,.0f} against {tp8.tokens_per_s_per_gpu:,.0f})",
)


# %% [markdown]
# ## The answers, collected

# %% tags=["anchor:answers", "remove-input"]
answer
