"""Capacity planning: the fastest parallel layout to train a model on a cluster, and what a serving
deployment delivers.

Training (`plan_training`). For a model, a GPU type and count, a token budget, a sequence length
and a global batch, enumerate every layout -- tensor (tp), pipeline (pp, with a 1F1B or a DualPipe
schedule), expert (ep, inside data parallelism as in Megatron and DeepSeek) and data (dp) parallel
sizes, ZeRO stage, micro-batch, recomputation (none / selective / full) and matmul precision (bf16
/ fp8) -- reject the layouts that do not fit in memory (counting why), and rank the rest by step
time. Serving (`plan_serving`): prefill or decode capacity of a deployment, the batch bounded by
the KV cache.

Every per-component number comes from the cost modules, never from a formula re-derived here:
    parameters per GPU      dsim.cost.params, divided by the rules of dsim.cost.layout
    activations             dsim.cost.memory.layer_activation_bytes / model_activation_bytes
    compute                 dsim.cost.timing: the ops of `block_plan` / `step_plan` timed by
                            `op_time` (and `op_kernels` for the MoE layer), with the GPU's
                            calibration
    communication           dsim.cost.comm: collective_time, moe_dispatch_time, dp_volumes
    pipeline bubbles        the table of dsim.cost.comm.pipeline_bubble_time
    model FLOPs (MFU)       dsim.cost.flops

Memory: bytes on the busiest GPU, by kind: weights (bf16), gradients (fp32), optimizer (fp32 master
weights + Adam's two moments in `optimizer_dtype`), activations (bf16), buffers (a fixed reserve
for the CUDA context, NCCL/cuBLAS workspaces and allocator fragmentation, plus the layer ZeRO-3
prefetches). A layout fits when they add up to at most the HBM capacity.

The modules, in the order a search uses them:
    job          TrainingJob, parse_size, the choices and assumptions
    layouts      enumerate_layouts and the Layouts arrays
    times        op and collective times from the cost modules, memoised (training and serving)
    tables       per-model training quantities per distinct key of a few layout fields
    evaluate     the one evaluator: step time, memory, fit, over arrays of layouts
    search       plan_training: evaluate, rank, report TrainingPlans
    serve        plan_serving, serving_curve
    deepseek_v3  DeepSeek-V3's published figures and their reproduction
    public_runs  published training runs (dsim/data/public_runs.json) against the planner
    ep_compare   the predictions for bench/ep_step_measure.py's layouts, against its JSON
"""

from dsim.cost.plan.deepseek_v3 import (
    DEEPSEEK_V3_SERVING,
    DEEPSEEK_V3_TRAINING,
    deepseek_v3_workload,
    reproduce_deepseek_v3_serving,
    reproduce_deepseek_v3_training,
)
from dsim.cost.plan.evaluate import (
    EXPOSED_KINDS,
    MEMORY_KINDS,
    OUTPUTS,
    REASONS,
    evaluate,
    evaluate_layout,
    pipeline_bubble,
)
from dsim.cost.plan.job import (
    ASSUMPTIONS,
    FP8_COMPONENTS,
    MATMUL_DTYPES,
    MAX_MICROBATCH_TOKENS,
    PHASES,
    PREFILL_TOKENS_PER_GPU,
    RECOMPUTE,
    RESERVED_BYTES,
    SCHEDULES,
    ZERO_STAGES,
    TrainingJob,
    parse_size,
)
from dsim.cost.plan.layouts import FIELDS, Layouts, enumerate_layouts
from dsim.cost.plan.public_runs import GOODPUT, load_public_runs, public_runs_table
from dsim.cost.plan.search import PlanResult, TrainingPlan, plan_training
from dsim.cost.plan.serve import ServePlan, plan_serving, serving_curve

__all__ = [
    "ASSUMPTIONS",
    "DEEPSEEK_V3_SERVING",
    "DEEPSEEK_V3_TRAINING",
    "EXPOSED_KINDS",
    "FIELDS",
    "FP8_COMPONENTS",
    "GOODPUT",
    "MATMUL_DTYPES",
    "MAX_MICROBATCH_TOKENS",
    "MEMORY_KINDS",
    "OUTPUTS",
    "PHASES",
    "PREFILL_TOKENS_PER_GPU",
    "REASONS",
    "RECOMPUTE",
    "RESERVED_BYTES",
    "SCHEDULES",
    "ZERO_STAGES",
    "Layouts",
    "PlanResult",
    "ServePlan",
    "TrainingJob",
    "TrainingPlan",
    "deepseek_v3_workload",
    "enumerate_layouts",
    "evaluate",
    "evaluate_layout",
    "load_public_runs",
    "parse_size",
    "pipeline_bubble",
    "plan_serving",
    "plan_training",
    "public_runs_table",
    "reproduce_deepseek_v3_serving",
    "reproduce_deepseek_v3_training",
    "serving_curve",
]
