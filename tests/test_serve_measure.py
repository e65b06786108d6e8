"""bench/serve_measure.py on a CPU: a tiny run's JSON, its options, and the committed CPU run
(dsim/data/serve_real_cpu.json) held to serve_trace's bookkeeping. No assertion on durations."""

import json
import sys
from pathlib import Path

import pytest
import torch

from dsim.serving.real import RealRun

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import serve_measure as bench  # noqa: E402

COMMITTED = REPO / "dsim" / "data" / "serve_real_cpu.json"
TINY = ["--device", "cpu", "--requests", "6", "--rate", "400", "--output-max", "6"]
TINY += ["--fit-batches", "1,2", "--fit-contexts", "8,32", "--fit-prompts", "8,16"]
TINY += ["--fit-repeats", "2"]


def check_run(data: dict) -> None:
    """The JSON's run against its trace and options: every request once, in its slot limit."""
    run = RealRun.from_dict(data["run"])
    trace = {r["id"]: r for r in data["trace"]}
    max_batch = data["options"]["max_batch"]
    assert sorted(r.id for r in run.requests) == sorted(trace)
    for rec in run.requests:
        assert rec.prompt_tokens == trace[rec.id]["prompt_tokens"]
        assert rec.output_tokens == trace[rec.id]["output_tokens"]
        assert rec.arrival_s <= rec.admitted_s <= rec.first_token_s <= rec.finish_s
    assert all(s.n_running <= max_batch and s.n_decode <= max_batch for s in run.iterations)
    assert sum(s.n_decode for s in run.iterations) == sum(
        r["output_tokens"] - 1 for r in data["trace"]
    )
    summary = run.summary()
    for key in ("requests", "iterations", "prefill_steps", "decode_steps"):
        assert summary[key] == data["summary"][key]


@pytest.fixture
def keep_threads():
    """bench.main sets torch to one thread on a CPU; the other tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_cpu_run_writes_the_json(tmp_path, keep_threads):
    out = tmp_path / "serve.json"
    data = bench.main([*TINY, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    assert data["env"]["device_type"] == "cpu" and data["env"]["torch"]
    assert data["model_args"]["name"] == "tiny" and data["model_args"]["attn_impl"] == "absorb"
    assert data["model_args"]["max_seq_len"] >= 32 + 1
    assert len(data["trace"]) == 6
    check_run(data)
    fit = data["fit"]
    assert [(d["batch"], d["context"]) for d in fit["decode"]] == [(1, 8), (1, 32), (2, 8), (2, 32)]
    assert [p["prompt_tokens"] for p in fit["prefill"]] == [8, 16]
    for row in fit["decode"] + fit["prefill"]:
        assert len(row["durations_s"]) == 2 and row["median_s"] > 0


def test_poisson_trace_is_seeded_and_within_its_ranges():
    opts = bench.options([*TINY, "--requests", "50", "--out", "x.json", "--seed", "3"])
    trace = bench.poisson_trace(opts)
    assert trace == bench.poisson_trace(opts)
    arrivals = [r.arrival_s for r in trace]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert all(16 <= r.prompt_tokens <= 160 and 4 <= r.output_tokens <= 6 for r in trace)


def test_the_cuda_default_model_is_deepseek_v3_widths_cut_to_fit():
    opts = bench.parser().parse_args(["--out", "x.json", "--device", "cuda"])
    for key, value in bench.DEFAULTS["cuda"].items():
        setattr(opts, key, value if getattr(opts, key) is None else getattr(opts, key))
    for key in ("fit_batches", "fit_contexts", "fit_prompts"):
        setattr(opts, key, [int(v) for v in getattr(opts, key).split(",")])
    args = bench.model_args(opts)
    assert (args.dim, args.n_heads, args.kv_lora_rank, args.moe_inter_dim) == (7168, 128, 512, 2048)
    assert (args.n_layers, args.n_dense_layers, args.n_routed_experts) == (4, 1, 32)
    assert (args.n_activated_experts, args.n_expert_groups, args.n_limited_groups) == (8, 8, 4)
    assert args.n_mtp_layers == 0 and args.attn_impl == "absorb" and args.max_batch_size == 32
    assert args.max_seq_len == 4096 + 1  # the longest fit context's decode


def test_help_works(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert (
        e.value.code == 0 and "--device cuda --out $OUT/serve_h200.json" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rate", "0"], "--rate must be a finite number > 0"),
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--fit-prompts", "8,x"], "--fit-prompts must be comma-separated integers"),
        (["--prompt-min", "50", "--prompt-max", "10"], "--prompt-max"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", "x.json", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_committed_cpu_run_keeps_its_books():
    assert COMMITTED.stat().st_size < 300_000
    data = json.loads(COMMITTED.read_text())
    assert data["env"]["device_type"] == "cpu" and data["options"]["preset"] == "tiny"
    assert 60 <= len(data["trace"]) <= 120
    check_run(data)
