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
