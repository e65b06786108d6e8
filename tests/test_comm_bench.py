"""bench/comm_bench.py's sweep over world sizes (--world-sizes), run on 2 gloo ranks of this CPU at
tiny messages: one JSON per world size, in the format dsim.cost.comm.crossval reads. The timings of
this smoke run are a loaded CPU's, not a measurement of any GPU.
"""

import json
import sys
from pathlib import Path

import pytest

from dsim.cost.comm.crossval import committed_model, sweep_errors

REPO = Path(__file__).resolve().parents[1]
# The ranks of run_distributed unpickle the bench's worker by its module name: bench/ goes on the
# path before the launcher's forkserver starts (it keeps the sys.path of its start).
sys.path.insert(0, str(REPO / "bench"))
import comm_bench  # noqa: E402

pytestmark = pytest.mark.timeout(300)
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


def test_sweep_writes_one_json_per_world_size(tmp_path):
    out = tmp_path / "comm_gloo_x{n}.json"
    comm_bench.main(
        ["--backend", "gloo", "--world-sizes", "2", "--max-bytes", "16384", "--skip-ep"]
        + ["--target-s", "0.003", "--repeats", "1", "--out", str(out)]
    )
    run = json.loads((tmp_path / "comm_gloo_x2.json").read_text())
    assert run["world_size"] == 2 and run["backend"] == "gloo" and run["ep_moe"] == []
    assert set(run["collectives"]) == set(KINDS)
    for kind, c in run["collectives"].items():
        assert c["sizes_bytes"] == [4096, 8192, 16384], kind  # the sweep starts at 4 KiB
        assert all(t > 0 for t in c["time_s"]) and all(k >= 3 for k in c["iters"])
        assert len(c["busbw_GBps"]) == 3
    # the format crossval reads (priced as if on H200s: a format check, not a comparison)
    errs = sweep_errors(dict(run, gpu_model="H200"), committed_model("H200", 8))
    assert set(errs) == set(KINDS) and all(len(e["error"]) == 3 for e in errs.values())


def test_sweep_paths():
    assert comm_bench.sweep_paths("d/x{n}.json", [2, 4]) == {
        2: Path("d/x2.json"),
        4: Path("d/x4.json"),
    }
    assert comm_bench.sweep_paths("d/x.json", [8]) == {8: Path("d/x.json")}
    with pytest.raises(ValueError, match="{n}"):
        comm_bench.sweep_paths("d/x.json", [2, 4])
    with pytest.raises(ValueError, match=">= 2"):
        comm_bench.sweep_paths("d/x{n}.json", [1, 2])
    with pytest.raises(SystemExit):
        comm_bench.main(["--backend", "gloo", "--world-sizes", "2,four", "--out", "x{n}.json"])
