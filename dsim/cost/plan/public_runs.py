"""Published training runs against the planner: what dsim predicts for each from its config and
published layout, and the error.

The runs, with their sources, live in dsim/data/public_runs.json: model, GPU and count, tokens,
sequence length, global batch, the layout fields the source publishes (the planner searches the
rest, which `assumed` lists), and one published figure:
    gpu_hours       GPU-hours of the whole run: predicted = the plan's GPU-hours / GOODPUT.
    mfu             steady-state model-FLOPs utilisation: the plan's MFU (Megatron's convention,
                    dsim.cost.plan.search), no goodput.
    tflops_per_gpu  steady-state throughput in the source's own FLOP count (`flops_formula`; e.g.
                    Narayanan et al.'s eq. (3), recomputation included): the plan's tokens per
                    second per GPU times that formula's FLOPs per token, no goodput.

GOODPUT is the one factor for what a whole run loses to failures, restarts, checkpoints and
evaluation, taken from one source (the data file's "goodput") and never fitted per run.

`public_runs_table()` returns one row per run; a row outside WITHIN (15 %) carries the data file's
stated reason.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from dsim.config import ModelArgs, preset
from dsim.cost import timing
from dsim.cost.plan.job import TrainingJob
from dsim.cost.plan.search import TrainingPlan, plan_training

DATA = Path(__file__).resolve().parents[2] / "data" / "public_runs.json"
WITHIN = 0.15  # a row's prediction should be within this relative error, or carry a reason
METRICS = ("gpu_hours", "mfu", "tflops_per_gpu")


@cache
def _data() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def load_public_runs() -> list[dict[str, Any]]:
    """The runs of dsim/data/public_runs.json (each a dict: name, source, model, gpu, n_gpus,
    tokens, seq_len, global_batch, layout, assumed, published, role, maybe reason)."""
    return [dict(r) for r in _data()["runs"]]


def goodput() -> float:
    """The fraction of a whole run's GPU time spent training (the data file's one "goodput")."""
    return float(_data()["goodput"]["value"])


GOODPUT = goodput()


def run_args(run: dict[str, Any]) -> ModelArgs:
    """The ModelArgs of a run: a preset, or dense fields (no experts, no MLA) over the defaults."""
    m = dict(run["model"])
    if "preset" in m:
        return preset(m.pop("preset"), **m)
    dense = dict(n_dense_layers=m["n_layers"], n_routed_experts=0, n_shared_experts=0)
    dense |= dict(n_activated_experts=0, moe_inter_dim=0, max_seq_len=run["seq_len"])
    dense |= dict(original_seq_len=run["seq_len"])
    return ModelArgs(**(dense | m))


def run_job(run: dict[str, Any], calibration: timing.Calibration | None = None) -> TrainingJob:
    """The TrainingJob of a run."""
    return TrainingJob(
        run_args(run),
        run["gpu"],
        n_gpus=run["n_gpus"],
        tokens=run["tokens"],
        seq_len=run["seq_len"],
        global_batch=run["global_batch"],
        optimizer_dtype=run.get("optimizer_dtype", "fp32"),
        recipe=run.get("recipe", "plain"),
        calibration=calibration,
    )


def narayanan2021_flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Narayanan et al. 2021, eq. (3), per token: 96 l h^2 (1 + s / 6h + V / 16 l h), a GPT layer's
    matmuls (4 h^2 attention, 8 h^2 MLP per token), the full s x s attention and the logits, times
    4 passes (forward, backward, and the forward again of full recomputation)."""
    h, l, s, V = args.dim, args.n_layers, seq_len, args.vocab_size
    return 96 * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))


FLOPS_FORMULAS = {"narayanan2021": narayanan2021_flops_per_token}


def predict(
    run: dict[str, Any], calibration: timing.Calibration | None = None
) -> tuple[float, TrainingPlan]:
    """(the predicted value of the run's published metric, the plan): the fastest layout that fits,
    with the published layout fields fixed."""
    job = run_job(run, calibration)
    plan = plan_training(job, top=1, **run["layout"]).plans[0]
    (metric,) = [k for k in run["published"] if k in METRICS]
    if metric == "gpu_hours":
        value = plan.gpu_hours / GOODPUT
    elif metric == "mfu":
        value = plan.mfu
    else:
        per_token = FLOPS_FORMULAS[run["published"]["flops_formula"]](job.args, job.seq_len)
        value = plan.tokens_per_s / job.n_gpus * per_token / 1e12
    return value, plan


def public_runs_table(
    calibrations: dict[str, timing.Calibration] | None = None, names: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run (or per run named in `names`): name, gpu, n_gpus, layout (the plan's),
    metric, published, predicted, error (predicted / published - 1), mfu (the plan's), role,
    within (|error| <= WITHIN), reason (the data file's, or None), source.

    calibrations: GPU name -> Calibration to use instead of the GPU's committed one."""
    rows = []
    for run in load_public_runs():
        if names is not None and run["name"] not in names:
            continue
        cal = (calibrations or {}).get(run["gpu"])
        value, plan = predict(run, cal)
        (metric,) = [k for k in run["published"] if k in METRICS]
        published = float(run["published"][metric])
        error = value / published - 1
        rows.append(
            dict(
                name=run["name"],
                gpu=run["gpu"],
                n_gpus=run["n_gpus"],
                layout=plan.layout,
                metric=metric,
                published=published,
                predicted=value,
                error=error,
                mfu=plan.mfu,
                role=run["role"],
                within=abs(error) <= WITHIN,
                reason=run.get("reason"),
                source=run["source"],
            )
        )
    return rows


def speed_error(row: dict[str, Any]) -> float:
    """log(dsim's speed / the published speed) of a table row: positive when dsim predicts the run
    faster than published (fewer GPU-hours, or more MFU or throughput)."""
    ratio = 1 + row["error"]
    return -math.log(ratio) if row["metric"] == "gpu_hours" else math.log(ratio)


def run_scale_error(gpu: str, scale: float, role: str = "fit") -> float:
    """Mean `speed_error` over the runs of `role` on `gpu`, with the H100's tensor-core
    efficiencies times `scale` (dsim.cost.timing.calibration.scaled_calibration)."""
    cal = timing.calibration.scaled_calibration(
        timing.gpu_calibration("H100-SXM"), scale, gpu, f"H100-SXM x {scale}"
    )
    names = [r["name"] for r in load_public_runs() if r["gpu"] == gpu and r["role"] == role]
    if not names:
        raise ValueError(f"no published run on {gpu} has role {role!r}")
    rows = public_runs_table({gpu: cal}, names)
    return sum(speed_error(r) for r in rows) / len(rows)


def fit_run_scale(gpu: str, low: float = 0.3, high: float = 1.5, tol: float = 1e-3) -> float:
    """The scale of the H100's tensor-core efficiencies at which the planner reproduces the
    published runs marked "fit" on `gpu` (their mean speed error is zero), by bisection (faster
    kernels, faster predicted runs)."""
    while high - low > tol:
        mid = (low + high) / 2
        if run_scale_error(gpu, mid) > 0:
            high = mid
        else:
            low = mid
    return round((low + high) / 2, 3)
