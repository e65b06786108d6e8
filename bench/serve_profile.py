#!/usr/bin/env python
"""Where a serving step's wall time goes: the GPU's kernels, or the gaps between them.

bench/serve_measure.py times isolated decode and prefill steps of dsim.model by wall clock. This
script takes the same model (the same options and defaults) and profiles a few of those steps with
torch.profiler: for each, the wall time between two synchronizations, the sum of the GPU kernels'
durations, and their count. Wall time well above the kernels' sum, at a batch too small to keep the
GPU busy, is time the GPU waited for the CPU to dispatch the next kernel (eager PyTorch), which
dsim's time model leaves out (it prices GPU time as under CUDA graphs).

Usage (a GPU session; under a minute):
  python3 bench/serve_profile.py --device cuda --out $OUT/serve_profile_h100.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from serve_measure import build, environment, model_args, options  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dsim.serving.real import decode_step, prefill_step  # noqa: E402

DECODE_BATCHES = (1, 8, 32)
CONTEXT = 1024
PROMPT = 1024
REPEATS = 5


def profiled(fn, device: torch.device) -> dict:
    """Median wall time of REPEATS calls (after one untimed call), then one profiled call: the sum
    of its GPU kernels' durations and their count."""
    fn()
    walls = []
    for _ in range(REPEATS):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels) * 1e-6
    return dict(wall_s=statistics.median(walls), kernels_s=busy, kernels=len(kernels))


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[argv.index("--out") + 1])
    opts = options(argv)
    device = torch.device(opts.device)
    if device.type != "cuda":
        raise SystemExit("serve_profile: --device cuda only (it profiles GPU kernels)")
    args = model_args(opts)
    model = build(args, device, opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    rows = []
    with torch.inference_mode():
        for batch in DECODE_BATCHES:
            tokens = torch.randint(0, args.vocab_size, (batch, 1), generator=gen).to(device)
            slots, positions = list(range(batch)), [CONTEXT] * batch
            r = profiled(lambda: decode_step(model, tokens, slots, positions), device)
            rows.append(dict(kind="decode", batch=batch, context=CONTEXT, **r))
        chunk = torch.randint(0, args.vocab_size, (1, PROMPT), generator=gen).to(device)
        r = profiled(lambda: prefill_step(model, chunk, 0, 0, True), device)
        rows.append(dict(kind="prefill", batch=1, prompt_tokens=PROMPT, **r))
    for r in rows:
        print(
            f"{r['kind']:8s} batch {r['batch']:3d}: wall {r['wall_s'] * 1e3:7.2f} ms, kernels "
            f"{r['kernels_s'] * 1e3:7.2f} ms ({r['kernels']} kernels, GPU busy "
            f"{r['kernels_s'] / r['wall_s']:.0%})"
        )
    result = dict(env=environment(device), model_args=args.to_dict(), rows=rows)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
