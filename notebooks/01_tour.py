# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["remove-cell"]
# # A tour of a DeepSeek-style MoE
#
# This notebook builds dsim's `tiny` preset (a 2-layer DeepSeek-style MoE), looks at what its gate does,
# trains it on the Python standard library's source code, and compares the parameter counts of real
# DeepSeek models. Everything runs on a CPU in well under a minute, and every number below is computed
# here.

# %% tags=["anchor:build", "remove-input"]
# %matplotlib inline

from dsim import viz

viz.setup()
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from dsim.config import PUBLISHED_PARAMS, preset, preset_names
from dsim.cost import params
from dsim.model import Transformer

torch.manual_seed(0)
torch.set_num_threads(2)
args = preset("tiny")
model = Transformer(args)
print(
    f"layers {args.n_layers} (dense {args.n_dense_layers}), dim {args.dim}, "
    f"routed experts {args.n_routed_experts} (top-{args.n_activated_experts}), shared {args.n_shared_experts}, "
    f"attention {args.attn_type} (kv_lora_rank {args.kv_lora_rank})"
)
counted = sum(p.numel() for p in model.parameters())
print(
    f"parameters counted on the module: {counted:,}; predicted by dsim.cost.params: {params(args).total:,}"
)

# %% [markdown]
# ## What the gate does
#
# Run a line of code through the untrained model and look at the MoE layer's decision: for each byte, the two
# routed experts it goes to and their combine weights. The shared expert sees every byte and needs no gate.

# %% tags=["anchor:gate"]
text = b"def add(a, b): return a + b"
tokens = torch.tensor([list(text)])
with torch.no_grad():
    model(tokens)
routing = model.moe_layers()[0].routing
for ch, idx, w in list(zip(text.decode(), routing.indices.tolist(), routing.weights.tolist()))[:10]:
    print(f"{ch!r:5} -> experts {idx}  weights {[round(x, 2) for x in w]}")
load = torch.bincount(routing.indices.flatten(), minlength=args.n_routed_experts)
print("assignments per expert:", load.tolist())

# %% tags=["anchor:dispatch-diagram", "remove-input"]
from dsim.diagrams import moe_dispatch

fig = moe_dispatch()
viz.show(fig, fig.get_label(), alt=fig.get_label())  # the diagram says what it draws

# %% [markdown]
# ## Training on real text
#
# The corpus is the standard library's top-level `*.py` files as bytes (every 20th file held out). The
# yardstick is the unigram entropy: the loss of the best model that ignores context.

# %% tags=["nbval-ignore-output", "anchor:train"]
from dsim.train import TrainConfig, evaluate, get_corpus, train, unigram_entropy

cfg = TrainConfig(steps=200, seed=0)
model, history = train("tiny", cfg, progress=False)
h1 = unigram_entropy(get_corpus("train"))
bpb = history.bits_per_byte
val = evaluate(model, get_corpus("val"))
print(f"unigram entropy        {h1:.2f} bits/byte")
print(f"first training step    {bpb[0]:.2f} bits/byte")
print(f"last 20 steps (mean)   {np.mean(bpb[-20:]):.2f} bits/byte")
print(f"held-out               {val:.2f} bits/byte, {h1 - val:.1f} below the unigram entropy")
# The trained numbers depend on the CPU's float kernels (AVX2 and AVX-512 sum in different orders,
# and 200 steps of training amplify the last bit): the held-out loss moves by about 0.01 between
# machines. The checks below allow 5x that; what the chapter claims (the model gets well below the
# unigram entropy) holds with a wide margin.
assert abs(val - 3.10) < 0.05, f"held-out {val:.3f} bits/byte: expected 3.10 +- 0.05"
assert h1 - val > 1.2, "the model should end more than 1.2 bits/byte below the unigram entropy"
assert bpb[0] > 8.0, "an untrained model is no better than uniform guessing over 256 bytes (8 bits)"

# %% tags=["anchor:train-fig", "remove-input"]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(bpb, label="training loss")
ax.axhline(h1, color="gray", ls="--", label="unigram entropy")
ax.set_xlabel("step")
ax.set_ylabel("bits per byte")
ax.legend()
ax.set_title("tiny MoE on the standard library")
viz.show(
    fig,
    "Training loss of the tiny MoE on the Python standard library, in bits per byte per step; dashed: the unigram entropy, the best loss without context.",
)

# %% [markdown]
# ## Stored versus computed: total and activated parameters
#
# `dsim.cost.params` counts the parameters of any `ModelArgs` analytically (the tests hold it equal to
# `sum(p.numel())` of the real module on scaled-down copies of every preset). Next to it, the figures the
# papers publish. "Total" here is the main model without the multi-token-prediction module, which is how
# DeepSeek reports 671B; "activated" counts what one token touches, with and without the input embedding table (papers differ:
# DeepSeek-V2-Lite's 2.4B excludes it, DeepSeekMoE 16B's 2.8B includes it).

# %% tags=["anchor:presets", "remove-input"]
rows = []
for name in preset_names()[1:]:
    p = params(preset(name))
    pub_total, pub_active, source = PUBLISHED_PARAMS[name]
    rows.append((name, p.total_no_mtp, pub_total, p.active, p.active_no_embedding, pub_active))
print(
    f"{'model':18}{'total':>9}{'published':>11}{'active':>9}{'w/o embed':>11}{'published':>11}{'share':>8}"
)
for name, t, pt, a, ane, pa in rows:
    print(
        f"{name:18}{t / 1e9:8.1f}B{pt / 1e9:10.1f}B{a / 1e9:8.2f}B{ane / 1e9:10.2f}B{pa / 1e9:10.1f}B{a / t:8.1%}"
    )

# %% tags=["anchor:presets-fig", "remove-input"]
fig, ax = plt.subplots(figsize=(7, 3))
x = np.arange(len(rows))
ax.bar(x - 0.2, [r[1] / 1e9 for r in rows], 0.4, label="total")
ax.bar(x + 0.2, [r[3] / 1e9 for r in rows], 0.4, label="activated per token")
ax.set_xticks(x, [r[0] for r in rows], rotation=15)
ax.set_yscale("log")
ax.set_ylabel("parameters (billions)")
ax.legend()
viz.show(
    fig,
    "Total and activated-per-token parameters of each preset, in billions on a log scale: a token uses a few percent of an MoE's weights.",
)


# %% [markdown]
# ## Try it: top-k
#
# Choose a preset and the number of activated experts per token. The total does not move; the activated count
# does, and so does the compute per token.


# %%
def show(model_name="deepseek-v3", top_k=8):
    base = preset(model_name)
    k = min(top_k, base.n_routed_experts)
    limited = base.n_limited_groups * (base.n_routed_experts // base.n_expert_groups)
    a = base.replace(n_activated_experts=min(k, limited))
    p = params(a)
    print(
        f"{model_name}: top-{a.n_activated_experts} of {a.n_routed_experts} routed experts "
        f"(+{a.n_shared_experts} shared)"
    )
    print(
        f"  total {p.total_no_mtp / 1e9:.1f}B, activated {p.active / 1e9:.2f}B per token "
        f"({p.active / p.total_no_mtp:.1%})"
    )


show("deepseek-v3", 16)

# %% [markdown]
# The same as an interactive control (move the slider; the output below it is recomputed):

# %% tags=["nbval-ignore-output"]
top_k = widgets.IntSlider(value=8, min=1, max=16, description="top-k")
choice = widgets.Dropdown(options=preset_names()[1:], value="deepseek-v3", description="preset")
display(widgets.interactive(show, model_name=choice, top_k=top_k))

# %% [markdown]
# The slider's values as a table, for readers of the static page (DeepSeek-V3):

# %% tags=["anchor:topk-table"]
v3 = preset("deepseek-v3")
rows = []
for k in (1, 2, 4, 8, 16):
    p = params(v3.replace(n_activated_experts=k))
    rows.append((k, p.total_no_mtp / 1e9, p.active / 1e9, p.active / p.total_no_mtp))
fmt = {"total (B)": "{:.1f}", "activated (B)": "{:.2f}", "share": "{:.1%}"}
viz.table(rows, ["top-k", "total (B)", "activated (B)", "share"], fmt=fmt)


# %% [markdown]
# ## The answers, collected

# %% tags=["anchor:answers", "remove-input", "nbval-ignore-output"]
# Answer 3 depends on the trained model (its last digit varies between CPUs; the training cell's
# asserts check it): the output is not compared.
answer = viz.Answers(chapter=1)
v3p = params(preset("deepseek-v3"))
answer(
    1,
    f"DeepSeek-V3 activates {v3p.active_no_embedding / 1e9:.1f}B of its {v3p.total_no_mtp / 1e9:.0f}B "
    f"parameters per token (without the embedding table): {v3p.active_no_embedding / v3p.total_no_mtp:.1%}",
)
k16 = params(preset("deepseek-v3").replace(n_activated_experts=16))
answer(
    2,
    f"with 16 routed experts a token touches {k16.active / 1e9:.1f}B parameters, against "
    f"{v3p.active / 1e9:.1f}B with 8 (embedding table included)",
)
answer(3, f"{h1 - val:.1f} bits per byte below the unigram entropy ({val:.2f} against {h1:.2f})")
answer
