"""FLOPs of every matrix multiplication the real model runs, forward and backward.

A matmul of an [m, k] by a [k, n] matrix costs 2mkn FLOPs (one multiply and one add per term), and
its backward costs twice that (one matmul for the input gradient, one for the weight gradient).
So a Linear layer with a weight of `numel` elements costs 2 * tokens * numel forward. Elementwise
work (norms, RoPE, softmax, SiLU, residual adds) is not counted, as `FlopCounterMode` does not.

Everything is counted the way `torch.utils.flop_counter.FlopCounterMode` counts `dsim.model`, so
the two agree exactly (tests/cost/test_flops.py). Two conventions need a word:

Attention core (QK^T and PV). PyTorch's counter charges a fused attention kernel for the full
S_q x S_k score matrix, even when it is causal, and charges its backward 2 S_q S_k (3 d_qk + 2 d_v)
per head (the kernel recomputes QK^T). We report that number (`forward`, `backward`, `total`) and
also what a causal kernel really does, only the (query, key) pairs the mask keeps
(`forward_causal`, `total_causal`): S (S + 1) / 2 per sequence instead of S^2 when starting from an
empty cache, about half. `attn_kernel` picks how the backward is charged:
    "fused"  flash / memory-efficient / cuDNN kernels (GPU): backward = 2x forward + QK^T again.
    "math"   the unfused path (CPU whenever d_qk != d_v, i.e. MLA-naive; MLA-absorb's einsums
             always): the score matrix is materialised and backward = 2x forward.
`sdpa_kernel(args, "cpu")` says which one PyTorch picks for the model. On a CPU PyTorch's counter
counts zero for the fused kernel `_scaled_dot_product_flash_attention_for_cpu` (it has no formula);
`counter_mapping()` registers the GPU kernels' formula for it, so a CPU count equals a GPU count.

Routed experts. Every (token, expert) assignment costs 3 * 2 * dim * moe_inter_dim forward, so
the experts cost T * n_activated_experts times that, however unbalanced the routing is. The model
runs all assignments even when `capacity_factor` drops some (it zeroes their combine weight), so
this is exact then too. (The CPU fallback of expert_impl="grouped" pads every expert to the
busiest one's token count; count that path with expert_impl="loop" or on a GPU.)

The ops and their numbers are those of the op graph (`dsim.cost.graph.step_graph`): `flops()` lists
the graph ops that multiply matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dsim.config import ModelArgs
from dsim.cost.components import Component
from dsim.cost.graph import attention_pairs, sdpa_kernel, step_graph  # noqa: F401  (re-exported)
from dsim.cost.params import params

Mode = Literal["train", "prefill", "decode"]
AttnKernel = Literal["fused", "math"]

# Components with matmul FLOPs, in display order (the rest, norms, RoPE, residuals and the
# embedding lookup, do elementwise work only).
KINDS = (
    Component.ATTN_PROJ,
    Component.ATTN_CORE,
    Component.DENSE_FFN,
    Component.GATE,
    Component.SHARED_EXPERTS,
    Component.ROUTED_EXPERTS,
    Component.HEAD,
    Component.MTP,
)


@dataclass(frozen=True)
class Op:
    """One matrix multiplication (or a group of identical ones) of the model.

    module: the model's module the counter attributes it to ("layers.3.attn.wq_a"; the attention
        core and MLA's absorbed products belong to "layers.3.attn" itself).
    kind: its component (see KINDS); every op of an MTP module is Component.MTP.
    """

    module: str
    kind: Component
    forward: int
    backward: int
    forward_causal: int
    backward_causal: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    @property
    def total_causal(self) -> int:
        return self.forward_causal + self.backward_causal


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one step: `batch` sequences of `seq_len` new tokens after `context` cached ones."""

    args: ModelArgs
    mode: str
    batch: int
    seq_len: int  # new tokens per sequence in this step (1 for decode)
    context: int  # tokens already in the KV cache before this step
    attn_kernel: str
    ops: tuple[Op, ...] = field(repr=False)

    @property
    def tokens(self) -> int:
        """New tokens processed: batch * seq_len (batch for decode)."""
        return self.batch * self.seq_len

    @property
    def forward(self) -> int:
        return sum(op.forward for op in self.ops)

    @property
    def backward(self) -> int:
        return sum(op.backward for op in self.ops)

    @property
    def total(self) -> int:
        """Forward + backward (train) or forward (prefill, decode), as FlopCounterMode counts it."""
        return self.forward + self.backward

    @property
    def total_causal(self) -> int:
        """Like `total`, with attention charged only for the (query, key) pairs the mask keeps."""
        return sum(op.total_causal for op in self.ops)

    @property
    def per_token(self) -> float:
        return self.total / self.tokens

    @property
    def breakdown(self) -> dict[str, int]:
        """Component -> FLOPs (forward + backward), counter convention."""
        out = dict.fromkeys(KINDS, 0)
        for op in self.ops:
            out[op.kind] += op.total
        return out

    @property
    def breakdown_causal(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for op in self.ops:
            out[op.kind] += op.total_causal
        return out

    def by_module(
        self, direction: Literal["forward", "backward", "total"] = "forward"
    ) -> dict[str, int]:
        """FLOPs attributed to every module and its parents ("layers.3", "layers.3.attn", ...),
        the way FlopCounterMode's get_flop_counts() reports them (it nests children into parents).
        The ModuleLists `layers` and `mtp` are never called, so they have no entry."""
        out: dict[str, int] = {}
        for op in self.ops:
            parts = op.module.split(".")
            for i in range(1, len(parts) + 1):
                key = ".".join(parts[:i])
                if key not in ("layers", "mtp"):
                    out[key] = out.get(key, 0) + getattr(op, direction)
        return out


# ---------------------------------------------------------------------------------------------
# The whole model: a view of the op graph (dsim.cost.graph)
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def flops(
    args: ModelArgs,
    batch: int = 1,
    seq_len: int = 4096,
    mode: Mode = "train",
    context: int | None = None,
    attn_kernel: AttnKernel = "fused",
) -> FlopCount:
    """FLOPs of one step of `Transformer(args)`, by module and component.

    mode:
        "train"    forward and backward of the main model on batch x seq_len tokens, plus the MTP
                   modules (depth k runs on seq_len - k positions and the shared head).
        "prefill"  forward of batch x seq_len prompt tokens (logits at every position, as the
                   model computes them), after `context` cached tokens (default 0: chunked
                   prefill if > 0).
        "decode"   forward of one new token per sequence attending to `context` cached tokens
                   (default: seq_len, so flops(args, seq_len=4096, mode="decode") is the 4097th
                   token).
    attn_kernel: "fused" or "math", how the attention backward is charged (module docstring).
    """
    if attn_kernel not in ("fused", "math"):
        raise ValueError(f"attn_kernel must be 'fused' or 'math', got {attn_kernel!r}")
    g = step_graph(args, batch, seq_len, mode, context, attn_kernel=attn_kernel)
    ops = tuple(
        Op(op.module, op.component, f.forward, f.backward, f.forward_causal, f.backward_causal)
        for op in g.ops
        if (f := op.flops)
    )
    return FlopCount(
        args=args,
        mode=mode,
        batch=batch,
        seq_len=g.seq_len,
        context=g.context,
        attn_kernel=attn_kernel,
        ops=ops,
    )


# ---------------------------------------------------------------------------------------------
# Textbook approximations, for comparison
# ---------------------------------------------------------------------------------------------
def six_nd(args: ModelArgs, tokens: int, mode: Mode = "train") -> int:
    """The rule of thumb: 6 N D for training (2 N D forward), N = activated non-embedding parameters
    of the main model (`params(args).active_no_embedding`), D = tokens. It counts every weight
    matmul exactly once per token and ignores the attention core and the MTP modules."""
    _check_int("tokens", tokens, 1)
    if mode not in ("train", "prefill", "decode"):
        raise ValueError(f"mode must be 'train', 'prefill' or 'decode', got {mode!r}")
    n = params(args).active_no_embedding
    return (6 if mode == "train" else 2) * n * tokens


def megatron_flops(args: ModelArgs, batch: int, seq_len: int) -> float:
    """Megatron-LM's closed form for one training step (fwd + bwd = 3 x 2 FLOPs per weight per
    token), adapted to dsim's field names: MLA or GQA attention with a causal core of S/2 keys per
    query, a dense FFN in the first n_dense_layers, top-k routed + shared experts after, logits for
    the main model and every MTP depth. Like Megatron it leaves out the router (gate) matmul,
    charges the attention backward 2x its forward, adds one "FLOP" per norm element (the +1 and
    3 * dim terms) and runs MTP layers on all seq_len positions."""
    a = args
    tokens = batch * seq_len
    D, H, S, E3 = a.dim, a.n_heads, seq_len, 6  # 3 passes x 2 FLOPs per multiply-add
    if a.attn_type == "mla":
        dn, dr, dv, R = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.kv_lora_rank
        q = a.q_lora_rank * (D + H * (dn + dr) + 1) if a.q_lora_rank else D * H * (dn + dr)
        attn = (
            q
            + R * (D + H * (dn + dv) + 1)
            + D * dr
            + H * dv * D
            + S * H * (dn + dr) / 2
            + S * H * dv / 2
        )
    else:
        qp, kvp = a.head_size * H, a.head_size * a.kv_heads
        attn = D * (qp + 2 * kvp) + qp * S / 2 * 2 + qp * D
    n_moe = a.n_moe_layers + (a.n_mtp_layers if a.is_moe else 0)
    n_dense = a.n_dense_layers + (0 if a.is_moe else a.n_mtp_layers)
    mlp = D * (
        3 * a.inter_dim * n_dense
        + 3 * a.moe_inter_dim * (a.n_activated_experts + a.n_shared_experts) * n_moe
    )
    mtp = a.n_mtp_layers * (3 * D + 2 * D * D)
    logits = D * a.vocab_size * (1 + a.n_mtp_layers)
    return tokens * E3 * (mlp + attn * (a.n_layers + a.n_mtp_layers) + mtp + logits)


# ---------------------------------------------------------------------------------------------
# Counting the real model
# ---------------------------------------------------------------------------------------------
def counter_mapping() -> dict:
    """`custom_mapping` for FlopCounterMode that counts PyTorch's CPU flash-attention kernel with
    the formula PyTorch uses for its GPU kernels (full S_q x S_k scores, non-causal). Without it a
    CPU count charges fused attention zero FLOPs.

        with FlopCounterMode(display=False, custom_mapping=counter_mapping()) as counter: ...
    """
    import torch

    def fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:  # shapes [B, H, S, d]
        b, h, sq, dqk = q
        return 2 * b * h * sq * k[2] * (dqk + v[-1])

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        b, h, sq, dqk = q
        return 2 * b * h * sq * k[2] * (3 * dqk + 2 * v[-1])

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }
