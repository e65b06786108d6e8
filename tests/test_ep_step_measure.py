"""bench/ep_step_measure.py on 2 gloo ranks of this CPU (its --smoke mode): the JSON it writes, and
the expert- and data-parallel run equal to the single-process model (logits and gradients of the
first step, losses, parameters after the optimizer steps).

The smoke JSON is a test artefact, not a measurement: it says so in its `note`, and its timings are
a loaded CPU's. The predictions held next to it (dsim.cost.plan.ep_compare) are checked for their
structure and their arithmetic only.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from dsim.config import ModelArgs
from dsim.cost.plan.ep_compare import (
    A2A_PARTS,
    a2a_busiest_bytes,
    comm_prediction,
    compare_report,
    comparison_table,
    planner_prediction,
)
from dsim.cost.plan.ep_compare import main as ep_compare_main
from dsim.model import Transformer

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
pytestmark = pytest.mark.timeout(300)


# The ranks of run_distributed unpickle the bench's worker by its module name: bench/ goes on the
# path before the launcher's forkserver starts (it keeps the sys.path of its start).
sys.path.insert(0, str(REPO / "bench"))
import ep_step_measure as bench  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, list]:
    """One smoke run (2 ranks, both toy models, skew 0 and 1): its JSON and saved tensors."""
    d = tmp_path_factory.mktemp("ep_step")
    out, tensors = d / "ep_smoke.json", d / "ep_smoke.pt"
    bench.main(
        ["--smoke", "--world-size", str(WORLD), "--out", str(out)]
        + ["--save-tensors", str(tensors)]
    )
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
    assert report["failed"] == []
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
            # (and the embedding's scatter-add in another order): an absolute tolerance relative
            # to the gradient's scale, since entries near zero carry only rounding
            atol = 1e-6 * float(g.abs().max())
            torch.testing.assert_close(mine, g, rtol=1e-5, atol=atol, msg=name)
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


# -----------------------------------------------------------------------------
# the predictions for the benchmark's layouts (dsim.cost.plan.ep_compare)


def test_predictions_side_by_side_with_the_smoke_json(smoke):
    report, _ = smoke
    cmp = compare_report(report)
    assert cmp["measured"] is False and "not a measurement" in cmp["note"]
    assert cmp["gpu"] == "H200" and cmp["world_size"] == WORLD
    parts = ["step", "compute", "a2a", *A2A_PARTS, "grad_allreduce", "param_sync", "dp_total"]
    parts += ["optimizer", "memory_bytes"]
    assert [r["part"] for r in cmp["rows"]] == parts * len(report["cases"])
    for case in report["cases"]:
        rows = {r["part"]: r for r in cmp["rows"] if r["case"] == case["name"]}
        plan = planner_prediction(case, WORLD)
        comm = comm_prediction(case, WORLD)
        assert rows["step"]["planner"] == plan["step"]
        assert rows["step"]["measured"] == case["parts_s"]["step"]
        e = rows["a2a"]["comm_model_error"]
        assert e == pytest.approx(comm["a2a"] / case["parts_s"]["a2a"] - 1)
        # the planner's parts add up to its step (1F1B, one micro-batch, no pipeline)
        assert plan["compute"] + plan["optimizer"] + plan["a2a"] + plan["exposed_dp"] == (
            pytest.approx(plan["step"], rel=1e-9)
        )
        # the four all-to-alls of a layer move the same rows: one prediction each
        assert len({comm[p] for p in A2A_PARTS}) == 1 and comm["a2a"] == 4 * comm[A2A_PARTS[0]]
        # a CPU run has no allocator peak: the memory row says so with None, not a number
        assert rows["memory_bytes"]["measured"] is None
        assert rows["memory_bytes"]["planner_error"] is None
    assert cmp["step_errors"] == [r["planner_error"] for r in cmp["rows"] if r["part"] == "step"]
    table = comparison_table(cmp["rows"])
    assert len(table.splitlines()) == 1 + len(cmp["rows"]) and "grad_allreduce" in table


def test_skewed_routing_loads_the_busiest_rank_more(smoke):
    # the comm model's all-to-all bytes follow the recorded routing (at toy sizes the time itself
    # sits on the launch floor, so the bytes are compared)
    report, _ = smoke
    by = {(c["model"], c["skew"]): c for c in report["cases"]}

    def busiest(case):
        return sum(a2a_busiest_bytes(t, 1.0) for t in case["rows_sent"])

    for model in bench.smoke_models():
        assert busiest(by[model, 1.0]) > busiest(by[model, 0.0]), model
        assert (
            comm_prediction(by[model, 1.0], WORLD)["a2a"]
            >= comm_prediction(by[model, 0.0], WORLD)["a2a"]
        )


def test_a2a_busiest_bytes():
    # rank 1 receives 3 + 5 remote rows (the most); 100-byte rows; 3 ranks: S * 2/3 = 800
    rows = [[9, 3, 0], [1, 7, 2], [0, 5, 4]]
    assert a2a_busiest_bytes(rows, 100) == pytest.approx(800 * 3 / 2)
    # even routing: the whole send buffer minus nothing
    assert a2a_busiest_bytes([[4, 4], [4, 4]], 10) == pytest.approx(80)
    with pytest.raises(ValueError, match="rows_sent"):
        a2a_busiest_bytes([[1, 2]], 10)


def gpu_case(name: str, args: ModelArgs, world: int) -> dict:
    """A case record of the GPU run as the planner sees it before it runs: 4096 tokens per rank,
    even routing, a billion replicated parameters."""
    n_moe = args.n_layers - args.n_dense_layers
    rows = [[[4096 * args.n_activated_experts // world] * world] * world] * n_moe
    return dict(
        name=name,
        args=args.to_dict(),
        layout=dict(
            tp=1, pp=1, dp=world, ep=world, zero=1, micro_batch=1, recompute="none",
            schedule="1f1b", dtype="bf16", n_microbatches=1,
        ),
        seq_len=4096, micro_batch=1, rows_sent=rows, bytes_per_elem=2,
        replicated_params=10**9, zero_shard_params=[10**9 // world] * world,
    )  # fmt: skip


@pytest.mark.parametrize("world", [2, 4, 8])
def test_gpu_layouts_fit_an_h200_and_take_more_all_to_all_with_more_ranks(world):
    for name, args in bench.gpu_models().items():
        case = gpu_case(name, args, world)
        plan = planner_prediction(case, world)
        assert plan["memory_per_gpu_bytes"] < 141e9, (name, world)
        comm = comm_prediction(case, world)
        assert comm["a2a"] == pytest.approx(comm["a2a_balanced"])  # even rows
        if world > 2:  # more of each rank's rows leave it
            assert comm["a2a"] > comm_prediction(gpu_case(name, args, 2), 2)["a2a"], name


def test_compare_rejects_other_records():
    with pytest.raises(ValueError, match="cases"):
        compare_report({"world_size": 2})
    case = dict(args={}, layout=dict(tp=2, pp=1, dp=1, ep=1, zero=1), seq_len=1, micro_batch=1)
    case.update(rows_sent=[], bytes_per_elem=2)
    with pytest.raises(ValueError, match="layout"):
        planner_prediction(case, 2)
    with pytest.raises(ValueError, match="lacks 'layout'"):
        comm_prediction({"args": {}}, 2)


def test_command_line_prints_the_table(smoke, tmp_path, capsys):
    report, _ = smoke
    path = tmp_path / "ep.json"
    path.write_text(json.dumps(report))
    ep_compare_main([str(path)])
    out = capsys.readouterr().out
    assert "not a measurement" in out and "planner step error" in out
    assert out.count("grad_allreduce") == len(report["cases"])


def test_a_failed_launch_is_listed_and_the_exit_says_so(smoke, tmp_path):
    # a deadline no launch can meet: the model's launch fails, the JSON says which and why
    out = tmp_path / "ep.json"
    with pytest.raises(SystemExit, match="1 model"):
        bench.main(["--smoke", "--only", "deepseek-v3", "--timeout-s", "0.05", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["cases"] == []
    [failed] = report["failed"]
    assert (
        failed["cases"] == [f"deepseek-v3 (toy), skew {s}, 2x16 tokens/rank" for s in (0, 1)]
        and "timed out" in failed["error"]
    )
