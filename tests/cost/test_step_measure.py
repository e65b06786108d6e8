"""bench/step_measure.py: whole dsim.model steps timed and compared with dsim.cost.timing.step_time.

The CPU run only checks the code paths and the record structure (its error against the H200
prediction means nothing); the GPU records, once dsim/data/step_h200.json exists, are checked for
completeness.
"""

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from dsim.config import ModelArgs
from dsim.cost.timing import step_time

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO / "dsim" / "data" / "step_h200.json"
RECORD_KEYS = {
    "name",
    "mode",
    "batch",
    "seq_len",
    "context",
    "device",
    "predicted_gpu",
    "comparable",
    "args",
    "wall_s",
    "wall_s_all",
    "kernel_s",
    "kernel_s_all",
    "kernel_count",
    "predicted_s",
    "predicted_breakdown",
    "host_overhead",
    "rel_error_kernel",
    "rel_error_wall",
}


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "step_measure", REPO / "bench" / "step_measure.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    return bench


def predicted(r: dict):
    """step_time of a record's case, as the script calls it."""
    seq = r["context"] if r["mode"] == "decode" else r["seq_len"]
    return step_time(
        ModelArgs(**r["args"]), r["batch"], seq, r["mode"], gpu="H200", context=r["context"]
    )


def check_record(r: dict) -> None:
    assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
    assert r["mode"] in ("train", "prefill", "decode")
    assert r["seq_len"] == (1 if r["mode"] == "decode" else r["seq_len"]) >= 1
    assert r["context"] > 0 if r["mode"] == "decode" else r["context"] == 0
    for key in ("wall_s", "kernel_s", "predicted_s", "host_overhead"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["kernel_count"] > 0
    assert r["wall_s"] == statistics.median(r["wall_s_all"])
    assert r["kernel_s"] == statistics.median(r["kernel_s_all"])
    assert math.isclose(sum(r["predicted_breakdown"].values()), r["predicted_s"], rel_tol=1e-9)
    assert math.isclose(r["rel_error_kernel"], r["predicted_s"] / r["kernel_s"] - 1)
    if r["mode"] == "decode" and r["args"]["attn_type"] == "mla":
        assert r["args"]["attn_impl"] == "absorb"


def test_cpu_quick_mode():
    """Two tiny cases (an MLA decode, a GQA training step) measured on the CPU: complete records
    whose prediction is step_time's for that case."""
    bench = load_bench()
    models = bench.cpu_models()
    names = ["deepseek-v3 (scaled down)", "mixtral-8x7b (scaled down)"]
    cases = [bench.Case(names[0], "decode", 2, 1, 16), bench.Case(names[1], "train", 2, 16)]
    result = bench.run(models, cases, "cpu", repeats=3, profiled=1)
    assert result["failed"] == [] and result["skipped"] == []
    assert [(r["name"], r["mode"]) for r in result["records"]] == [
        (names[0], "decode"),
        (names[1], "train"),
    ]
    for r in result["records"]:
        check_record(r)
        assert r["device"] == "cpu" and r["comparable"] is False and "meaningless" in r["note"]
        st = predicted(r)
        assert r["predicted_s"] == st.total_s
        assert r["predicted_breakdown"] == st.breakdown()


def test_main_writes_json(tmp_path):
    """The command line: one case, a JSON file with the env block and the records."""
    bench = load_bench()
    out = tmp_path / "step.json"
    only = "mixtral-8x7b (scaled down) prefill"
    bench.main(["--device", "cpu", "--quick", "--only", only, "--out", str(out), "--repeats", "1"])
    data = json.loads(out.read_text())
    assert {"torch", "device_name", "date"} <= set(data["env"])
    assert [r["name"] + " " + r["mode"] for r in data["records"]] == [only]
    check_record(data["records"][0])
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--quick", "--only", "no such case", "--out", str(out)])


def test_gpu_records_complete():
    """Every record of dsim/data/step_h200.json (bench/step_measure.py on an H200) is complete and
    its prediction is the current step_time's. Error bounds follow once the data exists."""
    if not MEASURED.exists():
        pytest.skip(
            f"{MEASURED.name} not yet measured: run `python3 bench/step_measure.py --out "
            f"dsim/data/step_h200.json` on an H200"
        )
    data = json.loads(MEASURED.read_text())
    assert {"torch", "device_name", "date"} <= set(data["env"])
    assert "H200" in data["env"]["device_name"]
    assert data["records"], "no records"
    for r in data["records"]:
        check_record(r)
        assert r["device"] == "cuda" and r["comparable"] is True
        assert math.isfinite(predicted(r).total_s)
