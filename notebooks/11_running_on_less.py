# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Running on less: offloading, LoRA and QLoRA, distillation, ONNX
#
# A DeepSeek-style MoE is large in bytes but small in work per token: DeepSeek-V3 holds 671B parameters and
# a token uses 37B of them. Four techniques trade one for the other to get such a model onto less hardware,
# and this notebook runs each of them on `dsim.model`, checks it against the model it replaces, and costs it:
#
# 1. **expert offloading** (`dsim.offload`, `dsim.cost.offload`): routed experts in CPU memory, a device
#    cache of a few per layer;
# 2. **LoRA and QLoRA** (`dsim.lora`, `dsim.cost.finetune`): fine-tuning low-rank adapters on a frozen base,
#    in bf16 or in INT4;
# 3. **distillation** (`dsim.distill`): a smaller student trained from the teacher's logits;
# 4. **ONNX export** (`dsim.export`): the model as a graph that onnxruntime runs.
#
# Measured numbers come from committed JSON files written by the scripts in `bench/` (CPU runs of the tiny
# model, single-threaded); the cost models are evaluated here. The live checks use an untrained tiny model:
# they test equalities, which do not need a trained one.

# %% tags=["anchor:setup"]
# %matplotlib inline
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import dsim
from dsim.config import preset
from dsim.cost import params
from dsim.cost.finetune import adapter_params, gpus_to_finetune
from dsim.cost.offload import (
    LINKS,
    decode_seconds,
    expert_bytes,
    lru_hit_rate,
    offload_claim_1p5t,
    offload_memory,
    zipf_load,
)
from dsim.export import export_onnx, onnx_logits
from dsim.lora import add_lora
from dsim.model import Transformer
from dsim.offload import offload_experts
from dsim.quant import clone_model

try:  # the book's figure helper: numbered, captioned, described figures
    from dsim import viz

    viz.setup()
    show = viz.show
except ImportError:  # a checkout without dsim.viz: plain matplotlib

    def show(fig, caption):
        display(fig)
        plt.close(fig)
        print(f"Figure: {caption}")


torch.manual_seed(0)
DATA = Path(dsim.__file__).resolve().parent / "data"
finetune_run = json.loads((DATA / "finetune_lora_cpu.json").read_text())
distill_run = json.loads((DATA / "distill_cpu.json").read_text())
routing_run = json.loads((DATA / "offload_routing_cpu.json").read_text())
V3, LITE = preset("deepseek-v3"), preset("deepseek-v2-lite")
GB = 1e9

# %% [markdown]
# ## 1. Expert offloading
#
# `offload_experts(model, cache_size)` replaces each MoE layer's stacked experts by `OffloadedExperts`: the
# weights of all $E$ experts in host memory (pinned where CUDA exists) and `cache_size` slots on the device,
# managed least-recently-used. When the gate picks an expert that is not cached, it is copied into the slot
# of the least recently used one. The per-expert arithmetic is that of `Experts.forward_loop`, so the logits
# must equal the resident model's bit for bit, at every cache size, with and without prefetching the next
# layer's likely experts from its gate:

# %% tags=["anchor:offload_equal"]
args = preset("tiny").replace(n_layers=3, expert_impl="loop")  # a dense layer, then two MoE layers
resident = Transformer(args).eval()
tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    reference = resident(tokens)
for prefetch in (False, True):
    same = []
    for c in range(1, args.n_routed_experts + 1):
        model = clone_model(resident)
        layers = offload_experts(model, c, prefetch=prefetch)
        with torch.no_grad():
            same.append(torch.equal(model(tokens), reference))
    print(f"prefetch={prefetch!s:5}  equal logits for cache sizes 1..8: {same}")

# %% [markdown]
# What it buys is memory. With `cache_size` experts per layer on the device, the device holds everything but
# the routed experts plus the cache; the host holds every expert (`offload_memory`, bf16):

# %% tags=["anchor:offload_memory"]
print(f"{'model':18s}{'cache':>6s}{'device GB':>11s}{'host GB':>9s}{'all resident GB':>17s}")
for name, a in (("DeepSeek-V2-Lite", LITE), ("DeepSeek-V3", V3)):
    for c in (1, a.n_activated_experts, a.n_routed_experts // 4, a.n_routed_experts):
        m = offload_memory(a, c)
        print(
            f"{name:18s}{c:6d}{m['device'] / GB:11.1f}{m['host'] / GB:9.1f}"
            f"{m['resident_all'] / GB:17.1f}"
        )

# %% [markdown]
# ### The hit rate comes from the routing
#
# The price is the misses: every expert the gate picks that is not cached crosses the host link. How often
# that happens depends on how the router spreads the tokens. `bench/offload_routing.py` trained the tiny
# model twice, once as `dsim.train` does by default (no balancing: its router collapses onto a few experts)
# and once with DeepSeek-V3's bias update, and replayed each model's routing of held-out text, token by
# token as decoding meets it, through the cache's LRU policy. Beside it: Che's approximation, which needs
# only each expert's share of the routing, and uniform routing, where the hit rate is $C/E$.

# %% tags=["nbval-ignore-output", "anchor:hit_rates", "remove-input"]
fig, ax = plt.subplots(figsize=(6.4, 3.4))
for (name, run), color in zip(routing_run["models"].items(), ("C3", "C0")):
    rows = run["layers"][0]["rows"]
    c = [r["cache_size"] for r in rows]
    ax.plot(c, [r["replayed"] for r in rows], "o-", color=color, label=f"{name}: replayed trace")
    ax.plot(c, [r["che"] for r in rows], "--", color=color, label=f"{name}: Che from the shares")
ax.plot(c, [r["uniform"] for r in rows], ":", color="k", label="uniform routing, C/E")
ax.set(xlabel="experts cached per layer (of 8)", ylabel="hit rate", ylim=(0, 1.02))
ax.legend(fontsize=8)
show(
    fig,
    "LRU hit rate of the tiny model's expert cache against its size: the routing of held-out text "
    "replayed token by token, Che's approximation from the routing shares, and uniform routing.",
)

# %% tags=["anchor:hit_table"]
for name, run in routing_run["models"].items():
    load = run["layers"][0]["load"]
    rows = {r["cache_size"]: r for r in run["layers"][0]["rows"]}
    print(
        f"{name:11s} routing shares {np.round(load, 2).tolist()}\n"
        f"{'':11s} hit rate with 2 / 4 experts cached: replayed {rows[2]['replayed']:.2f} / "
        f"{rows[4]['replayed']:.2f}, Che {rows[2]['che']:.2f} / {rows[4]['che']:.2f}"
    )

# %% [markdown]
# Two lessons. A *balanced* router, which is what DeepSeek's load balancing works for, is the worst case for a
# cache: the hit rate of the balanced model stays within about 0.2 of uniform routing's $C/E$. And Che's
# approximation, which sees only the shares, is the cautious estimate: neighbouring tokens choose alike, so the
# replayed trace hits more often once the cache holds a token's $K$ experts.
#
# ### Decode time over the host link
#
# A batch-1 decode step needs $K$ experts in every MoE layer; each miss copies one expert
# (3 x dim x moe_inter_dim weights) over PCIe 4 (31.5 GB/s per direction), PCIe 5 (63 GB/s) or a Grace
# Hopper's NVLink-C2C (450 GB/s). `decode_seconds` adds that transfer to the time a memory-bound step spends
# reading its weights from HBM (dsim.offload copies, then computes). DeepSeek-V3 on an H200, uniform routing:

# %% tags=["nbval-ignore-output", "anchor:decode_time", "remove-input"]
fig, ax = plt.subplots(figsize=(6.4, 3.4))
caches = [1, 8, 16, 32, 64, 128, 192, 256]
for link in LINKS:
    rate = [
        decode_seconds(V3, "h200", link, lru_hit_rate(zipf_load(256, 0.0), c, 8))["tokens_per_s"]
        for c in caches
    ]
    ax.plot(caches, rate, "o-", label=link)
ax.axhline(
    decode_seconds(V3, "h200", "pcie5", 1.0)["tokens_per_s"],
    color="k",
    ls=":",
    label="all resident",
)
ax.set(xlabel="experts cached per layer (of 256)", ylabel="decode tokens/s (batch 1)", yscale="log")
ax.legend(fontsize=8)
show(
    fig,
    "DeepSeek-V3 decoding at batch 1 on one H200 with offloaded experts (bf16, uniform routing): tokens "
    "per second against the experts cached per layer, for three host links.",
)

# %% tags=["anchor:decode_table"]
eb = expert_bytes(V3)
for c in (8, 16, 128, 224):
    h = lru_hit_rate(zipf_load(256, 0.0), c, 8)
    step = {link: decode_seconds(V3, "h200", link, h) for link in LINKS}
    misses = step["pcie5"]["misses_per_step"]
    print(
        f"cache {c:3d}: device {offload_memory(V3, c)['device'] / GB:5.0f} GB, hit rate {h:.2f}, "
        f"{misses:3.0f} experts ({misses * eb / GB:4.1f} GB) copied per token; tokens/s "
        + ", ".join(f"{k} {v['tokens_per_s']:.2f}" for k, v in step.items())
    )

# %% [markdown]
# Offloading fits the model, not the speed: with the 16 experts per layer that fit on one H200, each V3 token
# copies over 400 experts (7.5 in each of its 58 MoE layers), tens of GB, across PCIe. Only a link as fast as NVLink-C2C, or a router as skewed as the
# unbalanced tiny model's, makes it interactive.
#
# ### A claim recomputed: "a 1.5T model in 320 GB"
#
# One of the source articles says offloading inactive experts lets a 1.5T MoE (16 experts of 96B, top-4) run
# in 320 GB of GPU memory, on 8 A100s. `offload_claim_1p5t` builds that model (125 layers of 3 x 16384 x 15625
# per expert) and asks, per cache size, whether the device part fits in 320 GB (FP16) and how long a token
# spends copying missed experts over the article's 25 GB/s:

# %% tags=["anchor:claim"]
claim = offload_claim_1p5t()
print(
    f"total {claim['total_params'] / 1e12:.2f}T parameters, {claim['params_per_expert'] / 1e9:.0f}B per expert"
)
for r in claim["rows"]:
    print(
        f"cache {r['cache_size']:2d}: device {r['device_bytes'] / GB:6.0f} GB "
        f"({'fits' if r['fits'] else 'does not fit'} in 320 GB), hit rate {r['hit_rate']:.2f}, "
        f"{r['transfer_seconds_per_token']:5.1f} s per token copying experts"
    )

# %% [markdown]
# Only a cache of one expert per layer fits, and then nearly every expert a token needs is copied: about half a
# minute per token. "Runs in 320 GB" is true of the bytes and not of any useful speed.
#
# ## 2. LoRA and QLoRA
#
# LoRA freezes a weight $W$ and trains a low-rank change beside it, $y = xW^\top + \frac{\alpha}{r} (xA^\top)B^\top$
# with $A$ random and $B = 0$, so training starts exactly at the base model. `add_lora` wraps MLA's projections
# and the routed experts (one $A_e, B_e$ per expert, stored stacked and run through the same grouped GEMM);
# `add_qlora` first quantizes the base to INT4 in groups of 32 (dsim's own quantizer) and dequantizes each
# weight in the forward and again in the backward, so that autograd keeps only the 4-bit codes.

# %% tags=["anchor:lora_equal"]
base = Transformer(preset("tiny")).eval()
with torch.no_grad():
    before = base(tokens)
lora = clone_model(base)
wrapped = add_lora(lora, rank=8)
with torch.no_grad():
    print("LoRA with B = 0 gives the base logits exactly:", torch.equal(lora(tokens), before))
trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
print(
    f"adapted modules: {len(wrapped)}; trainable {trainable:,} of {sum(p.numel() for p in lora.parameters()):,}"
)
print(
    f"the cost model counts {sum(adapter_params(preset('tiny'), 8).values()):,} adapter parameters"
)
for name, a in (("DeepSeek-V2-Lite", LITE), ("DeepSeek-V3", V3)):
    n = sum(adapter_params(a, 16).values())
    print(
        f"{name}, rank 16: {n / 1e9:.2f}B adapter parameters = {n / params(a).total:.2%} of the model"
    )

# %% [markdown]
# On the tiny model a rank of 8 is a large fraction (its widths are 64 and 32); on DeepSeek-V3, rank 16 on
# attention and every expert is 1 % of the parameters, which matches the articles' figure.
#
# ### Fine-tuning the trained tiny model
#
# `bench/finetune_lora.py` trained the tiny model on the corpus's training split, then fine-tuned copies of it
# on text it never saw (4 of every 5 blocks of 2 KiB of the held-out files) for 60 steps, and measured bits
# per byte on the 5th blocks:

# %% tags=["anchor:finetune"]
print(
    f"base: {finetune_run['base_steps']} steps; fine-tunes: {finetune_run['steps']} steps of "
    f"{finetune_run['batch_size']} x {finetune_run['seq_len']} bytes, rank {finetune_run['rank']}, "
    f"INT4 groups of {finetune_run['group_size']}"
)
print(f"{'method':10s}{'trainable':>11s}{'bits/byte before':>18s}{'after':>8s}{'gain':>8s}")
for r in finetune_run["rows"]:
    print(
        f"{r['method']:10s}{r['trainable']:11,d}{r['bpb_before']:18.3f}{r['bpb_after']:8.3f}"
        f"{r['bpb_before'] - r['bpb_after']:8.3f}"
    )

# %% [markdown]
# LoRA recovers about half of what a full fine-tune gains, with a sixth of the trainable parameters (a large
# share at this size), and QLoRA follows LoRA from the INT4 base's slightly worse start. INT4 costs the base
# 0.01 bits per byte.
#
# ### What fine-tuning DeepSeek-V3 needs
#
# `finetune_memory` counts the bytes on the busiest GPU: the frozen base in its dtype, the adapters with their
# gradients and Adam states (fp32), the activations of a step (from `dsim.cost.memory`, plus the adapters'
# rank-$r$ intermediates), and QLoRA's transient dequantized weight. `gpus_to_finetune` searches the layouts
# (tensor, pipeline, expert parallel, and ZeRO for a full fine-tune) for the fewest GPUs that hold it, at one
# sequence of 4096 tokens with full recomputation:

# %% tags=["anchor:gpus"]
plans = {m: gpus_to_finetune(V3, "h200", m, rank=16) for m in ("full", "lora", "qlora")}
print(
    f"{'method':7s}{'H200s':>6s}  layout{'':23s}per GPU, GB: weights adapters grads optim acts deq"
)
for m, p in plans.items():
    g = p.memory.gib()
    lay = " ".join(f"{k}={v}" for k, v in p.layout.items())
    print(
        f"{m:7s}{p.n_gpus:6d}  {lay:29s}{g['weights']:8.1f}{g['adapters']:8.1f}{g['gradients']:7.1f}"
        f"{g['optimizer']:7.1f}{g['activations']:5.1f}{g['dequant']:5.1f}"
    )

# %% [markdown]
# A full fine-tune of V3 needs 16 bytes of state per parameter and 128 H200s; LoRA leaves the bf16 base frozen
# and needs 16; QLoRA's INT4 base needs 8, one node.
#
# ## 3. Distillation
#
# `bench/distill_tiny.py` trained two smaller students, with 4 experts instead of 8 and with one MoE layer
# instead of a dense and a MoE layer, each alone and from the trained tiny teacher's logits
# ($\alpha\,\tau^2\,\mathrm{KL} + (1-\alpha)$ cross-entropy, $\tau = 2$, $\alpha = 0.5$), for the same steps on
# the same batches as the teacher:

# %% tags=["anchor:distill"]
rows = distill_run["rows"]
teacher = rows[0]
print(f"teacher: {teacher['params']:,} parameters, {teacher['bpb']:.3f} bits/byte held out")
for r in rows[1:]:
    print(
        f"{r['model']:9s}{r['how']:>10s}: {r['params']:7,d} parameters, {r['bpb']:.3f} bits/byte "
        f"(teacher {r['bpb'] - teacher['bpb']:+.3f})"
    )

# %% [markdown]
# Here distillation does not help: the teacher had the same 150 steps as the students and is only 0.03 bits
# per byte better than they are alone, so its soft targets carry little the data does not, and at $\tau = 2$
# they pull the student towards a flatter distribution than the bytes'. Distillation pays when the teacher
# knows much more than the student can learn in its budget (DeepSeek-R1's distilled models learn from a far
# larger teacher's outputs); the measurement says so, not a general rule.
#
# ## 4. ONNX export
#
# `export_onnx` traces the model with `torch.onnx.export(dynamo=True)`. The gate runs inside the graph; the
# routed experts run through gathered weights (the grouped dispatch sizes a buffer by the busiest expert's token
# count, which a graph cannot hold); the sequence length is fixed at export (a shorter prompt is right-padded)
# and the batch size is free. Not exported: KV-cache decoding, token dropping by a capacity limit, the MTP
# heads and training.

# %% tags=["anchor:onnx"]
with tempfile.TemporaryDirectory() as tmp:
    path = export_onnx(base, Path(tmp) / "tiny.onnx", seq_len=64, batch_size=2)
    ort_logits = onnx_logits(path, tokens)
    size = path.stat().st_size
with torch.no_grad():
    torch_logits = base(tokens).numpy()
print(f"ONNX file: {size / 1e6:.1f} MB")  # its last bytes vary with the exporter's run
print(
    "onnxruntime logits equal PyTorch's within 1e-4:",
    bool(np.abs(ort_logits - torch_logits).max() < 1e-4),
)
print(
    "same next-byte choice everywhere:",
    bool((ort_logits.argmax(-1) == torch_logits.argmax(-1)).all()),
)

# %% [markdown]
# ## Takeaway
#
# Each technique trades something different. Offloading trades speed for memory and is governed by the host
# link and the routing's skew, so the balanced routers DeepSeek trains for are its worst case. LoRA and QLoRA
# trade a little quality for an order of magnitude fewer GPUs: only the adapters carry training state, and
# INT4 quarters the frozen base. Distillation trades training compute for a smaller model and pays only when
# the teacher knows much more than the student. ONNX trades flexibility for portability: the routing exports,
# the grouped dispatch and the KV cache do not.
#
# ## Problems

# %% [markdown] tags=["anchor:answers"]
# **Q1.** How many parameters does rank-16 LoRA train on DeepSeek-V3 (attention and routed experts), and how
# many bytes does their training state take (bf16 weights, fp32 gradients, fp32 master copies and two fp32
# Adam moments)?

# %% tags=["anchor:answers"]
n = sum(adapter_params(V3, 16).values())
print(f"{n / 1e9:.2f}B parameters x (2 + 4 + 4 + 8) bytes = {n * 18 / GB:.0f} GB of training state")

# %% [markdown] tags=["anchor:answers"]
# **Q2.** On H100s (80 GB) instead of H200s (141 GB), how many GPUs do a LoRA and a QLoRA fine-tune of V3 need?

# %% tags=["anchor:answers"]
for m in ("lora", "qlora"):
    p = gpus_to_finetune(V3, "h100", m, rank=16)
    print(
        f"{m}: {p.n_gpus} H100s ({p.memory.total / GB:.0f} of {p.capacity / GB:.0f} GB used per GPU)"
    )

# %% [markdown] tags=["anchor:answers"]
# **Q3.** DeepSeek-V2-Lite (64 experts, top-6) on an H100 over PCIe 5: how many experts per layer must be
# cached to decode at half the all-resident speed, with uniform routing and with a Zipf skew of 1?

# %% tags=["anchor:answers"]
full_speed = decode_seconds(LITE, "h100", "pcie5", 1.0)["tokens_per_s"]
for skew in (0.0, 1.0):
    load = zipf_load(64, skew)
    c = next(
        c
        for c in range(1, 65)
        if decode_seconds(LITE, "h100", "pcie5", lru_hit_rate(load, c, 6), load=load)[
            "tokens_per_s"
        ]
        >= full_speed / 2
    )
    print(f"skew {skew}: {c} of 64 experts per layer (hit rate {lru_hit_rate(load, c, 6):.3f})")

# %% [markdown] tags=["anchor:answers"]
# **Q4.** If the 1.5T model were stored in INT4 (groups of 128), how many experts per layer would fit in 320 GB,
# and how long would a token spend copying experts?

# %% tags=["anchor:answers"]
int4 = offload_claim_1p5t(dtype="int4")
fit = [r for r in int4["rows"] if r["fits"]]
best = fit[-1]
print(
    f"cache {best['cache_size']} fits ({best['device_bytes'] / GB:.0f} GB): hit rate {best['hit_rate']:.2f}, "
    f"{best['transfer_seconds_per_token']:.1f} s per token over 25 GB/s"
)
