"""What a serving run delivered: latency percentiles, throughput, utilisation, cost, and a check
of the run's own bookkeeping (Little's law).

Latencies per request: time to first token (TTFT = first token - arrival), time per output token
(TPOT = (finish - first token) / (output tokens - 1), requests of two or more tokens) and
end-to-end latency (finish - arrival). Throughput and utilisation are measured in a steady-state
window, from the arrival of the `warmup` fraction of the requests to the last arrival, so that
neither the empty start nor the drain at the end counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsim.serving.engine import Trace

PERCENTILES = (50, 90, 99)


def _stats(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return dict(mean=float("nan"), **{f"p{q}": float("nan") for q in PERCENTILES})
    return dict(mean=float(x.mean()), **{f"p{q}": float(np.percentile(x, q)) for q in PERCENTILES})


@dataclass
class ServingReport:
    requests: int
    window_s: tuple[float, float]
    ttft_s: dict[str, float]
    tpot_s: dict[str, float]
    e2e_s: dict[str, float]
    tokens_per_s_per_user: float  # mean over requests of (output tokens - 1) / decode time
    input_tokens_per_s_per_node: float  # prompt tokens (cache hits included) of the prefill pool
    output_tokens_per_s_per_node: float  # of the decode pool (or the colocated pool)
    utilisation: dict[str, float]  # per pool role: fraction of the window its units were busy
    batch_per_rank: dict[str, float]  # per pool role: mean running sequences per rank, by time
    cost_per_million_output_tokens: float
    prefix_hit_rate: float
    preemptions: int
    littles_law: dict[str, float]  # L (time-average requests in system) and lambda * W
    slo_attainment: float | None = None  # share of requests within both latency targets, if given

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(
    trace: Trace,
    price_per_gpu_hour: float = 2.0,
    gpus_per_node: int = 8,
    warmup: float = 0.1,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
) -> ServingReport:
    """The report of a finished run (see the module docstring). With latency targets
    (`slo_ttft_s`, `slo_tpot_s`, either or both), `slo_attainment` is the share of requests that
    met them (a one-token request has no TPOT to miss)."""
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    for name, v in (("slo_ttft_s", slo_ttft_s), ("slo_tpot_s", slo_tpot_s)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise ValueError(f"{name} must be a finite number of seconds > 0, got {v!r}")
    n = len(trace.arrival)
    ttft = trace.first_token - trace.arrival
    multi = trace.output > 1
    decode_s = trace.finish[multi] - trace.first_token[multi]
    tpot = decode_s / (trace.output[multi] - 1)
    speed = (trace.output[multi] - 1) / np.maximum(decode_s, 1e-12)
    e2e = trace.finish - trace.arrival
    t0 = float(np.sort(trace.arrival)[int(warmup * (n - 1))])
    t1 = float(trace.arrival.max())
    if t1 <= t0:
        t1 = float(trace.finish.max())
    span = t1 - t0
    pools = {p.role: p for p in trace.pools}
    util, batch, tokens_in, tokens_out = {}, {}, 0.0, 0.0
    for role, steps in trace.steps.items():
        s = np.array(steps, dtype=float).reshape(-1, 5)  # start, end, in, out, running
        inside = (s[:, 1] >= t0) & (s[:, 1] <= t1)
        busy = np.clip(np.minimum(s[:, 1], t1) - np.maximum(s[:, 0], t0), 0, None).sum()
        util[role] = float(busy / (span * pools[role].units)) if span > 0 else float("nan")
        dur = s[inside, 1] - s[inside, 0]
        batch[role] = (
            float((s[inside, 4] * dur).sum() / dur.sum() / pools[role].ranks) if dur.sum() else 0.0
        )
        tokens_in += s[inside, 2].sum()
        tokens_out += s[inside, 3].sum()
    # decode-side first tokens come from prefill steps: count every output token once
    first_in = ((trace.first_token >= t0) & (trace.first_token <= t1)).sum()
    tokens_out += first_in
    pre = pools.get("prefill", pools.get("both"))
    dec = pools.get("decode", pools.get("both"))
    nodes = lambda p: p.units * p.gpus / gpus_per_node  # noqa: E731
    gpus = sum(p.units * p.gpus for p in trace.pools)
    # prompt tokens counted as the requests arrived, cache hits included (DeepSeek's convention)
    arrived = (trace.arrival >= t0) & (trace.arrival <= t1)
    prompt_in = trace.prompt[arrived].sum()
    occ = np.array(trace.occupancy, dtype=float)
    dur = occ[-1, 0] - occ[0, 0]
    L = float((occ[:-1, 1] * np.diff(occ[:, 0])).sum() / dur) if dur > 0 else float("nan")
    lam_w = float(n / dur * e2e.mean()) if dur > 0 else float("nan")
    met = None
    if slo_ttft_s is not None or slo_tpot_s is not None:
        ok = np.ones(n, dtype=bool)
        if slo_ttft_s is not None:
            ok &= ttft <= slo_ttft_s
        if slo_tpot_s is not None:
            ok[multi] &= tpot <= slo_tpot_s
        met = float(ok.mean())
    return ServingReport(
        requests=n,
        window_s=(t0, t1),
        ttft_s=_stats(ttft),
        tpot_s=_stats(tpot),
        e2e_s=_stats(e2e),
        tokens_per_s_per_user=float(speed.mean()) if len(speed) else float("nan"),
        input_tokens_per_s_per_node=float(prompt_in / span / nodes(pre)) if span > 0 else 0.0,
        output_tokens_per_s_per_node=float(tokens_out / span / nodes(dec)) if span > 0 else 0.0,
        utilisation=util,
        batch_per_rank=batch,
        cost_per_million_output_tokens=float(
            price_per_gpu_hour * gpus * span / 3600 / tokens_out * 1e6
        )
        if tokens_out
        else float("inf"),
        prefix_hit_rate=trace.prefix_hit_rate,
        preemptions=int(trace.preemptions.sum()),
        littles_law=dict(L=L, lambda_W=lam_w),
        slo_attainment=met,
    )
