"""An op of the graph, and the builders every module kind uses (Linear, RMSNorm, elementwise).

See the package docstring (dsim.cost.graph) for what an op carries and the shape letters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsim.config import ModelArgs
from dsim.cost.components import Component
from dsim.cost.dtypes import DTYPES

C = Component

# DeepSeek-V3's activation caching (report, sec. 3.3.3, "Low-Precision Activation"): inputs of
# Linear operators are cached in fp8 with one float32 scale per 1 x 128 tile; the input of the
# Linear after attention (also used by the attention backward) in the custom E5M6 format.
CACHE_TILE = 128
E5M6_BITS = 12  # 1 sign, 5 exponent, 6 mantissa bits


@dataclass(frozen=True)
class PlanOp:
    """The time model's view of an op: the component it is charged to, a label, the op kind that
    `dsim.cost.timing.op_time` times and its shape arguments, and whether the backward runs too."""

    component: Component
    label: str
    op: str
    shape: dict
    backward: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.component, Component):
            allowed = ", ".join(c.value for c in Component)
            raise ValueError(f"component must be a Component ({allowed}), got {self.component!r}")


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
    (MoE.routing), so that even full recomputation keeps it.

    For the activation options of dsim.cost.memory.ActivationRecipe:
    fp8_bytes: its bytes when cached the way DeepSeek-V3 caches a Linear operator's input (fp8, or
        E5M6 for the Linear after attention, with tile scales); None when it is no Linear input or
        DeepSeek-V3 keeps it in its original precision (embedding, output head, gate, norms and
        attention).
    option, option_bytes: a recipe option that changes it ("swiglu_recompute", "dense_swiglu"
        or "fused_combine"; "" for none) and its bytes under that option (0: the
        option recomputes it, or the kernels never keep it)."""

    name: str
    bytes: int
    selective_drops: bool = False
    outside_autograd: bool = False
    fp8_bytes: int | None = None
    option: str = ""
    option_bytes: int = 0


def cached_bytes(elements: int, bits: int = DTYPES["fp8"].bits) -> int:
    """Bytes of `elements` activations cached in a `bits`-wide format with a float32 scale per
    1 x CACHE_TILE tile (DeepSeek-V3's fine-grained quantisation)."""
    return -(-elements * bits // 8) + -(-elements // CACHE_TILE) * DTYPES["fp8"].scale_bytes


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
class Ctx:
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
    window: int = 0  # keys a query may see at most in this block (`rules.layer_window`)

    @property
    def train(self) -> bool:
        return self.mode == "train"

    @property
    def T(self) -> int:
        return self.batch * self.seq_len


Time = list[tuple[str, str, dict]]  # (label, op, shape) of the time model's ops


def make_op(c: Ctx, name: str, module: str, comp: Component, time=(), saved=(), **io) -> GraphOp:
    """A GraphOp at c's place (io: flops, reads, writes). Time entries (label, op, shape) become
    PlanOps; saved tensors are kept only by a training step; an MTP context charges all to MTP."""
    comp = c.charge or comp
    plans = tuple(PlanOp(comp, c.label + label, op, shape, c.train) for label, op, shape in time)
    saved = tuple(saved) if c.train else ()
    return GraphOp(name, module, comp, saved=saved, time=plans, block=c.block, **io)


def matmul_flops(c: Ctx, fwd: int, causal: int | None = None, bwd: tuple[int, int] = ()) -> Flops:
    """Matmul FLOPs forward (`causal`: over the (query, key) pairs a causal mask keeps) and
    backward: two matmuls of the forward's size (dX and dW) unless `bwd` = (full, causal)."""
    causal = fwd if causal is None else causal
    if not c.train:
        return Flops(fwd, 0, causal, 0)
    full_bwd, causal_bwd = bwd or (2 * fwd, 2 * causal)
    return Flops(fwd, full_bwd, causal, causal_bwd)


def gemm(label: str, m: int, n: int, k: int, batch: int | None = 1) -> tuple[str, str, dict]:
    """The time model's GEMM y[m, n] = x[m, k] w[k, n] (`batch` of them; None: the head's shape)."""
    return label, "gemm", dict(m=m, n=n, k=k) | ({} if batch is None else dict(batch=batch))


def ew(label: str, nbytes: float, kernels: int = 1) -> tuple[str, str, dict]:
    return label, "elementwise", dict(bytes=int(nbytes), kernels=kernels)


def elementwise(
    c: Ctx, label: str, module: str, comp: Component, nbytes: int, kernels=1, saved=()
) -> GraphOp:
    """An op of memory-bound kernels only (RoPE, cat, SiLU, softmax, cache writes, ...)."""
    return make_op(c, label, module, comp, [ew(label, nbytes, kernels)], saved=saved)


def matmul(
    c: Ctx,
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
    f = matmul_flops(c, fwd, causal)
    io = dict(reads=reads, writes=writes)
    return make_op(c, gemms[0][0], module, comp, gemms, flops=f, saved=saved, **io)


def linear(
    c: Ctx, module: str, comp: Component, rows: int, n: int, k: int, label=None, saved=()
) -> GraphOp:
    """A Linear layer y[rows, n] = x[rows, k] W^T on `rows` tokens."""
    name, e = module.rsplit(".", 1)[-1], c.e
    reads, writes = {"x": rows * k * e, name: n * k * e}, {"y": rows * n * e}
    return matmul(c, [gemm(label or name, rows, n, k)], module, comp, reads, writes, saved)


def rms_norm(
    c: Ctx,
    module: str,
    rows: int,
    width: int,
    input_bytes: int | None,
    kept: bool,
    item=None,
    feeds_fp8: bool = True,
) -> GraphOp:
    """An RMSNorm over rows x width.

    input_bytes: bytes of the storage the input lives in, when that storage is new memory (None
        when another op already keeps it, e.g. a slice of a tensor kept elsewhere).
    kept: whether the next op saves the output (a Linear does; a cat does not).
    item: the name its kept tensors go by (default: the module name).
    feeds_fp8: whether the Linear that keeps the output runs in fp8 (not the output head).
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
        fp8 = cached_bytes(rows * width) if feeds_fp8 else None
        saved.append(Item(f"{item}.output", rows * width * e, True, fp8_bytes=fp8))
    io = dict(reads={"x": rows * width * e, "weight": width * e}, writes={"y": rows * width * e})
    time = [(label, "rmsnorm", dict(tokens=rows, dim=width))]
    return make_op(c, label, module, C.NORMS, time, saved=saved, **io)
