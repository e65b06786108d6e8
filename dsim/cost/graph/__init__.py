"""One op graph of dsim.model: the ops of a block and of a step, from which every cost is read.

The model is written once, here, in the order `dsim.model.Transformer` runs it. Each op says
    module     the real module it runs in, as `named_modules()` and FlopCounterMode name it
               ("layers.3.attn.wq_a"; the attention core, RoPE and MLA's absorbed products belong
               to "layers.3.attn"; the residual adds to "layers.3"; the loss to the model, "");
    component  the `Component` its cost is charged to (every op of an MTP module: MTP);
    flops      its matrix-multiplication FLOPs, forward and backward, as FlopCounterMode counts
               them (dsim.cost.flops explains the attention conventions), or None;
    reads, writes  the bytes its forward moves, tensor by tensor (matmuls, norms, residual adds,
               the embedding; the time model keeps its own kernel-level bytes for the rest);
    saved      the tensors autograd keeps for the backward pass of a training step (`Item`s, as
               dsim.cost.memory explains: they depend on the kernels of `device`);
    time       the time model's op(s) for it (`PlanOp`s, timed by dsim.cost.timing). The time model
               measures the MoE layer as one op, `moe_ffn`, which the routed experts carry; the
               gate's time is inside it, so the gate op has none.
The views: FLOPs (`dsim.cost.flops.flops`) read `flops`, activation memory
(`dsim.cost.memory.activation_items` and friends) reads `saved`, the time model reads `time`
(`block_plan`, `step_plan` below). The rules that every view shares live here once: which layers
are MoE, which layer id the MTP blocks are built with, the MTP positions, decode's shape.

Shapes: B sequences of S new tokens after `context` cached ones, T = B S tokens, D = dim,
H = n_heads, R = kv_lora_rank, dn/dr/dv = qk_nope/qk_rope/v head dims, E experts, top-K, V vocab;
e = bytes of an activation element.

Modules: `rules` (the shared rules), `ops` (an op and the builders of Linear, RMSNorm and
elementwise ops), `attention` (MLA, GQA), `ffn` (dense MLP, MoE), `model` (block, head, MTP, step,
and the time view).
"""

from dsim.cost.graph.model import block_graph, block_plan, plan, step_graph, step_plan
from dsim.cost.graph.ops import Flops, GraphOp, Item, PlanOp, StepGraph
from dsim.cost.graph.rules import (
    MODES,
    AttnKernel,
    Device,
    Mode,
    attention_pairs,
    first_moe_layer,
    is_moe_layer,
    mtp_depths,
    mtp_layer_id,
    sdpa_kernel,
    served_context,
    step_shape,
)

__all__ = [
    "MODES",
    "AttnKernel",
    "Device",
    "Flops",
    "GraphOp",
    "Item",
    "Mode",
    "PlanOp",
    "StepGraph",
    "attention_pairs",
    "block_graph",
    "block_plan",
    "first_moe_layer",
    "is_moe_layer",
    "mtp_depths",
    "mtp_layer_id",
    "plan",
    "sdpa_kernel",
    "served_context",
    "step_graph",
    "step_plan",
    "step_shape",
]
