"""Tests for the communication cost model (dsim/cost/comm/, dsim/cost/pipeline.py)."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsim.cost.comm import (
    ALGORITHMS,
    COLLECTIVE_BW_FACTORS,
    KINDS,
    LAUNCH_OVERHEAD_S,
    MEASURED_BUS_BW,
    NVLINK_CHUNK_OVERHEAD_S,
    NVLINK_PEAK_EFFICIENCY,
    SCALING_BOOK_8XH100_ALL_REDUCE,
    AlphaBeta,
    CommCalibration,
    CommVolume,
    Topology,
    achieved_bandwidth,
    bubble_fraction_1f1b,
    bus_bandwidth,
    bus_bandwidth_factor,
    calibrate_from_measurements,
    collective_time,
    dp_volumes,
    ep_step_bytes,
    expected_nodes_reached,
    exposed_comm_time,
    fit_alpha_beta,
    hidden_comm_fraction,
    load_measurements,
    measured_calibration,
    moe_a2a_bytes,
    moe_dispatch_time,
    pipeline_bubble_fraction,
    pipeline_bubble_time,
    pp_volume,
    time_on_topology,
    tp_volume,
    zero_comm_bytes,
)
from dsim.cost.hardware import get_gpu

GB, MB = 1e9, 1e6
sizes = st.floats(min_value=0, max_value=1e11, allow_nan=False)
ranks = st.sampled_from([2, 3, 4, 8, 16, 32, 64])
kind_algo = st.sampled_from([(k, a) for k in KINDS for a in (None, *ALGORITHMS[k])])

# -----------------------------------------------------------------------------
# collective_time basics


@pytest.mark.parametrize("kind", KINDS)
def test_one_rank_or_empty_buffer_costs_nothing(kind):
    assert collective_time(kind, 1 * GB, 1) == 0.0
    assert collective_time(kind, 0, 16) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    ka=kind_algo,
    n=ranks,
    a=sizes,
    b=sizes,
    gpu=st.sampled_from(["H100-SXM", "H800", "A100", "H100-PCIe"]),
)
def test_monotonic_in_nbytes(ka, n, a, b, gpu):
    kind, algo = ka
    lo, hi = sorted((a, b))
    t_lo = collective_time(kind, lo, n, gpu=gpu, algorithm=algo)
    t_hi = collective_time(kind, hi, n, gpu=gpu, algorithm=algo)
    assert 0 <= t_lo <= t_hi
    assert math.isfinite(t_hi)


def wire_only(topo, **changes):
    """The same topology without the launch floor and with one bandwidth for every collective."""
    return dataclasses.replace(
        topo, launch_overhead=0.0, kind_bw_factors=(1.0,) * len(KINDS), **changes
    )


@settings(max_examples=100, deadline=None)
@given(
    nbytes=st.floats(min_value=1, max_value=1e11),
    n=ranks,
    algo=st.sampled_from(["ring", "hierarchical"]),
)
def test_all_reduce_is_reduce_scatter_plus_all_gather_on_the_wire(nbytes, n, algo):
    # T_LL and T_bulk are both homogeneous in (bytes, steps): two passes cost twice one pass.
    topo = wire_only(Topology.from_gpu("H100-SXM", n))
    ar = time_on_topology(topo, "all_reduce", nbytes, algo)
    rs = time_on_topology(topo, "reduce_scatter", nbytes, algo)
    ag = time_on_topology(topo, "all_gather", nbytes, algo)
    assert ar == pytest.approx(rs + ag, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(nbytes=st.floats(min_value=1, max_value=1e11), n=ranks)
def test_one_all_reduce_call_beats_reduce_scatter_then_all_gather(nbytes, n):
    # Measured on 2 x H200: the fused call has one launch floor and more bus bandwidth.
    ar = collective_time("all_reduce", nbytes, n)
    assert ar <= collective_time("reduce_scatter", nbytes, n) + collective_time(
        "all_gather", nbytes, n
    )


def test_default_picks_fastest_algorithm():
    for n in (8, 64):
        for s in (1e3, 1e9):
            best = min(
                collective_time("all_reduce", s, n, algorithm=a) for a in ALGORITHMS["all_reduce"]
            )
            assert collective_time("all_reduce", s, n) == best


def busbw_8xh100(nbytes, topo=None):
    topo = topo or Topology.from_gpu("H100-SXM", 8)
    return bus_bandwidth("all_reduce", nbytes, 8, time_on_topology(topo, "all_reduce", nbytes))


def test_8xh100_all_reduce_against_the_scaling_book():
    (big, bw_big), (mid, bw_mid) = SCALING_BOOK_8XH100_ALL_REDUCE
    # ~370 GB/s with ~10 GB arrays: within 10% (the measured H200 efficiency is
    # the same as the book's).
    assert busbw_8xh100(big) == pytest.approx(bw_big, rel=0.10)
    assert NVLINK_PEAK_EFFICIENCY == pytest.approx(370 / 450, rel=0.02)
    # ~150 GB/s at 58 MB: a known gap. Calibrated on 2 x H200 the model is optimistic there,
    # by at most 30% (about 184 GB/s when this was written).
    assert bw_mid < busbw_8xh100(mid) < 1.30 * bw_mid
    assert busbw_8xh100(16 * MB) < 0.6 * bw_big
    assert busbw_8xh100(1 * MB) < busbw_8xh100(16 * MB) < busbw_8xh100(mid) < busbw_8xh100(big)


def test_same_form_fits_the_scaling_book_with_a_larger_chunk_overhead():
    # The functional form can fit the 8xH100 anchors, but only with a per-step overhead about twice
    # the one measured on 2 x H200: one parameter set cannot fit both machines.
    (big, bw_big), (mid, bw_mid) = SCALING_BOOK_8XH100_ALL_REDUCE
    base = Topology.from_gpu("H100-SXM", 8)
    lo, hi = NVLINK_CHUNK_OVERHEAD_S, 100 * NVLINK_CHUNK_OVERHEAD_S
    for _ in range(60):  # bisection: busbw(58 MB) falls as the overhead grows
        c = (lo + hi) / 2
        lo, hi = (
            (c, hi)
            if busbw_8xh100(mid, dataclasses.replace(base, intra_chunk_overhead=c)) > bw_mid
            else (lo, c)
        )
    fitted = dataclasses.replace(base, intra_chunk_overhead=lo)
    assert busbw_8xh100(mid, fitted) == pytest.approx(bw_mid, rel=1e-6)
    assert busbw_8xh100(big, fitted) == pytest.approx(bw_big, rel=0.10)
    assert 1.5 < lo / NVLINK_CHUNK_OVERHEAD_S < 2.5


def test_bus_bandwidth_conventions():
    # nccl-tests doc/PERFORMANCE.md
    assert bus_bandwidth("all_reduce", 8.0, 8, 1.0) == pytest.approx(8 * 2 * 7 / 8)
    for kind in ("all_gather", "reduce_scatter", "all_to_all"):
        assert bus_bandwidth(kind, 8.0, 8, 1.0) == pytest.approx(7.0)
    assert bus_bandwidth("send_recv", 8.0, 8, 1.0) == 8.0


def test_large_message_ring_is_the_pipelined_bulk_formula():
    topo = Topology.from_gpu("H100-SXM", 8)
    bw = topo.intra_bw * topo.bw_factor("reduce_scatter")
    assert bw == pytest.approx(
        370 * GB * MEASURED_BUS_BW["reduce_scatter"] / MEASURED_BUS_BW["all_reduce"], rel=0.02
    )
    for s in (64 * MB, 1 * GB, 100 * GB):
        wire = s * 7 / 8
        expected = (math.sqrt(wire / bw) + math.sqrt(7 * NVLINK_CHUNK_OVERHEAD_S)) ** 2
        assert collective_time("reduce_scatter", s, 8, algorithm="ring") == pytest.approx(
            expected, rel=1e-12
        )
    # huge messages approach the link bandwidth, slowly (the sqrt term)
    busbw = [
        bus_bandwidth("reduce_scatter", s, 8, collective_time("reduce_scatter", s, 8))
        for s in (1e8, 1e9, 1e10, 1e11)
    ]
    assert (
        busbw == sorted(busbw) and busbw[-1] == pytest.approx(bw, rel=0.02) and busbw[0] < 0.8 * bw
    )


def test_half_saturation_size_grows_with_n():
    # T_bulk reaches half the bandwidth at wire = steps * c * B / (sqrt(2) - 1)^2; for
    # a ring all-reduce steps / (wire per byte) = n, so the half-saturation message
    # size is proportional to n.
    def half_size(n):
        topo = wire_only(Topology.from_gpu("H100-SXM", n))
        lo, hi = 1.0, 1e12
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            t = time_on_topology(topo, "all_reduce", mid, "ring")
            lo, hi = (
                (mid, hi)
                if bus_bandwidth("all_reduce", mid, n, t) < topo.intra_bw / 2
                else (lo, mid)
            )
        return lo, topo.intra_bw

    for n in (2, 4, 8):
        s, bw = half_size(n)
        assert s == pytest.approx(
            n * NVLINK_CHUNK_OVERHEAD_S * bw / (math.sqrt(2) - 1) ** 2, rel=1e-6
        )
    assert half_size(8)[0] == pytest.approx(4 * half_size(2)[0], rel=1e-6)


def test_hierarchical_slower_across_nodes_than_within():
    for s in (1 * MB, 64 * MB, 1 * GB):
        within = collective_time("all_reduce", s, 8)
        across = collective_time("all_reduce", s, 16)
        assert across > within
        assert collective_time("all_reduce", s, 64) >= across


def test_hierarchical_beats_flat_ring_across_nodes():
    s = 1 * GB
    assert collective_time("all_reduce", s, 32, algorithm="hierarchical") < collective_time(
        "all_reduce", s, 32, algorithm="ring"
    )
    # one node: hierarchical degenerates to the ring
    assert collective_time("all_reduce", s, 8, algorithm="hierarchical") == collective_time(
        "all_reduce", s, 8, algorithm="ring"
    )


def test_tree_wins_small_ring_wins_large():
    assert collective_time("all_reduce", 1e3, 64, algorithm="tree") < collective_time(
        "all_reduce", 1e3, 64, algorithm="ring"
    )
    assert collective_time("all_reduce", 10 * GB, 8, algorithm="ring") < collective_time(
        "all_reduce", 10 * GB, 8, algorithm="tree"
    )
    topo = dataclasses.replace(Topology.from_gpu("H100-SXM", 64), launch_overhead=0.0)
    assert time_on_topology(topo, "all_reduce", 1e3, "tree") < time_on_topology(
        topo, "all_reduce", 1e3, "hierarchical"
    )


def test_all_to_all_across_nodes_is_ib_bound():
    # scaling-book: a 2-node all-to-all is several times slower than a 1-node one.
    s = 1 * GB
    assert collective_time("all_to_all", s, 16) > 3 * collective_time("all_to_all", s, 8)


def test_send_recv_cross_node_slower():
    s = 100 * MB
    assert collective_time("send_recv", s, 2, ranks_per_node=1) > collective_time("send_recv", s, 2)


def test_faster_gpu_links_are_faster():
    s = 1 * GB
    assert collective_time("all_reduce", s, 8, gpu="H100-SXM") < collective_time(
        "all_reduce", s, 8, gpu="A100"
    )
    assert collective_time("all_reduce", s, 8, gpu="H100-SXM") < collective_time(
        "all_reduce", s, 8, gpu="H800"
    )
    assert collective_time("all_reduce", s, 8, gpu="H100-PCIe") > collective_time(
        "all_reduce", s, 8, gpu="H100-SXM"
    )


def test_topology_from_gpu():
    h100 = Topology.from_gpu("H100-SXM", 16)
    assert h100.n_nodes == 2 and h100.local_ranks == 8
    assert h100.intra_bw == pytest.approx(MEASURED_BUS_BW["all_reduce"])  # same NVLink as the H200
    assert h100.intra_bw == pytest.approx(370 * GB, rel=0.02)  # the scaling-book's figure
    assert h100.bw_factor("all_reduce") == 1.0
    assert h100.bw_factor("send_recv") == h100.bw_factor("all_to_all") < 1.0
    assert h100.launch("send_recv") == LAUNCH_OVERHEAD_S["all_to_all"]
    assert h100.inter_bw == pytest.approx(43 * GB)
    h800 = Topology.from_gpu("H800", 16)  # measured: used as is
    assert h800.intra_bw == 160 * GB and h800.inter_bw == 50 * GB
    assert Topology.from_gpu("H100-PCIe", 2).intra_bw > Topology.from_gpu("H100-PCIe", 8).intra_bw
    assert Topology.from_gpu("H100-SXM", 4).n_nodes == 1


def test_time_on_custom_topology():
    topo = Topology(
        n_ranks=4,
        ranks_per_node=4,
        intra_bw=100 * GB,
        inter_bw=10 * GB,
        intra_latency=0.0,
        inter_latency=0.0,
        intra_chunk_overhead=0.0,
        inter_chunk_overhead=0.0,
        launch_overhead=0.0,
    )
    # pure bandwidth: ring AR of S bytes sends 2*(n-1)/n*S per rank
    assert time_on_topology(topo, "all_reduce", 4 * GB, "ring") == pytest.approx(
        2 * 3 / 4 * 4 * GB / (100 * GB)
    )
    # the older hyperbolic ramp, on request: S_half = S halves the bandwidth
    ramp = dataclasses.replace(topo, half_saturation_bytes=4 * GB)
    assert time_on_topology(ramp, "all_reduce", 4 * GB, "ring") == pytest.approx(
        2 * 2 * 3 / 4 * 4 * GB / (100 * GB)
    )
    assert achieved_bandwidth(100 * GB, 1 * GB, 0.0) == 100 * GB


def test_launch_floor():
    # tiny collectives cost the measured floor of one call, whatever the
    # size below a few hundred KiB
    for kind in KINDS:
        floor = LAUNCH_OVERHEAD_S["all_to_all" if kind == "send_recv" else kind]
        assert collective_time(kind, 1024, 2, gpu="H200", ranks_per_node=2) == floor
        assert collective_time(kind, 64 * 1024, 2, gpu="H200", ranks_per_node=2) == floor
        assert 10e-6 < floor < 100e-6
    # and only a floor: large messages are not slowed by it
    topo = Topology.from_gpu("H200", 2, 2)
    wire = time_on_topology(dataclasses.replace(topo, launch_overhead=0.0), "all_reduce", GB)
    assert time_on_topology(topo, "all_reduce", GB) == wire
    assert time_on_topology(dataclasses.replace(topo, launch_overhead=1.0), "all_reduce", GB) == 1.0


def test_launch_floor_is_a_max_not_a_sum():
    # Measured on 2 x H200: from the flat floor to 8 and 16 MiB the all-reduce time grows by less
    # than the bytes would take even at the datasheet NVLink peak, so an additive launch term cannot
    # fit; a floor overlapped with the transfer (the next call is issued while this one runs) can.
    c = load_measurements()["collectives"]["all_reduce"]
    s, t = np.array(c["sizes_bytes"]), np.array(c["time_s"])
    floor = np.median(t[s <= 2**20])
    peak = get_gpu("H200").nvlink_bw
    for size in (2**23, 2**24):
        measured = t[s == size][0]
        assert measured - floor < size * bus_bandwidth_factor("all_reduce", 2) / peak
        assert collective_time(
            "all_reduce", size, 2, gpu="H200", ranks_per_node=2
        ) == pytest.approx(measured, rel=0.20)


def test_bad_topology_arguments():
    ok = dict(n_ranks=4, ranks_per_node=4, intra_bw=1.0, inter_bw=1.0)
    for bad, name in [
        (dict(kind_bw_factors=(1.0,)), "kind_bw_factors"),
        (dict(kind_bw_factors=(1.0, 1.0, 0.0, 1.0, 1.0)), "kind_bw_factors"),
        (dict(launch_overhead=-1.0), "launch_overhead"),
        (dict(intra_chunk_overhead=float("nan")), "intra_chunk_overhead"),
        (dict(inter_chunk_overhead=-1e-6), "inter_chunk_overhead"),
    ]:
        with pytest.raises(ValueError, match=name):
            Topology(**ok, **bad)
    with pytest.raises(ValueError, match="kind"):
        Topology(**ok).launch("broadcast")


def test_bad_arguments_elsewhere():
    with pytest.raises(ValueError, match="n_activated_experts"):
        expected_nodes_reached(0, 8, 32)
    with pytest.raises(ValueError, match="n_activated_experts"):
        expected_nodes_reached(300, 8, 32)
    with pytest.raises(ValueError, match="node_limit"):
        expected_nodes_reached(8, 8, 1, node_limit=4)
    with pytest.raises(ValueError, match="ep=4 must divide n_routed_experts=10"):
        moe_a2a_bytes(10, 16, 2, 10, 4)
    with pytest.raises(ValueError, match="zero_stage"):
        dp_volumes(1000, 8, zero_stage=4)
    with pytest.raises(ValueError, match="schedule"):
        pipeline_bubble_time("gpipe", 4, 1, 2)
    with pytest.raises(ValueError, match="pp"):
        pipeline_bubble_time("dualpipe", 5, 1, 2, 1)
    with pytest.raises(ValueError, match="n_microbatches"):
        pipeline_bubble_fraction("dualpipe", 8, 10)
    with pytest.raises(ValueError, match="w "):
        pipeline_bubble_time("zb1p", 4, 1, 2, 3)
    with pytest.raises(ValueError, match="comm_s"):
        exposed_comm_time(-1, 0)


# -----------------------------------------------------------------------------
# fitting


def test_fit_alpha_beta_recovers_parameters():
    s = np.logspace(3, 9, 20)
    t = 20e-6 + s / 300e9
    fit = fit_alpha_beta(s, t)
    assert fit.alpha == pytest.approx(20e-6, rel=1e-6)
    assert fit.bandwidth == pytest.approx(300e9, rel=1e-6)
    assert fit.half_saturation_bytes == pytest.approx(20e-6 * 300e9, rel=1e-6)
    assert fit(1e6) == pytest.approx(20e-6 + 1e6 / 300e9)
    rng = np.random.default_rng(0)
    noisy = fit_alpha_beta(s, t * rng.normal(1, 0.02, s.size), relative=False)
    assert noisy.bandwidth == pytest.approx(300e9, rel=0.05)


def test_fit_alpha_beta_on_model_curve_and_errors():
    s = np.logspace(8, 10, 10)
    fit = fit_alpha_beta(s, [collective_time("all_gather", x, 8) for x in s])
    assert isinstance(fit, AlphaBeta) and fit.bandwidth > 0
    with pytest.raises(ValueError, match="same length"):
        fit_alpha_beta([1, 2], [1.0])
    with pytest.raises(ValueError, match="times"):
        fit_alpha_beta([1, 2], [1.0, -1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_alpha_beta([5, 5], [1.0, 2.0])


# -----------------------------------------------------------------------------
# calibration on the committed NCCL measurements (dsim/data/comm_nccl_h200x2.json, 2 x H200)


def nccl_errors(min_bytes=64 * 1024):
    """{kind: (sizes, times, model/measured - 1)} for the committed sweep, sizes >= min_bytes."""
    run = load_measurements()
    out = {}
    for kind, c in run["collectives"].items():
        s, t = np.array(c["sizes_bytes"], float), np.array(c["time_s"])
        m = np.array(
            [
                collective_time(
                    kind,
                    x,
                    run["world_size"],
                    gpu=run["gpu_model"],
                    ranks_per_node=run["ranks_per_node"],
                )
                for x in s
            ]
        )
        keep = s >= min_bytes
        out[kind] = (s[keep], t[keep], (m / t - 1)[keep])
    return out


def _one_sig3_step(value: float) -> float:
    """The step at `value` of the 3-significant-digit grid calibrate_from_measurements searches."""
    return 10.0 ** (math.floor(math.log10(abs(value))) - 2)


def test_committed_constants_equal_the_fit():
    # The fit is a grid search whose losses are sums of logs: a machine whose libm rounds a log
    # differently may pick the neighbouring grid value where two losses nearly tie. So each
    # committed constant must equal the refit to within one step of its 3-significant-digit grid
    # (at most 1 % relative), not bit for bit.
    cal = calibrate_from_measurements(load_measurements())
    assert cal.gpu == "H200" and cal.n_ranks == 2
    assert set(cal.launch_overhead_s) == set(LAUNCH_OVERHEAD_S) == set(MEASURED_BUS_BW)
    assert set(cal.bus_bw) == set(MEASURED_BUS_BW)
    pairs = [("chunk overhead", NVLINK_CHUNK_OVERHEAD_S, cal.chunk_overhead_s)]
    pairs += [(f"launch {k}", v, cal.launch_overhead_s[k]) for k, v in LAUNCH_OVERHEAD_S.items()]
    pairs += [(f"bus bw {k}", v, cal.bus_bw[k]) for k, v in MEASURED_BUS_BW.items()]
    for name, committed, refit in pairs:
        assert abs(committed - refit) <= 1.001 * _one_sig3_step(refit), (name, committed, refit)
    assert NVLINK_PEAK_EFFICIENCY == pytest.approx(cal.peak_efficiency, rel=0.011)
    ratios = tuple(MEASURED_BUS_BW[k] / MEASURED_BUS_BW["all_reduce"] for k in KINDS[:4])
    assert COLLECTIVE_BW_FACTORS[:4] == ratios
    assert measured_calibration() == cal  # deterministic on one machine


def test_model_is_the_fitted_formula_on_the_measured_machine():
    # The committed constants (not a refit, which may sit one grid step away on another machine).
    committed = CommCalibration(
        "H200", 2, LAUNCH_OVERHEAD_S, NVLINK_CHUNK_OVERHEAD_S, MEASURED_BUS_BW, 0.0
    )
    for kind in committed.bus_bw:
        for s in np.logspace(3, 10, 29):
            t = collective_time(kind, s, 2, gpu="H200", ranks_per_node=2)
            assert t == pytest.approx(committed.predict(kind, s), rel=1e-12)


def test_model_against_nccl_measurements():
    errs = nccl_errors()
    every = np.abs(np.concatenate([e for _, _, e in errs.values()]))
    assert every.size == 4 * 15
    assert np.median(every) <= 0.05  # was 0.67 before the measurements
    assert np.percentile(every, 90) <= 0.35
    assert every.max() <= 0.75  # the spikes below
    for kind, (_, _, e) in errs.items():
        assert np.median(np.abs(e)) <= 0.10, kind
        assert np.abs(e[-4:]).max() <= 0.10, kind  # 128 MiB .. 1 GiB


def test_worst_errors_are_measurement_spikes():
    # Every point the model misses by more than half is slower than the next larger message:
    # a spike that no model monotone in the size can follow.
    n_spikes = 0
    for kind, (s, t, e) in nccl_errors(min_bytes=0).items():
        for i in np.flatnonzero(np.abs(e) > 0.5):
            assert i + 1 < len(t) and t[i] > 1.5 * t[i + 1], (kind, s[i])
            n_spikes += 1
    assert 1 <= n_spikes <= 6


def test_calibration_recovers_a_synthetic_machine():
    # 4 ranks, known constants on 3-significant-digit values: the fit finds them again.
    launch = {"all_reduce": 25.0e-6, "all_gather": 18.0e-6, "all_to_all": 30.0e-6}
    bw = {"all_reduce": 200e9, "all_gather": 150e9, "all_to_all": 120e9}
    truth = CommCalibration("H100-SXM", 4, launch, 2.5e-6, bw, 0.0)
    rows = [(k, s, truth.predict(k, s)) for k in launch for s in 2.0 ** np.arange(10, 31)]
    cal = calibrate_from_measurements(rows, n_ranks=4, gpu="H100-SXM")
    assert cal.chunk_overhead_s == pytest.approx(2.5e-6, rel=0.02)
    for k in launch:
        assert cal.launch_overhead_s[k] == pytest.approx(launch[k], rel=0.01)
        assert cal.bus_bw[k] == pytest.approx(bw[k], rel=0.02)
    assert cal.mean_abs_log_error < 0.01


def test_calibration_errors():
    rows = [("all_reduce", 2.0**i, 1e-5 + 2.0**i / 1e11) for i in range(10, 20)]
    with pytest.raises(ValueError, match="gpu"):
        calibrate_from_measurements(rows, n_ranks=2)
    with pytest.raises(ValueError, match="n_ranks"):
        calibrate_from_measurements(rows, n_ranks=1, gpu="H200")
    with pytest.raises(ValueError, match="kind"):
        calibrate_from_measurements([("broadcast", 1024, 1e-5)] * 3, n_ranks=2, gpu="H200")
    with pytest.raises(ValueError, match=">= 3"):
        calibrate_from_measurements(rows[:2], n_ranks=2, gpu="H200")
    with pytest.raises(ValueError, match="> 0"):
        calibrate_from_measurements(rows + [("all_reduce", 1024, -1.0)], n_ranks=2, gpu="H200")
    run = dict(load_measurements(), ranks_per_node=1)
    with pytest.raises(ValueError, match="ranks_per_node"):
        calibrate_from_measurements(run)
    with pytest.raises(ValueError, match="collectives"):
        calibrate_from_measurements({"world_size": 2})
    with pytest.raises(ValueError, match="name"):
        load_measurements("no_such_file.json")


# -----------------------------------------------------------------------------
# MoE routing and dispatch


def monte_carlo_nodes(top_k, n_nodes, experts_per_node, node_limit=None, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    E = n_nodes * experts_per_node
    experts = np.argpartition(rng.random((n, E)), top_k - 1, axis=1)[
        :, :top_k
    ]  # k distinct experts
    nodes = np.sort(experts // experts_per_node, axis=1)
    distinct = 1 + (np.diff(nodes, axis=1) != 0).sum(axis=1)
    if node_limit is not None:
        distinct = np.minimum(distinct, node_limit)
    return distinct.mean()


@pytest.mark.parametrize(
    "k,n_nodes,e,limit",
    [
        (8, 8, 32, None),
        (8, 8, 32, 4),
        (6, 4, 16, None),
        (6, 16, 4, 3),
        (2, 8, 8, None),
        (8, 32, 8, 4),
    ],
)
def test_expected_nodes_reached_matches_monte_carlo(k, n_nodes, e, limit):
    exact = expected_nodes_reached(k, n_nodes, e, node_limit=limit)
    assert exact == pytest.approx(monte_carlo_nodes(k, n_nodes, e, limit), rel=0.02)


def test_expected_nodes_reached_edge_cases():
    assert expected_nodes_reached(1, 8, 32) == pytest.approx(1.0)
    assert expected_nodes_reached(8, 1, 32) == pytest.approx(1.0)
    assert expected_nodes_reached(8, 8, 1) == pytest.approx(8.0)  # every node is hit
    v3 = expected_nodes_reached(8, 8, 32)
    assert v3 == pytest.approx(8 * (1 - math.comb(224, 8) / math.comb(256, 8)))
    capped = expected_nodes_reached(8, 8, 32, node_limit=4)
    assert 3.9 < capped <= 4 < v3
    assert expected_nodes_reached(8, 8, 32, node_limit=8) == v3


def test_moe_a2a_bytes():
    keywords = dict(
        tokens=4096, dim=7168, n_activated_experts=8, n_routed_experts=256, ep=64, node_limit=4
    )
    assert moe_a2a_bytes(**keywords) == moe_a2a_bytes(4096, 7168, 8, 256, 64, node_limit=4)
    single = moe_a2a_bytes(4096, 7168, 8, 256, 8)
    assert single.ib_bytes == 0 and single.nvlink_bytes > 0
    free = moe_a2a_bytes(4096, 7168, 8, 256, 64)
    limited = moe_a2a_bytes(4096, 7168, 8, 256, 64, node_limit=4)
    assert limited.ib_bytes < free.ib_bytes
    assert limited.nvlink_bytes == free.nvlink_bytes
    # FP8 dispatch moves half the bytes of BF16
    fp8 = moe_a2a_bytes(4096, 7168, 8, 256, 64, node_limit=4, bytes_per_elem=1)
    assert fp8.total == pytest.approx(limited.total / 2)


def test_moe_dispatch_time():
    assert moe_dispatch_time(4096, 7168, 8, 256, 1) == 0.0
    t_node = moe_dispatch_time(4096, 7168, 8, 256, 8, gpu="H800", bytes_per_elem=1)
    t_v3 = moe_dispatch_time(4096, 7168, 8, 256, 64, gpu="H800", node_limit=4, bytes_per_elem=1)
    t_free = moe_dispatch_time(4096, 7168, 8, 256, 64, gpu="H800", bytes_per_elem=1)
    assert t_node < t_v3 < t_free
    # DeepEP docs/legacy.md: EP64 internode dispatch at ~50 GB/s RDMA; ~100 MB -> ~2 ms
    assert 1e-3 < t_v3 < 4e-3
    assert moe_dispatch_time(1024, 7168, 8, 256, 64) < moe_dispatch_time(4096, 7168, 8, 256, 64)


def test_ep_step_bytes():
    one = moe_a2a_bytes(4096, 7168, 8, 256, 64, node_limit=4, bytes_per_elem=1)
    two = moe_a2a_bytes(4096, 7168, 8, 256, 64, node_limit=4, bytes_per_elem=2)
    step = ep_step_bytes(4096, 7168, 8, 256, 64, n_moe_layers=58, node_limit=4)
    assert step.ib_bytes == pytest.approx(58 * 2 * (one.ib_bytes + two.ib_bytes))
    fwd = ep_step_bytes(4096, 7168, 8, 256, 64, n_moe_layers=58, node_limit=4, backward=False)
    assert fwd.total == pytest.approx(step.total / 2)


# -----------------------------------------------------------------------------
# volumes per strategy


def test_tp_volume():
    v = tp_volume(batch=4, seq_len=2048, dim=4096, n_layers=32, tp=8)
    assert v.kind == "all_reduce" and v.calls == 4 * 32
    assert v.nbytes == 4 * 2048 * 4096 * 2
    assert v.wire_bytes == pytest.approx(v.calls * v.nbytes * 2 * 7 / 8)
    assert v.time() == pytest.approx(v.calls * collective_time("all_reduce", v.nbytes, 8))


def test_pp_volume():
    v = pp_volume(micro_batch=1, seq_len=4096, dim=7168, n_microbatches=16)
    assert v.kind == "send_recv" and v.calls == 32 and v.nbytes == 4096 * 7168 * 2
    assert v.time(ranks_per_node=1) > v.time()


@pytest.mark.parametrize("dp", [2, 8, 64])
def test_zero_volumes(dp):
    psi, b = 10**9, 2
    base = zero_comm_bytes(psi, dp, 0, b)
    assert base == pytest.approx(2 * psi * b * (dp - 1) / dp)  # ZeRO paper: 2 Psi
    assert zero_comm_bytes(psi, dp, 1, b) == pytest.approx(base)
    assert zero_comm_bytes(psi, dp, 2, b) == pytest.approx(base)
    assert zero_comm_bytes(psi, dp, 3, b) == pytest.approx(1.5 * base)  # 3 Psi
    assert [v.kind for v in dp_volumes(psi, dp, 3)] == ["all_gather", "reduce_scatter"]
    assert sum(v.calls for v in dp_volumes(psi, dp, 3)) == 3


def test_comm_volume_validation():
    with pytest.raises(ValueError, match="kind"):
        CommVolume("gather", 1.0, 8, 1)
    assert CommVolume("all_reduce", 1.0, 8, 0).time() == 0.0


# -----------------------------------------------------------------------------
# pipeline bubbles


def test_bubble_fraction_1f1b_small_cases():
    assert bubble_fraction_1f1b(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction_1f1b(1, 8) == 0.0
    assert bubble_fraction_1f1b(8, 1) == pytest.approx(7 / 8)


def test_bubble_times_dualpipe_readme_table():
    # pp=8, F=1, B=2, W=1 by hand: 1F1B 7*3=21, ZB1P 7*(3-2)=7, DualPipe 3*(3+2-3)=6
    assert pipeline_bubble_time("1f1b", 8, 1, 2, 1) == 21
    assert pipeline_bubble_time("zb1p", 8, 1, 2, 1) == 7
    assert pipeline_bubble_time("dualpipe", 8, 1, 2, 1) == 6
    assert pipeline_bubble_time("dualpipe", 8, 1, 2, 1, f_and_b=2.5) == pytest.approx(3 * 1.5)
    assert pipeline_bubble_time("dualpipe", 2, 1, 2, 1) == 0
    assert pipeline_bubble_fraction("dualpipe", 8, 16, 1, 2, 1) == pytest.approx(6 / (6 + 48))


@given(p=st.integers(1, 64), m=st.integers(1, 512), f=st.floats(0.01, 10), b=st.floats(0.01, 10))
def test_bubble_fraction_1f1b_independent_of_chunk_times(p, m, f, b):
    assert pipeline_bubble_fraction("1f1b", p, m, f, b, 0) == pytest.approx(
        bubble_fraction_1f1b(p, m)
    )


def test_dualpipe_beats_1f1b():
    for pp in (4, 8, 16):
        m = 2 * pp
        assert pipeline_bubble_fraction("dualpipe", pp, m) < pipeline_bubble_fraction("1f1b", pp, m)


# -----------------------------------------------------------------------------
# overlap


def test_overlap():
    assert exposed_comm_time(3.0, 2.0) == 1.0
    assert exposed_comm_time(1.0, 2.0) == 0.0
    assert hidden_comm_fraction(4.0, 1.0) == pytest.approx(0.25)
    assert hidden_comm_fraction(4.0, 10.0) == 1.0
    assert hidden_comm_fraction(0.0, 0.0) == 1.0
