"""The simulator against the committed real serving loop run (dsim/data/serve_real_cpu.json): step
times fitted on the isolated steps only, the loop's trace and policy simulated."""

import numpy as np
import pytest

from dsim.serving.real import RealRun
from dsim.serving.realcheck import (
    compare_measured,
    fit_step_cost,
    load_measured,
    simulate_measured,
)
from dsim.serving.step_cost import StepShape


@pytest.fixture(scope="module")
def data():
    return load_measured()


def test_fit_describes_its_own_set(data):
    step = fit_step_cost(data["fit"])
    for d in data["fit"]["decode"]:
        got = step(StepShape(decode_seqs=d["batch"], decode_context=d["context"]))
        assert got == pytest.approx(d["median_s"], rel=0.15)
    for p in data["fit"]["prefill"]:
        got = step(StepShape(prefill_seqs=1, prefill_tokens=p["prompt_tokens"]))
        assert got == pytest.approx(p["median_s"], rel=0.15)


def test_simulation_runs_the_loops_policy(data):
    run = RealRun.from_dict(data["run"])
    tr = simulate_measured(data)
    steps = np.array(tr.steps["both"])
    # one prefill step per request, whole prompts, and never more than max_batch running
    assert (steps[:, 2] > 0).sum() == len(run.requests)
    assert steps[:, 4].max() <= data["options"]["max_batch"]
    assert np.all(tr.first_token >= tr.admitted) and np.all(tr.admitted >= tr.arrival)


def test_latencies_against_the_real_loop(data):
    """Measured on this repository's CPU run: the simulator is a few percent fast on the medians of
    time per output token and end-to-end latency; queueing makes the time to first token, at the
    90th percentile, more sensitive to that."""
    r = compare_measured(data)
    for key in ("tpot_p50", "tpot_p90", "e2e_p50", "e2e_p90"):
        assert abs(r[key]["error"]) < 0.15, (key, r[key])
    assert abs(r["ttft_p50"]["error"]) < 0.3, r["ttft_p50"]
    assert abs(r["ttft_p90"]["error"]) < 0.5, r["ttft_p90"]
    assert abs(r["makespan"]["error"]) < 0.02
    assert abs(r["step_error_median"]["decode"]) < 0.15
    assert r["steps"]["prefill"] == len(data["trace"])


def test_time_model_timer_runs_on_the_run(data):
    r = compare_measured(data, timer="time-model", gpu="H200")
    assert all(np.isfinite(v["simulated_s"]) for k, v in r.items() if k.startswith("tpot"))
    with pytest.raises(ValueError, match="timer"):
        simulate_measured(data, timer="wall")
