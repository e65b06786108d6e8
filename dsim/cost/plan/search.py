"""The training search: evaluate every layout of a job, rank those that fit, report the best.

`plan_training` enumerates the layouts (`dsim.cost.plan.layouts`), evaluates them all at once
(`dsim.cost.plan.evaluate`) and returns the fastest as `TrainingPlan`s, with the cost of the token
budget and the count of layouts rejected, by reason.

MFU (`TrainingPlan.mfu`): model FLOPs of a step / (step time x GPUs x dense bf16 peak), Megatron's
convention (Narayanan et al. 2021, appendix; Chowdhery et al. 2022, appendix B): every matmul of
the forward pass and twice that for the backward, MTP modules included, attention charged for the
(query, key) pairs a causal mask keeps, and nothing that a kernel or the layout runs again: neither
FlashAttention's recomputation of QK^T in its backward nor activation recomputation. It is
`flops(args, 1, seq_len, attn_kernel="math").total_causal` per sequence (the math convention
charges the attention backward twice its forward, like every other matmul). fp8 runs are measured
against the bf16 peak too, so MFUs compare across precisions (DeepSeek-V3's would be half as large
against the fp8 peak).

`TrainingPlan.mfu_conventions` shows the same step under the other conventions in use:
    model      the MFU above.
    hardware   FLOPs the GPUs execute: the fused attention backward's QK^T recomputation and the
               layout's activation recomputation (selective: MLA's up-projections; full: every
               block's forward) added (what "HFU" means in Korthikanti et al. 2022).
    noncausal  model FLOPs with attention charged for the full S x S score matrix (PyTorch's
               FlopCounterMode, and PaLM's 6N + 12 L H Q T formula).
    six_nd     6 N per token, N = activated non-embedding parameters (Kaplan et al. 2020): no
               attention core, no MTP.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsim.cost.plan.evaluate import EXPOSED_KINDS, MEMORY_KINDS, REASONS, evaluate
from dsim.cost.plan.job import TrainingJob, check_int
from dsim.cost.plan.layouts import Layouts, enumerate_layouts
from dsim.cost.plan.tables import tables


@dataclass
class TrainingPlan:
    """One layout with its step time, efficiency, memory per GPU and what the token budget costs."""

    tp: int
    pp: int
    ep: int
    dp: int
    zero: int
    micro_batch: int
    n_microbatches: int
    recompute: str
    schedule: str
    dtype: str
    step_time_s: float
    compute_s: float
    exposed_comm_s: float
    bubble_s: float
    mfu: float
    tokens_per_s: float
    days: float
    gpu_hours: float
    cost: float
    memory_per_gpu_bytes: float
    memory: dict[str, float]  # weights, gradients, optimizer, activations, buffers (bytes)
    exposed: dict[str, float]  # exposed communication by kind: tensor, expert, pipeline, data (s)
    mfu_conventions: dict[str, float]  # model, hardware, noncausal, six_nd (module docstring)
    fits: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def layout(self) -> str:
        return (
            f"tp{self.tp} pp{self.pp} ep{self.ep} dp{self.dp} zero{self.zero} mb{self.micro_batch} "
            f"{self.recompute} {self.schedule} {self.dtype}"
        )


@dataclass
class PlanResult:
    """A search: how many layouts were evaluated, the best plans, and why the others were
    dropped."""

    job: TrainingJob
    layouts_evaluated: int
    plans: list[TrainingPlan]
    rejected: dict[str, int]  # memory: reason -> layouts that do not fit
    invalid: dict[str, int]  # structure: reason -> candidate layouts that are not valid
    n_fit: int

    def to_dict(self) -> dict[str, Any]:
        j = self.job
        return {
            "model": j.args.name,
            "gpu": j.gpu.name,
            "gpus": j.n_gpus,
            "tokens": j.tokens,
            "seq_len": j.seq_len,
            "global_batch": j.global_batch,
            "price_per_gpu_hour": j.price_per_gpu_hour,
            "layouts_evaluated": self.layouts_evaluated,
            "layouts_fitting": self.n_fit,
            "rejected": self.rejected,
            "invalid": self.invalid,
            "plans": [p.to_dict() for p in self.plans],
            "mfu_convention": "model FLOPs (causal attention, MTP included, no recomputation: "
            "neither FlashAttention's backward QK^T nor activation recomputation) per step / "
            "(step time x GPUs x dense bf16 peak); mfu_conventions adds hardware FLOPs (with "
            "recomputation), non-causal attention and 6ND",
        }


def _plan_from(job: TrainingJob, L: Layouts, res: dict[str, np.ndarray], i: int) -> TrainingPlan:
    tabs = tables(job)
    row = L.row(i)
    step = float(res["step_time_s"][i])
    tps = job.batch_tokens / step
    seconds = job.tokens / tps
    reason = None if res["fits"][i] else REASONS[int(res["reason"][i])]
    per_step = job.global_batch / (step * job.n_gpus * tabs.peak)  # MFU per FLOP of a sequence
    conv = dict(tabs.flops_conventions)
    conv["hardware"] += tabs.recompute_flops_per_seq[row["recompute"]]
    return TrainingPlan(
        tp=row["tp"],
        pp=row["pp"],
        ep=row["ep"],
        dp=row["dp"],
        zero=row["zero"],
        micro_batch=row["micro_batch"],
        n_microbatches=row["n_microbatches"],
        recompute=row["recompute"],
        schedule=row["schedule"],
        dtype=row["dtype"],
        step_time_s=step,
        compute_s=float(res["compute_s"][i]),
        exposed_comm_s=float(res["exposed_comm_s"][i]),
        bubble_s=float(res["bubble_s"][i]),
        mfu=tabs.flops_per_seq * per_step,
        tokens_per_s=tps,
        days=seconds / 86400,
        gpu_hours=seconds * job.n_gpus / 3600,
        cost=seconds * job.n_gpus / 3600 * job.price_per_gpu_hour,
        memory_per_gpu_bytes=float(res["memory_per_gpu_bytes"][i]),
        memory={k: float(res[k][i]) for k in MEMORY_KINDS},
        exposed={k: float(res[v][i]) for k, v in EXPOSED_KINDS.items()},
        mfu_conventions={k: f * per_step for k, f in conv.items()},
        fits=bool(res["fits"][i]),
        reason=reason,
    )


def plan_training(
    job: TrainingJob, top: int = 10, require_fit: bool = True, progress: bool = False, **fixed: Any
) -> PlanResult:
    """Search every layout (fixing the fields given in `fixed`: tp, pp, dp, ep, zero, micro_batch,
    recompute, schedule, dtype) and return the `top` fastest, best first.

    require_fit=False ranks layouts that do not fit too (each plan says whether it fits, why not).
    progress=True shows a tqdm bar on stderr (on a terminal, once the search takes half a second).
    Raises ValueError naming the problem when no layout is valid, or none fits (with require_fit).
    """
    check_int("top", top)
    L, invalid = enumerate_layouts(job, **fixed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(L),
            desc="layouts",
            unit=" layouts",
            file=sys.stderr,
            delay=0.5,
            disable=not sys.stderr.isatty(),
            leave=False,
        )
    try:
        res = evaluate(job, L, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    fits = res["fits"]
    rejected: dict[str, int] = {}
    for code, reason in enumerate(REASONS):
        n = int((res["reason"] == code).sum())
        if n:
            rejected[reason] = n
    keep = np.flatnonzero(fits) if require_fit else np.arange(len(L))
    if require_fit and len(keep) == 0:
        worst = ", ".join(f"{n} {r}" for r, n in rejected.items())
        smallest = float(res["memory_per_gpu_bytes"].min())
        raise ValueError(
            f"no layout of {job.args.name} fits on {job.n_gpus} x {job.gpu.name} "
            f"({job.hbm_bytes / 1e9:.0f} GB): the smallest needs {smallest / 1e9:.0f} GB per GPU "
            f"({len(L)} layouts: {worst})"
        )
    order = np.lexsort(
        (
            L.dtype[keep],
            L.schedule[keep],
            L.recompute[keep],
            L.micro_batch[keep],
            L.zero[keep],
            L.ep[keep],
            L.pp[keep],
            L.tp[keep],
            res["memory_per_gpu_bytes"][keep],
            res["step_time_s"][keep],
        )
    )
    best = keep[order[:top]]
    plans = [_plan_from(job, L, res, int(i)) for i in best]
    return PlanResult(
        job=job,
        layouts_evaluated=len(L),
        plans=plans,
        rejected=rejected,
        invalid=invalid,
        n_fit=int(fits.sum()),
    )
