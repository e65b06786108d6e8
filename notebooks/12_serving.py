# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Serving
#
# The earlier chapters priced a step: the time of one decode or prefill step of a batch of a given
# shape. A served model meets requests instead, arriving at random, each with its own prompt and
# answer length, and is judged by how long its users wait: the time to the first token (TTFT) and
# the time per output token after it (TPOT), at the 50th and 90th percentile, at a load. This
# notebook runs requests through `dsim.serving`, a continuous-batching scheduler whose step times
# come from dsim's time model (`StepCost`), and asks what load, a prefix cache, MTP speculative
# decoding and disaggregated prefill and decode do to those latencies. Everything is seeded.

# %% tags=["anchor:setup"]
# %matplotlib inline
import math
from pathlib import Path

import numpy as np
from IPython.display import display

import dsim
from dsim import viz
from dsim.config import preset
from dsim.serving import (
    ConstantStepCost,
    Pool,
    PrefixCache,
    Simulator,
    StepCost,
    poisson_requests,
    summarize,
)

viz.setup()
answer = viz.Answers(chapter=12)
v3 = preset("deepseek-v3")
# One node of 8 H200s: experts spread over all 8 (EP8), attention data-parallel (8 ranks), fp8
# weights, a bf16 KV cache, decode attention as one fused pass over the cache (FlashMLA).
step = StepCost(v3, "H200", n_gpus=8, decode_attention="flashmla")
kv_cap = step.kv_capacity_tokens  # per rank, next to the weights and activations


def node(role="both", units=1, chunk_tokens=4096):
    """`units` nodes of 8 H200s in one role, each an 8-rank expert-parallel unit."""
    return Pool(role, units, 8, 8, step, kv_cap, max_batch=128, chunk_tokens=chunk_tokens)


def ms(x, digits=0):
    return f"{1e3 * x:,.{digits}f} ms"


print(f"{v3.name} on 8 x H200: KV cache for {kv_cap:,} tokens per rank")

# %% [markdown]
# ## 1. From steady state to requests
#
# Chapter 8's planner sizes a deployment for a steady batch: so many sequences of so many tokens,
# one step after another. Real traffic is a stream: requests arrive at random (here a Poisson
# process of rate $\lambda$), prompts and answers vary in length (lognormal), and a request that
# arrives while the GPUs are busy waits. Averages hide that wait; percentiles of TTFT and TPOT show
# it, and they grow without bound as the load approaches what the system can serve.
#
# The scheduler (`dsim/serving/engine.py`) runs every rank of a unit in lock step. Each step it
# admits waiting sequences while the batch and the KV cache have room, decodes every running
# sequence once (1 token, plus accepted MTP drafts), and fills the rest of a token budget with
# chunks of waiting prompts (chunked prefill); a prompt's last chunk gives its first token. The
# step lasts as long as the busiest rank's step, priced by `StepCost` for its shape.

# %% [markdown]
# ## 2. Latency against load
#
# Chat-like requests (prompts of 1,000 tokens, answers of 250, both lognormal with a coefficient
# of variation of 0.5) arrive at rates from 1 to 16 per second at one node.

# %% tags=["anchor:load-fig", "remove-input"]
rates = [1, 2, 4, 6, 8, 10, 12, 14, 16]
load, offered = {}, {}
for rate in rates:
    reqs = poisson_requests(rate, 800, 1000, 250, prompt_cv=0.5, output_cv=0.5, seed=rate)
    offered[rate] = rate * np.mean([q.output_tokens for q in reqs])  # output tokens/s asked
    load[rate] = summarize(Simulator([node()], seed=0).run(reqs))
fig, (ax1, ax2) = viz.figure(1, 2, height=2.8)
for q, style in (("p50", "-"), ("p90", "--")):
    ax1.plot(rates, [1e3 * load[r].ttft_s[q] for r in rates], style, marker=".", label=q)
    ax2.plot(rates, [1e3 * load[r].tpot_s[q] for r in rates], style, marker=".", label=q)
ax1.set(xlabel="arrival rate (requests/s)", ylabel="TTFT (ms)")
ax2.set(xlabel="arrival rate (requests/s)", ylabel="TPOT (ms)")
ax1.legend()
ax2.legend()
viz.show(
    fig,
    "DeepSeek-V3 on one node of 8 H200s, colocated prefill and decode: time to first token "
    "(left) and time per output token (right) against the arrival rate, 800 requests per point.",
)

# %% tags=["anchor:load-numbers"]
delivered = {r: load[r].output_tokens_per_s_per_node for r in rates}
kept_up = max(r for r in rates if delivered[r] >= 0.95 * offered[r])
for r in (1, rates[-1]):
    print(
        f"{r:>2} req/s: TTFT p50 {ms(load[r].ttft_s['p50'])}, p90 {ms(load[r].ttft_s['p90'])}; "
        f"TPOT p50 {ms(load[r].tpot_s['p50'])}, p90 {ms(load[r].tpot_s['p90'])}"
    )
for r in (kept_up, rates[-1]):
    print(f"{r:>2} req/s: {offered[r]:,.0f} output tokens/s asked, {delivered[r]:,.0f} delivered")
fast = [r for r in rates if load[r].tpot_s["p90"] <= 0.1]
answer(
    1,
    f"p90 TPOT stays within 100 ms up to {max(fast)} requests/s; the node keeps up with the "
    f"load up to {kept_up} requests/s and delivers {delivered[rates[-1]]:,.0f} output tokens/s "
    f"at {rates[-1]}",
)

# %% [markdown]
# TTFT stays short even at saturation because this scheduler gives prompts the first claim on the
# step's token budget; the queue forms in front of decode instead, and TPOT (which counts the time
# a prefilled request waits for a place in the batch) takes the load.
#
# **Queueing in one formula.** A single server that takes a fixed time $D$ per request, fed by
# Poisson arrivals at utilisation $\rho = \lambda D$ (the M/D/1 queue), makes a request wait on
# average
#
# $$W_q = \frac{\rho D}{2 (1 - \rho)}$$
#
# before its service starts: nothing at light load, without bound as $\rho \to 1$. The simulator
# with one rank, a batch of one and a constant step time is that queue; it must reproduce the
# formula.

# %% tags=["anchor:md1"]
D = 0.05  # seconds per request
for rho in (0.3, 0.5, 0.7):
    reqs = poisson_requests(rho / D, 20000, 100, 1, seed=7)
    one = Pool("both", 1, 1, 1, ConstantStepCost(D), 1e9, max_batch=1, chunk_tokens=100)
    trace = Simulator([one]).run(reqs)
    waited = float(np.mean(trace.first_token - trace.arrival - D))
    formula = rho * D / (2 * (1 - rho))
    print(f"rho {rho}: simulated wait {ms(waited, 1)}, M/D/1 {ms(formula, 1)}")
    assert math.isclose(waited, formula, rel_tol=0.1), (rho, waited, formula)
answer(2, f"at rho = 0.7 the formula gives {ms(formula, 1)}; the simulator {ms(waited, 1)}")

# %% [markdown]
# Little's law, $L = \lambda W$, holds for any stable system: the time-average number of requests
# in the system equals the arrival rate times the mean time in it. The report computes both sides
# from the trace, independently (occupancy over time against arrivals and latencies), so their
# agreement checks the simulator's bookkeeping.

# %% tags=["anchor:little"]
rep = load[8]
L, lam_w = rep.littles_law["L"], rep.littles_law["lambda_W"]
assert math.isclose(L, lam_w, rel_tol=1e-6), (L, lam_w)
print(f"at 8 req/s: L = {L:.1f} requests in the system, lambda W = {lam_w:.1f}")

# %% [markdown]
# ## 3. The prefix cache
#
# Many prompts start alike: a system prompt, a shared document, the earlier turns of a
# conversation. A prefix cache keeps the KV of such prefixes, so a later prompt computes only what
# follows (its new tokens still attend to the cached ones). Here long prompts (4,000 tokens) at 6
# requests/s share one of 16 prefixes over half or nine tenths of their length.

# %% tags=["anchor:prefix"]
rows, prefix = [], {}
for shared in (0.0, 0.5, 0.9):
    reqs = poisson_requests(
        6, 600, 4000, 100, prompt_cv=0.5, output_cv=0.5,
        shared_prefix=shared, n_prefixes=16 if shared else 0, seed=3,
    )  # fmt: skip
    for cached in (False, True) if shared else (False,):
        sim = Simulator([node()], prefix_cache=PrefixCache() if cached else None, seed=0)
        r = prefix[shared, cached] = summarize(sim.run(reqs))
        rows.append([
            f"{shared:.0%}", "yes" if cached else "no", f"{r.prefix_hit_rate:.1%}",
            ms(r.ttft_s["p50"]), ms(r.ttft_s["p90"]), ms(r.tpot_s["p50"]),
        ])  # fmt: skip
viz.table(rows, ["shared prefix", "cache", "hit rate", "TTFT p50", "TTFT p90", "TPOT p50"])

# %% tags=["anchor:prefix-numbers"]
base, hit = prefix[0.9, False], prefix[0.9, True]
answer(
    3,
    f"with 90 % shared prefixes the cache hits {hit.prefix_hit_rate:.1%} of prompt tokens and "
    f"cuts p50 TTFT from {ms(base.ttft_s['p50'])} to {ms(hit.ttft_s['p50'])} "
    f"({base.ttft_s['p50'] / hit.ttft_s['p50']:.1f}x)",
)

# %% [markdown]
# The hit rate is a little below the shared fraction: the first prompt with each prefix misses,
# and a prompt's last token is always computed. Fewer prefill tokens shorten the chunks that share
# steps with decode, so TPOT falls as well.
#
# ## 4. MTP speculative decoding
#
# DeepSeek-V3's multi-token prediction module drafts the token after next; the next step verifies
# it together with a new token. A step then runs two tokens per sequence and emits two when the
# draft is right, one when it is wrong. The technical report (section 5.4.3) measures an acceptance
# of 85-90 % for the second token, and 1.8 times the tokens per second. The simulator draws each
# draft's acceptance from one seeded generator:

# %% tags=["anchor:mtp", "remove-input"]
accept = [0.0, 0.6, 0.85, 0.9]
# the same requests as section 2's runs at 6 and 16 requests/s: those runs are the no-MTP case
moderate = poisson_requests(6, 800, 1000, 250, prompt_cv=0.5, output_cv=0.5, seed=6)
flood = poisson_requests(16, 800, 1000, 250, prompt_cv=0.5, output_cv=0.5, seed=16)
mtp = {None: (load[6].tpot_s["p50"], load[16].output_tokens_per_s_per_node)}
for p in accept:
    kw = dict(mtp_draft_tokens=1, mtp_acceptance=p)
    tpot = summarize(Simulator([node()], seed=0, **kw).run(moderate)).tpot_s["p50"]
    cap = summarize(Simulator([node()], seed=0, **kw).run(flood)).output_tokens_per_s_per_node
    mtp[p] = (tpot, cap)
fig, (ax1, ax2) = viz.figure(1, 2, height=2.6)
ax1.plot(accept, [1e3 * mtp[p][0] for p in accept], marker="o", label="1 draft token")
ax2.plot(accept, [mtp[p][1] for p in accept], marker="o", label="1 draft token")
ax1.axhline(1e3 * mtp[None][0], color="gray", ls="--", label="no MTP")
ax2.axhline(mtp[None][1], color="gray", ls="--", label="no MTP")
ax1.set(xlabel="draft acceptance", ylabel="TPOT p50 at 6 req/s (ms)")
ax2.set(xlabel="draft acceptance", ylabel="output tokens/s per node at 16 req/s")
ax1.legend()
ax2.legend()
viz.show(
    fig,
    "MTP with one draft token on one node of 8 H200s: median time per output token at a "
    "moderate load (left) and throughput past saturation (right) against the draft's acceptance.",
)

# %% tags=["anchor:mtp-numbers"]
for p in [None] + accept:
    name = "no MTP" if p is None else f"acceptance {p:.2f}"
    print(f"{name:>16}: TPOT p50 {ms(mtp[p][0])}, {mtp[p][1]:,.0f} output tokens/s per node")
answer(
    4,
    f"at 85 % acceptance TPOT falls {mtp[None][0] / mtp[0.85][0]:.2f}x and throughput at 16 requests/s "
    f"rises {mtp[0.85][1] / mtp[None][1]:.2f}x; at 0 % a wasted draft costs "
    f"{mtp[0.0][0] / mtp[None][0] - 1:.0%} in TPOT",
)

# %% [markdown]
# ## 5. Disaggregation
#
# In a colocated node, a step that carries a prompt chunk is slow for every sequence decoding
# beside it. Disaggregation gives prefill and decode their own nodes: the prefill node hands each
# finished prompt's KV cache to a decode node, whose steps then hold decode only. Same 16 GPUs,
# same load (prompts of 2,000 tokens, answers of 200, 10 requests/s): two colocated nodes, or one
# prefill and one decode node. The hand-over moves a prompt's KV cache over one 400 Gb/s NIC.

# %% tags=["anchor:disagg"]
reqs = poisson_requests(10, 1000, 2000, 200, prompt_cv=0.5, output_cv=0.5, seed=5)
transfer_s = step.kv_bytes_per_token * 2000 / 50e9  # 400 Gb/s = 50 GB/s
systems = {
    "colocated, 2 nodes": Simulator([node(units=2)], seed=0),
    "1 prefill + 1 decode node": Simulator(
        [node("prefill", chunk_tokens=8192), node("decode")], kv_transfer_s=transfer_s, seed=0
    ),
}
split = {name: summarize(sim.run(reqs)) for name, sim in systems.items()}
viz.table(
    [
        [name, ms(r.ttft_s["p50"]), ms(r.ttft_s["p90"]), ms(r.tpot_s["p50"]), ms(r.tpot_s["p90"])]
        for name, r in split.items()
    ],
    ["system", "TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90"],
)
print(f"KV hand-over of a 2,000-token prompt: {ms(transfer_s)}")

# %% tags=["anchor:disagg-numbers"]
col, dis = split.values()
answer(
    5,
    f"disaggregation cuts p50 TPOT from {ms(col.tpot_s['p50'])} to {ms(dis.tpot_s['p50'])} "
    f"and moves p50 TTFT from {ms(col.ttft_s['p50'])} to {ms(dis.ttft_s['p50'])}",
)

# %% [markdown]
# ## 6. A real check
#
# `bench/serve_measure.py` serves a Poisson trace with `dsim.model` in real time
# (`dsim.serving.real.serve_trace`: FIFO, four cache slots, each iteration one whole-prompt prefill
# and one batched decode of the running sequences), then times isolated decode and prefill steps.
# A linear step model is fitted to the isolated steps only; the simulator runs the same trace with
# the loop's policy. The committed run is dsim's tiny model on this repository's CPU.

# %% tags=["anchor:realcheck"]
from dsim.serving.realcheck import compare_measured, load_measured

measured = load_measured()
check = compare_measured(measured)
rows = [
    [name, f"{check[key]['measured_s'] * 1e3:.2f}", f"{check[key]['simulated_s'] * 1e3:.2f}",
     f"{check[key]['error']:+.0%}"]
    for name, key in (
        ("TTFT p50", "ttft_p50"), ("TTFT p90", "ttft_p90"), ("TPOT p50", "tpot_p50"),
        ("TPOT p90", "tpot_p90"), ("end-to-end p50", "e2e_p50"), ("end-to-end p90", "e2e_p90"),
    )
]  # fmt: skip
display(viz.table(rows, ["tiny model, CPU", "measured (ms)", "simulated (ms)", "error"]))
print(
    f"{len(measured['trace'])} requests, {check['steps']['decode']} decode and "
    f"{check['steps']['prefill']} prefill steps; the fitted step model on the loop's own steps: "
    f"median error {check['step_error_median']['decode']:+.0%} (decode), "
    f"{check['step_error_median']['prefill']:+.0%} (prefill)"
)

# %% tags=["anchor:realcheck-gpu"]
# The same loop on an H100 (DeepSeek-V3's widths, 4 layers, 32 experts, 200 requests at 8/s):
# step times fitted on its isolated steps, then from dsim's time model with nothing fitted.
gpu_run = load_measured(Path(dsim.__file__).parent / "data" / "serve_real_h100.json")
fitted = compare_measured(gpu_run)
modelled = compare_measured(gpu_run, timer="time-model", gpu="H100-SXM")
rows = [
    [name, f"{fitted[key]['measured_s'] * 1e3:.1f}", f"{fitted[key]['simulated_s'] * 1e3:.1f}",
     f"{fitted[key]['error']:+.0%}", f"{modelled[key]['simulated_s'] * 1e3:.1f}",
     f"{modelled[key]['error']:+.0%}"]
    for name, key in (
        ("TTFT p50", "ttft_p50"), ("TTFT p90", "ttft_p90"), ("TPOT p50", "tpot_p50"),
        ("TPOT p90", "tpot_p90"), ("end-to-end p50", "e2e_p50"), ("end-to-end p90", "e2e_p90"),
    )
]  # fmt: skip
header = ["H100", "measured (ms)", "fitted steps (ms)", "error", "time model (ms)", "error"]
display(viz.table(rows, header))

# %% [markdown]
# ## 7. DeepSeek's day of serving
#
# DeepSeek published one day of its V3/R1 inference system (open-source week, day 6): prefill
# units of 4 nodes and decode units of 18 nodes of H800s, a prefix cache on disk that 56.3 % of
# input tokens hit, 73.7K input tokens/s per prefill node and 14.8K output tokens/s per decode
# node, averaged over the day. `dsim.serving.day6` reproduces the two throughputs with this
# simulator: it runs a prefill unit and a decode unit, each kept full with requests of the day's
# mean shape, for their capacities; the day's tokens at those capacities need some number of
# nodes, and the published average of 226.75 nodes gives the share of capacity the deployment ran
# at. The simulated day averages are the capacities times that share, for three spreads of request
# lengths (the coefficient of variation of a lognormal). The table is the committed run,
# `dsim/data/serve_day6.json` (`python -m dsim.serving.day6` makes it).

# %% tags=["anchor:day6"]
from dsim.serving.day6 import load_day6

day6 = load_day6()  # one reproduction per spread of request lengths (lognormal cv)
runs = {key.split("=")[1].replace(",", ", "): run for key, run in day6.items()}
pub = runs["0"]["published"]
lo, hi = pub["tokens_per_s_per_user"]


def _row(name, published, values):
    return [name, published] + values


rows = [
    _row("prefill capacity, input tokens/s per node", "",
         [f"{r['prefill']['tokens_per_s_per_node']:,.0f}" for r in runs.values()]),
    _row("decode capacity, output tokens/s per node", "",
         [f"{r['decode']['tokens_per_s_per_node']:,.0f}" for r in runs.values()]),
    _row("nodes the day's tokens need at capacity", f"{pub['average_nodes']:g} deployed",
         [f"{sum(r['nodes_at_capacity'].values()):.0f}" for r in runs.values()]),
    _row("share of capacity used (u)", "not published",
         [f"{r['utilisation']:.2f}" for r in runs.values()]),
    _row("prefill day average, input tokens/s per node",
         f"{pub['prefill_tokens_per_s_per_node']:,.0f}",
         [f"{r['predicted']['prefill_tokens_per_s_per_node']:,.0f} "
          f"({r['error']['prefill']:+.0%})" for r in runs.values()]),
    _row("decode day average, output tokens/s per node",
         f"{pub['decode_tokens_per_s_per_node']:,.0f}",
         [f"{r['predicted']['decode_tokens_per_s_per_node']:,.0f} "
          f"({r['error']['decode']:+.0%})" for r in runs.values()]),
    _row("decode: sequences per GPU", "",
         [f"{r['decode']['sequences_per_gpu']:.0f}" for r in runs.values()]),
    _row("decode: output tokens/s per user", f"{lo}-{hi}",
         [f"{r['decode']['tokens_per_s_per_user']:.1f}" for r in runs.values()]),
]  # fmt: skip
display(viz.table(rows, ["DeepSeek-V3 on H800, 24 h", "published"] + [f"cv {cv}" for cv in runs]))
base = runs["0"]
answer(
    6,
    f"with equal request lengths, u = {base['utilisation']:.2f}: prefill "
    f"{base['error']['prefill']:+.1%}, decode {base['error']['decode']:+.1%} from the published; "
    f"the units' capacities are {base['error']['prefill_capacity']:+.0%} (prefill) and "
    f"{base['error']['decode_capacity']:+.0%} (decode) over the day averages",
)

# %% [markdown]
# ## Answers

# %% tags=["anchor:answers"]
answer
