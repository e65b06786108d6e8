"""Quantization is right: exact against straightforward references, honest
about bytes, and measured.

Integer and FP8 formats are held to loop-by-loop references (bit-exact where the arithmetic allows),
the FP8 GEMM to dequantize-then-matmul in fp64, the quantized layers to their definitions, the byte
counts to dsim.cost.weight_bytes, and the accuracy/size table runs on a tiny model trained on text.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dsim.config import preset
from dsim.model import Experts, Transformer
from dsim.quant import (
    FP8_DTYPE,
    QuantExperts,
    QuantLinear,
    accumulation_error,
    accuracy_size_table,
    act_quant,
    aligned_sum,
    bytes_by_kind,
    calibrate,
    calibrate_model,
    clone_model,
    dequantize,
    fake_quant,
    finish_qat,
    fp8_gemm,
    pack_int4,
    prepare_qat,
    quantize,
    quantize_fp8,
    quantize_model,
    unpack_int4,
    weight_dequant,
    weight_quant,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------------------------------
# Integer formats against a loop-by-loop reference
# ------------------------------------------------------------------------------------------
def reference_fake_quant(x: np.ndarray, bits, granularity, group_size, symmetric):
    """Straightforward per-group quantize/dequantize of a float32 matrix, one group at a time."""
    rows, width = x.shape
    g = {"tensor": rows * width, "channel": width, "group": group_size}[granularity]
    flat = x.reshape(-1, g) if granularity == "tensor" else x.reshape(rows, -1, g).reshape(-1, g)
    out = np.empty_like(flat)
    for i, grp in enumerate(flat):
        if symmetric:
            qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
            s = np.float32(np.abs(grp).max()) / np.float32(qmax)
            zero = np.float32(0)
        else:
            qmin, qmax = 0, 2**bits - 1
            lo, hi = np.float32(min(grp.min(), 0)), np.float32(max(grp.max(), 0))
            s = (hi - lo) / np.float32(qmax)
        s = np.float32(s if s > 0 else 1.0)
        s_bf16 = np.float32(torch.tensor(s).to(torch.bfloat16).float().item())  # stored in bf16,
        s = (
            s_bf16
            if s_bf16 >= s
            else np.float32(  # rounded up
                torch.nextafter(
                    torch.tensor(s_bf16).to(torch.bfloat16), torch.tensor(np.inf).to(torch.bfloat16)
                )
                .float()
                .item()
            )
        )
        if not symmetric:
            zero = np.float32(np.clip(np.round(-lo / s), qmin, qmax))
        q = np.clip(np.round(grp / s) + zero, qmin, qmax).astype(np.float32)
        out[i] = (q - zero) * s
    return out.reshape(rows, width)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_integer_dequant_equals_reference_rounding_exactly(bits, granularity, symmetric):
    x = randn(6, 96, seed=bits) * torch.linspace(0.1, 3, 96)  # columns of different range
    x[2, 5] = 25.0  # an outlier
    qt = quantize(x, bits, granularity, 32, symmetric)
    expected = reference_fake_quant(x.numpy(), bits, granularity, 32, symmetric)
    np.testing.assert_array_equal(dequantize(qt).numpy(), expected)
    np.testing.assert_array_equal(
        fake_quant(x, bits, granularity, 32, symmetric).detach().numpy(), expected
    )


def test_storage_layout_as_a_checkpoint_holds_it():
    w = randn(256, 512)
    g = quantize(w, 4, "group", 128)
    assert g.data.dtype == torch.uint8 and g.data.shape == (256, 256)  # two codes per byte
    assert g.scale.shape == (256, 4) and g.scale.dtype == torch.bfloat16  # [out, in/128]
    assert g.nbytes == 256 * 512 // 2 + 256 * 4 * 2
    c = quantize(w, 8, "channel")
    assert (
        c.data.dtype == torch.int8 and c.scale.shape == (256, 1) and c.nbytes == 256 * 512 + 256 * 2
    )
    a = quantize(w, 8, "group", 128, symmetric=False)
    assert a.data.dtype == torch.uint8 and a.zero_point.shape == (256, 4)
    assert a.nbytes == 256 * 512 + 256 * 4 * (2 + 1)
    t = quantize(w, 8, "tensor", scale_dtype=torch.float32)
    assert t.scale.shape == () and t.nbytes == 256 * 512 + 4
    f = quantize_fp8(w)
    assert (
        f.data.dtype == FP8_DTYPE and f.scale.shape == (2, 4) and f.nbytes == 256 * 512 + 2 * 4 * 4
    )


def test_int4_packing_low_nibble_first():
    codes = torch.tensor([[1, 2, 3, 15, 7]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[1 | 2 << 4, 3 | 15 << 4, 7]]
    assert unpack_int4(packed, 5).tolist() == codes.tolist()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
)
def test_error_is_at_most_half_a_step(rows, groups, bits, symmetric, seed, scale):
    x = randn(rows, groups * 16, seed=seed) * scale
    qt = quantize(x, bits, "group", 16, symmetric)
    step = qt.scale.float().repeat_interleave(16, dim=-1)
    err = (dequantize(qt) - x).abs()
    assert bool((err <= 0.5 * step * (1 + 1e-5) + 1e-30).all())
    codes = unpack_int4(qt.data, groups * 16) if bits == 4 else qt.data
    assert (
        unpack_int4(pack_int4(codes.to(torch.uint8) & 0xF), groups * 16).tolist()
        == (codes.to(torch.uint8) & 0xF).tolist()
    )


def test_per_group_scaling_beats_per_channel_beats_per_tensor_with_outliers():
    w = randn(64, 512, seed=3)
    w[::8, 7] *= 40  # outlier input channel
    w[5] *= 10  # one large output row
    err = {
        g: float((dequantize(quantize(w, 4, g, 128)) - w).pow(2).mean())
        for g in ("tensor", "channel", "group")
    }
    assert err["group"] < err["channel"] < err["tensor"]


def test_padding_of_groups_that_do_not_divide():
    x = randn(3, 50)
    with pytest.raises(ValueError, match="does not divide"):
        quantize(x, 4, "group", 32)
    qt = quantize(x, 4, "group", 32, pad=True)
    assert qt.scale.shape == (3, 2) and qt.data.shape == (3, 32)
    padded = F.pad(x, (0, 14))
    torch.testing.assert_close(
        dequantize(qt), dequantize(quantize(padded, 4, "group", 32))[:, :50], rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([1.0, float("inf")]), "inf"),
        (torch.tensor([1, 2, 3]), "int64"),
        (torch.tensor([1 + 1j]), "complex"),
        (torch.tensor([True]), "bool"),
    ],
)
def test_bad_tensors_raise_clear_errors(bad, match):
    for fn in (
        lambda t: quantize(t, 8),
        lambda t: act_quant(t, 128),
        lambda t: fake_quant(t, 4),
        lambda t: calibrate(t, "absmax"),
    ):
        with pytest.raises(ValueError, match=match):
            fn(bad)


def test_bad_settings_raise_clear_errors():
    x = randn(4, 64)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, 3)
    with pytest.raises(ValueError, match="granularity"):
        quantize(x, 8, "row")
    with pytest.raises(ValueError, match="scheme"):
        quantize_model(Transformer(preset("tiny")), "int3")
    with pytest.raises(ValueError, match="layers"):
        quantize_model(Transformer(preset("tiny")), "fp8", layers="mlp")
    with pytest.raises(ValueError, match="method"):
        calibrate(x, "entropy")
    with pytest.raises(ValueError, match="scale_fmt"):
        act_quant(x, 32, "e5m2")
    with pytest.raises(ValueError, match="0-dimensional"):
        quantize(torch.tensor(1.0), 8)


# ------------------------------------------------------------------------------------------
# FP8 as DeepSeek-V3 does it
# ------------------------------------------------------------------------------------------
def test_act_quant_equals_per_tile_reference_and_pads_the_last_tile():
    x = randn(3, 300, seed=1)
    x[1, :128] = 0  # an all-zero tile
    y, s = act_quant(x, 128)
    assert (
        y.dtype == FP8_DTYPE
        and y.shape == (3, 300)
        and s.shape == (3, 3)
        and s.dtype == torch.float32
    )
    for r in range(3):
        for t in range(3):
            tile = x[r, t * 128 : (t + 1) * 128]
            s_ref = max(float(tile.abs().max()), 1e-4) / 448
            assert s[r, t].item() == pytest.approx(s_ref, rel=1e-7)
            assert torch.equal(
                y[r, t * 128 : (t + 1) * 128].float(), (tile / s[r, t]).to(FP8_DTYPE).float()
            )
    assert s[1, 0].item() == pytest.approx(1e-4 / 448)


def test_power_of_two_scales():
    x = randn(4, 256, seed=2) * 3
    y, s = act_quant(x, 128, scale_fmt="ue8m0")
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two
    assert bool((s >= x.view(4, 2, 128).abs().amax(-1) / 448).all())  # rounded up: no overflow
    assert float(y.float().abs().max()) <= 448


def test_weight_quant_blocks_and_dequant():
    w = randn(300, 200, seed=4)
    y, s = weight_quant(w, 128)
    assert y.shape == (300, 200) and s.shape == (3, 2)
    s_ref = torch.tensor(
        [
            [max(float(w[i : i + 128, j : j + 128].abs().max()), 1e-4) / 448 for j in (0, 128)]
            for i in (0, 128, 256)
        ]
    )
    torch.testing.assert_close(s, s_ref, rtol=1e-7, atol=0)
    deq = weight_dequant(y, s, 128)
    assert torch.equal(deq[130:140, 150:160], y[130:140, 150:160].float() * s[1, 1])
    assert float(((deq - w).abs() / w.abs().clamp(min=0.05)).max()) < 2**-3  # 3 mantissa bits


def test_fp8_gemm_equals_dequantize_then_matmul_in_fp64():
    a, w = randn(2, 5, 300, seed=5), randn(200, 300, seed=6)
    a_q, a_s = act_quant(a, 128)
    w_q, w_s = weight_quant(w, 128)
    got = fp8_gemm(a_q, a_s, w_q, w_s, 128)
    a_deq = (F.pad(a_q.double(), (0, 84)).view(2, 5, 3, 128) * a_s.double()[..., None]).flatten(-2)[
        ..., :300
    ]
    expected = a_deq @ weight_dequant(w_q, w_s).double().T
    assert got.shape == (2, 5, 200)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    rel = float((got - a @ w.T).norm() / (a @ w.T).norm())
    assert rel < 0.05  # FP8 is E4M3: ~3% per element


def test_fp8_gemm_without_promotion_needs_per_tensor_scales():
    a_q, a_s = act_quant(randn(4, 256), 128)
    w_q, w_s = weight_quant(randn(128, 256), 128)
    with pytest.raises(ValueError, match="per-tensor"):
        fp8_gemm(a_q, a_s, w_q, w_s, promote=False)


def test_aligned_sum_cuts_every_term_below_the_largest_ones_last_bit():
    terms = torch.tensor(
        [
            [1.0, 2**-14, 2**-14, 2**-13],  # ulp of the largest: 2^-13
            [1.0, 3 * 2**-15, 0.0, 0.0],
            [-3.0, 2**-12, -(2**-12), 0.5],
        ]
    )  # largest exponent 1: ulp 2^-12
    assert aligned_sum(terms, 13).tolist() == [1 + 2**-13, 1.0, -2.5]  # fp32 would keep 2^-12
    assert aligned_sum(terms, 13, "nearest").tolist() == [1 + 2**-13, 1 + 2**-13, -2.5]
    assert aligned_sum(terms, 23).tolist() == [1 + 2**-12, 1 + 3 * 2**-15, -2.5]


def test_promotion_keeps_accumulation_error_flat_as_k_grows():
    """DeepSeek-V3 3.3.2: a ~14-bit accumulator loses more as K grows; flushing to fp32 every 128
    elements bounds the loss. Positive products lose most: truncation always rounds them down."""
    for dist in ("normal", "abs_normal"):
        small = accumulation_error(512, M=32, N=32, dist=dist)
        large = accumulation_error(4096, M=32, N=32, dist=dist)
        assert large["no_promotion_rel"] > 3 * small["no_promotion_rel"]
        assert large["promotion_rel"] < 1.5 * small["promotion_rel"]
        assert large["no_promotion_rel"] > 10 * large["promotion_rel"]
    assert large["no_promotion_rel"] > 0.03  # |N(0,1)|, K=4096


# ------------------------------------------------------------------------------------------
# Quantized layers
# ------------------------------------------------------------------------------------------
def test_quant_linear_w8a8_is_int8_times_int8_with_two_scales():
    lin = torch.nn.Linear(64, 48, bias=False)
    torch.nn.init.normal_(lin.weight, generator=torch.Generator().manual_seed(7))
    q = QuantLinear.from_linear(lin, "w8a8")
    x = randn(2, 3, 64, seed=8)
    w_q = torch.round(lin.weight / (q.scale.float())).clamp(-127, 127)
    s_x = x.abs().amax(-1, keepdim=True) / 127
    x_q = torch.round(x / s_x).clamp(-127, 127)
    expected = (x_q.double() @ w_q.double().T) * s_x.double() * q.scale.double().T
    with torch.no_grad():
        torch.testing.assert_close(q(x).double(), expected, rtol=1e-6, atol=1e-6)
        assert float((q(x) - lin(x)).norm() / lin(x).norm()) < 0.02


@pytest.mark.parametrize(
    "scheme, group, tol", [("w4a16", None, 0.2), ("w4a16", 32, 0.2), ("fp8", 32, 0.06)]
)
def test_quant_linear_weight_only_and_fp8(scheme, group, tol):
    lin = torch.nn.Linear(64, 40, bias=False)
    q = QuantLinear.from_linear(lin, scheme, group)
    x = randn(5, 64, seed=9)
    lin.requires_grad_(False)
    if scheme == "w4a16":
        assert torch.equal(q(x), F.linear(x, q.weight))
    else:
        x_q, x_s = act_quant(x, 32)
        assert torch.equal(q(x), fp8_gemm(x_q, x_s, q.qweight, q.scale, 32))
    assert float((q(x) - lin(x)).norm() / lin(x).norm()) < tol


@pytest.mark.parametrize("scheme", ["w8a8", "w4a16", "fp8"])
def test_quant_experts_equal_experts_with_their_dequantized_weights(scheme):
    torch.manual_seed(0)
    experts = Experts(4, 64, 32)
    q = QuantExperts.from_experts(experts, scheme, 32)
    x = randn(10, 64, seed=10)
    idx = torch.randint(0, 4, (10, 2), generator=torch.Generator().manual_seed(11))
    wts = torch.rand(10, 2, generator=torch.Generator().manual_seed(12))
    ref = Experts(4, 64, 32)
    with torch.no_grad():
        for n in ("w1", "w2", "w3"):
            getattr(ref, n).copy_(q.dequantized(n))
    with torch.no_grad():
        y, y_ref, y_fp = (
            q(x, idx, wts),
            ref.forward_loop(x, idx, wts),
            experts.forward_loop(x, idx, wts),
        )
    if scheme == "w4a16":
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)  # weight-only: same math
    else:
        assert float((y - y_ref).norm() / y_ref.norm()) < 0.05  # plus activation rounding
    assert float((y - y_fp).norm() / y_fp.norm()) < (0.25 if scheme == "w4a16" else 0.06)


def test_quantize_model_replaces_the_right_modules_and_reports_bytes():
    model = Transformer(preset("tiny")).eval()
    before = bytes_by_kind(model)
    report = quantize_model(clone_model(model), "w4a16", layers="experts", group_size=32)
    assert report.replaced == ["layers.1.ffn.experts"]
    assert report.after["attention"] == before["attention"]
    expert_numel = 3 * 8 * 32 * 64
    assert report.after["routed_experts"] == expert_numel // 2 + expert_numel // 32 * 2
    m = clone_model(model)
    report = quantize_model(m, "fp8", layers="all", group_size=32)
    for kind in ("embedding", "head", "gate", "norms"):  # stay in high precision
        assert report.after[kind] == report.before[kind]
    assert isinstance(m.layers[0].attn.wkv_b, QuantLinear) and isinstance(
        m.layers[1].ffn.experts, QuantExperts
    )
    assert report.total_after == sum(bytes_by_kind(m).values()) < report.total_before
    att = quantize_model(clone_model(model), "w8a8", layers="attention")
    assert all(".attn." in n for n in att.replaced) and len(att.replaced) == 8


@pytest.mark.parametrize("attn_impl", ["naive", "absorb"])
def test_quantized_model_runs_both_mla_paths(attn_impl):
    """A randomly initialised model: errors compound through untrained
    layers, hence loose bounds."""
    model = Transformer(preset("tiny", attn_impl=attn_impl)).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)
        for scheme, tol in (("w8a8", 0.1), ("w4a16", 0.6), ("fp8", 0.3)):
            m = clone_model(model)
            quantize_model(m, scheme, group_size=32)
            out = m(tokens)
            assert torch.isfinite(out).all()
            assert float((out - ref).norm() / ref.norm()) < tol


def test_absorbed_mla_reads_the_quantized_wkv_b():
    """Weight-only INT4: naive and absorbed MLA multiply by the same dequantized weights."""
    model = Transformer(preset("tiny")).eval()
    quantize_model(model, "w4a16", group_size=32)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        naive = model(tokens)
        model.args.attn_impl = "absorb"
        absorbed = model(tokens)
    torch.testing.assert_close(absorbed, naive, rtol=1e-4, atol=1e-4)


def test_memory_model_matches_quantized_bytes():
    """dsim.cost.weight_bytes (the memory model) must count what a QuantizedTensor stores."""
    from dsim.cost import weight_bytes

    w = randn(256, 512)
    n = w.numel()
    assert quantize(w, 8, "channel").nbytes == weight_bytes(n, "int8", 512)
    assert quantize(w, 8, "group", 128).nbytes == weight_bytes(n, "int8", 128)
    assert quantize(w, 4, "group", 128).nbytes == weight_bytes(n, "int4", 128)
    assert quantize(w, 4, "channel").nbytes == weight_bytes(n, "int4", 512)
    assert quantize_fp8(w, 128).nbytes == weight_bytes(n, "fp8", 128 * 128)


# ------------------------------------------------------------------------------------------
# Calibration and QAT
# ------------------------------------------------------------------------------------------
def test_calibration_methods():
    x = randn(50_000, seed=13)
    x[:5] *= 40  # rare outliers
    t = {m: calibrate(x, m) for m in ("absmax", "percentile", "mse", "kl")}
    assert t["absmax"] == float(x.abs().max())
    assert t["percentile"] == pytest.approx(
        float(x.abs().sort().values[math.ceil(0.9999 * 50_000) - 1])
    )
    assert 2.5 < t["kl"] < 0.5 * t["absmax"]  # KL clips the outliers

    def mse(T):
        s = T / 127
        return float(((torch.clamp(torch.round(x / s), -127, 127) * s - x) ** 2).mean())

    assert mse(t["mse"]) <= mse(t["absmax"]) and mse(t["mse"]) <= mse(
        t["kl"]
    )  # MSE is what it minimises
    u = torch.rand(50_000, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert calibrate(u, "kl") == pytest.approx(
        float(u.abs().max()), rel=0.01
    )  # nothing worth clipping


def test_fake_quant_passes_the_gradient_straight_through():
    w = randn(8, 64, seed=14).requires_grad_()
    out = fake_quant(w, 4, "group", 32)
    assert torch.equal(out.detach(), dequantize(quantize(w.detach(), 4, "group", 32)))
    (out * torch.arange(64.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(64.0).expand(8, 64))


def test_qat_model_equals_its_quantized_conversion():
    model = Transformer(preset("tiny")).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    prepare_qat(model, 4, 32)
    with torch.no_grad():
        qat_out = model(tokens)
    report = finish_qat(model, group_size=32)
    assert report.scheme == "w4a16" and len(report.replaced) == 15
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), qat_out, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Measured on a tiny model trained on real text
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    from dsim.train import get_corpus, train

    model, _ = train("tiny", steps=60, batch_size=8, seq_len=64, progress=False)
    return model.eval(), get_corpus("val", 60_000), get_corpus("train", 400_000)


def test_calibrated_static_w8a8_stays_close(trained):
    from dsim.train import evaluate, get_batch

    model, val, train_data = trained
    m = clone_model(model)
    quantize_model(m, "w8a8")
    gen = torch.Generator().manual_seed(0)
    thresholds = calibrate_model(
        m, [get_batch(train_data, 4, 64, gen)[0] for _ in range(2)], "percentile"
    )
    assert len(thresholds) == 14 + 2  # 14 QuantLinear + in/hidden
    assert m.layers[0].attn.wq.act_scale is not None
    base = evaluate(model, val, seq_len=64, batches=2)
    assert abs(evaluate(m, val, seq_len=64, batches=2) - base) < 0.1


def test_accuracy_size_table(trained):
    model, val, train_data = trained
    rows = accuracy_size_table(
        model,
        val,
        group_size=32,
        train_data=train_data,
        qat_steps=10,
        seq_len=64,
        batches=2,
        batch_size=8,
    )
    by = {r["scheme"]: r for r in rows}
    assert list(by) == [
        "fp32",
        "bf16",
        "W8A8",
        "W4A16 per-channel",
        "W4A16 g32",
        "FP8 32x32",
        "fp32 +10 steps",
        "QAT INT4 g32",
    ]
    assert all(math.isfinite(r["bits_per_byte"]) for r in rows)
    assert by["bf16"]["bytes"] * 2 == by["fp32"]["bytes"]
    assert (
        by["W4A16 per-channel"]["bytes"]
        < by["W4A16 g32"]["bytes"]
        < by["FP8 32x32"]["bytes"]
        < by["bf16"]["bytes"]
    )
    assert by["W4A16 g32"]["bytes"] == by["QAT INT4 g32"]["bytes"]
    assert abs(by["W8A8"]["delta_bpb"]) < 0.02 and abs(by["FP8 32x32"]["delta_bpb"]) < 0.05
    # the linear layers shrink to about a quarter (FP8, W8) and an eighth (INT4) plus scales
    assert by["FP8 32x32"]["linear_bytes"] / by["fp32"]["linear_bytes"] == pytest.approx(
        0.25, abs=0.01
    )
    assert by["W4A16 g32"]["linear_bytes"] / by["fp32"]["linear_bytes"] == pytest.approx(
        1 / 8 + 2 / 32 / 4, abs=0.01
    )


# ------------------------------------------------------------------------------------------
# The GPU benchmark's logic, on CPU
# ------------------------------------------------------------------------------------------
def test_gemm_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "quant_cpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gemm_fp8.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["torch"] == torch.__version__
    kernels = {c["kernel"] for c in data["timing"]}
    assert "bf16" in kernels and all(c["ms"] > 0 for c in data["timing"] if c.get("ms"))
    ks = sorted({r["k"] for r in data["accuracy_vs_k"]})
    emu = {(r["k"], r["kernel"]): r["rel_err"] for r in data["accuracy_vs_k"]}
    assert emu[(ks[-1], "emulated_no_promotion")] > emu[(ks[0], "emulated_no_promotion")]


# ------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the cause, never NaN and never another exception type
# ------------------------------------------------------------------------------------------
def test_float64_beyond_float32_range_raises_instead_of_nan():
    """Issue 19, defect 5: float64 values past float32's range were quantized to NaN codes."""
    x = torch.tensor([[1e39, 1.0, -2.0, 3.0]], dtype=torch.float64)
    for f in (
        lambda: quantize(x),
        lambda: quantize_fp8(x.expand(2, 4).clone(), 2),
        lambda: act_quant(x, 2),
        lambda: calibrate(x),
        lambda: fake_quant(x, 8),
    ):
        with pytest.raises(ValueError, match="float32"):
            f()
    # just inside the range still works (and stays finite)
    ok = quantize(torch.tensor([[3e38, 1.0]], dtype=torch.float64), 8, scale_dtype=torch.float32)
    assert torch.isfinite(dequantize(ok)).all()


def test_float16_scales_that_overflow_raise():
    """Issue 19, defect 5: INT4 with |x| > 65504 * 7 = 458,528 gave an inf fp16 scale and NaN."""
    x = torch.tensor([[5e5, 1.0, -3.0, 0.5]])
    with pytest.raises(ValueError, match="458528.*bfloat16"):
        quantize(x, 4, scale_dtype=torch.float16)
    with pytest.raises(ValueError, match="float16"):
        fake_quant(torch.tensor([[1e7, 1.0]]), 8, scale_dtype=torch.float16)
    # the bound itself: 458,528 quantizes to 7 * 65504 exactly; bf16 scales take 5e5 in stride
    at = quantize(torch.tensor([[458528.0, 1.0]]), 4, scale_dtype=torch.float16)
    assert dequantize(at)[0, 0] == 458528.0
    assert torch.isfinite(dequantize(quantize(x, 4))).all()


def test_float16_scales_never_underflow_to_zero():
    """Issue 19, defect 5: a scale below float16's smallest normal number is raised to it, so tiny
    groups dequantize to finite values within half a step (never 0 * inf or 0 / 0)."""
    for bits in (4, 8):
        for sym in (True, False):
            x = torch.tensor([[1e-9, -3e-12, 0.0, 2e-30]])
            qt = quantize(x, bits, symmetric=sym, scale_dtype=torch.float16)
            s = float(qt.scale.float().max())
            assert s >= torch.finfo(torch.float16).tiny
            out = dequantize(qt)
            assert torch.isfinite(out).all() and float((out - x).abs().max()) <= s / 2


def test_asymmetric_range_that_overflows_float32_is_computed_wider():
    """Issue 19, defect 5: asymmetric INT8 of [-3e38, 3e38]: max - min overflowed float32 to inf
    and gave NaN; the range is now taken in float64 (the scale itself fits)."""
    x = torch.tensor([[3e38, -3e38, 1e38, 0.0]])
    for sd in (torch.bfloat16, torch.float32):
        qt = quantize(x, 8, symmetric=False, scale_dtype=sd)
        out = dequantize(qt)
        assert torch.isfinite(out).all()
        # within one step: the rounded zero point may clip an end of the range by half a step
        assert float((out.double() - x.double()).abs().max()) <= float(qt.scale.float())
    # past what the rounded-up scale can give back, a ValueError (not inf)
    with pytest.raises(ValueError, match="float32's maximum"):
        quantize(torch.tensor([[3.4e38, -1.0]]), 4)


def test_fp8_group_size_zero_is_an_error_not_128():
    """Issue 19, defect 15: quantize_weight(w, 'fp8', 0) silently used 128x128 blocks."""
    from dsim.quant import quantize_weight

    with pytest.raises(ValueError, match="block_size = 0"):
        quantize_weight(randn(4, 4), "fp8", 0)
    assert quantize_weight(randn(4, 4), "fp8", None).group_size == 128  # None: DeepSeek's 128


def test_bad_input_raises_value_error_not_index_zero_division_or_runtime_error():
    """Issue 19, defect 15: these raised RuntimeError, ZeroDivisionError, IndexError or
    NotImplementedError; every one is now a ValueError naming the argument."""
    cases = [
        (lambda: quantize(torch.zeros(0, 4)), "empty"),
        (lambda: quantize(torch.zeros(0, 4), 4, "group", 2), "empty"),
        (lambda: calibrate(randn(100), "kl", num_bins=0), "num_bins"),
        (lambda: calibrate(randn(100), "kl", num_bins=10), "num_bins"),
        (lambda: calibrate(randn(100), "mse", max_samples=0), "max_samples"),
        (lambda: accumulation_error(0), "K = 0"),
        (lambda: accumulation_error(64, M=0), "M = 0"),
        (lambda: accumulation_error(64, chunk=0), "chunk = 0"),
        (lambda: fp8_gemm(randn(2, 4), torch.ones(1), randn(4), torch.ones(1), 2), "b \\[N, K\\]"),
        (lambda: weight_dequant(torch.zeros(4), torch.ones(2), 2), "weight_dequant"),
        (lambda: act_quant(torch.tensor(1.0), 2), "act_quant"),
        (lambda: act_quant(randn(4), True), "block_size = True"),
        (lambda: quantize(randn(3, 4)).select(5), "select index"),
        (lambda: unpack_int4(torch.tensor([1.5]), 2), "uint8"),
        (lambda: aligned_sum(randn(3), 2.5), "mantissa_bits"),
        (lambda: quantize(randn(3, 4), 8.0), "bits"),
        (lambda: aligned_sum(torch.zeros(3, 0)), "aligned_sum needs terms"),
        (lambda: fp8_gemm(torch.zeros(2, 0), torch.ones(1), torch.zeros(3, 0), torch.ones(1)), "K"),
        (lambda: pack_int4(torch.tensor(3)), "integer codes"),
        (lambda: pack_int4(torch.tensor([1.5, 2.0])), "integer codes"),  # was truncated to 1
        (lambda: quantize_model("tiny", "w8a8"), "nn.Module"),
        (lambda: bytes_by_kind("tiny"), "nn.Module"),
        (lambda: prepare_qat(Transformer(preset("tiny")), 4, 0), "group_size = 0"),
    ]
    for f, match in cases:
        with pytest.raises(ValueError, match=match):
            f()


def test_calibrate_model_without_batches_raises():
    """Issue 19, defect 15: an empty batch list left every layer uncalibrated without a word."""
    model = Transformer(preset("tiny")).eval()
    quantize_model(model, "w8a8")
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_model(model, [])


def test_no_message_advises_a_pad_option_the_function_lacks():
    """Issue 19, defect 15: fake_quant and quantize_weight said 'pass pad=True', which they do not
    accept; only quantize(), which has `pad`, suggests it."""
    from dsim.quant import quantize_weight

    x = randn(4, 5)
    for f in (lambda: fake_quant(x, 4, "group", 2), lambda: quantize_weight(x, "w4a16", 2)):
        with pytest.raises(ValueError, match="divisor of 5") as e:
            f()
        assert "pad" not in str(e.value)
    with pytest.raises(ValueError, match="pad=True"):
        quantize(x, 4, "group", 2)


def test_fp8_power_of_two_scale_that_overflows_on_dequantization_raises():
    """Issue 19, defect 5: ue8m0 rounds the scale up to 2^120 for max|x| = 3.3e38; a code of 256
    then dequantized to 2^128 = inf. Found by tests/test_properties_lib.py."""
    x = torch.tensor([[0.0, 0.0], [0.0, 3.2964853281345433e38]])
    with pytest.raises(ValueError, match="overflows float32"):
        act_quant(x, 2, "ue8m0")
    with pytest.raises(ValueError, match="overflows float32"):
        quantize_fp8(x, 2, "ue8m0")
    assert torch.isfinite(dequantize(quantize_fp8(x, 2))).all()  # fp32 scales fit
