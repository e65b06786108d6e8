"""Time model: how long an op, a transformer block and a whole step take on a GPU.

A datasheet roofline, max(FLOPs / peak FLOP/s, bytes / peak bandwidth), is the textbook estimate
and it is far off: no kernel reaches the peak, a GEMM runs whole tiles in whole waves over the
SMs, every kernel pays a launch, and an MoE layer moves its tokens around before and after the
expert GEMMs. This model keeps the roofline's physics and adds exactly those effects:

  1. An op is the list of kernels it launches (`op_kernels`), each with the FLOPs it computes and
     the bytes it moves to and from HBM, copies included (the MoE layer's sort, gathers and weighted
     sum, the gate's fp32 casts, the backward's extra passes). The lists follow what PyTorch runs for
     dsim.model, kernel by kernel, as profiled on an H100 (tests/test_timing.py holds their FLOPs
     equal to a trace of the module).
  2. An op takes the first kernel's launch latency, then for each kernel
         launch + max(compute time, memory time):
       GEMM-like kernels (cuBLAS GEMM, CUTLASS grouped GEMM, fused attention) compute in tiles;
            compute time = waves x tile time, waves = ceil(tiles / SMs), and a tile of BM x BN
            over K runs at (peak / SMs) x efficiency(tile), then stores its output; cuBLAS is
            assumed to pick the best tile and split-K, torch._grouped_mm's tile follows its source
            (64x128 when an expert gets <= 128 rows on average, else 128x256); attention schedules
            its (query or key) blocks, causal ones of unequal length, onto the SMs longest first;
       memory time = bytes / (HBM bandwidth x achievable fraction), lower for gathers, atomics and
            sorts, lower when a kernel has too few blocks to keep every SM streaming, and with the
            writes that the L2 absorbs left out; PyTorch's non-vectorized kernels (dtype casts,
            broadcasts, middle-dimension reductions, top-k) are also limited per element.
  3. About thirty constants (`Calibration`: efficiencies, launch times, per-element costs) are fitted
     by least squares on relative error (`fit_calibration`) to the calibration grid of
     bench/timing_measure.py, each on the records that isolate it (memory kernels first, then norms,
     GEMMs, grouped GEMMs, gathers and sorts, the gate, attention); the MoE layer gets no constant of
     its own: it is predicted from its kernels. There is no table of shapes: the model is judged on a
     separate validation grid (bench/validate_timing.py, dsim/data/timing_validation_<gpu>.json).

What each op times (exactly what bench/timing_measure.py measures), `op_time(op, **shape)`:
  gemm(m, n, k[, batch])     y[m, n] = x[m, k] @ w[k, n] (F.linear); backward adds dX and dW.
  moe_ffn(tokens, hidden, moe_inter, experts, top_k[, route_norm])   dsim.model.MoE without shared
                             experts: the gate (fp32 router GEMM, softmax, top-k, combine weights)
                             and Experts.forward_grouped (sort the T*K token copies by expert, gather
                             them, grouped GEMMs w1 and w3, SiLU(h1)*h3, grouped GEMM w2, gather back
                             into token order, weighted sum over the K experts). Routing is random
                             (each token's top-k experts uniformly spread), so an expert gets
                             Binomial(T, K/E) rows. backward: forward and backward to the input, the
                             gate and the expert weights.
  attention(batch, seq, heads, qk_dim, v_dim, causal[, kv_seq])   F.scaled_dot_product_attention on
                             [batch, heads, seq, d] (kv_seq keys, default seq; decode: seq=1).
  rmsnorm(tokens, hidden)    F.rms_norm.
  elementwise(bytes[, kernels, kind, numel])   memory-bound kernels moving `bytes` in total (read +
                             written); kind (ELEMENTWISE_KINDS) says which PyTorch kernel.
  gate(tokens, hidden, experts, top_k)   dsim.model.Gate (softmax, no groups), forward.
  grouped_gemm(tokens, n, k, groups)     dsim.model.grouped_mm with `groups` equal groups.
  sort(n), gather_rows / index_select_rows / index_add_rows(rows, width, dst_rows)   the MoE's pieces.
Times are GPU times with a cold L2 cache and the CPU queued ahead of the GPU (as in a training step
of real size, or under CUDA graphs): kernels plus the gaps between them. Eager PyTorch's own CPU
cost (several microseconds per op) is not included; it matters only when kernels are tiny.

GPUs: H100-SXM and H200 have their own calibration (dsim/data/timing_calibration_<gpu>.json, fitted
from the committed measurements dsim/data/timing_<gpu>.json). Every other GPU of the catalog gets
the H100-SXM's efficiencies applied to its own datasheet peaks, SM count, L2 and bandwidth: an
extrapolation (on an A100, dsim.model even runs a different MoE path, a padded batched GEMM).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dsim.cost.components import Component
from dsim.cost.hardware import GPU, get_gpu, peak_flops

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# Bytes per element. fp8/int8 GEMMs: 1-byte inputs, 2-byte (bf16) outputs.
ELT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "tf32": 4, "fp8": 1, "int8": 1}
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}

# op -> (required shape arguments, optional ones with defaults)
OPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "gemm": (("m", "n", "k"), {"batch": 1}),
    "moe_ffn": (("tokens", "hidden", "moe_inter", "experts", "top_k"), {"route_norm": True}),
    "attention": (("batch", "seq", "heads", "qk_dim", "v_dim", "causal"), {"kv_seq": None}),
    "rmsnorm": (("tokens", "hidden"), {}),
    "elementwise": (("bytes",), {"kernels": 1, "kind": None, "numel": None}),   # kind: see ELEMENTWISE_KINDS
    "gate": (("tokens", "hidden", "experts", "top_k"), {"route_norm": True}),
    "grouped_gemm": (("tokens", "n", "k", "groups"), {}),
    "sort": (("n",), {"groups": None}),
    "gather_rows": (("rows", "width", "dst_rows"), {}),
    "index_select_rows": (("rows", "width", "dst_rows"), {}),
    "index_add_rows": (("rows", "width", "dst_rows"), {}),
}


# ---------------------------------------------------------------------------------------------
# Calibration: the efficiency constants of one GPU
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Efficiency constants of one GPU. Fractions are of the datasheet peaks (dsim.cost.hardware).

    `fit_calibration` fits them; `gpu_calibration(gpu)` loads the committed ones. The defaults are round
    guesses for an H100, used only where nothing was fitted.
    """
    gpu: str = "H100-SXM"
    source: str = "uncalibrated defaults"
    # every kernel; memory-bound kernels
    op_start_s: float = 1.5e-6        # s once per op: the first kernel's launch latency
    launch_s: float = 3.0e-6          # s per kernel: launch, ramp-up, drain, and the gap to the next
    bw_eff: float = 0.90              # achievable fraction of the HBM bandwidth (vectorized streaming kernel)
    l2_write_frac: float = 0.3        # this fraction of the L2 absorbs a kernel's writes (written back later)
    strided_s_per_elt: float = 2.6e-12  # non-vectorized elementwise kernels (dtype casts, broadcasts): s per element
    strided_fixed_s: float = 1.5e-6   # and their longer minimum run time, s per kernel
    reduce_s_per_elt: float = 1.1e-12   # reductions over a middle dimension: s per input element
    # dense GEMM (cuBLAS)
    mma_eff: float = 0.80             # fraction of peak tensor FLOP/s inside a 128x256 tile
    tile_ai0: float = 20.0            # a BMxBN tile runs at ai/(ai + ai0) (ai = BM*BN/(BM+BN)), vs 128x256
    tile_fill: float = 2.0            # per tile prologue (pipeline fill), in 64-deep k-steps
    epilogue_bw: float = 4.0          # a tile's output is stored at epilogue_bw x an SM's fair share of bandwidth
    gemm_launch_s: float = 6.0e-6     # s per GEMM kernel
    sm_bw: float = 2.5                # one SM pulls at most sm_bw x its fair share of the bandwidth
    fp32_eff: float = 0.70            # fraction of the fp32 CUDA-core peak (SGEMM, no TF32)
    # grouped GEMM (CUTLASS, torch._grouped_mm)
    grouped_eff: float = 0.70         # 128x256 cooperative tile
    grouped_small_eff: float = 0.60   # 64x128 ping-pong tile (<= 128 rows per expert on average)
    grouped_bw_eff: float = 0.85      # bandwidth a grouped GEMM reaches when it streams weights, relative to bw_eff
    # gathers, scatters, sorts, row-wise kernels (efficiencies relative to bw_eff)
    gather_eff: float = 0.95          # row gather x[idx], index_select
    atomic_eff: float = 0.10          # index_add_ / scatter_add_ of bf16 rows (atomic read-modify-write)
    index_put_eff: float = 0.30       # index_put_(accumulate=True) after its sort (x[idx] backward)
    sort_small_s: float = 30e-6       # one-block sort of <= 4096 keys
    sort_setup_s: float = 20e-6       # a radix sort's setup kernels (histogram, scan, indices) and allocations
    topk_s_per_elt: float = 45e-12    # torch.topk over E scores per row: a radix select per row, s per score
    row_s_per_byte: float = 0.8e-9    # norms: one block per row; a lone row streams at this s/byte
    rms_eff: float = 0.9              # bandwidth of the norm kernels, relative to bw_eff
    rms_bwd_passes: float = 1.5       # F.rms_norm backward traffic, in units of its fused minimum
    # fused attention (SDPA): fraction of peak inside a tile, per backend, direction, head dims
    # (mha: qk_dim == v_dim, mla: qk_dim != v_dim) and mask; each is a different kernel
    attn_eff: dict = field(default_factory=lambda: {
        f"{b}_{d}_{h}_{m}": e * (0.8 if d == "bwd" else 1.0)
        for b, e in (("flash", 0.45), ("efficient", 0.3), ("cudnn", 0.55))
        for d in ("fwd", "bwd") for h in ("mha", "mla") for m in ("causal", "full")})
    attn_fill: float = 1.0            # per block (CTA) overhead, in key (or query) blocks
    attn_backend_equal: str = "flash_attention"        # SDPA's pick for qk_dim == v_dim <= 256 (measured)
    attn_backend_unequal: str = "efficient_attention"  # and for qk_dim != v_dim (MLA)
    fit: dict = field(default_factory=dict, compare=False)   # fit diagnostics (per stage)

    def replace(self, **changes: Any) -> "Calibration":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"calibration has unknown field(s) {', '.join(unknown)}")
        return cls(**d)


def gpu_key(gpu: str | GPU) -> str:
    """File-name key of a GPU: 'H100-SXM' -> 'h100', 'H200' -> 'h200', 'H100-PCIe' -> 'h100-pcie'."""
    name = get_gpu(gpu).name.lower()
    return {"h100-sxm": "h100"}.get(name, name)


_CAL_CACHE: dict[str, Calibration] = {}


def gpu_calibration(gpu: str | GPU = "H100-SXM") -> Calibration:
    """The committed calibration of `gpu`, or the H100-SXM's applied to this GPU's datasheet.

    Reads dsim/data/timing_calibration_<gpu>.json (written by bench/validate_timing.py). A GPU
    without one borrows the H100-SXM's efficiencies (its own peaks, bandwidth and SM count still
    apply); without any file, the class defaults are used (their `source` says so).
    """
    g = get_gpu(gpu)
    if g.name in _CAL_CACHE:
        return _CAL_CACHE[g.name]
    path = DATA_DIR / f"timing_calibration_{gpu_key(g)}.json"
    if path.exists():
        try:
            cal = Calibration.from_dict(json.loads(path.read_text())["calibration"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path.name} does not match this version of dsim.cost.timing ({e}); re-run "
                             f"bench/validate_timing.py --data {path.parent.name}/timing_{gpu_key(g)}.json") from None
    elif g.name != "H100-SXM":
        h100 = gpu_calibration("H100-SXM")
        cal = h100.replace(gpu=g.name, source=f"H100-SXM efficiencies ({h100.source}) applied to the "
                                              f"{g.name} datasheet")
    else:
        cal = Calibration()
    _CAL_CACHE[g.name] = cal
    return cal


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """One kernel (or a few tiny ones, `count`) of an op: its work, its traffic and its time."""
    name: str
    kind: str          # gemm, grouped_gemm, attention, mem, gather, atomic, index_put, sort, topk
    flops: float       # useful FLOPs (what a perfect kernel must compute)
    bytes: float       # bytes moved to and from HBM
    time_s: float
    note: str = ""
    count: int = 1     # kernel launches it stands for


class _Ctx:
    """What the kernel-time functions need: the GPU, its calibration and the dtype."""

    def __init__(self, gpu: GPU, cal: Calibration, dtype: str):
        self.gpu, self.cal, self.dtype = gpu, cal, dtype
        self.sms = gpu.sm_count
        self.bw = gpu.hbm_bw * cal.bw_eff           # achievable streaming bandwidth, bytes/s
        self.elt = ELT_BYTES[dtype]

    # ---- memory-bound kernels ----
    def mem(self, name: str, nbytes: float, kind: str = "mem", count: int = 1, note: str = "",
            write: float = 0.0, elements: float = 0.0) -> Kernel:
        """launch + bytes / bandwidth, with the kind's efficiency (a gather, an atomic scatter...).

        `write` of the bytes are written; the last l2_write_frac x L2 of them are still in the L2
        (dirty, written back later) when the kernel ends, so they cost no HBM time in it. Kinds
        "strided" (PyTorch's non-vectorized elementwise kernel: dtype changes, broadcasts) and
        "reduce" (a reduction over a middle dimension) are limited by their per-element index
        arithmetic as much as by bandwidth: max(bytes / bandwidth, elements x s per element); so is
        "topk" (a radix select per row)."""
        c = self.cal
        eff = {"mem": 1.0, "strided": 1.0, "reduce": 1.0, "topk": 1.0, "gather": c.gather_eff,
               "atomic": c.atomic_eff, "index_put": c.index_put_eff}[kind]
        hbm = nbytes - min(write, c.l2_write_frac * self.gpu.l2_bytes)
        t = hbm / (self.bw * eff)
        per_elt = {"strided": c.strided_s_per_elt, "reduce": c.reduce_s_per_elt, "topk": c.topk_s_per_elt}
        if kind in per_elt:
            t = max(t, elements * per_elt[kind])
        if kind == "strided":
            t += count * c.strided_fixed_s
        return Kernel(name, kind, 0.0, nbytes, count * c.launch_s + t, note, count)

    def sort(self, name: str, n: int, key_bits: int = 64) -> Kernel:
        """torch.sort / argsort of n int64 keys with their int64 positions.

        Up to 4096 keys: one block sorts them (one kernel). More: CUB's onesweep radix sort, one pass
        per 8 key bits (all 64 for argsort; index_put's sort knows its range), each pass a memset and
        a kernel that reads and writes keys and values (32 bytes per key), after some setup."""
        c = self.cal
        if n <= 4096:
            return Kernel(name, "sort", 0.0, 32.0 * n, c.launch_s + c.sort_small_s * n / 4096, f"{n} keys, one block")
        passes = max(1, math.ceil(key_bits / 8))
        nbytes = 32.0 * n * passes
        return Kernel(name, "sort", 0.0, nbytes, c.sort_setup_s + 2 * passes * c.launch_s + nbytes / self.bw,
                      f"{n} keys, {passes} radix passes", 2 * passes + 4)

    def gather(self, name: str, rows: int, width: int, src_rows: int, elt: int = 2) -> Kernel:
        """out[rows, width] = src[idx]: reads rows of a source of src_rows rows, writes them in order.

        A source that fits in the L2 is read from HBM once however often its rows repeat (x[rows] of
        the MoE layer: each token K times); a larger one is read row by row as the gather goes."""
        src = elt * src_rows * width
        reads = src if src <= self.gpu.l2_bytes else elt * rows * width
        writes = elt * rows * width
        return self.mem(name, reads + writes + 8.0 * rows, kind="gather", write=writes)

    def rowwise(self, name: str, rows: int, row_bytes: float, nbytes: float, write: float = 0.0,
                count: int = 1) -> Kernel:
        """A kernel that gives each row to one block (norms): bandwidth-bound with many rows; with few,
        a wave of rows takes as long as one block needs to stream its row (row_bytes=0: no such limit)."""
        c = self.cal
        waves = math.ceil(rows / (8 * self.sms))                  # 8 resident blocks per SM
        hbm = nbytes - min(write, c.l2_write_frac * self.gpu.l2_bytes)
        t = max(hbm / (self.bw * c.rms_eff), waves * row_bytes * c.row_s_per_byte)
        return Kernel(name, "rowwise", 0.0, nbytes, count * c.launch_s + t, f"{rows} rows", count)

    # ---- dense GEMM ----
    def gemm(self, name: str, m: int, n: int, k: int, batch: int = 1, dtype: str | None = None) -> Kernel:
        """cuBLAS: best tile and split-K for y[m,n] = x[m,k] @ w[k,n] (batch independent products)."""
        dtype = dtype or self.dtype
        peak = peak_flops(self.gpu, dtype)
        elt_in, elt_out = ELT_BYTES[dtype], max(ELT_BYTES[dtype], 2)
        if dtype == "fp32":
            eff, tiles, ref = self.cal.fp32_eff, _TILES_FP32, 128 * 128 / 256
        else:
            eff, tiles, ref = self.cal.mma_eff, _TILES_TC, _AI_REF
        flops = 2.0 * batch * m * n * k
        nbytes = batch * (elt_in * (m * k + k * n) + elt_out * m * n)
        t, note = _best_gemm(m, n, k, batch, nbytes, peak / self.sms, eff, tiles, ref, self, elt_out)
        return Kernel(name, "gemm", flops, nbytes, self.cal.gemm_launch_s + t, note)

    def _epilogue(self, bm: int, bn: int, elt_out: int = 2) -> float:
        """Time to store one output tile (see _best_gemm)."""
        return bm * bn * elt_out / (self.bw / self.sms * self.cal.epilogue_bw)

    # ---- grouped GEMM (torch._grouped_mm on Hopper: CUTLASS, persistent over all groups' tiles) ----
    def grouped(self, name: str, rows_tiles: Callable[[int], float], rows: int, n: int, k: int,
                groups: int, active: float, per_group_rows: float) -> Kernel:
        """out[rows, n] = x[rows, k] @ w[g][k, n] for each group's rows.

        rows_tiles(BM) = sum over groups of ceil(rows_g / BM) (expected). The tile follows
        torch's GroupMM.cu: 64x128 (BK 128) when rows/groups <= 128 or n <= 128, else 128x256 (BK 64).
        """
        c = self.cal
        small = per_group_rows <= 128 or n <= 128
        bm, bn, bk, eff = (64, 128, 128, c.grouped_small_eff) if small else (128, 256, 64, c.grouped_eff)
        tiles = rows_tiles(bm) * math.ceil(n / bn)
        steps = math.ceil(k / bk) + c.tile_fill * 64 / bk
        t_tile = 2.0 * bm * bn * bk * steps / (peak_flops(self.gpu, self.dtype) / self.sms * eff) + self._epilogue(bm, bn)
        t_c = math.ceil(tiles / self.sms) * t_tile if tiles > 0 else 0.0
        nbytes = 2.0 * (rows * k + active * k * n + rows * n)
        t_m = nbytes / (self.bw * c.grouped_bw_eff * min(1.0, max(tiles, 1) * c.sm_bw / self.sms))
        flops = 2.0 * rows * n * k
        return Kernel(name, "grouped_gemm", flops, nbytes, 2 * c.launch_s + max(t_c, t_m),
                      f"tile {bm}x{bn}, {tiles:.0f} tiles, {math.ceil(tiles / self.sms)} waves", count=2)

    def grouped_wgrad(self, name: str, rows: int, m: int, n: int, groups: int, active: float,
                      mean_rows: float) -> Kernel:
        """dW[g][m, n] = x_g^T @ dy_g over each group's rows (both operands 2-D, ragged K)."""
        c = self.cal
        small = m <= 128 or n <= 128
        bm, bn, bk, eff = (64, 128, 128, c.grouped_small_eff) if small else (128, 256, 64, c.grouped_eff)
        tiles = groups * math.ceil(m / bm) * math.ceil(n / bn)
        steps = active / groups * math.ceil(mean_rows / bk) + c.tile_fill * 64 / bk
        t_tile = 2.0 * bm * bn * bk * steps / (peak_flops(self.gpu, self.dtype) / self.sms * eff) + self._epilogue(bm, bn)
        t_c = math.ceil(tiles / self.sms) * t_tile
        nbytes = 2.0 * (rows * m + rows * n + groups * m * n)
        t_m = nbytes / (self.bw * c.grouped_bw_eff)
        return Kernel(name, "grouped_gemm", 2.0 * rows * m * n, nbytes, 2 * c.launch_s + max(t_c, t_m),
                      f"weight gradient, tile {bm}x{bn}, {tiles} tiles", count=2)


# Tile shapes cuBLAS picks from for tensor-core GEMMs on Hopper (BM, BN), and for fp32 SGEMM.
_TILES_TC = ((128, 256), (256, 128), (128, 128), (64, 256), (64, 128), (128, 64), (64, 64), (64, 32),
             (8, 256), (16, 128), (32, 128))          # the last three: a few tokens (cuBLAS swaps A and B)
_TILES_FP32 = ((256, 128), (128, 128), (256, 64), (128, 64), (64, 128),   # SGEMM tiles seen in H100 profiles
               (8, 256), (16, 128))                                          # and GEMV-like ones for a few rows
_AI_REF = 128 * 256 / (128 + 256)      # FLOP per byte loaded of the reference tile (85.3)


def _tile_eff(bm: int, bn: int, ai0: float, ref: float) -> float:
    """Relative efficiency of a BMxBN tile: ai/(ai+ai0) against the reference tile's."""
    ai = bm * bn / (bm + bn)
    return (ai / (ai + ai0)) / (ref / (ref + ai0))


def _best_gemm(m: int, n: int, k: int, batch: int, nbytes: float, peak_per_sm: float, eff: float,
               tiles: Iterable[tuple[int, int]], ref: float, ctx: _Ctx, elt_out: int = 2) -> tuple[float, str]:
    """Fastest (tile, split-K) for a GEMM: max(compute, memory) time, and a description.

    A tile takes its K-loop (plus a prologue of tile_fill steps) and then stores its output; the
    store overlaps the next tile's loop only partly, so it is charged at epilogue_bw x an SM's share
    of the bandwidth (it matters when K is short: a thin inner dimension, big outputs)."""
    c, sms = ctx.cal, ctx.sms
    best, note = math.inf, ""
    for bm, bn in tiles:
        n_tiles = batch * math.ceil(m / bm) * math.ceil(n / bn)
        t_step = 2.0 * bm * bn * 64 / (peak_per_sm * eff * _tile_eff(bm, bn, c.tile_ai0, ref))
        t_epi = ctx._epilogue(bm, bn, elt_out)
        for split in (1, 2, 3, 4, 6, 8, 12, 16):
            if split > 1 and n_tiles * split > 2 * sms:     # split-K only to fill the SMs
                break
            waves = math.ceil(n_tiles * split / sms)
            t_c = waves * (t_step * (math.ceil(k / split / 64) + c.tile_fill) + t_epi)
            active = min(n_tiles * split, sms)               # (split-K's partial sums stay in the L2)
            t_m = nbytes / (ctx.bw * min(1.0, active * c.sm_bw / sms))
            t = max(t_c, t_m)
            if t < best:
                best = t
                note = f"tile {bm}x{bn}" + (f", split-K {split}" if split > 1 else "") + f", {waves} wave(s)"
    return best, note


# ---------------------------------------------------------------------------------------------
# Expert load under random routing
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8192)
def expert_load(tokens: int, top_k: int, experts: int, block: int) -> tuple[float, float, float]:
    """Expected (sum over experts of ceil(rows_e / block), experts with >= 1 row, mean rows of those).

    Each token sends one copy to each of top_k distinct experts; with random routing an expert's rows
    are Binomial(tokens, top_k / experts). Tile quantization per expert is what makes a grouped GEMM
    lose efficiency when experts get few tokens: ceil(rows_e / block) tiles for rows_e rows.
    """
    p = top_k / experts
    if p >= 1.0:
        return experts * math.ceil(tokens / block), float(experts), float(tokens)
    mean, sd = tokens * p, math.sqrt(tokens * p * (1 - p))
    lo, hi = max(0, int(mean - 9 * sd) - 1), min(tokens, int(mean + 9 * sd) + 2)
    n = np.arange(lo, hi + 1)
    logc = math.lgamma(tokens + 1)
    logpmf = np.array([logc - math.lgamma(i + 1) - math.lgamma(tokens - i + 1) for i in n])
    pmf = np.exp(logpmf + n * math.log(p) + (tokens - n) * math.log1p(-p))
    pmf /= pmf.sum()
    tiles = experts * float(np.sum(pmf * np.ceil(n / block)))
    p_active = 1.0 - (1.0 - p) ** tokens
    active = experts * p_active
    return tiles, active, tokens * top_k / max(active, 1e-9)


# ---------------------------------------------------------------------------------------------
# Ops as kernel lists
# ---------------------------------------------------------------------------------------------
def _gemm_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    m, n, k, b = s["m"], s["n"], s["k"], s["batch"]
    ks = [x.gemm("y = x @ w", m, n, k, b)]
    if backward:
        ks += [x.gemm("dx = dy @ w^T", m, k, n, b), x.gemm("dw = x^T @ dy", k, n, m, b)]
    return ks


def _gate_kernels(x: _Ctx, T: int, D: int, E: int, K: int, route_norm: bool, backward: bool,
                  prefix: str = "gate.") -> list[Kernel]:
    """dsim.model.Gate (softmax, no groups): fp32 router, scores, top-k, combine weights."""
    p = prefix
    ks = [x.mem(p + "x.float()", 6.0 * T * D, kind="strided", write=4.0 * T * D, elements=T * D),
          x.mem(p + "weight.float()", 6.0 * E * D, kind="strided", elements=E * D),
          x.gemm(p + "logits = x @ W^T (fp32)", T, E, D, dtype="fp32"),
          x.mem(p + "softmax", 8.0 * T * E), x.mem(p + "scores + bias", 8.0 * T * E + 4 * E),
          x.mem(p + "topk (select, sort the k)", 4.0 * T * E + 12.0 * T * K, kind="topk", count=2, elements=T * E),
          x.mem(p + "gather weights", 16.0 * T * K)]
    if route_norm:
        ks.append(x.mem(p + "renormalise (sum, divide)", 20.0 * T * K, count=2))
    ks.append(x.mem(p + "x route_scale", 8.0 * T * K))
    if backward:
        ks += [x.mem(p + "d(weights to bf16, x route_scale, renormalise)", 4.0 * T * K * 9, count=9),
               x.mem(p + "d gather (zeros + scatter_add)", 4.0 * T * E + 16.0 * T * K, count=2),
               x.mem(p + "d softmax", 12.0 * T * E),
               x.gemm(p + "dW = dlogits^T @ x (fp32)", E, D, T, dtype="fp32"),
               x.gemm(p + "dx = dlogits @ W (fp32)", T, D, E, dtype="fp32"),
               x.mem(p + "dW, dx to bf16", 6.0 * E * D + 6.0 * T * D, count=2, write=2.0 * T * D)]
    return ks


def _moe_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    """dsim.model.MoE (no shared experts): the gate, then Experts.forward_grouped, kernel by kernel.

    Sort the N = T*K (token, expert) pairs by expert; gather the tokens' rows (x[rows]); grouped GEMMs
    w1, w3, SiLU(h1)*h3, w2; gather the rows back into pair order (ys[inverse]); weighted sum over the
    K experts of each token. The backward gathers too (model.py's _Permute), with no scatter-add."""
    T, D, I, E, K = s["tokens"], s["hidden"], s["moe_inter"], s["experts"], s["top_k"]
    N = T * K                                                  # token copies (rows of the grouped GEMMs)
    ks_gate_fwd = _gate_kernels(x, T, D, E, K, s["route_norm"], False)
    ks = ks_gate_fwd + [x.mem("gate.weights to bf16", 6.0 * N)]
    _, active, mean_rows = expert_load(T, K, E, 64)
    tiles = lambda bm: expert_load(T, K, E, bm)[0]            # noqa: E731
    per_expert = N / E

    def grouped(name: str, n: int, k: int) -> Kernel:
        return x.grouped(name, tiles, N, n, k, E, active, per_expert)

    ks += [x.sort("experts.argsort(expert ids)", N),
           x.mem("experts.inverse[order] = arange", 32.0 * N, count=2),
           x.mem("experts.counts (zeros, ones, scatter_add)", 24.0 * N + 8 * E, count=3),
           x.mem("experts.rows = order // K", 16.0 * N),
           x.gather("experts.xs = x[rows]", N, D, T),
           x.mem("experts.offsets = cumsum(counts) (x3)", 48.0 * E, count=9),
           grouped("experts.h1 = xs @ w1", I, D),
           x.mem("experts.silu(h1)", 4.0 * N * I, write=2.0 * N * I),
           grouped("experts.h3 = xs @ w3", I, D),
           x.mem("experts.silu(h1) * h3", 6.0 * N * I, write=2.0 * N * I),
           grouped("experts.ys = h @ w2", D, I),
           x.gather("experts.ys[inverse]", N, D, N),
           x.mem("experts.ys * weights", 4.0 * N * D + 2.0 * N, kind="strided", write=2.0 * N * D, elements=N * D),
           x.mem("experts.sum over the K experts", 2.0 * N * D + 2.0 * T * D, kind="reduce", write=2.0 * T * D,
                 elements=N * D)]
    if backward:
        ks += [x.mem("experts.d ys = dy * weights", 2.0 * T * D + 2.0 * N + 2.0 * N * D, kind="strided",
                     write=2.0 * N * D, elements=N * D),
               x.mem("experts.d weights: dy * ys", 2.0 * T * D + 4.0 * N * D, kind="strided", write=2.0 * N * D,
                     elements=N * D),
               x.mem("experts.d weights: sum over D", 2.0 * N * D + 2.0 * N),
               x.gather("experts.d ys[inverse] = d ys[order]", N, D, N),
               x.grouped_wgrad("experts.dw2 = h^T @ dys", N, I, D, E, active, mean_rows),
               grouped("experts.dh = dys @ w2^T", I, D),
               x.mem("experts.d silu(h1)*h3 (two products)", 12.0 * N * I, count=2, write=4.0 * N * I),
               x.grouped_wgrad("experts.dw3 = xs^T @ dh3", N, D, I, E, active, mean_rows),
               grouped("experts.dxs3 = dh3 @ w3^T", D, I),
               x.mem("experts.silu backward", 6.0 * N * I, write=2.0 * N * I),
               x.grouped_wgrad("experts.dw1 = xs^T @ dh1", N, D, I, E, active, mean_rows),
               grouped("experts.dxs1 = dh1 @ w1^T", D, I),
               x.mem("experts.dxs1 + dxs3", 6.0 * N * D, write=2.0 * N * D),
               x.gather("experts.d x[rows]: gather by inverse", N, D, N),
               x.mem("experts.d x[rows]: sum the K copies", 2.0 * N * D + 2.0 * T * D, kind="reduce",
                     write=2.0 * T * D, elements=N * D)]
        ks += _gate_kernels(x, T, D, E, K, s["route_norm"], True, "gate.")[len(ks_gate_fwd):]
        ks += [x.mem("dx = dx_experts + dx_gate", 6.0 * T * D, write=2.0 * T * D)]
    return ks


def _grouped_gemm_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    """dsim.model.grouped_mm with `groups` equal groups: out[tokens, n] = xs @ w[g]^T."""
    T, n, k, g = s["tokens"], s["n"], s["k"], s["groups"]
    per = T / g
    tiles = lambda bm: g * math.ceil(per / bm)                 # noqa: E731
    ks = [x.mem("offsets = cumsum(counts)", 16.0 * g), x.grouped("out = xs @ w^T", tiles, T, n, k, g, g, per)]
    if backward:
        ks += [x.grouped_wgrad("dw = dout^T @ xs", T, n, k, g, g, per), x.grouped("dxs = dout @ w", tiles, T, k, n, g, g, per)]
    return ks


def _rows_kernels(x: _Ctx, op: str, s: dict, backward: bool) -> list[Kernel]:
    rows, width, dst = s["rows"], s["width"], s["dst_rows"]
    gather = x.gather("gather rows", rows, width, dst)
    atomic = [x.mem("zeros", 2.0 * dst * width, write=2.0 * dst * width),
              x.mem("index_add_ rows", 2.0 * rows * width + 8.0 * rows + 4.0 * dst * width, kind="atomic")]
    if op == "gather_rows":                       # x[idx]: backward is index_put_(accumulate) with a sort
        ks = [gather]
        if backward:
            ks += [x.mem("zeros", 2.0 * dst * width, write=2.0 * dst * width),
                   x.sort("sort indices", rows, key_bits=max(1, (dst - 1).bit_length())),
                   x.mem("index_put_ accumulate", 2.0 * rows * width + 4.0 * dst * width + 16.0 * rows,
                         kind="index_put", count=2)]
    elif op == "index_select_rows":               # index_select: backward is index_add_
        ks = [gather] + (atomic if backward else [])
    else:                                         # index_add_: backward is index_select
        ks = atomic + ([gather] if backward else [])
    return ks


def _attention_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    b, sq, h, dqk, dv, causal = s["batch"], s["seq"], s["heads"], s["qk_dim"], s["v_dim"], s["causal"]
    skv = s["kv_seq"] or sq
    backend = attention_backend(dqk, dv, x.cal)
    pairs = attention_pairs(sq, skv, causal)
    flops_f = 2.0 * b * h * pairs * (dqk + dv)
    io = 2.0 * b * h * (sq * dqk + skv * dqk + skv * dv + sq * dv)      # q, k, v in; o out
    if backend == "math":
        ks = [x.gemm("scores = q @ k^T", sq, skv, dqk, b * h), x.mem("mask + softmax", 10.0 * b * h * sq * skv, count=3),
              x.gemm("o = p @ v", sq, dv, skv, b * h)]
        if backward:
            ks += [x.gemm("dp = do @ v^T", sq, skv, dv, b * h), x.gemm("dv = p^T @ do", skv, dv, sq, b * h),
                   x.mem("softmax backward", 10.0 * b * h * sq * skv, count=2),
                   x.gemm("dq = ds @ k", sq, dqk, skv, b * h), x.gemm("dk = ds^T @ q", skv, dqk, sq, b * h)]
        return ks
    c, name = x.cal, backend.replace("_attention", "")
    variant = f"{'mha' if dqk == dv else 'mla'}_{'causal' if causal else 'full'}"
    eff_f, eff_b = c.attn_eff[f"{name}_fwd_{variant}"], c.attn_eff[f"{name}_bwd_{variant}"]
    (bm, bn), (bm_b, bn_b) = _ATTN_BLOCKS[name]
    per_sm = peak_flops(x.gpu, x.dtype) / x.sms
    # forward: one block per bm queries, looping over bn-key blocks (up to the diagonal if causal)
    n_q = math.ceil(sq / bm)
    splits = 1
    if sq <= 64 and not backward:                                # decoding: split the keys to fill the SMs
        splits = max(1, min(math.ceil(skv / bn) // 4, math.ceil(x.sms / (b * h * n_q))))
    works = _attn_works(n_q, bm, bn, sq, skv, causal, splits)
    units, count = _lpt(works, b * h * splits, x.sms)
    t_c = (units + c.attn_fill * count) * 2.0 * bm * bn * (dqk + dv) / (per_sm * eff_f)
    ctas = b * h * n_q * splits
    t_m = (io + 4.0 * b * h * sq) / (x.bw * min(1.0, ctas * c.sm_bw / x.sms))
    ks = [Kernel(f"{name} forward", "attention", flops_f, io, c.launch_s + max(t_c, t_m),
                 f"{backend}, {ctas} blocks" + (f", {splits} key splits" if splits > 1 else ""))]
    if splits > 1:
        ks.append(x.mem("combine key splits", 4.0 * b * h * sq * dv * splits))
    if backward:
        # backward: one block per bn_b keys, looping over the bm_b-query blocks that see them
        n_k = math.ceil(skv / bn_b)
        works_b = _attn_works_bwd(n_k, bm_b, bn_b, sq, skv, causal)
        units_b, count_b = _lpt(works_b, b * h, x.sms)
        flops_b = 2.0 * b * h * pairs * (3 * dqk + 2 * dv)
        t_cb = (units_b + c.attn_fill * count_b) * 2.0 * bm_b * bn_b * (3 * dqk + 2 * dv) / (per_sm * eff_b)
        io_b = 2 * io + 2.0 * b * h * (sq * dv) + 4.0 * b * h * sq * (1 + dqk)    # + dO, lse, fp32 dq accumulator
        t_mb = io_b / (x.bw * min(1.0, b * h * n_k * c.sm_bw / x.sms))
        ks += [x.mem(f"{name} backward: rowsum(dO * O)", 4.0 * b * h * sq * dv + 4.0 * b * h * sq),
               Kernel(f"{name} backward", "attention", flops_b, io_b, c.launch_s + max(t_cb, t_mb),
                      f"{backend}, {b * h * n_k} blocks"),
               x.mem(f"{name} backward: dq to bf16", 6.0 * b * h * sq * dqk)]
    return ks


# (forward BM x BN, backward BM x BN) blocks of PyTorch's fused attention kernels for head dims <= 256
# (flash: FlashAttention-2's kernel traits for head dim 128; cuDNN: the shapes its kernel names on an H100 hint
# at, sdpa_sm90_flash_fprop_..._64x128x128 and ..._bprop_..._64x64x128, in the order the calibration fit prefers)
_ATTN_BLOCKS = {"flash": ((128, 64), (64, 128)), "efficient": ((64, 64), (64, 64)), "cudnn": ((128, 64), (128, 64))}


def attention_pairs(sq: int, skv: int, causal: bool) -> int:
    """(query, key) pairs per head that attention computes: all, or those a causal mask keeps.

    With kv_seq > seq the queries are the last seq positions (a prefill after kv_seq - seq cached
    tokens, as dsim.model's mask has it): query i sees the kv_seq - seq cached keys and keys up to i.
    (The measured cases are causal only with kv_seq == seq, where every convention agrees.)"""
    if not causal:
        return sq * skv
    if skv < sq:
        raise ValueError(f"causal attention needs kv_seq >= seq, got kv_seq={skv} and seq={sq}")
    return sq * (skv - sq) + sq * (sq + 1) // 2


def attention_backend(qk_dim: int, v_dim: int, cal: Calibration | None = None) -> str:
    """The SDPA backend that runs these head dims (as measured on the calibrated GPU)."""
    cal = cal or Calibration()
    if qk_dim == v_dim and qk_dim <= 256 and qk_dim % 8 == 0:
        return cal.attn_backend_equal
    return cal.attn_backend_unequal


@lru_cache(maxsize=4096)
def _attn_works(n_q: int, bm: int, bn: int, sq: int, skv: int, causal: bool, splits: int) -> tuple[int, ...]:
    """Key blocks each query block visits (forward), per key split."""
    full, past = math.ceil(skv / bn), skv - sq
    if not causal:
        return (math.ceil(full / splits),) * n_q
    return tuple(max(1, math.ceil(min(skv, past + (i + 1) * bm) / bn)) for i in range(n_q))


@lru_cache(maxsize=4096)
def _attn_works_bwd(n_k: int, bm: int, bn: int, sq: int, skv: int, causal: bool) -> tuple[int, ...]:
    """Query blocks each key block visits (backward)."""
    full, past = math.ceil(sq / bm), skv - sq
    if not causal:
        return (full,) * n_k
    return tuple(max(1, full - max(0, j * bn - past) // bm) for j in range(n_k))


@lru_cache(maxsize=4096)
def _lpt(works: tuple[int, ...], copies: int, slots: int) -> tuple[float, int]:
    """Longest-first list scheduling of `copies` copies of each work onto `slots` SMs.

    Returns (load of the busiest SM, blocks it runs): the compute makespan in work units, and how
    many per-block overheads it pays."""
    loads, counts = np.zeros(slots), np.zeros(slots, dtype=np.int64)
    for w, m in sorted(Counter(works).items(), reverse=True):
        full, rem = divmod(copies * m, slots)
        loads += full * w
        counts += full
        if rem:
            idx = np.argpartition(loads, rem - 1)[:rem] if rem < slots else np.arange(slots)
            loads[idx] += w
            counts[idx] += 1
    i = int(np.argmax(loads))
    return float(loads[i]), int(counts[i])


def _rmsnorm_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    """F.rms_norm (PyTorch's fused layer-norm kernels): one block per row.

    Forward reads x and writes y; a row of 4096 or more elements does not stay in registers and is
    read twice. Backward: a dx kernel and a dweight kernel (partial sums, then a reduction), whose
    traffic relative to the minimum is rms_bwd_passes."""
    T, D = s["tokens"], s["hidden"]
    e, r = x.elt, x.cal.rms_bwd_passes
    reads = 1 if D < 4096 else 2
    ks = [x.rowwise("rms_norm", T, e * D, (reads + 1) * e * T * D + e * D + 4.0 * T, write=e * T * D)]
    if backward:
        ks += [x.rowwise("rms_norm backward: dx", T, 0, r * (3.0 * e * T * D + 4.0 * T), write=e * T * D),
               x.rowwise("rms_norm backward: dweight", T, 0, r * 2.0 * e * T * D + 8.0 * D * 64)]
    return ks


# Elementwise kinds: share of the bytes written, and whether PyTorch runs them as a vectorized kernel
# (bf16 in and out, same shapes), as a strided one (a dtype change bf16 -> fp32, a broadcast [N, D] * [N, 1]),
# or as a reduction over a middle dimension ([N/8, 8, D].sum(1)).
ELEMENTWISE_KINDS = {"add": (1 / 3, "mem"), "mul": (1 / 3, "mem"), "copy": (1 / 2, "mem"), "silu": (1 / 2, "mem"),
                     "cast": (2 / 3, "strided"), "bcast_mul": (1 / 2, "strided"), "sum_k": (1 / 9, "reduce"),
                     "chain": (1 / 2, "mem")}     # chain: `kernels` tiny in-place adds back to back


def _elementwise_kernels(x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    k, nbytes = int(s["kernels"]), float(s["bytes"])
    share, kind = ELEMENTWISE_KINDS.get(s["kind"], (1 / 3, "mem"))   # no kind: a binary op, vectorized
    elements = s["numel"] or nbytes / 4                               # (numel: the elements of the big operand)
    ks = [x.mem(s["kind"] or "elementwise", nbytes, kind=kind, count=k, write=nbytes * share, elements=elements)]
    if backward:
        ks.append(x.mem("backward (same traffic)", nbytes, kind=kind, count=k, write=nbytes * share, elements=elements))
    return ks


def _op_kernels(op: str, x: _Ctx, s: dict, backward: bool) -> list[Kernel]:
    if op == "gemm":
        return _gemm_kernels(x, s, backward)
    if op == "moe_ffn":
        return _moe_kernels(x, s, backward)
    if op == "attention":
        return _attention_kernels(x, s, backward)
    if op == "rmsnorm":
        return _rmsnorm_kernels(x, s, backward)
    if op == "elementwise":
        return _elementwise_kernels(x, s, backward)
    if op == "gate":
        return _gate_kernels(x, s["tokens"], s["hidden"], s["experts"], s["top_k"], s["route_norm"], backward, "")
    if op == "grouped_gemm":
        return _grouped_gemm_kernels(x, s, backward)
    if op == "sort":
        return [x.sort("argsort", s["n"])]
    return _rows_kernels(x, op, s, backward)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def _check(op: str, gpu: str | GPU, dtype: str, backward: bool, shape: dict[str, Any]) -> tuple[GPU, str, dict]:
    """Validate the arguments; return the GPU, the canonical dtype and the full shape."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: choose one of {', '.join(OPS)}")
    g = get_gpu(gpu)
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if d not in ELT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(ELT_BYTES)}")
    if op not in ("gemm", "elementwise", "rmsnorm") and d not in ("bf16", "fp16"):
        raise ValueError(f"dtype {dtype!r} is not modelled for op {op!r}: dsim runs it in bf16 or fp16")
    peak_flops(g, d)                                   # raises when this GPU lacks the dtype
    if not isinstance(backward, bool):
        raise ValueError(f"backward must be True or False, got {backward!r}")
    if backward and op in ("gate", "sort"):
        raise ValueError(f"backward=True is not modelled for op {op!r} on its own (it is part of moe_ffn)")
    required, optional = OPS[op]
    unknown = sorted(set(shape) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"op {op!r} got unexpected argument(s) {', '.join(unknown)}: it takes "
                         f"{', '.join(required)}" + (f" and optionally {', '.join(optional)}" if optional else ""))
    missing = [a for a in required if a not in shape]
    if missing:
        raise ValueError(f"op {op!r} is missing argument(s) {', '.join(missing)} (it takes {', '.join(required)})")
    full = {**optional, **shape}
    for name, value in full.items():
        if name in ("causal", "route_norm"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        elif name == "kind":
            if value is not None and value not in ELEMENTWISE_KINDS:
                raise ValueError(f"kind must be one of {', '.join(ELEMENTWISE_KINDS)} (or None), got {value!r}")
        elif value is None and name in optional:
            continue
        elif isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "bytes" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'bytes' else 1}, got {value!r}")
    if op == "attention" and full["causal"] and full["kv_seq"] is not None and full["kv_seq"] < full["seq"]:
        raise ValueError(f"kv_seq must be >= seq for causal attention, got kv_seq={full['kv_seq']} and seq={full['seq']}")
    if op in ("moe_ffn", "gate") and full["top_k"] > full["experts"]:
        raise ValueError(f"top_k must be <= experts, got top_k={full['top_k']} and experts={full['experts']}")
    return g, d, full


def op_kernels(op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False,
               calibration: Calibration | None = None, **shape: Any) -> list[Kernel]:
    """The kernels `op` launches on `gpu`, each with its FLOPs, bytes and predicted time (s).

    Same arguments as `op_time`; the times add up to op_time(...)."""
    g, d, full = _check(op, gpu, dtype, backward, shape)
    cal = calibration or gpu_calibration(g)
    start = Kernel("(op start: first launch latency)", "launch", 0.0, 0.0, cal.op_start_s, count=0)
    return [start] + _op_kernels(op, _Ctx(g, cal, d), full, backward)


def op_time(op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False,
            calibration: Calibration | None = None, **shape: Any) -> float:
    """Predicted GPU time (seconds) of one op; backward=True means forward plus backward.

    op and its shape arguments (module docstring for what each times exactly):
      "gemm" m, n, k [, batch]; "moe_ffn" tokens, hidden, moe_inter, experts, top_k;
      "attention" batch, seq, heads, qk_dim, v_dim, causal [, kv_seq]; "rmsnorm" tokens, hidden;
      "elementwise" bytes [, kernels]; "gate" tokens, hidden, experts, top_k;
      "grouped_gemm" tokens, n, k, groups; "sort" n; "gather_rows" / "index_select_rows" /
      "index_add_rows" rows, width, dst_rows.
    gpu: a dsim.cost.hardware name or GPU; dtype: "bf16" (default), "fp16", "fp32", "tf32", "fp8",
    "int8" (GEMMs), bf16/fp16 for the MoE layer and attention.
    calibration: efficiency constants to use instead of the GPU's committed ones.

    >>> op_time("gemm", m=8192, n=8192, k=8192) > 2 * 8192**3 / 989.5e12
    True
    """
    return float(sum(k.time_s for k in op_kernels(op, gpu, dtype, backward, calibration, **shape)))


def roofline_work(op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False,
                  **shape: Any) -> tuple[float, float, float]:
    """What a perfect kernel must do: (FLOPs at the dtype's peak, fp32 CUDA-core FLOPs, bytes).

    FLOPs are the op's useful FLOPs (a causal mask's skipped pairs excluded; the MoE gate's router
    GEMM is fp32); bytes are inputs read once and outputs written once (the MoE layer: x, y and the
    weights of the experts that get tokens; its backward: dy, dx, those weights again and their
    gradients). Memory-bound ops report the bytes of their kernels."""
    g, d, s = _check(op, gpu, dtype, backward, shape)
    e = ELT_BYTES[d]
    f, f32 = 0.0, 0.0
    if op == "gemm":
        m, n, k, o = s["m"], s["n"], s["k"], max(e, 2)
        f = 2.0 * s["batch"] * m * n * k
        b = s["batch"] * (e * (m * k + k * n) + o * m * n)
        if backward:                                       # dx = dy w^T and dw = x^T dy
            f, b = 3 * f, b + s["batch"] * (e * (m * n + n * k) + o * m * k + e * (k * m + m * n) + o * k * n)
        if d == "fp32":
            f32, f = f, 0.0
    elif op in ("moe_ffn", "gate"):
        T, D, E, K = s["tokens"], s["hidden"], s["experts"], s["top_k"]
        f32 = 2.0 * T * D * E * (3 if backward else 1)
        if op == "gate":
            b = 2.0 * T * D + 2.0 * E * D + 12.0 * T * K
        else:
            I = s["moe_inter"]
            _, active, _ = expert_load(T, K, E, 64)
            f = 6.0 * T * K * D * I * (3 if backward else 1)
            b = 4.0 * T * D + 2.0 * E * D + 6.0 * active * D * I
            if backward:
                b += 4.0 * T * D + 2.0 * E * D + 6.0 * active * D * I + 6.0 * E * D * I
    elif op == "attention":
        b_, sq, h, dqk, dv = s["batch"], s["seq"], s["heads"], s["qk_dim"], s["v_dim"]
        skv = s["kv_seq"] or sq
        pairs = attention_pairs(sq, skv, s["causal"])
        f = 2.0 * b_ * h * pairs * (dqk + dv) * (1.0 + (3 * dqk + 2 * dv) / (dqk + dv) if backward else 1.0)
        b = 2.0 * b_ * h * (sq * dqk + skv * dqk + skv * dv + sq * dv) * (3 if backward else 1)
    elif op == "grouped_gemm":
        f = 2.0 * s["tokens"] * s["n"] * s["k"] * (3 if backward else 1)
        b = 2.0 * (s["tokens"] * (s["n"] + s["k"]) + s["groups"] * s["n"] * s["k"]) * (3 if backward else 1)
    elif op == "sort":
        b = 32.0 * s["n"]                                  # read the keys, write keys and indices (int64)
    else:
        b = sum(k.bytes for k in _op_kernels(op, _Ctx(g, Calibration(), d), s, backward))
    return f, f32, b


def roofline_time(op: str, gpu: str | GPU = "H100-SXM", dtype: str = "bf16", backward: bool = False, **shape: Any) -> float:
    """The datasheet roofline: max(FLOPs / peak FLOP/s, unavoidable bytes / peak HBM bandwidth).

    Work as in `roofline_work`; no launch, no tiles, no efficiency: op_time is never below it."""
    f, f32, b = roofline_work(op, gpu, dtype, backward, **shape)
    g = get_gpu(gpu)
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    return max(f / peak_flops(g, d) + f32 / peak_flops(g, "fp32"), b / g.hbm_bw)


# ---------------------------------------------------------------------------------------------
# Blocks and steps: the ops dsim.model runs, composed
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanOp:
    """One op of a block or step: its component (for breakdowns), a label, the op and its shape."""
    component: str
    label: str
    op: str
    shape: dict
    backward: bool = False


@dataclass(frozen=True)
class StepTime:
    """Predicted time of a block or a step, op by op."""
    gpu: str
    mode: str
    ops: tuple[tuple[PlanOp, float], ...]

    @property
    def total_s(self) -> float:
        return float(sum(t for _, t in self.ops))

    def breakdown(self) -> dict[str, float]:
        """Seconds per component (attn_proj, attn_core, norms, routed_experts, ...)."""
        out: dict[str, float] = {}
        for p, t in self.ops:
            out[p.component] = out.get(p.component, 0.0) + t
        return out


_MODES = ("train", "prefill", "decode")


def _ew(component: str, label: str, nbytes: float, kernels: int = 1, backward: bool = False) -> PlanOp:
    return PlanOp(component, label, "elementwise", dict(bytes=int(nbytes), kernels=kernels), backward)


def block_plan(args, layer_id: int, batch: int, seq_len: int, context: int = 0, mode: str = "train") -> list[PlanOp]:
    """The ops of one transformer block of dsim.model (attention, then dense MLP or MoE).

    batch x seq_len new tokens after `context` cached ones; mode "train" runs every op forward
    and backward. Shapes follow dsim.model exactly (MLA naive or absorbed, MHA/GQA, shared experts).
    """
    train = mode == "train"
    T, D, H = batch * seq_len, args.dim, args.n_heads
    skv = context + seq_len

    def g(comp: str, label: str, m: int, n: int, k: int, batch_: int = 1) -> PlanOp:
        return PlanOp(comp, label, "gemm", dict(m=m, n=n, k=k, batch=batch_), train)

    ops = [PlanOp("norms", "attn_norm", "rmsnorm", dict(tokens=T, hidden=D), train)]
    A = "attn_proj"
    if args.attn_type == "mla":
        qk, dv, R, dr, dn = args.qk_head_dim, args.v_head_dim, args.kv_lora_rank, args.qk_rope_head_dim, args.qk_nope_head_dim
        if args.q_lora_rank:
            ops += [g(A, "wq_a", T, args.q_lora_rank, D),
                    PlanOp("norms", "q_norm", "rmsnorm", dict(tokens=T, hidden=args.q_lora_rank), train),
                    g(A, "wq_b", T, H * qk, args.q_lora_rank)]
        else:
            ops.append(g(A, "wq", T, H * qk, D))
        ops += [g(A, "wkv_a", T, R + dr, D), PlanOp("norms", "kv_norm", "rmsnorm", dict(tokens=T, hidden=R), train),
                _ew("rope", "rope (q_pe, k_pe)", 24 * T * dr * (H + 1), 6, train)]
        if args.attn_impl == "naive":
            ops += [g(A, "wkv_b", T, H * (dn + dv), R),
                    _ew("attn_core", "cat q, k (expand k_pe)", 8 * T * H * qk, 2, train)]
            if mode != "train":
                ops.append(_ew("attn_core", "write k, v cache", 4 * T * H * (qk + dv), 2))
            ops.append(PlanOp("attn_core", "sdpa", "attention",
                              dict(batch=batch, seq=seq_len, kv_seq=skv, heads=H, qk_dim=qk, v_dim=dv,
                                   causal=seq_len > 1), train))
        else:
            B = batch
            ops += [g(A, "absorb W_UK into q", T, R, dn, H)]
            if mode != "train":
                ops.append(_ew("attn_core", "write latent cache", 4 * T * (R + dr), 2))
            ops += [g("attn_core", "scores q.c_kv", seq_len * H, skv, R, B), g("attn_core", "scores q_pe.k_pe", seq_len * H, skv, dr, B),
                    _ew("attn_core", "add, mask, softmax (fp32)", 22 * B * seq_len * H * skv, 4, train),
                    g("attn_core", "p @ c_kv", seq_len * H, R, skv, B), g(A, "W_UV", T, dv, R, H)]
        ops.append(g(A, "wo", T, D, H * dv))
    else:
        hd, kvh = args.head_size, args.kv_heads
        ops += [g(A, "wq", T, H * hd, D), g(A, "wk", T, kvh * hd, D), g(A, "wv", T, kvh * hd, D),
                _ew("rope", "rope (q, k)", 24 * T * hd * (H + kvh), 6, train)]
        if mode != "train":
            ops.append(_ew("attn_core", "write k, v cache", 8 * T * kvh * hd, 2))
        ops += [PlanOp("attn_core", "sdpa", "attention", dict(batch=batch, seq=seq_len, kv_seq=skv, heads=H, qk_dim=hd,
                                                              v_dim=hd, causal=seq_len > 1), train),
                g(A, "wo", T, D, H * hd)]
    ops += [_ew("residual", "residual add", 6 * T * D, 1, train),
            PlanOp("norms", "ffn_norm", "rmsnorm", dict(tokens=T, hidden=D), train)]
    if layer_id < args.n_dense_layers or not args.n_routed_experts:
        I = args.inter_dim
        ops += [g("dense_ffn", "w1", T, I, D), g("dense_ffn", "w3", T, I, D),
                _ew("dense_ffn", "silu(h1) * h3", 10 * T * I, 2, train), g("dense_ffn", "w2", T, D, I)]
    else:
        ops.append(PlanOp("routed_experts", "moe (gate + routed experts)", "moe_ffn",
                          dict(tokens=T, hidden=D, moe_inter=args.moe_inter_dim, experts=args.n_routed_experts,
                               top_k=args.n_activated_experts, route_norm=args.renormalize), train))
        if args.n_shared_experts:
            I = args.n_shared_experts * args.moe_inter_dim
            ops += [g("shared_experts", "shared w1", T, I, D), g("shared_experts", "shared w3", T, I, D),
                    _ew("shared_experts", "shared silu(h1) * h3", 10 * T * I, 2, train),
                    g("shared_experts", "shared w2", T, D, I), _ew("shared_experts", "routed + shared", 6 * T * D, 1, train)]
    ops.append(_ew("residual", "residual add", 6 * T * D, 1, train))
    return ops


def step_plan(args, batch: int, seq_len: int, mode: str = "train", context: int | None = None) -> list[PlanOp]:
    """Every op of one step of dsim.model.Transformer (same modes as dsim.cost.flops.flops).

    "train": forward and backward on batch x seq_len tokens, with the MTP modules and the
    cross-entropy; "prefill": forward on the prompt (logits at every position); "decode": one new
    token per sequence after `context` cached ones (default seq_len). The optimizer is not included.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    for name, v in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if mode == "decode":
        context, seq_len = (seq_len if context is None else context), 1
    context = context or 0
    train = mode == "train"
    T, D, V = batch * seq_len, args.dim, args.vocab_size
    ops = [PlanOp(Component.EMBEDDING, "embed", "gather_rows", dict(rows=T, width=D, dst_rows=V), train)]
    for i in range(args.n_layers):
        ops += [dataclasses.replace(p, label=f"layers.{i}.{p.label}") for p in block_plan(args, i, batch, seq_len, context, mode)]

    def head(prefix: str, tokens: int) -> list[PlanOp]:
        out = [PlanOp("norms", f"{prefix}norm", "rmsnorm", dict(tokens=tokens, hidden=D), train),
               PlanOp("head", f"{prefix}head", "gemm", dict(m=tokens, n=V, k=D), train)]
        if train:
            out.append(_ew("head", f"{prefix}cross-entropy (fp32 log-softmax)", 14 * tokens * V, 3, True))
        return out
    ops += head("", T)
    if train:
        mtp_layer = args.n_layers if args.is_moe else 0
        for k in range(1, args.n_mtp_layers + 1):
            s = seq_len - k
            if s <= 0:
                continue
            t = batch * s
            pre = f"mtp.{k - 1}."
            ops += [PlanOp("mtp", pre + "embed", "gather_rows", dict(rows=t, width=D, dst_rows=V), True),
                    PlanOp("mtp", pre + "enorm", "rmsnorm", dict(tokens=t, hidden=D), True),
                    PlanOp("mtp", pre + "hnorm", "rmsnorm", dict(tokens=t, hidden=D), True),
                    _ew("mtp", pre + "concat", 8 * t * D, 1, True),
                    PlanOp("mtp", pre + "eh_proj", "gemm", dict(m=t, n=D, k=2 * D), True)]
            ops += [dataclasses.replace(p, component="mtp", label=pre + p.label)
                    for p in block_plan(args, mtp_layer, batch, s, 0, mode)]
            ops += [dataclasses.replace(p, component="mtp") for p in head(pre, t)]
    return ops


def _timed(plan: list[PlanOp], gpu: str | GPU, mode: str, cal: Calibration | None) -> StepTime:
    g = get_gpu(gpu)
    cal = cal or gpu_calibration(g)
    seen: dict[tuple, float] = {}                   # the layers repeat: time each distinct op once
    out = []
    for p in plan:
        key = (p.op, p.backward, tuple(sorted(p.shape.items())))
        if key not in seen:
            seen[key] = op_time(p.op, g, "bf16", p.backward, cal, **p.shape)
        out.append((p, seen[key]))
    return StepTime(g.name, mode, tuple(out))


def layer_time(args, batch: int, seq_len: int, mode: str = "train", gpu: str | GPU = "H100-SXM",
               layer_id: int | None = None, context: int | None = None,
               calibration: Calibration | None = None) -> StepTime:
    """Predicted time of one transformer block (the first MoE block unless layer_id says otherwise)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    if layer_id is None:
        layer_id = args.n_dense_layers if args.is_moe else 0
    if not 0 <= layer_id < args.n_layers:
        raise ValueError(f"layer_id must be between 0 and n_layers - 1 = {args.n_layers - 1}, got {layer_id}")
    if mode == "decode":
        context, seq_len = (seq_len if context is None else context), 1
    return _timed(block_plan(args, layer_id, batch, seq_len, context or 0, mode), gpu, mode, calibration)


def step_time(args, batch: int, seq_len: int, mode: str = "train", gpu: str | GPU = "H100-SXM",
              context: int | None = None, calibration: Calibration | None = None) -> StepTime:
    """Predicted time of one training step (forward + backward, no optimizer), prefill or decode step
    of the whole model on one GPU (no parallelism: every weight and token on this GPU)."""
    return _timed(step_plan(args, batch, seq_len, mode, context), gpu, mode, calibration)


# ---------------------------------------------------------------------------------------------
# Fitting the calibration
# ---------------------------------------------------------------------------------------------
# Stages: (name, op kinds whose calibration records fit them, constants fitted, bounds).
# Each stage fits only its own constants, with those of the earlier stages fixed.
_ATTN_KEYS = tuple(Calibration().attn_eff)
FIT_STAGES: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, float, float], ...]], ...] = (
    ("memory", ("elementwise",), (("op_start_s", 0.0, 10e-6), ("launch_s", 0.5e-6, 20e-6), ("bw_eff", 0.3, 1.0),
                                  ("l2_write_frac", 0.0, 1.0), ("strided_s_per_elt", 1e-13, 1e-10),
                                  ("strided_fixed_s", 0.0, 10e-6),
                                  ("reduce_s_per_elt", 1e-13, 1e-10))),
    ("rmsnorm", ("rmsnorm",), (("row_s_per_byte", 1e-11, 1e-8), ("rms_eff", 0.3, 1.0), ("rms_bwd_passes", 0.5, 10.0))),
    ("gemm", ("gemm:bf16",), (("mma_eff", 0.3, 1.0), ("tile_ai0", 0.0, 200.0), ("tile_fill", 0.0, 16.0),
                              ("epilogue_bw", 0.5, 100.0), ("gemm_launch_s", 0.5e-6, 30e-6), ("sm_bw", 1.0, 16.0))),
    ("fp32 gemm", ("gemm:fp32",), (("fp32_eff", 0.1, 1.0),)),
    ("grouped gemm", ("grouped_gemm",), (("grouped_eff", 0.2, 1.0), ("grouped_small_eff", 0.1, 1.0),
                                         ("grouped_bw_eff", 0.3, 1.0))),
    ("rows and sort", ("gather_rows", "index_select_rows", "index_add_rows", "sort"),
     (("gather_eff", 0.1, 1.0), ("atomic_eff", 0.01, 1.0), ("index_put_eff", 0.02, 1.0), ("sort_small_s", 1e-6, 500e-6),
      ("sort_setup_s", 0.0, 200e-6))),
    ("gate", ("gate",), (("topk_s_per_elt", 1e-12, 1e-9),)),
    ("attention", ("attention",), tuple((f"attn_eff.{k}", 0.05, 1.0) for k in _ATTN_KEYS) + (("attn_fill", 0.0, 8.0),)),
    ("moe_ffn", ("moe_ffn",), ()),          # no constant of its own: a check of the composition
)


def _get(cal: Calibration, name: str) -> float:
    """A constant by name; 'attn_eff.cudnn_fwd_mha_causal' reads an entry of the attn_eff table."""
    if "." in name:
        table, key = name.split(".")
        return getattr(cal, table)[key]
    return getattr(cal, name)


def _with(cal: Calibration, values: dict[str, float]) -> Calibration:
    """A copy of cal with some constants changed (names as in _get)."""
    plain = {k: float(v) for k, v in values.items() if "." not in k}
    tables: dict[str, dict] = {}
    for k, v in values.items():
        if "." in k:
            table, key = k.split(".")
            tables.setdefault(table, dict(getattr(cal, table)))[key] = float(v)
    return cal.replace(**plain, **tables)


def record_kind(r: dict) -> str:
    """The op kind of a measurement record for the fit stages ('gemm:bf16', 'gemm:fp32', 'attention', ...)."""
    return f"gemm:{'fp32' if r['dtype'] == 'fp32' else 'bf16'}" if r["op"] == "gemm" else r["op"]


def predict_record(r: dict, cal: Calibration, gpu: str | GPU | None = None) -> float:
    """op_time for a measurement record (as written by bench/timing_measure.py)."""
    return op_time(r["op"], gpu or cal.gpu, r["dtype"], r["backward"], cal, **r["shape"])


def fit_calibration(records: list[dict], gpu: str | GPU = "H100-SXM", start: Calibration | None = None) -> Calibration:
    """Least-squares fit of the efficiency constants to measured op times.

    records: measurement records (op, dtype, backward, shape, time_s), e.g. the calibration split of
    dsim/data/timing_h100.json. Minimises sum(log(predicted / measured)^2), i.e. relative errors, stage
    by stage (FIT_STAGES): each stage fits its constants on the records of its op kinds, with the
    earlier stages' constants fixed, from two starting points (the start values and the middle of
    the bounds; the better fit wins). Constants that no record constrains keep their start value; the
    SDPA backends are read from the records. Deterministic.
    """
    g = get_gpu(gpu)
    cal = (start or Calibration()).replace(gpu=g.name)
    usable = [r for r in records if "error" not in r and r.get("time_s", 0) > 0]
    cal = cal.replace(**_measured_backends(usable, cal))
    diag: dict[str, Any] = {}
    for stage, kinds, params in FIT_STAGES:
        rs = [r for r in usable if record_kind(r) in kinds]
        if not rs:
            continue
        meas = np.array([r["time_s"] for r in rs])
        names = [p[0] for p in params]

        def residuals(vals: np.ndarray, names=names, rs=rs, meas=meas, base=cal) -> np.ndarray:
            c = _with(base, dict(zip(names, vals)))
            return np.log(np.array([predict_record(r, c, g) for r in rs]) / meas)

        if params:
            x0 = np.array([_get(cal, n) for n in names], dtype=float)
            lo, hi = np.array([p[1] for p in params]), np.array([p[2] for p in params])
            free = _constrained(residuals, x0, lo, hi)              # constants some record depends on
            if free.any():
                sub = lambda v, free=free, x0=x0: residuals(_scatter(free, v, x0))  # noqa: E731
                fits = [_least_squares(sub, start_, lo[free], hi[free]) for start_ in (x0[free], (lo[free] + hi[free]) / 2)]
                best = min(fits, key=lambda v: float(np.sum(sub(v) ** 2)))
                cal = _with(cal, dict(zip(names, _scatter(free, best, x0))))
        err = np.abs(np.expm1(np.log(np.array([predict_record(r, cal, g) for r in rs]) / meas)))
        diag[stage] = dict(records=len(rs), median_error=float(np.median(err)), worst_error=float(np.max(err)),
                           fitted=[n for n, f in zip(names, free) if f] if params else [])
    return cal.replace(source=f"fitted to {len(usable)} calibration records", fit=diag)


def _measured_backends(records: list[dict], cal: Calibration) -> dict[str, str]:
    """Which SDPA backend the GPU ran for equal and for unequal head dims, from the records."""
    out = {}
    for key, equal in (("attn_backend_equal", True), ("attn_backend_unequal", False)):
        seen = [r.get("extra", {}).get("backend") for r in records if r["op"] == "attention" and
                (r["shape"]["qk_dim"] == r["shape"]["v_dim"]) == equal]
        seen = [b for b in seen if b in ("flash_attention", "efficient_attention", "cudnn_attention", "math")]
        if seen:
            out[key] = max(set(seen), key=seen.count)
    return out


def _scatter(mask: np.ndarray, values: np.ndarray, base: np.ndarray) -> np.ndarray:
    out = base.copy()
    out[mask] = values
    return out


def _constrained(residuals: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> np.ndarray:
    """Which constants change some prediction when moved (the others are left alone)."""
    r0 = residuals(x0)
    free = np.zeros(len(x0), dtype=bool)
    for j in range(len(x0)):
        for target in (lo[j] + 0.25 * (hi[j] - lo[j]), lo[j] + 0.75 * (hi[j] - lo[j])):
            x = x0.copy()
            x[j] = target
            if np.max(np.abs(residuals(x) - r0)) > 1e-9:
                free[j] = True
                break
    return free


def _least_squares(residuals: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   iters: int = 200) -> np.ndarray:
    """Bounded Levenberg-Marquardt: minimise sum(residuals(x)^2) over lo <= x <= hi.

    Works in logistic coordinates (x = lo + (hi - lo) * sigmoid(u)) so that the bounds hold, with a
    forward-difference Jacobian. Small and dependency-free (no scipy)."""
    span = hi - lo
    to_x = lambda u: lo + span / (1.0 + np.exp(-u))                              # noqa: E731
    p = np.clip((x0 - lo) / span, 0.02, 0.98)                                   # off the bounds, where the slope vanishes
    u = np.log(p / (1 - p))
    r = residuals(to_x(u))
    cost, lam = float(r @ r), 1e-3
    for _ in range(iters):
        J = np.empty((len(r), len(u)))
        for j in range(len(u)):
            h = 1e-4 * max(1.0, abs(u[j]))
            du = np.zeros_like(u)
            du[j] = h
            J[:, j] = (residuals(to_x(u + du)) - r) / h
        A, grad = J.T @ J, J.T @ r
        improved = False
        while lam < 1e10:
            step = np.linalg.solve(A + lam * (np.diag(np.diag(A)) + 1e-9 * np.eye(len(u))), -grad)
            u_new = np.clip(u + step, -30, 30)
            r_new = residuals(to_x(u_new))
            c_new = float(r_new @ r_new)
            if c_new < cost:
                improved = cost - c_new > 1e-12 * max(cost, 1e-30)
                u, r, cost, lam = u_new, r_new, c_new, max(lam / 4, 1e-9)
                break
            lam *= 4
        if not improved:
            break
    return to_x(u)


# ---------------------------------------------------------------------------------------------
# Validation: measured against predicted
# ---------------------------------------------------------------------------------------------
def load_measurements(path: str | Path) -> dict[str, Any]:
    """A measurement file of bench/timing_measure.py (JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"measurement file not found: {path}") from None
    if not isinstance(data, dict) or "records" not in data:
        raise ValueError(f"{path} is not a timing_measure.py output (no 'records')")
    return data


def validate(records: list[dict], cal: Calibration, gpu: str | GPU | None = None) -> list[dict]:
    """Predicted, measured and datasheet-roofline times of each record, with relative errors."""
    rows = []
    for r in records:
        if "error" in r or not r.get("time_s"):
            continue
        pred = predict_record(r, cal, gpu)
        roof = roofline_time(r["op"], gpu or cal.gpu, r["dtype"], r["backward"], **r["shape"])
        rows.append(dict(op=r["op"], kind=record_kind(r), split=r["split"], backward=r["backward"], dtype=r["dtype"],
                         shape=r["shape"], measured_s=r["time_s"], predicted_s=pred, roofline_s=roof,
                         error=pred / r["time_s"] - 1.0, roofline_error=roof / r["time_s"] - 1.0,
                         backend=r.get("extra", {}).get("backend")))
    return rows


def error_summary(rows: list[dict], key: str = "op") -> dict[str, dict[str, float]]:
    """Median and worst |relative error| (model and datasheet roofline) per `key` and overall."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    groups["all"] = rows
    out = {}
    for name, rs in groups.items():
        if not rs:
            continue
        e = np.abs([r["error"] for r in rs])
        q = np.abs([r["roofline_error"] for r in rs])
        out[name] = dict(n=len(rs), median=float(np.median(e)), worst=float(np.max(e)),
                         roofline_median=float(np.median(q)), roofline_worst=float(np.max(q)))
    return out
