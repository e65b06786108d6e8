"""The kernel model: how long one kernel takes, from its work, its traffic and the GPU.

A kernel takes launch + max(compute time, memory time):
  memory time   bytes / (HBM bandwidth x achievable fraction), lower for gathers, atomics and sorts,
                lower when a kernel has too few blocks to keep every SM streaming, and with the
                writes that the L2 absorbs left out; PyTorch's non-vectorized kernels (dtype casts,
                broadcasts, middle-dimension reductions, top-k) are also limited per element;
  compute time  for GEMM-like kernels (cuBLAS GEMM, CUTLASS grouped GEMM, fused attention), which
                compute in tiles: waves x tile time, waves = ceil(tiles / SMs), and a tile of
                BM x BN over K runs at (peak / SMs) x efficiency(tile), then stores its output.
`KernelModel` holds the GPU, its calibration and the dtype, and builds each kind of kernel; ops.py
lists the kernels of each op with it. Memory-bound kernels can be given as the named tensors they
read and write (`KernelModel.io`), so that each one can be held against a profiler trace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dsim.cost.dtypes import DTYPES
from dsim.cost.hardware import GPU, peak_flops
from dsim.cost.timing.calibration import Calibration

# Element sizes, bytes: the number formats, and torch's index dtypes (int64 indices, int32 offsets)
F32, BF16 = DTYPES["fp32"].bytes, DTYPES["bf16"].bytes
I64, I32 = np.dtype(np.int64).itemsize, np.dtype(np.int32).itemsize


@dataclass(frozen=True)
class Kernel:
    """One kernel (or a few tiny ones, `count`) of an op: its work, its traffic and its time."""

    name: str
    kind: str  # gemm, grouped_gemm, attention, mem, gather, atomic, index_put, sort, topk, ...
    flops: float  # useful FLOPs (what a perfect kernel must compute)
    bytes: float  # bytes moved to and from HBM
    time_s: float
    note: str = ""
    count: int = 1  # kernel launches it stands for
    # the named tensors it reads and writes, name: bytes (kernels built by KernelModel.io); left out
    # of == and hash, so that a Kernel stays hashable
    reads: dict[str, float] = field(default_factory=dict, compare=False)
    writes: dict[str, float] = field(default_factory=dict, compare=False)


class KernelModel:
    """What the kernel-time functions need: the GPU, its calibration and the dtype."""

    def __init__(self, gpu: GPU, cal: Calibration, dtype: str):
        self.gpu, self.cal, self.dtype = gpu, cal, dtype
        self.sms = gpu.sm_count
        self.bw = gpu.hbm_bw * cal.bw_eff  # achievable streaming bandwidth, bytes/s
        self.elt = DTYPES[dtype].bytes

    # ---- memory-bound kernels ----
    def mem(
        self,
        name: str,
        nbytes: float,
        kind: str = "mem",
        count: int = 1,
        note: str = "",
        write: float = 0.0,
        elements: float = 0.0,
    ) -> Kernel:
        """launch + bytes / bandwidth, with the kind's efficiency (a gather, an atomic scatter...).

        `write` of the bytes are written; the last l2_write_frac x L2 of them are still in the L2
        (dirty, written back later) when the kernel ends, so they cost no HBM time in it. Kinds
        "strided" (PyTorch's non-vectorized elementwise kernel: dtype changes, broadcasts) and
        "reduce" (a reduction over a middle dimension) are limited by their per-element index
        arithmetic as much as by bandwidth: max(bytes / bandwidth, elements x s per element); so
        is "topk" (a radix select per row)."""
        c = self.cal
        eff = {
            "mem": 1.0,
            "strided": 1.0,
            "reduce": 1.0,
            "topk": 1.0,
            "gather": c.gather_eff,
            "atomic": c.atomic_eff,
            "index_put": c.index_put_eff,
        }[kind]
        hbm = nbytes - min(write, c.l2_write_frac * self.gpu.l2_bytes)
        t = hbm / (self.bw * eff)
        per_elt = {
            "strided": c.strided_s_per_elt,
            "reduce": c.reduce_s_per_elt,
            "topk": c.topk_s_per_elt,
        }
        if kind in per_elt:
            t = max(t, elements * per_elt[kind])
        if kind == "strided":
            t += count * c.strided_fixed_s
        return Kernel(name, kind, 0.0, nbytes, count * c.launch_s + t, note, count)

    def io(
        self,
        name: str,
        read: dict[str, float],
        write: dict[str, float],
        kind: str = "mem",
        count: int = 1,
        elements: float = 0.0,
        l2_writes: bool | Sequence[str] = True,
    ) -> Kernel:
        """`mem` with its bytes given as the tensors it reads and writes, by name: bytes.

        Name a tensor as a trace shows it, "scores fp32 [T,E]"; its bytes are its element size
        times its elements. l2_writes says which written tensors the L2 may absorb (`mem`'s
        `write`): all (True), none (False) or those named."""
        if l2_writes is True:
            cached = sum(write.values())
        elif l2_writes is False:
            cached = 0.0
        else:
            cached = sum(write[t] for t in l2_writes)
        nbytes = sum(read.values()) + sum(write.values())
        k = self.mem(name, nbytes, kind, count, write=cached, elements=elements)
        return dataclasses.replace(k, reads=dict(read), writes=dict(write))

    def sort(self, name: str, n: int, key_bits: int = 64) -> Kernel:
        """torch.sort / argsort of n int64 keys with their int64 positions.

        Up to 4096 keys: one block sorts them (one kernel). More: CUB's onesweep radix sort, one
        pass per 8 key bits (all 64 for argsort; index_put's sort knows its range), each pass a
        memset and a kernel that reads and writes keys and values (32 bytes per key), after some
        setup."""
        c = self.cal
        if n <= 4096:
            t = c.launch_s + c.sort_small_s * n / 4096
            return Kernel(name, "sort", 0.0, 32.0 * n, t, f"{n} keys, one block")
        passes = max(1, math.ceil(key_bits / 8))
        nbytes = 32.0 * n * passes
        t = c.sort_setup_s + 2 * passes * c.launch_s + nbytes / self.bw
        return Kernel(
            name, "sort", 0.0, nbytes, t, f"{n} keys, {passes} radix passes", 2 * passes + 4
        )

    def gather(self, name: str, rows: int, width: int, src_rows: int, elt: int = 2) -> Kernel:
        """out[rows, width] = src[idx]: reads rows of a source of src_rows rows, writes them in
        order.

        A source that fits in the L2 is read from HBM once however often its rows repeat (x[rows]
        of the MoE layer: each token K times); a larger one is read row by row as the gather
        goes."""
        src = elt * src_rows * width
        reads = src if src <= self.gpu.l2_bytes else elt * rows * width
        writes = elt * rows * width
        return self.mem(name, reads + writes + 8.0 * rows, kind="gather", write=writes)

    def rowwise(
        self,
        name: str,
        rows: int,
        row_bytes: float,
        nbytes: float,
        write: float = 0.0,
        count: int = 1,
    ) -> Kernel:
        """A kernel that gives each row to one block (norms): bandwidth-bound with many rows; with
        few, a wave of rows takes as long as one block needs to stream its row (row_bytes=0: no
        such limit)."""
        c = self.cal
        waves = math.ceil(rows / (8 * self.sms))  # 8 resident blocks per SM
        hbm = nbytes - min(write, c.l2_write_frac * self.gpu.l2_bytes)
        t = max(hbm / (self.bw * c.rms_eff), waves * row_bytes * c.row_s_per_byte)
        return Kernel(name, "rowwise", 0.0, nbytes, count * c.launch_s + t, f"{rows} rows", count)

    # ---- dense GEMM ----
    def gemm(
        self, name: str, m: int, n: int, k: int, batch: int = 1, dtype: str | None = None
    ) -> Kernel:
        """cuBLAS: best tile and split-K for y[m,n] = x[m,k] @ w[k,n] (batch independent products).

        fp8/int8 GEMMs: 1-byte inputs, 2-byte (bf16) outputs."""
        dtype = dtype or self.dtype
        peak = peak_flops(self.gpu, dtype)
        elt_in = DTYPES[dtype].bytes
        elt_out = max(elt_in, 2)
        if dtype == "fp32":
            eff, tiles, ref = self.cal.fp32_eff, _TILES_FP32, 128 * 128 / 256
        else:
            eff, tiles, ref = self.cal.mma_eff, _TILES_TC, _AI_REF
        flops = 2.0 * batch * m * n * k
        nbytes = batch * (elt_in * (m * k + k * n) + elt_out * m * n)
        t, note = _best_gemm(
            m, n, k, batch, nbytes, peak / self.sms, eff, tiles, ref, self, elt_out
        )
        return Kernel(name, "gemm", flops, nbytes, self.cal.gemm_launch_s + t, note)

    def epilogue(self, bm: int, bn: int, elt_out: float = 2) -> float:
        """Time to store one output tile (see _best_gemm)."""
        return bm * bn * elt_out / (self.bw / self.sms * self.cal.epilogue_bw)

    # ---- grouped GEMM (torch._grouped_mm on Hopper: CUTLASS, persistent over all groups' tiles)
    def grouped(
        self,
        name: str,
        rows_tiles: Callable[[int], float],
        rows: int,
        n: int,
        k: int,
        groups: int,
        active: float,
        per_group_rows: float,
    ) -> Kernel:
        """out[rows, n] = x[rows, k] @ w[g][k, n] for each group's rows.

        rows_tiles(BM) = sum over groups of ceil(rows_g / BM) (expected). The tile follows
        torch's GroupMM.cu: 64x128 (BK 128) when rows/groups <= 128 or n <= 128, else 128x256
        (BK 64).
        """
        c = self.cal
        small = per_group_rows <= 128 or n <= 128
        bm, bn, bk, eff = (
            (64, 128, 128, c.grouped_small_eff) if small else (128, 256, 64, c.grouped_eff)
        )
        tiles = rows_tiles(bm) * math.ceil(n / bn)
        steps = math.ceil(k / bk) + c.tile_fill * 64 / bk
        peak_per_sm = peak_flops(self.gpu, self.dtype) / self.sms
        t_tile = 2.0 * bm * bn * bk * steps / (peak_per_sm * eff) + self.epilogue(bm, bn)
        t_c = math.ceil(tiles / self.sms) * t_tile if tiles > 0 else 0.0
        nbytes = 2.0 * (rows * k + active * k * n + rows * n)
        t_m = nbytes / (self.bw * c.grouped_bw_eff * min(1.0, max(tiles, 1) * c.sm_bw / self.sms))
        flops = 2.0 * rows * n * k
        note = f"tile {bm}x{bn}, {tiles:.0f} tiles, {math.ceil(tiles / self.sms)} waves"
        return Kernel(
            name, "grouped_gemm", flops, nbytes, 2 * c.launch_s + max(t_c, t_m), note, count=2
        )

    def grouped_wgrad(
        self, name: str, rows: int, m: int, n: int, groups: int, active: float, mean_rows: float
    ) -> Kernel:
        """dW[g][m, n] = x_g^T @ dy_g over each group's rows (both operands 2-D, ragged K)."""
        c = self.cal
        small = m <= 128 or n <= 128
        bm, bn, bk, eff = (
            (64, 128, 128, c.grouped_small_eff) if small else (128, 256, 64, c.grouped_eff)
        )
        tiles = groups * math.ceil(m / bm) * math.ceil(n / bn)
        steps = active / groups * math.ceil(mean_rows / bk) + c.tile_fill * 64 / bk
        peak_per_sm = peak_flops(self.gpu, self.dtype) / self.sms
        t_tile = 2.0 * bm * bn * bk * steps / (peak_per_sm * eff) + self.epilogue(bm, bn)
        t_c = math.ceil(tiles / self.sms) * t_tile
        nbytes = 2.0 * (rows * m + rows * n + groups * m * n)
        t_m = nbytes / (self.bw * c.grouped_bw_eff)
        note = f"weight gradient, tile {bm}x{bn}, {tiles} tiles"
        t = 2 * c.launch_s + max(t_c, t_m)
        return Kernel(name, "grouped_gemm", 2.0 * rows * m * n, nbytes, t, note, count=2)


# Tile shapes cuBLAS picks from for tensor-core GEMMs on Hopper (BM, BN), and for fp32 SGEMM.
# The last three tensor-core tiles serve a few tokens (cuBLAS swaps A and B); the last two SGEMM
# ones are GEMV-like, for a few rows; the others are the SGEMM tiles seen in H100 profiles.
_TILES_TC = ((128, 256), (256, 128), (128, 128), (64, 256), (64, 128), (128, 64), (64, 64),
             (64, 32), (8, 256), (16, 128), (32, 128))  # fmt: skip
_TILES_FP32 = ((256, 128), (128, 128), (256, 64), (128, 64), (64, 128), (8, 256), (16, 128))
_AI_REF = 128 * 256 / (128 + 256)  # FLOP per byte loaded of the reference tile (85.3)


def _tile_eff(bm: int, bn: int, ai0: float, ref: float) -> float:
    """Relative efficiency of a BMxBN tile: ai/(ai+ai0) against the reference tile's."""
    ai = bm * bn / (bm + bn)
    return (ai / (ai + ai0)) / (ref / (ref + ai0))


# ANCHOR: best_gemm
def _best_gemm(
    m: int,
    n: int,
    k: int,
    batch: int,
    nbytes: float,
    peak_per_sm: float,
    eff: float,
    tiles: Iterable[tuple[int, int]],
    ref: float,
    x: KernelModel,
    elt_out: float = 2,
) -> tuple[float, str]:
    """Fastest (tile, split-K) for a GEMM: max(compute, memory) time, and a description.

    A tile takes its K-loop (plus a prologue of tile_fill steps) and then stores its output; the
    store overlaps the next tile's loop only partly, so it is charged at epilogue_bw x an SM's share
    of the bandwidth (it matters when K is short: a thin inner dimension, big outputs)."""
    c, sms = x.cal, x.sms
    best, note = math.inf, ""
    for bm, bn in tiles:
        n_tiles = batch * math.ceil(m / bm) * math.ceil(n / bn)
        t_step = 2.0 * bm * bn * 64 / (peak_per_sm * eff * _tile_eff(bm, bn, c.tile_ai0, ref))
        t_epi = x.epilogue(bm, bn, elt_out)
        for split in (1, 2, 3, 4, 6, 8, 12, 16):
            if split > 1 and n_tiles * split > 2 * sms:  # split-K only to fill the SMs
                break
            waves = math.ceil(n_tiles * split / sms)
            t_c = waves * (t_step * (math.ceil(k / split / 64) + c.tile_fill) + t_epi)
            active = min(n_tiles * split, sms)  # (split-K's partial sums stay in the L2)
            t_m = nbytes / (x.bw * min(1.0, active * c.sm_bw / sms))
            t = max(t_c, t_m)
            if t < best:
                best = t
                split_note = f", split-K {split}" if split > 1 else ""
                note = f"tile {bm}x{bn}{split_note}, {waves} wave(s)"
    return best, note
    # ANCHOR_END: best_gemm


# ---------------------------------------------------------------------------------------------
# Expert load under random routing
# ---------------------------------------------------------------------------------------------
MAX_MOE_TOKENS = 1 << 36  # tokens of one MoE layer call expert_load takes (its window ~ sqrt)


@lru_cache(maxsize=8192)
def expert_load(
    tokens: int, n_activated_experts: int, n_routed_experts: int, block: int
) -> tuple[float, float, float]:
    """Expected (sum over experts of ceil(rows_e / block), experts with >= 1 row, their mean rows).

    Each token sends one copy to each of n_activated_experts distinct experts; with random routing
    an expert's rows are Binomial(tokens, n_activated_experts / n_routed_experts). Tile quantization
    per expert is what makes a grouped GEMM lose efficiency when experts get few tokens:
    ceil(rows_e / block) tiles for rows_e rows.
    """
    K, E = n_activated_experts, n_routed_experts
    p = K / E
    if p >= 1.0:
        return E * math.ceil(tokens / block), float(E), float(tokens)
    mean, sd = tokens * p, math.sqrt(tokens * p * (1 - p))
    lo, hi = max(0, int(mean - 9 * sd) - 1), min(tokens, int(mean + 9 * sd) + 2)
    n = np.arange(lo, hi + 1, dtype=np.float64)
    # log pmf(i + 1) - log pmf(i) = log((tokens - i) / (i + 1)) + log(p / (1 - p)): one cumulative
    # sum over the +-9 sd window, normalised below (vectorised: the window grows as sqrt(tokens))
    steps = np.log((tokens - n[:-1]) / (n[:-1] + 1)) + (math.log(p) - math.log1p(-p))
    logpmf = np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(logpmf - logpmf.max())
    pmf /= pmf.sum()
    tiles = E * float(np.sum(pmf * np.ceil(n / block)))
    p_active = 1.0 - (1.0 - p) ** tokens
    active = E * p_active
    return tiles, active, tokens * K / max(active, 1e-9)


# ---------------------------------------------------------------------------------------------
# Fused attention: blocks and their scheduling onto the SMs
# ---------------------------------------------------------------------------------------------
# (forward BM x BN, backward BM x BN) blocks of PyTorch's fused attention kernels for head dims
# <= 256 (flash: FlashAttention-2's kernel traits for head dim 128; cuDNN: the shapes its kernel
# names on an H100 hint at, sdpa_sm90_flash_fprop_..._64x128x128 and ..._bprop_..._64x64x128, in
# the order the calibration fit prefers)
ATTN_BLOCKS = {
    "flash": ((128, 64), (64, 128)),
    "efficient": ((64, 64), (64, 64)),
    "cudnn": ((128, 64), (128, 64)),
}


# Most tokens a fused attention kernel is scheduled over: the time model lists the work of every
# query block (forward) and key block (backward), so it bounds how many there may be (2^20 blocks
# of 64 keys: 67M tokens, far past any model's context).
MAX_ATTN_TOKENS = 1 << 26


def attn_works(
    n_q: int, bm: int, bn: int, sq: int, skv: int, causal: bool, splits: int
) -> np.ndarray:
    """Key blocks each query block visits (forward), per key split: [n_q], non-decreasing."""
    full, past = math.ceil(skv / bn), skv - sq
    if not causal:
        return np.full(n_q, math.ceil(full / splits), dtype=np.int64)
    ends = np.minimum(skv, past + (np.arange(n_q, dtype=np.int64) + 1) * bm)
    return np.maximum(1, -(-ends // bn))


def attn_works_bwd(n_k: int, bm: int, bn: int, sq: int, skv: int, causal: bool) -> np.ndarray:
    """Query blocks each key block visits (backward): [n_k], non-increasing."""
    full, past = math.ceil(sq / bm), skv - sq
    if not causal:
        return np.full(n_k, full, dtype=np.int64)
    skipped = np.maximum(0, np.arange(n_k, dtype=np.int64) * bn - past) // bm
    return np.maximum(1, full - skipped)


def makespan(works: np.ndarray, copies: int, slots: int) -> tuple[float, int]:
    """The compute makespan of `copies` copies of each block's work on `slots` SMs.

    Returns (load of the busiest SM in work units, blocks it runs). The load is the larger of two
    bounds that any schedule meets: the average, sum / slots, and the wave bound, for every work
    level w, ceil(blocks of work >= w / slots) x w (some SM runs that many of them). Both grow
    when any block's work grows or blocks are added, so the time model is monotone in the sequence
    length, the batch and the heads (a greedy list schedule is not: Graham's anomaly). With
    blocks of equal work (full attention, decoding) it is the exact ceil(blocks / slots) waves.
    """
    w = np.sort(works)[::-1].astype(np.float64)  # descending
    at_least = copies * np.arange(1, len(w) + 1, dtype=np.float64)  # blocks with work >= w[i]
    waves = float(np.max(np.ceil(at_least / slots) * w))
    return max(copies * float(w.sum()) / slots, waves), math.ceil(copies * len(w) / slots)


@lru_cache(maxsize=4096)
def attn_schedule(
    n: int,
    bm: int,
    bn: int,
    sq: int,
    skv: int,
    causal: bool,
    splits: int,
    copies: int,
    slots: int,
    backward: bool,
) -> tuple[float, int]:
    """makespan() of the forward (query blocks, `splits` key splits) or backward (key blocks)
    kernel of fused attention."""
    if backward:
        return makespan(attn_works_bwd(n, bm, bn, sq, skv, causal), copies, slots)
    return makespan(attn_works(n, bm, bn, sq, skv, causal, splits), copies, slots)
