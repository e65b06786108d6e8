"""The public-runs table: every published run is reproduced within 15 % or carries a reason, the
GPU efficiencies derived from the runs are what their fit gives, and one goodput factor applies."""

import json

import pytest

from dsim.cost.hardware import peak_flops
from dsim.cost.plan.public_runs import (
    DATA,
    GOODPUT,
    METRICS,
    WITHIN,
    fit_run_scale,
    load_public_runs,
    narayanan2021_flops_per_token,
    public_runs_table,
    run_args,
    run_scale_error,
)
from dsim.cost.timing import gpu_calibration
from dsim.cost.timing.calibration import RUN_SCALES, TENSOR_CORE_CONSTANTS


@pytest.fixture(scope="module")
def table():
    return public_runs_table()


def test_data_file_rows_are_complete():
    data = json.loads(DATA.read_text())
    assert data["goodput"]["value"] == GOODPUT and 0.5 < GOODPUT <= 1
    assert "Llama 3" in data["goodput"]["source"]
    names = [r["name"] for r in data["runs"]]
    assert len(names) == len(set(names)) >= 8
    for r in data["runs"]:
        assert r["source"] and r["role"] in ("fit", "validate"), r["name"]
        assert len([k for k in r["published"] if k in METRICS]) == 1, r["name"]
        assert set(r["layout"]) <= {
            "tp",
            "pp",
            "dp",
            "ep",
            "zero",
            "micro_batch",
            "recompute",
            "schedule",
            "dtype",
        }, r["name"]
        assert isinstance(r["assumed"], list), r["name"]
        run_args(r)  # a valid ModelArgs


def test_published_numbers_as_the_sources_give_them():
    runs = {r["name"]: r["published"] for r in load_public_runs()}
    assert runs["Llama-2-7B"]["gpu_hours"] == 184_320
    assert runs["Llama-2-70B"]["gpu_hours"] == 1_720_320
    assert runs["Megatron-LM GPT-3 175B"]["tflops_per_gpu"] == 140
    assert runs["Llama-3.1-405B (MFU)"]["mfu"] == 0.43
    assert runs["DeepSeek-V3"]["gpu_hours"] == 2_664_000


def test_every_row_within_band_or_has_reason(table):
    """Each row is within WITHIN of its published figure, or carries the data file's reason; a
    reason on a row that is within the band would be stale."""
    assert WITHIN == 0.15
    for row in table:
        if row["reason"] is None:
            assert row["within"], (row["name"], row["error"])
        else:
            assert not row["within"], (row["name"], row["error"], "stale reason")
    assert sum(r["within"] for r in table) >= 6


def test_table_rows_are_consistent(table):
    runs = {r["name"]: r for r in load_public_runs()}
    for row in table:
        run = runs[row["name"]]
        assert row["error"] == pytest.approx(row["predicted"] / row["published"] - 1)
        words = row["layout"].split()
        for k, v in run["layout"].items():  # the published layout is the plan's
            want = f"{k}{v}" if k in ("tp", "pp", "dp", "ep", "zero") else str(v)
            assert want in words or (k == "micro_batch" and f"mb{v}" in words), (row["name"], k)
        assert 0 < row["mfu"] < 1


def test_megatron_formula():
    """Narayanan et al.'s eq. (3) for GPT-3 175B: about 8.4 x 175B x 6 FLOPs per token / 6 x 8
    (4 passes with recomputation against 3 without)."""
    run = next(r for r in load_public_runs() if r["name"] == "Megatron-LM GPT-3 175B")
    args = run_args(run)
    f = narayanan2021_flops_per_token(args, 2048)
    h, n = 12288, 96
    assert f == 96 * n * h * h * (1 + 2048 / (6 * h) + 51200 / (16 * n * h))
    assert f / (8 * 175e9) == pytest.approx(1.0, abs=0.05)  # 4 passes x 2 FLOPs x N per token


@pytest.mark.parametrize("gpu", ["A100-80GB-SXM", "H800"])
def test_run_scales_are_their_fit(gpu):
    """The committed scale of a GPU's tensor-core efficiencies is what the fit on its "fit" runs
    gives, and the runs it names are the data file's."""
    r = RUN_SCALES[gpu]
    runs = [x for x in load_public_runs() if x["gpu"] == gpu]
    assert set(r["fit"]) == {x["name"] for x in runs if x["role"] == "fit"}
    assert set(r["validate"]) == {x["name"] for x in runs if x["role"] == "validate"}
    assert fit_run_scale(gpu) == pytest.approx(r["scale"], abs=0.002)
    assert abs(run_scale_error(gpu, r["scale"])) < 0.01  # the fit runs: zero mean log error
    assert abs(run_scale_error(gpu, r["scale"], "validate")) < WITHIN  # the others: checked


def test_gpus_without_measurements_use_their_run_scale():
    h100 = gpu_calibration("H100-SXM")
    for gpu in ("A100-80GB-SXM", "A100-40GB-SXM", "H800"):
        cal, s = gpu_calibration(gpu), RUN_SCALES[gpu]["scale"]
        for k in TENSOR_CORE_CONSTANTS:
            if k == "attn_eff":
                assert cal.attn_eff == {n: v * s for n, v in h100.attn_eff.items()}
            else:
                assert getattr(cal, k) == pytest.approx(getattr(h100, k) * s, rel=1e-12)
        assert cal.bw_eff == h100.bw_eff and cal.launch_s == h100.launch_s
        assert f"x {s:.3f}" in cal.source and cal.gpu == gpu
    assert gpu_calibration("H100-SXM").mma_eff == h100.mma_eff


def test_goodput_applies_to_gpu_hours_only(table):
    """A GPU-hours row is the plan's GPU-hours / GOODPUT; an MFU row is the plan's MFU."""
    for row in table:
        if row["metric"] == "mfu":
            assert row["predicted"] == row["mfu"]
    v3 = next(r for r in table if r["name"] == "DeepSeek-V3")
    tokens_per_gpu_s = 14.8e12 / (v3["predicted"] * GOODPUT * 3600)
    flops = v3["mfu"] * peak_flops("H800")
    assert tokens_per_gpu_s > 0 and flops > 0
