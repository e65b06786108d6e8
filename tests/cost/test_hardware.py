"""Tests for the GPU catalog (dsim/cost/hardware.py)."""

import dataclasses

import pytest

from dsim.cost import hardware
from dsim.cost.hardware import DTYPES, get_gpu, list_gpus, peak_flops, register_gpu

BUILTIN = ("A100-40GB-SXM", "A100-80GB-SXM", "H100-SXM", "H100-PCIe", "H800", "H200")


@pytest.fixture
def custom_gpu():
    gpu = dataclasses.replace(get_gpu("H100-SXM"), name="Test-GPU-9000", hbm_bytes=96e9)
    yield gpu
    hardware._CATALOG.pop(hardware._key(gpu.name), None)


def test_catalog_has_builtin_entries():
    for name in BUILTIN:
        assert name in list_gpus()
        assert get_gpu(name).name == name


@pytest.mark.parametrize(
    "alias,name",
    [
        ("h100", "H100-SXM"),
        ("H100", "H100-SXM"),
        ("h100_sxm", "H100-SXM"),
        ("H100 SXM", "H100-SXM"),
        ("h100-pcie", "H100-PCIe"),
        ("a100", "A100-80GB-SXM"),
        ("a100-40gb", "A100-40GB-SXM"),
        ("h800", "H800"),
        ("h200", "H200"),
        ("H200-SXM", "H200"),
    ],
)
def test_get_gpu_is_case_insensitive_with_aliases(alias, name):
    assert get_gpu(alias).name == name


def test_get_gpu_passes_a_gpu_through():
    gpu = get_gpu("H200")
    assert get_gpu(gpu) is gpu


def test_unknown_gpu_lists_valid_names():
    with pytest.raises(ValueError, match="unknown gpu") as e:
        get_gpu("B9000")
    for name in BUILTIN:
        assert name in str(e.value)


def test_peak_flops_are_dense():
    # Hopper datasheets quote sparse tensor FLOP/s (1979 TF bf16): we store half.
    assert peak_flops("H100-SXM", "bf16") == pytest.approx(989.5e12)
    assert peak_flops("H100-SXM", "fp8") == pytest.approx(2 * 989.5e12)
    assert peak_flops("H200", "bf16") == peak_flops("H100-SXM", "bf16")
    assert peak_flops("H800", "fp8") == peak_flops("H100-SXM", "fp8")
    assert peak_flops("A100-80GB-SXM", "bf16") == pytest.approx(312e12)
    assert peak_flops("A100-80GB-SXM", "tf32") == pytest.approx(156e12)
    for name in BUILTIN:
        g = get_gpu(name)
        assert g.bf16_flops < 1.2e15, f"{name}: looks like a sparse figure"
        assert g.fp16_flops == g.bf16_flops
        assert g.tf32_flops == pytest.approx(g.bf16_flops / 2, rel=0.01)
        assert g.fp32_flops < g.tf32_flops


def test_peak_flops_dtype_aliases():
    assert peak_flops("h100", "bfloat16") == peak_flops("h100", "BF16")
    assert peak_flops("h100", "float32") == pytest.approx(67e12)


def test_peak_flops_errors():
    with pytest.raises(ValueError, match="allowed") as e:
        peak_flops("H100-SXM", "fp4")
    for d in DTYPES:
        assert d in str(e.value)
    with pytest.raises(ValueError, match="fp8"):
        peak_flops("A100-80GB-SXM", "fp8")


def test_memory_and_links():
    h100 = get_gpu("H100-SXM")
    assert h100.hbm_bytes == 80e9 and h100.hbm_bw == pytest.approx(3.35e12)
    assert h100.nvlink_bw == 450e9  # 900 GB/s both directions, halved
    assert h100.scaleout_bw == 50e9  # 400 Gb/s NIC per GPU
    assert get_gpu("H200").hbm_bytes == 141e9 and get_gpu("H200").hbm_bw == pytest.approx(4.8e12)
    assert get_gpu("A100-40GB-SXM").hbm_bw < get_gpu("A100-80GB-SXM").hbm_bw
    assert get_gpu("H100-PCIe").nvlink_domain == 2


def test_h800_uses_deepseek_measured_bandwidth():
    h800 = get_gpu("H800")
    assert h800.nvlink_bw == 160e9 and h800.scaleout_bw == 50e9
    assert h800.bw_source == "measured"
    assert "DeepSeek" in h800.notes
    assert all(get_gpu(n).bw_source == "datasheet" for n in BUILTIN if n != "H800")


def test_register_custom_gpu(custom_gpu):
    register_gpu(custom_gpu)
    assert get_gpu("test-gpu-9000") is custom_gpu
    with pytest.raises(ValueError, match="already registered"):
        register_gpu(custom_gpu)
    bigger = dataclasses.replace(custom_gpu, hbm_bytes=192e9)
    register_gpu(bigger, overwrite=True)
    assert get_gpu("Test-GPU-9000").hbm_bytes == 192e9


def test_register_rejects_non_gpu():
    with pytest.raises(ValueError, match="GPU"):
        register_gpu("H100")


@pytest.mark.parametrize(
    "field,value",
    [
        ("hbm_bw", -1.0),
        ("bf16_flops", 0),
        ("sm_count", float("nan")),
        ("nvlink_bw", "fast"),
        ("scaleout_bw", None),
        ("nvlink_domain", 2.5),
    ],
)
def test_gpu_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(get_gpu("H100-SXM"), **{field: value})


def test_gpu_validation_other():
    with pytest.raises(ValueError, match="bw_source"):
        dataclasses.replace(get_gpu("H100-SXM"), bw_source="guessed")
    with pytest.raises(ValueError, match="name"):
        dataclasses.replace(get_gpu("H100-SXM"), name="  ")
    # fp8 may be missing (Ampere), but not negative
    dataclasses.replace(get_gpu("H100-SXM"), fp8_flops=None)
    with pytest.raises(ValueError, match="fp8_flops"):
        dataclasses.replace(get_gpu("H100-SXM"), fp8_flops=-1.0)


def test_gpu_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_gpu("H100-SXM").hbm_bw = 1.0
