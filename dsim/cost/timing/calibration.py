"""The efficiency constants of one GPU (`Calibration`) and the committed ones of each GPU.

A constant is a float field of `Calibration` or an entry of its `attn_eff` table (named
"attn_eff.<entry>"). `fit_calibration` (fit.py) fits them to measured op times and records in
`Calibration.fit` which ones some measurement constrained; `constants()` and `fitted_constants()`
count them, so that no text has to.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsim.cost.hardware import GPU, get_gpu

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


# The fused SDPA backend whose efficiencies `Calibration.attn_eff` holds: the one PyTorch (2.11)
# ran on both committed GPUs (H100, H200) for equal and for unequal (MLA) head dims alike.
ATTN_EFF_BACKEND = "cudnn"


def _attn_eff_defaults() -> dict[str, float]:
    """A guess per direction, head dims (mha: qk_head_dim == v_head_dim, mla: they differ) and
    mask of ATTN_EFF_BACKEND's kernels; each is a different kernel."""
    return {
        f"{ATTN_EFF_BACKEND}_{d}_{h}_{m}": 0.55 * (0.8 if d == "bwd" else 1.0)
        for d in ("fwd", "bwd")
        for h in ("mha", "mla")
        for m in ("causal", "full")
    }


@dataclass(frozen=True)
class Calibration:
    """Efficiency constants of one GPU. Fractions are of the datasheet peaks (dsim.cost.hardware).

    `fit_calibration` fits them; `gpu_calibration(gpu)` loads the committed ones. The defaults are
    round guesses for an H100, used only where nothing was fitted.
    """

    gpu: str = "H100-SXM"
    source: str = "uncalibrated defaults"
    # every kernel; memory-bound kernels
    op_start_s: float = 1.5e-6  # s once per op: the first kernel's launch latency
    launch_s: float = 3.0e-6  # s per kernel: launch, ramp-up, drain, and the gap to the next
    bw_eff: float = 0.90  # achievable fraction of the HBM bandwidth (vectorized streaming kernel)
    l2_write_frac: float = 0.3  # this fraction of the L2 absorbs the writes (written back later)
    strided_s_per_elt: float = 2.6e-12  # non-vectorized elementwise kernels (casts...): s/element
    strided_fixed_s: float = 1.5e-6  # and their longer minimum run time, s per kernel
    reduce_s_per_elt: float = 1.1e-12  # reductions over a middle dimension: s per input element
    # dense GEMM (cuBLAS)
    mma_eff: float = 0.80  # fraction of peak tensor FLOP/s inside a 128x256 tile
    tile_ai0: float = 20.0  # a BMxBN tile runs at ai/(ai + ai0) (ai = BM*BN/(BM+BN)), vs 128x256
    tile_fill: float = 2.0  # per tile prologue (pipeline fill), in 64-deep k-steps
    epilogue_bw: float = 4.0  # a tile's output is stored at this x an SM's fair share of bandwidth
    gemm_launch_s: float = 6.0e-6  # s per GEMM kernel
    sm_bw: float = 2.5  # one SM pulls at most sm_bw x its fair share of the bandwidth
    fp32_eff: float = 0.70  # fraction of the fp32 CUDA-core peak (SGEMM, no TF32)
    # grouped GEMM (CUTLASS, torch._grouped_mm)
    grouped_eff: float = 0.70  # 128x256 cooperative tile
    grouped_small_eff: float = 0.60  # 64x128 ping-pong tile (<= 128 rows per expert on average)
    grouped_bw_eff: float = 0.85  # bandwidth of a grouped GEMM streaming weights (x bw_eff)
    # gathers, scatters, sorts, row-wise kernels (efficiencies relative to bw_eff)
    gather_eff: float = 0.95  # row gather x[idx], index_select
    atomic_eff: float = 0.10  # index_add_ / scatter_add_ of bf16 rows (atomic read-modify-write)
    index_put_eff: float = 0.30  # index_put_(accumulate=True) after its sort (x[idx] backward)
    sort_small_s: float = 30e-6  # one-block sort of <= 4096 keys
    sort_setup_s: float = (
        20e-6  # a radix sort's setup kernels (histogram, scan, indices) and allocations
    )
    topk_s_per_elt: float = (
        45e-12  # torch.topk over E scores per row: a radix select per row, s per score
    )
    row_s_per_byte: float = 0.8e-9  # norms: one block per row; a lone row streams at this s/byte
    rms_eff: float = 0.9  # bandwidth of the norm kernels, relative to bw_eff
    rms_bwd_passes: float = 1.5  # F.rms_norm backward traffic, in units of its fused minimum
    # fused attention (SDPA): fraction of peak inside a tile, per direction, head dims and mask of
    # the measured backend (ATTN_EFF_BACKEND; other backends borrow it: `attention_efficiency`)
    attn_eff: dict = field(default_factory=_attn_eff_defaults)
    attn_fill: float = 1.0  # per block (CTA) overhead, in key (or query) blocks
    # SDPA's pick for qk_head_dim == v_head_dim <= 256 and for unequal head dims (MLA), as
    # measured (fit_calibration reads them from the records)
    attn_backend_equal: str = "cudnn_attention"
    attn_backend_unequal: str = "cudnn_attention"
    fit: dict = field(default_factory=dict, compare=False)  # fit diagnostics (per stage)

    def replace(self, **changes: Any) -> Calibration:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"calibration has no field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if not isinstance(d, dict):
            raise ValueError(f"a calibration must be a dict of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names, key=str)
        if unknown:
            raise ValueError(f"calibration has unknown field(s) {', '.join(map(str, unknown))}")
        attn = d.get("attn_eff", {})
        if not isinstance(attn, dict):
            raise ValueError(f"calibration field attn_eff = {attn!r} is not a dict")
        floats = [f.name for f in dataclasses.fields(cls) if f.type in ("float", float)]
        values = [(n, d[n]) for n in floats if n in d]
        for name, value in values + [(f"attn_eff.{k}", v) for k, v in attn.items()]:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"calibration field {name} = {value!r} is not a number")
        return cls(**d)

    def constants(self) -> tuple[str, ...]:
        """Names of every constant: the float fields, then 'attn_eff.<entry>' for the table."""
        names = [f.name for f in dataclasses.fields(self) if f.type in ("float", float)]
        i = names.index("attn_fill")
        return (*names[:i], *(f"attn_eff.{k}" for k in self.attn_eff), *names[i:])

    def fitted_constants(self) -> tuple[str, ...]:
        """The constants the fit moved: those some calibration record depends on, stage by stage
        (`fit` diagnostics, written by fit_calibration). Empty for an unfitted calibration; the
        others keep their default, a round guess."""
        return tuple(name for stage in self.fit.values() for name in stage.get("fitted", ()))


def attention_efficiency(cal: Calibration, backend: str, direction: str, variant: str) -> float:
    """Efficiency of a fused attention kernel: backend ("cudnn", "flash", "efficient"), direction
    ("fwd", "bwd"), variant ("mha_causal", "mla_full", ...).

    The table has one backend's entries, ATTN_EFF_BACKEND's (cuDNN: the backend SDPA ran on both
    committed GPUs, so the only one their measurements determine). Another fused backend that a
    calibration selects (FlashAttention or the memory-efficient kernel, which another GPU or
    PyTorch build may pick) runs with its own blocks (kernels.ATTN_BLOCKS) and the table's
    efficiency for the same direction, head-dim class and mask: an assumption, not a measurement
    (fit_calibration, given records of such a backend, fits these entries to them).
    """
    if f"{ATTN_EFF_BACKEND}_{direction}_{variant}" not in cal.attn_eff:
        raise ValueError(
            f"no attention efficiency for direction {direction!r} and variant {variant!r}: "
            "direction is 'fwd' or 'bwd', variant one of 'mha_causal', 'mha_full', 'mla_causal', "
            "'mla_full'"
        )
    own = cal.attn_eff.get(f"{backend}_{direction}_{variant}")
    return own if own is not None else cal.attn_eff[f"{ATTN_EFF_BACKEND}_{direction}_{variant}"]


# ---------------------------------------------------------------------------------------------
# GPUs without op-level measurements: efficiencies derived from published training runs
# ---------------------------------------------------------------------------------------------
# The tensor-core efficiencies a run scale multiplies (the GEMM, grouped-GEMM and attention
# kernels'); bandwidth, launch and latency constants stay the H100's.
TENSOR_CORE_CONSTANTS = ("mma_eff", "grouped_eff", "grouped_small_eff", "attn_eff")

# GPU -> the scale of the H100's tensor-core efficiencies that makes the planner reproduce the
# published runs (dsim/data/public_runs.json) marked "fit" on that GPU: their mean log error is
# zero (dsim.cost.plan.public_runs.fit_run_scale re-derives the value; tests/cost/
# test_public_runs.py holds it). The runs marked "validate" check it.
RUN_SCALES: dict[str, dict[str, Any]] = {
    "A100-80GB-SXM": dict(
        scale=0.726,
        fit=("Llama-2-70B", "Megatron-LM GPT-3 175B"),
        validate=("Llama-2-7B",),
        note="an end-to-end factor (kernels, framework and overlap at scale), not a kernel "
        "measurement: A100 GEMMs alone reach a larger fraction of peak",
    ),
    "H800": dict(
        scale=0.839,
        fit=("DeepSeek-V2", "DeepSeek-LLM-67B"),
        validate=("DeepSeek-V3",),
        note="the H800 has the H100's SMs and HBM; the factor is what DeepSeek's earlier bf16 "
        "runs lose against dsim's H100-calibrated kernels (DeepSeek-V3 stays a validation)",
    ),
}
RUN_SCALES["A100-40GB-SXM"] = dict(RUN_SCALES["A100-80GB-SXM"], note="the A100-80GB's (same die)")


def scaled_calibration(cal: Calibration, scale: float, gpu: str, source: str) -> Calibration:
    """`cal` with its tensor-core efficiencies (TENSOR_CORE_CONSTANTS) multiplied by `scale`, for
    `gpu`."""
    if not 0 < scale <= 1.5:
        raise ValueError(f"scale must be in (0, 1.5], got {scale!r}")
    change: dict[str, Any] = {
        k: getattr(cal, k) * scale for k in TENSOR_CORE_CONSTANTS if k != "attn_eff"
    }
    change["attn_eff"] = {k: v * scale for k, v in cal.attn_eff.items()}
    return cal.replace(gpu=gpu, source=source, **change)


def gpu_key(gpu: str | GPU) -> str:
    """File-name key of a GPU: 'H100-SXM' -> 'h100', 'H200' -> 'h200', 'H800' -> 'h800'."""
    name = get_gpu(gpu).name.lower()
    return {"h100-sxm": "h100"}.get(name, name)


_CAL_CACHE: dict[str, Calibration] = {}


def gpu_calibration(gpu: str | GPU = "H100-SXM") -> Calibration:
    """The committed calibration of `gpu`, or the H100-SXM's applied to this GPU's datasheet.

    Reads dsim/data/timing_calibration_<gpu>.json (written by bench/validate_timing.py). A GPU
    without one borrows the H100-SXM's efficiencies (its own peaks, bandwidth and SM count still
    apply), with the tensor-core efficiencies scaled by its RUN_SCALES entry where published runs
    on it give one; without any file, the class defaults are used (their `source` says so).
    """
    g = get_gpu(gpu)
    if g.name in _CAL_CACHE:
        return _CAL_CACHE[g.name]
    path = DATA_DIR / f"timing_calibration_{gpu_key(g)}.json"
    if path.exists():
        try:
            cal = Calibration.from_dict(json.loads(path.read_text())["calibration"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path.name} does not match this version of dsim.cost.timing ({e}); re-run "
                f"bench/validate_timing.py --data {path.parent.name}/timing_{gpu_key(g)}.json"
            ) from None
    elif g.name in RUN_SCALES:
        h100, r = gpu_calibration("H100-SXM"), RUN_SCALES[g.name]
        source = (
            f"H100-SXM efficiencies ({h100.source}) applied to the {g.name} datasheet, "
            f"tensor-core efficiencies x {r['scale']:.3f} fitted to published runs "
            f"({', '.join(r['fit'])}; validated on {', '.join(r['validate'])})"
            + (f": {r['note']}" if r["note"] else "")
        )
        cal = scaled_calibration(h100, r["scale"], g.name, source)
    elif g.name != "H100-SXM":
        h100 = gpu_calibration("H100-SXM")
        cal = h100.replace(
            gpu=g.name,
            source=f"H100-SXM efficiencies ({h100.source}) applied to the {g.name} datasheet",
        )
    else:
        cal = Calibration()
    _CAL_CACHE[g.name] = cal
    return cal
