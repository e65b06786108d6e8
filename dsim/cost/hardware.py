"""
A small catalog of datacenter GPUs: peak compute, memory and interconnect.

Every number is a DENSE peak (no 2:4 structured sparsity) in SI units:
FLOP/s, bytes, bytes/s (1 GB/s = 1e9 bytes/s). Link bandwidths are per GPU and
per direction, which is what a ring collective can push out of one GPU at once.
NVIDIA quotes NVLink "900 GB/s" as the sum of both directions, so we halve it;
for Hopper it quotes tensor-core FLOP/s with sparsity, so we halve those too.

Sources (cited per entry below):
  [A100-DS]   NVIDIA A100 Tensor Core GPU datasheet (dense and sparse both listed)
  [A100-WP]   NVIDIA A100 Tensor Core GPU Architecture whitepaper (SMs, L2)
  [H100-DS]   NVIDIA H100 Tensor Core GPU datasheet (tensor figures are sparse)
  [H100-WP]   NVIDIA H100 Tensor Core GPU Architecture whitepaper (SMs, L2)
  [H200-DS]   NVIDIA H200 Tensor Core GPU datasheet (tensor figures are sparse)
  [DGX]       DGX A100 / H100 / H200 user guides: one ConnectX NIC per GPU
              (A100: ConnectX-6 HDR 200 Gb/s; H100/H200: ConnectX-7 NDR 400 Gb/s)
  [DSV3]      DeepSeek-V3 Technical Report (arXiv 2412.19437), sec. 3.2.2:
              "NVLink offers a bandwidth of 160 GB/s, roughly 3.2 times that of IB (50 GB/s)"
  [DeepEP]    deepseek-ai/DeepEP docs/legacy.md: "H800 (~160 GB/s NVLink maximum
              bandwidth) ... CX7 InfiniBand 400 Gb/s RDMA network card (~50 GB/s)"
  [SB]        jax-ml/scaling-book, "How to Think About GPUs" (spec tables)

Usage:
    gpu = get_gpu("h100")            # -> the H100-SXM entry
    peak_flops(gpu, "bf16")          # -> 989.5e12
    register_gpu(GPU(name="MyGPU", ...))
"""

import math
from dataclasses import dataclass, fields

from dsim.cost.dtypes import DTYPES as _FORMATS
from dsim.cost.dtypes import dtype_name

TB = 1e12  # tera (FLOP/s or bytes/s)
GB = 1e9  # giga
MiB = 2**20

BW_SOURCES = ("datasheet", "measured")

# -----------------------------------------------------------------------------
# the GPU record


@dataclass(frozen=True)
class GPU:
    """Peak figures of one GPU. All FLOP/s are dense tensor-core peaks except fp32
    (plain CUDA-core FP32, no tensor cores). None = the dtype is not supported."""

    name: str
    bf16_flops: float  # FLOP/s, dense
    fp16_flops: float  # FLOP/s, dense (fp32 accumulate)
    tf32_flops: float  # FLOP/s, dense
    fp8_flops: float | None  # FLOP/s, dense; None where there are no FP8 tensor cores
    int8_flops: float | None  # OP/s, dense
    fp32_flops: float  # FLOP/s, non-tensor FP32
    hbm_bytes: float  # bytes of HBM (datasheet "GB" = 1e9 bytes)
    hbm_bw: float  # bytes/s HBM bandwidth
    nvlink_bw: float  # bytes/s per GPU per direction, NVLink (or NVLink bridge)
    nvlink_domain: int  # GPUs joined all-to-all by nvlink_bw (8 on an HGX board, 2 for a bridge)
    pcie_bw: float  # bytes/s per direction, host PCIe link
    scaleout_bw: float  # bytes/s per GPU per direction, InfiniBand/RoCE NIC
    sm_count: int
    l2_bytes: int
    tdp_watts: float
    bw_source: str = "datasheet"  # "datasheet" (peak, not reachable) or "measured" (effective)
    notes: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"GPU name must be a non-empty string, got {self.name!r}")
        optional = {"fp8_flops", "int8_flops"}
        for f in fields(self):
            if f.name in ("name", "bw_source", "notes"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name in optional:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"GPU {self.name!r}: field {f.name} must be a positive number, got {value!r}"
                )
        if self.nvlink_domain != int(self.nvlink_domain):
            raise ValueError(
                f"GPU {self.name!r}: field nvlink_domain must be an integer, "
                f"got {self.nvlink_domain!r}"
            )
        if self.bw_source not in BW_SOURCES:
            raise ValueError(
                f"GPU {self.name!r}: field bw_source must be one of {BW_SOURCES}, "
                f"got {self.bw_source!r}"
            )


# The dtypes with a peak: those of the GPU record's <dtype>_flops fields (names of
# dsim.cost.dtypes).
DTYPES = tuple(f.name.removesuffix("_flops") for f in fields(GPU) if f.name.endswith("_flops"))
assert set(DTYPES) <= set(_FORMATS), DTYPES

# -----------------------------------------------------------------------------
# the catalog

A100_40GB_SXM = GPU(
    name="A100-40GB-SXM",
    # [A100-DS] lists dense figures directly (sparse in a second column): no halving.
    bf16_flops=312 * TB,
    fp16_flops=312 * TB,
    tf32_flops=156 * TB,
    fp8_flops=None,  # Ampere has no FP8 tensor cores
    int8_flops=624 * TB,
    fp32_flops=19.5 * TB,  # [A100-DS] FP32 19.5 TFLOPS
    hbm_bytes=40 * GB,  # [A100-DS] 40GB HBM2
    hbm_bw=1555 * GB,  # [A100-DS] 1,555 GB/s
    nvlink_bw=300 * GB,  # [A100-DS] NVLink 600 GB/s (both directions) -> 300 per direction
    nvlink_domain=8,  # HGX A100 8-GPU board, NVSwitch
    pcie_bw=32 * GB,  # [A100-DS] PCIe Gen4 64 GB/s (both directions)
    scaleout_bw=25 * GB,  # [DGX] DGX A100: one ConnectX-6 HDR 200 Gb/s per GPU
    sm_count=108,  # [A100-WP]
    l2_bytes=40 * MiB,  # [A100-WP] 40 MB L2
    tdp_watts=400,  # [A100-DS]
)

A100_80GB_SXM = GPU(
    name="A100-80GB-SXM",
    bf16_flops=312 * TB,
    fp16_flops=312 * TB,
    tf32_flops=156 * TB,  # [A100-DS], dense
    fp8_flops=None,
    int8_flops=624 * TB,
    fp32_flops=19.5 * TB,
    hbm_bytes=80 * GB,  # [A100-DS] 80GB HBM2e
    hbm_bw=2039 * GB,  # [A100-DS] 2,039 GB/s
    nvlink_bw=300 * GB,
    nvlink_domain=8,
    pcie_bw=32 * GB,
    scaleout_bw=25 * GB,  # [DGX] ConnectX-6 HDR 200 Gb/s per GPU
    sm_count=108,
    l2_bytes=40 * MiB,
    tdp_watts=400,
)

H100_SXM = GPU(
    name="H100-SXM",
    # [H100-DS] SXM column quotes tensor FLOP/s "with sparsity": BF16/FP16 1,979,
    # TF32 989, FP8 3,958, INT8 3,958 TOPS. We halve them to the dense peaks.
    bf16_flops=989.5 * TB,
    fp16_flops=989.5 * TB,
    tf32_flops=494.5 * TB,
    fp8_flops=1979 * TB,
    int8_flops=1979 * TB,
    fp32_flops=67 * TB,  # [H100-DS] FP32 67 TFLOPS (not a sparse figure)
    hbm_bytes=80 * GB,  # [H100-DS] 80GB HBM3
    hbm_bw=3.35 * TB,  # [H100-DS] 3.35 TB/s
    nvlink_bw=450 * GB,  # [H100-DS] NVLink 900 GB/s (both directions) -> 450 per direction
    nvlink_domain=8,  # HGX H100 8-GPU board, 4 NVSwitches [SB]
    pcie_bw=64 * GB,  # [H100-DS] PCIe Gen5 128 GB/s (both directions)
    scaleout_bw=50 * GB,  # [DGX] DGX H100: one ConnectX-7 NDR 400 Gb/s per GPU
    sm_count=132,  # [H100-WP] H100 SXM5
    l2_bytes=50 * MiB,  # [H100-WP] 50 MB L2
    tdp_watts=700,  # [H100-DS] up to 700 W
)

H100_PCIE = GPU(
    name="H100-PCIe",
    # [H100-DS] PCIe column, sparse figures halved: BF16/FP16 1,513 -> 756.5,
    # TF32 756 -> 378, FP8 3,026 -> 1,513, INT8 3,026 TOPS -> 1,513.
    bf16_flops=756.5 * TB,
    fp16_flops=756.5 * TB,
    tf32_flops=378 * TB,
    fp8_flops=1513 * TB,
    int8_flops=1513 * TB,
    fp32_flops=51 * TB,  # [H100-DS] FP32 51 TFLOPS
    hbm_bytes=80 * GB,  # [H100-DS] 80GB HBM2e
    hbm_bw=2.0 * TB,  # [H100-DS] 2 TB/s
    nvlink_bw=300 * GB,  # [H100-DS] NVLink bridge 600 GB/s (both directions), pairs only
    nvlink_domain=2,  # the bridge joins 2 cards; larger groups go over PCIe
    pcie_bw=64 * GB,  # [H100-DS] PCIe Gen5 128 GB/s (both directions)
    scaleout_bw=50 * GB,  # ASSUMPTION: one 400 Gb/s NIC per GPU (no reference system)
    sm_count=114,  # [H100-WP] H100 PCIe
    l2_bytes=50 * MiB,  # [H100-WP]
    tdp_watts=350,  # [H100-DS] 300-350 W
    notes="Scale-out bandwidth assumes one 400 Gb/s NIC per GPU; PCIe servers vary.",
)

H800 = GPU(
    name="H800",
    # The H800 (SXM) is an export variant of the H100 SXM: same tensor cores and HBM,
    # cut-down NVLink (and FP64). Compute/HBM figures as H100-SXM, sparse halved.
    bf16_flops=989.5 * TB,
    fp16_flops=989.5 * TB,
    tf32_flops=494.5 * TB,
    fp8_flops=1979 * TB,
    int8_flops=1979 * TB,
    fp32_flops=67 * TB,
    hbm_bytes=80 * GB,
    hbm_bw=3.35 * TB,
    # Interconnect: we use the EFFECTIVE bandwidths DeepSeek reports, not a datasheet.
    # [DSV3] NVLink "160 GB/s", IB "50 GB/s" per GPU; [DeepEP] confirms ~160 GB/s NVLink
    # and ~50 GB/s per CX7 400 Gb/s NIC. (Third-party pages report the H800 NVLink as
    # 400 GB/s both directions, i.e. 200 per direction; we have no NVIDIA datasheet for it.)
    nvlink_bw=160 * GB,
    nvlink_domain=8,
    pcie_bw=64 * GB,  # PCIe Gen5, as H100 SXM
    scaleout_bw=50 * GB,
    sm_count=132,
    l2_bytes=50 * MiB,
    tdp_watts=700,
    bw_source="measured",
    notes="NVLink/IB are DeepSeek-V3's measured effective bandwidths (160 / 50 GB/s), "
    "not datasheet peaks.",
)

H200 = GPU(
    name="H200",
    # [H200-DS] SXM column, sparse figures halved (same tensor cores as H100 SXM):
    # BF16/FP16 1,979 -> 989.5, TF32 989 -> 494.5, FP8 3,958 -> 1,979, INT8 3,958 -> 1,979.
    bf16_flops=989.5 * TB,
    fp16_flops=989.5 * TB,
    tf32_flops=494.5 * TB,
    fp8_flops=1979 * TB,
    int8_flops=1979 * TB,
    fp32_flops=67 * TB,  # [H200-DS]
    hbm_bytes=141 * GB,  # [H200-DS] 141GB HBM3e
    hbm_bw=4.8 * TB,  # [H200-DS] 4.8 TB/s
    nvlink_bw=450 * GB,  # [H200-DS] NVLink 900 GB/s (both directions)
    nvlink_domain=8,
    pcie_bw=64 * GB,  # [H200-DS] PCIe Gen5 128 GB/s (both directions)
    scaleout_bw=50 * GB,  # [DGX] DGX H200: one ConnectX-7 400 Gb/s per GPU
    sm_count=132,
    l2_bytes=50 * MiB,  # [SB] spec table: same die as H100
    tdp_watts=700,  # [H200-DS] up to 700 W
)

_CATALOG: dict[str, GPU] = {}
_ALIASES = {
    "a100": "A100-80GB-SXM",
    "a100-sxm": "A100-80GB-SXM",
    "a100-80gb": "A100-80GB-SXM",
    "a100-40gb": "A100-40GB-SXM",
    "h100": "H100-SXM",
    "h100-sxm5": "H100-SXM",
    "h100-80gb": "H100-SXM",
    "h800-sxm": "H800",
    "h800-sxm5": "H800",
    "h200-sxm": "H200",
    "h200-sxm5": "H200",
}


def _key(name: str) -> str:
    """Normalize a user-typed name: case-insensitive, ' ' and '_' same as '-'."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register_gpu(gpu: GPU, overwrite: bool = False) -> GPU:
    """Add a (custom) GPU to the catalog so get_gpu(gpu.name) finds it."""
    if not isinstance(gpu, GPU):
        raise ValueError(f"register_gpu expects a GPU, got {type(gpu).__name__}")
    key = _key(gpu.name)
    if not overwrite and (key in _CATALOG or key in _ALIASES):
        raise ValueError(
            f"a GPU named {gpu.name!r} is already registered (pass overwrite=True to replace it)"
        )
    _CATALOG[key] = gpu
    _ALIASES.pop(key, None)
    return gpu


for _gpu in (A100_40GB_SXM, A100_80GB_SXM, H100_SXM, H100_PCIE, H800, H200):
    register_gpu(_gpu)


def list_gpus() -> tuple[str, ...]:
    """Names of every GPU in the catalog (built-in and registered)."""
    return tuple(g.name for g in _CATALOG.values())


def get_gpu(name: "str | GPU") -> GPU:
    """Look up a GPU by name or alias (case-insensitive); a GPU passes through."""
    if isinstance(name, GPU):
        return name
    if not isinstance(name, str):
        raise ValueError(f"gpu must be a name or a GPU, got {type(name).__name__}")
    key = _key(name)
    key = _key(_ALIASES.get(key, key))
    if key not in _CATALOG:
        raise ValueError(
            f"unknown gpu {name!r}; valid names: {', '.join(list_gpus())} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return _CATALOG[key]


def peak_flops(gpu: "str | GPU", dtype: str = "bf16") -> float:
    """Dense peak FLOP/s (OP/s for int8) of `gpu` for `dtype` (a name or alias of
    dsim.cost.dtypes)."""
    g = get_gpu(gpu)
    try:
        d = dtype_name(dtype, DTYPES)
    except ValueError:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}") from None
    value = getattr(g, f"{d}_flops")
    if value is None:
        raise ValueError(f"dtype {dtype!r} is not supported by {g.name} (no {d} tensor cores)")
    return value
