"""Blocks and steps: the ops dsim.model runs, composed, and their predicted time.

`block_plan` lists the ops of one transformer block, `step_plan` those of a whole step (embedding,
blocks, head, MTP modules, cross-entropy), each a `PlanOp` (component, label, op, shape) that
ops.op_time times. Both are the time view of the op graph (dsim.cost.graph), re-exported here;
`layer_time` and `step_time` add them up into a `StepTime`, with a breakdown by component.
The planner (dsim.cost.plan) times a pipeline stage's slice of these plans.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsim.cost.graph import MODES, PlanOp, block_plan, first_moe_layer, step_plan, step_shape
from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.timing.calibration import Calibration, gpu_calibration
from dsim.cost.timing.ops import op_time


@dataclass(frozen=True)
class StepTime:
    """Predicted time of a block or a step, op by op."""

    gpu: str
    mode: str
    ops: tuple[tuple[PlanOp, float], ...]

    @property
    def total_s(self) -> float:
        return float(sum(t for _, t in self.ops))

    def breakdown(self) -> dict[str, float]:
        """Seconds per component (attn_proj, attn_core, norms, routed_experts, ...)."""
        out: dict[str, float] = {}
        for p, t in self.ops:
            out[p.component] = out.get(p.component, 0.0) + t
        return out


def _timed(plan: list[PlanOp], gpu: str | GPU, mode: str, cal: Calibration | None) -> StepTime:
    g = get_gpu(gpu)
    cal = cal or gpu_calibration(g)
    seen: dict[tuple, float] = {}  # the layers repeat: time each distinct op once
    out = []
    for p in plan:
        key = (p.op, p.backward, tuple(sorted(p.shape.items())))
        if key not in seen:
            seen[key] = op_time(p.op, g, "bf16", p.backward, cal, **p.shape)
        out.append((p, seen[key]))
    return StepTime(g.name, mode, tuple(out))


def layer_time(
    args,
    batch: int,
    seq_len: int,
    mode: str = "train",
    gpu: str | GPU = "H100-SXM",
    layer_id: int | None = None,
    context: int | None = None,
    calibration: Calibration | None = None,
) -> StepTime:
    """Predicted time of one transformer block (the first MoE block unless layer_id says
    otherwise)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if layer_id is None:  # the first MoE block, or the first block of a dense model
        layer_id = first_moe_layer(args) or 0
    if not 0 <= layer_id < args.n_layers:
        raise ValueError(
            f"layer_id must be between 0 and n_layers - 1 = {args.n_layers - 1}, got {layer_id}"
        )
    seq_len, context = step_shape(mode, seq_len, context)
    plan = block_plan(args, layer_id, batch, seq_len, context, mode)
    return _timed(plan, gpu, mode, calibration)


def step_time(
    args,
    batch: int,
    seq_len: int,
    mode: str = "train",
    gpu: str | GPU = "H100-SXM",
    context: int | None = None,
    calibration: Calibration | None = None,
) -> StepTime:
    """Predicted time of one training step (forward + backward, no optimizer), prefill or decode
    step of the whole model on one GPU (no parallelism: every weight and token on this GPU)."""
    return _timed(step_plan(args, batch, seq_len, mode, context), gpu, mode, calibration)
