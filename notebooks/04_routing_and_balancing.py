# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Routing and load balancing
#
# A router left to itself sends most tokens to a few experts: they get more gradient, become better,
# and win even more tokens. This notebook shows that collapse on dsim's `tiny` preset with 16 routed
# experts (top-2) and repairs it with each of the four tools of the chapter: a Switch-style auxiliary
# loss, DeepSeek-V3's sequence-wise loss, DeepSeek-V3's auxiliary-loss-free bias update, and (for
# comparison) nothing. It then looks at group-limited routing, token dropping with a capacity factor,
# multi-token prediction (MTP) and its use as a draft for speculative decoding, and resuming a run
# from a checkpoint.
#
# The long runs (300 steps each, a few minutes in all) come from `bench/balance_runs.py` and are read
# from `dsim/data/balance_runs.json`; the short live runs below take a few seconds. Numbers are printed
# to 3 significant digits.

# %%
# %matplotlib inline
import json
from pathlib import Path

from dsim import viz

viz.setup()
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import dsim
from dsim import balance
from dsim.config import preset
from dsim.model import capacity_mask
from dsim.train import TrainConfig, Trainer, get_corpus, mtp_acceptance

torch.set_num_threads(1)  # one thread: the live runs print the same numbers every time


def g3(x: float) -> str:
    # 3 significant digits
    return f"{x:.3g}"


DATA = json.loads((Path(dsim.__file__).parent / "data" / "balance_runs.json").read_text())
RUNS = {r["name"]: r for r in DATA["runs"]}
SETUP = DATA["setup"]
E, K = 16, 2
TOKENS = SETUP["train"]["batch_size"] * SETUP["train"]["seq_len"]
TAIL = SETUP["final_is_mean_over_last_steps"]
print(
    f"{len(RUNS)} committed runs of {SETUP['steps']} steps, {SETUP['train']['batch_size']} x "
    f"{SETUP['train']['seq_len']} bytes per step, tiny preset with {E} routed experts (top-{K})"
)
print(f"'final' numbers are means over the last {TAIL} steps")

# %% [markdown]
# ## 1. Collapse
#
# Two numbers summarise the load of a step. The **imbalance** is the busiest expert's share of the
# $T K$ assignments divided by the mean share $1/E$: 1 is perfect balance and $E/K = 8$ means every
# token went to the same two experts. Under expert parallelism the busiest expert sets the pace, so
# the imbalance is also the slowdown of the MoE layer against a balanced one. The **load entropy**
# $-\sum_i p_i \log p_i / \log E$ is 1 for a uniform load. Even a perfectly fair random router is not
# exactly at 1 on a finite batch; the first line below measures that floor by simulation.

# %%
rng = np.random.default_rng(0)


def random_router_imbalance(tokens: int) -> float:
    choice = np.argsort(rng.random((tokens, E)), axis=1)[:, :K]  # K distinct experts per token
    return np.bincount(choice.ravel(), minlength=E).max() / (tokens * K / E)


floor = np.mean([random_router_imbalance(TOKENS) for _ in range(200)])
print(
    f"balanced: 1, collapsed onto {K} experts: {E // K}, uniformly random router on {TOKENS} tokens: {g3(floor)}"
)
for gate in ("softmax", "sigmoid"):
    f = RUNS[f"{gate}/none"]["final"]
    print(
        f"{gate:8} gate, no balancing, end of training: imbalance {g3(f['imbalance'])}, "
        f"load entropy {g3(f['entropy'])}"
    )


# %% tags=["anchor:collapse", "remove-input"]
def smooth(x, w=10):
    x = np.asarray(x, dtype=float)
    return np.convolve(x, np.ones(w) / w, mode="valid")


def heatmap(ax, run, title=None, vmax=0.5, xlabel=True):
    load = np.array(run["load_snapshots"]).T  # [E, snapshots]
    every = SETUP["snapshot_every"]
    im = ax.imshow(
        load,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        vmin=0,
        vmax=vmax,
        interpolation="nearest",
        extent=(0, load.shape[1] * every, -0.5, E - 0.5),
    )
    ax.set_title(title or run["label"], fontsize=9)
    if xlabel:
        ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("expert", fontsize=8)
    return im


fig, axes = plt.subplots(1, 3, figsize=(7.3, 3))
for gate in ("softmax", "sigmoid"):
    axes[0].plot(smooth(RUNS[f"{gate}/none"]["imbalance"]), label=f"{gate} gate")
axes[0].axhline(E / K, color="gray", ls="--", lw=1)
axes[0].axhline(1, color="gray", ls=":", lw=1)
axes[0].set_xlabel("step")
axes[0].set_ylabel("imbalance (max / mean load)")
axes[0].legend()
axes[0].set_title("no balancing (10-step mean)", fontsize=9)
for ax, gate in zip(axes[1:], ("softmax", "sigmoid")):
    im = heatmap(ax, RUNS[f"{gate}/none"], f"{gate} gate, no balancing: share of the load")
fig.colorbar(im, ax=axes[1:], fraction=0.03)
viz.show(
    fig,
    "Without balancing the router collapses: imbalance (busiest expert over the mean) during training for both gates (left; dashed: all tokens on K experts, dotted: perfect balance), and each expert's share of the load over time (right).",
)

# %% [markdown]
# ## 2. Four repairs, side by side
#
# Same initialisation, same batches; only the balancing differs. Two settings of each DeepSeek-V3
# method: the paper's value (bias update speed $\gamma = 0.001$, sequence-wise $\alpha = 10^{-4}$)
# and a stronger one ($\gamma = 0.01$, $\alpha = 10^{-2}$), labelled as such.

# %% tags=["anchor:methods", "remove-input"]
METHOD_ORDER = ["none", "switch", "seq_paper", "seq_strong", "bias_paper", "bias_fast"]
print(f"{'gate':8} {'method':45} {'imbalance':>9} {'entropy':>8} {'val bpb':>8}")
for gate in ("softmax", "sigmoid"):
    for m in METHOD_ORDER:
        r = RUNS[f"{gate}/{m}"]
        f = r["final"]
        print(
            f"{gate:8} {r['label']:45} {g3(f['imbalance']):>9} {g3(f['entropy']):>8} {g3(f['val_bpb']):>8}"
        )
seed = [
    RUNS[f"sigmoid/{s}{m}"]["final"]["val_bpb"]
    for m in ("none", "bias_fast")
    for s in ("", "seed1/")
]
print(
    f"\nthe same two sigmoid runs from another seed: val bpb {g3(seed[0])} -> {g3(seed[1])} (none), "
    f"{g3(seed[2])} -> {g3(seed[3])} (bias_fast)"
)
vals = [
    RUNS[f"{gate}/{m}"]["final"]["val_bpb"] for gate in ("softmax", "sigmoid") for m in METHOD_ORDER
]
print(
    f"held-out loss: spread over the 12 runs {g3(max(vals) - min(vals))}, change of one run from seed 0 to "
    f"seed 1 up to {g3(max(abs(seed[0] - seed[1]), abs(seed[2] - seed[3])))} bits/byte"
)

# %% tags=["anchor:methods-fig", "remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(7.3, 3.2), sharey=True)
for ax, gate in zip(axes, ("softmax", "sigmoid")):
    for m in METHOD_ORDER:
        ax.plot(
            smooth(RUNS[f"{gate}/{m}"]["imbalance"]), label=RUNS[f"{gate}/{m}"]["label"], lw=1.2
        )
    ax.axhline(floor, color="gray", ls=":", lw=1)
    ax.set_title(f"{gate} gate (10-step mean; dotted: random-router floor)", fontsize=9)
    ax.set_xlabel("step")
axes[0].set_ylabel("imbalance")
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.22))
viz.show(
    fig,
    "Imbalance during training for each balancing method, softmax gate (left) and sigmoid gate (right); dotted: the imbalance of a random router.",
)

fig, axes = plt.subplots(4, 3, figsize=(7.3, 7.2), sharex=True, sharey=True)
cases = [(gate, m) for gate in ("softmax", "sigmoid") for m in METHOD_ORDER]
for i, (ax, (gate, m)) in enumerate(zip(axes.flat, cases)):
    im = heatmap(ax, RUNS[f"{gate}/{m}"], f"{gate}: {m}", xlabel=i >= 9)
fig.colorbar(im, ax=axes, fraction=0.02)
viz.show(
    fig,
    "Each expert's share of the load during training, for every gate (rows) and balancing method (columns).",
)

# %% [markdown]
# ## 3. The bias update and the scale of $\gamma$
#
# The bias moves by exactly $\pm\gamma$ (or 0) per step, so after $n$ steps no bias can be more than
# $n\gamma$ from where it started. What it has to cover is the gap between the scores of the experts
# the router prefers and those it ignores. A softmax over 16 experts gives scores near $1/16$ with
# small gaps; sigmoid scores live in $(0, 1)$ with much larger gaps. The spread of the biases at the
# end of the fast runs shows how far they had to move; the paper's $\gamma$ needs that many steps
# divided by 0.001. Only differences between biases matter: adding the same constant to all of them
# changes no choice, which is why the softmax biases can drift upward together (most experts are a
# little underloaded at any step, a few are overloaded).

# %% tags=["anchor:bias-fig", "remove-input"]
fig, axes = plt.subplots(1, 4, figsize=(7.3, 3), sharey=True)
for ax, name in zip(
    axes, ["softmax/bias_paper", "softmax/bias_fast", "sigmoid/bias_paper", "sigmoid/bias_fast"]
):
    b = np.array(RUNS[name]["bias_snapshots"])  # [snapshots, E]
    steps = np.arange(1, len(b) + 1) * SETUP["snapshot_every"]
    ax.plot(steps, b, lw=0.8)
    ax.set_title(
        name.split("/")[0] + ": " + RUNS[name]["label"].replace("bias update, ", ""), fontsize=9
    )
    ax.set_xlabel("step")
axes[0].set_ylabel("gate bias per expert")
viz.show(
    fig,
    "The gate bias of each expert during training under the bias update, at the paper's gamma and a 10x faster one, for both gates.",
)

n = SETUP["steps"]
for gate in ("softmax", "sigmoid"):
    b = np.array(RUNS[f"{gate}/bias_fast"]["bias_snapshots"][-1])
    spread = b.max() - b.min()
    print(
        f"{gate:8}: bias spread after {n} steps at gamma={SETUP['fast_gamma']}: {g3(spread)}; "
        f"at the paper's gamma={SETUP['paper_gamma']} building it takes at least {g3(spread / 2 / SETUP['paper_gamma'])} "
        f"steps (two biases moving apart)"
    )

# %% [markdown]
# A live run, a few seconds: the sigmoid gate without balancing and with the fast bias update, 80 steps
# of 8 x 64 bytes. The same functions the long runs used: `Trainer`, `TrainConfig(bias_update_speed=...)`,
# and the per-step `History`.

# %% tags=["nbval-ignore-output", "anchor:live", "remove-input"]
LIVE_MODEL = preset("tiny", n_routed_experts=E, score_func="sigmoid")
LIVE = dict(steps=80, batch_size=8, seq_len=64, warmup=10, max_train_bytes=400_000)


def live_run(gate="sigmoid", gamma=0.0, **changes):
    trainer = Trainer(
        LIVE_MODEL.replace(score_func=gate), TrainConfig(**LIVE, bias_update_speed=gamma, **changes)
    )
    trainer.run(progress=False)
    return trainer


live = {g: live_run("sigmoid", g) for g in (0.0, 0.01)}
for g, t in live.items():
    print(
        f"sigmoid, gamma={g}: imbalance over the last 20 steps {g3(np.mean(t.history.imbalance[-20:]))}, "
        f"bias range {g3(float(t.history.bias[-1].max() - t.history.bias[-1].min()))}"
    )
# A live run's digits depend on the CPU's float kernels (AVX2 and AVX-512 sum in different orders,
# 80 steps amplify the last bit): the balanced run's imbalance was 2.15 on one and 2.26 on another.
# The output is not compared; what the text relies on is checked, with room for that spread:
# without balancing the router collapses (8 is all tokens on 2 of 16 experts) and no bias moves;
# the bias update brings the imbalance far down by spreading the biases over a few tenths.
none, fast = live[0.0].history, live[0.01].history
assert np.mean(none.imbalance[-20:]) > 7 and np.abs(none.bias[-1]).max() == 0
assert np.mean(fast.imbalance[-20:]) < 3.5, np.mean(fast.imbalance[-20:])
assert 0.3 < float(fast.bias[-1].max() - fast.bias[-1].min()) < 0.9
fig, ax = plt.subplots(figsize=(6, 2.8))
for g, t in live.items():
    ax.plot(t.history.imbalance, label=f"gamma = {g}")
ax.set_xlabel("step")
ax.set_ylabel("imbalance")
ax.legend()
ax.set_title("live run, sigmoid gate", fontsize=9)
viz.show(
    fig,
    "A live run with the sigmoid gate: imbalance per step for several bias update speeds gamma.",
)


# %% [markdown]
# Try it: the gate and $\gamma$ of a live 80-step run (about a second per setting; $\gamma = 0$ is no
# balancing, 0.001 is the paper's value).


# %% tags=["nbval-ignore-output"]
def show_live(gate="sigmoid", gamma=0.01):
    t = live_run(gate, gamma)
    h = t.history
    print(
        f"{gate}, gamma={gamma}: imbalance over the last 20 steps {g3(np.mean(h.imbalance[-20:]))}, "
        f"train loss {g3(np.mean(h.bits_per_byte[-20:]))} bits/byte"
    )
    fig, axes = plt.subplots(1, 2, figsize=(7.3, 2.6))
    axes[0].plot(h.imbalance)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("imbalance")
    axes[1].imshow(
        np.array([l[0] for l in h.load]).T,
        aspect="auto",
        origin="lower",
        vmin=0,
        vmax=0.5,
        interpolation="nearest",
    )
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("expert")
    viz.show(
        fig,
        "A live run with the chosen gate and gamma: imbalance per step (left) and each expert's share of the load (right).",
    )


display(
    widgets.interactive(
        show_live,
        gate=widgets.Dropdown(options=["softmax", "sigmoid"], value="sigmoid", description="gate"),
        gamma=widgets.Dropdown(
            options=[0.0, 0.001, 0.003, 0.01, 0.03], value=0.01, description="gamma"
        ),
    )
)

# %% [markdown]
# ## 4. The sequence-wise loss on one batch
#
# DeepSeek-V3's loss is computed per sequence, $L_\mathrm{Bal} = \alpha \sum_i f_i P_i$; the Switch
# loss is the same expression over the whole batch. Divided by $\alpha$, both are 1 when the choices
# $f$ are balanced, whatever the probabilities $P$. When the choices collapse onto a set $S$ of $K$
# experts they are $(E/K)\sum_{i \in S} P_i$: they reach $E/K$ only if the probability mass collapses
# too. Evaluated on the live models' last batch (`dsim.balance.sequence_balance_loss` and
# `switch_loss`), with the probability mass of the two busiest experts:

# %% tags=["nbval-ignore-output", "anchor:seqloss", "remove-input"]
for g, t in live.items():
    r = t.model.layers[1].ffn.routing
    B, S = LIVE["batch_size"], LIVE["seq_len"]
    seq = balance.sequence_balance_loss(r, B, S, 1.0).item()
    switch = balance.switch_loss(r, 1.0).item()
    p = (r.scores / r.scores.sum(-1, keepdim=True)).mean(0)  # P_i over the batch
    busiest = torch.bincount(r.indices.flatten(), minlength=E).topk(K)[1]
    print(
        f"gamma={g}: sequence-wise L/alpha {g3(seq)}, Switch L/alpha {g3(switch)}, "
        f"P of the {K} busiest experts {g3(p[busiest].sum().item())} (uniform: {g3(K / E)})"
    )
    # Digits vary between CPUs (live runs, see above); the output is not compared. Checked instead,
    # what the text below says, with margins well beyond the spread seen (0.01 to 0.03):
    if g == 0.0:  # collapsed choices, spread probabilities: both losses far below E/K = 8
        assert 1.2 < switch < 3 and 1.2 < seq < 3 and p[busiest].sum() > K / E, (seq, switch)
    else:  # balanced batch (Switch near 1), each sequence still leaning (above 1)
        assert 0.8 < switch < 1.2 and seq > switch + 0.3, (seq, switch)


# %% [markdown]
# The sigmoid router collapses its *choices* while its normalised probabilities stay spread out, so
# both losses see far less than the worst case and push only gently: one reason the paper's tiny
# $\alpha$ does nothing here. With the bias update the batch is balanced (Switch value near 1) while
# each sequence, on its own, still leans on its favourite experts (sequence-wise value above 1): the
# gap the complementary loss is meant to watch.

# %% [markdown]
# ## 5. Explore the committed runs
#
# Gate, balancing method and, for the bias update, $\gamma$ (the paper's 0.001 or 10x faster); the
# output is read from `dsim/data/balance_runs.json`.


# %% tags=["nbval-ignore-output"]
def show_run(gate="sigmoid", method="bias update", gamma="0.01 (10x paper)"):
    key = {
        "none": "none",
        "Switch aux loss": "switch",
        "sequence-wise, paper alpha": "seq_paper",
        "sequence-wise, 100x alpha": "seq_strong",
    }.get(method)
    if key is None:
        key = "bias_paper" if gamma.startswith("0.001") else "bias_fast"
    r = RUNS[f"{gate}/{key}"]
    f = r["final"]
    print(
        f"{gate} gate, {r['label']}: imbalance {g3(f['imbalance'])}, entropy {g3(f['entropy'])}, "
        f"held-out {g3(f['val_bpb'])} bits/byte"
    )
    fig, axes = plt.subplots(1, 2, figsize=(7.3, 2.8))
    axes[0].plot(smooth(r["imbalance"]))
    axes[0].set_ylim(0.8, E / K + 0.5)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("imbalance (10-step mean)")
    heatmap(axes[1], r)
    viz.show(
        fig,
        "A committed run with the chosen gate and balancing: imbalance (left) and each expert's share of the load (right).",
    )


display(
    widgets.interactive(
        show_run,
        gate=widgets.Dropdown(options=["softmax", "sigmoid"], value="sigmoid", description="gate"),
        method=widgets.Dropdown(
            options=[
                "none",
                "Switch aux loss",
                "sequence-wise, paper alpha",
                "sequence-wise, 100x alpha",
                "bias update",
            ],
            value="bias update",
            description="method",
        ),
        gamma=widgets.Dropdown(
            options=["0.001 (paper)", "0.01 (10x paper)"],
            value="0.01 (10x paper)",
            description="gamma",
        ),
    )
)

# %% [markdown]
# ## 6. Group-limited routing
#
# With `n_expert_groups=4, n_limited_groups=2` each token first picks its 2 best groups of 4 experts
# (a group's score is the sum of its two best scores) and then its top-2 experts inside them. In
# DeepSeek-V3 the groups are nodes and the limit bounds the cross-node traffic of a token. The limit
# does not balance anything by itself; the group load (the share of assignments per group, 1 balanced,
# 2 when every token uses the same two groups) is a second imbalance to watch.

# %% tags=["anchor:groups", "remove-input"]
for m in ("none", "bias_fast"):
    f = RUNS[f"sigmoid/groups/{m}"]["final"]
    print(
        f"groups, {m:9}: expert imbalance {g3(f['imbalance'])}, group imbalance {g3(f['group_imbalance'])} "
        f"(max 2), held-out {g3(f['val_bpb'])} bits/byte"
    )
fig, axes = plt.subplots(1, 3, figsize=(7.3, 3))
for m in ("none", "bias_fast"):
    axes[0].plot(smooth(RUNS[f"sigmoid/groups/{m}"]["group_imbalance"]), label=m)
axes[0].set_xlabel("step")
axes[0].set_ylabel("group imbalance")
axes[0].legend()
for ax, m in zip(axes[1:], ("none", "bias_fast")):
    heatmap(ax, RUNS[f"sigmoid/groups/{m}"], f"4 groups, 2 allowed: {m}")
    for edge in (3.5, 7.5, 11.5):
        ax.axhline(edge, color="white", lw=0.8)
viz.show(
    fig,
    "Group-limited routing: imbalance between expert groups during training for each method, and each group's share of the load.",
)

# %% [markdown]
# ## 7. Capacity factor and token dropping
#
# With `capacity_factor=c` each expert takes at most $\lceil c\,TK/E \rceil$ assignments per batch; the
# rest are dropped (their combine weight is set to 0, the token keeps its residual and the shared
# expert). DeepSeek-V3 drops nothing; earlier MoEs used $c$ around 1 to 1.25. With $c = 1$ a collapsed
# router drops most of its assignments; a balanced one only its random excess.

# %% tags=["anchor:capacity", "remove-input"]
for m in ("none", "bias_fast"):
    capped, free = RUNS[f"sigmoid/capacity/{m}"]["final"], RUNS[f"sigmoid/{m}"]["final"]
    print(
        f"capacity 1.0, {m:9}: dropped {g3(capped['dropped_fraction'])} of the assignments; held-out "
        f"{g3(capped['val_bpb'])} bits/byte (without a capacity limit {g3(free['val_bpb'])})"
    )
fig, ax = plt.subplots(figsize=(6, 2.8))
for m in ("none", "bias_fast"):
    ax.plot(smooth(np.array(RUNS[f"sigmoid/capacity/{m}"]["dropped"]) / (TOKENS * K)), label=m)
ax.set_xlabel("step")
ax.set_ylabel("fraction dropped")
ax.legend()
ax.set_title("capacity factor 1.0", fontsize=9)
viz.show(
    fig,
    "Fraction of the (token, expert) assignments dropped at capacity factor 1.0 during training, for each balancing method.",
)

# %% tags=["nbval-ignore-output", "anchor:capacity-policy", "remove-input"]
# Which assignments a full expert drops: the lowest scores ("score") or the latest tokens ("position").
r = live[0.0].model.layers[1].ffn.routing
keep = {p: capacity_mask(r, E, 1.0, p) for p in ("score", "position")}
print(
    f"live batch, capacity 1.0: dropped {int((~keep['score']).sum())} (score policy) and "
    f"{int((~keep['position']).sum())} (position policy) of {r.indices.numel()}; they disagree on "
    f"{int((keep['score'] != keep['position']).sum())} assignments"
)
# The live model's digits vary between CPUs, so the output is not compared. Checked: the collapsed
# router overflows its experts (more than half of the assignments dropped); both policies drop the
# same number (it depends only on each expert's load), but not the same assignments.
assert int((~keep["score"]).sum()) == int((~keep["position"]).sum()) > r.indices.numel() // 2
assert int((keep["score"] != keep["position"]).sum()) > 0

# %% [markdown]
# ## 8. Multi-token prediction
#
# One MTP module (depth $D=1$) combines the main model's hidden state at position $i$ with the
# embedding of token $i+1$ and predicts token $i+2$, through its own transformer block and the shared
# output head. Its loss is added with weight $\lambda/D$: 0.3 for the first two thirds of the run and
# 0.1 after, DeepSeek-V3's schedule scaled to 300 steps. At inference the module can draft the token
# after next: the main head proposes token $t+1$, the MTP head drafts $t+2$, and one forward of the
# main model checks both. The acceptance rate is how often the main model, given its own proposal,
# agrees with the draft (`dsim.train.mtp_acceptance`, on held-out windows).

# %% tags=["anchor:mtp", "remove-input"]
mtp, ref = RUNS["sigmoid/mtp/bias_fast"], RUNS["sigmoid/bias_fast"]
f = mtp["final"]
print(
    f"acceptance of the drafted second token: {g3(f['mtp_acceptance'])} over {f['mtp_windows']} held-out windows"
)
print(
    f"  main head's proposal correct: {g3(f['mtp_main_accuracy'])}, draft correct: {g3(f['mtp_draft_accuracy'])}"
)
print(
    f"  tokens per main-model forward with one draft: 1 + acceptance = {g3(1 + f['mtp_acceptance'])}"
)
print(
    f"training loss over the last {TAIL} steps: main {g3(f['train_bpb'])} bits/byte, MTP {g3(f['mtp_bpb'])} bits/byte"
)
print(
    f"held-out main loss with MTP {g3(f['val_bpb'])}, without {g3(ref['final']['val_bpb'])} bits/byte"
)
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(smooth(np.array(mtp["loss"]) / np.log(2)), label="main loss (t+1)")
ax.plot(smooth(np.array(mtp["mtp_loss"]) / np.log(2)), label="MTP loss (t+2)")
ax.plot(smooth(np.array(ref["loss"]) / np.log(2)), label="main loss, run without MTP", ls=":")
switch_step = mtp["train_config"]["mtp_lambda_schedule"][0][0]
ax.axvline(switch_step, color="gray", lw=0.8)
ax.text(switch_step, ax.get_ylim()[1] * 0.97, " lambda 0.3 -> 0.1", fontsize=7, va="top")
ax.set_xlabel("step")
ax.set_ylabel("bits per byte (10-step mean)")
ax.legend(fontsize=8)
viz.show(
    fig,
    "Multi-token prediction: the main loss (next byte) and the MTP loss (the byte after) during training, next to the main loss of a run without MTP.",
)

# %% [markdown]
# The MTP loss can be *lower* than the main loss: to predict token $i+2$ the module sees the true token
# $i+1$ (its embedding) and adds a transformer block, so it has the main model's information plus one
# more layer. Its value for the main model is the extra training signal it sends through the shared
# trunk, embedding and head.
#
# Acceptance is agreement, not correctness: a barely trained model whose heads both predict a space
# agrees with itself often. Three live 60-step runs with MTP (seeds 0, 1, 2). How often the heads
# agree swings from run to run, but it is far above how often either head is right:

# %% tags=["nbval-ignore-output", "anchor:mtp-accept", "remove-input"]
# Three seeds: a model this early in training is sensitive to the last bit of its arithmetic, so
# its acceptance moves a lot between seeds (and between CPUs: 0.64 on one, 0.84 on another, same
# seed). What holds in every run is the gap between agreement and correctness.
accs = []
for seed in (0, 1, 2):
    short = Trainer(
        LIVE_MODEL.replace(n_mtp_layers=1),
        TrainConfig(**{**LIVE, "steps": 60, "seed": seed}, bias_update_speed=0.01, mtp_lambda=0.3),
    )
    short.run(progress=False)
    acc = mtp_acceptance(short.model, get_corpus("val"), context=64, windows=256, batch_size=64)
    accs.append(acc)
    print(
        f"seed {seed}, after 60 steps: acceptance {g3(acc.rate)}, main proposal correct "
        f"{g3(acc.main_accuracy)}, draft correct {g3(acc.draft_accuracy)} ({acc.n} windows)"
    )
rate = np.array([a.rate for a in accs])
print(
    f"acceptance {g3(rate.mean())} +- {g3(rate.std(ddof=1))} (mean and standard deviation over seeds); "
    f"the main head is right {g3(np.mean([a.main_accuracy for a in accs]))} of the time"
)
# The output is not compared (see above). Checked: in every run (3 seeds x 3 CPU kernel settings
# tried, acceptance 0.65 to 0.84) the heads agree at least 0.2 more often than the main head is
# right; 0.1 leaves room for a CPU we have not tried.
for a in accs:
    assert a.rate > a.main_accuracy + 0.1 and a.rate > a.draft_accuracy + 0.2, a

# %% [markdown]
# ## 9. Checkpoints resume bit-exactly
#
# `dsim.checkpoint` writes one safetensors file (no pickle) with the weights, the gate biases, AdamW's
# moments, the random generators, the configs and the history. Ten steps straight, or five, save,
# load, five more:

# %% tags=["anchor:checkpoint", "remove-input"]
import tempfile

from dsim.checkpoint import load_checkpoint, save_checkpoint

cfg = TrainConfig(**{**LIVE, "steps": 10}, bias_update_speed=0.01, seq_aux_alpha=1e-4)
straight = Trainer(LIVE_MODEL, cfg)
straight.run(progress=False)
half = Trainer(LIVE_MODEL, cfg)
half.run(5, progress=False)
with tempfile.TemporaryDirectory() as d:
    path = save_checkpoint(half, Path(d) / "run.safetensors")
    resumed = load_checkpoint(path)
resumed.run(progress=False)
print(
    "identical losses:",
    resumed.history.loss == straight.history.loss,
    "| identical biases:",
    all((a == b).all() for a, b in zip(resumed.history.bias, straight.history.bias)),
)

# %% [markdown]
# ## 10. Worked questions
#
# 1. *How collapsed is the unbalanced sigmoid router, and what would that cost under expert
#    parallelism?*
# 2. *Why does the paper's $\gamma$ balance the softmax gate within these 300 steps but not the
#    sigmoid gate?*
# 3. *What does a capacity factor of 1.0 drop with and without balancing?*
# 4. *How many tokens does one main-model forward yield with the MTP draft?*

# %% tags=["anchor:answers", "remove-input"]
f = RUNS["sigmoid/none"]["final"]
print(
    f"1. imbalance {g3(f['imbalance'])} of a possible {E // K}: the busiest expert gets {g3(f['imbalance'] / E)} "
    f"of the assignments instead of {g3(1 / E)}; with one expert per device the MoE layer takes "
    f"{g3(f['imbalance'])}x as long as a balanced one."
)
for gate in ("softmax", "sigmoid"):
    b = np.array(RUNS[f"{gate}/bias_fast"]["bias_snapshots"][-1])
    print(
        f"2. {gate}: the fast run's biases spread over {g3(b.max() - b.min())}; at gamma = 0.001 two biases moving "
        f"apart need {g3((b.max() - b.min()) / 2 / 0.001)} steps; imbalance at the paper's gamma: "
        f"{g3(RUNS[f'{gate}/bias_paper']['final']['imbalance'])}"
    )
for m in ("none", "bias_fast"):
    print(
        f"3. {m}: {g3(RUNS[f'sigmoid/capacity/{m}']['final']['dropped_fraction'])} of the assignments dropped"
    )
p = RUNS["sigmoid/mtp/bias_fast"]["final"]["mtp_acceptance"]
print(f"4. 1 + {g3(p)} = {g3(1 + p)} tokens per forward (greedy, one draft)")
