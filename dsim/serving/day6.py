"""DeepSeek's published day of serving (V3/R1 inference system overview, open-source week day 6),
reproduced by the serving simulator from the model's config and the published layout.

Published (24 h from 2025-02-27 12:00 UTC+8, H800 nodes of 8 GPUs): prefill units of 4 nodes
(EP32), decode units of 18 nodes (EP144), 32 redundant experts in each; 608B input tokens of which
342B (56.3 %) hit the on-disk KV cache, 168B output tokens at 20-22 tokens/s per user, an average
KV length of 4,989 tokens per output token; 73.7K input tokens/s per node in prefill (cache hits
included) and 14.8K output tokens/s per node in decode, averaged over the day; peak 278 nodes,
average 226.75; $87,072 per day at $2 per GPU-hour.

What the simulator predicts is each unit's *capacity*: the throughput of a unit kept full with
requests of the day's mean shape, run through the scheduler step by step. The published figures
are averages over the nodes *deployed*, which the post does not say were full. The one published
number about that is the average node count: the day's tokens at the predicted capacities need
`nodes_at_capacity` nodes, so the deployment ran on average at u = nodes_at_capacity / 226.75 of
capacity. The predicted day averages are capacity x u for both pools. This checks how capacity
splits between prefill and decode (their ratio), and states the absolute gap (1 / u) apart.

Assumptions (each one a parameter of `reproduce_day6`):
- request shape: prompt and output lengths from the published totals (dsim.cost.plan.deepseek_v3:
  P + D/2 = 4,989 and P / D = 608 / 168), all equal in the base case (`length_cv` = 0: the
  post gives only means) and lognormal with coefficient of variation 0.5 and 1 as variants;
  every request's first 56.25 % of prompt tokens is a prefix already in the cache;
- decode attention runs as one fused pass over the cache (FlashMLA), not dsim.model's kernels;
- MTP with one draft token accepted with probability 0.875 (the V3 report: 85-90 %);
- experts balanced across GPUs (EPLB), two micro-batches overlapping the all-to-all;
- fp8 matmuls, bf16 KV cache, 4 GB per GPU reserved; prefill chunks of 16K tokens per GPU;
- prefill chunks balanced across the unit's GPUs (`Pool.balance_prefill`: a GPU whose chunk
  attends to a longer context takes fewer tokens, so that no GPU's step outlasts the median),
  as DeepSeek's prefill load balancer aims to balance core-attention work; one variant without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dsim.config import preset
from dsim.cost.plan.deepseek_v3 import DEEPSEEK_V3_SERVING, deepseek_v3_workload
from dsim.serving.engine import Pool, Simulator
from dsim.serving.metrics import summarize
from dsim.serving.prefix_cache import PrefixCache
from dsim.serving.step_cost import StepCost
from dsim.serving.workload import Request, lognormal_lengths

# the base case, two spreads of request lengths, and the widest spread without the prefill
# balancer: (key, length_cv, balance_prefill)
VARIANTS = (
    ("length_cv=0", 0.0, True),
    ("length_cv=0.5", 0.5, True),
    ("length_cv=1", 1.0, True),
    ("length_cv=1,unbalanced", 1.0, False),
)
DATA = Path(__file__).resolve().parents[1] / "data" / "serve_day6.json"
DAY6 = dict(
    DEEPSEEK_V3_SERVING,
    day_s=86400,
    peak_nodes=278,
    average_nodes=226.75,
    cost_per_day=87072,
    price_per_gpu_hour=2.0,
    gpus_per_node=8,
)


def day6_requests(
    rate: float, n: int, length_cv: float, seed: int, output_tokens: int | None = None
) -> list[Request]:
    """n Poisson requests of the day's mean shape; the first cache-hit fraction of each prompt is
    a prefix (its own id) that the warmed cache holds."""
    w = deepseek_v3_workload()
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))

    def lengths(mean: float) -> np.ndarray:  # at least 2 tokens, at most the 128K context
        return np.clip(lognormal_lengths(rng, mean, length_cv, n, "length"), 2, 131072)

    prompts = lengths(w["prompt"])
    outputs = lengths(w["output"]) if output_tokens is None else np.full(n, output_tokens)
    hits = np.floor(w["cache_hit"] * prompts).astype(np.int64)
    return [
        Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]), i, int(hits[i]))
        for i in range(n)
    ]


def _units(decode_attention: str) -> tuple[StepCost, StepCost]:
    args, r = preset("deepseek-v3"), DAY6
    pre = StepCost(args, r["gpu"], r["prefill"]["n_gpus"], r["prefill"]["ep"],
                   redundant_experts=r["prefill"]["redundant_experts"])  # fmt: skip
    dec = StepCost(args, r["gpu"], r["decode"]["n_gpus"], r["decode"]["ep"],
                   redundant_experts=r["decode"]["redundant_experts"],
                   decode_attention=decode_attention)  # fmt: skip
    return pre, dec


def _pools(pre: StepCost, dec: StepCost, prefill_units: int, balance_prefill: bool) -> list[Pool]:
    """The published layout: `prefill_units` prefill units of 32 GPUs (one attention rank each,
    chunks of 16K tokens) and one decode unit of 144 GPUs."""
    r = DAY6
    n_pre, n_dec = r["prefill"]["n_gpus"], r["decode"]["n_gpus"]
    return [
        Pool("prefill", prefill_units, n_pre, n_pre, pre, pre.kv_capacity_tokens,
             chunk_tokens=16384, balance_prefill=balance_prefill),
        Pool("decode", 1, n_dec, n_dec, dec, dec.kv_capacity_tokens, max_batch=512),
    ]  # fmt: skip


def _warm_cache(reqs: list[Request]) -> PrefixCache:
    cache = PrefixCache()
    for q in reqs:
        cache.insert(q.prefix_id, q.prefix_tokens)
    cache.lookup_tokens = cache.hit_tokens = 0
    return cache


def prefill_capacity(
    n: int = 20000,
    length_cv: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    balance_prefill: bool = True,
) -> dict[str, Any]:
    """Input tokens/s per node of one prefill unit kept full (requests arrive faster than it
    serves; each wants one token, so the decode side is idle)."""
    pre, dec = _units("flashmla")
    r = DAY6
    nodes = r["prefill"]["n_gpus"] / r["gpus_per_node"]
    guess = 130e3 * nodes / deepseek_v3_workload()["prompt"]  # requests/s: above capacity
    reqs = day6_requests(2 * guess, n, length_cv, seed, output_tokens=1)
    pools = _pools(pre, dec, 1, balance_prefill)
    trace = Simulator(pools, prefix_cache=_warm_cache(reqs), seed=seed).run(reqs, progress)
    steps = np.array(trace.steps["prefill"], dtype=float)
    # the unit is full while requests keep arriving (twice as fast as it serves): new tokens
    # prefilled from the arrival of the tenth request to the last arrival, counted with their
    # cache hits as prompt tokens (DeepSeek's convention)
    t0, t1 = float(trace.arrival[n // 10]), float(trace.arrival.max())
    inside = (steps[:, 0] >= t0) & (steps[:, 1] <= t1)
    span = steps[inside, 1].max() - steps[inside, 0].min()
    new = steps[inside, 2].sum() / span / nodes
    per_prompt = trace.prompt.sum() / (trace.prompt.sum() - trace.hit_tokens.sum())
    return dict(
        tokens_per_s_per_node=float(new * per_prompt),
        new_tokens_per_s_per_node=float(new),
        prefix_hit_rate=trace.prefix_hit_rate,
        requests=n,
        mean_step_s=float(np.mean(steps[:, 1] - steps[:, 0])),
    )


def decode_capacity(
    n: int = 40000,
    length_cv: float = 0.0,
    mtp_acceptance: float = 0.875,
    decode_attention: str = "flashmla",
    seed: int = 0,
    progress: bool = False,
    balance_prefill: bool = True,
) -> dict[str, Any]:
    """Output tokens/s per node of one decode unit kept full (more requests arrive than it
    serves; each rank's batch is bounded by its KV cache), and what a user then sees."""
    pre, dec = _units(decode_attention)
    r, w = DAY6, deepseek_v3_workload()
    nodes = r["decode"]["n_gpus"] / r["gpus_per_node"]
    # about the KV-bound capacity: sequences per rank x ranks / seconds per sequence, then 1.3 x
    per_rank = dec.kv_capacity_tokens / r["kv_length_per_output_token"]
    rate = 1.3 * per_rank * r["decode"]["n_gpus"] * 25 / w["output"]
    reqs = day6_requests(rate, n, length_cv, seed)
    pools = _pools(pre, dec, 8, balance_prefill)
    sim = Simulator(pools, mtp_draft_tokens=1, mtp_acceptance=mtp_acceptance,
                    prefix_cache=_warm_cache(reqs), seed=seed)  # fmt: skip
    trace = sim.run(reqs, progress)
    steps = np.array(trace.steps["decode"], dtype=float)
    # the window in which the unit was full: from when its batch first reached 90 % of its
    # largest to the last arrival
    t1 = float(trace.arrival.max())
    before = steps[:, 1] <= t1
    if not before.any():
        raise ValueError(f"n_decode={n} requests arrive before the decode unit steps once")
    full = before & (steps[:, 4] >= 0.9 * steps[before, 4].max())
    t0 = steps[full, 0].min()
    inside = (steps[:, 1] >= t0) & (steps[:, 1] <= t1)
    rep = summarize(trace)
    return dict(
        tokens_per_s_per_node=float(steps[inside, 3].sum() / (t1 - t0) / nodes),
        sequences_per_gpu=float(steps[inside, 4].mean() / r["decode"]["n_gpus"]),
        mean_step_s=float(np.mean(steps[inside, 1] - steps[inside, 0])),
        tokens_per_s_per_user=rep.tokens_per_s_per_user,
        tpot_s=rep.tpot_s,
        preemptions=rep.preemptions,
        requests=n,
        window_s=(float(t0), t1),
    )


def reproduce_day6(
    n_prefill: int = 20000,
    n_decode: int = 40000,
    length_cv: float = 0.0,
    mtp_acceptance: float = 0.875,
    seed: int = 0,
    progress: bool = False,
    balance_prefill: bool = True,
) -> dict[str, Any]:
    """The day-6 table: capacities, the utilisation the node count implies, predicted and
    published day averages (see the module docstring)."""
    r = DAY6
    pre = prefill_capacity(n_prefill, length_cv, seed, progress, balance_prefill)
    dec = decode_capacity(
        n_decode, length_cv, mtp_acceptance, "flashmla", seed, progress, balance_prefill
    )
    input_rate = r["input_tokens"] / r["day_s"]
    output_rate = r["output_tokens"] / r["day_s"]
    nodes_prefill = input_rate / pre["tokens_per_s_per_node"]
    nodes_decode = output_rate / dec["tokens_per_s_per_node"]
    u = (nodes_prefill + nodes_decode) / r["average_nodes"]
    pub_pre = r["prefill"]["published_tokens_per_s_per_node"]
    pub_dec = r["decode"]["published_tokens_per_s_per_node"]
    out = dict(
        assumptions=dict(
            length_cv=length_cv,
            balance_prefill=balance_prefill,
            mtp_draft_tokens=1,
            mtp_acceptance=mtp_acceptance,
            decode_attention="flashmla",
            prefill_chunk_tokens=16384,
            prefix_cache="warm: every request's cache-hit prefix is held",
            seed=seed,
        ),  # fmt: skip
        published=dict(
            prefill_tokens_per_s_per_node=pub_pre,
            decode_tokens_per_s_per_node=pub_dec,
            tokens_per_s_per_user=list(r["output_tokens_per_s_per_user"]),
            average_nodes=r["average_nodes"],
            peak_nodes=r["peak_nodes"],
            cost_per_day=r["cost_per_day"],
        ),
        prefill=pre,
        decode=dec,
        nodes_at_capacity=dict(prefill=nodes_prefill, decode=nodes_decode),
        utilisation=u,
        predicted=dict(
            prefill_tokens_per_s_per_node=pre["tokens_per_s_per_node"] * u,
            decode_tokens_per_s_per_node=dec["tokens_per_s_per_node"] * u,
        ),
    )
    out["error"] = dict(
        prefill=out["predicted"]["prefill_tokens_per_s_per_node"] / pub_pre - 1,
        decode=out["predicted"]["decode_tokens_per_s_per_node"] / pub_dec - 1,
        prefill_capacity=pre["tokens_per_s_per_node"] / pub_pre - 1,
        decode_capacity=dec["tokens_per_s_per_node"] / pub_dec - 1,
    )
    out["cost_per_day_at_capacity"] = (
        (nodes_prefill + nodes_decode) * r["gpus_per_node"] * 24 * r["price_per_gpu_hour"]
    )
    return out


def load_day6(path: str | Path = DATA) -> dict[str, Any]:
    """The committed reproduction (python -m dsim.serving.day6 --out PATH writes it)."""
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="DeepSeek's day of serving, reproduced")
    p.add_argument("--out", default=str(DATA))
    p.add_argument("--decode-requests", type=int, default=40000)
    p.add_argument("--prefill-requests", type=int, default=20000)
    ns = p.parse_args()
    res = {
        key: reproduce_day6(
            ns.prefill_requests, ns.decode_requests, cv, progress=True, balance_prefill=bal
        )
        for key, cv, bal in VARIANTS
    }
    Path(ns.out).write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res.items():
        print(k, json.dumps(dict(error=v["error"], utilisation=v["utilisation"])))
