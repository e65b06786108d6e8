# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import dsim
from dsim.claims.models import deepseek_llm_67b
from dsim.config import ModelArgs, preset, preset_names, scaled_down
from dsim.cost import bytes_per_param, kv_cache_bytes_per_token, memory, params
from dsim.cost.memory import (
    activation_items,
    kv_cache_elements_per_token,
    layer_activation_bytes,
    saved_activation_bytes,
)
from dsim.model import Block, precompute_freqs_cis

# %matplotlib inline
torch.manual_seed(0)
np.random.seed(0)
torch.set_num_threads(1)
from dsim import viz

viz.setup()
answer = viz.Answers(chapter=3)
GiB, MiB = 2**30, 2**20
v3 = preset("deepseek-v3")

# %% [markdown]
# # Memory and the KV cache
#
# Bytes per GPU from `dsim.cost.memory`; activations are held to the tensors autograd keeps in the real
# model (`tests/cost/test_memory.py`). Section numbers are referred to by chapter 3 of the book.
#
# ## 1. Bytes per parameter

# %% tags=["anchor:bytes"]
formats = {"fp32": None, "bf16": None, "fp8": 128 * 128, "int8": 128, "int4": 128}
main = params(v3).total_no_mtp
print(f"{'format':6s} {'group':>6s} {'bytes/param':>12s} {'DeepSeek-V3 weights (GiB)':>26s}")
for f, g in formats.items():
    b = bytes_per_param(f, g)
    print(f"{f:6s} {str(g or '-'):>6s} {b:12.4f} {main * b / GiB:26.1f}")
fp8 = main * bytes_per_param("fp8", 128 * 128)
answer(1, f"in fp8 the weights alone need at least {int(np.ceil(fp8 / (80 * 1e9)))} GPUs of 80 GB")

# %% [markdown]
# ## 2. Training memory per GPU as the layout changes
#
# DeepSeek-V3, micro-batch of one 4096-token sequence, bf16 weights, fp32 gradients and master weights.
# Each row changes one thing from the row above. The first uses DeepSeek-V3's published layout
# (16-way pipeline, 64-way expert parallelism over 2048 GPUs, ZeRO-1).

# %% tags=["anchor:layouts", "remove-input"]
layouts = {
    "PP16 EP64 DP128, ZeRO-1": dict(pp=16, dp=128, ep=64, zero=1),
    "+ Adam moments in bf16": dict(pp=16, dp=128, ep=64, zero=1, optimizer_dtype="bf16"),
    "+ selective recomputation": dict(
        pp=16, dp=128, ep=64, zero=1, optimizer_dtype="bf16", recompute="selective"
    ),
    "+ full recomputation": dict(
        pp=16, dp=128, ep=64, zero=1, optimizer_dtype="bf16", recompute="full"
    ),
    "TP8 PP8 DP32 EP32, ZeRO-1, full": dict(
        tp=8, pp=8, dp=32, ep=32, zero=1, optimizer_dtype="bf16", recompute="full"
    ),
}
zero_paper = ModelArgs(
    vocab_size=1,
    dim=64,
    inter_dim=64,
    n_layers=1,
    n_dense_layers=1,
    n_heads=4,
    n_routed_experts=0,
    n_shared_experts=0,
    n_activated_experts=0,
    attn_type="mha",
)
psi = 7.5e9  # the ZeRO paper's example: 7.5B parameters, 64 GPUs, 2 + 2 + 12 bytes per parameter
per_param = [memory(zero_paper, dp=64, zero=z, grad_dtype="bf16", seq_len=1) for z in range(4)]
n = params(zero_paper).total
print(
    "ZeRO paper example, GB per GPU for stages 0-3:",
    [round((m.weights + m.gradients + m.optimizer) / n * psi / 1e9, 1) for m in per_param],
)
estimates = {k: memory(v3, batch=1, seq_len=4096, **kw) for k, kw in layouts.items()}
kinds = ["weights", "gradients", "optimizer", "activations"]
print(f"{'layout (GiB per GPU)':34s}" + "".join(f"{k:>12s}" for k in kinds + ["total"]) + "  stage")
for name, m in estimates.items():
    g = m.gib()
    print(f"{name:34s}" + "".join(f"{g[k]:12.2f}" for k in kinds + ["total"]) + f"  {m.stage:5d}")
fits = [name for name, m in estimates.items() if m.total < 80e9]
answer(2, "fit in 80 GB: " + (", ".join(fits) if fits else "none"))

# %% tags=["anchor:layouts-fig", "remove-input"]
fig, ax = plt.subplots(figsize=(7.3, 4))
left = np.zeros(len(estimates))
for k in kinds:
    vals = np.array([getattr(m, k) / GiB for m in estimates.values()])
    ax.barh(list(estimates), vals, left=left, label=k)
    left += vals
ax.axvline(80e9 / GiB, color="k", ls="--", lw=1, label="80 GB")
ax.invert_yaxis()
ax.set_xlabel("GiB on the busiest GPU")
ax.set_title("DeepSeek-V3 training memory per GPU")
ax.legend(fontsize=8)
viz.show(
    fig,
    "DeepSeek-V3 training memory on the busiest GPU, by kind, for each parallel layout and recomputation setting.",
)

# %% [markdown]
# ## 3. Activations of one layer, item by item
#
# The first MoE layer of DeepSeek-V3, one sequence of 4096 tokens, bf16, GPU kernels. Each item names
# the tensor of `dsim.model` that autograd keeps.

# %% tags=["anchor:items", "remove-input"]
items = sorted(activation_items(v3, v3.n_dense_layers, 1, 4096), key=lambda i: -i.bytes)
total = sum(i.bytes for i in items)
for i in items[:12]:
    print(f"{i.bytes / MiB:9.1f} MiB  {i.bytes / total:6.1%}  {i.name}")
print(f"{'':4s}... {len(items) - 12} smaller items")
for r in ("none", "selective", "full"):
    print(
        f"recompute={r:9s} {layer_activation_bytes(v3, v3.n_dense_layers, 1, 4096, recompute=r) / MiB:9.1f} MiB per layer"
    )
per_dim = {
    name: layer_activation_bytes(preset(name), preset(name).n_layers - 1, 1, 4096)
    / 4096
    / preset(name).dim
    for name in preset_names()[1:]
}
answer(
    3,
    "bytes kept per token and layer, in units of dim (Korthikanti's dense GPT layer: 34, plus 5 a s / h): "
    + ", ".join(f"{name} {v:.1f}" for name, v in per_dim.items()),
)

# %% [markdown]
# The formula against the real model: a scaled-down DeepSeek-V3 block on this CPU, counting the storages
# autograd keeps with `torch.autograd.graph.saved_tensors_hooks` (CPU kernels, float32).

# %%
small = scaled_down(v3, expert_impl="loop")
layer = small.n_layers - 1
block = Block(layer, small)
freqs = precompute_freqs_cis(small)[:32]
x = torch.randn(2, 32, small.dim, requires_grad=True)
keep = lambda: [
    t
    for t in (
        block.ffn.routing.logits,
        block.ffn.routing.scores,
        block.ffn.routing.indices,
        block.ffn.routing.weights,
    )
]
_, counted = saved_activation_bytes(
    lambda: block(x, 0, freqs), list(block.parameters()) + list(block.buffers()) + [freqs], keep
)
print(
    f"counted {counted:,d} bytes, formula {layer_activation_bytes(small, layer, 2, 32, 'fp32', device='cpu'):,d} bytes"
)

# %% [markdown]
# And against a GPU: `bench/measure_memory.py` measured real layer widths in bf16 on an H100 (what a
# block's forward adds to `torch.cuda.memory_allocated`, and the KV cache of a decode); the committed
# records are re-predicted here with the current formulas.

# %% tags=["anchor:measured", "remove-input"]
import json
from pathlib import Path

from dsim.cost.memory import block_memory_delta

records = json.loads((Path(dsim.__file__).parent / "data" / "memory_measured.json").read_text())
print(records[0]["device_name"], "| torch", records[0]["torch_version"])
print(
    f"{'layer':42s} {'kind':11s} {'S':>5s} {'recompute':9s} {'predicted MiB':>14s} {'measured MiB':>13s} {'error':>7s}"
)
worst = 0.0
for r in records:
    a = ModelArgs(**r["args"])
    if r["kind"] == "activations":
        pred = block_memory_delta(
            a, r["layer_id"], r["batch"], r["seq_len"], r["dtype"], r["device"], r["recompute"]
        )
    else:
        impl = a.attn_impl if a.attn_type == "mla" else None
        pred = (
            kv_cache_bytes_per_token(a, r["dtype"], impl) / a.n_layers * r["batch"] * r["seq_len"]
        )
    err = pred / r["measured_bytes"] - 1
    worst = max(worst, abs(err)) if r["measured_bytes"] > 64 * MiB else worst
    print(
        f"{r['layer'][:42]:42s} {r['kind']:11s} {r['seq_len']:5d} {r.get('recompute', '-'):9s} "
        f"{pred / MiB:14.1f} {r['measured_bytes'] / MiB:13.1f} {err:+7.2%}"
    )
print(f"largest error on measurements above 64 MiB: {worst:.2%}")


# %% [markdown]
# ## 4. KV cache per token: MHA, GQA and MLA across presets
#
# Each preset's layer count and width with four attention choices (head size 128 for MHA/GQA,
# DeepSeek-V2/V3's MLA sizes: latent 512, RoPE key 64). bf16, all layers.


# %% tags=["anchor:kv", "remove-input"]
def variants(a):
    return {
        "MHA": a.replace(attn_type="mha", head_dim=128, n_kv_heads=0),
        "GQA-8": a.replace(attn_type="gqa", head_dim=128, n_kv_heads=8),
        "MLA naive": a.replace(
            attn_type="mla",
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            attn_impl="naive",
        ),
        "MLA": a.replace(
            attn_type="mla",
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            attn_impl="absorb",
        ),
    }


print(
    f"DeepSeek-V3 caches {v3.kv_lora_rank + v3.qk_rope_head_dim} numbers per token and layer, "
    f"{kv_cache_elements_per_token(v3):,d} over its {v3.n_layers} layers"
)
names = preset_names()[1:]
table = {
    n: {
        k: kv_cache_bytes_per_token(v, impl=v.attn_impl if v.attn_type == "mla" else None)
        for k, v in variants(preset(n)).items()
    }
    for n in names
}
print(f"{'KiB per token':18s}" + "".join(f"{k:>11s}" for k in table[names[0]]) + "   as built")
for n in names:
    own = kv_cache_bytes_per_token(preset(n))
    print(
        f"{n:18s}"
        + "".join(f"{v / 1024:11.1f}" for v in table[n].values())
        + f"   {own / 1024:8.1f}"
    )
fig, ax = plt.subplots()
w = 0.2
for j, k in enumerate(table[names[0]]):
    ax.bar(
        np.arange(len(names)) + (j - 1.5) * w, [table[n][k] / 1024 for n in names], width=w, label=k
    )
ax.set_xticks(np.arange(len(names)), names, fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("KiB per token (bf16, all layers)")
ax.set_title("KV cache per token")
ax.legend(fontsize=8)
viz.show(
    fig,
    "KV cache per token of each preset (bf16, all layers): MLA caches a latent, GQA and MHA cache full keys and values.",
)

# %% tags=["anchor:mla-diagram", "remove-input"]
from dsim.diagrams import mla_dataflow

fig = mla_dataflow(preset("deepseek-v3"))
viz.show(fig, fig.get_label(), alt=fig.get_label())  # the diagram says what it draws

# %% [markdown]
# ## 5. The arithmetic behind DeepSeek-V2's 93.3%
#
# DeepSeek-V2 "reduces the KV cache by 93.3%" compared with DeepSeek 67B (95 layers, 64 heads of 128,
# GQA with 8 KV heads; DeepSeek LLM paper). Counting elements is not enough; the claim holds once V2's
# serving-time KV quantisation (6 bits per element on average, V2 paper section 3.2.3) is counted
# against 67B's 16-bit cache. The appendix table of MHA against MLA follows from the same formulas.

# %% tags=["anchor:v2", "remove-input"]
ds67b = deepseek_llm_67b()  # its config.json, as the claims checker reads it
v2 = preset("deepseek-v2")
e67, ev2 = kv_cache_elements_per_token(ds67b), kv_cache_elements_per_token(v2)
print(f"DeepSeek 67B: 2 x 8 x 128 x 95 = {e67:,d} elements per token")
print(f"DeepSeek-V2:  (512 + 64) x 60  = {ev2:,d} elements per token")
answer(
    4,
    f"in elements V2 saves {1 - ev2 / e67:.1%}; at 6 bits against 16 bits it saves "
    f"{1 - kv_cache_bytes_per_token(v2, dtype=6) / kv_cache_bytes_per_token(ds67b, 'bf16'):.1%}",
)
small_mla = preset("deepseek-v2-lite")
large_mla = v2
rows = {
    "small MoE, MHA (27 layers, 16 x 128)": small_mla.replace(attn_type="mha", head_dim=128),
    "small MoE, MLA": small_mla,
    "large MoE, MHA (60 layers, 56 x 128)": large_mla.replace(
        attn_type="mha", n_heads=56, head_dim=128
    ),
    "large MoE, MLA": large_mla,
}
for k, a in rows.items():
    print(f"{k:38s} {kv_cache_elements_per_token(a) / 1000:7.1f}K elements per token")

# %% [markdown]
# ## 6. Serving: weights and KV cache per GPU as the context grows
#
# DeepSeek-V3 on one 8-GPU node (tensor parallel 8), fp8 weights with 128 x 128 block scales, a batch of
# 32 sequences, bf16 cache. MLA's latent cache is the same on every tensor-parallel rank, so it does
# not shrink with more tensor parallelism. The dashed lines are an 80 GB and a 141 GB GPU.

# %% tags=["anchor:serving", "remove-input"]
contexts = [2**k for k in range(12, 18)]
serve = [
    memory(v3, mode="inference", tp=8, batch=32, seq_len=c, dtype="fp8", group_size=128 * 128)
    for c in contexts
]
fig, ax = plt.subplots()
ax.stackplot(
    contexts,
    [m.weights / GiB for m in serve],
    [m.kv_cache / GiB for m in serve],
    [m.activations / GiB for m in serve],
    labels=["weights", "KV cache", "activations (decode step)"],
)
ax.axhline(80e9 / GiB, color="k", ls="--", lw=1, label="80 GB")
ax.axhline(141e9 / GiB, color="gray", ls="--", lw=1, label="141 GB")
ax.set_xscale("log", base=2)
ax.set_xlabel("context length per sequence")
ax.set_ylabel("GiB per GPU")
ax.set_title("DeepSeek-V3 serving, TP8, batch 32")
ax.legend(fontsize=8, loc="upper left")
viz.show(
    fig,
    "DeepSeek-V3 served with TP8 at batch 32: memory per GPU against the context length per sequence, weights and KV cache.",
)
print(
    f"weights per GPU: {serve[0].weights / 1e9:.1f} GB; KV cache per GPU per 1K tokens of context: "
    f"{serve[0].kv_cache / contexts[0] * 1024 / 1e9:.2f} GB"
)
longest = max((c for c, m in zip(contexts, serve) if m.total < 141e9), default=None)
answer(5, f"the longest context (power of two) that fits a 141 GB GPU at batch 32: {longest}")


# %% [markdown]
# ## 7. Explore
#
# Change the model and the layout; the table shows bytes on the busiest GPU. Invalid layouts show the
# error `memory()` raises. (The table below the widget is the same view at its initial values.)


# %%
def layout_view(
    name="deepseek-v3", tp=1, pp=16, dp=128, ep=64, zero=1, recompute="none", seq_len=4096
):
    try:
        m = memory(
            preset(name),
            tp=tp,
            pp=pp,
            dp=dp,
            ep=ep,
            zero=zero,
            recompute=recompute,
            seq_len=seq_len,
        )
    except ValueError as e:
        return f"<span style='color:#b00'>ValueError: {e}</span>"
    rows = "".join(
        f"<tr><td>{k}</td><td style='text-align:right'>{v:.2f}</td></tr>"
        for k, v in m.gib().items()
    )
    return (
        f"<b>{name}</b> on {tp * pp * dp} GPUs, busiest stage {m.stage}: GiB<table>{rows}</table>"
    )


out = widgets.HTML()
ui = widgets.interactive(
    lambda **kw: setattr(out, "value", layout_view(**kw)),
    name=widgets.Dropdown(options=preset_names()[1:], value="deepseek-v3"),
    tp=widgets.Dropdown(options=[1, 2, 4, 8], value=1),
    pp=widgets.Dropdown(options=[1, 2, 4, 8, 16], value=16),
    dp=widgets.Dropdown(options=[1, 8, 32, 64, 128, 256], value=128),
    ep=widgets.Dropdown(options=[1, 8, 16, 32, 64], value=64),
    zero=widgets.IntSlider(value=1, min=0, max=3),
    recompute=widgets.Dropdown(options=["none", "selective", "full"], value="none"),
    seq_len=widgets.SelectionSlider(options=[1024, 2048, 4096, 8192, 16384], value=4096),
)
display(widgets.VBox([widgets.HBox(ui.children[:4]), widgets.HBox(ui.children[4:-1]), out]))

# %%
import re

print(re.sub(r"<[^>]+>", " ", layout_view()).replace("  ", " ").strip())


# %% [markdown]
# ## The answers, collected

# %% tags=["anchor:answers", "remove-input"]
answer
