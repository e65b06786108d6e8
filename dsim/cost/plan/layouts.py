"""Enumerating layouts: every way to split a training job over its GPUs, as parallel arrays.

A layout is tensor (tp), pipeline (pp) and data (dp) parallel sizes with tp x pp x dp = the GPUs,
expert parallelism (ep) inside data parallelism, a ZeRO stage, a micro-batch, a recomputation
level, a pipeline schedule and a matmul precision. `enumerate_layouts` lists the valid ones (and
counts the invalid candidates by reason); `Layouts` holds them as numpy arrays, one per field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsim.cost.plan.job import (
    MATMUL_DTYPES,
    MAX_MICROBATCH_TOKENS,
    RECOMPUTE,
    SCHEDULES,
    ZERO_STAGES,
    TrainingJob,
    check_int,
    divisors,
    tp_problem,
)


@dataclass
class Layouts:
    """Candidate layouts as parallel integer arrays, one element per layout: the FIELDS (recompute,
    schedule and dtype as indices into RECOMPUTE, SCHEDULES and MATMUL_DTYPES) and n_microbatches,
    the micro-batches per step per pipeline. `Layouts.one` makes a single layout."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    zero: np.ndarray
    micro_batch: np.ndarray
    recompute: np.ndarray
    schedule: np.ndarray
    dtype: np.ndarray
    n_microbatches: np.ndarray

    def __len__(self) -> int:
        return len(self.tp)

    def take(self, idx: np.ndarray) -> Layouts:
        """The layouts at indices `idx`."""
        return Layouts(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def row(self, i: int) -> dict[str, Any]:
        """Layout i as a dict of plain values (names for recompute, schedule and dtype)."""
        out = {f.name: int(getattr(self, f.name)[i]) for f in dataclasses.fields(self)}
        for name, choices in _NAMED.items():
            out[name] = choices[out[name]]
        return out

    @classmethod
    def one(cls, layout: dict[str, Any]) -> Layouts:
        """A one-row Layouts from a dict with the keys of `row` (names or indices for recompute,
        schedule and dtype)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in layout]
        if missing:
            raise ValueError(
                f"layout lacks {', '.join(missing)}: give every one of {', '.join(names)}"
            )
        values = {}
        for name in names:
            v = layout[name]
            if name in _NAMED and isinstance(v, str):
                if v not in _NAMED[name]:
                    raise ValueError(f"{name} must be one of {', '.join(_NAMED[name])}, got {v!r}")
                v = _NAMED[name].index(v)
            values[name] = np.array([v], dtype=np.int64)
        return cls(**values)


# The fields a user may fix (plan_training's keywords): every field but the derived n_microbatches.
FIELDS = tuple(f.name for f in dataclasses.fields(Layouts) if f.name != "n_microbatches")
# The fields stored as indices, and the choices they index.
_NAMED = {"recompute": RECOMPUTE, "schedule": SCHEDULES, "dtype": MATMUL_DTYPES}


def _check_fixed(job: TrainingJob, fixed: dict[str, Any]) -> None:
    """Clear errors for user-fixed layout values that cannot work on their own."""
    a, N = job.args, job.n_gpus
    unknown = sorted(set(fixed) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"unknown layout field(s) {', '.join(unknown)}: choose from {', '.join(FIELDS)}"
        )
    for name in ("tp", "pp", "dp", "ep", "micro_batch"):
        if fixed.get(name) is not None:
            check_int(name, fixed[name])
    tp, pp, dp, ep = (fixed.get(k) for k in ("tp", "pp", "dp", "ep"))
    if tp is not None:
        if N % tp:
            raise ValueError(f"tp={tp} does not divide the {N} GPUs")
        problem = tp_problem(a, tp, job.gpus_per_node)
        if problem:
            raise ValueError(problem)
    if pp is not None:
        if N % pp:
            raise ValueError(f"pp={pp} does not divide the {N} GPUs")
        if pp > a.n_layers:
            raise ValueError(f"pp={pp} must be at most n_layers={a.n_layers}")
    if dp is not None and N % dp:
        raise ValueError(f"dp={dp} does not divide the {N} GPUs")
    for names in (("tp", "pp"), ("tp", "dp"), ("pp", "dp"), ("tp", "pp", "dp")):
        vals = [fixed.get(k) for k in names]
        if all(v is not None for v in vals):
            prod = math.prod(vals)
            if (len(names) == 3 and prod != N) or N % prod:
                what = " x ".join(f"{k}={v}" for k, v in zip(names, vals))
                verb = "equal" if len(names) == 3 else "divide"
                raise ValueError(f"{what} = {prod} does not {verb} the {N} GPUs")
    if ep is not None:
        if not a.is_moe and ep != 1:
            raise ValueError(f"ep={ep} needs routed experts; {a.name} is dense: use ep=1")
        if a.is_moe and a.n_routed_experts % ep:
            raise ValueError(f"ep={ep} must divide n_routed_experts={a.n_routed_experts}")
        if dp is not None and dp % ep:
            raise ValueError(
                f"ep={ep} must divide dp={dp} (experts are split inside data parallelism)"
            )
        if N % ep:
            raise ValueError(f"ep={ep} does not divide the {N} GPUs")
    if fixed.get("zero") is not None and fixed["zero"] not in ZERO_STAGES:
        raise ValueError(f"zero must be one of {ZERO_STAGES}, got {fixed['zero']!r}")
    if fixed.get("recompute") is not None and fixed["recompute"] not in RECOMPUTE:
        raise ValueError(
            f"recompute must be one of {', '.join(RECOMPUTE)}, got {fixed['recompute']!r}"
        )
    if fixed.get("schedule") is not None and fixed["schedule"] not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {', '.join(SCHEDULES)}, got {fixed['schedule']!r}"
        )
    if fixed.get("dtype") is not None:
        if fixed["dtype"] not in MATMUL_DTYPES:
            raise ValueError(
                f"dtype must be one of {', '.join(MATMUL_DTYPES)}, got {fixed['dtype']!r}"
            )
        if fixed["dtype"] == "fp8" and job.gpu.fp8_flops is None:
            raise ValueError(
                f"dtype='fp8' is not supported by {job.gpu.name} (no fp8 tensor cores)"
            )
    mb = fixed.get("micro_batch")
    if mb is not None and job.global_batch % mb:
        raise ValueError(
            f"micro_batch={mb} does not divide the global batch of {job.global_batch} sequences"
        )


def enumerate_layouts(job: TrainingJob, **fixed: Any) -> tuple[Layouts, dict[str, int]]:
    """Every layout of the job's GPUs that respects `fixed` (layout fields set to a value), and how
    many candidates were structurally invalid, by reason.

    Searched values: tp | gpus_per_node that splits the model's heads and widths; pp | GPUs / tp up
    to n_layers; ep | dp and | n_routed_experts (1 for dense models); ZeRO 0-3; micro-batches of
    powers of two up to MAX_MICROBATCH_TOKENS tokens; all recomputation levels; both schedules (1F1B
    only when pp = 1); bf16 and, where the GPU has fp8 tensor cores, fp8."""
    fixed = {k: v for k, v in fixed.items() if v is not None}
    _check_fixed(job, fixed)
    a, N, S, B = job.args, job.n_gpus, job.seq_len, job.global_batch
    g = job.gpus_per_node
    tps = (
        [fixed["tp"]] if "tp" in fixed else [t for t in divisors(N) if tp_problem(a, t, g) is None]
    )
    zeros = [fixed["zero"]] if "zero" in fixed else list(ZERO_STAGES)
    mb_max = max(1, MAX_MICROBATCH_TOKENS // S)
    mbs = (
        [fixed["micro_batch"]]
        if "micro_batch" in fixed
        else [1 << i for i in range(7) if (1 << i) <= mb_max]
    )
    rcs = (
        [RECOMPUTE.index(fixed["recompute"])]
        if "recompute" in fixed
        else list(range(len(RECOMPUTE)))
    )
    dts = (
        [MATMUL_DTYPES.index(fixed["dtype"])]
        if "dtype" in fixed
        else [i for i, d in enumerate(MATMUL_DTYPES) if d != "fp8" or job.gpu.fp8_flops is not None]
    )
    invalid: dict[str, int] = {}

    def reject(reason: str, count: int) -> None:
        if count:
            invalid[reason] = invalid.get(reason, 0) + int(count)

    parts: list[dict[str, np.ndarray]] = []
    for tp in tps:
        pps = [fixed["pp"]] if "pp" in fixed else [p for p in divisors(N // tp) if p <= a.n_layers]
        for pp in pps:
            if (N // tp) % pp:
                continue
            dp = N // (tp * pp)
            if "dp" in fixed and fixed["dp"] != dp:
                continue
            if "ep" in fixed:
                eps = [fixed["ep"]] if dp % fixed["ep"] == 0 else []
            else:
                eps = [e for e in divisors(dp) if a.n_routed_experts % e == 0] if a.is_moe else [1]
            scheds = (
                [SCHEDULES.index(fixed["schedule"])]
                if "schedule" in fixed
                else ([0] if pp == 1 else [0, 1])
            )
            grid = np.array(np.meshgrid(eps, zeros, mbs, rcs, scheds, dts, indexing="ij")).reshape(
                6, -1
            )
            if grid.size == 0:
                continue
            ep, zero, mb, rc, sched, dt = grid
            n = len(ep)
            ok = np.ones(n, dtype=bool)
            # (1) the global batch must split into dp replicas of whole micro-batches
            bad = B % (dp * mb) != 0
            reject(
                f"global batch of {B} sequences not divisible by dp x micro-batch", (bad & ok).sum()
            )
            ok &= ~bad
            n_micro = np.where(bad, 1, B // np.maximum(dp * mb, 1))
            # (2) DualPipe: even pp, even number of micro-batches >= 2 pp
            bad = (sched == 1) & ((pp % 2 == 1) | (n_micro % 2 == 1) | (n_micro < 2 * pp))
            reject(
                "dualpipe needs an even pp and an even number of micro-batches >= 2 pp",
                (bad & ok).sum(),
            )
            ok &= ~bad
            # (3) ZeRO-2/3 shard gradients or weights every micro-batch: not combined with pipelines
            bad = (zero >= 2) & (pp > 1)
            reject("ZeRO-2/3 is not combined with pipeline parallelism", (bad & ok).sum())
            ok &= ~bad
            # (4) communication groups must fill whole nodes once they leave one
            rpn = max(1, g // tp)
            bad = (ep > rpn) & (ep % rpn != 0)
            reject("expert-parallel group does not fill whole nodes", (bad & ok).sum())
            ok &= ~bad
            if dp > rpn and dp % rpn:
                reject("data-parallel group does not fill whole nodes", ok.sum())
                ok[:] = False
            rpn_e = np.maximum(1, g // (tp * ep))
            bad = (dp // ep > rpn_e) & ((dp // ep) % rpn_e != 0)
            reject("expert data-parallel group does not fill whole nodes", (bad & ok).sum())
            ok &= ~bad
            if ok.any():
                parts.append(
                    dict(
                        tp=np.full(ok.sum(), tp),
                        pp=np.full(ok.sum(), pp),
                        dp=np.full(ok.sum(), dp),
                        ep=ep[ok],
                        zero=zero[ok],
                        micro_batch=mb[ok],
                        recompute=rc[ok],
                        schedule=sched[ok],
                        dtype=dt[ok],
                        n_microbatches=n_micro[ok],
                    )
                )
    if not parts:
        what = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "no fixed choices"
        why = (
            "; ".join(f"{k}: {v}" for k, v in invalid.items())
            or "no tp x pp x dp splits the GPUs that way"
        )
        raise ValueError(f"no valid layout of {N} GPUs with {what} ({why})")
    cat = {k: np.concatenate([p[k] for p in parts]).astype(np.int64) for k in parts[0]}
    return Layouts(**cat), invalid
