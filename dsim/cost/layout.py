"""Layout rules: how a parallel layout divides a model's state over GPUs.

One place for the rules that the memory model (`dsim.cost.memory.memory`) and the capacity planner
(`dsim.cost.plan`) both apply, so that the two cannot disagree:

    stage_layers     which layers each pipeline stage holds (contiguous, as even as possible)
    replicated_under_tp
                     which weights tensor parallelism keeps whole on every rank
    stage_params     the parameters one GPU of a stage holds (dense, routed-expert)
    zero_params      weights, gradients and optimizer states under ZeRO: which are divided over the
                     data-parallel replicas, dense over dp, routed experts over dp / ep
    kv_tp_split      how many ways tensor parallelism splits the KV cache
    tp_split_problem why tensor parallelism cannot split a model's heads and FFN widths

Layout: world = tp x pp x dp GPUs; expert parallelism (ep) lives inside data parallelism (ep | dp),
as in Megatron and DeepSeek, so a routed expert has dp / ep replicas and a dense weight dp.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import numpy as np

from dsim.config import ModelArgs

# Weights that tensor parallelism does not split (DeepSeek's inference model.py keeps them as plain
# Linear / parameters on every rank): norms, the gate, MLA's down-projections, MTP's eh_proj.
TP_REPLICATED = ("norm", "gate", "wq_a", "wkv_a", "eh_proj")

# The ZeRO stage from which each kind of model state is divided over the data-parallel replicas:
# ZeRO-1 shards the optimizer states (master weights + moments), ZeRO-2 also the gradients,
# ZeRO-3 also the weights.
ZERO_SHARDED_FROM = {"optimizer": 1, "gradients": 2, "weights": 3}
ZERO_STAGES = (0, 1, 2, 3)

Num = TypeVar("Num", float, np.ndarray)


def stage_layers(n_layers: int, pp: int) -> list[range]:
    """Contiguous, as even as possible split of n_layers over pp stages (earlier stages get the
    extra layers): stage_layers(61, 16) -> 13 stages of 4 layers, then 3 of 3."""
    if not 1 <= pp <= n_layers:
        raise ValueError(f"pp must be between 1 and n_layers={n_layers}, got {pp}")
    base, extra = divmod(n_layers, pp)
    out, start = [], 0
    for s in range(pp):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def replicated_under_tp(module: str) -> bool:
    """Whether tensor parallelism keeps the module (a `ParamCount.modules` name) whole on every
    rank: the norms and the other TP_REPLICATED weights."""
    last = module.rsplit(".", 1)[-1]
    return last.endswith("norm") or last in TP_REPLICATED


def stage_params(
    counts: dict[str, int],
    layers: Collection[int],
    first: bool,
    last: bool,
    tp: int,
    ep: int,
    tied: bool = False,
) -> tuple[float, float]:
    """Parameters one GPU holds: (dense, routed-expert).

    counts: module name -> parameters (`ParamCount.modules`); layers: the layers the GPU holds (one
    pipeline stage, or the two a DualPipe rank holds); first: it holds the first stage (the
    embedding); last: the last stage (final norm, head, MTP modules). Dense weights are split over
    tp (the replicated ones are not), routed experts over ep and tp. tied: the head shares the
    embedding's weights, so a GPU with the head but not the embedding holds a copy of it.
    """
    layers = set(layers)
    dense_n = expert_n = 0.0
    for name, n in counts.items():
        top = name.split(".")[0]
        if top == "layers" and int(name.split(".")[1]) not in layers:
            continue
        if (top == "embed" and not first) or (top in ("norm", "head", "mtp") and not last):
            continue
        split = 1 if replicated_under_tp(name) else tp
        if name.endswith("ffn.experts"):
            expert_n += n / ep / split
        else:
            dense_n += n / split
    if tied and last and not first:
        dense_n += counts["embed"] / tp
    return dense_n, expert_n


def zero_params(zero: Num, dense: Num, expert: Num, dp: Num, ep: Num) -> dict[str, Num]:
    """Parameters' worth of each model state ("weights", "gradients", "optimizer") one GPU keeps
    under ZeRO stage `zero`, for a GPU holding `dense` dense and `expert` routed-expert parameters:
    all of them, or, once `zero` reaches the stage that shards the state (ZERO_SHARDED_FROM), its
    share: dense / dp + expert / (dp / ep). Elementwise on numpy arrays (the planner's layouts) as
    on numbers."""
    whole = dense + expert
    saved = dense / dp + expert / (dp / ep) - whole  # what sharding over the replicas saves (< 0)
    return {kind: whole + (zero >= stage) * saved for kind, stage in ZERO_SHARDED_FROM.items()}


def kv_tp_split(args: ModelArgs, tp: int) -> int:
    """Ways tensor parallelism splits the KV cache: MLA's latent (and its RoPE key) is the same on
    every TP rank (1); MHA/GQA caches split by KV heads when tp divides them (tp), else 1."""
    if args.attn_type == "mla" or args.kv_heads % tp:
        return 1
    return tp


def tp_split_problem(args: ModelArgs, tp: int) -> str | None:
    """Why `tp` cannot split this model's weights into equal shards (None when it can): it must
    divide the heads, the FFN widths and, for GQA, the KV heads."""
    for name, value in (
        ("n_heads", args.n_heads),
        ("inter_dim", args.inter_dim),
        ("moe_inter_dim", args.moe_inter_dim),
    ):
        if value % tp:
            return f"tp={tp} must divide {name}={value}"
    if args.attn_type == "gqa" and args.kv_heads % tp:
        return f"tp={tp} must divide n_kv_heads={args.kv_heads}"
    return None
