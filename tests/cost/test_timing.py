"""Tests of the time model (dsim.cost.timing) and of its agreement with the
committed GPU measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import dsim.model as M
from dsim.config import ModelArgs, preset, scaled_down
from dsim.cost.flops import flops
from dsim.cost.timing import (
    FIT_STAGES,
    OPS,
    Calibration,
    error_summary,
    expert_load,
    fit_calibration,
    gpu_calibration,
    layer_time,
    op_kernels,
    op_time,
    predict_record,
    roofline_time,
    step_plan,
    step_time,
    validate,
)

DATA = Path(__file__).resolve().parents[2] / "dsim" / "data"
# Targets per op kind on the validation split: (median, worst) relative error. gemm:fp32 is the MoE
# router's SGEMM, measured for the gate's sake; cuBLAS's SGEMM kernel choice is not modelled closely
# (stated thresholds). The target is (10 %, 25 %) for every op kind. What the model reaches
# on the held-out H100 and H200 shapes (dsim/data/timing_validation_*.json) meets it for bf16 GEMMs
# and attention; the bounds below are the honest ones this test locks in, so that a change that
# makes the model worse fails CI:
#   moe_ffn     worst 31 % (H100): MoE layers with ~256 tokens per expert, where the
#               weight-gradient grouped GEMMs are bound by writing output tiles, a cost the kernel
#               model only approximates;
#   rmsnorm, elementwise  worst 26-28 % (H100): small non-power-of-two sizes and dtype casts;
#   gate        median 25 % / worst 42 % (H100): a chain of ~10 tiny kernels (fp32 router GEMM of
#               1-128 rows, softmax/sigmoid, top-k, gathers) whose launch latencies vary from run
#               to run.
TARGETS = {
    "gemm:bf16": (0.10, 0.25),
    "attention": (0.10, 0.25),
    "moe_ffn": (0.10, 0.35),
    "rmsnorm": (0.10, 0.30),
    "elementwise": (0.10, 0.30),
    "gate": (0.30, 0.45),
}
TARGETS["gemm:fp32"] = (0.30, 0.50)
MIN_CASES = {kind: 40 for kind in TARGETS if kind != "gemm:fp32"}


# ---------------------------------------------------------------------------------------------
# Against the committed measurements
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["h100", "h200"])
def test_predictions_meet_the_targets_on_held_out_shapes(key):
    path = DATA / f"timing_{key}.json"
    assert path.exists(), f"{path.name} is missing (bench/timing_measure.py on a {key.upper()})"
    data = json.loads(path.read_text())
    cal = gpu_calibration(data["env"]["gpu"])
    rows = validate([r for r in data["records"] if r["split"] == "validation"], cal)
    summary = error_summary(rows, "kind")
    misses = [
        f"{k}: median {s['median']:.1%}, worst {s['worst']:.1%}"
        for k, s in summary.items()
        if k in TARGETS and (s["median"] > TARGETS[k][0] or s["worst"] > TARGETS[k][1])
    ]
    assert not misses, "model drifted past the targets on " + "; ".join(misses)
    for kind, n in MIN_CASES.items():
        assert summary[kind]["n"] >= n, f"fewer than {n} validation cases of {kind}"


# The committed calibration against a refit of the committed measurements. fit_calibration
# (Levenberg-Marquardt, stopping when the relative improvement falls below 1e-12) lands at slightly
# different points on machines whose BLAS and libm differ, most of all on constants that the
# records barely constrain: between two x86 machines the H200's l2_write_frac (4.4e-5) moved by
# 3.5e-5 relative and its epilogue_bw by 2.3e-4, while no prediction moved by more than 1e-5. So
# the test compares what a calibration is for, the predicted times, tightly, and the constants
# loosely.
PREDICTION_REL = 1e-3  # every record, both splits: 100x the machine-to-machine spread seen
CONSTANT_REL = 1e-2  # each fitted constant: 40x the spread seen, and 5x below a 5 % error
# A constant that the fit drives onto a bound of its range (tile_fill, about 2e-12 on the H100,
# range 0..16) changes no prediction, so where the optimiser stops on it is noise (20 % relative
# on that one): such a constant may differ by this fraction of its fit range (FIT_STAGES) on top
# of CONSTANT_REL.
CONSTANT_ABS_OF_RANGE = 1e-6


def _constants(cal: Calibration) -> dict[str, tuple[float, float]]:
    """{name: (value, width of its fit range)} of every constant that FIT_STAGES fits."""
    out = {}
    for _, _, params in FIT_STAGES:
        for name, lo, hi in params:
            table, _, key = name.partition(".")
            value = getattr(cal, table)[key] if key else getattr(cal, table)
            out[name] = (value, hi - lo)
    return out


def constant_mismatches(committed: Calibration, refit: Calibration) -> list[str]:
    """Fitted constants of `committed` further from `refit` than the tolerances above."""
    ref = _constants(refit)
    out = []
    for name, (c, width) in _constants(committed).items():
        r = ref[name][0]
        if abs(c - r) > CONSTANT_REL * abs(r) + CONSTANT_ABS_OF_RANGE * width:
            out.append(f"{name}: committed {c:.6g}, refit {r:.6g}")
    return out


def prediction_mismatches(
    committed: Calibration, refit: Calibration, records: list[dict]
) -> list[str]:
    """Records whose time predicted by `committed` and by `refit` differ by > PREDICTION_REL."""
    out = []
    for r in records:
        p_c, p_r = predict_record(r, committed), predict_record(r, refit)
        if abs(p_c / p_r - 1) > PREDICTION_REL:
            out.append(
                f"{r['op']} {r['shape']} ({r['split']}): {p_c:.4g} s committed, {p_r:.4g} s refit"
            )
    return out


def _measured(key: str) -> tuple[dict, list[dict]]:
    """The measurement file of `key` and its usable records (both splits); both are committed."""
    path, cal_path = DATA / f"timing_{key}.json", DATA / f"timing_calibration_{key}.json"
    assert path.exists() and cal_path.exists(), f"{path.name} / {cal_path.name} are missing"
    data = json.loads(path.read_text())
    return data, [r for r in data["records"] if "error" not in r and r.get("time_s", 0) > 0]


@pytest.mark.parametrize("key", ["h100", "h200"])
def test_committed_calibration_is_the_fit_of_the_committed_measurements(key):
    data, records = _measured(key)
    calibration = [r for r in records if r["split"] == "calibration"]
    refit = fit_calibration(calibration, data["env"]["gpu"])
    committed = gpu_calibration(data["env"]["gpu"])
    assert {r["split"] for r in records} == {"calibration", "validation"}
    bad = constant_mismatches(committed, refit)
    assert not bad, (
        "the committed constants are not the fit (re-run bench/validate_timing.py): "
        + "; ".join(bad)
    )
    bad = prediction_mismatches(committed, refit, records)
    assert not bad, f"{len(bad)} of {len(records)} predictions moved: " + "; ".join(bad[:5])


@pytest.mark.parametrize("key", ["h100", "h200"])
def test_the_calibration_comparison_catches_a_constant_off_by_5_percent(key):
    data, records = _measured(key)
    committed = gpu_calibration(data["env"]["gpu"])
    on_bound = []
    for name, (value, width) in _constants(committed).items():
        if 0.05 * abs(value) <= 2 * CONSTANT_ABS_OF_RANGE * width:
            on_bound.append(name)  # moving it by 5 % moves no prediction either
            continue
        table, _, k = name.partition(".")
        if k:
            changed = {table: {**getattr(committed, table), k: 1.05 * value}}
        else:
            changed = {name: 1.05 * value}
        assert constant_mismatches(committed.replace(**changed), committed), name
    assert len(on_bound) <= 2, on_bound
    # The predictions alone see a 5 % change of a constant of every GEMM or memory-bound op.
    for name in ("mma_eff", "bw_eff"):
        moved = committed.replace(**{name: 1.05 * getattr(committed, name)})
        assert prediction_mismatches(moved, committed, records), name


# ---------------------------------------------------------------------------------------------
# Physics
# ---------------------------------------------------------------------------------------------
dims = st.integers(1, 20000)
pow2 = st.sampled_from([64, 128, 192, 256, 512, 1024, 1408, 2048, 4096, 7168])


@settings(max_examples=60, deadline=None)
@given(
    m=dims, n=dims, k=dims, backward=st.booleans(), dtype=st.sampled_from(["bf16", "fp32", "fp8"])
)
def test_gemm_never_beats_the_datasheet_roofline(m, n, k, backward, dtype):
    assert op_time("gemm", dtype=dtype, backward=backward, m=m, n=n, k=k) >= roofline_time(
        "gemm", dtype=dtype, backward=backward, m=m, n=n, k=k
    )


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 40000),
    dim=pow2,
    inter=pow2,
    n_routed_experts=st.sampled_from([8, 16, 64, 160, 256]),
    n_activated_experts=st.integers(1, 8),
    backward=st.booleans(),
    gpu=st.sampled_from(["H100-SXM", "H200", "A100-80GB-SXM"]),
)
def test_moe_never_beats_the_datasheet_roofline(
    tokens, dim, inter, n_routed_experts, n_activated_experts, backward, gpu
):
    s = dict(
        tokens=tokens,
        dim=dim,
        moe_inter_dim=inter,
        n_routed_experts=n_routed_experts,
        n_activated_experts=n_activated_experts,
    )
    assert op_time("moe_ffn", gpu, backward=backward, **s) >= roofline_time(
        "moe_ffn", gpu, backward=backward, **s
    )


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 16),
    seq_len=st.integers(1, 9000),
    n_heads=st.integers(1, 128),
    dims=st.sampled_from([(128, 128), (192, 128), (64, 64)]),
    causal=st.booleans(),
    backward=st.booleans(),
)
def test_attention_never_beats_the_datasheet_roofline(
    batch, seq_len, n_heads, dims, causal, backward
):
    s = dict(
        batch=batch,
        seq_len=seq_len,
        n_heads=n_heads,
        qk_head_dim=dims[0],
        v_head_dim=dims[1],
        causal=causal,
    )
    assert op_time("attention", backward=backward, **s) >= roofline_time(
        "attention", backward=backward, **s
    )


@pytest.mark.parametrize(
    "op, shape",
    [
        ("rmsnorm", dict(tokens=4096, dim=7168)),
        ("elementwise", dict(bytes=10**9)),
        ("gate", dict(tokens=4096, dim=7168, n_routed_experts=256, n_activated_experts=8)),
        ("sort", dict(n=10**6)),
        ("grouped_gemm", dict(tokens=8192, n=2048, k=7168, groups=64)),
        ("gather_rows", dict(rows=65536, width=4096, dst_rows=8192)),
    ],
)
def test_memory_ops_never_beat_the_datasheet_roofline(op, shape):
    assert op_time(op, **shape) >= roofline_time(op, **shape)


def test_gemm_time_grows_with_every_dimension():
    for dim in ("m", "n", "k"):
        times = [
            op_time("gemm", **{**dict(m=2048, n=2048, k=2048), dim: v})
            for v in range(64, 12000, 97)
        ]
        assert all(b >= a for a, b in zip(times, times[1:])), dim


def test_moe_time_grows_with_tokens_within_a_tile_regime():
    # 64 experts, top-6: <= 128 rows per expert on average below 1366 tokens (64x128
    # tiles), above it 128x256
    moe = dict(dim=2048, moe_inter_dim=1408, n_routed_experts=64, n_activated_experts=6)
    small = [op_time("moe_ffn", tokens=t, **moe) for t in range(16, 1360, 37)]
    large = [op_time("moe_ffn", tokens=t, **moe) for t in range(1400, 30000, 997)]
    for times in (small, large):
        assert all(b >= a * (1 - 1e-9) for a, b in zip(times, times[1:]))


def test_attention_time_grows_with_sequence_and_causal_is_cheaper():
    times = [
        op_time(
            "attention",
            batch=2,
            seq_len=s,
            n_heads=16,
            qk_head_dim=128,
            v_head_dim=128,
            causal=True,
            backward=True,
        )
        for s in range(128, 8192, 256)
    ]
    assert all(b > a for a, b in zip(times, times[1:]))
    full = op_time(
        "attention",
        batch=2,
        seq_len=8192,
        n_heads=16,
        qk_head_dim=128,
        v_head_dim=128,
        causal=False,
    )
    causal = op_time(
        "attention", batch=2, seq_len=8192, n_heads=16, qk_head_dim=128, v_head_dim=128, causal=True
    )
    assert 0.45 * full < causal < 0.75 * full


def test_wave_quantization_one_more_row_costs_a_whole_wave():
    """11 experts of 1024 rows and 768 outputs make 11 x 8 x 3 = 264 tiles of 128x256: two full
    waves on 132 SMs. One more row per expert adds a ninth tile row to each: 297 tiles, three waves,
    +50% time for +0.1% work."""
    base = dict(n=768, k=4096, groups=11)
    t_full = op_time("grouped_gemm", tokens=11 * 1024, **base)
    t_one_more = op_time("grouped_gemm", tokens=11 * 1025, **base)
    assert t_one_more / t_full == pytest.approx(1.5, rel=0.05)
    notes = [
        k.note
        for k in op_kernels("grouped_gemm", tokens=11 * 1025, **base)
        if k.kind == "grouped_gemm"
    ]
    assert "3 waves" in notes[0]


def test_expert_load_is_binomial():
    tiles, active, mean = expert_load(1024, 2, 8, 64)  # 256 rows per expert on average
    assert active == pytest.approx(8.0)
    assert 8 * 4 <= tiles <= 8 * 5  # ceil(256/64) = 4, sometimes 5
    tiles, active, mean = expert_load(4, 1, 256, 64)  # 4 tokens over 256 experts
    assert active == pytest.approx(256 * (1 - (255 / 256) ** 4))
    assert tiles == pytest.approx(active, rel=1e-6)  # each active expert: one partial tile


def test_h200_is_faster_on_memory_bound_ops_only():
    mem = dict(bytes=4 * 10**9)
    assert op_time("elementwise", "H200", **mem) < op_time("elementwise", "H100-SXM", **mem)
    assert op_time("gemm", "H200", m=1, n=18432, k=7168) < op_time(
        "gemm", "H100-SXM", m=1, n=18432, k=7168
    )


# ---------------------------------------------------------------------------------------------
# The kernel lists follow dsim.model
# ---------------------------------------------------------------------------------------------
class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if name in ("aten.mm.default", "aten._grouped_mm.default", "aten.bmm.default"):
            a, b = args[0], args[1]
            inner, cols = a.shape[-1], b.shape[-1]
            self.flops += (
                2 * (a.numel() // inner) * inner * cols
                if not (a.dim() == 2 and b.dim() == 2 and name == "aten._grouped_mm.default")
                else 2 * a.shape[0] * a.shape[1] * b.shape[1]
            )
        return out


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="needs torch._grouped_mm")
@pytest.mark.parametrize("backward", [False, True])
def test_moe_kernel_list_has_the_flops_dsim_model_runs(backward, monkeypatch):
    monkeypatch.setattr(
        "dsim.kernels._grouped_mm_ok", lambda x, w: x.dtype == torch.bfloat16
    )  # the GPU path, on a CPU
    T, D, I, E, K = 40, 64, 48, 8, 2
    args = ModelArgs(
        dim=D,
        moe_inter_dim=I,
        n_routed_experts=E,
        n_activated_experts=K,
        n_shared_experts=0,
        n_layers=1,
        n_dense_layers=0,
        inter_dim=0,
        route_norm=True,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        moe = M.MoE(args)
        x = torch.randn(T, D, requires_grad=backward)
        trace = _Trace()
        with trace:
            y = moe(x)
            if backward:
                y.backward(torch.randn_like(y))
    finally:
        torch.set_default_dtype(default)
    kernels = op_kernels(
        "moe_ffn",
        backward=backward,
        tokens=T,
        dim=D,
        moe_inter_dim=I,
        n_routed_experts=E,
        n_activated_experts=K,
    )
    assert sum(k.flops for k in kernels if k.kind in ("gemm", "grouped_gemm")) == trace.flops


@pytest.mark.parametrize(
    "name", ["deepseek-v3", "deepseek-v2-lite", "mixtral-8x7b", "deepseekmoe-16b"]
)
@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_step_plan_has_the_flops_of_dsim_cost_flops(name, mode):
    args = scaled_down(preset(name))
    plan = step_plan(args, batch=2, seq_len=24, mode=mode)
    total = 0.0
    for p in plan:
        if p.op in ("gemm", "moe_ffn", "attention"):
            total += sum(
                k.flops
                for k in op_kernels(p.op, backward=p.backward, **p.shape)
                if k.kind in ("gemm", "grouped_gemm", "attention")
            )
    expected = flops(args, batch=2, seq_len=24, mode=mode)
    assert total == pytest.approx(expected.total_causal, rel=1e-12)


def test_kernel_times_add_up_and_breakdowns_sum_to_the_total():
    s = dict(tokens=4096, dim=2048, moe_inter_dim=1408, n_routed_experts=64, n_activated_experts=6)
    assert sum(k.time_s for k in op_kernels("moe_ffn", backward=True, **s)) == pytest.approx(
        op_time("moe_ffn", backward=True, **s)
    )
    st_ = step_time(preset("deepseek-v2-lite"), batch=2, seq_len=2048)
    assert sum(st_.breakdown().values()) == pytest.approx(st_.total_s)
    layer = layer_time(preset("deepseek-v2-lite"), batch=2, seq_len=2048)
    assert 0 < layer.total_s < st_.total_s


def test_train_costs_more_than_prefill_and_decode_is_memory_bound():
    args = preset("deepseek-v2-lite")
    train, prefill = step_time(args, 1, 4096, "train"), step_time(args, 1, 4096, "prefill")
    assert 2.0 < train.total_s / prefill.total_s < 4.5
    decode = step_time(args, 8, 4096, "decode")
    weights = 2 * 15.7e9  # every weight is read once per decode step (bf16)
    assert decode.total_s > weights / 3.35e12


# ---------------------------------------------------------------------------------------------
# Calibration and fitting
# ---------------------------------------------------------------------------------------------
def test_other_gpus_borrow_the_h100_efficiencies_and_say_so():
    """A GPU without measurements or published runs borrows the H100's efficiencies; the A100 and
    H800 scale its tensor-core ones to their published runs (tests/cost/test_public_runs.py)."""
    cal = gpu_calibration("H100-PCIe")
    h100 = gpu_calibration("H100-SXM")
    assert cal.mma_eff == h100.mma_eff and "H100-SXM" in cal.source
    h800 = gpu_calibration("H800")
    assert h800.mma_eff < h100.mma_eff and "published runs" in h800.source
    assert op_time("gemm", "H800", m=4096, n=4096, k=4096) > op_time(
        "gemm", "H100-SXM", m=4096, n=4096, k=4096
    )
    assert op_time("gemm", "A100-80GB-SXM", m=4096, n=4096, k=4096) > op_time(
        "gemm", "H100-SXM", m=4096, n=4096, k=4096
    )


def _synthetic_records(cal: Calibration) -> list[dict]:
    """Records 'measured' with a known calibration, one grid per fit stage."""
    shapes = []
    for m in (1, 64, 1000, 4096):
        for n, k in ((4096, 4096), (1536, 7168), (14336, 2048)):
            shapes.append(("gemm", "bf16", False, dict(m=m, n=n, k=k)))
    shapes += [
        ("gemm", "fp32", False, dict(m=m, n=e, k=2048)) for m in (512, 8192) for e in (16, 256)
    ]
    shapes += [("elementwise", "bf16", False, dict(bytes=b)) for b in (10**3, 10**5, 10**7, 10**9)]
    shapes += [
        ("rmsnorm", "bf16", bwd, dict(tokens=t, dim=4096))
        for t in (64, 8192)
        for bwd in (False, True)
    ]
    shapes += [
        ("grouped_gemm", "bf16", bwd, dict(tokens=g * r, n=2048, k=4096, groups=g))
        for g, r in ((8, 64), (64, 512), (32, 1024))
        for bwd in (False, True)
    ]
    shapes += [
        (op, "bf16", bwd, dict(rows=r, width=2048, dst_rows=r // 8))
        for r in (4096, 131072)
        for op in ("gather_rows", "index_select_rows", "index_add_rows")
        for bwd in (False, True)
    ]
    shapes += [("sort", "bf16", False, dict(n=n)) for n in (4096, 65536, 10**6)]
    shapes += [
        (
            "gate",
            "bf16",
            False,
            dict(tokens=t, dim=2048, n_routed_experts=64, n_activated_experts=6),
        )
        for t in (128, 8192)
    ]
    shapes += [
        (
            "attention",
            "bf16",
            bwd,
            dict(batch=b, seq_len=s, n_heads=16, qk_head_dim=qk, v_head_dim=128, causal=c),
        )
        for b, s in ((1, 2048), (4, 512), (2, 8192))
        for qk in (128, 192)
        for c in (True, False)
        for bwd in (False, True)
    ]
    out = []
    for op, dtype, bwd, shape in shapes:
        t = op_time(op, "H100-SXM", dtype, bwd, cal, **shape)
        out.append(
            dict(
                op=op,
                dtype=dtype,
                backward=bwd,
                shape=shape,
                split="calibration",
                time_s=t,
                extra={
                    "backend": cal.attn_backend_equal
                    if shape.get("qk_head_dim") == 128
                    else cal.attn_backend_unequal
                }
                if op == "attention"
                else {},
            )
        )
    return out


def test_fit_recovers_the_constants_that_made_the_data():
    base = Calibration()
    truth = base.replace(
        launch_s=3.1e-6,
        bw_eff=0.92,
        mma_eff=0.72,
        fp32_eff=0.6,
        grouped_eff=0.62,
        gather_eff=0.7,
        atomic_eff=0.3,
        attn_eff={**base.attn_eff, "cudnn_fwd_mha_causal": 0.62, "cudnn_bwd_mla_full": 0.3},
    )
    records = _synthetic_records(truth)
    cal = fit_calibration(records, "H100-SXM")
    errors = [abs(predict_record(r, cal) / r["time_s"] - 1) for r in records]
    assert max(errors) < 0.02
    for name in ("bw_eff", "mma_eff", "fp32_eff", "grouped_eff"):
        assert getattr(cal, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    assert cal.attn_eff["cudnn_fwd_mha_causal"] == pytest.approx(0.62, rel=0.05)
    assert set(cal.fit) == {s[0] for s in FIT_STAGES if s[0] != "moe_ffn"}


def test_attention_counts_the_pairs_of_the_graph():
    from dsim.cost.graph import attention_pairs

    b, s, ctx, h, d = 2, 512, 1536, 4, 128  # a prefill chunk of 512 queries after 1536 cached keys
    for causal in (True, False):
        ks = op_kernels(
            "attention",
            batch=b,
            seq_len=s,
            kv_seq_len=s + ctx,
            n_heads=h,
            qk_head_dim=d,
            v_head_dim=d,
            causal=causal,
        )
        assert (
            sum(k.flops for k in ks if k.kind == "attention")
            == 2 * h * attention_pairs(b, s, ctx, causal) * 2 * d
        )
    with pytest.raises(ValueError, match="context >= 0"):
        attention_pairs(1, 8, -1, True)


def test_attention_table_has_the_measured_backend_and_other_backends_borrow_it():
    # the committed calibrations select cuDNN for both head-dim classes: the
    # table holds only its entries
    for gpu in ("H100-SXM", "H200"):
        cal = gpu_calibration(gpu)
        assert (cal.attn_backend_equal, cal.attn_backend_unequal) == (
            "cudnn_attention",
            "cudnn_attention",
        )
        assert all(k.startswith("cudnn_") for k in cal.attn_eff) and len(cal.attn_eff) == 8
    # a GPU whose SDPA picks FlashAttention runs flash's blocks at cuDNN's
    # efficiency of the same variant
    cudnn = gpu_calibration("H100-SXM")
    flash = cudnn.replace(attn_backend_equal="flash_attention")
    shape = dict(batch=2, seq_len=4096, n_heads=16, qk_head_dim=128, v_head_dim=128, causal=True)
    ks = op_kernels("attention", calibration=flash, **shape)
    assert [k.name for k in ks if k.kind == "attention"] == ["flash forward"]
    slower = flash.replace(attn_eff={**flash.attn_eff, "cudnn_fwd_mha_causal": 0.3})
    assert op_time("attention", calibration=slower, **shape) > op_time(
        "attention", calibration=flash, **shape
    )


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: op_time("conv", m=1), "unknown op 'conv'.*gemm"),
        (lambda: op_time("gemm", gpu="B200", m=1, n=1, k=1), "unknown gpu 'B200'"),
        (lambda: op_time("gemm", dtype="int4", m=1, n=1, k=1), "unknown dtype 'int4'"),
        (lambda: op_time("gemm", m=1, n=1), "missing argument.*\\bk\\b"),
        (lambda: op_time("gemm", m=0, n=1, k=1), "m must be an integer >= 1"),
        (lambda: op_time("gemm", m=2.5, n=1, k=1), "m must be an integer"),
        (lambda: op_time("gemm", m=1, n=1, k=1, tokens=3), "unexpected argument.*tokens"),
        (
            lambda: op_time(
                "moe_ffn",
                tokens=8,
                dim=64,
                moe_inter_dim=32,
                n_routed_experts=4,
                n_activated_experts=6,
            ),
            "n_activated_experts must be <= n_routed_experts",
        ),
        (
            lambda: op_time(
                "moe_ffn",
                dtype="fp32",
                tokens=8,
                dim=64,
                moe_inter_dim=32,
                n_routed_experts=4,
                n_activated_experts=2,
            ),
            "bf16",
        ),
        (
            lambda: op_time(
                "attention",
                batch=1,
                seq_len=8,
                n_heads=1,
                qk_head_dim=64,
                v_head_dim=64,
                causal="yes",
            ),
            "causal must be True or False",
        ),
        (
            lambda: op_time(
                "attention",
                batch=1,
                seq_len=8,
                kv_seq_len=4,
                n_heads=1,
                qk_head_dim=64,
                v_head_dim=64,
                causal=True,
            ),
            "kv_seq_len",
        ),
        (
            lambda: op_time(
                "gate", backward=True, tokens=8, dim=64, n_routed_experts=4, n_activated_experts=2
            ),
            "backward",
        ),
        (lambda: op_time("gemm", "A100-80GB-SXM", "fp8", m=1, n=1, k=1), "not supported"),
        (lambda: step_time(preset("tiny"), 1, 16, mode="serve"), "mode must be"),
        (lambda: step_time(preset("tiny"), 0, 16), "batch must be an integer >= 1"),
    ],
)
def test_clear_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_every_op_runs_with_its_required_arguments():
    example = dict(
        m=8,
        n=8,
        k=8,
        tokens=64,
        dim=64,
        moe_inter_dim=32,
        n_routed_experts=8,
        n_activated_experts=2,
        batch=1,
        seq_len=64,
        n_heads=2,
        qk_head_dim=64,
        v_head_dim=64,
        causal=True,
        bytes=1000,
        groups=4,
        rows=64,
        width=64,
        dst_rows=16,
    )
    for op, (required, _) in OPS.items():
        t = op_time(op, **{a: example[a] for a in required})
        assert math.isfinite(t) and t > 0, op


def test_gqa_reads_keys_and_values_once_per_kv_head():
    """attention(kv_heads=...): K and V are [batch, kv_heads, kv_seq_len, d], so decoding (memory
    bound) reads fewer bytes than with a KV head per query head; kv_heads = n_heads is MHA, and a
    kv_heads that does not divide n_heads is refused by name."""
    shape = dict(batch=16, seq_len=1, kv_seq_len=8192, n_heads=32, qk_head_dim=128, v_head_dim=128)
    mha = op_time("attention", causal=False, **shape)
    assert op_time("attention", causal=False, kv_heads=32, **shape) == mha
    assert op_time("attention", causal=False, kv_heads=8, **shape) < mha
    with pytest.raises(ValueError, match="kv_heads must divide n_heads"):
        op_time("attention", causal=False, kv_heads=5, **shape)
    # the graph hands a GQA model's kv_heads to the time model (Mixtral: 32 query, 8 KV heads)
    mistral = preset("mixtral-8x7b")
    (sdpa,) = [op for op in step_plan(mistral, 4, 1, "decode", 4096) if op.label.endswith("sdpa")][
        :1
    ]
    assert sdpa.shape["kv_heads"] == mistral.kv_heads == 8 < mistral.n_heads


class _Elementwise(TorchDispatchMode):
    """Counts the pointwise and indexing kernels (not GEMMs, sorts or reductions) a module runs."""

    KINDS = ("add", "mul", "clamp", "sigmoid", "silu", "index.Tensor", "rsub", "sub")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func).removeprefix("aten.")
        if name.split(".")[0].rstrip("_") in self.KINDS or name.startswith("index.Tensor"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_gpt_oss_experts_add_the_kernels_dsim_model_runs_for_biases_and_the_clamp():
    """gpt-oss's expert biases (a gather and an add per projection, and the experts' ids gathered
    once more) and clamped SwiGLU (seven pointwise kernels for SwiGLU's two) are extra time
    entries of the experts op: as many kernels as Experts.forward_grouped runs beyond the plain
    layer's."""
    T, D, I, E, K = 24, 32, 16, 4, 2
    plain = ModelArgs(
        dim=D, moe_inter_dim=I, n_routed_experts=E, n_activated_experts=K, n_shared_experts=0,
        n_layers=1, n_dense_layers=0, inter_dim=0, route_norm=True,
    )  # fmt: skip
    oss = plain.replace(expert_bias=True, swiglu_limit=7.0)
    counts = []
    for args in (plain, oss):
        experts = M.MoE(args).experts
        x, idx = torch.randn(T, D), torch.randint(0, E, (T, K))
        trace = _Elementwise()
        with trace, torch.no_grad():
            experts.forward_grouped(x, idx, torch.rand(T, K))
        counts.append(trace.count)
    extra = [p for p in step_plan(oss, 1, T, "prefill") if p.label.startswith("layers.0.experts:")]
    assert [p.shape["kernels"] for p in extra] == [7, 5]
    assert counts[1] - counts[0] == 7 + 5
    assert not [p for p in step_plan(plain, 1, T, "prefill") if "experts:" in p.label]


def test_gqa_rows_measured_on_an_h100_meet_the_targets():
    """bench/timing_measure.py --only attention on an H100 (2026-12-05): its GQA rows (enable_gqa,
    kv_heads < n_heads), never fitted on, predicted with the committed H100 calibration. Decoding
    packs a group's query heads into one tile (without that the model was 2.3-9x slow there)."""
    data = json.loads((DATA / "timing_attention_h100.json").read_text())
    cal = gpu_calibration("H100-SXM")
    rows = [r for r in data["records"] if r["op"] == "attention" and "kv_heads" in r["shape"]]
    assert len(rows) == 7 and data["env"]["device_name"].startswith("NVIDIA H100")
    errors = [
        abs(op_time("attention", "H100-SXM", backward=r["backward"], calibration=cal, **r["shape"])
            / r["time_s"] - 1)
        for r in rows
    ]  # fmt: skip
    assert sorted(errors)[len(errors) // 2] <= 0.10 and max(errors) <= 0.25
