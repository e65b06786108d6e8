"""dsim.cost.comm.crossval: the collective model fitted on some world sizes, validated on others.

No multi-GPU sweep is committed yet (issue 21): these tests hold the split to synthetic sweeps
made from known constants, which the fit must recover and the held-out sweep must then match.
"""

import dataclasses
import json

import numpy as np
import pytest

from dsim.cost.comm import CommCalibration, load_measurements
from dsim.cost.comm.crossval import (
    GOAL_MEDIAN,
    calibrate_world_sizes,
    committed_model,
    fit_and_validate,
    main,
    predict,
    report,
    summarize,
    sweep_errors,
)

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
# a machine with 3-significant-digit constants (the grid the fit searches)
TRUTH = CommCalibration(
    "H200",
    2,
    {
        "all_reduce": 41.0e-6,
        "all_gather": 28.0e-6,
        "reduce_scatter": 32.0e-6,
        "all_to_all": 35.0e-6,
    },
    3.5e-6,
    {"all_reduce": 370e9, "all_gather": 290e9, "reduce_scatter": 285e9, "all_to_all": 335e9},
    0.0,
)
SIZES = [2**i for i in range(12, 31)]  # 4 KiB .. 1 GiB, as bench/comm_bench.py --world-sizes


def synthetic_run(n: int, noise: float = 0.0, seed: int = 0, sizes=SIZES) -> dict:
    """A bench/comm_bench.py result of TRUTH on n ranks (times * (1 + uniform noise))."""
    rng = np.random.default_rng(seed + n)
    coll = {}
    for k in KINDS:
        t = [predict(TRUTH, k, s, n) for s in sizes]
        t = (np.array(t) * (1 + rng.uniform(-noise, noise, len(t)))).tolist()
        coll[k] = dict(sizes_bytes=list(sizes), time_s=t)
    return dict(
        synthetic="made from known constants by tests/cost/test_comm_crossval.py, not measured",
        world_size=n,
        ranks_per_node=8,
        gpu_model="H200",
        collectives=coll,
    )


def test_steps_grow_with_the_world_size():
    # the model form: same bytes, more ranks -> more dependent steps and more wire bytes
    for k in ("all_reduce", "all_gather", "reduce_scatter"):
        t = [predict(TRUTH, k, 2**26, n) for n in (2, 4, 8)]
        assert t[0] < t[1] < t[2], k
    assert predict(TRUTH, "all_reduce", 2**12, 2) == TRUTH.launch_overhead_s["all_reduce"]
    # 14 dependent steps of an 8-rank ring all-reduce cost more than the floor even at 4 KiB
    assert predict(TRUTH, "all_reduce", 2**12, 8) > 14 * TRUTH.chunk_overhead_s


def test_fit_on_2_and_4_recovers_the_constants_and_predicts_8():
    runs = [synthetic_run(n) for n in (2, 4, 8)]
    cv = fit_and_validate(runs, fit_on=(2, 4))
    cal = cv.calibration
    assert cv.fit_on == (2, 4) and cv.held_out == (8,)
    assert cal.n_ranks == 2 and cal.gpu == "H200"
    assert cal.chunk_overhead_s == pytest.approx(TRUTH.chunk_overhead_s, rel=0.02)
    for k in KINDS:
        assert cal.launch_overhead_s[k] == pytest.approx(TRUTH.launch_overhead_s[k], rel=0.01)
        assert cal.bus_bw[k] == pytest.approx(TRUTH.bus_bw[k], rel=0.02)
    assert cal.mean_abs_log_error < 0.01
    v = cv.validation
    assert v.points == 4 * len(SIZES) and v.worst < 0.03 and v.meets_goal
    assert set(cv.summary[8]) == set(KINDS) | {"all"}


def test_noisy_sweeps_fit_within_the_noise():
    runs = [synthetic_run(n, noise=0.05) for n in (2, 4, 8)]
    cv = fit_and_validate(runs, fit_on=(2,))
    assert cv.held_out == (4, 8)
    assert cv.validation.median <= 0.06 and cv.validation.worst <= 0.15
    assert cv.summary[4]["all"].median < GOAL_MEDIAN


def test_a_wrong_model_fails_the_goal():
    # a machine whose all-reduce bandwidth halves at 8 ranks: the 8-rank sweep exposes it
    slow = dataclasses.replace(TRUTH, bus_bw={**TRUTH.bus_bw, "all_reduce": 150e9})
    run8 = synthetic_run(8)
    run8["collectives"]["all_reduce"]["time_s"] = [predict(slow, "all_reduce", s, 8) for s in SIZES]
    cv = fit_and_validate([synthetic_run(2), run8], fit_on=(2,))
    assert cv.summary[8]["all_reduce"].worst > 0.5
    assert not cv.summary[8]["all"].meets_goal


def test_committed_model_on_the_committed_sweep():
    # the 2 x H200 sweep the committed constants were fitted to: as tests/cost/test_comm.py says
    run = load_measurements()
    errs = sweep_errors(run, committed_model("H200", 2), min_bytes=64 * 1024)
    s = summarize(errs)
    assert s["all"].points == 4 * 15 and s["all"].median <= 0.05
    assert errs["all_reduce"]["sizes_bytes"][0] == 64 * 1024


def test_calibrate_world_sizes_alone_and_errors():
    cal = calibrate_world_sizes(
        [synthetic_run(4, sizes=SIZES[::3]), synthetic_run(8, sizes=SIZES[::3])]
    )
    assert cal.n_ranks == 4
    assert cal.bus_bw["all_to_all"] == pytest.approx(TRUTH.bus_bw["all_to_all"], rel=0.02)
    runs = [synthetic_run(n) for n in (2, 4)]
    with pytest.raises(ValueError, match="fit_on"):
        fit_and_validate(runs, fit_on=(8,))
    with pytest.raises(ValueError, match="no world size to validate"):
        fit_and_validate(runs, fit_on=(2, 4))
    with pytest.raises(ValueError, match="one sweep per world size"):
        calibrate_world_sizes([synthetic_run(2), synthetic_run(2)])
    with pytest.raises(ValueError, match="one GPU model"):
        calibrate_world_sizes([synthetic_run(2), dict(synthetic_run(4), gpu_model="H100-SXM")])
    with pytest.raises(ValueError, match="at least one"):
        calibrate_world_sizes([])
    with pytest.raises(ValueError, match="min_bytes"):
        sweep_errors(synthetic_run(2), committed_model("H200", 8), min_bytes=2**31)
    with pytest.raises(ValueError, match="n_ranks"):
        predict(TRUTH, "all_reduce", 1024, 1)


def test_report_and_command_line(tmp_path, capsys):
    runs = [synthetic_run(n, sizes=SIZES[::3]) for n in (2, 4)]
    text = report(runs, fit_on=(2,))
    assert "committed constants" in text and "held out" in text
    assert "validation (held out [4])" in text and text.rstrip().endswith("met")
    for n, run in zip((2, 4), runs):
        (tmp_path / f"sweep_x{n}.json").write_text(json.dumps(run))
    main(["--fit-on", "2", str(tmp_path / "sweep_x2.json"), str(tmp_path / "sweep_x4.json")])
    assert capsys.readouterr().out.strip() == text
