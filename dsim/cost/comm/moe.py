"""
MoE expert-parallel all-to-all (dispatch / combine), DeepSeek-V3 style: how many nodes a
token reaches, the bytes one rank sends over IB and over NVLink, and how long DeepEP's
kernels take to send them.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

from dsim.cost.checks import check_int, check_real
from dsim.cost.comm.collectives import Topology, achieved_bandwidth
from dsim.cost.hardware import GPU

# DeepEP-style MoE dispatch kernels saturate at much smaller messages than all-reduce:
# docs/legacy.md reports 153 GB/s of ~160 GB/s NVLink (EP8, 4096 tokens x 7168 hidden,
# FP8 = 29 MB per rank). 153 = 160 * 29.4 / (29.4 + S_half) gives S_half ~ 1.4 MB.
# (moe_dispatch_time models DeepEP's kernels, not NCCL: it keeps this hyperbolic ramp.)
EP_HALF_SATURATION_BYTES = 1.4e6
# DeepSeek-V3 Technical Report, sec. 2.1.2 (node-limited routing) and 3.2.2: each token
# is sent to at most M = 4 nodes.
DEEPSEEK_V3_NODE_LIMIT = 4


def _nodes_reached_pmf(
    n_activated_experts: int, n_nodes: int, experts_per_node: int
) -> list[Fraction]:
    """P(a token's n_activated_experts distinct experts, drawn uniformly, lie on exactly j nodes),
    j=0..n_nodes. Ways to fill exactly j given nodes, by inclusion-exclusion:
    sum_i (-1)^i C(j,i) C((j-i)e, k)."""
    e, k = experts_per_node, n_activated_experts
    total = math.comb(n_nodes * e, k)
    pmf = []
    for j in range(min(n_nodes, k) + 1):  # more than k nodes is impossible
        onto = sum((-1) ** i * math.comb(j, i) * math.comb((j - i) * e, k) for i in range(j + 1))
        pmf.append(Fraction(math.comb(n_nodes, j) * onto, total))
    return pmf


def expected_nodes_reached(
    n_activated_experts: int, n_nodes: int, experts_per_node: int, node_limit: int | None = None
) -> float:
    """Expected number of distinct nodes hosting a token's k = n_activated_experts experts under
    uniform random routing: n_nodes * (1 - C(E - E_node, k) / C(E, k)),
    E = n_nodes * experts_per_node. With node-limited routing (DeepSeek-V3: at most M = 4 nodes),
    a token reaches min(that count, node_limit) nodes; we return E[min(X, node_limit)] exactly.
    E.g. V3 (k=8, 8 nodes of 32 experts) would reach ~5.3 nodes, capped at 4."""
    k = check_int("n_activated_experts", n_activated_experts)
    n = check_int("n_nodes", n_nodes)
    e = check_int("experts_per_node", experts_per_node)
    if k > n * e:
        raise ValueError(
            f"n_activated_experts must be <= n_nodes * experts_per_node = {n * e}, got {k}"
        )
    if node_limit is not None:
        m = check_int("node_limit", node_limit)
        if m * e < k:
            raise ValueError(
                f"node_limit * experts_per_node must be >= n_activated_experts={k}, "
                f"got node_limit={m}"
            )
        if m < min(n, k):
            pmf = _nodes_reached_pmf(k, n, e)
            return float(sum(min(j, m) * p for j, p in enumerate(pmf)))
    E = n * e
    return n * (1 - math.comb(E - e, k) / math.comb(E, k))


@dataclass(frozen=True)
class MoEA2ABytes:
    """Bytes one rank sends for a MoE dispatch (or combine): over IB and over NVLink."""

    ib_bytes: float
    nvlink_bytes: float

    @property
    def total(self) -> float:
        return self.ib_bytes + self.nvlink_bytes


def moe_a2a_bytes(
    tokens: int,
    dim: int,
    n_activated_experts: int,
    n_routed_experts: int,
    ep: int,
    ranks_per_node: int = 8,
    node_limit: int | None = None,
    bytes_per_elem: float = 2.0,
) -> MoEA2ABytes:
    """Per-rank traffic of one MoE dispatch, DeepSeek-V3 style (sec. 3.2.2): a token
    crosses IB once per remote destination node (to the GPU with the same local index),
    then is forwarded over NVLink to each other GPU there hosting one of its experts.
    tokens: tokens on this rank; dim: the model's hidden size (ModelArgs.dim); ep: expert-parallel
    ranks; bytes_per_elem: 2 for BF16, ~1 for FP8 dispatch.
    Uniform routing. The NVLink fan-out ignores the node limit (a good approximation)."""
    check_int("tokens", tokens, lo=0)
    check_int("dim", dim)
    k = check_int("n_activated_experts", n_activated_experts)
    n_exp = check_int("n_routed_experts", n_routed_experts)
    ep = check_int("ep", ep)
    topo = Topology(ep, ranks_per_node, intra_bw=1.0, inter_bw=1.0)  # only validates the layout
    g, n_nodes = topo.local_ranks, topo.n_nodes
    check_real("bytes_per_elem", bytes_per_elem, strict=True)
    if n_exp % ep != 0:
        raise ValueError(f"ep={ep} must divide n_routed_experts={n_exp}")
    if k > n_exp:
        raise ValueError(f"n_activated_experts must be <= n_routed_experts={n_exp}, got {k}")
    token_bytes = dim * bytes_per_elem
    experts_per_rank = n_exp // ep
    # IB: one copy per reached node other than our own (by symmetry a fraction (N-1)/N).
    nodes = expected_nodes_reached(k, n_nodes, experts_per_rank * g, node_limit)
    ib = tokens * token_bytes * nodes * (n_nodes - 1) / n_nodes
    # NVLink: one copy per distinct destination GPU that is not the landing GPU of its node.
    ranks = expected_nodes_reached(k, ep, experts_per_rank)
    nvlink = tokens * token_bytes * ranks * (g - 1) / g
    return MoEA2ABytes(ib_bytes=ib, nvlink_bytes=nvlink)


def moe_dispatch_time(
    tokens: int,
    dim: int,
    n_activated_experts: int,
    n_routed_experts: int,
    ep: int,
    gpu: "str | GPU" = "H100-SXM",
    ranks_per_node: int = 8,
    node_limit: int | None = None,
    bytes_per_elem: float = 2.0,
) -> float:
    """Seconds for one MoE dispatch (a combine moves the same bytes back: call it again
    with the combine's bytes_per_elem). IB and NVLink traffic overlap (DeepSeek-V3
    pipelines the NVLink forwarding behind IB), so the slower of the two decides.
    This models DeepEP's kernels, calibrated on its published figures (a hyperbolic
    ramp with EP_HALF_SATURATION_BYTES, no launch floor), not torch.distributed's
    all_to_all: for that, use collective_time("all_to_all", ...)."""
    vol = moe_a2a_bytes(
        tokens,
        dim,
        n_activated_experts,
        n_routed_experts,
        ep,
        ranks_per_node,
        node_limit,
        bytes_per_elem,
    )
    topo = Topology.from_gpu(
        gpu, ep, ranks_per_node, half_saturation_bytes=EP_HALF_SATURATION_BYTES
    )
    msg = tokens * dim * bytes_per_elem
    t_nvlink = _deepep_phase_time(vol.nvlink_bytes, msg, topo.intra_bw, topo.intra_latency, topo)
    t_ib = _deepep_phase_time(vol.ib_bytes, msg, topo.inter_bw, topo.inter_latency, topo)
    return max(t_nvlink, t_ib)


def _deepep_phase_time(
    wire_bytes: float, msg_bytes: float, bw: float, latency_s: float, topo: Topology
) -> float:
    """One DeepEP transfer: the faster of the low-latency protocol and a bulk transfer at the
    hyperbolic ramp's bandwidth (latency + wire / achieved_bandwidth)."""
    if wire_bytes == 0:
        return 0.0
    low_latency = latency_s + wire_bytes / (bw * topo.ll_bw_fraction)
    bulk = latency_s + wire_bytes / achieved_bandwidth(bw, msg_bytes, topo.half_saturation_bytes)
    return min(low_latency, bulk)


def ep_step_bytes(
    tokens: int,
    dim: int,
    n_activated_experts: int,
    n_routed_experts: int,
    ep: int,
    n_moe_layers: int,
    ranks_per_node: int = 8,
    node_limit: int | None = None,
    dispatch_bytes_per_elem: float = 1.0,
    combine_bytes_per_elem: float = 2.0,
    backward: bool = True,
) -> MoEA2ABytes:
    """Per-rank EP traffic of a step: dispatch + combine in every MoE layer, and again
    in the backward pass (the backward of a dispatch is a combine and vice versa).
    Defaults follow DeepSeek-V3 sec. 3.3: FP8 dispatch, BF16 combine."""
    check_int("n_moe_layers", n_moe_layers, lo=0)
    args = (tokens, dim, n_activated_experts, n_routed_experts, ep, ranks_per_node, node_limit)
    d = moe_a2a_bytes(*args, bytes_per_elem=dispatch_bytes_per_elem)
    c = moe_a2a_bytes(*args, bytes_per_elem=combine_bytes_per_elem)
    times = n_moe_layers * (2 if backward else 1)
    return MoEA2ABytes(
        ib_bytes=times * (d.ib_bytes + c.ib_bytes),
        nvlink_bytes=times * (d.nvlink_bytes + c.nvlink_bytes),
    )
