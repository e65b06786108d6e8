"""bench/ep_step_measure.py on 2 gloo ranks of this CPU (its --smoke mode): the JSON it writes, and
the expert- and data-parallel run equal to the single-process model (logits and gradients of the
first step, losses, parameters after the optimizer steps).

The smoke JSON is a test artefact, not a measurement: it says so in its `note`, and its timings are
a loaded CPU's. The predictions held next to it (dsim.cost.comm.ep_predict) are checked for their
structure and their arithmetic only.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsim.config import ModelArgs
from dsim.model import Transformer

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
pytestmark = pytest.mark.timeout(300)


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "ep_step_measure", REPO / "bench" / "ep_step_measure.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    return bench


bench = load_bench()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, list]:
    """One smoke run (2 ranks, both toy models, skew 0 and 1): its JSON and saved tensors."""
    d = tmp_path_factory.mktemp("ep_step")
    out, tensors = d / "ep_smoke.json", d / "ep_smoke.pt"
    cmd = [sys.executable, str(REPO / "bench" / "ep_step_measure.py"), "--smoke"]
    cmd += ["--world-size", str(WORLD), "--out", str(out), "--save-tensors", str(tensors)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, timeout=280, capture_output=True)
    return json.loads(out.read_text()), torch.load(tensors)


def case_of(rec: dict):
    return bench.Case(
        rec["model"], ModelArgs(**rec["args"]), rec["skew"], rec["micro_batch"], rec["seq_len"]
    )


def test_smoke_json_schema_and_positive_timings(smoke):
    report, _ = smoke
    assert report["schema"] == bench.SCHEMA
    assert report["measured"] is False and "not a measurement" in report["note"]
    assert report["world_size"] == WORLD and report["backend"] == "gloo"
    assert {"torch", "python"} <= set(report["env"])
    assert [(c["model"], c["skew"]) for c in report["cases"]] == [
        (m, s) for m in bench.smoke_models() for s in (0.0, 1.0)
    ]
    for c in report["cases"]:
        args = ModelArgs(**c["args"])
        assert c["layout"] == dict(
            tp=1, pp=1, dp=WORLD, ep=WORLD, zero=1, micro_batch=c["micro_batch"],
            recompute="none", schedule="1f1b", dtype="bf16", n_microbatches=1,
        )  # fmt: skip
        assert set(c["parts_s"]) == set(bench.PARTS) | set(bench.DERIVED)
        assert len(c["ranks"]) == WORLD
        for r in c["ranks"]:
            assert all(v > 0 for v in r["parts_s"].values()), r["parts_s"]
            assert all(len(v) == c["steps"] for v in r["parts_s_all"].values())
            assert r["memory"]["peak_rss_bytes"] > 0
            p = r["parts_s"]
            assert p["step"] >= p["forward"] + p["backward"]  # spans inside the step
            assert p["a2a"] < p["forward"] + p["backward"]
        for part in bench.PARTS:  # the case's value is the slowest rank's
            assert c["parts_s"][part] == max(r["parts_s"][part] for r in c["ranks"])
        # every rank sends each of its tokens' top-k rows somewhere, in every MoE layer
        n_moe = args.n_layers - args.n_dense_layers
        assert len(c["rows_sent"]) == n_moe
        for layer in c["rows_sent"]:
            assert [sum(src) for src in layer] == [
                c["tokens_per_rank"] * args.n_activated_experts
            ] * WORLD
        # the parameters: replicated + every rank's experts = the model's
        total = sum(p.numel() for p in Transformer(args).parameters())
        assert c["replicated_params"] + sum(c["expert_params"]) == total
        assert sum(c["zero_shard_params"]) == c["replicated_params"]
        assert all(math.isfinite(x) for x in c["losses"])


def test_skew_sends_more_rows_to_rank_0(smoke):
    report, _ = smoke

    def share_of_rank_0(rec):
        rows = torch.tensor(rec["rows_sent"], dtype=torch.float64)  # [layer, src, dst]
        return float(rows[:, :, 0].sum() / rows.sum())

    by = {(c["model"], c["skew"]): c for c in report["cases"]}
    for model in bench.smoke_models():
        assert share_of_rank_0(by[model, 1.0]) > share_of_rank_0(by[model, 0.0]) + 0.05, model


def test_ep_run_equals_the_single_process_model(smoke):
    report, tensors = smoke
    for rec, ranks in zip(report["cases"], tensors):
        ref = bench.reference(case_of(rec), WORLD, rec["warmup"] + rec["steps"], rec["lr"], seed=0)
        # outputs: every rank's rows of the first step's logits, bit for bit
        assert torch.equal(torch.cat([r["logits"] for r in ranks]), ref["logits"])
        for name, g in ref["grads"].items():
            if ".experts." in name:  # the rank's shard of the routed experts
                mine = torch.cat([r["grads"][name] for r in ranks])
            else:  # replicated, all-reduced: the same on every rank
                mine = ranks[0]["grads"][name]
                assert torch.equal(mine, ranks[1]["grads"][name]), name
            # sums of per-rank partial sums are added in another order than one full-batch GEMM
            torch.testing.assert_close(mine, g, rtol=1e-5, atol=1e-7, msg=name)
        for name, p in ref["params"].items():  # after warmup + steps AdamW steps
            mine = torch.cat([r["params"][name] for r in ranks]) if ".experts." in name else None
            mine = ranks[0]["params"][name] if mine is None else mine
            torch.testing.assert_close(mine, p, rtol=1e-5, atol=1e-6, msg=name)
        assert rec["losses"] == pytest.approx(ref["losses"], rel=1e-6)


def test_skew_bias_and_bad_input():
    args = bench.smoke_models()["deepseek-v3 (toy)"]
    b = bench.skew_bias(args, 1.0)
    assert b.shape == (args.n_routed_experts,)
    assert (b[:2] > 0).all() and (b[2:] == 0).all()  # the first quarter of 8 experts
    assert float(b[0]) == pytest.approx(bench.router_score_std(args))
    assert (bench.skew_bias(args, 0.0) == 0).all()
    with pytest.raises(ValueError, match="skew"):
        bench.skew_bias(args, -1.0)
