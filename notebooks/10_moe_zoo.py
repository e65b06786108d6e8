# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The MoE zoo
#
# DeepSeek-V3 is one set of choices. This notebook puts it beside the other open MoE families, each
# read from its published `config.json` (`dsim/data/hf_configs/`, sources in `SOURCE.md`), and asks
# the cost views what each choice changes: parameters, the KV cache, FLOPs per token and memory to
# serve. Every number is computed by `dsim.cost.compare.profile`.

# %% tags=["anchor:setup"]
# %matplotlib inline
from pathlib import Path

import numpy as np

import dsim
from dsim import viz
from dsim.config import ModelArgs
from dsim.cost import flops, params
from dsim.cost.compare import profile, table
from dsim.cost.kv_cache import kv_cache_bytes_per_token

viz.setup()
answer = viz.Answers(chapter=10)
CONFIGS = Path(dsim.__file__).parent / "data" / "hf_configs"
# display name -> (published config, storage format of the routed experts). gpt-oss publishes its
# experts in MXFP4 (OpenAI's model card); the others are costed in bf16.
ZOO = {
    "DeepSeek-V3": ("deepseek-v3", "bf16"),
    "DeepSeek-V3.2": ("deepseek-v3.2", "bf16"),
    "Kimi-K2": ("kimi-k2-instruct", "bf16"),
    "DeepSeek-V2-Lite": ("deepseek-native-config_16B", "bf16"),
    "Qwen3-235B-A22B": ("qwen3-235b-a22b", "bf16"),
    "Qwen3-30B-A3B": ("qwen3-30b-a3b", "bf16"),
    "Qwen2-57B-A14B": ("qwen2-57b-a14b", "bf16"),
    "OLMoE-1B-7B": ("olmoe-1b-7b-0125-instruct", "bf16"),
    "GLM-4.5-Air": ("glm-4.5-air", "bf16"),
    "gpt-oss-120b": ("gpt-oss-120b", "mxfp4"),
    "gpt-oss-20b": ("gpt-oss-20b", "mxfp4"),
    "Mixtral-8x7B": ("mixtral-8x7b-v0.1", "bf16"),
    "DBRX": ("dbrx-instruct", "bf16"),
    "Llama-3.1-70B (dense)": ("llama-3.1-70b-instruct", "bf16"),
    "Mistral-7B (dense)": ("mistral-7b-instruct-v0.1", "bf16"),
}
models = {name: ModelArgs.from_hf_config(CONFIGS / f"{f}.json") for name, (f, _) in ZOO.items()}
zoo = {name: profile(args, expert_dtype=ZOO[name][1], name=name) for name, args in models.items()}
print(f"{len(zoo)} models read from their published configs")

# %% [markdown]
# ## 1. The table
#
# One row per model: all parameters (MTP modules left out, as the published sizes are) and those a
# token uses without the embedding table; routed experts as *active / routed + shared*; the width of
# one expert's hidden layer relative to the model width; the attention design; KV cache per token at
# 32K and 128K context (bf16, as a deployment keeps it: MLA's latent, a window layer's window only);
# forward FLOPs of one decoded token after 32K cached ones; and the bytes of weights plus the KV
# cache of 32 sequences of 32K tokens.

# %% tags=["anchor:table"]
rows = table(list(zoo.values()))
viz.table([list(r.values()) for r in rows], list(rows[0]), fmt={"total (B)": "{:,.1f}"})

# %% [markdown]
# ## 2. Total and active parameters
#
# An MoE's total decides the memory, its active count the arithmetic per token. The ratio spans
# more than an order of magnitude: Mixtral's top-2 of 8 uses more than a quarter of its weights per
# token, Kimi-K2's top-8 of 384 a thirtieth.

# %% tags=["anchor:params-fig", "remove-input"]
fig, ax = viz.figure(height=3.6)
for name, p in zoo.items():
    ax.scatter(p.total / 1e9, p.active / 1e9, color="tab:gray" if "dense" in name else "tab:blue")
    ax.annotate(
        name, (p.total / 1e9, p.active / 1e9), fontsize=7, xytext=(3, 2), textcoords="offset points"
    )
ax.set(
    xscale="log",
    yscale="log",
    xlabel="total parameters (B)",
    ylabel="active parameters (B, no embedding)",
)
viz.show(
    fig,
    "Total against active parameters of each model, from its published config; dense "
    "models (grey) sit on the diagonal.",
)

# %% tags=["anchor:params-numbers"]
share = {n: p.active_share for n, p in zoo.items() if "dense" not in n}
lo, hi = min(share, key=share.get), max(share, key=share.get)
print(f"active share: {hi} {share[hi]:.1%} ... {lo} {share[lo]:.1%}")
answer(1, f"{lo} uses {share[lo]:.1%} of its parameters per token, {hi} {share[hi]:.1%}")

# %% [markdown]
# ## 3. The KV cache
#
# Per token and layer, GQA caches keys and values of its KV heads, $2 n_{kv} d_h$ numbers;
# MLA caches one latent and one RoPE key, $d_c + d_r$ (`kv_cache_layer_elements`). A sliding
# window caps what a layer keeps at the window, so its cost per token falls as the context grows;
# DeepSeek-V3.2 adds its indexer's key of `index_head_dim` numbers.

# %% tags=["anchor:kv-fig", "remove-input"]
contexts = [2**k for k in range(10, 18)]  # 1K .. 128K
shown = [
    "DeepSeek-V3",
    "DeepSeek-V3.2",
    "Qwen3-235B-A22B",
    "gpt-oss-120b",
    "GLM-4.5-Air",
    "Llama-3.1-70B (dense)",
    "Mistral-7B (dense)",
]
kib = {
    n: [kv_cache_bytes_per_token(models[n], "bf16", seq_len=c) / 1024 for c in contexts]
    for n in shown
}
fig = viz.lines(
    np.array(contexts) / 1024,
    kib,
    xlabel="context (K tokens)",
    ylabel="KV cache per token (KiB, bf16)",
    logx=True,
    logy=True,
    marker=".",
)
viz.show(
    fig,
    "KV cache per token of context, all layers, bf16: flat for full attention, falling "
    "for models with sliding-window layers (gpt-oss, Mistral).",
)

# %% tags=["anchor:kv-numbers"]
v3, qwen = zoo["DeepSeek-V3"], zoo["Qwen3-235B-A22B"]
oss = models["gpt-oss-120b"]
full_oss = oss.replace(sliding_window=0, window_layers=())
windowed = kv_cache_bytes_per_token(oss, "bf16", seq_len=131072)
unwindowed = kv_cache_bytes_per_token(full_oss, "bf16", seq_len=131072)
print(
    f"MLA (V3) {v3.kv_bytes_per_token[32768] / 1024:.1f} KiB/token against GQA (Qwen3-235B) "
    f"{qwen.kv_bytes_per_token[32768] / 1024:.1f} KiB/token"
)
print(
    f"gpt-oss-120b at 128K: {windowed / 1024:.1f} KiB/token with its windows, "
    f"{unwindowed / 1024:.1f} without ({unwindowed / windowed:.2f}x)"
)
answer(
    2,
    f"Qwen3-235B caches {qwen.kv_bytes_per_token[32768] / v3.kv_bytes_per_token[32768]:.2f}x"
    " DeepSeek-V3's bytes per token",
)
answer(3, f"windows cut gpt-oss-120b's cache at 128K by {unwindowed / windowed:.2f}x")

# %% [markdown]
# ## 4. FLOPs per token at long context
#
# Decoding one token costs about $2 N_{active}$ FLOPs in the weights plus attention over every
# cached key. A window caps the keys a layer reads; DeepSeek-V3.2's indexer lets MLA attend to its
# `index_topk` = 2048 chosen keys only, at the price of scoring every key with a few small heads.

# %% tags=["anchor:flops-fig", "remove-input"]
pair = {
    "DeepSeek-V3": models["DeepSeek-V3"],
    "DeepSeek-V3.2": models["DeepSeek-V3.2"],
    "gpt-oss-120b": oss,
    "gpt-oss-120b without windows": full_oss,
}
gflop = {
    n: [flops(a, 1, c, "decode").total_causal / 1e9 for c in contexts] for n, a in pair.items()
}
fig = viz.lines(
    np.array(contexts) / 1024,
    gflop,
    xlabel="context (K tokens)",
    ylabel="GFLOP per decoded token",
    logx=True,
    marker=".",
)
viz.show(
    fig,
    "Forward FLOPs of one decoded token against the context it attends to: the "
    "indexer (V3.2) and the windows (gpt-oss) flatten the growth.",
)

# %% tags=["anchor:flops-numbers"]
at = {n: g[-1] for n, g in gflop.items()}
print(
    f"at 128K: V3 {at['DeepSeek-V3']:.0f}, V3.2 {at['DeepSeek-V3.2']:.0f} GFLOP/token; "
    f"gpt-oss-120b {at['gpt-oss-120b']:.1f} with windows, "
    f"{at['gpt-oss-120b without windows']:.1f} without"
)
answer(
    4,
    f"the indexer saves {1 - at['DeepSeek-V3.2'] / at['DeepSeek-V3']:.0%} of V3's FLOPs "
    "per token at 128K",
)

# %% [markdown]
# ## 5. The smaller choices, each with the number it changes

# %% tags=["anchor:choices"]
p_v3 = params(models["DeepSeek-V3"])
shared = p_v3.active_breakdown["shared_experts"] / p_v3.active_no_embedding
q2 = models["Qwen2-57B-A14B"]
gated = params(q2).total_no_mtp - params(q2.replace(shared_expert_gate=False)).total_no_mtp
q3 = models["Qwen3-235B-A22B"]
qk = params(q3).total_no_mtp - params(q3.replace(qk_norm="none")).total_no_mtp
oss_bf16 = profile(oss, name="gpt-oss-120b in bf16")
rows = [
    ["V3's shared expert", "share of active parameters", f"{shared:.1%}"],
    ["Qwen2-MoE's shared-expert gate", "parameters added", f"{gated:,}"],
    ["Qwen3's qk-norm", "parameters added", f"{qk:,}"],
    [
        "gpt-oss's MXFP4 experts",
        "GB to serve 32 x 32K, bf16 -> mxfp4",
        f"{oss_bf16.serve_bytes / 1e9:.0f} -> {zoo['gpt-oss-120b'].serve_bytes / 1e9:.0f}",
    ],
    ["V3's expert width", "moe_inter_dim / dim", f"{zoo['DeepSeek-V3'].expert_width:.2f}"],
    ["Mixtral's expert width", "moe_inter_dim / dim", f"{zoo['Mixtral-8x7B'].expert_width:.2f}"],
    ["DBRX's expert width", "moe_inter_dim / dim", f"{zoo['DBRX'].expert_width:.2f}"],
]
viz.table(rows, ["choice", "what it changes", "value"])
answer(
    5,
    f"MXFP4 experts take gpt-oss-120b from {oss_bf16.serve_bytes / 1e9:.0f} GB to "
    f"{zoo['gpt-oss-120b'].serve_bytes / 1e9:.0f} GB at 32 x 32K",
)

# %% [markdown]
# ## Answers

# %% tags=["anchor:answers"]
answer
