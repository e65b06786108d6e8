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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dsim import viz
from dsim.config import PUBLISHED_PARAMS, preset, preset_names, scaled_down
from dsim.cost import flops, params
from dsim.cost.flops import KINDS, counter_mapping, megatron_flops, sdpa_kernel, six_nd
from dsim.cost.params import COMPONENTS
from dsim.model import Transformer

# %matplotlib inline
torch.manual_seed(0)
np.random.seed(0)
torch.set_num_threads(1)
viz.setup()
answer = viz.Answers(chapter=2)
v3 = preset("deepseek-v3")
G = 1e9

# %% [markdown]
# # Parameters and FLOPs
#
# Every number in this notebook comes from `dsim.cost`, whose counts equal the real model's
# (`tests/cost/test_params.py`, `tests/cost/test_flops.py`). Section numbers are referred to by
# chapter 2 of the book.
#
# ## 1. Where DeepSeek-V3's parameters live

# %% tags=["anchor:params-table"]
p = params(v3)
print(p.table())
print()
print(f"main model (no MTP):           {p.total_no_mtp / G:8.2f} B")
print(f"MTP module (unique):           {p.mtp / G:8.2f} B")
print(f"activated per token, no embedding table: {p.active_no_embedding / G:.2f} B")
print(f"activated per token, with it:            {p.active / G:.2f} B")
answer(
    1, f"a token uses {p.active_no_embedding / p.total_no_mtp:.1%} of the main model's parameters"
)
answer(2, f"routed experts hold {p.breakdown['routed_experts'] / p.total_no_mtp:.1%} of them")

# %% tags=["anchor:params-fig", "remove-input"]
fig, ax = plt.subplots()
y = np.arange(len(COMPONENTS))
ax.barh(y + 0.2, [p.breakdown[c] / G for c in COMPONENTS], height=0.4, label="total")
ax.barh(
    y - 0.2,
    [p.active_breakdown[c] / G for c in COMPONENTS],
    height=0.4,
    label="activated per token",
)
ax.set_yticks(y, COMPONENTS)
ax.set_xscale("log")
ax.set_xlabel("parameters (billions, log scale)")
ax.set_title("DeepSeek-V3: parameters by component")
ax.invert_yaxis()
ax.legend()
viz.show(
    fig,
    "DeepSeek-V3's parameters by component, total and activated per token (log scale): the routed experts hold nearly all of them, and a token uses 8 of the 256.",
)

# %% [markdown]
# ## 2. Published totals, and the convention that reproduces each
#
# Papers disagree on what "activated" counts. `params()` gives every convention; the table shows which
# one prints as the published figure.

# %% tags=["anchor:conventions"]
print(f"{'model':18s} {'total':>8s} {'no MTP':>8s} {'active':>8s} {'active-emb':>10s}   published")
for name, (tot, act, _source) in PUBLISHED_PARAMS.items():
    q = params(preset(name))
    print(
        f"{name:18s} {q.total / G:8.2f} {q.total_no_mtp / G:8.2f} {q.active / G:8.2f} {q.active_no_embedding / G:10.2f}"
        f"   {tot / G:g}B / {act / G:g}B"
    )

# %% [markdown]
# ## 3. FLOPs per token by operation: train, prefill, decode
#
# DeepSeek-V3 at a 4096-token context: a training step (forward and backward, MTP included), a prefill
# of 4096 tokens, and one decode step with 4096 tokens in the cache. The attention core is charged as
# PyTorch's counter charges it (full S x S); the causal total is what a causal kernel really computes.

# %% tags=["anchor:flops-table"]
S = 4096
steps = {
    "train": flops(v3, batch=1, seq_len=S, mode="train"),
    "prefill": flops(v3, batch=1, seq_len=S, mode="prefill"),
    "decode": flops(v3, batch=1, seq_len=S, mode="decode"),
}
print(f"{'GFLOPs per token':16s}" + "".join(f"{m:>10s}" for m in steps))
for k in KINDS:
    print(f"{k:16s}" + "".join(f"{f.breakdown[k] / f.tokens / G:10.2f}" for f in steps.values()))
print(f"{'total':16s}" + "".join(f"{f.total / f.tokens / G:10.2f}" for f in steps.values()))
print(
    f"{'total (causal)':16s}"
    + "".join(f"{f.total_causal / f.tokens / G:10.2f}" for f in steps.values())
)
train = steps["train"]
answer(
    3,
    f"training costs {train.total_causal / train.tokens / 1e12:.2f} TFLOPs per token (causal), "
    f"{train.breakdown_causal['attn_core'] / train.total_causal:.1%} of it in the attention core",
)
answer(
    5,
    f"with a causal kernel a decode token costs {steps['decode'].total_causal / (steps['prefill'].total_causal / S):.2f}x an average prefill token",
)

# %% tags=["anchor:flops-fig", "remove-input"]
fig, ax = plt.subplots()
bottom = np.zeros(len(steps))
for k in KINDS:
    vals = np.array([f.breakdown[k] / f.tokens / G for f in steps.values()])
    ax.bar(list(steps), vals, bottom=bottom, label=k)
    bottom += vals
ax.set_ylabel("GFLOPs per token")
ax.set_title(f"DeepSeek-V3, context {S}: FLOPs per token by operation")
ax.legend(fontsize=8, ncol=2)
viz.show(
    fig,
    "FLOPs per token of DeepSeek-V3 at a 4096-token context, by operation, for a training step, a prefill and a decode step (attention core charged as PyTorch's counter charges it).",
)

# %% [markdown]
# MLA's two forms compute the same attention. Per cached key and head, the naive form multiplies
# vectors of d_qk + d_v numbers, the absorbed form vectors of 2 kv_lora_rank + qk_rope_head_dim: more
# FLOPs, in exchange for reading only the latent cache (chapter 3).

# %% tags=["anchor:mla-forms"]
a = v3
naive_pair = 2 * (a.qk_head_dim + a.v_head_dim)
absorb_pair = 2 * (2 * a.kv_lora_rank + a.qk_rope_head_dim)
naive = flops(a, batch=1, seq_len=S, mode="decode")
absorbed = flops(a.replace(attn_impl="absorb"), batch=1, seq_len=S, mode="decode")
print(f"FLOPs per (query, key) pair and head: naive {naive_pair}, absorbed {absorb_pair}")
print(
    f"decode step at context {S}: naive {naive.total / G:.1f} GFLOPs, absorbed {absorbed.total / G:.1f} GFLOPs"
)
answer(
    6,
    f"the absorbed form does {absorb_pair / naive_pair:.1f}x the attention-core FLOPs of the naive form",
)

# %% [markdown]
# ## 4. The analytical count next to the counted one
#
# A scaled-down DeepSeek-V3 (same structure: MLA with low-rank query, sigmoid gate with groups, shared
# expert, MTP), trained for one step under `FlopCounterMode`. `counter_mapping()` makes PyTorch's CPU
# flash-attention kernel count like its GPU kernels (PyTorch counts it as zero otherwise).

# %% tags=["anchor:counted", "remove-input"]
small = scaled_down(v3, expert_impl="loop")
torch.manual_seed(0)
model = Transformer(small)
tokens = torch.randint(0, small.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))


class TrainStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        h = self.model.hidden(tokens)
        return [self.model.head(self.model.norm(h))] + self.model.mtp_logits(h, tokens)


with FlopCounterMode(display=False, custom_mapping=counter_mapping()) as fwd:
    outs = TrainStep(model)(tokens)
with FlopCounterMode(display=False, custom_mapping=counter_mapping()) as bwd:
    sum(o.sum() for o in outs).backward()
counted = {
    k.removeprefix("TrainStep.model."): sum(v.values()) for k, v in fwd.get_flop_counts().items()
}
mine = flops(small, batch=2, seq_len=32, mode="train", attn_kernel=sdpa_kernel(small, "cpu"))
ours = mine.by_module("forward")
print(f"{'module':28s} {'counted':>12s} {'dsim.cost':>12s}")
for name in [
    "layers.0.attn",
    "layers.0.ffn",
    "layers.1.attn",
    "layers.1.ffn.gate",
    "layers.1.ffn.experts",
    "layers.1.ffn.shared_experts",
    "head",
    "mtp.0.eh_proj",
    "mtp.0.block",
]:
    print(f"{name:28s} {counted.get(name, 0):12,d} {ours.get(name, 0):12,d}")
print(f"{'forward total':28s} {fwd.get_total_flops():12,d} {mine.forward:12,d}")
print(f"{'backward total':28s} {bwd.get_total_flops():12,d} {mine.backward:12,d}")
print("every module equal:", all(counted.get(k, 0) == v for k, v in ours.items()))

# %% [markdown]
# ## 5. How wrong is 6 N D?
#
# 6 N D (N = activated non-embedding parameters) counts each weight matmul exactly once per token and
# pass; what it misses is the attention core, which grows with the context. Megatron-LM's closed form
# includes a causal attention term and is close to the causal count; it omits the router.

# %% tags=["anchor:sixnd", "remove-input"]
lengths = [2**k for k in range(9, 18)]
fig, ax = plt.subplots()
for name in ["deepseek-v3", "deepseek-v2", "mixtral-8x7b"]:
    a = preset(name, n_mtp_layers=0)
    err = [
        1 - six_nd(a, s) / flops(a, batch=1, seq_len=s, mode="train").total_causal for s in lengths
    ]
    ax.plot(lengths, err, marker="o", label=name)
ax.set_xscale("log", base=2)
ax.set_xlabel("sequence length")
ax.set_ylabel("share of training FLOPs 6ND misses (causal count)")
ax.set_title("6 N D against the exact count")
ax.legend()
viz.show(
    fig,
    "Share of the training FLOPs that 6 N D leaves out, against the sequence length (causal counts): negligible for short contexts, a large part of the work for long ones.",
)
a = preset("deepseek-v3", n_mtp_layers=0)
print(
    "DeepSeek-V3 without MTP, causal counts. 6ND against a flash kernel (backward recomputes QK^T);"
)
print("Megatron against the same count with the backward charged 2x the forward, as Megatron does.")
print(
    f"{'seq_len':>8s} {'6ND/exact':>10s} {'Megatron/exact':>15s} {'(Megatron + router)/exact':>26s}"
)
for s in (1024, 4096, 32768, 131072):
    fused = flops(a, batch=1, seq_len=s, mode="train").total_causal
    math_ = flops(a, batch=1, seq_len=s, mode="train", attn_kernel="math")
    router = math_.breakdown_causal["gate"]
    print(
        f"{s:8d} {six_nd(a, s) / fused:10.3f} {megatron_flops(a, 1, s) / math_.total_causal:15.4f} "
        f"{(megatron_flops(a, 1, s) + router) / math_.total_causal:26.5f}"
    )
weights = lambda s: six_nd(a, s)
core = lambda s: flops(a, batch=1, seq_len=s, mode="train").breakdown_causal["attn_core"]
s = 512
while core(s) < weights(s):
    s *= 2
answer(
    4,
    f"the causal attention core first outweighs all weight matmuls between {s // 2} and {s} tokens",
)


# %% [markdown]
# ## 6. Explore
#
# Choose a preset, a sequence length and the number of routed experts per token (top-k): the table and
# chart show training FLOPs per token by operation. (The figure below the widget is the same view at its
# initial values, for readers of the static page.)


# %%
def per_token_view(name="deepseek-v3", seq_len=4096, top_k=8):
    a = preset(name)
    a = (
        a.replace(n_activated_experts=max(1, min(top_k, a.n_routed_experts)))
        if a.n_routed_experts
        else a
    )
    f = flops(a, batch=1, seq_len=seq_len, mode="train")
    q = params(a)
    rows = "".join(
        f"<tr><td>{k}</td><td style='text-align:right'>{f.breakdown[k] / f.tokens / G:.2f}</td></tr>"
        for k in KINDS
    )
    html = (
        f"<b>{name}</b>, top-k {a.n_activated_experts}, {seq_len} tokens: "
        f"{q.active_no_embedding / G:.2f}B activated parameters, "
        f"{f.total / f.tokens / G:.1f} GFLOPs per training token "
        f"({f.total_causal / f.tokens / G:.1f} causal)<table>{rows}</table>"
    )
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(KINDS), [f.breakdown[k] / f.tokens / G for k in KINDS])
    ax.invert_yaxis()
    ax.set_xlabel("GFLOPs per training token")
    return html, fig


summary, chart = widgets.HTML(), widgets.Output()


def update(name, seq_len, top_k):
    html, fig = per_token_view(name, seq_len, top_k)
    summary.value = html
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    image.value = buf.getvalue()


image = widgets.Image(format="png")
ui = widgets.interactive(
    update,
    name=widgets.Dropdown(options=preset_names()[1:], value="deepseek-v3"),
    seq_len=widgets.SelectionSlider(options=[2**k for k in range(9, 18)], value=4096),
    top_k=widgets.IntSlider(value=8, min=1, max=16),
)
display(widgets.VBox([widgets.HBox(ui.children[:-1]), summary, image]))

# %% [markdown]
# The widget's seq_len control as small multiples, for readers of the static page: DeepSeek-V3's
# training FLOPs per token by operation at four context lengths.


# %% tags=["anchor:multiples"]
def panel(ax, seq_len):
    f = flops(v3, batch=1, seq_len=seq_len, mode="train")
    ax.barh(list(KINDS)[::-1], [f.breakdown[k] / f.tokens / G for k in KINDS][::-1])
    ax.set_xlabel("GFLOPs per token")


fig = viz.small_multiples(panel, [1024, 4096, 16384, 65536], ncols=2, title="context {}")
viz.show(
    fig,
    "DeepSeek-V3's training GFLOPs per token by operation at four context lengths (the "
    "widget's seq_len): only the attention core grows with the context.",
)


# %% [markdown]
# ## The answers, collected

# %% tags=["anchor:answers", "remove-input"]
answer
