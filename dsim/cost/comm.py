"""
Analytical cost model of GPU communication: how long a collective takes, and how
many bytes each parallelism strategy (TP, PP, DP/ZeRO, EP) moves per training step.

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

calibrate_from_measurements() fits launch_kind, chunk_overhead and each collective's B
to a measured sweep; the constants below are its output on the committed H200 run
(tests/test_comm.py re-runs the fit and checks they are equal).
"""

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from dsim.cost.hardware import GPU, get_gpu

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
ALGORITHMS = {
    "all_reduce": ("ring", "tree", "hierarchical"),
    "reduce_scatter": ("ring", "hierarchical"),
    "all_gather": ("ring", "hierarchical"),
    "all_to_all": ("direct",),
    "send_recv": ("direct",),
}
PIPELINE_SCHEDULES = ("1f1b", "zb1p", "dualpipe")
DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# -----------------------------------------------------------------------------
# calibration constants

# Fitted to real NCCL measurements by calibrate_from_measurements(load_measurements(MEASURED_FILE)):
# 2 x H200 (one node, NVLink NV18), torch 2.11, NCCL 2.28.9, float32, NVLink multicast off,
# 1 KiB..1 GiB (bench/comm_bench.py). tests/test_comm.py asserts that these literals equal the fit.
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
COLLECTIVE_BW_FACTORS = tuple(MEASURED_BUS_BW["all_to_all" if k == "send_recv" else k]
                              / MEASURED_BUS_BW["all_reduce"] for k in KINDS)

# Anchors from jax-ml/scaling-book, "How to Think About GPUs" (empirical 8xH100 all-reduce, SHARP
# off): (message bytes, bus bandwidth). Not fitted; tests/test_comm.py holds the model against them.
SCALING_BOOK_8XH100_ALL_REDUCE = ((10e9, 370e9), (58e6, 150e9))
# The model before the NCCL measurement: a bulk transfer reached half the peak at this message
# size, fitted to the two anchors above (150 = 370 * 58 / (58 + S_half)). Kept for comparison
# (Topology(..., half_saturation_bytes=HALF_SATURATION_BYTES)); no default uses it.
HALF_SATURATION_BYTES = 85e6
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
# DeepEP-style MoE dispatch kernels saturate at much smaller messages than all-reduce:
# docs/legacy.md reports 153 GB/s of ~160 GB/s NVLink (EP8, 4096 tokens x 7168 hidden,
# FP8 = 29 MB per rank). 153 = 160 * 29.4 / (29.4 + S_half) gives S_half ~ 1.4 MB.
# (moe_dispatch_time models DeepEP's kernels, not NCCL: it keeps this hyperbolic ramp.)
EP_HALF_SATURATION_BYTES = 1.4e6
# DeepSeek-V3 Technical Report, sec. 2.1.2 (node-limited routing) and 3.2.2: each token
# is sent to at most M = 4 nodes.
DEEPSEEK_V3_NODE_LIMIT = 4

# -----------------------------------------------------------------------------
# argument checks (every error names the argument and the allowed range)

def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)

def _check_real(name: str, value, lo: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {lo}, got {value!r}")
    return float(value)

def _check_kind(kind: str) -> str:
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
    intra_bw: float                     # bytes/s, NVLink (or PCIe) inside a node
    inter_bw: float                     # bytes/s, this GPU's IB/RoCE NIC
    intra_latency: float = NVLINK_HOP_LATENCY_S   # seconds per hop
    inter_latency: float = NET_HOP_LATENCY_S      # seconds per hop
    half_saturation_bytes: float = 0.0
    ll_bw_fraction: float = LL_BW_FRACTION
    intra_chunk_overhead: float = NVLINK_CHUNK_OVERHEAD_S   # seconds per step
    inter_chunk_overhead: float = NET_CHUNK_OVERHEAD_S      # seconds per step
    launch_overhead: float | None = None                    # seconds per call
    kind_bw_factors: tuple[float, ...] = COLLECTIVE_BW_FACTORS

    def __post_init__(self):
        n = _check_int("n_ranks", self.n_ranks)
        g = _check_int("ranks_per_node", self.ranks_per_node)
        if n > g and n % g != 0:
            raise ValueError(f"ranks_per_node={g} must divide n_ranks={n} when the ranks span several nodes")
        _check_real("intra_bw", self.intra_bw, strict=True)
        _check_real("inter_bw", self.inter_bw, strict=True)
        _check_real("intra_latency", self.intra_latency)
        _check_real("inter_latency", self.inter_latency)
        _check_real("half_saturation_bytes", self.half_saturation_bytes)
        _check_real("intra_chunk_overhead", self.intra_chunk_overhead)
        _check_real("inter_chunk_overhead", self.inter_chunk_overhead)
        if self.launch_overhead is not None:
            _check_real("launch_overhead", self.launch_overhead)
        if not 0 < self.ll_bw_fraction <= 1:
            raise ValueError(f"ll_bw_fraction must be in (0, 1], got {self.ll_bw_fraction!r}")
        f = self.kind_bw_factors
        if not isinstance(f, tuple) or len(f) != len(KINDS):
            raise ValueError(f"kind_bw_factors must be a tuple of {len(KINDS)} numbers (one per kind in {KINDS}), got {f!r}")
        for k, v in zip(KINDS, f):
            _check_real(f"kind_bw_factors[{k}]", v, strict=True)

    @property
    def local_ranks(self) -> int:
        """Ranks of this group inside one node."""
        return min(self.n_ranks, self.ranks_per_node)

    @property
    def n_nodes(self) -> int:
        return self.n_ranks // self.local_ranks

    def launch(self, kind: str) -> float:
        """Per-call floor of a collective of `kind`, seconds."""
        _check_kind(kind)
        return LAUNCH_OVERHEAD_S[_launch_kind(kind)] if self.launch_overhead is None else self.launch_overhead

    def bw_factor(self, kind: str) -> float:
        """Intra-node bandwidth multiplier of `kind` (1 for all-reduce with the measured factors)."""
        return self.kind_bw_factors[KINDS.index(_check_kind(kind))]

    @classmethod
    def from_gpu(cls, gpu: "str | GPU", n_ranks: int, ranks_per_node: int = 8,
                 half_saturation_bytes: float = 0.0) -> "Topology":
        """Topology of n_ranks GPUs of the catalog. Datasheet bandwidths are scaled by
        the peak efficiencies; measured ones (bw_source="measured") are used as is.
        Groups larger than the GPU's NVLink domain talk over PCIe inside the node."""
        g = get_gpu(gpu)
        measured = g.bw_source == "measured"
        intra_eff = 1.0 if measured else NVLINK_PEAK_EFFICIENCY  # assumed also for PCIe
        net_eff = 1.0 if measured else NET_PEAK_EFFICIENCY
        local = min(_check_int("n_ranks", n_ranks), _check_int("ranks_per_node", ranks_per_node))
        on_nvlink = local <= g.nvlink_domain
        return cls(
            n_ranks=n_ranks, ranks_per_node=ranks_per_node,
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

def _bulk_time(wire_bytes: float, bw: float, fill_s: float) -> float:
    """Optimally chunked pipelined transfer: (sqrt(wire/bw) + sqrt(fill))^2, where
    fill = sum over the steps of the per-chunk overhead (see the module docstring)."""
    return (math.sqrt(wire_bytes / bw) + math.sqrt(fill_s)) ** 2

def _phase_time(wire_bytes: float, msg_bytes: float, bw: float, latency_s: float, fill_s: float,
                topo: Topology) -> float:
    """Seconds for one phase that sends wire_bytes per rank over links of bandwidth bw.
    Like NCCL's tuner, take the faster of a low-latency protocol (a fraction of the
    bandwidth, latency_s of hop latencies) and the pipelined bulk protocol (full bandwidth,
    fill_s of per-chunk overheads)."""
    if wire_bytes == 0:
        return 0.0
    low_latency = latency_s + wire_bytes / (bw * topo.ll_bw_fraction)
    bulk = _bulk_time(wire_bytes, achieved_bandwidth(bw, msg_bytes, topo.half_saturation_bytes), fill_s)
    return min(low_latency, bulk)

def _ring(nbytes: float, p: int, passes: int, bw: float, hop_latency: float, chunk_overhead: float,
          topo: Topology) -> float:
    """Ring over p ranks on one link type. One pass (reduce-scatter or all-gather) is
    p-1 steps, each moving nbytes/p; all-reduce is two passes."""
    if p == 1:
        return 0.0
    steps = passes * (p - 1)
    return _phase_time(steps * nbytes / p, nbytes, bw, steps * hop_latency, steps * chunk_overhead, topo)

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
    fill = (steps - inter_steps) * topo.intra_chunk_overhead + inter_steps * topo.inter_chunk_overhead
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
    inter = _ring(nbytes / g, m, passes, topo.inter_bw, topo.inter_latency, topo.inter_chunk_overhead, topo)
    return intra + inter

def _all_to_all(topo: Topology, nbytes: float, intra_bw: float) -> float:
    """Each rank sends nbytes/n to every rank, to all peers at once (one step). The (g-1)/n
    share for its own node goes over NVLink while the (n-g)/n share for other nodes goes
    over its NIC, concurrently."""
    n, g = topo.n_ranks, topo.local_ranks
    t_intra = _phase_time(nbytes * (g - 1) / n, nbytes, intra_bw, topo.intra_latency,
                          topo.intra_chunk_overhead, topo)
    t_inter = _phase_time(nbytes * (n - g) / n, nbytes, topo.inter_bw, topo.inter_latency,
                          topo.inter_chunk_overhead, topo)
    return max(t_intra, t_inter)

def _send_recv(topo: Topology, nbytes: float, intra_bw: float) -> float:
    """Point to point; the peer is on another node iff n_ranks > ranks_per_node."""
    if topo.n_nodes == 1:
        return _phase_time(nbytes, nbytes, intra_bw, topo.intra_latency, topo.intra_chunk_overhead, topo)
    return _phase_time(nbytes, nbytes, topo.inter_bw, topo.inter_latency, topo.inter_chunk_overhead, topo)

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

def time_on_topology(topo: Topology, kind: str, nbytes: float, algorithm: str | None = None) -> float:
    """Seconds for one collective on `topo`: max(launch floor, time on the wire), the
    algorithm on the wire being the fastest (as NCCL picks) unless one is named."""
    _check_kind(kind)
    nbytes = _check_real("nbytes", nbytes)
    allowed = ALGORITHMS[kind]
    if algorithm is not None and algorithm not in allowed:
        raise ValueError(f"algorithm for {kind} must be None or one of {allowed}, got {algorithm!r}")
    if topo.n_ranks == 1 or nbytes == 0:
        return 0.0
    candidates = allowed if algorithm is None else (algorithm,)
    wire = min(_algorithm_time(topo, kind, nbytes, a) for a in candidates)
    return max(topo.launch(kind), wire)

def collective_time(kind: str, nbytes: float, n_ranks: int, gpu: "str | GPU" = "H100-SXM",
                    ranks_per_node: int = 8, algorithm: str | None = None) -> float:
    """Seconds for one collective of `kind` over n_ranks GPUs of the catalog, as one
    torch.distributed call among many issued back to back (launch floor included).

    kind: all_reduce | all_gather | reduce_scatter | all_to_all | send_recv
    nbytes: per-rank buffer in bytes (see the module docstring).
    algorithm: all_reduce: ring | tree | hierarchical; reduce_scatter, all_gather:
      ring | hierarchical; all_to_all, send_recv: direct. None = fastest.
    """
    _check_kind(kind)
    return time_on_topology(Topology.from_gpu(gpu, n_ranks, ranks_per_node), kind, nbytes, algorithm)

def bus_bandwidth_factor(kind: str, n_ranks: int) -> float:
    """nccl-tests' busbw/algbw: 2(n-1)/n for all-reduce, (n-1)/n for RS/AG/all-to-all, 1 for send/recv."""
    _check_kind(kind)
    n = _check_int("n_ranks", n_ranks)
    if kind == "send_recv":
        return 1.0
    return (2 if kind == "all_reduce" else 1) * (n - 1) / n

def bus_bandwidth(kind: str, nbytes: float, n_ranks: int, seconds: float) -> float:
    """Bus bandwidth (bytes/s) of a collective measured (or modelled) at `seconds`."""
    nbytes = _check_real("nbytes", nbytes)
    seconds = _check_real("seconds", seconds, strict=True)
    return nbytes / seconds * bus_bandwidth_factor(kind, n_ranks)

# -----------------------------------------------------------------------------
# fitting measured curves

@dataclass(frozen=True)
class AlphaBeta:
    """time(nbytes) = alpha + beta * nbytes (seconds, seconds/byte)."""
    alpha: float
    beta: float

    @property
    def bandwidth(self) -> float:
        """1/beta, bytes/s."""
        return 1.0 / self.beta

    @property
    def half_saturation_bytes(self) -> float:
        """Message size at which latency equals transfer time: half the bandwidth is reached."""
        return self.alpha / self.beta

    def __call__(self, nbytes: float) -> float:
        return self.alpha + self.beta * nbytes

def fit_alpha_beta(sizes, times, relative: bool = True) -> AlphaBeta:
    """Least-squares fit of time = alpha + beta*size to measured (sizes bytes, times s).
    relative=True minimizes relative errors, which suits log-spaced sweeps (otherwise
    the biggest messages decide everything). A negative alpha is clipped to 0."""
    s = np.asarray(sizes, dtype=float).ravel()
    t = np.asarray(times, dtype=float).ravel()
    if s.shape != t.shape or s.size < 2:
        raise ValueError(f"sizes and times must have the same length >= 2, got {s.size} and {t.size}")
    if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
        raise ValueError("sizes must be finite numbers >= 0")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError("times must be finite numbers > 0")
    if np.unique(s).size < 2:
        raise ValueError("sizes must contain at least two distinct values")
    w = 1.0 / t if relative else np.ones_like(t)
    A = np.stack([np.ones_like(s), s], axis=1) * w[:, None]
    alpha, beta = np.linalg.lstsq(A, t * w, rcond=None)[0]
    if alpha < 0:  # refit through the origin
        alpha, beta = 0.0, float(np.sum(w * w * s * t) / np.sum(w * w * s * s))
    if beta <= 0:
        raise ValueError("times do not grow with sizes: cannot fit a bandwidth")
    return AlphaBeta(float(alpha), float(beta))

# -----------------------------------------------------------------------------
# calibrating the collective model on a measured sweep

def _bulk_steps(kind: str, n_ranks: int) -> int:
    """Dependent steps of the bulk protocol on one node: 2(n-1) for a ring all-reduce,
    n-1 for reduce-scatter and all-gather, 1 for all-to-all and send/recv (direct)."""
    if kind == "all_reduce":
        return 2 * (n_ranks - 1)
    if kind in ("reduce_scatter", "all_gather"):
        return n_ranks - 1
    return 1

def _sig3(x: float) -> float:
    """x rounded to 3 significant digits (the fit's precision: the measurements scatter by
    several per cent, so more digits would be noise)."""
    return float(f"{x:.3g}")

def _sig3_grid(lo: float, hi: float) -> np.ndarray:
    """Every number with 3 significant digits in [lo, hi], ascending."""
    out = []
    for e in range(math.floor(math.log10(lo)) - 2, math.floor(math.log10(hi)) + 1):
        out += [float(f"{m}e{e}") for m in range(100, 1000)]
    v = np.array(sorted(set(out)))
    return v[(v >= lo) & (v <= hi)]

def _best_floor(pred_log: np.ndarray, meas_log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of pred_log (log seconds on the wire, shape (..., P)), the floor x = log L
    minimising mean |log max(L, T) - log t| and that minimum. The loss is piecewise linear
    in x with breaks at the predicted and the measured points, so the best x is one of them."""
    cands = np.concatenate([pred_log, np.broadcast_to(meas_log, pred_log.shape)], axis=-1)
    loss = np.abs(np.maximum(cands[..., :, None], pred_log[..., None, :]) - meas_log).mean(-1)
    i = loss.argmin(-1)[..., None]
    return np.take_along_axis(loss, i, -1)[..., 0], np.take_along_axis(cands, i, -1)[..., 0]

@dataclass(frozen=True)
class CommCalibration:
    """The collective model fitted to one measured sweep on n_ranks GPUs of one node.
    launch_overhead_s, bus_bw: per measured kind (seconds; bytes/s); chunk_overhead_s:
    per step of the bulk protocol, shared by the kinds; mean_abs_log_error: the fit's loss,
    mean |log(model/measured)| over every point, averaged over the kinds."""
    gpu: str
    n_ranks: int
    launch_overhead_s: dict
    chunk_overhead_s: float
    bus_bw: dict
    mean_abs_log_error: float

    @property
    def peak_efficiency(self) -> float:
        """All-reduce bus bandwidth over the GPU's datasheet NVLink bandwidth."""
        return self.bus_bw["all_reduce"] / get_gpu(self.gpu).nvlink_bw

    def predict(self, kind: str, nbytes: float) -> float:
        """Seconds per call of the fitted model: max(launch, T_bulk) on one node."""
        n, w = self.n_ranks, _check_real("nbytes", nbytes) * bus_bandwidth_factor(kind, self.n_ranks)
        return max(self.launch_overhead_s[kind],
                   _bulk_time(w, self.bus_bw[kind], _bulk_steps(kind, n) * self.chunk_overhead_s))

def load_measurements(name: str = MEASURED_FILE) -> dict:
    """A bench/comm_bench.py result committed in dsim/data/ (default: the 2 x H200 NCCL run)."""
    path = DATA_DIR / name
    if not path.exists():
        raise ValueError(f"name must be a file in {DATA_DIR}, got {name!r}")
    return json.loads(path.read_text())

def _points(records, n_ranks, gpu):
    """(n_ranks, gpu name, {kind: (sizes, times)}) from a bench result or (kind, nbytes, seconds) rows."""
    if isinstance(records, Mapping):
        if "collectives" not in records:
            raise ValueError("records must be a bench/comm_bench.py result (with 'collectives') "
                             "or an iterable of (kind, nbytes, seconds)")
        n = records.get("world_size") if n_ranks is None else n_ranks
        rpn = records.get("ranks_per_node") or n
        gpu = gpu or records.get("gpu_model")
        pts = {k: (list(c["sizes_bytes"]), list(c["time_s"])) for k, c in records["collectives"].items()}
    else:
        n, rpn, pts = n_ranks, n_ranks, {}
        for row in records:
            kind, nbytes, seconds = row
            s, t = pts.setdefault(kind, ([], []))
            s.append(nbytes)
            t.append(seconds)
    n = _check_int("n_ranks", n, lo=2)
    if rpn is None or rpn < n:
        raise ValueError(f"ranks_per_node must be >= n_ranks={n}: the fit models one node, got {rpn!r}")
    if gpu is None:
        raise ValueError("gpu must name the measured GPU (records carry none)")
    g = get_gpu(gpu)
    if not pts:
        raise ValueError("records hold no measurement")
    out = {}
    for kind, (s, t) in pts.items():
        _check_kind(kind)
        s, t = np.asarray(s, dtype=float), np.asarray(t, dtype=float)
        if s.size < 3 or s.shape != t.shape:
            raise ValueError(f"records of {kind} must be >= 3 (nbytes, seconds) pairs, got {s.size}")
        if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(t)) and np.all(t > 0)):
            raise ValueError(f"records of {kind}: sizes and times must be finite numbers > 0")
        out[kind] = (s, t)
    return n, g.name, out

def calibrate_from_measurements(records, n_ranks: int | None = None, gpu: "str | GPU | None" = None) -> CommCalibration:
    """Fit the collective model to a measured sweep on one node:

        time(kind, S) = max(launch_kind, (sqrt(S * f_kind / B_kind) + sqrt(steps_kind * c))^2)

    (f_kind: the bus-bandwidth factor, so S * f_kind is the wire bytes; steps_kind from
    _bulk_steps), with a launch floor and a bus bandwidth per kind and one per-step chunk
    overhead c for all kinds. The loss is the mean |log(model / measured)| over each kind's
    points (robust to the odd slow point), the kinds weighing equally. The search is a coarse
    log grid (about 10% on c, 5% on B), then every 3-significant-digit value within 20% (c)
    and 12% (B) of the coarse optimum; each floor is exact (_best_floor), then rounded to 3
    significant digits. Deterministic: the same records give the same constants.

    records: a bench/comm_bench.py result (dict with "collectives", "world_size",
      "ranks_per_node", "gpu_model"), or an iterable of (kind, nbytes, seconds) rows, with
      n_ranks and gpu given.
    """
    n, gpu_name, pts = _points(records, n_ranks, gpu)
    kinds = list(pts)
    wire = {k: pts[k][0] * bus_bandwidth_factor(k, n) for k in kinds}
    meas = {k: np.log(pts[k][1]) for k in kinds}
    steps = {k: _bulk_steps(k, n) for k in kinds}

    def per_kind(k, c, bws):
        """Loss and floor for each bandwidth in bws, chunk overhead c."""
        pred = 2 * np.log(np.sqrt(wire[k][None, :] / bws[:, None]) + math.sqrt(steps[k] * c))
        return _best_floor(pred, meas[k])

    # coarse
    coarse_c = np.exp(np.linspace(math.log(1e-8), math.log(1e-4), 93))
    coarse_b = np.exp(np.linspace(math.log(1e8), math.log(1e13), 237))
    best = None
    for c in coarse_c:
        total, bws = 0.0, {}
        for k in kinds:
            loss, _ = per_kind(k, c, coarse_b)
            i = int(loss.argmin())
            total += loss[i]
            bws[k] = coarse_b[i]
        if best is None or total < best[0]:
            best = (total, c, bws)
    _, c0, b0 = best
    # fine, on 3-significant-digit values
    fine_b = {k: _sig3_grid(b0[k] / 1.12, b0[k] * 1.12) for k in kinds}
    best = None
    for c in _sig3_grid(c0 / 1.2, c0 * 1.2):
        total, fit = 0.0, {}
        for k in kinds:
            loss, floor = per_kind(k, c, fine_b[k])
            i = int(loss.argmin())
            total += loss[i]
            fit[k] = (fine_b[k][i], math.exp(floor[i]))
        if best is None or total < best[0]:
            best = (total, float(c), fit)
    _, c, fit = best
    launch = {k: _sig3(fit[k][1]) for k in kinds}
    bus_bw = {k: float(fit[k][0]) for k in kinds}
    cal = CommCalibration(gpu=gpu_name, n_ranks=n, launch_overhead_s=launch, chunk_overhead_s=c,
                          bus_bw=bus_bw, mean_abs_log_error=0.0)
    err = [np.mean(np.abs(np.log([cal.predict(k, s) for s in pts[k][0]]) - meas[k])) for k in kinds]
    return CommCalibration(gpu=gpu_name, n_ranks=n, launch_overhead_s=launch, chunk_overhead_s=c,
                           bus_bw=bus_bw, mean_abs_log_error=float(np.mean(err)))

@functools.lru_cache(maxsize=None)
def measured_calibration(name: str = MEASURED_FILE) -> CommCalibration:
    """calibrate_from_measurements on a committed run (cached): the source of the constants above."""
    return calibrate_from_measurements(load_measurements(name))

# -----------------------------------------------------------------------------
# MoE expert-parallel all-to-all (dispatch / combine)

def _nodes_reached_pmf(top_k: int, n_nodes: int, experts_per_node: int) -> list[Fraction]:
    """P(a token's top_k distinct experts, drawn uniformly, lie on exactly j nodes), j=0..n_nodes.
    Ways to fill exactly j given nodes, by inclusion-exclusion: sum_i (-1)^i C(j,i) C((j-i)e, k)."""
    e, k = experts_per_node, top_k
    total = math.comb(n_nodes * e, k)
    pmf = []
    for j in range(min(n_nodes, k) + 1):  # more than k nodes is impossible
        onto = sum((-1) ** i * math.comb(j, i) * math.comb((j - i) * e, k) for i in range(j + 1))
        pmf.append(Fraction(math.comb(n_nodes, j) * onto, total))
    return pmf

def expected_nodes_reached(top_k: int, n_nodes: int, experts_per_node: int,
                           node_limit: int | None = None) -> float:
    """Expected number of distinct nodes hosting a token's top_k experts under uniform
    random routing: n_nodes * (1 - C(E - E_node, k) / C(E, k)), E = n_nodes * experts_per_node.
    With node-limited routing (DeepSeek-V3: at most M = 4 nodes), a token reaches
    min(that count, node_limit) nodes; we return E[min(X, node_limit)] exactly.
    E.g. V3 (k=8, 8 nodes of 32 experts) would reach ~5.3 nodes, capped at 4."""
    k = _check_int("top_k", top_k)
    n = _check_int("n_nodes", n_nodes)
    e = _check_int("experts_per_node", experts_per_node)
    if k > n * e:
        raise ValueError(f"top_k must be <= n_nodes * experts_per_node = {n * e}, got {k}")
    if node_limit is not None:
        m = _check_int("node_limit", node_limit)
        if m * e < k:
            raise ValueError(f"node_limit * experts_per_node must be >= top_k={k}, got node_limit={m}")
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

def moe_a2a_bytes(tokens: int, hidden: int, top_k: int, n_experts: int, ep_size: int,
                  ranks_per_node: int = 8, node_limit: int | None = None,
                  bytes_per_elem: float = 2.0) -> MoEA2ABytes:
    """Per-rank traffic of one MoE dispatch, DeepSeek-V3 style (sec. 3.2.2): a token
    crosses IB once per remote destination node (to the GPU with the same local index),
    then is forwarded over NVLink to each other GPU there hosting one of its experts.
    tokens: tokens on this rank; bytes_per_elem: 2 for BF16, ~1 for FP8 dispatch.
    Uniform routing. The NVLink fan-out ignores the node limit (a good approximation)."""
    _check_int("tokens", tokens, lo=0)
    _check_int("hidden", hidden)
    k = _check_int("top_k", top_k)
    n_exp = _check_int("n_experts", n_experts)
    ep = _check_int("ep_size", ep_size)
    topo = Topology(ep, ranks_per_node, intra_bw=1.0, inter_bw=1.0)  # only validates the layout
    g, n_nodes = topo.local_ranks, topo.n_nodes
    _check_real("bytes_per_elem", bytes_per_elem, strict=True)
    if n_exp % ep != 0:
        raise ValueError(f"ep_size={ep} must divide n_experts={n_exp}")
    if k > n_exp:
        raise ValueError(f"top_k must be <= n_experts={n_exp}, got {k}")
    token_bytes = hidden * bytes_per_elem
    experts_per_rank = n_exp // ep
    # IB: one copy per reached node other than our own (by symmetry a fraction (N-1)/N).
    nodes = expected_nodes_reached(k, n_nodes, experts_per_rank * g, node_limit)
    ib = tokens * token_bytes * nodes * (n_nodes - 1) / n_nodes
    # NVLink: one copy per distinct destination GPU that is not the landing GPU of its node.
    ranks = expected_nodes_reached(k, ep, experts_per_rank)
    nvlink = tokens * token_bytes * ranks * (g - 1) / g
    return MoEA2ABytes(ib_bytes=ib, nvlink_bytes=nvlink)

def moe_dispatch_time(tokens: int, hidden: int, top_k: int, n_experts: int, ep_size: int,
                      gpu: "str | GPU" = "H100-SXM", ranks_per_node: int = 8,
                      node_limit: int | None = None, bytes_per_elem: float = 2.0) -> float:
    """Seconds for one MoE dispatch (a combine moves the same bytes back: call it again
    with the combine's bytes_per_elem). IB and NVLink traffic overlap (DeepSeek-V3
    pipelines the NVLink forwarding behind IB), so the slower of the two decides.
    This models DeepEP's kernels, calibrated on its published figures (a hyperbolic
    ramp with EP_HALF_SATURATION_BYTES, no launch floor), not torch.distributed's
    all_to_all: for that, use collective_time("all_to_all", ...)."""
    vol = moe_a2a_bytes(tokens, hidden, top_k, n_experts, ep_size, ranks_per_node, node_limit, bytes_per_elem)
    topo = Topology.from_gpu(gpu, ep_size, ranks_per_node, half_saturation_bytes=EP_HALF_SATURATION_BYTES)
    msg = tokens * hidden * bytes_per_elem
    t_nvlink = _deepep_phase_time(vol.nvlink_bytes, msg, topo.intra_bw, topo.intra_latency, topo)
    t_ib = _deepep_phase_time(vol.ib_bytes, msg, topo.inter_bw, topo.inter_latency, topo)
    return max(t_nvlink, t_ib)

def _deepep_phase_time(wire_bytes: float, msg_bytes: float, bw: float, latency_s: float, topo: Topology) -> float:
    """One DeepEP transfer: the faster of the low-latency protocol and a bulk transfer at the
    hyperbolic ramp's bandwidth (latency + wire / achieved_bandwidth)."""
    if wire_bytes == 0:
        return 0.0
    low_latency = latency_s + wire_bytes / (bw * topo.ll_bw_fraction)
    bulk = latency_s + wire_bytes / achieved_bandwidth(bw, msg_bytes, topo.half_saturation_bytes)
    return min(low_latency, bulk)

def ep_step_bytes(tokens: int, hidden: int, top_k: int, n_experts: int, ep_size: int,
                  n_moe_layers: int, ranks_per_node: int = 8, node_limit: int | None = None,
                  dispatch_bytes_per_elem: float = 1.0, combine_bytes_per_elem: float = 2.0,
                  backward: bool = True) -> MoEA2ABytes:
    """Per-rank EP traffic of a step: dispatch + combine in every MoE layer, and again
    in the backward pass (the backward of a dispatch is a combine and vice versa).
    Defaults follow DeepSeek-V3 sec. 3.3: FP8 dispatch, BF16 combine."""
    _check_int("n_moe_layers", n_moe_layers, lo=0)
    args = (tokens, hidden, top_k, n_experts, ep_size, ranks_per_node, node_limit)
    d = moe_a2a_bytes(*args, bytes_per_elem=dispatch_bytes_per_elem)
    c = moe_a2a_bytes(*args, bytes_per_elem=combine_bytes_per_elem)
    times = n_moe_layers * (2 if backward else 1)
    return MoEA2ABytes(ib_bytes=times * (d.ib_bytes + c.ib_bytes),
                       nvlink_bytes=times * (d.nvlink_bytes + c.nvlink_bytes))

# -----------------------------------------------------------------------------
# communication volume of each parallelism strategy, per training step

@dataclass(frozen=True)
class CommVolume:
    """A collective that recurs `calls` times per step, each on an nbytes per-rank buffer."""
    kind: str
    nbytes: float
    n_ranks: int
    calls: int

    def __post_init__(self):
        _check_kind(self.kind)
        _check_real("nbytes", self.nbytes)
        _check_int("n_ranks", self.n_ranks)
        _check_int("calls", self.calls, lo=0)

    @property
    def total_bytes(self) -> float:
        """Sum of the buffers handed to the collective, bytes."""
        return self.calls * self.nbytes

    @property
    def wire_bytes(self) -> float:
        """Bytes each rank sends per step (bus-bandwidth convention)."""
        return self.total_bytes * bus_bandwidth_factor(self.kind, self.n_ranks)

    def time(self, gpu: "str | GPU" = "H100-SXM", ranks_per_node: int = 8, algorithm: str | None = None) -> float:
        """Seconds per step spent in these calls, none of it overlapped."""
        if self.calls == 0:
            return 0.0
        return self.calls * collective_time(self.kind, self.nbytes, self.n_ranks, gpu, ranks_per_node, algorithm)

def tp_volume(batch: int, seq: int, hidden: int, n_layers: int, tp: int, bytes_per_elem: float = 2.0) -> CommVolume:
    """Megatron tensor parallelism (Shoeybi et al. 2019, fig. 4): per transformer layer,
    2 all-reduces of the b*s*h activations in the forward (after attention and after
    the MLP) and 2 in the backward. batch = sequences this rank processes per step.
    (Sequence parallelism swaps each all-reduce for RS + AG: same bytes.)"""
    b, s, h = _check_int("batch", batch), _check_int("seq", seq), _check_int("hidden", hidden)
    layers = _check_int("n_layers", n_layers, lo=0)
    return CommVolume("all_reduce", b * s * h * _check_real("bytes_per_elem", bytes_per_elem, strict=True),
                      _check_int("tp", tp), calls=4 * layers)

def pp_volume(micro_batch: int, seq: int, hidden: int, n_microbatches: int, bytes_per_elem: float = 2.0) -> CommVolume:
    """Pipeline parallelism, per stage boundary: each micro-batch sends its activations
    forward and their gradients backward (b*s*h each). For stages on different nodes,
    call .time(ranks_per_node=1)."""
    b, s, h = _check_int("micro_batch", micro_batch), _check_int("seq", seq), _check_int("hidden", hidden)
    m = _check_int("n_microbatches", n_microbatches)
    return CommVolume("send_recv", b * s * h * _check_real("bytes_per_elem", bytes_per_elem, strict=True),
                      n_ranks=2, calls=2 * m)

def dp_volumes(n_params: int, dp: int, zero_stage: int = 0, bytes_per_param: float = 2.0) -> tuple[CommVolume, ...]:
    """Data parallelism, per step, after the ZeRO paper (Rajbhandari et al. 2020, sec. 7):
    stage 0: all-reduce the gradients (2*Psi on the wire);
    stages 1-2: reduce-scatter the gradients + all-gather the updated parameters (2*Psi);
    stage 3: all-gather parameters in forward and again in backward, reduce-scatter
    gradients (3*Psi). n_params: parameters this DP group replicates (Psi)."""
    psi = _check_int("n_params", n_params, lo=0) * _check_real("bytes_per_param", bytes_per_param, strict=True)
    n = _check_int("dp", dp)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if zero_stage == 0:
        return (CommVolume("all_reduce", psi, n, 1),)
    if zero_stage in (1, 2):
        return (CommVolume("reduce_scatter", psi, n, 1), CommVolume("all_gather", psi, n, 1))
    return (CommVolume("all_gather", psi, n, 2), CommVolume("reduce_scatter", psi, n, 1))

def zero_comm_bytes(n_params: int, dp: int, zero_stage: int = 0, bytes_per_param: float = 2.0) -> float:
    """Bytes each DP rank sends per step: 2*Psi*(n-1)/n for stages 0-2, 3*Psi*(n-1)/n for stage 3."""
    return sum(v.wire_bytes for v in dp_volumes(n_params, dp, zero_stage, bytes_per_param))

# -----------------------------------------------------------------------------
# pipeline bubbles

def bubble_fraction_1f1b(pp: int, n_microbatches: int) -> float:
    """Idle fraction of a 1F1B pipeline step: (p-1)/(m+p-1)."""
    p, m = _check_int("pp", pp), _check_int("n_microbatches", n_microbatches)
    return (p - 1) / (m + p - 1)

def pipeline_bubble_time(schedule: str, pp: int, f: float, b: float, w: float = 0.0,
                         f_and_b: float | None = None) -> float:
    """Bubble (seconds of idle per rank) from the table in deepseek-ai/DualPipe README.md:
      1F1B      (PP-1)(F+B)
      ZB1P      (PP-1)(F+B-2W)
      DualPipe  (PP/2-1)(F&B+B-3W)
    F: forward chunk, B: full backward chunk, W: its weight-gradient part, F&B: two
    mutually overlapped forward and backward chunks (default F+B: no overlap gain).
    Clipped at 0."""
    if schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule must be one of {PIPELINE_SCHEDULES}, got {schedule!r}")
    p = _check_int("pp", pp)
    f, b, w = _check_real("f", f), _check_real("b", b), _check_real("w", w)
    if w > b:
        raise ValueError(f"w (weight-gradient part of b) must be <= b={b}, got {w}")
    if schedule == "1f1b":
        return (p - 1) * (f + b)
    if schedule == "zb1p":
        return max(0.0, (p - 1) * (f + b - 2 * w))
    if p % 2:
        raise ValueError(f"pp must be even for dualpipe, got {p}")
    fb = f + b if f_and_b is None else _check_real("f_and_b", f_and_b)
    return max(0.0, (p // 2 - 1) * (fb + b - 3 * w))

def pipeline_bubble_fraction(schedule: str, pp: int, n_microbatches: int, f: float = 1.0, b: float = 2.0,
                             w: float = 1.0, f_and_b: float | None = None) -> float:
    """Bubble / (bubble + useful work m*(F+B)). For 1F1B this is (p-1)/(m+p-1).
    DualPipe needs an even number of micro-batches >= 2*pp (assert in dualpipe/dualpipe.py)."""
    p, m = _check_int("pp", pp), _check_int("n_microbatches", n_microbatches)
    if schedule == "dualpipe" and (m % 2 or m < 2 * p):
        raise ValueError(f"n_microbatches must be even and >= 2*pp={2 * pp} for dualpipe, got {m}")
    bubble = pipeline_bubble_time(schedule, pp, f, b, w, f_and_b)
    work = m * (f + b)
    return bubble / (bubble + work) if bubble + work > 0 else 0.0

# -----------------------------------------------------------------------------
# overlap with compute

def exposed_comm_time(comm_s: float, overlappable_compute_s: float) -> float:
    """Seconds of communication left on the critical path when it runs concurrently
    with overlappable_compute_s seconds of independent compute: max(0, comm - compute)."""
    comm = _check_real("comm_s", comm_s)
    return max(0.0, comm - _check_real("overlappable_compute_s", overlappable_compute_s))

def hidden_comm_fraction(comm_s: float, overlappable_compute_s: float) -> float:
    """Fraction of the communication hidden behind compute (1.0 when there is none)."""
    comm = _check_real("comm_s", comm_s)
    if comm == 0:
        return 1.0
    return 1.0 - exposed_comm_time(comm, overlappable_compute_s) / comm
