"""
How long one collective takes on a topology of GPUs: the NCCL-like model, its
calibrated constants, and bus bandwidth (the fit is in dsim.cost.comm.fit).

Conventions (SI units everywhere):
  nbytes    the per-rank buffer in bytes, as nccl-tests' "size" S: the full
            (unsharded) array for all_reduce / reduce_scatter (input) /
            all_gather (output); the whole send buffer for all_to_all; the
            message for send_recv.
  *_bw      bytes/s per GPU per direction.
  times     seconds.

Wire bytes follow the bus-bandwidth convention of NVIDIA/nccl-tests doc/PERFORMANCE.md:
each rank sends S * 2(n-1)/n for all-reduce and S * (n-1)/n for reduce-scatter,
all-gather and all-to-all, so busbw = algbw * that factor is comparable to the link
bandwidth. The jax-ml/scaling-book "How to Think About GPUs" chapter derives the same
costs (AG/RS ~ B/W, AR ~ 2B/W within a node; B/W_node_egress across nodes).

What one collective call costs (fitted to NCCL on 2 x H200, dsim/data/comm_nccl_h200x2.json):

    T        = max(launch_kind, T_wire)
    T_wire   = min(T_LL, T_bulk)                  NCCL's tuner takes the faster protocol
    T_LL     = steps * hop_latency + wire / (LL_BW_FRACTION * B)
    T_bulk   = (sqrt(wire / B) + sqrt(steps * chunk_overhead))^2

  launch_kind (LAUNCH_OVERHEAD_S): the floor of one torch.distributed call (PyTorch's
    c10d, NCCL's enqueue, the kernel launch), tens of microseconds, whatever the size.
    It is a max, not a sum: calls issued back to back overlap the issue of one with the
    GPU work of the previous one. (A sum does not fit: the 16 MiB all-reduce on 2 x H200
    takes less than the floor plus the bytes at full bandwidth.)
  T_bulk: NCCL's bulk ("Simple") protocol pushes the wire bytes through `steps` dependent
    ring steps (2(n-1) for all-reduce, n-1 for RS/AG, 1 for a direct all-to-all) in
    chunks. Each chunk pays a fixed overhead per step (tuning.cc models it as a per-hop
    latency, 3.4 us for Ring/Simple on NVLink) and the pipeline takes about `steps`
    chunk slots to fill and drain. With chunks of c bytes, T(c) = (wire/c + steps) *
    (chunk_overhead + c/B): small chunks pay the overhead often, big ones fill the
    pipeline slowly. The best chunk, c* = sqrt(wire * chunk_overhead * B / steps), gives
    T_bulk (the classic optimum of a pipelined transfer). It is alpha-beta at both ends
    (steps * chunk_overhead for tiny messages, wire/B for huge ones) with a sqrt(wire)
    term between them, so large messages approach B slowly, and it reaches B/2 at
    wire = steps * chunk_overhead * B / (sqrt(2) - 1)^2: the half-saturation size grows
    with the number of steps, i.e. with n.
  B: the link's datasheet bandwidth times NVLINK_PEAK_EFFICIENCY (NET_PEAK_EFFICIENCY
    across nodes), and inside a node times the collective's COLLECTIVE_BW_FACTORS
    (NCCL's all-gather and reduce-scatter kernels reach less bus bandwidth than its
    all-reduce on the same links).

calibrate_from_measurements() (dsim.cost.comm.fit) fits launch_kind, chunk_overhead and each
collective's B to a measured sweep; the constants below are its output on the committed H200 run
(tests/cost/test_comm.py re-runs the fit and checks they are equal).
"""

import math
from dataclasses import dataclass

from dsim.cost.checks import check_int, check_real
from dsim.cost.hardware import GPU, get_gpu

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
ALGORITHMS = {
    "all_reduce": ("ring", "tree", "hierarchical"),
    "reduce_scatter": ("ring", "hierarchical"),
    "all_gather": ("ring", "hierarchical"),
    "all_to_all": ("direct",),
    "send_recv": ("direct",),
}

# -----------------------------------------------------------------------------
# calibration constants

# Fitted to real NCCL measurements by calibrate_from_measurements(load_measurements(MEASURED_FILE)):
# 2 x H200 (one node, NVLink NV18), torch 2.11, NCCL 2.28.9, float32, NVLink multicast off,
# 1 KiB..1 GiB (bench/comm_bench.py). tests/cost/test_comm.py asserts that these literals equal the
# fit.
MEASURED_FILE = "comm_nccl_h200x2.json"
MEASURED_GPU = "H200"
# The floor of one call (seconds): the time per call of tiny collectives issued back to back.
LAUNCH_OVERHEAD_S = {
    "all_reduce": 41.4e-6,
    "all_gather": 28.2e-6,
    "reduce_scatter": 32.2e-6,
    "all_to_all": 34.3e-6,
}
# Per-step overhead of one chunk of the bulk protocol on NVLink (seconds). NCCL's own tuning.cc
# (hwLat, Ring/Simple, NVLink) puts 3.4 us there.
NVLINK_CHUNK_OVERHEAD_S = 3.52e-6
# Bus bandwidth each collective tends to at large messages on the 2 x H200 (bytes/s).
MEASURED_BUS_BW = {
    "all_reduce": 373e9,
    "all_gather": 290e9,
    "reduce_scatter": 288e9,
    "all_to_all": 337e9,
}

# Derived from the fit. All-reduce sets the link efficiency (datasheet H200 NVLink: 450 GB/s per
# direction). The jax-ml/scaling-book's 8xH100 all-reduce ("close to 370GB/s" of 450 with ~10 GB
# arrays) gives 370/450 = 0.822: the same within about 1%.
NVLINK_PEAK_EFFICIENCY = MEASURED_BUS_BW["all_reduce"] / get_gpu(MEASURED_GPU).nvlink_bw
# Each collective's bus bandwidth relative to all-reduce's, in KINDS order (send_recv: as
# all_to_all, which NCCL runs as grouped sends and receives). Applied to links inside a node.
COLLECTIVE_BW_FACTORS = tuple(
    MEASURED_BUS_BW["all_to_all" if k == "send_recv" else k] / MEASURED_BUS_BW["all_reduce"]
    for k in KINDS
)

# Anchors from jax-ml/scaling-book, "How to Think About GPUs" (empirical 8xH100 all-reduce, SHARP
# off): (message bytes, bus bandwidth). Not fitted; tests/cost/test_comm.py holds the model against
# them.
SCALING_BOOK_8XH100_ALL_REDUCE = ((10e9, 370e9), (58e6, 150e9))
# deepseek-ai/DeepEP docs/legacy.md: internode dispatch/combine reach 43 GB/s (RDMA)
# on CX7 400 Gb/s NICs of "~50 GB/s maximum bandwidth" (EP16). 43/50 = 0.86.
NET_PEAK_EFFICIENCY = 43e9 / 50e9
# NCCL src/graph/tuning.cc: the low-latency (LL) ring protocol gets 1/4 of the bus
# bandwidth for all-reduce ("busBw *= 1.0/4.0"; 1/3 for single-node RS/AG, which we
# do not model so that all_reduce = reduce_scatter + all_gather holds on one topology).
LL_BW_FRACTION = 0.25
# NCCL src/graph/tuning.cc, hwLat table, Ring/LL column: per-hop latency in microseconds.
NVLINK_HOP_LATENCY_S = 0.47e-6
PCIE_HOP_LATENCY_S = 1.0e-6
NET_HOP_LATENCY_S = 2.7e-6
# NCCL src/graph/tuning.cc, hwLat table, Ring/Simple column: NVLink 3.4, PCI 5.7, NET 14.0 us.
# We keep NCCL's ratios between link types, scaled to the NVLink value fitted above.
PCIE_CHUNK_OVERHEAD_S = NVLINK_CHUNK_OVERHEAD_S * 5.7 / 3.4
NET_CHUNK_OVERHEAD_S = NVLINK_CHUNK_OVERHEAD_S * 14.0 / 3.4
# NCCL src/graph/tuning.cc: tree bandwidth is "busBw*.9" of the ring's.
TREE_BW_FACTOR = 0.9

# -----------------------------------------------------------------------------
# argument checks (every error names the argument and the allowed range)


def check_kind(kind: str) -> str:
    """kind, if it is one of KINDS; else a ValueError listing them."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _launch_kind(kind: str) -> str:
    """The measured collective whose launch floor a kind uses (send_recv: all_to_all's)."""
    return "all_to_all" if kind == "send_recv" else kind


# -----------------------------------------------------------------------------
# topology


@dataclass(frozen=True)
class Topology:
    """n_ranks GPUs, ranks_per_node per node. Bandwidths are the all-reduce bus bandwidth
    one GPU reaches per direction at large messages (already times the peak efficiency);
    kind_bw_factors scales the intra-node one for each collective (KINDS order).
    intra/inter_latency: per hop of the low-latency protocol; intra/inter_chunk_overhead:
    per step of the bulk protocol; launch_overhead: the per-call floor (None: the measured
    LAUNCH_OVERHEAD_S of each collective; 0 turns it off); half_saturation_bytes > 0 adds
    the older hyperbolic ramp, bandwidth * S / (S + half_saturation_bytes), to bulk transfers."""

    n_ranks: int
    ranks_per_node: int
    intra_bw: float  # bytes/s, NVLink (or PCIe) inside a node
    inter_bw: float  # bytes/s, this GPU's IB/RoCE NIC
    intra_latency: float = NVLINK_HOP_LATENCY_S  # seconds per hop
    inter_latency: float = NET_HOP_LATENCY_S  # seconds per hop
    half_saturation_bytes: float = 0.0
    ll_bw_fraction: float = LL_BW_FRACTION
    intra_chunk_overhead: float = NVLINK_CHUNK_OVERHEAD_S  # seconds per step
    inter_chunk_overhead: float = NET_CHUNK_OVERHEAD_S  # seconds per step
    launch_overhead: float | None = None  # seconds per call
    kind_bw_factors: tuple[float, ...] = COLLECTIVE_BW_FACTORS

    def __post_init__(self):
        n = check_int("n_ranks", self.n_ranks)
        g = check_int("ranks_per_node", self.ranks_per_node)
        if n > g and n % g != 0:
            raise ValueError(
                f"ranks_per_node={g} must divide n_ranks={n} when the ranks span several nodes"
            )
        check_real("intra_bw", self.intra_bw, strict=True)
        check_real("inter_bw", self.inter_bw, strict=True)
        check_real("intra_latency", self.intra_latency)
        check_real("inter_latency", self.inter_latency)
        check_real("half_saturation_bytes", self.half_saturation_bytes)
        check_real("intra_chunk_overhead", self.intra_chunk_overhead)
        check_real("inter_chunk_overhead", self.inter_chunk_overhead)
        if self.launch_overhead is not None:
            check_real("launch_overhead", self.launch_overhead)
        if not 0 < self.ll_bw_fraction <= 1:
            raise ValueError(f"ll_bw_fraction must be in (0, 1], got {self.ll_bw_fraction!r}")
        f = self.kind_bw_factors
        if not isinstance(f, tuple) or len(f) != len(KINDS):
            raise ValueError(
                f"kind_bw_factors must be a tuple of {len(KINDS)} numbers "
                f"(one per kind in {KINDS}), got {f!r}"
            )
        for k, v in zip(KINDS, f):
            check_real(f"kind_bw_factors[{k}]", v, strict=True)

    @property
    def local_ranks(self) -> int:
        """Ranks of this group inside one node."""
        return min(self.n_ranks, self.ranks_per_node)

    @property
    def n_nodes(self) -> int:
        return self.n_ranks // self.local_ranks

    def launch(self, kind: str) -> float:
        """Per-call floor of a collective of `kind`, seconds."""
        check_kind(kind)
        return (
            LAUNCH_OVERHEAD_S[_launch_kind(kind)]
            if self.launch_overhead is None
            else self.launch_overhead
        )

    def bw_factor(self, kind: str) -> float:
        """Intra-node bandwidth multiplier of `kind` (1 for all-reduce with the measured
        factors)."""
        return self.kind_bw_factors[KINDS.index(check_kind(kind))]

    @classmethod
    def from_gpu(
        cls,
        gpu: "str | GPU",
        n_ranks: int,
        ranks_per_node: int = 8,
        half_saturation_bytes: float = 0.0,
    ) -> "Topology":
        """Topology of n_ranks GPUs of the catalog. Datasheet bandwidths are scaled by
        the peak efficiencies; measured ones (bw_source="measured") are used as is.
        Groups larger than the GPU's NVLink domain talk over PCIe inside the node."""
        g = get_gpu(gpu)
        measured = g.bw_source == "measured"
        intra_eff = 1.0 if measured else NVLINK_PEAK_EFFICIENCY  # assumed also for PCIe
        net_eff = 1.0 if measured else NET_PEAK_EFFICIENCY
        local = min(check_int("n_ranks", n_ranks), check_int("ranks_per_node", ranks_per_node))
        on_nvlink = local <= g.nvlink_domain
        return cls(
            n_ranks=n_ranks,
            ranks_per_node=ranks_per_node,
            intra_bw=(g.nvlink_bw if on_nvlink else g.pcie_bw) * intra_eff,
            inter_bw=g.scaleout_bw * net_eff,
            intra_latency=NVLINK_HOP_LATENCY_S if on_nvlink else PCIE_HOP_LATENCY_S,
            inter_latency=NET_HOP_LATENCY_S,
            half_saturation_bytes=half_saturation_bytes,
            intra_chunk_overhead=NVLINK_CHUNK_OVERHEAD_S if on_nvlink else PCIE_CHUNK_OVERHEAD_S,
            inter_chunk_overhead=NET_CHUNK_OVERHEAD_S,
        )


# -----------------------------------------------------------------------------
# one communication phase: the alpha-beta core


def achieved_bandwidth(peak_bw: float, msg_bytes: float, half_saturation_bytes: float) -> float:
    """Hyperbolic ramp: the bandwidth (bytes/s) a transfer of a msg_bytes message reaches,
    peak_bw for huge messages, half of it at half_saturation_bytes. Note wire/achieved_bw =
    wire/peak_bw * (1 + S_half/S): the same as alpha-beta with a large fixed overhead.
    Used by moe_dispatch_time (DeepEP) and, when a Topology asks for it, on top of T_bulk."""
    if half_saturation_bytes == 0:
        return peak_bw
    return peak_bw * msg_bytes / (msg_bytes + half_saturation_bytes)


def bulk_time(wire_bytes: float, bw: float, fill_s: float) -> float:
    """Optimally chunked pipelined transfer: (sqrt(wire/bw) + sqrt(fill))^2, where
    fill = sum over the steps of the per-chunk overhead (see the module docstring)."""
    return (math.sqrt(wire_bytes / bw) + math.sqrt(fill_s)) ** 2


def _phase_time(
    wire_bytes: float, msg_bytes: float, bw: float, latency_s: float, fill_s: float, topo: Topology
) -> float:
    """Seconds for one phase that sends wire_bytes per rank over links of bandwidth bw.
    Like NCCL's tuner, take the faster of a low-latency protocol (a fraction of the
    bandwidth, latency_s of hop latencies) and the pipelined bulk protocol (full bandwidth,
    fill_s of per-chunk overheads)."""
    if wire_bytes == 0:
        return 0.0
    low_latency = latency_s + wire_bytes / (bw * topo.ll_bw_fraction)
    bulk = bulk_time(
        wire_bytes, achieved_bandwidth(bw, msg_bytes, topo.half_saturation_bytes), fill_s
    )
    return min(low_latency, bulk)


def _ring(
    nbytes: float,
    p: int,
    passes: int,
    bw: float,
    hop_latency: float,
    chunk_overhead: float,
    topo: Topology,
) -> float:
    """Ring over p ranks on one link type. One pass (reduce-scatter or all-gather) is
    p-1 steps, each moving nbytes/p; all-reduce is two passes."""
    if p == 1:
        return 0.0
    steps = passes * (p - 1)
    return _phase_time(
        steps * nbytes / p, nbytes, bw, steps * hop_latency, steps * chunk_overhead, topo
    )


# -----------------------------------------------------------------------------
# algorithms (intra_bw: the intra-node bandwidth for this collective)


def _flat_ring(topo: Topology, nbytes: float, passes: int, intra_bw: float) -> float:
    """One ring through every rank. Across nodes its slowest hop is a single NIC,
    so it runs at inter_bw (NCCL runs one ring per NIC to do better). Latency as in
    NCCL's tuning.cc: (steps - inter_steps) intra hops + inter_steps network hops;
    the chunk overheads add up the same way."""
    n, m = topo.n_ranks, topo.n_nodes
    steps, inter_steps = passes * (n - 1), passes * (m - 1)
    bw = intra_bw if m == 1 else min(intra_bw, topo.inter_bw)
    latency = (steps - inter_steps) * topo.intra_latency + inter_steps * topo.inter_latency
    fill = (
        steps - inter_steps
    ) * topo.intra_chunk_overhead + inter_steps * topo.inter_chunk_overhead
    return _phase_time(steps * nbytes / n, nbytes, bw, latency, fill, topo)


def _tree_all_reduce(topo: Topology, nbytes: float, intra_bw: float) -> float:
    """NCCL's tree (2.4+): a double binary tree across nodes and a chain inside each node;
    reduce up, broadcast down, so ~2*S on the wire per rank at tree bandwidth, with
    2 * ((g-1) intra + log2(nodes) inter) hops of latency (tuning.cc: "2 * ((nRanks/nNodes-1)
    * intraLat + log2i(nNodes) * interLat)"). Across many nodes that beats the ring's 2(n-1)."""
    g, m = topo.local_ranks, topo.n_nodes
    up_intra, up_inter = g - 1, math.ceil(math.log2(m))
    latency = 2 * up_intra * topo.intra_latency + 2 * up_inter * topo.inter_latency
    fill = 2 * up_intra * topo.intra_chunk_overhead + 2 * up_inter * topo.inter_chunk_overhead
    bw = intra_bw if m == 1 else min(intra_bw, topo.inter_bw)
    return _phase_time(2 * nbytes, nbytes, TREE_BW_FACTOR * bw, latency, fill, topo)


def _hierarchical(topo: Topology, nbytes: float, passes: int, intra_bw: float) -> float:
    """Two levels: a ring inside each node over NVLink on the full buffer, and a ring
    across nodes over IB on the 1/g shard each GPU owns (g rails in parallel).
    All-reduce = intra RS + inter AR + intra AG. The phases are summed (not pipelined)."""
    g, m = topo.local_ranks, topo.n_nodes
    intra = _ring(nbytes, g, passes, intra_bw, topo.intra_latency, topo.intra_chunk_overhead, topo)
    inter = _ring(
        nbytes / g, m, passes, topo.inter_bw, topo.inter_latency, topo.inter_chunk_overhead, topo
    )
    return intra + inter


def _all_to_all(topo: Topology, nbytes: float, intra_bw: float) -> float:
    """Each rank sends nbytes/n to every rank, to all peers at once (one step). The (g-1)/n
    share for its own node goes over NVLink while the (n-g)/n share for other nodes goes
    over its NIC, concurrently."""
    n, g = topo.n_ranks, topo.local_ranks
    t_intra = _phase_time(
        nbytes * (g - 1) / n, nbytes, intra_bw, topo.intra_latency, topo.intra_chunk_overhead, topo
    )
    t_inter = _phase_time(
        nbytes * (n - g) / n,
        nbytes,
        topo.inter_bw,
        topo.inter_latency,
        topo.inter_chunk_overhead,
        topo,
    )
    return max(t_intra, t_inter)


def _send_recv(topo: Topology, nbytes: float, intra_bw: float) -> float:
    """Point to point; the peer is on another node iff n_ranks > ranks_per_node."""
    if topo.n_nodes == 1:
        return _phase_time(
            nbytes, nbytes, intra_bw, topo.intra_latency, topo.intra_chunk_overhead, topo
        )
    return _phase_time(
        nbytes, nbytes, topo.inter_bw, topo.inter_latency, topo.inter_chunk_overhead, topo
    )


_PASSES = {"all_reduce": 2, "reduce_scatter": 1, "all_gather": 1}


def _algorithm_time(topo: Topology, kind: str, nbytes: float, algorithm: str) -> float:
    """Seconds on the wire (no launch floor)."""
    intra_bw = topo.intra_bw * topo.bw_factor(kind)
    if kind == "all_to_all":
        return _all_to_all(topo, nbytes, intra_bw)
    if kind == "send_recv":
        return _send_recv(topo, nbytes, intra_bw)
    if algorithm == "tree":
        return _tree_all_reduce(topo, nbytes, intra_bw)
    if algorithm == "ring":
        return _flat_ring(topo, nbytes, _PASSES[kind], intra_bw)
    return _hierarchical(topo, nbytes, _PASSES[kind], intra_bw)


def time_on_topology(
    topo: Topology, kind: str, nbytes: float, algorithm: str | None = None
) -> float:
    """Seconds for one collective on `topo`: max(launch floor, time on the wire), the
    algorithm on the wire being the fastest (as NCCL picks) unless one is named."""
    check_kind(kind)
    nbytes = check_real("nbytes", nbytes)
    allowed = ALGORITHMS[kind]
    if algorithm is not None and algorithm not in allowed:
        raise ValueError(
            f"algorithm for {kind} must be None or one of {allowed}, got {algorithm!r}"
        )
    if topo.n_ranks == 1 or nbytes == 0:
        return 0.0
    candidates = allowed if algorithm is None else (algorithm,)
    wire = min(_algorithm_time(topo, kind, nbytes, a) for a in candidates)
    return max(topo.launch(kind), wire)


def collective_time(
    kind: str,
    nbytes: float,
    n_ranks: int,
    gpu: "str | GPU" = "H100-SXM",
    ranks_per_node: int = 8,
    algorithm: str | None = None,
) -> float:
    """Seconds for one collective of `kind` over n_ranks GPUs of the catalog, as one
    torch.distributed call among many issued back to back (launch floor included).

    kind: all_reduce | all_gather | reduce_scatter | all_to_all | send_recv
    nbytes: per-rank buffer in bytes (see the module docstring).
    algorithm: all_reduce: ring | tree | hierarchical; reduce_scatter, all_gather:
      ring | hierarchical; all_to_all, send_recv: direct. None = fastest.
    """
    check_kind(kind)
    return time_on_topology(
        Topology.from_gpu(gpu, n_ranks, ranks_per_node), kind, nbytes, algorithm
    )


def bus_bandwidth_factor(kind: str, n_ranks: int) -> float:
    """nccl-tests' busbw/algbw: 2(n-1)/n for all-reduce, (n-1)/n for RS/AG/all-to-all, 1 for
    send/recv."""
    check_kind(kind)
    n = check_int("n_ranks", n_ranks)
    if kind == "send_recv":
        return 1.0
    return (2 if kind == "all_reduce" else 1) * (n - 1) / n


def bus_bandwidth(kind: str, nbytes: float, n_ranks: int, seconds: float) -> float:
    """Bus bandwidth (bytes/s) of a collective measured (or modelled) at `seconds`."""
    nbytes = check_real("nbytes", nbytes)
    seconds = check_real("seconds", seconds, strict=True)
    return nbytes / seconds * bus_bandwidth_factor(kind, n_ranks)
