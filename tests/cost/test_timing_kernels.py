"""Tests of the time model's parts: named-tensor kernels, the dtype table, the constants' count."""

from __future__ import annotations

import pytest

from dsim.cost.hardware import get_gpu
from dsim.cost.timing import Calibration, KernelModel, gpu_calibration, op_kernels, op_time
from dsim.cost.timing.fit import FIT_STAGES, fit_constants

T, D, I, E, K = 1000, 2048, 1408, 64, 6
N = T * K
MOE = dict(tokens=T, dim=D, moe_inter_dim=I, n_routed_experts=E, n_activated_experts=K)


def _by_name(kernels):
    return {k.name: k for k in kernels}


def test_io_kernel_moves_the_bytes_of_its_named_tensors():
    x = KernelModel(get_gpu("H100-SXM"), Calibration(), "bf16")
    read, write = {"a fp32 [T,E]": 4.0 * 512 * 64}, {"b fp32 [T,E]": 4.0 * 512 * 64, "c [E]": 256}
    k = x.io("k", read=read, write=write)
    assert k.bytes == sum(read.values()) + sum(write.values())
    assert k.reads == read and k.writes == write
    written = sum(write.values())
    assert k.time_s == x.mem("k", k.bytes, write=written).time_s
    assert x.io("k", read, write, l2_writes=False).time_s == x.mem("k", k.bytes).time_s
    only_c = x.io("k", read, write, l2_writes=("c [E]",)).time_s
    assert only_c == x.mem("k", k.bytes, write=256).time_s
    with pytest.raises(KeyError):
        x.io("k", read, write, l2_writes=("not written",))


@pytest.mark.parametrize("backward", [False, True])
def test_moe_memory_kernels_name_their_tensors(backward):
    for k in op_kernels("moe_ffn", backward=backward, **MOE):
        if k.kind in ("mem", "strided", "reduce", "topk"):
            assert k.reads or k.writes, k.name
            assert k.bytes == sum(k.reads.values()) + sum(k.writes.values()), k.name


def test_gate_and_moe_kernels_keep_the_traced_byte_counts():
    """The multipliers transcribed from eager traces (before the kernels named their tensors)."""
    ks = _by_name(op_kernels("moe_ffn", backward=True, **MOE))
    expected = {
        "gate.x.float()": (6.0 * T * D, 1),
        "gate.softmax": (8.0 * T * E, 1),
        "gate.scores + bias": (8.0 * T * E + 4 * E, 1),
        "gate.topk (select, sort the k)": (4.0 * T * E + 12.0 * T * K, 2),
        "gate.renormalise (sum, divide)": (20.0 * T * K, 2),
        "gate.d(weights to bf16, x route_scale, renormalise)": (4.0 * T * K * 9, 9),
        "gate.d gather (zeros + scatter_add)": (4.0 * T * E + 16.0 * T * K, 2),
        "gate.dW, dx to bf16": (6.0 * E * D + 6.0 * T * D, 2),
        "experts.inverse[order] = arange": (32.0 * N, 2),
        "experts.counts (zeros, ones, scatter_add)": (24.0 * N + 8 * E, 3),
        "experts.offsets = cumsum(counts) (x3)": (48.0 * E, 9),
        "experts.ys * weights": (4.0 * N * D + 2.0 * N, 1),
        "experts.d silu(h1)*h3 (two products)": (12.0 * N * I, 2),
        "dx = dx_experts + dx_gate": (6.0 * T * D, 1),
    }
    for name, (nbytes, count) in expected.items():
        assert (ks[name].bytes, ks[name].count) == (nbytes, count), name
    assert "dx bf16 [T,D]" in ks["gate.dW, dx to bf16"].writes


def test_dtypes_come_from_the_one_table_and_unmodelled_ones_are_refused():
    shape = dict(m=512, n=512, k=512)
    assert op_time("gemm", dtype="bfloat16", **shape) == op_time("gemm", dtype="bf16", **shape)
    assert op_time("gemm", dtype="float8", **shape) == op_time("gemm", dtype="fp8", **shape)
    for bad in ("int4", "fp64", None):
        with pytest.raises(ValueError, match="dtype must be one of bf16, fp16, fp32"):
            op_time("gemm", dtype=bad, **shape)


def test_every_constant_belongs_to_a_fit_stage():
    names = Calibration().constants()
    assert len(names) == len(set(names))
    assert set(names) == set(fit_constants())
    assert "attn_eff.cudnn_fwd_mha_causal" in names and "launch_s" in names
    assert len(names) == len(fit_constants())


@pytest.mark.parametrize("gpu", ["H100-SXM", "H200"])
def test_fitted_constants_are_what_the_fit_diagnostics_list(gpu):
    cal = gpu_calibration(gpu)
    fitted = cal.fitted_constants()
    assert 0 < len(fitted) < len(cal.constants())
    assert set(fitted) <= set(cal.constants())
    stages = {s[0] for s in FIT_STAGES}
    assert set(cal.fit) <= stages
    assert Calibration().fitted_constants() == ()
