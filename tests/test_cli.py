"""The `dsim` command line: every subcommand on presets and on a config.json, machine-readable
output, and bad input reported in one line with exit status 2 (never a traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsim.cli import main

DSIM = Path(sys.executable).parent / "dsim"

# A small DeepSeek-V3-style config.json (Hugging Face keys), as a user would point --model at.
SMALL_V3 = {
    "model_type": "deepseek_v3",
    "architectures": ["DeepseekV3ForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "moe_intermediate_size": 1024,
    "num_hidden_layers": 12,
    "first_k_dense_replace": 1,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_routed_experts": 64,
    "n_shared_experts": 1,
    "num_experts_per_tok": 6,
    "n_group": 8,
    "topk_group": 4,
    "scoring_func": "sigmoid",
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "q_lora_rank": 768,
    "kv_lora_rank": 256,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "v_head_dim": 64,
    "max_position_embeddings": 4096,
    "rope_theta": 10000,
    "num_nextn_predict_layers": 1,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
}


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL_V3))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_on_a_preset(capsys):
    code, out, err = run(
        capsys,
        "plan",
        "--model",
        "deepseek-v3",
        "--gpu",
        "h800",
        "--gpus",
        "2048",
        "--tokens",
        "14.8T",
        "--global-batch",
        "15360",
        "--top",
        "4",
        "--json",
        "--quiet",
    )
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["layouts_evaluated"] > 10_000 and len(data["plans"]) == 4
    steps = [p["step_time_s"] for p in data["plans"]]
    assert steps == sorted(steps)
    for p in data["plans"]:
        assert {
            "tp",
            "pp",
            "ep",
            "dp",
            "zero",
            "step_time_s",
            "mfu",
            "memory_per_gpu_bytes",
            "gpu_hours",
        } <= set(p)
        assert p["tp"] * p["pp"] * p["dp"] == 2048 and p["memory_per_gpu_bytes"] <= 80e9


def test_plan_fixes_what_the_user_names(capsys):
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        "deepseek-v3",
        "--gpu",
        "h800",
        "--gpus",
        "2048",
        "--tokens",
        "14.8T",
        "--global-batch-tokens",
        "62.91456M",
        "--tp",
        "1",
        "--pp",
        "16",
        "--ep",
        "64",
        "--zero",
        "1",
        "--schedule",
        "dualpipe",
        "--dtype",
        "fp8",
        "--recompute",
        "full",
        "--micro-batch",
        "1",
        "--json",
        "--quiet",
    )
    assert code == 0
    plans = json.loads(out)["plans"]
    assert len(plans) == 1
    p = plans[0]
    assert (
        p["tp"],
        p["pp"],
        p["ep"],
        p["dp"],
        p["zero"],
        p["schedule"],
        p["dtype"],
        p["recompute"],
    ) == (1, 16, 64, 128, 1, "dualpipe", "fp8", "full")


def test_plan_table(capsys):
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        "mixtral-8x7b",
        "--gpu",
        "a100",
        "--gpus",
        "64",
        "--tokens",
        "1T",
        "--global-batch",
        "256",
        "--top",
        "3",
        "--quiet",
    )
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    assert set(lines[header + 1]) <= {"-", " "}
    assert (
        len(lines[header + 2 : header + 5]) == 3
        and "MFU" in lines[header]
        and "layouts evaluated" in out
    )
    widths = {len(line) for line in lines[header : header + 2]}
    assert len(widths) == 1  # aligned columns


def test_commands_on_a_config_json(capsys, config_path):
    code, out, _ = run(capsys, "params", "--model", config_path)
    assert code == 0 and "routed_experts" in out
    code, out, _ = run(capsys, "flops", "--model", config_path, "--seq-len", "2k", "--json")
    assert code == 0 and json.loads(out)["tokens"] == 2000
    code, out, _ = run(
        capsys, "memory", "--model", config_path, "--gpu", "h100", "--gpus", "8", "--ep", "8"
    )
    assert code == 0 and "fits on one H100-SXM" in out
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        config_path,
        "--gpu",
        "h100",
        "--gpus",
        "16",
        "--tokens",
        "100B",
        "--global-batch",
        "64",
        "--json",
        "--quiet",
    )
    assert code == 0 and json.loads(out)["plans"]
    code, out, _ = run(
        capsys, "serve", "--model", config_path, "--gpu", "h100", "--gpus", "8", "--json"
    )
    assert code == 0 and json.loads(out)["tokens_per_s_per_node"] > 0


def test_flops_memory_serve_tables(capsys):
    code, out, _ = run(capsys, "flops", "--model", "deepseek-v3")
    assert code == 0 and "routed_experts" in out and "6ND" in out
    code, out, _ = run(
        capsys,
        "memory",
        "--model",
        "deepseek-v3",
        "--gpu",
        "h800",
        "--gpus",
        "2048",
        "--pp",
        "16",
        "--ep",
        "64",
        "--zero",
        "1",
        "--recompute",
        "full",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["dp"] == 128 and data["fits"]
    code, out, _ = run(
        capsys,
        "serve",
        "--model",
        "deepseek-v3",
        "--gpu",
        "h800",
        "--gpus",
        "144",
        "--redundant-experts",
        "32",
        "--context",
        "4989",
    )
    assert code == 0 and "per node" in out and "2 routed per GPU" in out
    code, out, _ = run(
        capsys,
        "serve",
        "--model",
        "deepseek-v3",
        "--gpu",
        "h800",
        "--gpus",
        "32",
        "--phase",
        "prefill",
        "--redundant-experts",
        "32",
        "--prompt",
        "4383",
        "--cache-hit",
        "0.563",
        "--json",
    )
    assert code == 0 and json.loads(out)["experts_per_gpu"] == 9


def test_tour_and_params_still_work(capsys):
    code, out, _ = run(capsys, "params", "--model", "deepseek-v3", "--json")
    assert code == 0 and json.loads(out)["total_no_mtp"] > 6.7e11
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(
        c in out for c in ("tour", "params", "flops", "memory", "plan", "serve")
    )


@pytest.mark.parametrize("command", ["flops", "memory", "plan", "serve"])
def test_help_has_examples(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "examples:" in out and f"dsim {command} --model" in out


BAD = [
    (["plan", "--gpu", "b300"], "unknown gpu 'b300'"),
    (["plan", "--gpus", "2048", "--tp", "3"], "tp=3 does not divide the 2048 GPUs"),
    (
        ["plan", "--gpus", "2048", "--tp", "4", "--pp", "16", "--dp", "64"],
        "= 4096 does not equal the 2048 GPUs",
    ),
    (["plan", "--gpus", "12"], "must be a multiple of gpus_per_node=8"),
    (["plan", "--gpus", "abc"], "argument --gpus"),
    (["plan", "--tokens", "14.8Q"], "argument --tokens"),
    (["plan", "--model", "no-such-model"], "neither a preset"),
    (
        ["plan", "--model", "deepseek-v3", "--gpu", "a100", "--gpus", "8"],
        "no layout of deepseek-v3 fits",
    ),
    (["plan", "--dtype", "fp8", "--gpu", "a100"], "not supported by A100"),
    (["plan", "--global-batch-tokens", "1000"], "not a whole number of 4096-token sequences"),
    (["memory", "--gpus", "10", "--tp", "4"], "does not divide --gpus 10"),
    (["serve", "--gpus", "8", "--ep", "3"], "ep=3 does not divide the 8 GPUs"),
    (["serve", "--model", "deepseek-v3", "--gpus", "8"], "does not fit"),
    (["flops", "--mode", "sideways"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_is_one_line_and_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv, "--quiet") if argv[0] == "plan" else run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dsim: error:") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"model_type": "deepseek_v3", "hidden_size": 64', "not valid JSON"),
        ('{"model_type": "gpt2"}', "model_type = 'gpt2' is not supported"),
        (json.dumps({**SMALL_V3, "rope_scaling": "yes"}), "rope_scaling must be a JSON object"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({**SMALL_V3, "hidden_size": -4}), "hidden_size = -4 is invalid"),
        (
            '{"model_type": "deepseek_v3", "hidden_size": 64}',
            "required key 'vocab_size' is missing",
        ),
    ],
)
def test_malformed_config_json(capsys, tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    for command in ("plan", "flops"):
        code, _, err = run(capsys, command, "--model", str(path))
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_console_script():
    """The installed entry point runs and reports errors the same way."""
    ok = subprocess.run(
        [
            str(DSIM),
            "plan",
            "--model",
            "mixtral-8x7b",
            "--gpu",
            "h100",
            "--gpus",
            "16",
            "--global-batch",
            "64",
            "--top",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert len(data["plans"]) == 2 and ok.stderr == ""  # no progress bar when not a terminal
    bad = subprocess.run(
        [str(DSIM), "plan", "--gpus", "2048", "--tp", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "dsim: error: tp=3 does not divide the 2048 GPUs"
    )


# ---------------------------------------------------------------------------------------------
# Issue 19: bad or odd input never hangs, never prints a traceback, never turns into another number
# ---------------------------------------------------------------------------------------------
def refused(capsys, *argv, message=""):
    """Run the CLI; it must exit 2 with one line naming the problem."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith("dsim: error:") and message in err, err
    assert "Traceback" not in err
    return err


def write_config(tmp_path, **changes) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SMALL_V3, **changes}))
    return str(path)


@pytest.mark.timeout(60)
def test_huge_lengths_gpus_and_depths_are_refused_at_once(capsys, tmp_path):
    """Defect 1: --seq-len 1e12 (the attention time model walked every block), --gpus 1e18 (the
    divisor search) and a million layers (per-layer loops) hung; each is refused with its bound."""
    refused(
        capsys, "plan", "--model", "mixtral-8x7b", "--gpus", "16", "--seq-len", "1e12", "--quiet",
        message="max_seq_len=32,768",
    )  # fmt: skip
    refused(capsys, "plan", "--gpus", "1e18", "--quiet", message="--gpus")
    # a fixed micro-batch of 2^30 sequences: the planner's value table was as long (minutes)
    refused(
        capsys, "plan", "--gpus", "8", "--micro-batch", str(2**30), "--global-batch", str(2**33),
        "--tokens", "1e21", "--include-unfit", "--quiet", message="tokens must be <=",
    )  # fmt: skip
    deep = write_config(tmp_path, num_hidden_layers=1_000_000)
    for command in ("params", "flops", "memory"):
        refused(capsys, command, "--model", deep, message="n_layers=1000000")


@pytest.mark.timeout(60)
def test_attention_time_model_is_bounded():
    """Defect 1: op_time('attention', seq=10**9) ran for minutes; it is refused with the bound,
    and a length just under the bound answers."""
    from dsim.cost.timing import op_time
    from dsim.cost.timing.kernels import MAX_ATTN_TOKENS

    shape = dict(batch=1, n_heads=8, qk_head_dim=128, v_head_dim=128, causal=True)
    with pytest.raises(ValueError, match="seq_len must be <= 67,108,864"):
        op_time("attention", seq_len=10**9, **shape)
    assert 0 < op_time("attention", seq_len=MAX_ATTN_TOKENS, backward=True, **shape) < float("inf")


def test_attention_time_is_monotone_in_the_sequence_length():
    """Defect 10: attention time dropped 12% from seq 832 to 833 (greedy scheduling anomaly), and
    so did a prefill step."""
    from dsim.config import preset
    from dsim.cost import step_time
    from dsim.cost.timing import op_time

    shape = dict(batch=1, n_heads=32, qk_head_dim=128, v_head_dim=128, causal=True)
    for backward in (False, True):
        times = [
            op_time("attention", "H100-SXM", seq_len=s, backward=backward, **shape)
            for s in range(768, 1100)
        ]
        assert all(b >= a for a, b in zip(times, times[1:]))
    args = preset("mixtral-8x7b")
    steps = [step_time(args, 1, s, "prefill", "H100-SXM").total_s for s in (832, 833)]
    assert steps[1] >= steps[0]


def test_params_reports_a_malformed_config_in_one_line(capsys, tmp_path):
    """Defect 2: params skipped the error handling of flops and memory: a string rope_theta or
    rope_scaling printed a traceback."""
    for change in (
        {"rope_theta": "ten thousand"},
        {"rope_scaling": "yes"},
        {"rope_scaling": {"type": "yarn", "factor": "forty"}},
    ):
        refused(capsys, "params", "--model", write_config(tmp_path, **change), message="--model")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["memory", "--gpus", "8", "--tp", "0"], "argument --tp"),
        (["memory", "--gpus", "8", "--pp", "0"], "argument --pp"),
        (["plan", "--global-batch", "1e30", "--quiet"], "argument --global-batch"),
        (["memory", "--dp", "0"], "argument --dp"),  # defect 15: ran as dp 1
        (["plan", "--tokens", "1e-30", "--quiet"], "less than one step"),  # 15: printed 0.0 days
        (["plan", "--top", "0", "--quiet"], "argument --top"),
        (["tour", "--steps", "0"], "argument --steps"),
        (["serve", "--cache-hit", "1.5", "--phase", "prefill"], "argument --cache-hit"),
        (["serve", "--latency-ms", "0"], "argument --latency-ms"),
    ],
)
def test_out_of_range_numbers_are_refused(capsys, argv, message):
    """Defects 2 and 15: ZeroDivisionError for --tp 0 / --pp 0, OverflowError for a global batch of
    1e30, --dp 0 silently run as 1, a budget of 1e-30 tokens planned as 0.0 days."""
    refused(capsys, *argv, message=message)


def test_tour_checks_its_output_path_before_training(capsys, tmp_path, monkeypatch):
    """Defect 2: an unwritable --out failed with a traceback after the training."""
    import dsim.train

    def no_training(*a, **k):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(dsim.train, "train", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("")
    refused(capsys, "tour", "--out", str(blocker / "loss.png"), message="--out")
    refused(capsys, "tour", "--out", str(tmp_path), message="--out")


def test_devices_fifos_and_binary_files_are_refused_by_name(capsys, tmp_path):
    """Defects 2 and 14: --model /dev/zero read until MemoryError, a FIFO blocked forever, a binary
    file printed a decoding error without its path."""
    import os

    refused(capsys, "params", "--model", "/dev/zero", message="/dev/zero is not a regular file")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    refused(capsys, "flops", "--model", str(fifo), message="is not a regular file")
    binary = tmp_path / "weights.json"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(capsys, "params", "--model", str(binary), message=str(binary))
    big = tmp_path / "big.json"
    big.write_text(" " * (2 << 20))
    refused(capsys, "params", "--model", str(big), message="more than a config.json")


def test_memory_refuses_layouts_the_model_cannot_split(capsys):
    """Defect 4: memory --tp 3 on DeepSeek-V3 printed 101 GB from fractional shards; memory()
    refuses what plan and serve refuse."""
    from dsim.config import preset
    from dsim.cost.memory import memory

    with pytest.raises(ValueError, match="tp=3 must divide n_heads=128"):
        memory(preset("deepseek-v3"), tp=3)
    with pytest.raises(ValueError, match="tp=1000 must divide n_heads=4"):
        memory(preset("tiny"), tp=1000)
    refused(capsys, "memory", "--tp", "3", message="tp=3 must divide n_heads=128")


def test_prices_and_budgets_must_be_finite_and_non_negative(capsys):
    """Defect 7: serve --price=-5 printed a negative cost, nan and inf printed $nan and $inf;
    TrainingJob took infinite tokens and prices; a negative reserved_bytes inflated the batch."""
    from dsim.config import preset
    from dsim.cost.plan import TrainingJob, plan_serving

    for price in ("-5", "nan", "inf"):
        refused(capsys, "serve", f"--price={price}", message="argument --price")
        refused(capsys, "plan", f"--price={price}", "--quiet", message="argument --price")
    args = preset("deepseek-v3")
    for bad in (dict(tokens=float("inf")), dict(price_per_gpu_hour=float("inf"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainingJob(args, "H800", 2048, **bad)
    with pytest.raises(ValueError, match="reserved_bytes"):
        plan_serving(args, "H800", "decode", 16, reserved_bytes=-100e9)
    for price in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="price_per_gpu_hour"):
            plan_serving(args, "H800", "decode", 16, price_per_gpu_hour=price)


def test_exposed_communication_is_never_negative(capsys):
    """Defect 11: the default Mixtral plan printed -3.6e-15 s of exposed communication, a huge
    global batch -0.0035 s; the total is now the sum of the kinds."""
    for batch in ("1024", "1M"):
        code, out, _ = run(
            capsys, "plan", "--model", "mixtral-8x7b", "--gpus", "16", "--global-batch", batch,
            "--top", "50", "--json", "--quiet",
        )  # fmt: skip
        assert code == 0
        for p in json.loads(out)["plans"]:
            assert p["exposed_comm_s"] >= 0 and all(v >= 0 for v in p["exposed"].values())
            assert p["exposed_comm_s"] == pytest.approx(sum(p["exposed"].values()), abs=1e-12)


@pytest.mark.parametrize(
    "argv",
    [
        ["flops", "--seq-len", "1M"],
        ["flops", "--mode", "prefill", "--seq-len", "100k", "--context", "100k"],
        ["flops", "--mode", "decode", "--seq-len", "163840"],
        ["memory", "--seq-len", "1M"],
        ["memory", "--mode", "inference", "--seq-len", "200k"],
        ["serve", "--context", "1M"],
        ["serve", "--phase", "prefill", "--prompt", "200k"],
        ["plan", "--model", "tiny", "--seq-len", "4096", "--quiet"],
    ],
)
def test_lengths_past_max_seq_len_are_refused(capsys, argv):
    """Defect 12: flops, memory and serve costed sequences the model rejects."""
    refused(capsys, *argv, message="max_seq_len=")


def test_defaults_follow_a_short_max_seq_len(capsys):
    """Defect 12: where the user gives no length, the default (4096) is capped at max_seq_len."""
    code, out, _ = run(capsys, "flops", "--model", "tiny", "--json")
    assert code == 0 and json.loads(out)["seq_len"] == 256
    code, out, _ = run(capsys, "serve", "--model", "tiny", "--json")
    assert code == 0 and json.loads(out)["context"] == 255


def test_kv_dtype_messages_name_the_option_and_take_bits(capsys):
    """Defect 14: --kv-dtype errors said "dtype" and promised "a number of bits" that the CLI then
    rejected."""
    err = refused(capsys, "serve", "--kv-dtype", "foo", message="argument --kv-dtype")
    assert "bits per element" in err
    refused(capsys, "memory", "--mode", "inference", "--kv-dtype", "100", message="--kv-dtype")
    code, out, _ = run(capsys, "memory", "--mode", "inference", "--kv-dtype", "6", "--json")
    six = json.loads(out)["bytes"]["kv_cache"]
    code8, out8, _ = run(capsys, "memory", "--mode", "inference", "--kv-dtype", "bf16", "--json")
    bf16 = json.loads(out8)["bytes"]["kv_cache"]
    assert code == code8 == 0 and six == pytest.approx(bf16 * 6 / 16)


def test_memory_does_not_fit_is_an_answer_with_status_0(capsys):
    """Defect 16: memory printed "does NOT fit" with status 0 while the README promised 2; the
    README now says what the CLI does: memory answers (status 0, "fits": false)."""
    code, out, _ = run(capsys, "memory", "--model", "deepseek-v3")
    assert code == 0 and "does NOT fit" in out
    code, out, _ = run(capsys, "memory", "--model", "deepseek-v3", "--json")
    assert code == 0 and json.loads(out)["fits"] is False
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert '"does NOT fit" is an answer, with status 0' in readme


def test_params_prints_units_the_model_and_what_total_means(capsys):
    """Defect 17: params printed bare numbers in fixed billions (all zeros for tiny) with no unit
    or model name, and "Total" included MTP without saying so."""
    from dsim.config import preset
    from dsim.cost import params

    code, out, _ = run(capsys, "params", "--model", "tiny")
    assert code == 0 and out.startswith("tiny: parameters in thousands (K = 10^3)")
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert float(total.split()[1]) * 1e3 == pytest.approx(params(preset("tiny")).total, rel=1e-3)
    code, out, _ = run(capsys, "params", "--model", "deepseek-v3")
    assert code == 0 and out.startswith("deepseek-v3: parameters in billions (B = 10^9)")
    without = next(line for line in out.splitlines() if line.startswith("total without MTP"))
    assert "total with MTP" in out and without.split()[3] == "671.026"


def test_serve_defaults_and_the_readme_examples_work(capsys):
    """Defect 18: `dsim serve` with no arguments failed (DeepSeek-V3 does not fit its default 8
    GPUs) and the README's `dsim memory --model deepseek-v3` example answered "does NOT fit"."""
    code, out, err = run(capsys, "serve")
    assert code == 0 and "deepseek-v3 decode on 16 x H800" in out, err
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    examples = [line.split("#")[0].split()[1:] for line in readme.splitlines()]
    examples = [e for e in examples if e and e[0] in ("params", "flops", "memory", "plan", "serve")]
    assert {e[0] for e in examples} == {"params", "flops", "memory", "plan", "serve"}
    for argv in examples:
        code, out, err = run(capsys, *argv, *(["--quiet"] if argv[0] == "plan" else []))
        assert code == 0 and "does NOT fit" not in out, (argv, err)


def test_outputs_say_what_they_count_and_define_gb(capsys):
    """Defect 19: the same layout was 23.7 GB in memory and 70.1 GB in plan without a word why,
    plan --model tiny printed 3.47e-18 s of communication, and GB was never defined."""
    code, out, _ = run(capsys, "memory", "--model", "mixtral-8x7b", "--gpus", "16")
    assert code == 0 and "GB = 10^9 bytes" in out and "`dsim plan` adds" in out
    code, out, _ = run(capsys, "plan", "--model", "tiny", "--top", "20", "--quiet")
    assert code == 0 and "GB = 10^9 bytes" in out and "e-1" not in out
    code, out, _ = run(capsys, "plan", "--model", "tiny", "--top", "20", "--json", "--quiet")
    exposed = [p["exposed_comm_s"] for p in json.loads(out)["plans"]]
    assert 0 in exposed and all(x == 0 or x > 1e-9 for x in exposed)  # no 3.47e-18 s
    code, out, _ = run(capsys, "serve")
    assert "GB = 10^9 bytes" in out


def test_tour_json_and_progress_legend(capsys, tmp_path):
    """Defect 20: tour --json was rejected though the README promised --json everywhere, the
    progress bar's `imb=` was unexplained, and README and --help disagreed on the time."""
    out_png = tmp_path / "loss.png"
    code, out, err = run(capsys, "tour", "--steps", "2", "--json", "--out", str(out_png))
    data = json.loads(out)
    assert code == 0 and len(data["bits_per_byte"]) == 2 and out_png.exists(), err
    assert {r["model"] for r in data["params"]} >= {"tiny", "deepseek-v3"}
    code, out, err = run(capsys, "tour", "--steps", "1", "--out", str(out_png))
    assert code == 0 and "imb = expert load imbalance" in out and "imb=" in err
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code, tour_help, _ = run(capsys, "tour", "--help")
    assert "half a minute" in readme and "half a minute" in " ".join(tour_help.split())


def test_internal_errors_are_one_line_with_status_1(capsys, monkeypatch):
    """The exit-status contract (README): a bug of dsim exits 1 with one line, no traceback."""

    def broken(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sys.modules["dsim.cost.params"], "params", broken)
    code, out, err = run(capsys, "params", "--model", "tiny")
    assert code == 1 and err.count("\n") == 1 and "internal error: RuntimeError: boom" in err
    assert "Traceback" not in err


def test_decode_attention_time_is_monotone_in_the_context():
    """Defect 10: decoding attention dropped up to 10% as the context grew, where the split-K
    heuristic jumped to more key splits; the kernel now takes the fastest split count."""
    from dsim.cost.timing import op_time

    for gpu, heads in (("H100-SXM", 32), ("H100-SXM", 8), ("A100", 16)):
        times = [
            op_time("attention", gpu, batch=1, seq_len=1, kv_seq_len=kv, n_heads=heads,
                    qk_head_dim=128, v_head_dim=128, causal=False)
            for kv in range(400, 2400, 9)
        ]  # fmt: skip
        assert all(b >= a for a, b in zip(times, times[1:]))


CONFIGS = Path(__file__).resolve().parents[1] / "dsim" / "data" / "hf_configs"


@pytest.mark.parametrize("name", ["gpt-oss-20b", "mistral-7b-instruct-v0.1"])
def test_plan_takes_sliding_window_models(name, capsys):
    """The planner costs the embedding and head on a one-block copy of the model; a model whose
    sliding-window layers lie past that block (gpt-oss, Mistral) once failed validation there."""
    cfg = str(CONFIGS / f"{name}.json")
    assert main(["plan", "--model", cfg, "--gpu", "H800", "--gpus", "64", "--tokens", "1T"]) == 0
    assert "MFU" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["llama-2-7b-chat", "olmoe-1b-7b-0125-instruct"])
def test_flops_decode_default_fits_a_4k_model(name, capsys):
    """Decode's default cache (4096 tokens, capped) leaves room for the new token in a model whose
    max_seq_len is 4096, instead of refusing the command's own default."""
    assert main(["flops", "--model", str(CONFIGS / f"{name}.json"), "--mode", "decode"]) == 0
    assert "after 4095 cached" in capsys.readouterr().out
