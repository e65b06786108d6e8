"""Analytical cost models: parameters, FLOPs, memory, hardware, communication, time, plans.

Pure functions, numbers in and numbers out; the tests hold each one to the real model
(`dsim.model`) or to measurements committed in `dsim/data/`.
"""

from dsim.cost.comm import (
    ALGORITHMS,
    DEEPSEEK_V3_NODE_LIMIT,
    KINDS,
    PIPELINE_SCHEDULES,
    AlphaBeta,
    CommVolume,
    MoEA2ABytes,
    Topology,
    achieved_bandwidth,
    bubble_fraction_1f1b,
    bus_bandwidth,
    bus_bandwidth_factor,
    collective_time,
    dp_volumes,
    ep_step_bytes,
    expected_nodes_reached,
    exposed_comm_time,
    fit_alpha_beta,
    hidden_comm_fraction,
    moe_a2a_bytes,
    moe_dispatch_time,
    pipeline_bubble_fraction,
    pipeline_bubble_time,
    pp_volume,
    time_on_topology,
    tp_volume,
    zero_comm_bytes,
)
from dsim.cost.flops import flops
from dsim.cost.hardware import DTYPES, GPU, get_gpu, list_gpus, peak_flops, register_gpu
from dsim.cost.memory import bytes_per_param, kv_cache_bytes_per_token, memory, weight_bytes
from dsim.cost.params import params
from dsim.cost.plan import (
    PlanResult,
    ServePlan,
    TrainingJob,
    TrainingPlan,
    parse_size,
    plan_serving,
    plan_training,
    reproduce_deepseek_v3_serving,
    reproduce_deepseek_v3_training,
    serving_curve,
)
from dsim.cost.timing import (
    Calibration,
    fit_calibration,
    gpu_calibration,
    layer_time,
    op_kernels,
    op_time,
    roofline_time,
    step_time,
)
