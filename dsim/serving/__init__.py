"""A request-level serving simulator for MoE models: requests arrive (Poisson or a trace), a
continuous-batching scheduler with chunked prefill runs them on colocated or disaggregated pools
of expert-parallel units, with a prefix KV cache, MTP speculative decoding and KV-memory
preemption; step times come from dsim's time model (`StepCost`).

workload: `Request`, `poisson_requests`, `read_trace`, `write_trace`; prefix_cache:
`PrefixCache`; step_cost: `StepShape`, `StepCost`, `ConstantStepCost`, `LinearStepCost`; engine:
`Pool`, `Simulator`, `Trace`; metrics: `summarize`, `ServingReport`.
"""

from dsim.serving.engine import Pool, Simulator, Trace
from dsim.serving.metrics import ServingReport, summarize
from dsim.serving.prefix_cache import PrefixCache
from dsim.serving.step_cost import ConstantStepCost, LinearStepCost, StepCost, StepShape
from dsim.serving.workload import Request, poisson_requests, read_trace, write_trace

__all__ = [
    "ConstantStepCost",
    "LinearStepCost",
    "Pool",
    "PrefixCache",
    "Request",
    "ServingReport",
    "Simulator",
    "StepCost",
    "StepShape",
    "Trace",
    "poisson_requests",
    "read_trace",
    "summarize",
    "write_trace",
]
