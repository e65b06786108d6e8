"""What expert offloading costs: memory on the device and the host, the cache's hit rate, and the
time the misses spend crossing the host link.

The model of dsim.offload: a MoE layer keeps `cache_size` of its E routed experts on the device
(LRU); every other weight stays resident. Decoding one step needs the experts the gate picks; each
one not cached is copied over the host link (PCIe 4 or 5, or NVLink-C2C on a Grace Hopper), so a
decode step costs

    transfer = n_moe_layers x (experts needed per step) x (1 - hit rate) x expert bytes / link
    compute  = bytes the step reads from HBM / HBM bandwidth  (decode is memory-bound)

and the two add up (dsim.offload copies, then computes) or overlap (the better schedule).

The hit rate comes from routing statistics: `lru_hit_rate` is Che's approximation for an LRU
cache (Che, Tung and Wang 2002) from each expert's share of the routing, which may come from the
trained model (its routing trace) or from a given skew (`zipf_load`); `simulate_lru` replays a
recorded trace through the very policy of dsim.offload and is what the approximation is held to.

    args = preset("deepseek-v2-lite")
    h = lru_hit_rate(zipf_load(64, 1.0), cache_size=16, k=6)
    decode_seconds(args, "h100", "pcie5", hit_rate=h)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from dsim.config import ModelArgs
from dsim.cost.components import Component
from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.memory import bytes_per_param, weight_bytes
from dsim.cost.params import is_moe_layer, params

# Host-link bandwidth per direction, bytes/s (datasheet peaks; a real copy reaches ~80 % of them).
LINKS = {
    "pcie4": 31.5e9,  # PCIe 4.0 x16: 16 GT/s x 16 lanes x 128/130 / 8
    "pcie5": 63.0e9,  # PCIe 5.0 x16: 32 GT/s
    "nvlink-c2c": 450e9,  # NVIDIA GH200: NVLink-C2C 900 GB/s, both directions together
}


def link_bandwidth(link: str | float) -> float:
    """Bytes/s of a named link (see LINKS) or a number given in bytes/s."""
    if isinstance(link, (int, float)) and not isinstance(link, bool):
        if not link > 0:
            raise ValueError(f"link bandwidth must be > 0 bytes/s, got {link!r}")
        return float(link)
    if link not in LINKS:
        raise ValueError(f"link = {link!r} must be one of {', '.join(LINKS)} or bytes/s")
    return LINKS[link]


def _check_load(load: Sequence[float]) -> list[float]:
    load = [float(v) for v in load]
    if not load or any(v < 0 or not math.isfinite(v) for v in load) or sum(load) <= 0:
        raise ValueError("load must be non-negative finite shares of the routing, not all zero")
    total = sum(load)
    return [v / total for v in load]


def zipf_load(n_experts: int, skew: float) -> list[float]:
    """Expert shares of the routing proportional to 1 / rank^skew (skew 0: uniform)."""
    if not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"n_experts = {n_experts!r} must be an integer >= 1")
    if not (math.isfinite(skew) and skew >= 0):
        raise ValueError(f"skew = {skew!r} must be a finite number >= 0")
    w = [1.0 / (i + 1) ** skew for i in range(n_experts)]
    return [v / sum(w) for v in w]


def lru_hit_rate(load: Sequence[float], cache_size: int, k: int) -> float:
    """Che's approximation of an LRU cache's hit rate when each step requests k experts, expert i
    with probability q_i = min(1, k * load_i) (load: each expert's share of the routing).

    The characteristic time t solves sum_i (1 - exp(-q_i t)) = cache_size; expert i is then cached
    with probability 1 - exp(-q_i t), and the hit rate is the request-weighted mean of that.
    It assumes independent requests. Real traces have locality (neighbouring tokens route alike),
    so it is the cautious estimate: on the tiny model it is 0.05-0.16 below the replay of the
    model's own trace (tests/test_offload.py); and with cache_size < k a step's own experts evict
    each other, which it does not see (there it overestimates).
    """
    p = _check_load(load)
    E = len(p)
    if not isinstance(cache_size, int) or not 1 <= cache_size <= E:
        raise ValueError(f"cache_size = {cache_size!r} must be an integer in [1, {E}]")
    if not isinstance(k, int) or not 1 <= k <= E:
        raise ValueError(f"k = {k!r} must be an integer in [1, {E}]")
    q = [min(1.0, k * v) for v in p]
    used = sum(1 for v in q if v > 0)
    if cache_size >= used:
        return 1.0

    def filled(t: float) -> float:
        return sum(1 - math.exp(-v * t) for v in q)

    lo, hi = 0.0, 1.0
    while filled(hi) < cache_size:
        hi *= 2
    for _ in range(200):  # bisection: filled() is increasing in t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if filled(mid) < cache_size else (lo, mid)
    t = (lo + hi) / 2
    return sum(v * (1 - math.exp(-v * t)) for v in q) / sum(q)


def simulate_lru(steps: Iterable[Iterable[int]], cache_size: int) -> dict[str, float]:
    """Replay a routing trace through dsim.offload's policy: each step's distinct experts in
    ascending order, a hit moves the expert to the most recent end, a miss evicts the least recent.
    steps: the experts each step needs (e.g. a decode step's [B, K] indices). Returns hits,
    misses, hit_rate."""
    if not isinstance(cache_size, int) or cache_size < 1:
        raise ValueError(f"cache_size = {cache_size!r} must be an integer >= 1")
    cache: OrderedDict[int, None] = OrderedDict()
    hits = misses = 0
    for step in steps:
        for e in sorted(set(int(v) for v in step)):
            if e in cache:
                hits += 1
                cache.move_to_end(e)
            else:
                misses += 1
                if len(cache) >= cache_size:
                    cache.popitem(last=False)
                cache[e] = None
    total = hits + misses
    return dict(hits=hits, misses=misses, hit_rate=hits / total if total else float("nan"))


def routing_load(steps: Iterable[Iterable[int]], n_experts: int) -> list[float]:
    """Each expert's share of the requests in a routing trace (the input of lru_hit_rate)."""
    counts = [0] * n_experts
    for step in steps:
        for e in step:
            counts[int(e)] += 1
    return _check_load(counts)


def expert_bytes(args: ModelArgs, dtype: str = "bf16", group_size: int | None = 128) -> int:
    """Bytes of one routed expert (w1, w2, w3: 3 x dim x moe_inter_dim) in `dtype`."""
    return 3 * weight_bytes(args.dim * args.moe_inter_dim, dtype, group_size)


def n_moe_layers(args: ModelArgs) -> int:
    """MoE layers of the main model (MTP modules are not served here)."""
    return sum(1 for i in range(args.n_layers) if is_moe_layer(args, i))


def offload_memory(
    args: ModelArgs, cache_size: int, dtype: str = "bf16", group_size: int | None = 128
) -> dict[str, float]:
    """Bytes of the weights on the device and on the host (main model, no MTP, no KV cache):
    device = every weight but the routed experts + cache_size experts per MoE layer;
    host = every routed expert."""
    if not isinstance(cache_size, int) or not 1 <= cache_size <= args.n_routed_experts:
        raise ValueError(
            f"cache_size = {cache_size!r} must be an integer in [1, {args.n_routed_experts}]"
        )
    p = params(args)
    routed = p.breakdown[Component.ROUTED_EXPERTS]
    resident = p.total_no_mtp - routed
    layers = n_moe_layers(args)
    return dict(
        device=resident * bytes_per_param(dtype, group_size)
        + layers * cache_size * expert_bytes(args, dtype, group_size),
        host=layers * args.n_routed_experts * expert_bytes(args, dtype, group_size),
        resident_all=p.total_no_mtp * bytes_per_param(dtype, group_size),
    )


def experts_per_step(load: Sequence[float], k: int, batch: int) -> float:
    """Expected distinct experts a decode step of `batch` tokens needs in one layer:
    sum_i 1 - (1 - q_i)^batch, q_i = min(1, k * load_i)."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch = {batch!r} must be an integer >= 1")
    return sum(1 - (1 - min(1.0, k * v)) ** batch for v in _check_load(load))


def decode_seconds(
    args: ModelArgs,
    gpu: str | GPU,
    link: str | float,
    hit_rate: float,
    batch: int = 1,
    load: Sequence[float] | None = None,
    dtype: str = "bf16",
    group_size: int | None = 128,
    overlap: bool = False,
) -> dict[str, float]:
    """Seconds of one decode step (batch tokens, one new token each) with offloaded experts.

    transfer: misses x expert bytes / link, misses = layers x experts_per_step x (1 - hit_rate)
        (load None: uniform routing).
    compute: a memory-bound step reads the resident weights a token uses (everything but the
        routed experts, plus the experts the step needs) from HBM once.
    total: transfer + compute, or their maximum with overlap.
    """
    if not 0 <= hit_rate <= 1:
        raise ValueError(f"hit_rate = {hit_rate!r} must be in [0, 1]")
    g = get_gpu(gpu)
    bw = link_bandwidth(link)
    load = zipf_load(args.n_routed_experts, 0.0) if load is None else load
    needed = experts_per_step(load, args.n_activated_experts, batch)
    layers = n_moe_layers(args)
    eb = expert_bytes(args, dtype, group_size)
    p = params(args)
    resident = (p.total_no_mtp - p.breakdown[Component.ROUTED_EXPERTS]) * bytes_per_param(
        dtype, group_size
    )
    transfer = layers * needed * (1 - hit_rate) * eb / bw
    compute = (resident + layers * needed * eb) / g.hbm_bw
    total = max(transfer, compute) if overlap else transfer + compute
    return dict(
        transfer=transfer,
        compute=compute,
        total=total,
        tokens_per_s=batch / total,
        experts_per_step=needed,
        misses_per_step=layers * needed * (1 - hit_rate),
    )


def offload_claim_1p5t(
    gpu_bytes: float = 320e9,
    link: str | float = 25e9,
    dtype: str = "fp16",
    group_size: int | None = 128,
) -> dict[str, object]:
    """The seeds' claim (dsim.claims id "a0-offload-1.5t-resident-memory"): a 1.5T MoE (16 experts
    of 96B, top-4: 125 layers of 3 x 16384 x 15625 per expert) served from 320 GB of GPU memory by
    offloading its inactive experts to CPU memory, with the article's ~25 GB/s PCIe.

    For each cache size (experts per layer on the GPUs): device and host bytes, whether the device
    part fits in `gpu_bytes`, the LRU hit rate under uniform routing (Che) and the seconds a
    batch-1 decode step spends copying missed experts. dtype and group_size: the weights' format
    (fp16 has no scales; int4 and int8 carry one bf16 scale per group_size weights).
    """
    args = ModelArgs(
        vocab_size=129280,
        dim=16384,
        inter_dim=0,
        moe_inter_dim=15625,
        n_layers=125,
        n_dense_layers=0,
        n_heads=128,
        n_routed_experts=16,
        n_shared_experts=0,
        n_activated_experts=4,
        attn_type="mla",
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        max_seq_len=4096,
        original_seq_len=4096,
        name="a0-1.5T",
    )
    bw = link_bandwidth(link)
    uniform = zipf_load(args.n_routed_experts, 0.0)
    rows = []
    for c in (1, 2, 4, 8, 16):
        mem = offload_memory(args, c, dtype, group_size)
        h = lru_hit_rate(uniform, c, args.n_activated_experts)
        miss_bytes = (
            n_moe_layers(args)
            * args.n_activated_experts
            * (1 - h)
            * expert_bytes(args, dtype, None)
        )
        rows.append(
            dict(
                cache_size=c,
                device_bytes=mem["device"],
                host_bytes=mem["host"],
                fits=mem["device"] <= gpu_bytes,
                hit_rate=h,
                transfer_seconds_per_token=miss_bytes / bw,
            )
        )
    p = params(args)
    return dict(
        args=args,
        total_params=p.total_no_mtp,
        params_per_expert=args.dim * args.moe_inter_dim * 3 * n_moe_layers(args),  # all layers
        gpu_bytes=gpu_bytes,
        link_bytes_per_s=bw,
        dtype=dtype,
        rows=rows,
    )
