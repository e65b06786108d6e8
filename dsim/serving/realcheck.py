"""The simulator against a real serving loop: the same trace, the same policy, step times fitted
on other measurements.

bench/serve_measure.py runs `dsim.serving.real.serve_trace` (dsim.model serving a Poisson trace in
real time) and, separately, times isolated steps: decodes at several batches and contexts,
prefills at several prompt lengths (the *fit set*). Here a `LinearStepCost` is fitted to the fit
set only, the simulator runs the same trace with the loop's policy (one colocated rank,
`max_batch` slots, a step is either one prompt's prefill or a decode of every running sequence,
alternately: `Pool(mixed_steps=False)`), and its latencies are compared with the loop's: the
loop's own iterations were never seen by the fit. On a GPU run, `timer="time-model"` takes the
step times from dsim's time model instead (nothing fitted to the run at all).

The committed GPU run is dsim/data/serve_real_h100.json (`bench/serve_measure.py --device cuda` on
an H100): `compare_measured(load_measured(path), timer="time-model", gpu="H100-SXM")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dsim.config import ModelArgs
from dsim.serving.engine import Pool, Simulator, Trace
from dsim.serving.real import RealRun
from dsim.serving.step_cost import LinearStepCost, StepCost, StepShape
from dsim.serving.workload import Request

DATA = Path(__file__).resolve().parents[1] / "data" / "serve_real_cpu.json"
COMPARED = ("ttft", "tpot", "e2e")
TIMERS = ("fit", "time-model")


def fit_step_cost(fit: dict[str, list[dict]]) -> LinearStepCost:
    """A LinearStepCost fitted to the isolated steps of a serve_measure run."""
    shapes, seconds = [], []
    for d in fit["decode"]:
        shapes.append(StepShape(decode_seqs=d["batch"], decode_context=d["context"]))
        seconds.append(d["median_s"])
    for p in fit["prefill"]:
        shapes.append(StepShape(prefill_seqs=1, prefill_tokens=p["prompt_tokens"]))
        seconds.append(p["median_s"])
    return LinearStepCost.fit(shapes, seconds)


def time_model_step_cost(data: dict[str, Any], gpu: str = "H200") -> StepCost:
    """dsim's time model for the run's model on one GPU, in bf16 and with MLA's prefill as the loop
    runs them (a GPU run only: the time model knows GPUs, not CPUs)."""
    args = ModelArgs(**data["model_args"])
    longest = max(r["prompt_tokens"] for r in data["trace"])  # the loop's largest step
    impl = dict(prefill_mla=args.attn_impl) if args.attn_type == "mla" else {}  # as the loop ran
    return StepCost(
        args, gpu, n_gpus=1, ep=1, dtype="bf16", overlap=False, max_step_tokens=longest, **impl
    )


def simulate_measured(data: dict[str, Any], timer: str = "fit", gpu: str = "H200") -> Trace:
    """The simulator on a serve_measure run's trace, with the loop's policy; step times fitted on
    the isolated steps (timer "fit") or from dsim's time model ("time-model", for GPU runs)."""
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    opts = data["options"]
    step = fit_step_cost(data["fit"]) if timer == "fit" else time_model_step_cost(data, gpu)
    reqs = [Request(**r) for r in data["trace"]]
    longest = max(r.prompt_tokens + r.output_tokens for r in reqs)
    pool = Pool(
        "both", 1, 1, 1, step, kv_capacity_tokens=longest * opts["max_batch"],
        max_batch=opts["max_batch"], chunk_tokens=opts["chunk_tokens"] or max(
            r.prompt_tokens for r in reqs), mixed_steps=False,
    )  # fmt: skip
    return Simulator([pool]).run(reqs)


def _latencies(arrival, first, finish, output) -> dict[str, np.ndarray]:
    multi = output > 1
    return dict(
        ttft=first - arrival,
        tpot=(finish[multi] - first[multi]) / (output[multi] - 1),
        e2e=finish - arrival,
    )


def compare_measured(
    data: dict[str, Any] | None = None, timer: str = "fit", gpu: str = "H200"
) -> dict[str, Any]:
    """Measured and simulated p50 / p90 of TTFT, TPOT and end-to-end latency, their relative
    errors, and the step model's error on the loop's own steps."""
    data = load_measured() if data is None else data
    run = RealRun.from_dict(data["run"])
    by_id = sorted(run.requests, key=lambda r: r.id)
    real = _latencies(
        *(np.array([getattr(r, f) for r in by_id]) for f in
          ("arrival_s", "first_token_s", "finish_s", "output_tokens"))
    )  # fmt: skip
    tr = simulate_measured(data, timer, gpu)
    sim = _latencies(tr.arrival, tr.first_token, tr.finish, tr.output)
    out: dict[str, Any] = {}
    for k in COMPARED:
        for q in (50, 90):
            m, s = float(np.percentile(real[k], q)), float(np.percentile(sim[k], q))
            out[f"{k}_p{q}"] = dict(measured_s=m, simulated_s=s, error=s / m - 1)
    makespan = max(r.finish_s for r in run.requests)
    out["makespan"] = dict(
        measured_s=makespan, simulated_s=float(tr.finish.max()),
        error=float(tr.finish.max()) / makespan - 1,
    )  # fmt: skip
    # the step model on the loop's own steps (never fitted on)
    step = fit_step_cost(data["fit"]) if timer == "fit" else time_model_step_cost(data, gpu)
    errs = {"decode": [], "prefill": []}
    for it in run.iterations:
        if it.kind == "decode":
            shape = StepShape(
                decode_seqs=it.n_decode,
                decode_context=round(it.decode_context_tokens / max(1, it.n_decode)),
            )
        else:
            shape = StepShape(prefill_seqs=1, prefill_tokens=it.prefill_tokens,
                              prefill_context=it.prefill_context_tokens)  # fmt: skip
        errs[it.kind].append(step(shape) / it.duration_s - 1)
    out["step_error_median"] = {k: float(np.median(v)) for k, v in errs.items() if v}
    out["step_error_p90_abs"] = {
        k: float(np.percentile(np.abs(v), 90)) for k, v in errs.items() if v
    }
    out["steps"] = {k: len(v) for k, v in errs.items()}
    return out


def load_measured(path: str | Path = DATA) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
