"""The components a cost is charged to: one enumeration for every breakdown.

Parameters, FLOPs, activation memory, op times and the planner's pipeline stages all report by
these names. An op that names anything else is a bug the tests catch (tests check that every op of
the op graph carries a `Component` and that no component of a model gets zero time).
Members are strings, so `Component.NORMS == "norms"` and a breakdown prints plainly.
"""

from __future__ import annotations

from enum import Enum


class Component(str, Enum):
    """Where in the model a cost belongs, in display order."""

    EMBEDDING = "embedding"  # the input embedding lookup (first pipeline stage)
    NORMS = "norms"  # RMSNorms of the blocks and the final norm
    # attention projections: wq(_a/_b), wkv_a/b, wk, wv, wo, and MLA's absorbed W_UK and W_UV
    ATTN_PROJ = "attn_proj"
    ROPE = "rope"  # rotary embedding of queries and keys
    ATTN_CORE = "attn_core"  # QK^T, softmax, PV (and the KV-cache writes)
    RESIDUAL = "residual"  # residual adds
    DENSE_FFN = "dense_ffn"  # the SwiGLU MLP of dense layers
    GATE = "gate"  # the MoE router
    ROUTED_EXPERTS = "routed_experts"  # the routed experts and their dispatch/combine
    SHARED_EXPERTS = "shared_experts"  # the always-on shared experts
    HEAD = "head"  # final norm's output projection to the vocabulary, and the loss
    MTP = "mtp"  # every op of the multi-token-prediction modules

    def __str__(self) -> str:
        return self.value


def component(value: object) -> Component:
    """`value` as a Component, or a ValueError listing the allowed names."""
    try:
        return Component(value)
    except ValueError:
        allowed = ", ".join(c.value for c in Component)
        raise ValueError(f"component must be one of {allowed}, got {value!r}") from None
