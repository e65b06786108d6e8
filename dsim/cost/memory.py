"""Bytes per GPU: weights, gradients, optimizer states, activations and the KV cache.

Bytes per number live in `dsim.cost.dtypes` (bytes_per_param, weight_bytes) and the KV cache
in `dsim.cost.kv_cache`; both are re-exported here.

Weights, gradients and optimizer states are parameter counts (`dsim.cost.params`) times bytes per
parameter (`dsim.cost.dtypes`), divided the way the parallel layout divides them (the rules of
`dsim.cost.layout`, which the capacity planner applies too). Activations are the tensors that
autograd keeps between the forward and the backward pass. They are derived from `dsim.model` line
by line, not from a textbook formula: Korthikanti et al.'s 34 s b h + 5 a s^2 b per layer covers a
dense GPT layer with LayerNorm, GeLU and dropout, not RMSNorm, SwiGLU, MLA or a router. Every item
(a tensor an op of the op graph, dsim.cost.graph, keeps) names the line of the model that keeps it,
and tests/cost/test_memory.py holds the sum to the bytes that
`torch.autograd.graph.saved_tensors_hooks` sees on the real model.

`ActivationRecipe` changes how those tensors are kept, the way a production training system does
(DEEPSEEK_V3_RECIPE: what the DeepSeek-V3 report describes, plus two stated kernel assumptions).

Which tensors autograd keeps depends on PyTorch's kernels, so activations take a `device`:
    "cuda"  RMSNorm is one fused kernel (`_fused_rms_norm`, keeps its input and a float32 rstd per
            row); attention is a fused kernel (flash / memory-efficient) that keeps q, k, v, the
            output and a float32 log-sum-exp per query and head, never the S x S scores.
    "cpu"   RMSNorm is decomposed (keeps a float32 copy of its input, rstd and the normalised
            input); attention runs PyTorch's CPU flash kernel when query and value heads have the
            same size, else the "math" path, which keeps the S x S probabilities, all in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dsim.config import ModelArgs
from dsim.cost.dtypes import DTYPE_BITS, _bits, _check_dtype, bytes_per_param
from dsim.cost.dtypes import weight_bytes as weight_bytes  # re-exported
from dsim.cost.graph import GraphOp, Item, block_graph, step_graph
from dsim.cost.kv_cache import (  # the KV cache functions, re-exported
    kv_cache_bytes_per_token as kv_cache_bytes_per_token,
)
from dsim.cost.kv_cache import kv_cache_elements
from dsim.cost.kv_cache import kv_cache_elements_per_token as kv_cache_elements_per_token
from dsim.cost.kv_cache import kv_cache_layer_elements as kv_cache_layer_elements
from dsim.cost.layout import (
    kv_tp_split,
    stage_layers,
    stage_params,
    tp_split_problem,
    zero_params,
)
from dsim.cost.params import is_moe_layer, params

# ---------------------------------------------------------------------------------------------
# Activations: what autograd keeps, read from the op graph (dsim.cost.graph)
# ---------------------------------------------------------------------------------------------
Device = Literal["cuda", "cpu"]
Recompute = Literal["none", "selective", "full"]


@dataclass(frozen=True)
class ActivationRecipe:
    """How a training system keeps the activations of `dsim.model` beyond plain autograd. Each
    option acts on the tagged tensors of the op graph (dsim.cost.graph.Item).

    fp8_cache         every input of a Linear operator is cached in fp8 with a float32 scale per
                      1 x 128 tile, the input of the Linear after attention in E5M6 (DeepSeek-V3
                      report, sec. 3.3.3, "Low-Precision Activation"); the embedding, output head,
                      gate, norms and attention keep their precision (sec. 3.3.1).
    swiglu_recompute  the MoE's SwiGLUs keep only their inputs and recompute their output in the
                      backward (sec. 3.3.3 (2)); the output being w2's input, w2's input goes too.
    Two options the report does not state, which the published layout needs to fit in 80 GB
    (tests/cost/test_plan.py::test_deepseek_v3_layout_fits states the numbers):
    dense_swiglu      the dense layers' SwiGLU is treated as the MoE's: fp8 inputs, recomputed
                      output.
    fused_combine     the combine weight scales each expert's SwiGLU output before w2, so its
                      gradient is (dL/d(w2 input)) . h and the experts keep no [T K, D] output
                      rows (dsim.model keeps two such tensors).
    Selective recomputation (RMSNorms and MLA's up-projections, sec. 3.2.3) is the `recompute`
    argument, apart from the recipe. Under full recomputation a block keeps only its input, so the
    recipe changes only the head and the routing state."""

    fp8_cache: bool = False
    swiglu_recompute: bool = False
    dense_swiglu: bool = False
    fused_combine: bool = False

    def kept(self, item: Item) -> int:
        """Bytes `item` costs under this recipe."""
        if item.option and getattr(self, item.option):
            return item.option_bytes
        if self.fp8_cache and item.fp8_bytes is not None:
            return item.fp8_bytes
        return item.bytes


PLAIN = ActivationRecipe()  # what autograd keeps for dsim.model as written
# what the DeepSeek-V3 report states (sec. 3.3.3)
DEEPSEEK_V3_REPORTED = ActivationRecipe(fp8_cache=True, swiglu_recompute=True)
# ... and the two kernel assumptions that make its published layout fit
DEEPSEEK_V3_RECIPE = ActivationRecipe(
    fp8_cache=True, swiglu_recompute=True, dense_swiglu=True, fused_combine=True
)


def _check_recipe(recipe: ActivationRecipe | None) -> ActivationRecipe:
    if recipe is None:
        return PLAIN
    if not isinstance(recipe, ActivationRecipe):
        raise ValueError(
            f"recipe must be a dsim.cost.memory.ActivationRecipe or None, got {recipe!r}"
        )
    return recipe


def _check_recompute(recompute: str) -> None:
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be 'none', 'selective' or 'full', got {recompute!r}")


def _training_block(
    args: ModelArgs,
    layer_id: int,
    batch: int,
    seq_len: int,
    dtype: str,
    device: Device,
    attn_kernel: str | None,
) -> list[GraphOp]:
    """The ops of Block(layer_id) in a training step, whose `saved` tensors are its activations."""
    kwargs = dict(attn_kernel=attn_kernel, act_dtype=dtype, device=device)
    return block_graph(args, layer_id, batch, seq_len, 0, "train", **kwargs)


def _kept_bytes(
    block: list[GraphOp], recompute: Recompute, recipe: ActivationRecipe = PLAIN
) -> int:
    """Bytes the ops of one Block keep under a recomputation policy (see layer_activation_bytes)
    and an ActivationRecipe."""
    items = [i for op in block for i in op.saved]
    if recompute == "none":
        return sum(recipe.kept(i) for i in items)
    if recompute == "selective":
        return sum(recipe.kept(i) for i in items if not i.selective_drops)
    # full: torch.utils.checkpoint keeps the block's input (what its first op, attn_norm, reads);
    # the model holds MoE.routing outside autograd.
    return block[0].reads["x"] + sum(i.bytes for i in items if i.outside_autograd)


def activation_items(
    args: ModelArgs,
    layer_id: int,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    device: Device = "cuda",
    attn_kernel: str | None = None,
) -> list[Item]:
    """Tensors one Block keeps for its backward pass (training forward of batch x seq_len tokens),
    its input included (the first norm keeps it) and its output excluded (the next block keeps
    that).

    attn_kernel: "fused" or "math" (None: what PyTorch picks on `device`, see
    dsim.cost.flops.sdpa_kernel).
    Routed experts: every (token, expert) assignment keeps the same rows, balanced or not.
    """
    ops = _training_block(args, layer_id, batch, seq_len, dtype, device, attn_kernel)
    return [i for op in ops for i in op.saved]


def layer_activation_bytes(
    args: ModelArgs,
    layer_id: int,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    device: Device = "cuda",
    recompute: Recompute = "none",
    attn_kernel: str | None = None,
    recipe: ActivationRecipe | None = None,
) -> int:
    """Bytes one Block keeps between forward and backward.

    recompute:
        "none"       every item of `activation_items`.
        "selective"  DeepSeek-V3's recipe: RMSNorm outputs and MLA up-projections (and any S x S
                     score matrix, as Korthikanti et al.) are recomputed in the backward; the
                     rest is kept.
        "full"       the block keeps only its input (torch.utils.checkpoint), plus what the model
                     holds outside autograd: MoE.routing's logits, scores, indices and weights.
    recipe: an ActivationRecipe (fp8 caching, SwiGLU recomputation, ...); None keeps what
        autograd keeps for dsim.model.
    """
    _check_recompute(recompute)
    recipe = _check_recipe(recipe)
    ops = _training_block(args, layer_id, batch, seq_len, dtype, device, attn_kernel)
    return _kept_bytes(ops, recompute, recipe)


def block_memory_delta(
    args: ModelArgs,
    layer_id: int,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    device: Device = "cuda",
    recompute: Recompute = "none",
    attn_kernel: str | None = None,
) -> int:
    """What one Block's forward adds to allocated memory when its input already exists and its
    output is kept (bench/measure_memory.py measures this): the block's activations with its output
    in place of its input. The two are the same size unless the first norm keeps a float32 copy of
    the input instead of the input itself (the CPU kernels, 16-bit activations, no
    recomputation)."""
    kept = layer_activation_bytes(
        args, layer_id, batch, seq_len, dtype, device, recompute, attn_kernel
    )
    act = DTYPE_BITS[dtype] // 8
    copies_input = device == "cpu" and act != 4 and recompute != "full"
    return kept + (batch * seq_len * args.dim * act if copies_input else 0)


def model_activation_bytes(
    args: ModelArgs,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    device: Device = "cuda",
    recompute: Recompute = "none",
    attn_kernel: str | None = None,
    layers: range | None = None,
    embedding: bool = True,
    head: bool = True,
    recipe: ActivationRecipe | None = None,
) -> int:
    """Activations of a whole training step on one GPU: every block of `layers` (default all), the
    final norm, the logits (the step's output, kept for the loss; the loss's own float32 softmax is
    not counted) and the MTP modules (`head=True` places them with the head), under `recipe`
    (an ActivationRecipe; None: what autograd keeps)."""
    _check_pos("batch", batch)
    _check_pos("seq_len", seq_len)
    _check_recompute(recompute)
    recipe = _check_recipe(recipe)
    layers = range(args.n_layers) if layers is None else layers
    # The blocks of one kind (dense or MoE) keep the same tensors: count one of each.
    kinds = {is_moe_layer(args, i): i for i in layers}
    per_kind = {
        moe: layer_activation_bytes(
            args, i, batch, seq_len, dtype, device, recompute, attn_kernel, recipe
        )
        for moe, i in kinds.items()
    }
    total = sum(per_kind[is_moe_layer(args, i)] for i in layers)
    if not head:
        return total
    # The final norm, the logits and the MTP modules (whose blocks recompute like the others).
    graph = step_graph(
        args,
        batch,
        seq_len,
        "train",
        attn_kernel=attn_kernel,
        act_dtype=dtype,
        device=device,
        layers=range(0),
    )
    blocks: dict[str, list[GraphOp]] = {}  # Block name ("" outside the blocks) -> its ops
    for op in graph.ops:
        blocks.setdefault(op.block, []).append(op)
    return total + sum(
        _kept_bytes(ops, recompute, recipe)
        if name
        else sum(recipe.kept(i) for op in ops for i in op.saved)
        for name, ops in blocks.items()
    )


# ---------------------------------------------------------------------------------------------
# The whole picture per GPU: parallel layout, optimizer, recomputation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the busiest GPU (pipeline stage `stage`), by kind."""

    weights: float
    gradients: float
    optimizer: float  # master weights + Adam moments
    activations: float
    kv_cache: float
    stage: int
    details: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.kv_cache

    def gib(self) -> dict[str, float]:
        """Every field in GiB, rounded to 0.01."""
        g = 2**30
        return {
            k: round(getattr(self, k) / g, 2)
            for k in ("weights", "gradients", "optimizer", "activations", "kv_cache", "total")
        }


def _check_pos(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def memory(
    args: ModelArgs,
    *,
    mode: Literal["train", "inference"] = "train",
    batch: int = 1,
    seq_len: int = 4096,
    dtype: str = "bf16",
    group_size: int | None = 128,
    expert_dtype: str | None = None,
    grad_dtype: str = "fp32",
    master_dtype: str | None = "fp32",
    optimizer_dtype: str = "fp32",
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    zero: int = 0,
    recompute: Recompute = "none",
    act_dtype: str = "bf16",
    device: Device = "cuda",
    kv_dtype: str = "bf16",
    kv_impl: Literal["naive", "absorb"] | None = None,
    microbatches_in_flight: int | None = None,
    prefill_chunk: int = 1,
    recipe: ActivationRecipe | None = None,
) -> MemoryEstimate:
    """Bytes per GPU for training (Adam) or inference under a TP x PP x DP layout with EP inside DP.

    Layout (world = tp * pp * dp GPUs; expert parallelism ep divides dp, as in Megatron and
    DeepSeek):
        tp   splits every weight but the replicated ones (norms, gate, wq_a, wkv_a, eh_proj)
             and, with sequence parallelism, every activation; MLA's latent cache is the same on
             every TP rank, MHA/GQA caches split by KV heads.
        pp   splits the layers into contiguous stages; the first stage holds the embedding, the
             last the head and the MTP modules; with 1F1B, stage s keeps pp - s micro-batches of
             activations.
        ep   splits the routed experts (E / ep per GPU); they are replicated dp / ep times.
        zero 0: nothing sharded; 1: optimizer states (master + moments) over data-parallel
             replicas; 2: also gradients; 3: also weights. Non-expert weights have dp replicas,
             experts dp / ep.
    Routed experts may be stored in their own `expert_dtype` (None: `dtype`; gpt-oss ships them in
    mxfp4, the rest in bf16).
    Training keeps weights (`dtype`, quantised types with `group_size`), gradients (`grad_dtype`),
    fp32 master weights (`master_dtype`, None when the weights are the master copy) and Adam's two
    moments (`optimizer_dtype`; DeepSeek-V3 keeps them in bf16). `batch` is the micro-batch.
    Inference keeps weights, the KV cache of batch x seq_len tokens, and one block's activations for
    batch x prefill_chunk new tokens (the transient working set of a step; 1: a decode step; an
    upper bound, since without autograd a block frees most of them as it goes). Reports the stage
    with the largest total. `recipe`: how training keeps activations (ActivationRecipe; None:
    what autograd keeps for dsim.model).
    """
    if not isinstance(args, ModelArgs):
        raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
    if mode not in ("train", "inference"):
        raise ValueError(f"mode must be 'train' or 'inference', got {mode!r}")
    for name, v in (
        ("batch", batch),
        ("seq_len", seq_len),
        ("tp", tp),
        ("pp", pp),
        ("dp", dp),
        ("ep", ep),
    ):
        _check_pos(name, v)
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero must be 0, 1, 2 or 3, got {zero!r}")
    for name, d in (
        ("dtype", dtype),
        ("grad_dtype", grad_dtype),
        ("optimizer_dtype", optimizer_dtype),
        ("kv_dtype", kv_dtype),
        ("expert_dtype", expert_dtype or dtype),
    ):
        _check_dtype(d, name)
    if master_dtype is not None:
        _check_dtype(master_dtype, "master_dtype")
    if pp > args.n_layers:
        raise ValueError(f"pp must be between 1 and n_layers={args.n_layers}, got {pp}")
    if problem := tp_split_problem(args, tp):  # as the planner and the serving model refuse it
        raise ValueError(problem)
    if dp % ep:
        raise ValueError(
            f"ep must divide dp={dp} (experts are parallel within data parallelism), got {ep}"
        )
    if args.n_routed_experts and args.n_routed_experts % ep:
        raise ValueError(f"ep must divide n_routed_experts={args.n_routed_experts}, got {ep}")
    recipe = _check_recipe(recipe)
    in_flight = pp if microbatches_in_flight is None else microbatches_in_flight
    _check_pos("microbatches_in_flight", in_flight)
    _check_pos("prefill_chunk", prefill_chunk)

    counts = params(args).modules
    stages = stage_layers(args.n_layers, pp)
    wbytes = bytes_per_param(dtype, group_size)
    best: MemoryEstimate | None = None
    for s, layers in enumerate(stages):
        first, last = s == 0, s == pp - 1
        dense_n, expert_n = stage_params(counts, layers, first, last, tp, ep, args.tie_embeddings)
        n_local = dense_n + expert_n
        held = zero_params(zero, dense_n, expert_n, dp, ep)
        held_experts = zero_params(zero, 0, expert_n, dp, ep)["weights"]
        ebytes = bytes_per_param(expert_dtype or dtype, group_size)
        weights = (held["weights"] - held_experts) * wbytes + held_experts * ebytes
        grads = opt = acts = kv = 0.0
        if mode == "train":
            grads = held["gradients"] * _bits(grad_dtype) / 8
            state = 2 * _bits(optimizer_dtype) / 8 + (
                _bits(master_dtype) / 8 if master_dtype else 0
            )
            opt = held["optimizer"] * state
            per_mb = model_activation_bytes(
                args,
                batch,
                seq_len,
                act_dtype,
                device,
                recompute,
                layers=layers,
                head=last,
                recipe=recipe,
            )
            acts = per_mb * max(1, in_flight - s) / tp
        else:
            layer = max(layers, key=lambda i: is_moe_layer(args, i))
            acts = layer_activation_bytes(args, layer, batch, prefill_chunk, act_dtype, device) / tp
            elements = kv_cache_elements(args, seq_len, layers, kv_impl)
            kv = elements * bytes_per_param(kv_dtype, group_size) * batch / kv_tp_split(args, tp)
        est = MemoryEstimate(
            weights=weights,
            gradients=grads,
            optimizer=opt,
            activations=acts,
            kv_cache=kv,
            stage=s,
            details={
                "params_on_gpu": n_local,
                "dense_params": dense_n,
                "expert_params": expert_n,
                "layers": list(layers),
            },
        )
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# Measuring the real model
# ---------------------------------------------------------------------------------------------
def saved_activation_bytes(fn, exclude=(), extra=()) -> tuple[object, int]:
    """Run `fn()` and return (its result, bytes of the storages autograd still keeps afterwards).

    Every tensor autograd saves is recorded through `torch.autograd.graph.saved_tensors_hooks`;
    those whose graph node was freed by the end (a discarded top-k value, say) are dropped, the rest
    are deduplicated by storage (a view costs its whole storage, as in memory) and counted, except
    storages of the tensors in `exclude` (parameters, buffers, inputs). `extra` is a callable that
    returns more tensors kept outside autograd (the MoE routing) to add, deduplicated too.
    """
    import weakref

    import torch

    class _Held:  # what the graph stores in place of a saved tensor; dies with its graph node
        __slots__ = ("t", "__weakref__")

        def __init__(self, t):
            # detach: a node that saves its own output would otherwise hold itself through the
            # tensor's grad_fn, a cycle that keeps discarded branches (a top-k's values) alive.
            self.t = t.detach()

    held: list = []

    def pack(t):
        h = _Held(t)
        held.append(weakref.ref(h))
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        out = fn()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    alive = [r().t for r in held if r() is not None] + list(extra() if callable(extra) else extra)
    for t in alive:
        st = t.untyped_storage()
        if st.data_ptr() not in skip and st.nbytes():
            seen.setdefault(st.data_ptr(), st.nbytes())
    return out, sum(seen.values())
