"""
Analytical cost model of GPU communication, one concept per module:

    collectives  how long one collective takes on a topology (the NCCL-like model and its
                 calibrated constants), bus bandwidth
    fit          fitting that model (or an alpha-beta line) to measured sweeps
    moe          MoE expert-parallel dispatch/combine: bytes over IB and NVLink, DeepEP time
    volumes      the collectives each parallelism strategy (TP, PP, DP/ZeRO) issues per step
    crossval     the model fitted on some world sizes, validated on the others (not
                 re-exported: `from dsim.cost.comm.crossval import ...`)

Pipeline bubbles and the overlap of communication with compute are in dsim.cost.pipeline;
their names are re-exported here, so `from dsim.cost import comm; comm.X` reaches every one.
"""

from dsim.cost.comm.collectives import (
    ALGORITHMS,
    COLLECTIVE_BW_FACTORS,
    KINDS,
    LAUNCH_OVERHEAD_S,
    LL_BW_FRACTION,
    MEASURED_BUS_BW,
    MEASURED_FILE,
    MEASURED_GPU,
    NET_CHUNK_OVERHEAD_S,
    NET_HOP_LATENCY_S,
    NET_PEAK_EFFICIENCY,
    NVLINK_CHUNK_OVERHEAD_S,
    NVLINK_HOP_LATENCY_S,
    NVLINK_PEAK_EFFICIENCY,
    PCIE_CHUNK_OVERHEAD_S,
    PCIE_HOP_LATENCY_S,
    SCALING_BOOK_8XH100_ALL_REDUCE,
    TREE_BW_FACTOR,
    Topology,
    achieved_bandwidth,
    bus_bandwidth,
    bus_bandwidth_factor,
    collective_time,
    time_on_topology,
)
from dsim.cost.comm.fit import (
    DATA_DIR,
    AlphaBeta,
    CommCalibration,
    calibrate_from_measurements,
    fit_alpha_beta,
    load_measurements,
    measured_calibration,
)
from dsim.cost.comm.moe import (
    DEEPSEEK_V3_NODE_LIMIT,
    EP_HALF_SATURATION_BYTES,
    MoEA2ABytes,
    ep_step_bytes,
    expected_nodes_reached,
    moe_a2a_bytes,
    moe_dispatch_time,
)
from dsim.cost.comm.volumes import CommVolume, dp_volumes, pp_volume, tp_volume, zero_comm_bytes
from dsim.cost.pipeline import (
    PIPELINE_SCHEDULES,
    bubble_fraction_1f1b,
    exposed_comm_time,
    hidden_comm_fraction,
    pipeline_bubble_fraction,
    pipeline_bubble_time,
)

__all__ = [
    "ALGORITHMS",
    "COLLECTIVE_BW_FACTORS",
    "DATA_DIR",
    "DEEPSEEK_V3_NODE_LIMIT",
    "EP_HALF_SATURATION_BYTES",
    "KINDS",
    "LAUNCH_OVERHEAD_S",
    "LL_BW_FRACTION",
    "MEASURED_BUS_BW",
    "MEASURED_FILE",
    "MEASURED_GPU",
    "NET_CHUNK_OVERHEAD_S",
    "NET_HOP_LATENCY_S",
    "NET_PEAK_EFFICIENCY",
    "NVLINK_CHUNK_OVERHEAD_S",
    "NVLINK_HOP_LATENCY_S",
    "NVLINK_PEAK_EFFICIENCY",
    "PCIE_CHUNK_OVERHEAD_S",
    "PCIE_HOP_LATENCY_S",
    "PIPELINE_SCHEDULES",
    "SCALING_BOOK_8XH100_ALL_REDUCE",
    "TREE_BW_FACTOR",
    "AlphaBeta",
    "CommCalibration",
    "CommVolume",
    "MoEA2ABytes",
    "Topology",
    "achieved_bandwidth",
    "bubble_fraction_1f1b",
    "bus_bandwidth",
    "bus_bandwidth_factor",
    "calibrate_from_measurements",
    "collective_time",
    "dp_volumes",
    "ep_step_bytes",
    "expected_nodes_reached",
    "exposed_comm_time",
    "fit_alpha_beta",
    "hidden_comm_fraction",
    "load_measurements",
    "measured_calibration",
    "moe_a2a_bytes",
    "moe_dispatch_time",
    "pipeline_bubble_fraction",
    "pipeline_bubble_time",
    "pp_volume",
    "time_on_topology",
    "tp_volume",
    "zero_comm_bytes",
]
