"""Diagrams drawn by code from the model's own objects, one line each in a notebook cell:

    mla_dataflow(args)            MLA's projections, widths and KV cache, naive and absorbed
    moe_dispatch(args)            the gate's choice for a few tokens: top-k experts and weights,
                                  the group limit, the shared expert, tokens per expert
    pipeline_schedule(...)        1F1B and DualPipe step by step, from dsim.cost.schedule
    ep_all_to_all(args, ep)       expert-parallel dispatch and combine, bytes from dsim.cost.comm

Each returns a matplotlib Figure whose label (`fig.get_label()`) is its caption.
"""

from dsim.diagrams.mla import MLAShapes, mla_dataflow, mla_shapes
from dsim.diagrams.moe import ep_all_to_all, expert_counts, kept_groups, moe_dispatch, routed_batch
from dsim.diagrams.pipeline import pipeline_schedule

__all__ = [
    "MLAShapes",
    "ep_all_to_all",
    "expert_counts",
    "kept_groups",
    "mla_dataflow",
    "mla_shapes",
    "moe_dispatch",
    "pipeline_schedule",
    "routed_batch",
]
