"""Blocks, head, MTP and the whole step: the ops of `dsim.model.Transformer` in order, and the
time model's view of them (`block_plan`, `step_plan`)."""

from __future__ import annotations

from dataclasses import replace

from dsim.config import ModelArgs
from dsim.cost.dtypes import DTYPES, dtype_name
from dsim.cost.graph.attention import gqa, mla
from dsim.cost.graph.ffn import moe, swiglu
from dsim.cost.graph.ops import (
    C,
    Ctx,
    GraphOp,
    Item,
    PlanOp,
    StepGraph,
    cached_bytes,
    elementwise,
    ew,
    gemm,
    make_op,
    matmul,
    rms_norm,
)
from dsim.cost.graph.rules import (
    MODES,
    AttnKernel,
    Device,
    Mode,
    is_moe_layer,
    layer_window,
    mtp_depths,
    mtp_layer_id,
    sdpa_kernel,
    step_shape,
)


def _residual(c: Ctx) -> GraphOp:
    """x + f(x) on [T, D]: the block's own op."""
    n = c.T * c.args.dim * c.e
    io = dict(reads={"x": n, "f(x)": n}, writes={"x + f(x)": n})
    time = [ew("residual add", 6 * c.T * c.args.dim)]
    return make_op(c, "residual add", c.block, C.RESIDUAL, time, **io)


def _block(c: Ctx, layer_id: int) -> list[GraphOp]:
    """Block(layer_id): x + attn(attn_norm(x)), then x + ffn(ffn_norm(x)) (dense MLP or MoE)."""
    c = replace(c, window=layer_window(c.args, layer_id))
    a, T, D, e, b = c.args, c.T, c.args.dim, c.e, c.block
    has_moe = is_moe_layer(a, layer_id)
    ops = [rms_norm(c, f"{b}.attn_norm", T, D, T * D * e, True, "attn_norm")]
    ops += mla(c) if a.attn_type == "mla" else gqa(c)
    # ffn_norm's input is the attention residual (new memory). Its bf16 output is kept by a
    # Linear that reads it (dense MLP, shared experts) or, in fp32, by the gate; routed experts
    # only gather its rows.
    kept = not has_moe or a.n_shared_experts > 0 or e == 4
    to_linear = not has_moe or a.n_shared_experts > 0  # else its output feeds the fp32 gate only
    ffn_norm = rms_norm(c, f"{b}.ffn_norm", T, D, T * D * e, kept, "ffn_norm", to_linear)
    ops += [_residual(c), ffn_norm]
    ops += moe(c) if has_moe else swiglu(c, f"{b}.ffn", C.DENSE_FFN, a.inter_dim, "", "ffn (dense)")
    return ops + [_residual(c)]


def _head(c: Ctx, norm: str, t: int) -> list[GraphOp]:
    """The final norm, the output head [t, D] -> [t, V] (its logits are the step's output, kept for
    the loss) and, in training, the float32 cross-entropy (the loss, outside the model: "")."""
    D, V, e = c.args.dim, c.args.vocab_size, c.e
    logits = [Item(f"{c.label}logits (kept for the loss)", t * V * e)]
    reads, writes = {"x": t * D * e, "head": V * D * e}, {"logits": t * V * e}
    ops = [
        rms_norm(c, norm, t, D, t * D * e, True, feeds_fp8=False),  # the head keeps bf16
        matmul(c, [gemm("head", t, V, D, None)], "head", C.HEAD, reads, writes, logits),
    ]
    if c.train:
        ops.append(elementwise(c, "cross-entropy (fp32 log-softmax)", "", C.HEAD, 14 * t * V, 3))
    return ops


def _embed(c: Ctx, t: int) -> GraphOp:
    """The embedding lookup: t rows of the [V, D] table (shared by the MTP modules)."""
    D, V = c.args.dim, c.args.vocab_size
    io = dict(reads={"rows of embed": t * D * c.e}, writes={"h": t * D * c.e})
    time = [("embed", "gather_rows", dict(rows=t, width=D, dst_rows=V))]
    return make_op(c, "embed", "embed", C.EMBEDDING, time, **io)


def _mtp(c: Ctx, k: int, s: int) -> list[GraphOp]:
    """MTP depth k on s = seq_len - k positions: eh_proj(cat(enorm(embed), hnorm(h))) [t, 2D] ->
    [t, D], a full block, its own norm and the shared head; all charged to MTP."""
    m, D, e = f"mtp.{k - 1}", c.args.dim, c.e
    c = replace(c, seq_len=s, context=0, label=f"{m}.", charge=C.MTP)
    t = c.T
    cat = [Item(f"{m}.cat (kept by eh_proj)", t * 2 * D * e, fp8_bytes=cached_bytes(2 * t * D))]
    reads, writes = {"cat": t * 2 * D * e, "eh_proj": 2 * D * D * e}, {"h": t * D * e}
    ops = [
        _embed(c, t),
        rms_norm(c, f"{m}.enorm", t, D, t * D * e, False),
        rms_norm(c, f"{m}.hnorm", t, D, None, False),  # its input is a slice of h, kept elsewhere
        elementwise(c, "concat", m, C.MTP, 8 * t * D, 1, cat),
        matmul(c, [gemm("eh_proj", t, D, 2 * D, None)], f"{m}.eh_proj", C.MTP, reads, writes),
    ]
    ops += _block(replace(c, block=f"{m}.block"), mtp_layer_id(c.args))
    return ops + _head(c, f"{m}.norm", t)


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _ctx(
    args: ModelArgs, shape: tuple, mode: str, kernel: str | None, dtype: str, device: str
) -> Ctx:
    """Check the settings; shape is (batch, new tokens per sequence, cached tokens)."""
    for name, value, low in zip(("batch", "seq_len", "context"), shape, (1, 1, 0)):
        _check_int(name, value, low)
    if not isinstance(args, ModelArgs):
        raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'train', 'prefill' or 'decode', got {mode!r}")
    if kernel not in (None, "fused", "math"):
        raise ValueError(f"attn_kernel must be 'fused', 'math' or None, got {kernel!r}")
    e = DTYPES[dtype_name(dtype, ("fp32", "bf16", "fp16"), "activation dtype")].bits // 8
    kernel = kernel or sdpa_kernel(args, device)
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    return Ctx(args, *shape, mode, kernel, e, device == "cpu")


def block_graph(
    args: ModelArgs,
    layer_id: int,
    batch: int,
    seq_len: int,
    context: int = 0,
    mode: Mode = "train",
    *,
    attn_kernel: AttnKernel | None = None,
    act_dtype: str = "bf16",
    device: Device = "cuda",
) -> list[GraphOp]:
    """The ops of Block(layer_id) on batch x seq_len new tokens after `context` cached ones.

    layer_id n_layers is the block an MTP module is built with. attn_kernel: "fused" or "math"
    (None: what PyTorch runs on `device`, `sdpa_kernel`). act_dtype and device set the bytes and
    the kernels of the kept tensors. Time labels are relative to the block ("wq_a")."""
    c = _ctx(args, (batch, seq_len, context), mode, attn_kernel, act_dtype, device)
    if not isinstance(layer_id, int) or not 0 <= layer_id <= args.n_layers:
        raise ValueError(
            f"layer_id must be an integer between 0 and n_layers={args.n_layers} "
            f"(the MTP block), got {layer_id!r}"
        )
    return _block(replace(c, block=f"layers.{layer_id}"), layer_id)


def step_graph(
    args: ModelArgs,
    batch: int = 1,
    seq_len: int = 4096,
    mode: Mode = "train",
    context: int | None = None,
    *,
    attn_kernel: AttnKernel | None = None,
    act_dtype: str = "bf16",
    device: Device = "cuda",
    layers: range | None = None,
) -> StepGraph:
    """The ops of one step of Transformer(args), in the order the model runs them.

    mode:
        "train"    forward and backward on batch x seq_len tokens: embedding, blocks, final norm,
                   head, cross-entropy, then the MTP modules (`mtp_depths`).
        "prefill"  forward of batch x seq_len prompt tokens after `context` cached ones (default 0).
        "decode"   forward of one new token per sequence after `context` (default seq_len) cached.
    layers: the main model's blocks to list (default all; a pipeline stage lists its own).
    """
    _check_int("seq_len", seq_len, 1)  # before decode turns it into the context
    if mode == "train" and context:
        raise ValueError(f"context must be 0 or None for mode='train' (no KV cache), got {context}")
    seq_len, context = step_shape(mode, seq_len, context)
    c = _ctx(args, (batch, seq_len, context), mode, attn_kernel, act_dtype, device)
    ops = [_embed(c, c.T)]
    for i in range(args.n_layers) if layers is None else layers:
        ops += _block(replace(c, block=f"layers.{i}", label=f"layers.{i}."), i)
    ops += _head(c, "norm", c.T)
    for k, s in mtp_depths(args, seq_len) if c.train else []:
        ops += _mtp(c, k, s)
    return StepGraph(args, mode, batch, seq_len, context, tuple(ops))


# ---------------------------------------------------------------------------------------------
# The time view
# ---------------------------------------------------------------------------------------------
def plan(ops: list[GraphOp] | tuple[GraphOp, ...]) -> list[PlanOp]:
    """The time model's ops of a list of graph ops, in order."""
    return [p for op in ops for p in op.time]


def block_plan(
    args: ModelArgs, layer_id: int, batch: int, seq_len: int, context: int = 0, mode: Mode = "train"
) -> list[PlanOp]:
    """The time model's ops of one block (dsim.cost.timing.block_plan, from the graph)."""
    return plan(block_graph(args, layer_id, batch, seq_len, context, mode))


def step_plan(
    args: ModelArgs, batch: int, seq_len: int, mode: Mode = "train", context: int | None = None
) -> list[PlanOp]:
    """The time model's ops of one step (dsim.cost.timing.step_plan, from the graph)."""
    return plan(step_graph(args, batch, seq_len, mode, context).ops)
