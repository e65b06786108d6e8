"""What LoRA and QLoRA fine-tuning cost: adapter parameters, bytes per GPU, FLOPs and time, and
the number of GPUs a fine-tune needs.

A fine-tune with adapters (dsim.lora) keeps the whole base model, frozen, in its dtype (bf16 for
LoRA, INT4 with a bf16 scale per group for QLoRA), and trains only the adapters: their weights,
gradients and Adam states are all that grows with training. The activations are those of a full
training step plus the adapters' rank-r intermediates: a frozen linear layer keeps no input for
a weight gradient, but the adapter beside it keeps the same input for its own (A's gradient), and
the backward still passes through every layer. The frozen head, gate and norms keep less than
trainable ones, the CPU's padded expert dispatch more: on the tiny model
(tests/cost/test_finetune.py, bench/finetune_memory_measure.py) the saved tensors are within 25 %
of this either way.
QLoRA adds a transient, the largest weight dequantized at once (dsim.lora dequantizes one stacked
expert weight [E, out, in] at a time, into fp32 and then the compute dtype, in the forward and
again in the backward), and time: every quantized weight is read and dequantized twice per
micro-batch.

Everything is computed from the other cost modules: parameter counts from dsim.cost.params, the
base's weights and the activations per GPU from dsim.cost.memory.memory (same layouts, same
rules), bytes per element from dsim.cost.dtypes.

    adapter_params(preset("tiny"), rank=8)                  # == the LoRA params of add_lora
    finetune_memory(preset("deepseek-v3"), "qlora", rank=16, pp=16, ep=1, dp=1)
    gpus_to_finetune(preset("deepseek-v3"), "h100", "qlora", rank=16)   # how many GPUs
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dsim.config import ModelArgs
from dsim.cost.hardware import GPU, get_gpu, peak_flops
from dsim.cost.memory import bytes_per_param, memory
from dsim.cost.params import attention_params, params

METHODS = ("full", "lora", "qlora")
TARGETS = ("attention", "routed_experts", "shared_experts", "dense_ffn")
BASE_DTYPE = {"full": "bf16", "lora": "bf16", "qlora": "int4"}  # the base's dtype by method
RESERVED_BYTES = 4e9  # CUDA context, workspaces, fragmentation (dsim.cost.plan's round figure)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method = {method!r} must be one of {', '.join(METHODS)}")


def _check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise ValueError(f"targets = {targets!r}: choose one or more of {', '.join(TARGETS)}")
    return targets


def _check_rank(rank: int) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank = {rank!r} must be an integer >= 1")


def attention_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """(in, out) of every projection of one attention module, keyed as dsim.cost.params names it
    (norms left out): the shapes a LoRA adapter needs, where params only needs their product."""
    D, H = args.dim, args.n_heads
    if args.attn_type == "mla":
        s: dict[str, tuple[int, int]] = {}
        if args.q_lora_rank > 0:
            s["wq_a"] = (D, args.q_lora_rank)
            s["wq_b"] = (args.q_lora_rank, H * args.qk_head_dim)
        else:
            s["wq"] = (D, H * args.qk_head_dim)
        s["wkv_a"] = (D, args.kv_lora_rank + args.qk_rope_head_dim)
        s["wkv_b"] = (args.kv_lora_rank, H * (args.qk_nope_head_dim + args.v_head_dim))
        s["wo"] = (H * args.v_head_dim, D)
    else:
        hd, kv = args.head_size, args.kv_heads
        s = {"wq": (D, H * hd), "wk": (D, kv * hd), "wv": (D, kv * hd), "wo": (H * hd, D)}
    counts = attention_params(args)
    assert all(i * o == counts[k] for k, (i, o) in s.items()), "shapes disagree with params"
    return s


def adapter_params(
    args: ModelArgs, rank: int, targets: Iterable[str] = ("attention", "routed_experts")
) -> dict[str, int]:
    """LoRA parameters r (in + out) per adapted weight, keyed by the module names of
    dsim.cost.params (`layers.3.attn.wo`, `layers.3.ffn.experts`, `mtp.0.block.ffn.experts`, ...):
    exactly what dsim.lora.add_lora(Transformer(args), rank, targets=targets) creates.

    Routed experts: E adapters per weight, E * 3 r (D + moe_inter_dim); shared experts (fused):
    3 r (D + n_shared * moe_inter_dim); dense FFN: 3 r (D + inter_dim).
    """
    _check_rank(rank)
    targets = _check_targets(targets)
    shapes = attention_shapes(args)
    D, I = args.dim, args.moe_inter_dim
    out: dict[str, int] = {}
    for name in params(args).modules:
        parts = name.split(".")
        if "attn" in parts and "attention" in targets:
            w = parts[-1]
            if w in shapes:
                out[name] = rank * sum(shapes[w])
        elif "ffn" in parts:
            what = parts[parts.index("ffn") + 1]
            if what == "experts" and "routed_experts" in targets:
                out[name] = args.n_routed_experts * 3 * rank * (D + I)
            elif what == "shared_experts" and "shared_experts" in targets:
                out[name] = 3 * rank * (D + args.n_shared_experts * I)
            elif what in ("w1", "w2", "w3") and "dense_ffn" in targets:
                out[name] = rank * (D + args.inter_dim)
    return out


def _split(adapters: dict[str, int]) -> tuple[int, int]:
    """(non-expert adapter parameters, routed-expert adapter parameters)."""
    expert = sum(v for k, v in adapters.items() if k.endswith("ffn.experts"))
    return sum(adapters.values()) - expert, expert


def _low_rank_activations(
    args: ModelArgs,
    rank: int,
    targets: Iterable[str],
    layers: list[int],
    tokens: int,
    dtype: str,
) -> float:
    """Bytes of the adapters' rank-r intermediates x A^T that autograd keeps (B's gradient needs
    them): r numbers per token and adapted weight, per activated expert for the routed experts."""
    rows = 0
    for name in adapter_params(args, rank, targets):
        parts = name.split(".")
        if parts[0] != "layers" or int(parts[1]) not in layers:
            continue
        if name.endswith("ffn.experts"):
            rows += 3 * args.n_activated_experts
        elif name.endswith("ffn.shared_experts"):
            rows += 3
        else:
            rows += 1
    return tokens * rank * rows * bytes_per_param(dtype)


@dataclass(frozen=True)
class FinetuneMemory:
    """Bytes on the busiest GPU of a fine-tune, by kind."""

    method: str
    weights: float  # the base model (frozen for LoRA/QLoRA), in its dtype, scales included
    adapters: float  # adapter weights
    gradients: float  # of the adapters (of every weight for a full fine-tune)
    optimizer: float  # master copies + Adam's two moments of whatever trains
    activations: float
    dequant: float  # QLoRA: the largest weight dequantized at once
    details: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.adapters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.dequant
        )

    def gib(self) -> dict[str, float]:
        g = 2**30
        keys = ("weights", "adapters", "gradients", "optimizer", "activations", "dequant", "total")
        return {k: round(getattr(self, k) / g, 2) for k in keys}


def finetune_memory(
    args: ModelArgs,
    method: str,
    *,
    rank: int = 16,
    targets: Iterable[str] = ("attention", "routed_experts"),
    batch: int = 1,
    seq_len: int = 4096,
    base_dtype: str | None = None,
    group_size: int = 64,
    adapter_dtype: str = "bf16",
    grad_dtype: str = "fp32",
    master_dtype: str | None = "fp32",
    optimizer_dtype: str = "fp32",
    compute_dtype: str = "bf16",
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    zero: int = 0,
    recompute: str = "none",
    device: str = "cuda",
) -> FinetuneMemory:
    """Bytes per GPU of a fine-tuning step under a TP x PP x DP (EP inside DP) layout.

    method: "full" (every weight trains: dsim.cost.memory.memory as it is), "lora" or "qlora".
    base_dtype: the frozen base's format (None: bf16 for full and LoRA, int4 for QLoRA). The
        embedding and head are counted in it too, though QLoRA keeps them in bf16: for V3 that
        undercounts about 3 GB of its ~356 GB of INT4 weights.
    group_size: elements per scale of a quantized base (QLoRA: 64).
    adapter_dtype, grad_dtype, master_dtype, optimizer_dtype: the adapters' weights, gradients,
        fp32 master copies (None: the adapters are their own master) and Adam moments.
    compute_dtype: the activations' dtype, which QLoRA's dequantized fp32 weight is cast to.
    zero: ZeRO stage, for a full fine-tune only (the adapters are too small to shard).
    Adapters are assumed to spread over the GPUs as the base parameters of their kind do (expert
    adapters with their experts).
    """
    _check_method(method)
    if base_dtype is None:
        base_dtype = BASE_DTYPE[method]
    layout = dict(tp=tp, pp=pp, dp=dp, ep=ep)
    common = dict(
        mode="train",
        batch=batch,
        seq_len=seq_len,
        dtype=base_dtype,
        group_size=group_size,
        recompute=recompute,
        device=device,
        act_dtype=compute_dtype,
        **layout,
    )
    if method == "full":
        est = memory(
            args,
            grad_dtype=grad_dtype,
            master_dtype=master_dtype,
            optimizer_dtype=optimizer_dtype,
            zero=zero,
            **common,
        )
        return FinetuneMemory(
            method,
            est.weights,
            0.0,
            est.gradients,
            est.optimizer,
            est.activations,
            0.0,
            dict(est.details, layout=layout),
        )
    if zero:
        raise ValueError(f"zero = {zero}: LoRA and QLoRA shard nothing here; use zero=0")
    est = memory(args, **common)  # the base's weights and the activations
    whole = memory(args, **dict(common, tp=1, pp=1, dp=1, ep=1))  # the totals of each kind
    dense_ad, expert_ad = _split(adapter_params(args, rank, targets))
    share_d = est.details["dense_params"] / max(whole.details["dense_params"], 1)
    share_e = est.details["expert_params"] / max(whole.details["expert_params"], 1)
    n_ad = dense_ad * share_d + expert_ad * share_e
    state = 2 * bytes_per_param(optimizer_dtype) + (
        bytes_per_param(master_dtype) if master_dtype else 0.0
    )
    acts = (
        est.activations
        + _low_rank_activations(
            args, rank, targets, est.details["layers"], batch * seq_len, compute_dtype
        )
        / tp
    )
    dequant = 0.0
    if method == "qlora":
        local_experts = args.n_routed_experts // ep
        biggest_attn = max(i * o for i, o in attention_shapes(args).values()) / tp
        biggest_ffn = args.dim * max(args.inter_dim, args.n_shared_experts * args.moe_inter_dim)
        biggest = max(local_experts * args.dim * args.moe_inter_dim, biggest_attn, biggest_ffn / tp)
        # dsim.quant dequantizes into fp32, then the product casts to compute_dtype
        cast = 0.0 if compute_dtype == "fp32" else bytes_per_param(compute_dtype)
        dequant = biggest * (4.0 + cast)
    return FinetuneMemory(
        method,
        weights=est.weights,
        adapters=n_ad * bytes_per_param(adapter_dtype),
        gradients=n_ad * bytes_per_param(grad_dtype),
        optimizer=n_ad * state,
        activations=acts,
        dequant=dequant,
        details=dict(est.details, adapter_params_on_gpu=n_ad, layout=layout),
    )


def finetune_flops(
    args: ModelArgs,
    tokens: int,
    method: str,
    rank: int = 16,
    targets: Iterable[str] = ("attention", "routed_experts"),
) -> float:
    """Matmul FLOPs of a fine-tuning step over `tokens` tokens (the 6 N D rule, N the parameters a
    token activates without the embedding).

    full: 6 N per token (forward 2 N, backward 2 N for input and 2 N for weight gradients).
    LoRA/QLoRA: 4 N per token (no weight gradient for the frozen base) plus 6 per adapter parameter
    a token passes through (routed-expert adapters: K of E).
    """
    _check_method(method)
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens = {tokens!r} must be an integer >= 1")
    n = params(args).active_no_embedding
    if method == "full":
        return 6.0 * n * tokens
    dense_ad, expert_ad = _split(adapter_params(args, rank, targets))
    active_ad = dense_ad + expert_ad * args.n_activated_experts / max(args.n_routed_experts, 1)
    return (4.0 * n + 6.0 * active_ad) * tokens


def dequant_seconds(
    args: ModelArgs,
    gpu: str | GPU,
    n_gpus: int,
    group_size: int = 64,
    compute_dtype: str = "bf16",
    passes: int = 2,
) -> float:
    """Seconds one GPU spends per micro-batch dequantizing its share of an INT4 base, memory-bound:
    each weight read in INT4 (scales included), written in `compute_dtype` and read back by the
    GEMM, `passes` times (2: forward and backward; 3 with full recomputation)."""
    if not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus = {n_gpus!r} must be an integer >= 1")
    if passes not in (2, 3):
        raise ValueError(f"passes = {passes!r} must be 2 (forward + backward) or 3 (recompute)")
    g = get_gpu(gpu)
    per_elem = bytes_per_param("int4", group_size) + 2 * bytes_per_param(compute_dtype)
    return passes * params(args).total / n_gpus * per_elem / g.hbm_bw


def finetune_step_seconds(
    args: ModelArgs,
    gpu: str | GPU,
    method: str,
    tokens: int,
    n_gpus: int,
    mfu: float,
    microbatches: int = 1,
    rank: int = 16,
    group_size: int = 64,
) -> dict[str, float]:
    """A roofline estimate of one optimizer step over `tokens` tokens on `n_gpus` GPUs:
    {"compute": FLOPs / (n_gpus x bf16 peak x mfu), "dequant": QLoRA's dequantization over
    `microbatches` micro-batches per GPU, "total"}. mfu is the achieved fraction of peak (no
    default: it is the assumption that decides the answer; DeepSeek-V3's pre-training reached
    about 0.4 on H800s, a small fine-tune far less)."""
    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise ValueError(f"mfu = {mfu!r} must be in (0, 1]")
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches = {microbatches!r} must be an integer >= 1")
    compute = finetune_flops(args, tokens, method, rank) / (n_gpus * peak_flops(gpu, "bf16") * mfu)
    deq = (
        microbatches * dequant_seconds(args, gpu, n_gpus, group_size) if method == "qlora" else 0.0
    )
    return {"compute": compute, "dequant": deq, "total": compute + deq}


@dataclass(frozen=True)
class FinetunePlan:
    """The fewest GPUs a fine-tune fits on, and the layout and memory that fit."""

    method: str
    gpu: str
    n_gpus: int
    layout: dict
    memory: FinetuneMemory
    capacity: float  # bytes per GPU available (HBM minus the reserve)


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def gpus_to_finetune(
    args: ModelArgs,
    gpu: str | GPU,
    method: str,
    *,
    rank: int = 16,
    batch: int = 1,
    seq_len: int = 4096,
    group_size: int = 64,
    recompute: str = "full",
    max_gpus: int = 4096,
    reserved_bytes: float = RESERVED_BYTES,
) -> FinetunePlan:
    """The smallest power-of-two number of `gpu`s on which a `method` fine-tune fits, searching
    tp in 1..8 (one node), pp (a power of two up to n_layers), ep dividing dp and the experts, and
    for a full fine-tune ZeRO 0..3; at that count, the layout with the least memory on its busiest
    GPU. A layout fits when finetune_memory's total is at most HBM minus `reserved_bytes`.
    Raises ValueError if nothing fits on max_gpus."""
    _check_method(method)
    g = get_gpu(gpu)
    capacity = g.hbm_bytes - reserved_bytes
    E = args.n_routed_experts
    one = finetune_memory(args, method, rank=rank, group_size=group_size, seq_len=seq_len)
    state = one.weights + one.adapters + one.gradients + one.optimizer  # the whole job's state
    for n in _powers_of_two(max_gpus):
        if n * capacity < state:  # even a perfect split of the state does not fit
            continue
        best: FinetunePlan | None = None
        for tp in (t for t in (1, 2, 4, 8) if t <= n):
            for pp in (p for p in _powers_of_two(args.n_layers) if tp * p <= n):
                dp = n // (tp * pp)
                for ep in (e for e in _powers_of_two(dp) if dp % e == 0 and (not E or E % e == 0)):
                    for zero in (0, 1, 2, 3) if method == "full" and dp > 1 else (0,):
                        layout = dict(tp=tp, pp=pp, dp=dp, ep=ep, zero=zero)
                        mem = finetune_memory(
                            args,
                            method,
                            rank=rank,
                            batch=batch,
                            seq_len=seq_len,
                            group_size=group_size,
                            recompute=recompute,
                            **layout,
                        )
                        if mem.total <= capacity and (
                            best is None or mem.total < best.memory.total
                        ):
                            best = FinetunePlan(method, g.name, n, layout, mem, capacity)
        if best is not None:
            return best
    raise ValueError(f"a {method} fine-tune of {args.name} does not fit on {max_gpus} {g.name}s")
