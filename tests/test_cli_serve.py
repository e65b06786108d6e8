"""`dsim serve --rate R` and `dsim serve --trace FILE`: the request-level simulation from the
command line. Small runs of the tiny preset (max_seq_len 256); bad input is one line on stderr
with exit status 2; without --rate or --trace the command is the steady-state plan."""

import json

import pytest

from dsim.cli import main
from dsim.serving import Request, write_trace

TINY = ("serve", "--model", "tiny", "--gpus", "8")
SMALL = ("--prompt-tokens", "60", "--output-tokens", "30")

FIELDS = {
    "requests",
    "window_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "tokens_per_s_per_user",
    "input_tokens_per_s_per_node",
    "output_tokens_per_s_per_node",
    "utilisation",
    "batch_per_rank",
    "cost_per_million_output_tokens",
    "prefix_hit_rate",
    "preemptions",
    "littles_law",
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def report(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert err == ""  # no progress bar (stderr is not a terminal), nothing else
    rep = json.loads(out)  # the whole of stdout is the JSON document
    assert FIELDS <= set(rep)
    assert rep["littles_law"]["L"] == pytest.approx(rep["littles_law"]["lambda_W"], rel=1e-6)
    return rep


@pytest.fixture
def trace_file(tmp_path):
    reqs = [Request(i, 0.01 * i, 40 + i % 50, 10 + i % 20, i % 3, 20) for i in range(100)]
    path = tmp_path / "t.jsonl"
    write_trace(reqs, path)
    return path


def test_rate_run_json(capsys):
    rep = report(capsys, *TINY, "--rate", "50", "--requests", "200", *SMALL)
    assert rep["requests"] == 200
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(rep[key]) == {"mean", "p50", "p90", "p99"}
        assert 0 < rep[key]["p50"] <= rep[key]["p90"] <= rep[key]["p99"]
    assert rep["output_tokens_per_s_per_node"] > 0 and set(rep["utilisation"]) == {"both"}
    assert rep["prefix_hit_rate"] == 0 and rep["preemptions"] == 0
    assert rep["tpot_s"]["p50"] < rep["e2e_s"]["p50"]
    # the seed decides the run
    again = report(capsys, *TINY, "--rate", "50", "--requests", "200", *SMALL)
    other = report(capsys, *TINY, "--rate", "50", "--requests", "200", *SMALL, "--seed", "1")
    assert again == rep and other != rep


def test_rate_run_disaggregated_kv_transfer(capsys):
    """The transfer of the KV cache to the decode unit comes after the first token: TTFT is the
    prefill unit's alone (unchanged), every request ends about 2 ms later."""
    common = ("serve", "--model", "tiny", "--rate", "50", "--requests", "200", *SMALL)
    base = report(capsys, *common, "--disaggregate", "8:8")
    assert set(base["utilisation"]) == {"prefill", "decode"}
    late = report(capsys, *common, "--disaggregate", "8:8", "--kv-transfer-ms", "2")
    assert late["ttft_s"] == base["ttft_s"]
    assert late["e2e_s"]["mean"] - base["e2e_s"]["mean"] == pytest.approx(2e-3, rel=0.25)


def test_rate_run_with_mtp_prefix_cache_and_fused_attention(capsys):
    rep = report(
        capsys, "serve", "--model", "tiny", "--rate", "50", "--requests", "200", *SMALL,
        "--disaggregate", "8:8", "--mtp-acceptance", "0.8", "--shared-prefix", "0.5",
        "--prefixes", "3", "--prefix-cache-tokens", "inf", "--decode-attention", "flashmla",
    )  # fmt: skip
    # half of each prompt is one of 3 prefixes: the first of each misses, the rest hit their
    # shared half (60 tokens: 30 shared)
    assert 0.45 < rep["prefix_hit_rate"] <= 0.5


def test_mtp_shortens_the_time_per_output_token(capsys):
    common = (*TINY, "--rate", "20", "--requests", "100", *SMALL)
    base = report(capsys, *common)
    mtp = report(capsys, *common, "--mtp-acceptance", "0.9", "--mtp-draft-tokens", "2")
    assert mtp["tpot_s"]["mean"] < 0.75 * base["tpot_s"]["mean"]


def test_max_batch_and_chunk_tokens_slow_the_first_token(capsys):
    common = (*TINY, "--rate", "200", "--requests", "100", *SMALL)
    base = report(capsys, *common)
    small = report(capsys, *common, "--max-batch", "2", "--chunk-tokens", "32")
    assert small["requests"] == 100
    assert small["ttft_s"]["mean"] > base["ttft_s"]["mean"]
    assert small["e2e_s"]["mean"] > base["e2e_s"]["mean"]


def test_trace_run_json_and_csv(capsys, trace_file, tmp_path):
    rep = report(capsys, *TINY, "--trace", str(trace_file), "--prefix-cache-tokens", "1k")
    assert rep["requests"] == 100 and rep["prefix_hit_rate"] > 0
    csv = tmp_path / "t.csv"
    write_trace([Request(i, 0.1 * i, 30, 5) for i in range(20)], csv)
    assert report(capsys, *TINY, "--trace", str(csv))["requests"] == 20


def test_human_output_is_a_short_table(capsys, trace_file):
    code, out, err = run(capsys, *TINY, "--trace", str(trace_file), "--prefix-cache-tokens", "1k")
    assert code == 0 and err == ""
    for words in (
        "time to first token",
        "time per output token",
        "end to end",
        "p50",
        "p99",
        "throughput per node",
        "utilisation",
        "per million output tokens",
        "of prompt tokens hit",
        "preemptions",
        "Little's law",
    ):
        assert words in out, words
    assert len(out.splitlines()) < 20


def test_without_rate_or_trace_serve_is_the_plan(capsys):
    code, out, _ = run(capsys, "serve", "--model", "tiny", "--json")
    assert code == 0 and json.loads(out)["context"] == 255 and json.loads(out)["n_gpus"] == 16


def refused(capsys, *argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith("dsim: error:") and message in err, err
    assert "Traceback" not in err and out == ""
    return err


RATE = (*TINY, "--rate", "10", "--requests", "20", *SMALL)


@pytest.mark.parametrize(
    "argv, message",
    [
        ((*TINY, "--rate", "0"), "argument --rate"),
        ((*TINY, "--rate", "-1"), "argument --rate"),
        ((*TINY, "--rate", "nan"), "argument --rate"),
        ((*TINY, "--rate", "inf"), "argument --rate"),
        ((*TINY, "--rate", "ten"), "argument --rate"),
        ((*TINY, "--rate", "1", "--trace", "t.csv"), "not allowed with argument --rate"),
        ((*RATE, "--requests", "0"), "argument --requests"),
        ((*RATE, "--requests", "1.5"), "argument --requests"),
        ((*RATE, "--prompt-tokens", "0"), "argument --prompt-tokens"),
        ((*RATE, "--output-tokens", "-3"), "argument --output-tokens"),
        ((*RATE, "--length-cv", "-0.1"), "argument --length-cv"),
        ((*RATE, "--length-cv", "nan"), "argument --length-cv"),
        ((*RATE, "--shared-prefix", "1.5"), "argument --shared-prefix"),
        ((*RATE, "--shared-prefix", "0.5", "--prefixes", "0"), "argument --prefixes"),
        ((*RATE, "--prefixes", "3"), "--prefixes needs --shared-prefix"),
        ((*RATE, "--seed", "-1"), "argument --seed"),
        ((*RATE, "--disaggregate", "8"), "argument --disaggregate"),
        ((*RATE, "--disaggregate", "8:0"), "argument --disaggregate"),
        ((*RATE, "--disaggregate", "a:b"), "argument --disaggregate"),
        ((*RATE, "--disaggregate", "8:8"), "drop --gpus"),
        ((*RATE, "--kv-transfer-ms", "1"), "--kv-transfer-ms applies to --disaggregate"),
        ((*RATE, "--mtp-acceptance", "1.5"), "argument --mtp-acceptance"),
        ((*RATE, "--mtp-acceptance", "nan"), "argument --mtp-acceptance"),
        ((*RATE, "--mtp-draft-tokens", "2"), "--mtp-draft-tokens needs --mtp-acceptance"),
        ((*RATE, "--mtp-acceptance", "0.5", "--mtp-draft-tokens", "9"), "--mtp-draft-tokens"),
        ((*RATE, "--prefix-cache-tokens", "-5"), "argument --prefix-cache-tokens"),
        ((*RATE, "--prefix-cache-tokens", "lots"), "argument --prefix-cache-tokens"),
        ((*RATE, "--max-batch", "0"), "argument --max-batch"),
        ((*RATE, "--chunk-tokens", "0"), "argument --chunk-tokens"),
        ((*RATE, "--decode-attention", "fast"), "argument --decode-attention"),
        ((*RATE, "--context", "100"), "--context is an option of the steady-state plan"),
        ((*RATE, "--phase", "prefill"), "--phase is an option of the steady-state plan"),
        ((*RATE, "--tp", "3"), "--tp 3 does not divide the 8 GPUs"),
        ((*RATE, "--prompt-tokens", "300"), "past tiny's max_seq_len=256"),
        ((*RATE, "--model", "no-such-model"), "neither a preset"),
        (("serve", "--model", "tiny", "--requests", "10"), "--requests needs --rate or --trace"),
        (("serve", "--model", "tiny", "--mtp-acceptance", "0.5"), "needs --rate or --trace"),
        (("serve", "--model", "tiny", "--quiet"), "--quiet needs --rate or --trace"),
        ((*TINY, "--rate", "1,x"), "argument --rate"),
        ((*TINY, "--rate", "1,-2"), "argument --rate"),
        ((*TINY, "--rate", "2,2"), "has a rate twice"),
        ((*TINY, "--rate", ",".join(str(i) for i in range(1, 40))), "1 to 32 rates"),
        ((*RATE, "--plot", "x.png"), "--plot needs two or more --rate values"),
        ((*TINY, "--rate", "1,2", "--plot", "x.txt"), "must end in .png, .svg, .pdf"),
        ((*TINY, "--rate", "1,2", "--plot", "/no/such/folder/x.png"), "does not exist"),
        (("serve", "--model", "tiny", "--plot", "x.png"), "--plot needs --rate or --trace"),
        ((*RATE, "--slo-ttft-ms", "0"), "argument --slo-ttft-ms"),
        ((*RATE, "--slo-tpot-ms", "nan"), "argument --slo-tpot-ms"),
        (("serve", "--model", "tiny", "--slo-ttft-ms", "5"), "needs --rate or --trace"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, argv, message):
    refused(capsys, *argv, message=message)


BAD_TRACES = [
    ("t.csv", None, "not a regular file"),
    ("t.txt", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n", "must end in .csv or .jsonl"),
    ("t.csv", "", "header lacks arrival_s"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,x,5\n", "t.csv:3: prompt_tokens"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens\n-2,10,5\n", "t.csv:2: arrival_s"),
    ("t.jsonl", '{"arrival_s": 0, "prompt_tokens": 3}\n', "t.jsonl:1: missing output_tokens"),
    ("t.jsonl", '{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2, "x": 1}\n', "column"),
    ("t.jsonl", '{"arrival_s": 0, "prompt_tokens": 250, "output_tokens": 20}\n', "max_seq_len"),
]


@pytest.mark.parametrize("name, text, message", BAD_TRACES)
def test_bad_trace_is_one_line_and_status_2(capsys, tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    err = refused(capsys, *TINY, "--trace", str(path), message=message)
    assert "--trace" in err


def test_trace_refuses_rate_options(capsys, trace_file):
    refused(
        capsys, *TINY, "--trace", str(trace_file), "--requests", "5", message="applies to --rate"
    )


def test_request_larger_than_the_kv_cache_is_one_line(capsys, tmp_path):
    """DeepSeek-V3 on 16 H800s holds about 137K tokens of KV cache per rank: a request of 160K
    tokens (within max_seq_len) is refused by name, not simulated into a stall."""
    path = tmp_path / "t.csv"
    write_trace([Request(0, 0.0, 10, 5), Request(1, 1.0, 100_000, 60_000)], path)
    code, out, err = run(
        capsys, "serve", "--model", "deepseek-v3", "--gpu", "h800", "--gpus", "16",
        "--trace", str(path),
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and out == "", err
    assert "request 1" in err and "160000 tokens" in err and "KV cache" in err


def test_a_list_of_rates_sweeps_the_load(capsys, tmp_path):
    fig = tmp_path / "load.png"
    argv = (*TINY, "--rate", "5,400", "--requests", "150", *SMALL, "--plot", str(fig))
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    reps = json.loads(out)
    assert [r["rate"] for r in reps] == [5, 400]
    for r in reps:
        assert FIELDS <= set(r)
        assert r["littles_law"]["L"] == pytest.approx(r["littles_law"]["lambda_W"], rel=1e-6)
    # far more load queues the prompts and fills the batches
    assert reps[1]["ttft_s"]["p90"] > reps[0]["ttft_s"]["p90"]
    assert reps[1]["batch_per_rank"]["both"] > reps[0]["batch_per_rank"]["both"]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(capsys, *argv[:-2])
    assert code == 0 and "latency against load" in out and len(out.splitlines()) == 5


def test_latency_targets_report_the_share_met(capsys):
    common = (*TINY, "--rate", "50", "--requests", "200", *SMALL)
    assert report(capsys, *common)["slo_attainment"] is None
    loose = report(capsys, *common, "--slo-ttft-ms", "1e6", "--slo-tpot-ms", "1e6")
    assert loose["slo_attainment"] == 1.0
    tight = report(capsys, *common, "--slo-ttft-ms", "1e-6")
    assert tight["slo_attainment"] == 0.0
    some = report(capsys, *common, "--slo-tpot-ms", "1e-6")  # one-token requests have no TPOT
    assert some["slo_attainment"] == 0.0
