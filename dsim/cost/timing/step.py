"""Blocks and steps: the ops dsim.model runs, composed, and their predicted time.

`block_plan` lists the ops of one transformer block, `step_plan` those of a whole step (embedding,
blocks, head, MTP modules, cross-entropy), each a `PlanOp` (component, label, op, shape) that
ops.op_time times; `layer_time` and `step_time` add them up into a `StepTime`, with a breakdown by
component. The planner (dsim.cost.plan) times a pipeline stage's slice of these plans.
"""

# ruff: noqa: E501  (block_plan and step_plan keep their lines until an op graph replaces them)
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dsim.cost.components import Component
from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.timing.calibration import Calibration, gpu_calibration
from dsim.cost.timing.ops import op_time


@dataclass(frozen=True)
class PlanOp:
    """One op of a block or step: its component (for breakdowns), a label, the op and its shape."""

    component: str
    label: str
    op: str
    shape: dict
    backward: bool = False


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


_MODES = ("train", "prefill", "decode")


def _ew(
    component: str, label: str, nbytes: float, kernels: int = 1, backward: bool = False
) -> PlanOp:
    return PlanOp(
        component, label, "elementwise", dict(bytes=int(nbytes), kernels=kernels), backward
    )


# fmt: off
# (block_plan and step_plan: kept as they were, until an op graph replaces their bodies)
def block_plan(args, layer_id: int, batch: int, seq_len: int, context: int = 0, mode: str = "train") -> list[PlanOp]:
    """The ops of one transformer block of dsim.model (attention, then dense MLP or MoE).

    batch x seq_len new tokens after `context` cached ones; mode "train" runs every op forward
    and backward. Shapes follow dsim.model exactly (MLA naive or absorbed, MHA/GQA, shared experts).
    """
    train = mode == "train"
    T, D, H = batch * seq_len, args.dim, args.n_heads
    skv = context + seq_len

    def g(comp: str, label: str, m: int, n: int, k: int, batch_: int = 1) -> PlanOp:
        return PlanOp(comp, label, "gemm", dict(m=m, n=n, k=k, batch=batch_), train)

    ops = [PlanOp("norms", "attn_norm", "rmsnorm", dict(tokens=T, hidden=D), train)]
    A = "attn_proj"
    if args.attn_type == "mla":
        qk, dv, R, dr, dn = args.qk_head_dim, args.v_head_dim, args.kv_lora_rank, args.qk_rope_head_dim, args.qk_nope_head_dim
        if args.q_lora_rank:
            ops += [g(A, "wq_a", T, args.q_lora_rank, D),
                    PlanOp("norms", "q_norm", "rmsnorm", dict(tokens=T, hidden=args.q_lora_rank), train),
                    g(A, "wq_b", T, H * qk, args.q_lora_rank)]
        else:
            ops.append(g(A, "wq", T, H * qk, D))
        ops += [g(A, "wkv_a", T, R + dr, D), PlanOp("norms", "kv_norm", "rmsnorm", dict(tokens=T, hidden=R), train),
                _ew("rope", "rope (q_pe, k_pe)", 24 * T * dr * (H + 1), 6, train)]
        if args.attn_impl == "naive":
            ops += [g(A, "wkv_b", T, H * (dn + dv), R),
                    _ew("attn_core", "cat q, k (expand k_pe)", 8 * T * H * qk, 2, train)]
            if mode != "train":
                ops.append(_ew("attn_core", "write k, v cache", 4 * T * H * (qk + dv), 2))
            ops.append(PlanOp("attn_core", "sdpa", "attention",
                              dict(batch=batch, seq=seq_len, kv_seq=skv, heads=H, qk_dim=qk, v_dim=dv,
                                   causal=seq_len > 1), train))
        else:
            B = batch
            ops += [g(A, "absorb W_UK into q", T, R, dn, H)]
            if mode != "train":
                ops.append(_ew("attn_core", "write latent cache", 4 * T * (R + dr), 2))
            ops += [g("attn_core", "scores q.c_kv", seq_len * H, skv, R, B), g("attn_core", "scores q_pe.k_pe", seq_len * H, skv, dr, B),
                    _ew("attn_core", "add, mask, softmax (fp32)", 22 * B * seq_len * H * skv, 4, train),
                    g("attn_core", "p @ c_kv", seq_len * H, R, skv, B), g(A, "W_UV", T, dv, R, H)]
        ops.append(g(A, "wo", T, D, H * dv))
    else:
        hd, kvh = args.head_size, args.kv_heads
        ops += [g(A, "wq", T, H * hd, D), g(A, "wk", T, kvh * hd, D), g(A, "wv", T, kvh * hd, D),
                _ew("rope", "rope (q, k)", 24 * T * hd * (H + kvh), 6, train)]
        if mode != "train":
            ops.append(_ew("attn_core", "write k, v cache", 8 * T * kvh * hd, 2))
        ops += [PlanOp("attn_core", "sdpa", "attention", dict(batch=batch, seq=seq_len, kv_seq=skv, heads=H, qk_dim=hd,
                                                              v_dim=hd, causal=seq_len > 1), train),
                g(A, "wo", T, D, H * hd)]
    ops += [_ew("residual", "residual add", 6 * T * D, 1, train),
            PlanOp("norms", "ffn_norm", "rmsnorm", dict(tokens=T, hidden=D), train)]
    if layer_id < args.n_dense_layers or not args.n_routed_experts:
        I = args.inter_dim
        ops += [g("dense_ffn", "w1", T, I, D), g("dense_ffn", "w3", T, I, D),
                _ew("dense_ffn", "silu(h1) * h3", 10 * T * I, 2, train), g("dense_ffn", "w2", T, D, I)]
    else:
        ops.append(PlanOp("routed_experts", "moe (gate + routed experts)", "moe_ffn",
                          dict(tokens=T, hidden=D, moe_inter=args.moe_inter_dim, experts=args.n_routed_experts,
                               top_k=args.n_activated_experts, route_norm=args.renormalize), train))
        if args.n_shared_experts:
            I = args.n_shared_experts * args.moe_inter_dim
            ops += [g("shared_experts", "shared w1", T, I, D), g("shared_experts", "shared w3", T, I, D),
                    _ew("shared_experts", "shared silu(h1) * h3", 10 * T * I, 2, train),
                    g("shared_experts", "shared w2", T, D, I), _ew("shared_experts", "routed + shared", 6 * T * D, 1, train)]
    ops.append(_ew("residual", "residual add", 6 * T * D, 1, train))
    return ops


def step_plan(args, batch: int, seq_len: int, mode: str = "train", context: int | None = None) -> list[PlanOp]:
    """Every op of one step of dsim.model.Transformer (same modes as dsim.cost.flops.flops).

    "train": forward and backward on batch x seq_len tokens, with the MTP modules and the
    cross-entropy; "prefill": forward on the prompt (logits at every position); "decode": one new
    token per sequence after `context` cached ones (default seq_len). The optimizer is not included.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if mode == "decode":
        context, seq_len = (seq_len if context is None else context), 1
    context = context or 0
    train = mode == "train"
    T, D, V = batch * seq_len, args.dim, args.vocab_size
    ops = [PlanOp(Component.EMBEDDING, "embed", "gather_rows", dict(rows=T, width=D, dst_rows=V), train)]
    for i in range(args.n_layers):
        ops += [dataclasses.replace(p, label=f"layers.{i}.{p.label}") for p in block_plan(args, i, batch, seq_len, context, mode)]

    def head(prefix: str, tokens: int) -> list[PlanOp]:
        out = [PlanOp("norms", f"{prefix}norm", "rmsnorm", dict(tokens=tokens, hidden=D), train),
               PlanOp("head", f"{prefix}head", "gemm", dict(m=tokens, n=V, k=D), train)]
        if train:
            out.append(_ew("head", f"{prefix}cross-entropy (fp32 log-softmax)", 14 * tokens * V, 3, True))
        return out
    ops += head("", T)
    if train:
        mtp_layer = args.n_layers if args.is_moe else 0
        for k in range(1, args.n_mtp_layers + 1):
            s = seq_len - k
            if s <= 0:
                continue
            t = batch * s
            pre = f"mtp.{k - 1}."
            ops += [PlanOp("mtp", pre + "embed", "gather_rows", dict(rows=t, width=D, dst_rows=V), True),
                    PlanOp("mtp", pre + "enorm", "rmsnorm", dict(tokens=t, hidden=D), True),
                    PlanOp("mtp", pre + "hnorm", "rmsnorm", dict(tokens=t, hidden=D), True),
                    _ew("mtp", pre + "concat", 8 * t * D, 1, True),
                    PlanOp("mtp", pre + "eh_proj", "gemm", dict(m=t, n=D, k=2 * D), True)]
            ops += [dataclasses.replace(p, component="mtp", label=pre + p.label)
                    for p in block_plan(args, mtp_layer, batch, s, 0, mode)]
            ops += [dataclasses.replace(p, component="mtp") for p in head(pre, t)]
    return ops


# fmt: on


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
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    if layer_id is None:
        layer_id = args.n_dense_layers if args.is_moe else 0
    if not 0 <= layer_id < args.n_layers:
        raise ValueError(
            f"layer_id must be between 0 and n_layers - 1 = {args.n_layers - 1}, got {layer_id}"
        )
    if mode == "decode":
        context, seq_len = (seq_len if context is None else context), 1
    return _timed(
        block_plan(args, layer_id, batch, seq_len, context or 0, mode), gpu, mode, calibration
    )


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
