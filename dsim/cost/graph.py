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
    time       the time model's op(s) for it (`PlanOp`s of dsim.cost.timing). The time model
               measures the MoE layer as one op, `moe_ffn`, which the routed experts carry; the
               gate's time is inside it, so the gate op has none.
The views: FLOPs (`dsim.cost.flops.flops`) read `flops`, activation memory
(`dsim.cost.memory.activation_items` and friends) reads `saved`, the time model reads `time`
(`block_plan`, `step_plan` below). The rules that every view shares live here once: which layers
are MoE, which layer id the MTP blocks are built with, the MTP positions, decode's shape.

Shapes: B sequences of S new tokens after `context` cached ones, T = B S tokens, D = dim,
H = n_heads, R = kv_lora_rank, dn/dr/dv = qk_nope/qk_rope/v head dims, E experts, top-K, V vocab;
e = bytes of an activation element.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from dsim.config import ModelArgs
from dsim.cost.components import Component
from dsim.cost.dtypes import DTYPES, dtype_name
from dsim.cost.timing import PlanOp

Mode = Literal["train", "prefill", "decode"]
AttnKernel = Literal["fused", "math"]
Device = Literal["cuda", "cpu"]
MODES = ("train", "prefill", "decode")
C = Component


# ---------------------------------------------------------------------------------------------
# The model's rules, shared by every view
# ---------------------------------------------------------------------------------------------
def is_moe_layer(args: ModelArgs, layer_id: int) -> bool:
    """Whether `Block(layer_id)` has an MoE FFN (the model's rule: layer_id >= n_dense_layers)."""
    return layer_id >= args.n_dense_layers


def mtp_layer_id(args: ModelArgs) -> int:
    """The layer id an MTP block is built with: an MoE block when the model has MoE layers."""
    return args.n_layers if args.is_moe else 0


def mtp_depths(args: ModelArgs, seq_len: int) -> list[tuple[int, int]]:
    """(depth k, positions) of every MTP module that runs: depth k sees seq_len - k positions."""
    return [(k, seq_len - k) for k in range(1, args.n_mtp_layers + 1) if seq_len - k > 0]


def step_shape(mode: str, seq_len: int, context: int | None) -> tuple[int, int]:
    """(new tokens per sequence, cached tokens before them) of a step. Decode runs one new token
    after `context` cached ones (default seq_len: the (seq_len + 1)-th token)."""
    if mode == "decode":
        return 1, (seq_len if context is None else context)
    return seq_len, context or 0


def attention_pairs(batch: int, seq_len: int, context: int, causal: bool) -> int:
    """(query, key) pairs per head: all of them (S x (context + S)), or those a causal mask keeps.

    Query i of a chunk starting at position `context` sees context + i + 1 keys, so the kept pairs
    are S * context + S (S + 1) / 2 per sequence.
    """
    if causal:
        return batch * (seq_len * context + seq_len * (seq_len + 1) // 2)
    return batch * seq_len * (context + seq_len)


def sdpa_kernel(args: ModelArgs, device: str = "cuda") -> AttnKernel:
    """Which attention path PyTorch runs for the model's `F.scaled_dot_product_attention` calls.

    On a CPU the fused flash kernel needs equal query and value head sizes, so MLA-naive
    (d_qk = qk_nope + qk_rope != v_head_dim) runs the unfused math path; on a GPU the memory-
    efficient / cuDNN kernels take any head sizes. (MLA-absorb never calls SDPA: it is "math".)
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if args.attn_type != "mla":
        return "fused"
    unequal_on_cpu = device == "cpu" and args.qk_head_dim != args.v_head_dim
    return "math" if args.attn_impl == "absorb" or unequal_on_cpu else "fused"


# ---------------------------------------------------------------------------------------------
# An op
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of an op: the counter's convention, and attention over causal pairs only."""

    forward: int
    backward: int
    forward_causal: int
    backward_causal: int


@dataclass(frozen=True)
class Item:
    """One tensor autograd keeps (or a group of identical ones): a name saying where, its bytes,
    whether selective recomputation (DeepSeek-V3: RMSNorms and MLA up-projections, plus any
    materialised score matrix) drops it, and whether the model itself holds it outside autograd
    (MoE.routing), so that even full recomputation keeps it."""

    name: str
    bytes: int
    selective_drops: bool = False
    outside_autograd: bool = False


@dataclass(frozen=True)
class GraphOp:
    """One op of the graph (see the module docstring for the fields)."""

    name: str
    module: str
    component: Component
    flops: Flops | None = None
    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    saved: tuple[Item, ...] = ()
    time: tuple[PlanOp, ...] = ()
    block: str = ""  # the Block it runs in ("layers.3", "mtp.0.block"); "" outside the blocks

    def __post_init__(self) -> None:
        comps = [self.component] + [p.component for p in self.time]
        if not all(isinstance(comp, Component) for comp in comps):
            allowed = ", ".join(comp.value for comp in Component)
            raise ValueError(f"component must be a Component ({allowed}), got {comps!r}")


@dataclass(frozen=True)
class StepGraph:
    """The ops of one step: `batch` sequences of `seq_len` new tokens after `context` cached."""

    args: ModelArgs
    mode: str
    batch: int
    seq_len: int  # new tokens per sequence (1 for decode)
    context: int  # tokens in the KV cache before this step
    ops: tuple[GraphOp, ...]


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ctx:
    """What every op builder needs: the model, the step's shape, kernels, and where the ops sit."""

    args: ModelArgs
    batch: int
    seq_len: int  # new tokens per sequence
    context: int  # cached tokens before them
    mode: str
    kernel: str  # "fused" or "math": how the attention core keeps tensors and counts its backward
    e: int  # bytes of an activation element
    cpu: bool  # CPU kernels (decomposed RMSNorm, float32 math attention) instead of CUDA ones
    block: str = ""  # module name of the Block the ops run in
    label: str = ""  # prefix of the time model's labels ("layers.3.", "mtp.0.")
    charge: Component | None = None  # every op charged to this component (MTP)

    @property
    def train(self) -> bool:
        return self.mode == "train"

    @property
    def T(self) -> int:
        return self.batch * self.seq_len


Time = list[tuple[str, str, dict]]  # (label, op, shape) of the time model's ops


def _op(c: _Ctx, name: str, module: str, comp: Component, time=(), saved=(), **io) -> GraphOp:
    """A GraphOp at c's place (io: flops, reads, writes). Time entries (label, op, shape) become
    PlanOps; saved tensors are kept only by a training step; an MTP context charges all to MTP."""
    comp = c.charge or comp
    plans = tuple(PlanOp(comp, c.label + label, op, shape, c.train) for label, op, shape in time)
    saved = tuple(saved) if c.train else ()
    return GraphOp(name, module, comp, saved=saved, time=plans, block=c.block, **io)


def _flops(c: _Ctx, fwd: int, causal: int | None = None, bwd: tuple[int, int] = ()) -> Flops:
    """Matmul FLOPs forward (`causal`: over the (query, key) pairs a causal mask keeps) and
    backward: two matmuls of the forward's size (dX and dW) unless `bwd` = (full, causal)."""
    causal = fwd if causal is None else causal
    if not c.train:
        return Flops(fwd, 0, causal, 0)
    full_bwd, causal_bwd = bwd or (2 * fwd, 2 * causal)
    return Flops(fwd, full_bwd, causal, causal_bwd)


def _gemm(label: str, m: int, n: int, k: int, batch: int | None = 1) -> tuple[str, str, dict]:
    """The time model's GEMM y[m, n] = x[m, k] w[k, n] (`batch` of them; None: the head's shape)."""
    return label, "gemm", dict(m=m, n=n, k=k) | ({} if batch is None else dict(batch=batch))


def _ew(label: str, nbytes: float, kernels: int = 1) -> tuple[str, str, dict]:
    return label, "elementwise", dict(bytes=int(nbytes), kernels=kernels)


def _elementwise(
    c: _Ctx, label: str, module: str, comp: Component, nbytes: int, kernels=1, saved=()
) -> GraphOp:
    """An op of memory-bound kernels only (RoPE, cat, SiLU, softmax, cache writes, ...)."""
    return _op(c, label, module, comp, [_ew(label, nbytes, kernels)], saved=saved)


def _matmul(
    c: _Ctx,
    gemms: Time,
    module: str,
    comp: Component,
    reads: dict,
    writes: dict,
    saved=(),
    causal: int | None = None,
) -> GraphOp:
    """An op of GEMMs (named after the first): 2 m n k FLOPs each forward (`causal`: over the
    pairs a causal mask keeps), twice that backward."""
    fwd = sum(2 * s["m"] * s["n"] * s["k"] * s.get("batch", 1) for _, _, s in gemms)
    f = _flops(c, fwd, causal)
    io = dict(reads=reads, writes=writes)
    return _op(c, gemms[0][0], module, comp, gemms, flops=f, saved=saved, **io)


def _linear(
    c: _Ctx, module: str, comp: Component, rows: int, n: int, k: int, label=None, saved=()
) -> GraphOp:
    """A Linear layer y[rows, n] = x[rows, k] W^T on `rows` tokens."""
    name, e = module.rsplit(".", 1)[-1], c.e
    reads, writes = {"x": rows * k * e, name: n * k * e}, {"y": rows * n * e}
    return _matmul(c, [_gemm(label or name, rows, n, k)], module, comp, reads, writes, saved)


def _norm(
    c: _Ctx, module: str, rows: int, width: int, input_bytes: int | None, kept: bool, item=None
) -> GraphOp:
    """An RMSNorm over rows x width.

    input_bytes: bytes of the storage the input lives in, when that storage is new memory (None
        when another op already keeps it, e.g. a slice of a tensor kept elsewhere).
    kept: whether the next op saves the output (a Linear does; a cat does not).
    item: the name its kept tensors go by (default: the module name).
    """
    label, item, e = module.rsplit(".", 1)[-1], item or module, c.e
    saved = []  # the input stays under selective recomputation: the norm is recomputed from it
    if not c.cpu:  # _fused_rms_norm keeps its input and a float32 rstd per row
        if input_bytes is not None:
            saved.append(Item(f"{item}.input", input_bytes))
    else:  # decomposed: x.float(), rstd, x * rstd (all float32)
        if e != 4:
            saved.append(Item(f"{item}.input_fp32", rows * width * 4))
        elif input_bytes is not None:
            saved.append(Item(f"{item}.input", input_bytes))
        saved.append(Item(f"{item}.normalized_fp32", rows * width * 4, True))
    saved.append(Item(f"{item}.rstd", rows * 4, True))
    if kept:
        saved.append(Item(f"{item}.output", rows * width * e, True))
    io = dict(reads={"x": rows * width * e, "weight": width * e}, writes={"y": rows * width * e})
    time = [(label, "rmsnorm", dict(tokens=rows, hidden=width))]
    return _op(c, label, module, C.NORMS, time, saved=saved, **io)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
def _cache_write(c: _Ctx, label: str, nbytes: int) -> list[GraphOp]:
    """Inference writes the new keys/values (or latents) into the cache; training keeps none."""
    return [] if c.train else [_elementwise(c, label, f"{c.block}.attn", C.ATTN_CORE, nbytes, 2)]


def _pairs(c: _Ctx) -> tuple[int, int]:
    """(query, key) pairs over all heads: all of them, and those a causal mask keeps."""
    B, S, ctx, H = c.batch, c.seq_len, c.context, c.args.n_heads
    return attention_pairs(B, S, ctx, False) * H, attention_pairs(B, S, ctx, True) * H


def _sdpa(c: _Ctx, qk: int, dv: int, kv_heads: int, saved: list[Item]) -> GraphOp:
    """F.scaled_dot_product_attention on q [B, H, S, qk], k [B, H, S_kv, qk], v [B, H, S_kv, dv].

    Forward 2 (qk + dv) per (query, key) pair and head; the fused kernels' backward recomputes
    QK^T: 2 (3 qk + 2 dv) per pair, the math path's is twice the forward."""
    B, S, H, e = c.batch, c.seq_len, c.args.n_heads, c.e
    skv, (full, kept) = c.context + S, _pairs(c)
    recompute_qk = (2 * full * (3 * qk + 2 * dv), 2 * kept * (3 * qk + 2 * dv))
    bwd = recompute_qk if c.kernel == "fused" else ()
    f = _flops(c, 2 * full * (qk + dv), 2 * kept * (qk + dv), bwd)
    q, k, v = c.T * H * qk * e, B * skv * kv_heads * qk * e, B * skv * kv_heads * dv * e
    io = dict(reads={"q": q, "k": k, "v": v}, writes={"out": c.T * H * dv * e})
    shape = dict(batch=B, seq=S, kv_seq=skv, heads=H, qk_dim=qk, v_dim=dv, causal=S > 1)
    time = [("sdpa", "attention", shape)]
    return _op(c, "sdpa", f"{c.block}.attn", C.ATTN_CORE, time, flops=f, saved=saved, **io)


def _mla(c: _Ctx) -> list[GraphOp]:
    """MLA: low-rank query (or wq), latent c_kv = kv_norm(x W_DKV) [T, R] and one RoPE key
    k_pe [T, dr]; naive decompresses keys and values per head (wkv_b), absorbed multiplies W_UK
    into the query and W_UV into the output and attends against the latent."""
    a, T, D, H, e, p = c.args, c.T, c.args.dim, c.args.n_heads, c.e, f"{c.block}.attn"
    R, dr, dn = a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim
    dv, qk, A, q_lora = a.v_head_dim, a.qk_head_dim, C.ATTN_PROJ, a.q_lora_rank
    if q_lora:  # q = wq_b(q_norm(wq_a(x))): [T, D] -> [T, q_lora_rank] -> [T, H qk]
        ops = [
            _linear(c, f"{p}.wq_a", A, T, q_lora, D),
            _norm(c, f"{p}.q_norm", T, q_lora, T * q_lora * e, True, "attn.q_norm"),
            _linear(c, f"{p}.wq_b", A, T, H * qk, q_lora),
        ]
    else:
        ops = [_linear(c, f"{p}.wq", A, T, H * qk, D)]
    # kv_norm's input is a slice of wkv_a's output, whose storage is R + dr wide.
    ops += [
        _linear(c, f"{p}.wkv_a", A, T, R + dr, D),
        _norm(c, f"{p}.kv_norm", T, R, T * (R + dr) * e, True, "attn.kv_norm"),
        _elementwise(c, "rope (q_pe, k_pe)", p, C.ROPE, 24 * T * dr * (H + 1), 6),
    ]
    if a.attn_impl == "absorb":
        wo_kept = [Item("attn.wo input", T * H * dv * e)]
        return ops + _mla_absorbed(c) + [_linear(c, f"{p}.wo", A, T, D, H * dv, saved=wo_kept)]
    if c.kernel == "fused":
        kept = [
            Item("attn.q (cat of q_nope, q_pe)", T * H * qk * e, True),
            Item("attn.k (cat of k_nope, k_pe)", T * H * qk * e, True),
            Item("attn.v (a slice: all of wkv_b's output stays)", T * H * (dn + dv) * e, True),
            Item("attn.out (also the wo input)", T * H * dv * e),
            Item("attn.logsumexp float32", c.batch * H * c.seq_len * 4),
        ]
        wo_kept = []
    else:
        f = 4 if c.cpu else e  # PyTorch's CPU math path computes in float32
        # v is a slice of wkv_b's output. Without a dtype cast, a batch of one reshapes it for
        # the batched matmul as a view (keeping the whole output); otherwise it is copied.
        v = T * H * (dn + dv) * f if (f == e and c.batch == 1) else T * H * dv * f
        kept = [
            Item("attn.q * scale (math path)", T * H * qk * f, True),
            Item("attn.k (math path)", T * H * qk * f, True),
            Item("attn.probs (math path)", c.batch * H * c.seq_len**2 * f, True),
            Item("attn.v for the batched matmul (math path)", v, True),
        ]
        wo_kept = [Item("attn.wo input (copy)", T * H * dv * e)]
    ops += [
        _linear(c, f"{p}.wkv_b", A, T, H * (dn + dv), R),
        _elementwise(c, "cat q, k (expand k_pe)", p, C.ATTN_CORE, 8 * T * H * qk, 2),
    ]
    ops += _cache_write(c, "write k, v cache", 4 * T * H * (qk + dv))
    return ops + [_sdpa(c, qk, dv, H, kept), _linear(c, f"{p}.wo", A, T, D, H * dv, saved=wo_kept)]


def _mla_absorbed(c: _Ctx) -> list[GraphOp]:
    """MLA absorbed, between the RoPE and wo: four einsums and a float32 softmax.

    q_nope [B, S, H, dn] x W_UK [H, dn, R] -> [B, S, H, R]; scores = that . c_kv [B, S_kv, R] +
    q_pe . k_pe [B, S_kv, dr] -> [B, S, H, S_kv]; softmax; probs . c_kv -> [B, S, H, R];
    x W_UV [H, dv, R] -> [B, S, H, dv]. The score matrix is materialised: the math path."""
    a, B, S, T, H, e, p = c.args, c.batch, c.seq_len, c.T, c.args.n_heads, c.e, f"{c.block}.attn"
    R, dr, dn = a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim
    dv, qk, skv, kept = a.v_head_dim, a.qk_head_dim, c.context + S, _pairs(c)[1]
    q_uk, c_kv = T * H * R * e, B * skv * R * e  # q_nope W_UK, and the latents it attends to
    probs = [Item("attn.probs float32 (softmax output)", B * H * S * S * 4, True)]
    if e != 4:
        probs.append(Item("attn.probs cast to the activation dtype", B * H * S * S * e, True))
    A, K = C.ATTN_PROJ, C.ATTN_CORE
    gemm = _gemm("absorb W_UK into q", T, R, dn, H)
    reads = {"q_nope": T * H * dn * e, "wkv_b[:, :dn]": H * dn * R * e}
    kept_q = [Item("attn.q (wq/wq_b output, sliced by the W_UK einsum)", T * H * qk * e, True)]
    w_uk = _matmul(c, [gemm], p, A, reads, {"q_nope W_UK": q_uk}, kept_q)
    gemms = [_gemm("scores q.c_kv", S * H, skv, R, B), _gemm("scores q_pe.k_pe", S * H, skv, dr, B)]
    reads = {"q_nope W_UK": q_uk, "c_kv": c_kv, "q_pe": T * H * dr * e, "k_pe": B * skv * dr * e}
    kept_qk = [
        Item("attn.q_nope @ W_UK", q_uk, True),
        Item("attn.q_pe after RoPE", T * H * dr * e, True),
        Item("attn.k_pe after RoPE", T * dr * e, True),
    ]
    scores_bytes, causal = {"scores": B * H * S * skv * e}, 2 * kept * (R + dr)
    scores = _matmul(c, gemms, p, K, reads, scores_bytes, kept_qk, causal)
    softmax_bytes = 22 * B * S * H * skv
    softmax = _elementwise(c, "add, mask, softmax (fp32)", p, K, softmax_bytes, 4, probs)
    gemm, reads = _gemm("p @ c_kv", S * H, R, skv, B), {"probs": B * H * S * skv * e, "c_kv": c_kv}
    pv = _matmul(c, [gemm], p, K, reads, {"probs c_kv": q_uk}, causal=2 * kept * R)
    gemm, reads = _gemm("W_UV", T, dv, R, H), {"probs c_kv": q_uk, "wkv_b[:, -dv:]": H * dv * R * e}
    kept_pv = [Item("attn.probs @ c_kv", q_uk)]
    w_uv = _matmul(c, [gemm], p, A, reads, {"out": T * H * dv * e}, kept_pv)
    cache = _cache_write(c, "write latent cache", 4 * T * (R + dr))
    return [w_uk, *cache, scores, softmax, pv, w_uv]


def _gqa(c: _Ctx) -> list[GraphOp]:
    """MHA/GQA: q [T, H hd], k and v [T, kv hd], RoPE on q and k, SDPA (keys and values shared by
    H / kv heads), wo [T, H hd] -> [T, D]."""
    a, T, D, H, e, p = c.args, c.T, c.args.dim, c.args.n_heads, c.e, f"{c.block}.attn"
    hd, kvh, A = a.head_size, a.kv_heads, C.ATTN_PROJ
    if c.kernel == "fused":
        kept = [
            Item("attn.q after RoPE", T * H * hd * e),
            Item("attn.k after RoPE", T * kvh * hd * e),
            Item("attn.v (wv output)", T * kvh * hd * e),
            Item("attn.out (also the wo input)", T * H * hd * e),
            Item("attn.logsumexp float32", c.batch * H * c.seq_len * 4),
        ]
        wo_kept = []
    else:
        f = 4 if c.cpu else e
        kept = [
            Item("attn.q * scale (math path)", T * H * hd * f),
            Item("attn.k repeated to all heads (math path)", T * H * hd * f),
            Item("attn.probs (math path)", c.batch * H * c.seq_len**2 * f, True),
            Item("attn.v repeated to all heads (math path)", T * H * hd * f),
        ]
        wo_kept = [Item("attn.wo input (copy)", T * H * hd * e)]
    ops = [
        _linear(c, f"{p}.wq", A, T, H * hd, D),
        _linear(c, f"{p}.wk", A, T, kvh * hd, D),
        _linear(c, f"{p}.wv", A, T, kvh * hd, D),
        _elementwise(c, "rope (q, k)", p, C.ROPE, 24 * T * hd * (H + kvh), 6),
    ]
    ops += _cache_write(c, "write k, v cache", 8 * T * kvh * hd)
    return ops + [
        _sdpa(c, hd, hd, kvh, kept),
        _linear(c, f"{p}.wo", A, T, D, H * hd, saved=wo_kept),
    ]


# ---------------------------------------------------------------------------------------------
# Feed-forward: dense MLP, MoE
# ---------------------------------------------------------------------------------------------
def _swiglu(
    c: _Ctx, module: str, comp: Component, inter: int, label: str, item: str
) -> list[GraphOp]:
    """w2(silu(w1 x) * w3 x) on [T, D] -> [T, inter] -> [T, D]. It keeps w1 x (for silu),
    silu(w1 x) and w3 x (for the product) and the product (for w2); its input is counted by
    whoever produced it."""
    T, D = c.T, c.args.dim
    kept = [Item(f"{item}: w1 x, silu(w1 x), w3 x, product", 4 * T * inter * c.e)]
    return [
        _linear(c, f"{module}.w1", comp, T, inter, D, label=f"{label}w1"),
        _linear(c, f"{module}.w3", comp, T, inter, D, label=f"{label}w3"),
        _elementwise(c, f"{label}silu(h1) * h3", module, comp, 10 * T * inter, 2, kept),
        _linear(c, f"{module}.w2", comp, T, D, inter, label=f"{label}w2"),
    ]


def _gate(c: _Ctx) -> GraphOp:
    """The router: float32 logits [T, E] = x W_g^T, scores, top-K indices and combine weights.
    Its time is part of the experts' `moe_ffn` op."""
    a, T, D, e = c.args, c.T, c.args.dim, c.e
    E, K = a.n_routed_experts, a.n_activated_experts
    held = dict(outside_autograd=True)  # MoE.routing holds these
    kept = []
    if e != 4:  # the gate runs in float32: F.linear(x.float(), weight.float()) keeps both copies
        kept += [
            Item("gate input float32", T * D * 4, True),
            Item("gate weight float32", E * D * 4),
        ]
    kept += [
        Item("gate logits float32 (held by MoE.routing)", T * E * 4, **held),
        Item("gate scores float32 (softmax/sigmoid output)", T * E * 4, **held),
        Item("gate top-k indices int64", T * K * 8, **held),
    ]
    if a.renormalize:
        kept.append(Item("gate top-k scores and their sum (renormalisation)", T * K * 4 + T * 4))
    kept.append(Item("gate combine weights float32 (held by MoE.routing)", T * K * 4, **held))
    if a.capacity_factor > 0:
        kept.append(Item("capacity keep-mask (bool)", T * K))
    io = dict(reads={"x": T * D * 4, "weight": E * D * 4}, writes={"logits": T * E * 4})  # float32
    f = _flops(c, 2 * T * E * D)
    return _op(c, "gate", f"{c.block}.ffn.gate", C.GATE, flops=f, saved=kept, **io)


def _experts(c: _Ctx) -> GraphOp:
    """The routed experts: N = T K (token, expert) rows [N, D] -> [N, moe_inter] -> [N, D], then the
    weighted sum over each token's K experts. Carries the time model's `moe_ffn` (gate included)."""
    a, T, D, e = c.args, c.T, c.args.dim, c.e
    E, K, I = a.n_routed_experts, a.n_activated_experts, a.moe_inter_dim
    N = T * K
    kept = [
        Item("experts: gathered input rows", N * D * e),
        Item("experts: w1 x, silu(w1 x), w3 x, product", 4 * N * I * e),
        Item("experts: output rows and combine weight", N * D * e + N * e),
        Item("experts: weighted rows (kept by index_add_)", N * D * e),
        Item("experts: token/slot indices int64", N * 16),
    ]
    weights = min(E, N) * 3 * D * I * e  # the experts that get a row: at most min(E, N)
    io = dict(
        reads={"x rows": N * D * e, "w1, w2, w3 (experts hit)": weights}, writes={"y": T * D * e}
    )
    shape = dict(tokens=T, hidden=D, moe_inter=I, experts=E, top_k=K, route_norm=a.renormalize)
    time = [("moe (gate + routed experts)", "moe_ffn", shape)]
    f = _flops(c, 6 * N * D * I)  # three D x moe_inter matmuls per row
    m = f"{c.block}.ffn.experts"
    return _op(c, "experts", m, C.ROUTED_EXPERTS, time, flops=f, saved=kept, **io)


def _moe(c: _Ctx) -> list[GraphOp]:
    """DeepSeekMoE: gate, routed experts and the shared experts (an MLP of n_shared x moe_inter)."""
    a, p = c.args, f"{c.block}.ffn"
    if not a.n_shared_experts:
        return [_gate(c), _experts(c)]
    inter, S = a.n_shared_experts * a.moe_inter_dim, C.SHARED_EXPERTS
    shared = _swiglu(c, f"{p}.shared_experts", S, inter, "shared ", "shared_experts")
    add = _elementwise(c, "routed + shared", p, S, 6 * c.T * a.dim)
    return [_gate(c), _experts(c), *shared, add]


# ---------------------------------------------------------------------------------------------
# Block, head, MTP, step
# ---------------------------------------------------------------------------------------------
def _residual(c: _Ctx) -> GraphOp:
    """x + f(x) on [T, D]: the block's own op."""
    n = c.T * c.args.dim * c.e
    io = dict(reads={"x": n, "f(x)": n}, writes={"x + f(x)": n})
    time = [_ew("residual add", 6 * c.T * c.args.dim)]
    return _op(c, "residual add", c.block, C.RESIDUAL, time, **io)


def _block(c: _Ctx, layer_id: int) -> list[GraphOp]:
    """Block(layer_id): x + attn(attn_norm(x)), then x + ffn(ffn_norm(x)) (dense MLP or MoE)."""
    a, T, D, e, b = c.args, c.T, c.args.dim, c.e, c.block
    moe = is_moe_layer(a, layer_id)
    ops = [_norm(c, f"{b}.attn_norm", T, D, T * D * e, True, "attn_norm")]
    ops += _mla(c) if a.attn_type == "mla" else _gqa(c)
    # ffn_norm's input is the attention residual (new memory). Its bf16 output is kept by a
    # Linear that reads it (dense MLP, shared experts) or, in fp32, by the gate; routed experts
    # only gather its rows.
    kept = not moe or a.n_shared_experts > 0 or e == 4
    ops += [_residual(c), _norm(c, f"{b}.ffn_norm", T, D, T * D * e, kept, "ffn_norm")]
    ops += _moe(c) if moe else _swiglu(c, f"{b}.ffn", C.DENSE_FFN, a.inter_dim, "", "ffn (dense)")
    return ops + [_residual(c)]


def _head(c: _Ctx, norm: str, t: int) -> list[GraphOp]:
    """The final norm, the output head [t, D] -> [t, V] (its logits are the step's output, kept for
    the loss) and, in training, the float32 cross-entropy (the loss, outside the model: "")."""
    D, V, e = c.args.dim, c.args.vocab_size, c.e
    logits = [Item(f"{c.label}logits (kept for the loss)", t * V * e)]
    reads, writes = {"x": t * D * e, "head": V * D * e}, {"logits": t * V * e}
    ops = [
        _norm(c, norm, t, D, t * D * e, True),
        _matmul(c, [_gemm("head", t, V, D, None)], "head", C.HEAD, reads, writes, logits),
    ]
    if c.train:
        ops.append(_elementwise(c, "cross-entropy (fp32 log-softmax)", "", C.HEAD, 14 * t * V, 3))
    return ops


def _embed(c: _Ctx, t: int) -> GraphOp:
    """The embedding lookup: t rows of the [V, D] table (shared by the MTP modules)."""
    D, V = c.args.dim, c.args.vocab_size
    io = dict(reads={"rows of embed": t * D * c.e}, writes={"h": t * D * c.e})
    time = [("embed", "gather_rows", dict(rows=t, width=D, dst_rows=V))]
    return _op(c, "embed", "embed", C.EMBEDDING, time, **io)


def _mtp(c: _Ctx, k: int, s: int) -> list[GraphOp]:
    """MTP depth k on s = seq_len - k positions: eh_proj(cat(enorm(embed), hnorm(h))) [t, 2D] ->
    [t, D], a full block, its own norm and the shared head; all charged to MTP."""
    m, D, e = f"mtp.{k - 1}", c.args.dim, c.e
    c = replace(c, seq_len=s, context=0, label=f"{m}.", charge=C.MTP)
    t = c.T
    cat = [Item(f"{m}.cat (kept by eh_proj)", t * 2 * D * e)]
    reads, writes = {"cat": t * 2 * D * e, "eh_proj": 2 * D * D * e}, {"h": t * D * e}
    ops = [
        _embed(c, t),
        _norm(c, f"{m}.enorm", t, D, t * D * e, False),
        _norm(c, f"{m}.hnorm", t, D, None, False),  # its input is a slice of h, kept elsewhere
        _elementwise(c, "concat", m, C.MTP, 8 * t * D, 1, cat),
        _matmul(c, [_gemm("eh_proj", t, D, 2 * D, None)], f"{m}.eh_proj", C.MTP, reads, writes),
    ]
    ops += _block(replace(c, block=f"{m}.block"), mtp_layer_id(c.args))
    return ops + _head(c, f"{m}.norm", t)


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _ctx(
    args: ModelArgs, shape: tuple, mode: str, kernel: str | None, dtype: str, device: str
) -> _Ctx:
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
    return _Ctx(args, *shape, mode, kernel, e, device == "cpu")


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
