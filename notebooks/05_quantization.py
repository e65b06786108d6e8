# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quantization: fewer bits per number, and what they cost
#
# DeepSeek-V3 trains and serves its linear layers in FP8, and people who run it on fewer GPUs squeeze it
# further into INT8 or INT4. Each step halves the bytes a weight costs, and so roughly halves the memory a
# checkpoint needs and the time a memory-bound decode step spends reading it. This notebook measures what
# that costs in accuracy and what it buys in speed, with `dsim.quant`:
#
# 1. how INT8, INT4 and FP8 map the values of a real weight and a real activation, and what a scale shared
#    by fewer numbers buys;
# 2. FP8 as DeepSeek-V3 does it: 1x128 activation tiles, 128x128 weight blocks, and the fp32 *promotion*
#    that keeps a long dot product accurate;
# 3. bits per byte and bytes of the tiny model under each scheme, calibration of activation ranges, and
#    quantization-aware training;
# 4. what FP8 and INT8 GEMMs gain on an H100 (`dsim/data/quant_gpu.json`, from `bench/gemm_fp8.py`).
#
# The model is the tour's: the `tiny` preset trained for 200 steps on the standard library's source.

# %%
# %matplotlib inline
import json
from pathlib import Path

from dsim import viz

viz.setup()
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import dsim
from dsim import quant as Q
from dsim.config import preset
from dsim.cost import params, weight_bytes
from dsim.train import TrainConfig, evaluate, get_batch, get_corpus, train

torch.manual_seed(0)
model, history = train("tiny", TrainConfig(steps=200, seed=0), progress=False)
model.eval()
val, train_data = get_corpus("val"), get_corpus("train")
base_bpb = evaluate(model, val)
print(
    f"tiny model: {sum(p.numel() for p in model.parameters()):,} parameters, "
    f"held-out {base_bpb:.1f} bits per byte"
)
# one decimal: the loss moves by ~0.01 between CPUs (float kernels), the checks allow 5x that
assert abs(base_bpb - 3.10) < 0.05, f"held-out {base_bpb:.3f} bits/byte: expected 3.10 +- 0.05"

GPU_JSON = Path(dsim.__file__).resolve().parent / "data" / "quant_gpu.json"
gpu = json.loads(GPU_JSON.read_text()) if GPU_JSON.exists() else None
print(
    f"GPU measurements: {gpu['device']}, torch {gpu['torch']}"
    if gpu
    else "GPU measurements: dsim/data/quant_gpu.json is absent; run bench/gemm_fp8.py on a GPU to add them"
)

# %% [markdown]
# ## How a quantizer maps numbers
#
# A symmetric $b$-bit quantizer gives a group of numbers $x$ one scale $s$ and stores integers $q$:
#
# $$s = \frac{\max |x|}{q_{\max}},\qquad q = \operatorname{clamp}\!\left(\operatorname{round}\!\left(\frac{x}{s}\right), -q_{\max}, q_{\max}\right),\qquad \hat x = s\,q,\qquad q_{\max} = 2^{b-1}-1 .$$
#
# The grid is uniform with step $s$, so each number moves by at most $s/2$. The largest number of the group
# sets $s$ for all of them: one outlier stretches the grid and the small numbers fall into a few levels near zero.
# Sharing a scale among fewer numbers (per row, per group of 32 or 128 inputs) limits the damage to that row or group.
# Below, a weight (the dense FFN's up-projection) and an activation (the SwiGLU hidden state that enters the
# down-projection), both from the trained model, with the 15 levels of a per-tensor INT4 grid:

# %% tags=["nbval-ignore-output", "anchor:quantizer", "remove-input"]
w = model.layers[0].ffn.w1.weight.detach()  # dense FFN up-projection [192, 64]
seen = {}
hook = model.layers[0].ffn.w2.register_forward_hook(
    lambda m, inp, out: seen.__setitem__("h", inp[0].detach())
)
x_tokens, _ = get_batch(val, 4, 128, torch.Generator().manual_seed(0))
with torch.no_grad():
    model(x_tokens)
hook.remove()
h = seen["h"].reshape(-1, seen["h"].shape[-1])  # input of the dense w2: [512 tokens, 192]


def describe(name, t):
    kurt = float(((t - t.mean()) ** 4).mean() / t.var() ** 2)
    crest = float(t.abs().max() / t.std())
    print(f"{name:34s} {str(tuple(t.shape)):12s} max|x|/std {crest:5.1f}   kurtosis {kurt:5.1f}")
    return crest, kurt


w_crest, w_kurt = describe("weight: dense FFN w1", w)
h_crest, h_kurt = describe("activation: input of dense FFN w2", h)
print("(a Gaussian has kurtosis 3; heavy tails and outliers raise it)")
# The model is trained here, so its numbers depend on the CPU's float kernels (AVX2 and AVX-512
# sum in different orders; 200 steps amplify the last bit): they move by up to ~0.01 bits/byte,
# 0.1 dB or 1% between machines. The cell's output is not compared; these checks are.
# What the text relies on: the weight is close to Gaussian, the activation is heavy-tailed.
assert 2.5 < w_kurt < 4 and w_crest < 6, (w_kurt, w_crest)
assert h_kurt > 10 and h_crest > 8, (h_kurt, h_crest)

fig, axes = plt.subplots(1, 2, figsize=(7.3, 3))
for ax, (name, t) in zip(axes, (("weight: dense FFN w1", w), ("activation: input of dense w2", h))):
    ax.hist(t.flatten().numpy(), bins=200, color="C0", log=True)
    s = float(t.abs().max()) / 7
    for level in range(-7, 8):
        ax.axvline(level * s, color="C3", lw=0.5, alpha=0.6)
    ax.set_title(name)
    ax.set_xlabel("value")
    ax.set_ylabel("count (log)")
axes[0].plot([], [], color="C3", lw=0.5, label="INT4 per-tensor levels")
axes[0].legend(fontsize=8)
viz.show(
    fig,
    "Histograms of a weight matrix and an activation of the tiny model (log counts), with the levels of per-tensor INT4 marked: one outlier sets the step for all.",
)

# %% [markdown]
# The quality of a quantized tensor is its signal-to-quantization-noise ratio,
# $\mathrm{SQNR} = 10 \log_{10} \left(\sum x^2 / \sum (x-\hat x)^2\right)$ in dB. For a uniform grid the rounding
# error is close to uniform on $[-s/2, s/2]$, with mean square $s^2/12$; every extra bit halves $s$, which is
# $20 \log_{10} 2 \approx 6.02$ dB. FP8 E4M3 spends its 8 bits differently: 4 exponent bits and 3 mantissa
# bits give a *relative* step of $2^{-3}$ at every magnitude, so small numbers keep their precision, but even
# the largest ones carry only 3 mantissa bits. The table computes the SQNR of each format and scale granularity:

# %% tags=["nbval-ignore-output", "anchor:sqnr", "remove-input"]
FORMATS = ("INT sym", "INT asym", "FP8 E4M3")


def roundtrip(x, fmt="INT sym", bits=8, group="32"):
    # x quantized and dequantized. group: "tensor", "row" or a group size (inputs sharing a scale).
    if fmt == "FP8 E4M3":  # DeepSeek's act_quant with tiles of `group`
        flat = x.reshape(1, -1) if group == "tensor" else x
        g = flat.shape[-1] if group in ("tensor", "row") else int(group)
        y, s = Q.act_quant(flat, g)
        return (y.float().view(*flat.shape[:-1], -1, g) * s[..., None]).flatten(-2).reshape(x.shape)
    granularity = {"tensor": "tensor", "row": "channel"}.get(group, "group")
    qt = Q.quantize(
        x,
        bits,
        granularity,
        int(group) if granularity == "group" else 128,
        symmetric=(fmt == "INT sym"),
    )
    return Q.dequantize(qt)


def sqnr(x, x_hat):
    return float(10 * torch.log10(x.pow(2).sum() / (x - x_hat).pow(2).sum()))


GROUPS = ("tensor", "row", "32")
table = {}
print(
    f"{'SQNR (dB)':22s}"
    + "".join(f"{'weight ' + g:>14s}" for g in GROUPS)
    + "".join(f"{'act ' + g:>11s}" for g in GROUPS)
)
for fmt, bits in (("INT sym", 4), ("INT asym", 4), ("INT sym", 8), ("FP8 E4M3", 8)):
    vals = [sqnr(t, roundtrip(t, fmt, bits, g)) for t in (w, h) for g in GROUPS]
    table[(fmt, bits)] = vals
    print(
        f"{fmt + ' ' + str(bits) + '-bit':22s}"
        + "".join(f"{v:14.1f}" for v in vals[:3])
        + "".join(f"{v:11.1f}" for v in vals[3:])
    )
print(
    "\nper tensor, symmetric INT: measured against the uniform-noise formula 10 log10(12 q_max^2 mean(x^2) / max|x|^2)"
)
for name, t in (("weight", w), ("activation", h)):
    for bits in (4, 8):
        qmax = 2 ** (bits - 1) - 1
        pred = float(10 * torch.log10(12 * qmax**2 * t.pow(2).mean() / t.abs().max() ** 2))
        print(
            f"  {name:10s} INT{bits}: formula {pred:5.1f} dB, measured {sqnr(t, roundtrip(t, 'INT sym', bits, 'tensor')):5.1f} dB"
        )
d = table[("INT sym", 8)][1] - table[("INT sym", 4)][1]
print(
    f"\nINT8 minus INT4, weight per row: {d:.1f} dB (uniform-noise theory: 4 bits x 6.02 dB = 24.1 dB)"
)
print(
    f"per-32 groups instead of one scale per tensor, INT4 activation: {table[('INT sym', 4)][5] - table[('INT sym', 4)][3]:+.1f} dB"
)
# The model is trained here, so its numbers depend on the CPU's float kernels (AVX2 and AVX-512
# sum in different orders; 200 steps amplify the last bit): they move by up to ~0.01 bits/byte,
# 0.1 dB or 1% between machines. The cell's output is not compared; these checks are.
# What the text relies on: finer scales help every format; asymmetric beats symmetric INT4;
# 4 more bits give about 24 dB; the noise formula holds for the weight (within 0.5 dB) and
# underestimates the peaked activation (by more than 2 dB).
for v in table.values():
    assert v[0] < v[1] < v[2] and v[3] < v[4] < v[5], v
assert all(a > s for a, s in zip(table[("INT asym", 4)], table[("INT sym", 4)]))
assert abs(d - 24.1) < 2, d


def formula(t, bits):
    qmax = 2 ** (bits - 1) - 1
    return float(10 * torch.log10(12 * qmax**2 * t.pow(2).mean() / t.abs().max() ** 2))


for bits in (4, 8):
    assert abs(formula(w, bits) - sqnr(w, roundtrip(w, "INT sym", bits, "tensor"))) < 0.5, bits
assert sqnr(h, roundtrip(h, "INT sym", 4, "tensor")) > formula(h, 4) + 2

fig, axes = plt.subplots(1, 2, figsize=(7.3, 3), sharey=True)
labels = [f"{f}\n{b}-bit" for f, b in table]
for ax, offset, name in ((axes[0], 0, "weight"), (axes[1], 3, "activation")):
    for j, g in enumerate(GROUPS):
        ax.bar(
            np.arange(len(table)) + (j - 1) * 0.27,
            [v[offset + j] for v in table.values()],
            0.27,
            label=f"scale per {g}" if g != "32" else "scale per 32 inputs",
        )
    ax.set_xticks(np.arange(len(table)), labels, fontsize=8)
    ax.set_title(name)
axes[0].set_ylabel("SQNR (dB), higher is better")
axes[0].legend(fontsize=8)
viz.show(
    fig,
    "Signal-to-quantization-noise ratio of each format and bit width, with one scale per tensor, per row or per 32 inputs (higher is better).",
)

# %% [markdown]
# ## FP8 as DeepSeek-V3 does it
#
# DeepSeek-V3 (section 3.3) keeps the embedding, the output head, the gate, the norms and attention's softmax in
# BF16/FP32 and runs every linear layer in FP8 E4M3 (largest value 448) with fine-grained scales: one scale per
# $1 \times 128$ tile of an activation (per token and per 128 channels) and one per $128 \times 128$ block of a weight,
#
# $$s = \frac{\max(\max_{\text{tile}} |x|,\ 10^{-4})}{448},\qquad x_{\text{fp8}} = \operatorname{E4M3}(x / s).$$
#
# `dsim.quant` implements the reference kernels of DeepSeek's `inference/kernel.py` in plain PyTorch, with their
# names and shapes: `act_quant(x) -> (y, s)` with `s` of shape `[..., K/128]`, `weight_quant` /
# `weight_dequant` with scales `[N/128, K/128]` (the checkpoint's `weight_scale_inv`), and `fp8_gemm(a, a_s, b, b_s)`.
# The tiny model is narrower than 128, so below the tile and block side is 32.
# `scale_fmt="ue8m0"` rounds each scale up to a power of two (DeepSeek-V3.1's format: an 8-bit exponent, no mantissa).

# %% tags=["nbval-ignore-output", "anchor:fp8", "remove-input"]
w2 = model.layers[0].ffn.w2.weight.detach()  # [64, 192]
x_q, x_s = Q.act_quant(h, 32)
w_q, w_s = Q.weight_quant(w2, 32)
print(f"activation {tuple(h.shape)} -> {x_q.dtype} {tuple(x_q.shape)} + scales {tuple(x_s.shape)}")
print(f"weight     {tuple(w2.shape)} -> {w_q.dtype} {tuple(w_q.shape)} + scales {tuple(w_s.shape)}")
y_ref = h @ w2.T
gemm_err = {}
for fmt in (None, "ue8m0"):
    x_q, x_s = Q.act_quant(h, 32, fmt)
    w_q, w_s = Q.weight_quant(w2, 32, fmt)
    y = Q.fp8_gemm(x_q, x_s, w_q, w_s, 32)
    gemm_err[fmt] = float((y - y_ref).norm() / y_ref.norm())
    print(f"fp8_gemm, scales {fmt or 'fp32'}: relative error vs fp32 {gemm_err[fmt]:.4f}")
# The errors depend on the trained weights, which differ in the last digits between CPUs (see the
# table above); the output is not compared. Checked instead: E4M3's 3 mantissa bits give a few
# percent, and power-of-two scales (rounded up) cost a little more precision than exact ones.
assert 0.01 < gemm_err[None] < gemm_err["ue8m0"] < 0.05, gemm_err

# %% [markdown]
# ## Accumulation: why DeepSeek promotes every 128 elements
#
# A GEMM's dot products run over $K$ = the input width (7168 for DeepSeek-V3's hidden size). Section 3.3.2
# of the DeepSeek-V3 report says that the H800's FP8 tensor cores accumulate with only about 14 bits of
# precision, and that with $K = 4096$ this alone gave a maximum relative error near 2%. Their fix: after every
# $N_C = 128$ elements of $K$ (four WGMMA instructions) the partial sum is copied to FP32 registers on the CUDA
# cores, multiplied by the two block scales, and added there. Fine-grained scales need this step anyway: a scale
# that changes every 128 elements of $K$ can only be applied when a partial sum leaves the tensor core.
#
# `dsim.quant.aligned_sum` models the tensor core's adder as Fasi, Higham, Mikaitis and Pranesh (2021) describe
# NVIDIA's: the running sum and a chunk of products are aligned to the largest exponent among them, every term
# keeps 13 bits below that exponent's leading bit (the rest is cut off), and the aligned terms are added.
# `fp8_gemm(..., acc_mantissa_bits=13, promote=False)` runs the whole $K$ through it; `promote=True` flushes it
# into FP32 every 128 elements. The reference is the exact product of the same FP8 numbers, so only accumulation
# is measured. Positive products (`abs_normal`) are the hard case: cutting bits always rounds them down, and the
# losses add up instead of cancelling. Where the H100 measurements exist, the real `torch._scaled_mm` with
# cuBLAS's fast accumulation (no promotion) and without it are drawn on top:

# %% tags=["anchor:accum", "remove-input"]
KS = [256, 512, 1024, 2048, 4096, 8192, 16384]
emu = {
    (d, k): Q.accumulation_error(k, M=64, N=64, dist=d)
    for d in ("normal", "abs_normal")
    for k in KS
}
real = {}
if gpu:
    for r in gpu["accuracy_vs_k"]:
        if "rel_err" in r and r["kernel"] in ("scaled_mm_fast_accum", "scaled_mm"):
            real[(r["dist"], r["kernel"], r["k"])] = r["rel_err"]

fig, axes = plt.subplots(1, 2, figsize=(7.3, 3.4), sharey=True)
for ax, d in zip(axes, ("normal", "abs_normal")):
    ax.loglog(
        KS,
        [emu[(d, k)]["no_promotion_rel"] for k in KS],
        "o-",
        color="C3",
        label="model, no promotion",
    )
    ax.loglog(
        KS,
        [emu[(d, k)]["promotion_rel"] for k in KS],
        "o-",
        color="C0",
        label="model, promotion every 128",
    )
    for kernel, color, label in (
        ("scaled_mm_fast_accum", "C3", "H100, fast accumulation"),
        ("scaled_mm", "C0", "H100, cuBLAS default"),
    ):
        pts = [(k, real[(d, kernel, k)]) for k in KS if (d, kernel, k) in real]
        if pts:
            ax.loglog(*zip(*pts), "x--", color=color, ms=8, label=label)
    ax.set_title(f"A, B ~ {'N(0,1)' if d == 'normal' else '|N(0,1)|'}")
    ax.set_xlabel("K")
axes[0].set_ylabel("relative error of C = A B^T")
axes[0].legend(fontsize=7)
viz.show(
    fig,
    "Relative error of an FP8 matrix product against the inner dimension K, without and with promotion to FP32 every 128 elements (model: lines, measured: crosses).",
)

print(
    f"{'K':>6}"
    + "".join(f"{d + ' ' + c:>24s}" for d in ("normal", "abs") for c in ("model", "H100 fast"))
)
for k in KS:
    cells = []
    for d in ("normal", "abs_normal"):
        cells += [
            f"{emu[(d, k)]['no_promotion_rel']:24.2e}",
            f"{real[(d, 'scaled_mm_fast_accum', k)]:24.2e}"
            if (d, "scaled_mm_fast_accum", k) in real
            else f"{'-':>24s}",
        ]
    print(f"{k:6d}" + "".join(cells))
print(
    f"\nwith promotion every 128 elements, the model's error at K=16384 is "
    f"{emu[('abs_normal', 16384)]['promotion_rel']:.1e} (|N(0,1)|) and {emu[('normal', 16384)]['promotion_rel']:.1e} (N(0,1))"
)

# %% [markdown]
# ## Accuracy against size on the trained model
#
# `quantize_model(model, scheme)` replaces every linear layer (attention projections, the dense FFN, the shared
# expert) with a `QuantLinear` and the routed experts with `QuantExperts`, whose stacked weights `[E, I, D]` are
# quantized expert by expert. The embedding, the output head, the gate and the norms stay as they are, as in DeepSeek-V3.
# The schemes:
#
# * **W8A8**: INT8 weights with one scale per output channel, INT8 activations with one scale per token computed on
#   the fly; an INT8 x INT8 GEMM accumulates exactly in INT32 and applies both scales at the end.
# * **W4A16**: INT4 weights (two per byte) per output channel or per group of 32 inputs; activations stay in 16/32 bits,
#   the weight is dequantized inside the GEMM. This saves memory and bandwidth, not FLOPs.
# * **FP8**: DeepSeek's scheme above with 32x32 blocks and 1x32 tiles.
# * **QAT INT4**: 30 steps of fine-tuning in which every weight is replaced by its INT4 round trip in the forward pass,
#   then W4A16 per group. Because those 30 steps are also more training, the table has a control: the same
#   30 steps in FP32.
#
# `accuracy_size_table` measures each on held-out text (`dsim.train.evaluate`, the same windows for every row).
# `bytes` is the whole checkpoint, `linear` the quantized layers alone; the FP32 model stores 4 bytes per parameter.

# %% tags=["nbval-ignore-output", "anchor:accuracy", "remove-input"]
rows = Q.accuracy_size_table(model, val, group_size=32, train_data=train_data, qat_steps=30)
print(
    f"{'scheme':20}{'weights':24}{'activations':22}{'bits/byte':>10}{'vs fp32':>9}{'bytes':>10}{'linear':>9}{'ratio':>7}"
)
for r in rows:
    print(
        f"{r['scheme']:20}{r['weights']:24}{r['activations']:22}{r['bits_per_byte']:10.3f}{r['delta_bpb']:+9.3f}"
        f"{r['bytes']:10,}{r['linear_bytes']:9,}{r['ratio']:7.3f}"
    )
by = {r["scheme"]: r for r in rows}
qat, ctrl = by["QAT INT4 g32"], by["fp32 +30 steps"]
print(
    f"\nINT4 g32 costs {by['W4A16 g32']['delta_bpb']:+.3f} bits/byte after training (post-training quantization) and "
    f"{qat['bits_per_byte'] - ctrl['bits_per_byte']:+.3f} against the same fine-tune in fp32 (QAT)"
)
# Every bits/byte above comes from the model trained here and moves by up to ~0.01 between CPUs
# (float kernels); the sizes are exact. The output is not compared; checked instead, with margins
# of at least twice that spread: 8- and 16-bit formats cost under 0.02 bits/byte, INT4 between
# 0.01 and 0.05, 30 more steps help, and QAT recovers at least half of INT4's cost.
for name in ("bf16", "W8A8", "FP8 32x32"):
    assert abs(by[name]["delta_bpb"]) < 0.02, (name, by[name]["delta_bpb"])
for name in ("W4A16 per-channel", "W4A16 g32"):
    assert 0.01 < by[name]["delta_bpb"] < 0.05, (name, by[name]["delta_bpb"])
assert ctrl["delta_bpb"] < -0.02, ctrl["delta_bpb"]
assert qat["bits_per_byte"] - ctrl["bits_per_byte"] < 0.5 * by["W4A16 g32"]["delta_bpb"]

fig, ax = plt.subplots(figsize=(7, 3.6))
for i, r in enumerate(rows):
    ax.scatter(r["linear_bytes"] / 1e3, r["bits_per_byte"], color=f"C{i}", s=40, label=r["scheme"])
ax.set_xscale("log")
ax.set_xlabel("bytes of the quantized layers (kB, log)")
ax.set_ylabel("held-out bits per byte")
ax.legend(fontsize=7, ncol=2)
ax.set_title("tiny model: accuracy against size")
viz.show(
    fig,
    "The tiny model's held-out loss against the bytes of its quantized layers, for each quantization scheme.",
)

# %% [markdown]
# **Quantization-aware training** uses a *straight-through estimator*. The forward pass sees
# $\hat W = s \cdot \operatorname{round}(W/s)$; rounding has zero derivative almost everywhere, so the backward pass
# pretends it is the identity, $\partial \hat W / \partial W := I$ (`fake_quant(x, bits)` returns
# `x + (x_hat - x).detach()`). The optimizer keeps updating the full-precision latent weights $W$, and learns to
# place them where rounding hurts the loss least. `prepare_qat` attaches the fake quantizer to each weight as a
# `torch.nn.utils.parametrize` parametrization; `finish_qat` removes it and quantizes for real, and the quantized
# model computes exactly what the QAT model computed.
#
# ## Calibration: static activation ranges
#
# Per-token scales cost a max-reduction over each row at run time. A *static* scale is computed once, from sample
# data, and shared by every token. The choice of the clipping threshold $T$ ($s = T/127$) trades clipping the rare
# large values against rounding the many small ones:
#
# * **absmax**: $T = \max|x|$, nothing clipped;
# * **percentile**: $T$ = the 99.99th percentile of $|x|$;
# * **MSE**: the $T$ that minimises $\mathbb{E}[(x-\hat x)^2]$ on the samples;
# * **KL** (TensorRT's entropy calibration): histogram $|x|$ into 2048 bins and pick the number of bins $i$ whose
#   clipped distribution $P$ (everything beyond bin $i$ folded into it) loses the least information when merged into
#   128 levels, $\min_i \mathrm{KL}(P \| Q)$ (a numba loop, `dsim.quant.calibration._kl_search`).
#
# On the activation from above, and then as the static scales of a W8A8 model calibrated on two training batches:

# %% tags=["nbval-ignore-output", "anchor:calibration", "remove-input"]
METHODS = ("absmax", "percentile", "mse", "kl")
thresholds = {}
for bits in (8, 4):
    qmax = 2 ** (bits - 1) - 1
    out = []
    for method in METHODS:
        T = thresholds[method, bits] = Q.calibrate(h, method, bits)
        s = T / qmax
        h_hat = torch.clamp(torch.round(h / s), -qmax, qmax) * s
        out.append(f"{method} T={T:6.2f} ({sqnr(h, h_hat):5.1f} dB)")
    print(f"INT{bits}: " + ",  ".join(out))

calib = [get_batch(train_data, 8, 128, torch.Generator().manual_seed(i))[0] for i in range(2)]
print(
    f"\nW8A8 with static per-tensor activation scales (dynamic per token: {by['W8A8']['bits_per_byte']:.3f}, fp32: {base_bpb:.3f})"
)
for method in METHODS:
    m = Q.clone_model(model)
    Q.quantize_model(m, "w8a8")
    Q.calibrate_model(m, calib, method)
    static = evaluate(m, val)
    print(f"  {method:10s} {static:.3f} bits/byte")
    # bits/byte and thresholds move between CPUs (0.01 bits/byte, KL's T by up to 0.6: its search
    # over histogram bins jumps); the output is not compared. Checked: static scales cost < 0.03.
    assert abs(static - base_bpb) < 0.03, (method, static, base_bpb)
# absmax clips nothing; every other method clips, and fewer bits make MSE clip harder
for bits in (8, 4):
    assert thresholds["absmax", bits] == float(h.abs().max())
    assert all(thresholds[m, bits] < thresholds["absmax", bits] for m in METHODS[1:])
assert thresholds["mse", 4] < thresholds["mse", 8]

# %% [markdown]
# ## What FP8 and INT8 buy on an H100
#
# `bench/gemm_fp8.py` times $C = A B^\top$ for DeepSeek-V3's expert shapes on an H100: the fused gate and up
# projection ($n = 4096$, $k = 7168$) and the down projection ($n = 7168$, $k = 2048$), with $m$ = 1 to 64 tokens
# (decode, where an expert sees a few tokens) and 4096 or 16384 (prefill). Each kernel runs in a CUDA graph over
# enough weight copies that the L2 cache cannot hold them; ratios are against bf16 measured in the same run.
# A decode GEMM reads the whole weight for a few tokens, so it is bound by memory bandwidth and FP8 can at best
# halve its time (half the bytes); a prefill GEMM is bound by the tensor cores, whose FP8 peak is twice the BF16 one.

# %% tags=["anchor:h100", "remove-input"]
if gpu is None:
    print(
        "dsim/data/quant_gpu.json is absent: run `python bench/gemm_fp8.py --out dsim/data/quant_gpu.json` on a GPU"
    )
else:
    print(
        f"{gpu['device']}, torch {gpu['torch']}, CUDA {gpu['cuda']}; blockwise FP8 GEMM: {gpu['block_gemm'] or 'not available'}"
    )
    kernels = ["fp8_tensor", "fp8_tensor_acc", "fp8_rowwise", "fp8_block", "int8"]
    timing = [r for r in gpu["timing"] if r["kernel"] != "*"]
    shapes = list(dict.fromkeys(r["shape"] for r in timing))
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.3, 3.4), sharey=True)
    for ax, shape in zip(np.atleast_1d(axes), shapes):
        sel = [r for r in timing if r["shape"] == shape]
        n, k = sel[0]["n"], sel[0]["k"]
        print(f"\n{shape} (n={n}, k={k}): time of bf16 and speed-up of each kernel over bf16")
        print(f"{'m':>6}{'bf16 us':>9}" + "".join(f"{kn:>16}" for kn in kernels))
        for m in sorted({r["m"] for r in sel}):
            by_k = {r["kernel"]: r for r in sel if r["m"] == m}
            bf = by_k.get("bf16", {}).get("ms")
            line = f"{m:6d}{bf * 1e3 if bf else float('nan'):9.1f}"
            for kn in kernels:
                sp = by_k.get(kn, {}).get("speedup_vs_bf16")
                line += f"{sp:16.2f}" if sp else f"{'n/a':>16}"
            print(line)
        for i, kn in enumerate(kernels):
            pts = sorted(
                (r["m"], r["speedup_vs_bf16"])
                for r in sel
                if r["kernel"] == kn and r.get("speedup_vs_bf16")
            )
            if pts:
                ax.semilogx(*zip(*pts), "o-", color=f"C{i}", label=kn)
        ax.axhline(1, color="gray", lw=0.8)
        ax.axhline(2, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{shape}: n={n}, k={k}")
        ax.set_xlabel("m (tokens)")
    np.atleast_1d(axes)[0].set_ylabel("speed-up over bf16")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    viz.show(
        fig,
        "Measured speed-up of FP8 and INT8 GEMMs over bf16 on an H100, for the shapes of DeepSeek-V3's layers, against the number of tokens.",
    )
    errors = sorted(
        {
            r["error"].split(":")[0] + ": " + r["error"].split(":", 1)[1][:70]
            for r in timing
            if "error" in r
        }
    )
    if errors:
        print("cases that did not run:", *errors, sep="\n  ")

# %% [markdown]
# ## Try it
#
# Pick a tensor, a number format, its bits and how many numbers share a scale. The histogram shows the error
# $\hat x - x$; the printout gives the SQNR and the bytes the tensor would take (data plus bf16 scales for
# integers, fp32 scales for FP8). FP8 is always 8 bits.

# %% tags=["nbval-ignore-output", "anchor:try", "remove-input"]
TENSORS = {
    "weight: dense FFN w1 [192, 64]": w,
    "activation: input of dense w2 [512, 192]": h,
    "weight: routed expert 0, w1 [32, 64]": model.layers[1].ffn.experts.w1[0].detach(),
}


def show(tensor="activation: input of dense w2 [512, 192]", fmt="INT sym", bits=4, group="32"):
    x = TENSORS[tensor]
    bits = 8 if fmt == "FP8 E4M3" else bits
    x_hat = roundtrip(x, fmt, bits, group)
    n_scales = 1 if group == "tensor" else x.shape[0] if group == "row" else x.numel() // int(group)
    scale_bytes = 4 if fmt == "FP8 E4M3" else 2 + (1 if fmt == "INT asym" else 0)
    nbytes = x.numel() * bits // 8 + n_scales * scale_bytes
    print(
        f"{fmt} {bits}-bit, one scale per {group if group in ('tensor', 'row') else group + ' numbers'}: "
        f"SQNR {sqnr(x, x_hat):.1f} dB, max error {float((x_hat - x).abs().max()):.4f}, "
        f"{nbytes:,} bytes ({nbytes / (2 * x.numel()):.3f} of bf16)"
    )
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist((x_hat - x).flatten().numpy(), bins=100, color="C1")
    ax.set_xlabel("quantization error")
    ax.set_ylabel("count")
    ax.set_title(tensor, fontsize=9)
    viz.show(fig, "Quantization error of the chosen tensor, format, bit width and group size.")


show()
# The error depends on the trained activation (its digits vary between CPUs), so the output is not
# compared; checked instead: no number moves by more than half its group's step s = max|x| / 7.
err = (roundtrip(h, "INT sym", 4, "32") - h).abs()  # [512, 192]
step = h.reshape(-1, 32).abs().amax(-1) / 7  # one s per group of 32
assert (err.reshape(-1, 32).amax(-1) <= step / 2 * 1.01).all()  # 1%: scales are stored in 16 bits

# %% tags=["nbval-ignore-output"]
display(
    widgets.interactive(
        show,
        tensor=widgets.Dropdown(
            options=list(TENSORS),
            value="activation: input of dense w2 [512, 192]",
            description="tensor",
        ),
        fmt=widgets.Dropdown(options=FORMATS, value="INT sym", description="format"),
        bits=widgets.Dropdown(options=[4, 8], value=4, description="bits"),
        group=widgets.Dropdown(
            options=["tensor", "row", "64", "32", "16", "8"], value="32", description="scale per"
        ),
    )
)

# %% [markdown]
# The widget's bits and scale-per controls as small multiples, for readers of the static page.


# %% tags=["anchor:multiples"]
x = TENSORS["activation: input of dense w2 [512, 192]"]


def panel(ax, case):
    bits, group = case
    ax.hist((roundtrip(x, "INT sym", bits, group) - x).flatten().numpy(), bins=60, color="C1")


cases = [(bits, group) for bits in (4, 8) for group in ("tensor", "row", "32")]
fig = viz.small_multiples(
    panel, cases, title=lambda c: f"INT{c[0]}, scale per {c[1]}", sharex=False, sharey=False
)
viz.show(
    fig,
    "Quantization error of a trained activation (input of the dense w2, 512 x 192) "
    "in symmetric INT4 and INT8, with one scale per tensor, per row or per 32 numbers: "
    "the finer the scales, the narrower the error.",
)

# %% [markdown]
# ## Worked questions

# %% [markdown] tags=["anchor:answers"]
# **Q1.** How many bytes does DeepSeek-V3's checkpoint take in BF16, in FP8 with 128x128 block scales (embedding,
# head, gate and norms kept in BF16, as released), and with INT4 experts in groups of 128?

# %% tags=["anchor:answers", "remove-input"]
p = params(preset("deepseek-v3")).breakdown  # parameters by kind, MTP module included
from dsim.cost.components import Component as C

LINEAR = (C.ATTN_PROJ, C.DENSE_FFN, C.SHARED_EXPERTS, C.ROUTED_EXPERTS, C.MTP)
bf16 = sum(weight_bytes(n, "bf16") for n in p.values())
keep = sum(weight_bytes(n, "bf16") for kind, n in p.items() if kind not in LINEAR)
fp8 = keep + sum(weight_bytes(n, "fp8", 128 * 128) for kind, n in p.items() if kind in LINEAR)
int4 = (
    fp8
    - weight_bytes(p["routed_experts"], "fp8", 128 * 128)
    + weight_bytes(p["routed_experts"], "int4", 128)
)
for name, b in (("bf16", bf16), ("fp8 128x128", fp8), ("fp8 + int4 experts", int4)):
    print(f"{name:20s} {b / 1e9:8.1f} GB   ({b / bf16:.3f} of bf16)")
print(
    "(MTP module counted as linear layers; its norms are a rounding error. weight_bytes counts one scale per "
    "16384 elements, exact when both dims are multiples of 128)"
)

# %% [markdown]
# **Q2.** Which post-training scheme (no fine-tuning) gives the tiny model the smallest checkpoint within 0.01 bits
# per byte of FP32, and why do the size ratios stay far above 1/4 (8-bit) and 1/8 (4-bit)?

# %% tags=["anchor:answers", "remove-input"]
ok = [
    r
    for r in rows
    if r["delta_bpb"] <= 0.01 and "steps" not in r["scheme"] and not r["scheme"].startswith("QAT")
]
best = min(ok, key=lambda r: r["bytes"])
emb = by["fp32"]["bytes"] - by["fp32"]["linear_bytes"]
print(
    f"{best['scheme']}: {best['bytes']:,} bytes ({best['ratio']:.3f} of fp32), within 0.01 bits/byte of fp32"
)
print(
    f"the embedding, head, gate and norms stay fp32: {emb:,} bytes = {emb / by['fp32']['bytes']:.0%} of the fp32 "
    f"model and {emb / best['bytes']:.0%} of the {best['scheme']} one"
)
print(
    f"the quantized layers alone: {best['linear_bytes'] / by['fp32']['linear_bytes']:.3f} of their fp32 bytes; "
    f"INT4 g32: {by['W4A16 g32']['linear_bytes'] / by['fp32']['linear_bytes']:.3f}"
)

# %% [markdown]
# **Q3.** In the accumulation model, from which $K$ does an FP8 GEMM without promotion lose more than 1% on
# positive products, and what does the H100's fast-accumulation mode measure at that $K$?

# %% tags=["anchor:answers", "remove-input"]
k1 = next((k for k in KS if emu[("abs_normal", k)]["no_promotion_rel"] > 0.01), None)
print(f"model: first K with error > 1%: {k1} ({emu[('abs_normal', k1)]['no_promotion_rel']:.2%})")
key = ("abs_normal", "scaled_mm_fast_accum", k1)
print(
    f"H100 fast accumulation at K={k1}: {real[key]:.2%}"
    if key in real
    else "H100 measurement: not available"
)
print(f"with promotion every 128 elements (model): {emu[('abs_normal', k1)]['promotion_rel']:.3%}")

# %% [markdown]
# **Q4.** During decode an expert of DeepSeek-V3 sees a handful of tokens. What speed-up over BF16 does FP8 give its
# gate-and-up GEMM at $m = 1$ and at $m = 4096$ on the H100, and which bound explains each?

# %% tags=["anchor:answers", "remove-input"]
if gpu is None:
    print("needs dsim/data/quant_gpu.json")
else:
    for m in (1, 4096):
        r = next(
            r
            for r in gpu["timing"]
            if r["shape"] == "moe_gate_up" and r["m"] == m and r["kernel"] == "fp8_tensor"
        )
        b = next(
            r
            for r in gpu["timing"]
            if r["shape"] == "moe_gate_up" and r["m"] == m and r["kernel"] == "bf16"
        )
        weight_gb_s = r["n"] * r["k"] / (r["ms"] * 1e-3) / 1e9  # FP8 weight bytes read per second
        print(
            f"m={m:5d}: bf16 {b['ms'] * 1e3:7.1f} us, fp8 {r['ms'] * 1e3:7.1f} us, speed-up {r['speedup_vs_bf16']:.2f}x; "
            f"fp8 reads its weight at {weight_gb_s:,.0f} GB/s and computes {r['tflops']:,.0f} TFLOP/s"
        )
