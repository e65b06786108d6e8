#!/usr/bin/env python
"""Time whole dsim.model steps on a GPU and compare them with the time model (dsim.cost.timing).

A case is a model (a few layers of a real model at its real widths), a mode and a shape:
  train    forward + backward of the cross-entropy loss on batch x seq_len tokens (no optimizer)
  prefill  forward of batch x seq_len prompt tokens with use_cache (logits at every position)
  decode   one new token per sequence after `context` cached tokens, with the KV cache; MLA in
           absorbed form (attn_impl="absorb"), as DeepSeek serves it
The models: DeepSeek-V2-Lite (MLA), a DeepSeek-V3-width model with 32 routed experts (top-8),
Mixtral-8x7B (GQA) and DeepSeekMoE-16B (MHA), each with 2-4 layers (the first dense where the real
model has dense layers first) and no MTP. Each is built in bf16 on the GPU.

What is measured, per case (after two warm-up steps):
  kernel_s  the sum of the GPU kernel (and memcpy/memset) durations of one step, from
            torch.profiler with ProfilerActivity.CUDA; the median over a few profiled steps.
            This is what dsim.cost.timing.step_time predicts (kernel time, the CPU queued ahead).
  wall_s    the wall time of one step between two torch.cuda.synchronize(); the median over
            a few steps. wall_s / kernel_s is the host overhead (Python and kernel launches the
            GPU waits for, host syncs, gaps).
  predicted_s, predicted_breakdown   step_time(args, batch, seq_len, mode, gpu="H200",
            context=...) and its seconds per component; rel_error_kernel = predicted/kernel - 1,
            rel_error_wall = predicted/wall - 1.
Decode's cache: a first decode step at position `context` allocates the model's cache buffers;
they are then filled with random numbers, standing for `context` prompt tokens (a real prefill of
B x context tokens would need far more memory than the step itself), and each timed step decodes
at position `context` again. Running out of time (--max-seconds) skips the remaining cases with a
note; a case that fails (e.g. out of memory) is recorded under "failed" and the run goes on.

On a CPU (--device cpu --quick) the same code runs on tiny scaled_down models with the CPU
profiler (the sum of the ops' self CPU times) and time.perf_counter; the prediction is still the
H200's, so its error means nothing there: such records say comparable=False.

Usage:
  python3 bench/step_measure.py --out dsim/data/step_h200.json           # ~3-5 min on an H200
  python bench/step_measure.py --device cpu --quick --out /tmp/step_cpu.json   # < 1 min
  python3 bench/step_measure.py --only "mixtral-8x7b, 2 layers (GQA) decode" --out /tmp/x.json
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dsim.config import ModelArgs, preset, scaled_down  # noqa: E402
from dsim.cost.timing import step_time  # noqa: E402
from dsim.model import GQA, MLA, Transformer  # noqa: E402

SCHEMA = 1
PREDICTED_GPU = "H200"  # the time model's GPU (its committed calibration)
MODES = ("train", "prefill", "decode")


@dataclass(frozen=True)
class Case:
    """One measurement: `batch` sequences of `seq_len` new tokens after `context` cached ones
    (decode: seq_len 1)."""

    model: str
    mode: str
    batch: int
    seq_len: int
    context: int = 0

    @property
    def label(self) -> str:
        ctx = f" after {self.context}" if self.context else ""
        return f"{self.model} {self.mode} B={self.batch} S={self.seq_len}{ctx}"


# ---------------------------------------------------------------------------------------------
# Models and cases
# ---------------------------------------------------------------------------------------------
def gpu_models() -> dict[str, ModelArgs]:
    """A few layers of each model at its real widths (max_seq_len and max_batch_size are set per
    model from its cases by `sized`)."""
    return {
        "deepseek-v2-lite, 3 layers": preset(
            "deepseek-v2-lite", n_layers=3, n_dense_layers=1, n_mtp_layers=0
        ),
        "deepseek-v3 width, 32 experts, 4 layers": preset(
            "deepseek-v3",
            n_layers=4,
            n_dense_layers=1,
            n_routed_experts=32,
            n_activated_experts=8,
            n_expert_groups=8,  # 4 experts a group, 4 groups kept: 16 candidates for the top-8
            n_limited_groups=4,
            n_mtp_layers=0,
        ),
        "mixtral-8x7b, 2 layers (GQA)": preset("mixtral-8x7b", n_layers=2, n_mtp_layers=0),
        "deepseekmoe-16b, 3 layers (MHA)": preset(
            "deepseekmoe-16b", n_layers=3, n_dense_layers=1, n_mtp_layers=0
        ),
    }


def cpu_models() -> dict[str, ModelArgs]:
    """The same models scaled down (dsim.config.scaled_down), for a CPU run in seconds."""
    return {
        f"{name} (scaled down)": scaled_down(preset(name), n_mtp_layers=0)
        for name in ("deepseek-v2-lite", "deepseek-v3", "mixtral-8x7b", "deepseekmoe-16b")
    }


GPU_SHAPES = {  # mode: (batch, seq_len, context)
    "train": [(8, 512, 0), (1, 2048, 0), (2, 4096, 0)],
    "prefill": [(32, 128, 0), (1, 4096, 0), (8, 1024, 0)],
    "decode": [(1, 1, 4096), (32, 1, 4096), (128, 1, 1024)],
}
CPU_SHAPES = {
    "train": [(2, 16, 0)],
    "prefill": [(2, 16, 0)],
    "decode": [(2, 1, 16)],
}


def make_cases(models: dict[str, ModelArgs], shapes: dict[str, list]) -> list[Case]:
    return [
        Case(name, mode, b, s, c) for name in models for mode in MODES for b, s, c in shapes[mode]
    ]


def sized(args: ModelArgs, cases: list[Case]) -> ModelArgs:
    """`args` with room for every case's positions (the cache holds max_seq_len positions, more
    than a step reads, as in serving); no YaRN rescaling, which changes the rotation angles only,
    not the kernels."""
    longest = max(c.context + c.seq_len for c in cases)
    return args.replace(max_seq_len=longest, original_seq_len=longest)


def case_args(args: ModelArgs, case: Case) -> ModelArgs:
    """The arguments a case runs with: cache rows for its batch (a naive-MLA cache for the largest
    batch would not fit), and MLA absorbed for decode, as DeepSeek serves it."""
    impl = "absorb" if case.mode == "decode" and args.attn_type == "mla" else args.attn_impl
    return args.replace(max_batch_size=case.batch, attn_impl=impl)


# ---------------------------------------------------------------------------------------------
# One step, timed
# ---------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_fn(model: Transformer, case: Case, device: str) -> Callable[[], None]:
    """A closure running one step of `case`; set-up (cache, gradients) happens outside it."""
    args = model.args
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, args.vocab_size, (case.batch, case.seq_len + 1), generator=gen)
    tokens = tokens.to(device)
    if case.mode == "train":
        inputs, targets = tokens[:, :-1], tokens[:, 1:]

        def train() -> None:
            model.zero_grad(set_to_none=True)  # fresh gradients: no accumulation kernels
            logits = model(inputs)  # [B, S, V]
            F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()

        return train
    inputs = tokens[:, : case.seq_len]
    start = case.context
    if case.mode == "decode":  # allocate the cache buffers, then fill the context with numbers
        model.reset_cache()
        with torch.no_grad():
            model(inputs, start_pos=start, use_cache=True)
            for m in model.modules():
                if isinstance(m, (MLA, GQA)):
                    for buf in m.cache.values():
                        buf.normal_()

    @torch.no_grad()
    def forward() -> None:
        model(inputs, start_pos=start, use_cache=True)

    return forward


def kernel_seconds(prof: profile, device: str) -> tuple[float, int]:
    """(seconds, count) of the profiled step's device work: CUDA kernels, memcpys and memsets on a
    GPU; on a CPU, the ops' self times (no double counting of nested ops)."""
    if device == "cuda":
        kind = torch.autograd.DeviceType.CUDA
        durs = [e.time_range.elapsed_us() for e in prof.events() if e.device_type == kind]
    else:
        durs = [e.self_cpu_time_total for e in prof.events()]
    if not durs:
        raise RuntimeError(f"the profiler recorded no {device} device events for the step")
    return sum(durs) * 1e-6, len(durs)


def time_step(
    step: Callable[[], None], device: str, warmup: int, repeats: int, profiled: int
) -> dict[str, Any]:
    """Median wall time of `repeats` steps and median kernel time of `profiled` profiled steps."""
    for _ in range(warmup):
        step()
    sync(device)
    walls = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        walls.append(time.perf_counter() - t0)
    # CPU activity too on a GPU (as bench/timing_measure.py's kernel profiles): kernels are listed
    # as device events under their launching ops; only the device events are summed.
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    kernels, counts = [], []
    for _ in range(profiled):
        sync(device)
        with profile(activities=acts) as prof:
            step()
            sync(device)
        s, n = kernel_seconds(prof, device)
        kernels.append(s)
        counts.append(n)
    return dict(
        wall_s=statistics.median(walls),
        wall_s_all=walls,
        kernel_s=statistics.median(kernels),
        kernel_s_all=kernels,
        kernel_count=int(statistics.median(counts)),
    )


def prediction(args: ModelArgs, case: Case) -> dict[str, Any]:
    """The time model's step time for the case on the H200."""
    seq = case.context if case.mode == "decode" else case.seq_len
    st = step_time(args, case.batch, seq, case.mode, gpu=PREDICTED_GPU, context=case.context)
    return dict(predicted_s=st.total_s, predicted_breakdown=st.breakdown())


def measure_case(
    model: Transformer,
    case: Case,
    device: str,
    warmup: int = 2,
    repeats: int = 5,
    profiled: int = 3,
) -> dict[str, Any]:
    """One record: the case, the measured times and the prediction."""
    args = model.args
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = step_fn(model, case, device)
    rec: dict[str, Any] = dict(
        name=case.model,
        mode=case.mode,
        batch=case.batch,
        seq_len=case.seq_len,
        context=case.context,
        device=device,
        predicted_gpu=PREDICTED_GPU,
        comparable=device == "cuda",
        args=args.to_dict(),
    )
    rec.update(time_step(step, device, warmup, repeats, profiled))
    if device == "cuda":
        rec["peak_memory_bytes"] = torch.cuda.max_memory_allocated()  # weights included
    rec.update(prediction(args, case))
    rec["host_overhead"] = rec["wall_s"] / rec["kernel_s"]
    rec["rel_error_kernel"] = rec["predicted_s"] / rec["kernel_s"] - 1
    rec["rel_error_wall"] = rec["predicted_s"] / rec["wall_s"] - 1
    if device != "cuda":
        rec["note"] = f"CPU measurement against the {PREDICTED_GPU} prediction: errors meaningless"
    model.reset_cache()
    model.zero_grad(set_to_none=True)
    return rec


def build(args: ModelArgs, device: str) -> Transformer:
    torch.manual_seed(0)
    with torch.device(device):  # initialised in place: no copy of the fp32 weights from the host
        model = Transformer(args)
    return model.to(device, torch.bfloat16)


def run(
    models: dict[str, ModelArgs],
    cases: list[Case],
    device: str,
    max_seconds: float = float("inf"),
    repeats: int = 5,
    profiled: int = 3,
) -> dict[str, Any]:
    """Measure every case, model by model; returns records, skipped and failed cases."""
    t_start = time.perf_counter()
    records: list[dict] = []
    skipped: list[str] = []
    failed: list[str] = []
    for name, base in models.items():
        mine = [c for c in cases if c.model == name]
        if not mine:
            continue
        base = sized(base, mine)
        model = None
        for case in mine:
            if time.perf_counter() - t_start > max_seconds:
                skipped.append(f"{case.label}: over the --max-seconds={max_seconds:g} budget")
                print("SKIPPED", skipped[-1], flush=True)
                continue
            try:
                if model is None:
                    model = build(base, device)
                # Same weights, the case's settings: the attention modules read attn_impl and
                # the cache size from their own args.
                model.args = case_args(base, case)
                for m in model.modules():
                    if isinstance(m, (MLA, GQA)):
                        m.args = model.args
                rec = measure_case(model, case, device, repeats=repeats, profiled=profiled)
            except Exception as e:  # noqa: BLE001 - report and go on with the other cases
                failed.append(f"{case.label}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                print("FAILED", failed[-1], flush=True)
                if model is not None:
                    model.reset_cache()
                    model.zero_grad(set_to_none=True)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            else:
                records.append(rec)
                show(rec, time.perf_counter() - t_start)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return dict(records=records, skipped=skipped, failed=failed)


def show(r: dict, elapsed: float) -> None:
    print(
        f"[{elapsed:6.1f}s] {r['name'][:40]:40s} {r['mode']:7s} B={r['batch']:<4d} "
        f"S={r['seq_len']:<5d} ctx={r['context']:<5d} kernel {r['kernel_s'] * 1e3:9.3f} ms  "
        f"wall {r['wall_s'] * 1e3:9.3f} ms  predicted {r['predicted_s'] * 1e3:9.3f} ms  "
        f"err {r['rel_error_kernel']:+7.1%}",
        flush=True,
    )


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        device_type=device,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(
            device_name=torch.cuda.get_device_name(),
            sm_count=p.multi_processor_count,
            memory_bytes=p.total_memory,
            cuda=torch.version.cuda,
        )
    else:
        env.update(device_name=platform.processor() or "cpu", threads=torch.get_num_threads())
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("dsim/data/step_h200.json"))
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny models and shapes (CPU)")
    p.add_argument("--max-seconds", type=float, default=330.0, help="skip cases after this")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per case (wall time)")
    p.add_argument("--profiled", type=int, default=3, help="profiled steps per case")
    p.add_argument("--only", default="", help="only the cases whose label contains this text")
    opts = p.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available: run with --device cpu --quick")
    for field in ("repeats", "profiled"):
        if getattr(opts, field) < 1:
            p.error(f"--{field} must be >= 1, got {getattr(opts, field)}")
    if opts.device == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread is enough and leaves the machine free
    models = cpu_models() if opts.quick else gpu_models()
    cases = make_cases(models, CPU_SHAPES if opts.quick else GPU_SHAPES)
    cases = [c for c in cases if opts.only in c.label]
    if not cases:
        p.error(f"--only {opts.only!r} matches no case")
    env = environment(opts.device)
    print(
        f"step_measure: {len(cases)} cases on {env['device_name']} (torch {env['torch']})",
        flush=True,
    )
    t0 = time.perf_counter()
    result = run(models, cases, opts.device, opts.max_seconds, opts.repeats, opts.profiled)
    data = dict(schema=SCHEMA, env=env, elapsed_s=time.perf_counter() - t0, **result)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(data, indent=1) + "\n")
    print(
        f"wrote {len(result['records'])} records to {opts.out} in {data['elapsed_s']:.0f} s; "
        f"{len(result['skipped'])} skipped, {len(result['failed'])} failed",
        flush=True,
    )
    return data


if __name__ == "__main__":
    main()
