"""Property tests (hypothesis) of the `dsim` command line and the cost models (issue 19).

The CLI, on random presets, perturbed config.json files and odd arguments: every call answers or
refuses within a bound (a hang is a failure, not a slow test), never prints a traceback, keeps the
exit-status contract of the README (0 answered, 2 bad input in one line, never 1), and every number
it prints as JSON is finite and non-negative. The cost models, on presets with perturbed sizes:
FLOPs, memory and step time never fall when the batch, the sequence or the model grows, and ZeRO
stage 0 -> 3 never adds memory.

Deterministic (derandomize=True) and sized to run in well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsim.cli import main
from dsim.config import ModelArgs, preset
from dsim.cost import flops, memory, params, step_time
from dsim.hf.config import hf_config

CALL_BOUND_S = 30  # per CLI call: the hangs of issue 19 ran for minutes; a busy CI core is slow


def bounded(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class CallTimeout(BaseException):
    """Raised by the alarm; a BaseException, so that the CLI's `except Exception` cannot hide it."""


@contextlib.contextmanager
def time_bound(seconds: int):
    """Raise CallTimeout after `seconds`; an alarm already set (pytest-timeout's) is put back."""

    def alarm(signum, frame):
        raise CallTimeout(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    outer = signal.alarm(seconds)  # seconds left of an outer alarm, 0 if none
    start = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.alarm(max(1, math.ceil(outer - (time.monotonic() - start))))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process with captured output, within CALL_BOUND_S."""
    out, err = io.StringIO(), io.StringIO()
    with time_bound(CALL_BOUND_S), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def numbers(x, path=""):
    """Every number in a JSON document, with its path."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, x


def check_contract(argv: list[str]) -> tuple[int, str]:
    """Run the CLI and hold it to the README's exit-status contract."""
    code, out, err = run_cli(argv)
    event(f"exit status {code}")  # pytest --hypothesis-show-statistics: how many answered
    assert "Traceback" not in err + out, (argv, err)
    assert code in (0, 2), (argv, code, err)  # 1 is an internal error: a bug
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("dsim: error:"), (argv, err)
    elif "--json" in argv:
        for where, v in numbers(json.loads(out)):
            assert math.isfinite(v) and v >= 0, (argv, where, v)
    else:
        words = set(out.lower().replace("$", " ").split())
        assert not words & {"nan", "inf", "-inf", "$nan", "$inf"}, (argv, out)
    return code, out


# ---------------------------------------------------------------------------------------------
# The CLI on odd input
# ---------------------------------------------------------------------------------------------
ODD = ["0", "-1", "1", "2", "3", "8", "64", "4096", "2k", "1e30", "1e18", "1e-30", "nan", "inf",
       "-inf", "1.5", "abc", "", "99999999999999999999", "0x10", "1_000"]  # fmt: skip
ODD_REAL = ["0", "-5", "0.5", "0.999", "1", "2", "nan", "inf", "-0", "1e308", "x"]
MODELS = ["tiny", "deepseek-v2-lite", "mixtral-8x7b", "deepseek-v3", "no-such-model"]
GPUS = ["h100", "H800", "a100", "h200", "b300"]

# option -> values to draw from, per command (plan searches small clusters to stay quick)
OPTIONS = {
    "params": {},
    "flops": {
        "--mode": ["train", "prefill", "decode", "sideways"],
        "--seq-len": ODD,
        "--batch": ODD,
        "--context": ODD,
    },
    "memory": {
        "--gpu": GPUS,
        "--gpus": ODD,
        "--mode": ["train", "inference"],
        "--tp": ODD,
        "--pp": ODD,
        "--ep": ODD,
        "--dp": ODD,
        "--zero": ["0", "1", "2", "3", "4"],
        "--micro-batch": ODD,
        "--seq-len": ODD,
        "--recompute": ["none", "selective", "full"],
        "--dtype": ["bf16", "fp8", "int4", "fp4", "6"],
        "--kv-dtype": ["bf16", "fp8", "int8", "6", "0", "100", "nan", "foo"],
    },
    "plan": {
        "--gpu": GPUS,
        "--gpus": ["1", "8", "16", "12", "0", "1e18", "2048"],
        "--tokens": ODD,
        "--seq-len": ["256", "1024", "4096", "1e12", "0"],
        "--global-batch": ["1", "64", "256", "1e30", "0", "-1", "8589934592"],
        "--price": ODD_REAL,
        "--tp": ["1", "2", "3", "0"],
        "--pp": ["1", "2", "0"],
        "--ep": ["1", "2", "8", "0"],
        "--zero": ["0", "3"],
        "--micro-batch": ["1", "2", "0", "1073741824"],
        "--recompute": ["none", "full"],
        "--schedule": ["1f1b", "dualpipe"],
        "--dtype": ["bf16", "fp8"],
        "--top": ["1", "3", "0", "-1"],
    },
    "serve": {
        "--gpu": GPUS,
        "--gpus": ["1", "8", "16", "32", "12", "0", "1e18"],
        "--phase": ["prefill", "decode"],
        "--ep": ["1", "8", "16", "3", "0"],
        "--tp": ["1", "2", "8", "3", "0"],
        "--batch": ODD,
        "--context": ODD,
        "--prompt": ODD,
        "--cache-hit": ODD_REAL,
        "--redundant-experts": ["0", "32", "-1", "7"],
        "--dtype": ["bf16", "fp8"],
        "--kv-dtype": ["bf16", "fp8", "6", "foo"],
        "--latency-ms": ODD_REAL,
        "--price": ODD_REAL,
    },
}


@st.composite
def cli_argv(draw, command: str, model: st.SearchStrategy[str]) -> list[str]:
    argv = [command, "--model", draw(model)]
    options = OPTIONS[command]
    names = (
        draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=5)) if options else []
    )
    for name in names:
        argv += [name, draw(st.sampled_from(options[name]))]
    if draw(st.booleans()):
        argv.append("--json")
    return argv + (["--quiet"] if command == "plan" else [])


@pytest.mark.parametrize("command", ["params", "flops", "memory", "serve"])
@bounded(60)
@given(data=st.data())
def test_cli_answers_or_refuses_in_one_line(command, data):
    """Odd arguments on presets: finite non-negative numbers, or one line and status 2."""
    check_contract(data.draw(cli_argv(command, st.sampled_from(MODELS))))


@bounded(40)
@given(data=st.data())
def test_plan_answers_or_refuses_in_one_line(data):
    """plan on odd arguments (small models and clusters: each search is a full planner run)."""
    argv = data.draw(cli_argv("plan", st.sampled_from(["tiny", "deepseek-v2-lite", "x"])))
    check_contract(argv)


# ---------------------------------------------------------------------------------------------
# Models with perturbed sizes
# ---------------------------------------------------------------------------------------------
@st.composite
def models(draw, names=("tiny", "deepseek-v2-lite", "mixtral-8x7b", "deepseek-v3")) -> ModelArgs:
    """A preset with its sizes scaled: widths by whole factors (so that heads still divide them),
    layers and experts changed, as a capacity planner would sketch a variant."""
    a = preset(draw(st.sampled_from(names)))
    k = draw(st.sampled_from([1, 2, 3]))
    n_layers = draw(st.integers(a.n_dense_layers + 1, a.n_dense_layers + 6))
    changes = dict(
        dim=a.dim * k,
        inter_dim=a.inter_dim * draw(st.sampled_from([1, 2])),
        moe_inter_dim=a.moe_inter_dim * draw(st.sampled_from([1, 2])),
        n_layers=n_layers,
        vocab_size=a.vocab_size * draw(st.sampled_from([1, 2])),
    )
    if a.n_expert_groups <= 1:
        changes["n_routed_experts"] = a.n_routed_experts * draw(st.sampled_from([1, 2]))
    return a.replace(**changes)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("configs")


# Values a hand-edited config.json may hold in place of a size
BAD_VALUES = [None, True, "64", -1, 0, 1.5, 10**30, [], {}]


@bounded(60)
@given(args=models(names=("deepseek-v2-lite", "deepseek-v3")), data=st.data())
def test_cli_on_perturbed_config_files(config_dir, args, data):
    """Random DeepSeek-style config.json files, some with a corrupted value, through every cost
    command: an answer or one line, status 2."""
    cfg = {"model_type": "deepseek_v3", **hf_config(args)}
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(k for k, v in cfg.items() if type(v) is int)))
        cfg[key] = data.draw(st.sampled_from(BAD_VALUES))
    path = config_dir / "config.json"
    path.write_text(json.dumps(cfg))
    command = data.draw(st.sampled_from(["params", "flops", "memory", "serve"]))
    argv = [command, "--model", str(path)] + (["--json"] if data.draw(st.booleans()) else [])
    if command == "memory":
        argv += ["--gpus", data.draw(st.sampled_from(["8", "16", "64"])), "--ep", "8"]
    check_contract(argv)


# ---------------------------------------------------------------------------------------------
# Monotonicity and ZeRO
# ---------------------------------------------------------------------------------------------
def mem_total(args: ModelArgs, **kw) -> float:
    return memory(args, **kw).total


@bounded(40)
@given(
    args=models(),
    mode=st.sampled_from(["train", "prefill", "decode"]),
    batch=st.integers(1, 64),
    seq=st.integers(1, 4096),
    more=st.integers(1, 4096),
)
def test_costs_never_fall_as_batch_or_sequence_grow(args, mode, batch, seq, more):
    """FLOPs, memory and step time are monotone in the batch and in the sequence length (from two
    tokens on in training and prefill: one token runs the non-causal attention kernel, whose
    measured efficiency differs)."""
    seq = min(max(seq, 1 if mode == "decode" else 2), args.max_seq_len - 1)
    longer = min(seq + more, args.max_seq_len - 1)
    for b0, s0, b1, s1 in ((batch, seq, batch + more, seq), (batch, seq, batch, longer)):
        f0, f1 = flops(args, b0, s0, mode), flops(args, b1, s1, mode)
        assert f1.total >= f0.total and f1.total_causal >= f0.total_causal
        t0 = step_time(args, b0, s0, mode, "H100-SXM").total_s
        t1 = step_time(args, b1, s1, mode, "H100-SXM").total_s
        assert t1 >= t0 * (1 - 1e-12), (b0, s0, b1, s1, t0, t1)
        m_mode = "train" if mode == "train" else "inference"
        m0 = mem_total(args, mode=m_mode, batch=b0, seq_len=s0)
        assert mem_total(args, mode=m_mode, batch=b1, seq_len=s1) >= m0


@bounded(40)
@given(
    args=models(),
    field=st.sampled_from(["dim", "inter_dim", "moe_inter_dim", "n_layers", "vocab_size"]),
    mode=st.sampled_from(["train", "prefill", "decode"]),
)
def test_costs_never_fall_as_the_model_grows(args, field, mode):
    """Parameters, FLOPs, memory and step time do not fall when one size of the model grows."""
    step = args.n_heads if field == "dim" else 1  # dims stay divisible by the heads
    bigger = args.replace(
        **{field: getattr(args, field) + step * max(1, getattr(args, field) // 4)}
    )
    assert params(bigger).total >= params(args).total
    seq = min(512, args.max_seq_len - 1)
    assert flops(bigger, 2, seq, mode).total >= flops(args, 2, seq, mode).total
    for m_mode in ("train", "inference"):
        assert mem_total(bigger, mode=m_mode, seq_len=seq) >= mem_total(
            args, mode=m_mode, seq_len=seq
        )
    t0 = step_time(args, 2, seq, mode, "H100-SXM").total_s
    assert step_time(bigger, 2, seq, mode, "H100-SXM").total_s >= t0 * (1 - 1e-12)


@bounded(50)
@given(
    args=models(),
    dp_log=st.integers(0, 6),
    ep_log=st.integers(0, 6),
    recompute=st.sampled_from(["none", "selective", "full"]),
)
def test_zero_stages_never_add_memory(args, dp_log, ep_log, recompute):
    """ZeRO 0 -> 1 -> 2 -> 3 never increases the memory of the busiest GPU."""
    dp = 2**dp_log
    ep = 2 ** min(ep_log, dp_log)
    if args.n_routed_experts % ep:
        ep = 1
    totals = [
        mem_total(
            args, dp=dp, ep=ep, zero=z, seq_len=min(1024, args.max_seq_len), recompute=recompute
        )
        for z in (0, 1, 2, 3)
    ]
    assert all(b <= a for a, b in zip(totals, totals[1:])), totals


@bounded(60)
@given(
    gpu=st.sampled_from(["H100-SXM", "H200", "A100"]),
    batch=st.integers(1, 64),
    heads=st.sampled_from([1, 8, 16, 32, 128]),
    dims=st.sampled_from([(64, 64), (128, 128), (192, 128), (576, 512)]),
    seq=st.integers(1, 8192),
    more=st.integers(1, 600),
    causal=st.booleans(),
    backward=st.booleans(),
)
def test_attention_time_never_falls(gpu, batch, heads, dims, seq, more, causal, backward):
    """The attention op's time grows with the queries, the keys, the batch and the heads (the
    block schedule and the decoding key splits are monotone: defect 10)."""
    from dsim.cost.timing import op_time

    def t(b=batch, h=heads, sq=seq, skv=seq):
        return op_time(
            "attention", gpu, batch=b, seq_len=sq, kv_seq_len=skv, n_heads=h,
            qk_head_dim=dims[0], v_head_dim=dims[1], causal=causal, backward=backward,
        )  # fmt: skip

    base = t()
    assert t(sq=seq + more, skv=seq + more) >= base
    assert t(sq=1, skv=seq + more) >= t(sq=1, skv=seq)  # decoding: one query, more keys
    assert t(b=batch + more) >= base and t(h=heads * 2) >= base


@bounded(60)
@given(
    m=st.integers(1, 20000),
    n=st.integers(1, 20000),
    k=st.integers(1, 20000),
    tokens=st.integers(1, 50000),
    more=st.integers(1, 2000),
    moe=st.sampled_from([(8, 2, 4096, 14336), (64, 6, 2048, 1408), (256, 8, 7168, 2048)]),
    backward=st.booleans(),
)
def test_gemm_and_moe_times_never_fall(m, n, k, tokens, more, moe, backward):
    """A GEMM's time grows with each of its sizes, the MoE layer's with its tokens."""
    from dsim.cost.timing import op_time

    g = op_time("gemm", m=m, n=n, k=k, backward=backward)
    for bigger in (
        dict(m=m + more, n=n, k=k),
        dict(m=m, n=n + more, k=k),
        dict(m=m, n=n, k=k + more),
    ):
        assert op_time("gemm", backward=backward, **bigger) >= g
    E, K, D, inter = moe
    shape = dict(dim=D, moe_inter_dim=inter, n_routed_experts=E, n_activated_experts=K)
    t0 = op_time("moe_ffn", tokens=tokens, backward=backward, **shape)
    assert op_time("moe_ffn", tokens=tokens + more, backward=backward, **shape) >= t0
