"""Time model: how long an op, a transformer block and a whole step take on a GPU.

A datasheet roofline, max(FLOPs / peak FLOP/s, bytes / peak bandwidth), is the textbook estimate
and it is far off: no kernel reaches the peak, a GEMM runs whole tiles in whole waves over the
SMs, every kernel pays a launch, and an MoE layer moves its tokens around before and after the
expert GEMMs. This model keeps the roofline's physics and adds exactly those effects:

  1. An op is the list of kernels it launches (ops.py, `op_kernels`; the MoE layer's in
     moe_kernels.py), each with the FLOPs it computes and the bytes it moves to and from HBM,
     copies included (the MoE layer's sort, gathers and weighted sum, the gate's fp32 casts, the
     backward's extra passes). The lists follow what PyTorch runs for dsim.model, kernel by
     kernel, as profiled on an H100; the MoE layer's memory-bound kernels name the tensors they
     read and write, so that each can be held against a profiler trace.
  2. An op takes the first kernel's launch latency, then for each kernel
         launch + max(compute time, memory time)
     (kernels.py): GEMM-like kernels compute in tiles, in waves over the SMs (cuBLAS is assumed
     to pick the best tile and split-K, torch._grouped_mm's tile follows its source, attention
     schedules its blocks, causal ones of unequal length, onto the SMs longest first); memory
     time is bytes over the achievable bandwidth, lower for gathers, atomics and sorts and for
     kernels with too few blocks, with the writes that the L2 absorbs left out.
  3. The constants of `Calibration` (calibration.py: efficiencies, launch times, per-element
     costs; `Calibration.constants()` lists them, `fitted_constants()` those a fit moved) are
     fitted by least squares on relative error (fit.py, `fit_calibration`) to the calibration grid
     of bench/timing_measure.py, each on the records that isolate it (memory kernels first, then
     norms, GEMMs, grouped GEMMs, gathers and sorts, the gate, attention); the MoE layer gets no
     constant of its own: it is predicted from its kernels. There is no table of shapes: the model
     is judged on a separate validation grid (bench/validate_timing.py,
     dsim/data/timing_validation_<gpu>.json).
  4. Blocks and steps (step.py: `block_plan`, `step_plan`, `layer_time`, `step_time`) are the ops
     dsim.model runs, composed.

Times are GPU times with a cold L2 cache and the CPU queued ahead of the GPU (as in a training step
of real size, or under CUDA graphs): kernels plus the gaps between them. Eager PyTorch's own CPU
cost (several microseconds per op) is not included; it matters only when kernels are tiny.

GPUs: H100-SXM and H200 have their own calibration (dsim/data/timing_calibration_<gpu>.json, fitted
from the committed measurements dsim/data/timing_<gpu>.json). Every other GPU of the catalog gets
the H100-SXM's efficiencies applied to its own datasheet peaks, SM count, L2 and bandwidth: an
extrapolation (on an A100, dsim.model even runs a different MoE path, a padded batched GEMM).
"""

from dsim.cost.timing.calibration import (
    ATTN_EFF_BACKEND,
    DATA_DIR,
    Calibration,
    attention_efficiency,
    gpu_calibration,
    gpu_key,
)
from dsim.cost.timing.fit import (
    FIT_STAGES,
    error_summary,
    fit_calibration,
    load_measurements,
    predict_record,
    record_kind,
    validate,
)
from dsim.cost.timing.kernels import Kernel, KernelModel, expert_load
from dsim.cost.timing.ops import (
    ELEMENTWISE_KINDS,
    OPS,
    TIMED_DTYPES,
    attention_backend,
    op_kernels,
    op_time,
    roofline_time,
    roofline_work,
)
from dsim.cost.timing.step import PlanOp, StepTime, block_plan, layer_time, step_plan, step_time

__all__ = [
    "ATTN_EFF_BACKEND",
    "DATA_DIR",
    "ELEMENTWISE_KINDS",
    "FIT_STAGES",
    "OPS",
    "TIMED_DTYPES",
    "Calibration",
    "Kernel",
    "KernelModel",
    "PlanOp",
    "StepTime",
    "attention_backend",
    "attention_efficiency",
    "block_plan",
    "error_summary",
    "expert_load",
    "fit_calibration",
    "gpu_calibration",
    "gpu_key",
    "layer_time",
    "load_measurements",
    "op_kernels",
    "op_time",
    "predict_record",
    "record_kind",
    "roofline_time",
    "roofline_work",
    "step_plan",
    "step_time",
    "validate",
]
