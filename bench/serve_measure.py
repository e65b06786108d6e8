#!/usr/bin/env python
"""Serve a Poisson trace of requests on the real model (dsim.serving.real.serve_trace) and time
isolated prefill and decode steps, for the serving simulator (dsim.serving) to be checked against.

What it does:
  1. builds the model: on a CPU the `tiny` preset in fp32; on CUDA, in bf16, a few layers of a
     real model at its real widths. The CUDA default is DeepSeek-V3's widths (dim 7168, 128
     heads, MLA with q_lora_rank 1536 and kv_lora_rank 512, moe_inter_dim 2048) with 4 layers (the
     first dense), 32 routed experts (top-8, 8 groups keep 4) and no MTP: 7.36 B parameters,
     14.7 GB in bf16, the model bench/step_measure.py times. MLA runs absorbed (attn_impl
     "absorb"), as DeepSeek serves it. max_seq_len is set to what the trace and the fit set
     need (no YaRN: that changes the rotation angles only, not the kernels);
  2. makes a Poisson trace (numpy, seeded): --requests arrivals at --rate per second, prompt and
     output lengths uniform in [--prompt-min, --prompt-max] and [--output-min, --output-max];
  3. warms up (a short trace of max_batch + 2 requests, all at time 0), then serves the trace in
     real time with serve_trace's policy (FIFO; each iteration one prefill step of a whole prompt,
     or of --chunk-tokens of it, then one batched decode step of the running sequences; at most
     --max-batch running);
  4. times isolated steps, the fit set: decode steps of B sequences at a common context (cached
     tokens) for each B in --fit-batches and context in --fit-contexts, and prefills of one prompt
     of each length in --fit-prompts, each --fit-repeats times after one untimed step (wall time
     between two device synchronizations, the loop's own prefill_step and decode_step).

It writes one JSON (--out): the device and torch version, the model's arguments, the options, the
trace, the RealRun (per request: arrival, admission, first token, finish; per step: kind,
sequences, tokens, start and duration; RealRun.to_dict(columns=True), times rounded to 0.1 us)
with its summary (p50/p90 TTFT, TPOT, end-to-end), and the fit set. On a CPU it sets one thread
(torch.set_num_threads(1); run it with OMP_NUM_THREADS=1).

Usage:
  # GPU session (one H200; ~3 min):
  python3 bench/serve_measure.py --device cuda --out $OUT/serve_h200.json
  # the CPU run committed as dsim/data/serve_real_cpu.json (~5 s):
  OMP_NUM_THREADS=1 python bench/serve_measure.py --device cpu --out dsim/data/serve_real_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from dsim.config import ModelArgs, preset, preset_names  # noqa: E402
from dsim.model import Transformer  # noqa: E402
from dsim.serving.real import decode_step, prefill_step, serve_trace  # noqa: E402
from dsim.serving.workload import Request  # noqa: E402

SCHEMA = 1

# Defaults per device: the model, the trace and the fit set. A CPU run serves the tiny model
# in seconds; the CUDA one keeps an H200 busy with up to 32 running sequences.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        preset="tiny",
        layers=None,
        experts=None,
        max_batch=4,
        requests=120,
        rate=50.0,
        prompt_min=16,
        prompt_max=160,
        output_min=4,
        output_max=48,
        fit_batches="1,2,4",
        fit_contexts="16,64,192",
        fit_prompts="16,64,128,192",
        fit_repeats=3,
    ),
    "cuda": dict(
        preset="deepseek-v3",
        layers=4,
        experts=32,
        max_batch=32,
        requests=200,
        rate=8.0,
        prompt_min=128,
        prompt_max=2048,
        output_min=32,
        output_max=256,
        fit_batches="1,4,8,16,32",
        fit_contexts="256,1024,2048,4096",
        fit_prompts="128,256,512,1024,2048,4096",
        fit_repeats=5,
    ),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"serve_measure: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="serve_measure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="the JSON to write")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--preset", choices=preset_names(), help="cpu: tiny; cuda: deepseek-v3")
    p.add_argument("--layers", type=int, help="n_layers (cuda default 4; cpu: the preset's)")
    p.add_argument("--experts", type=int, help="n_routed_experts (cuda default 32)")
    p.add_argument("--attn-impl", choices=["absorb", "naive"], default="absorb")
    p.add_argument("--max-batch", type=int, help="running sequences at most (cpu 4, cuda 32)")
    p.add_argument("--chunk-tokens", type=int, help="prompt tokens per prefill step (default all)")
    p.add_argument("--requests", type=int, help="requests in the trace (cpu 120, cuda 200)")
    p.add_argument("--rate", type=float, help="arrivals per second (cpu 50, cuda 8)")
    p.add_argument("--prompt-min", type=int, help="shortest prompt (cpu 16, cuda 128)")
    p.add_argument("--prompt-max", type=int, help="longest prompt (cpu 160, cuda 2048)")
    p.add_argument("--output-min", type=int, help="fewest output tokens (cpu 4, cuda 32)")
    p.add_argument("--output-max", type=int, help="most output tokens (cpu 48, cuda 256)")
    p.add_argument("--fit-batches", help="decode batch sizes, comma-separated")
    p.add_argument("--fit-contexts", help="decode contexts (cached tokens), comma-separated")
    p.add_argument("--fit-prompts", help="prefill prompt lengths, comma-separated")
    p.add_argument("--fit-repeats", type=int, help="timed repetitions per fit step")
    p.add_argument("--seed", type=int, default=0, help="trace, prompts and weights")
    return p


def options(argv: list[str] | None) -> argparse.Namespace:
    """Parsed options with the device's defaults filled in; p.error (exit 2) on a bad one."""
    p = parser()
    opts = p.parse_args(argv)
    for key, value in DEFAULTS[opts.device].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    for key in ("fit_batches", "fit_contexts", "fit_prompts"):
        try:
            values = [int(v) for v in getattr(opts, key).split(",")]
        except ValueError:
            p.error(f"--{key.replace('_', '-')} must be comma-separated integers")
        if not values or min(values) < 1:
            p.error(f"--{key.replace('_', '-')} values must be >= 1")
        setattr(opts, key, values)
    positive = ["max_batch", "requests", "prompt_min", "output_min", "fit_repeats"]
    positive += ["layers"] * (opts.layers is not None) + ["experts"] * (opts.experts is not None)
    positive += ["chunk_tokens"] * (opts.chunk_tokens is not None)
    for key in positive:
        if getattr(opts, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(opts, key)}")
    if not (opts.rate > 0 and np.isfinite(opts.rate)):
        p.error(f"--rate must be a finite number > 0, got {opts.rate}")
    if opts.prompt_max < opts.prompt_min or opts.output_max < opts.output_min:
        p.error("--prompt-max and --output-max must be >= --prompt-min and --output-min")
    if opts.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available: run with --device cpu")
    return opts


def model_args(opts: argparse.Namespace) -> ModelArgs:
    """The preset cut to --layers (the first dense where it has dense layers) and --experts
    (top-k and the group limit kept within them), without MTP, with cache rows and positions for
    the trace and the fit set."""
    args = preset(opts.preset, n_mtp_layers=0, attn_impl=opts.attn_impl)
    changes: dict[str, Any] = {}
    if opts.layers is not None:
        changes.update(n_layers=opts.layers, n_dense_layers=min(args.n_dense_layers, 1))
    if opts.experts is not None and args.n_routed_experts:
        groups = args.n_expert_groups if opts.experts % args.n_expert_groups == 0 else 1
        changes.update(
            n_routed_experts=opts.experts,
            n_activated_experts=min(args.n_activated_experts, opts.experts),
            n_expert_groups=groups,
            n_limited_groups=min(args.n_limited_groups, groups),
        )
    longest = max(
        opts.prompt_max + opts.output_max - 1, max(opts.fit_contexts) + 1, max(opts.fit_prompts)
    )
    changes.update(
        max_seq_len=longest,
        original_seq_len=longest,
        max_batch_size=max(opts.max_batch, max(opts.fit_batches)),
    )
    return args.replace(**changes)


def poisson_trace(opts: argparse.Namespace) -> list[Request]:
    """--requests arrivals of a Poisson process at --rate per second (the first at its first
    inter-arrival time), lengths uniform in their ranges; numpy's seeded generator."""
    rng = np.random.default_rng(opts.seed)
    arrivals = np.cumsum(rng.exponential(1.0 / opts.rate, opts.requests))
    prompts = rng.integers(opts.prompt_min, opts.prompt_max + 1, opts.requests)
    outputs = rng.integers(opts.output_min, opts.output_max + 1, opts.requests)
    return [
        Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]))
        for i in range(opts.requests)
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, repeats: int, device: torch.device) -> dict[str, Any]:
    """One untimed call, then `repeats` timed ones (wall time between synchronizations)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return dict(durations_s=times, median_s=statistics.median(times))


def fit_set(model: Transformer, opts: argparse.Namespace, device: torch.device) -> dict[str, list]:
    """Isolated decode steps (batch x context) and prefills (prompt length), timed."""
    gen = torch.Generator().manual_seed(opts.seed + 1)
    vocab = model.args.vocab_size
    decode, prefill = [], []
    cases = [(b, c) for b in opts.fit_batches for c in opts.fit_contexts]
    bar = tqdm(total=len(cases) + len(opts.fit_prompts), desc="fit set", leave=False)
    with torch.inference_mode():
        for batch, context in cases:
            tokens = torch.randint(0, vocab, (batch, 1), generator=gen).to(device)
            slots, positions = list(range(batch)), [context] * batch
            t = _timed(
                lambda: decode_step(model, tokens, slots, positions), opts.fit_repeats, device
            )
            decode.append(dict(batch=batch, context=context, **t))
            bar.update()
        for n in opts.fit_prompts:
            chunk = torch.randint(0, vocab, (1, n), generator=gen).to(device)
            t = _timed(lambda: prefill_step(model, chunk, 0, 0, True), opts.fit_repeats, device)
            prefill.append(dict(prompt_tokens=n, **t))
            bar.update()
    bar.close()
    return dict(decode=decode, prefill=prefill)


def _rounded(obj: Any) -> Any:
    """obj with its floats (seconds) rounded to 0.1 microsecond, to keep the JSON small."""
    if isinstance(obj, float):
        return round(obj, 7)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        device_type=device.type,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            memory_bytes=p.total_memory,
            cuda=torch.version.cuda,
        )
    else:
        env.update(device_name=platform.processor() or "cpu", threads=torch.get_num_threads())
    return env


def build(args: ModelArgs, device: torch.device, seed: int) -> Transformer:
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = Transformer(args)
    return model.to(dtype).eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = options(argv)
    device = torch.device(opts.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    args = model_args(opts)
    trace = poisson_trace(opts)
    env = environment(device)
    print(f"serve_measure: {args.name} with {args.n_layers} layers on {env['device_name']}")
    t0 = time.perf_counter()
    model = build(args, device, opts.seed)
    n_warm = opts.max_batch + 2
    warm = [Request(i, 0.0, opts.prompt_min, opts.output_min + 1) for i in range(n_warm)]
    serve_trace(model, warm, max_batch=opts.max_batch, chunk_tokens=opts.chunk_tokens,
                device=device, seed=opts.seed)  # fmt: skip
    print(f"serving {len(trace)} requests over {trace[-1].arrival_s:.1f} s ...", flush=True)
    # Python's cyclic garbage collector can stop the loop for tens of milliseconds at a random
    # step (a latency server tunes it the same way): collect once, then keep it off while serving
    gc.collect()
    gc.disable()
    try:
        run = serve_trace(
            model,
            trace,
            max_batch=opts.max_batch,
            chunk_tokens=opts.chunk_tokens,
            device=device,
            seed=opts.seed,
        )
    finally:
        gc.enable()
    summary = run.summary()
    fit = fit_set(model, opts, device)
    data = dict(
        schema=SCHEMA,
        note="dsim.serving.real.serve_trace on a Poisson trace, and isolated steps (fit set)",
        env=env,
        model_args=args.to_dict(),
        options={k: v for k, v in vars(opts).items() if k != "out"},
        trace=[asdict(r) for r in trace],
        run=_rounded(run.to_dict(columns=True)),
        summary=summary,
        fit=_rounded(fit),
        elapsed_s=time.perf_counter() - t0,
    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(
        f"wrote {opts.out}: {summary['requests']} requests, {summary['iterations']} iterations; "
        f"TTFT p50 {summary['ttft_p50_s'] * 1e3:.1f} ms, p90 {summary['ttft_p90_s'] * 1e3:.1f} ms; "
        f"TPOT p50 {summary['tpot_p50_s'] * 1e3:.2f} ms, p90 {summary['tpot_p90_s'] * 1e3:.2f} ms"
    )
    return data


if __name__ == "__main__":
    main()
