"""How fast the capacity planner searches, on one CPU core.

    .venv/bin/python bench/plan_speed.py [--repeat 50] [--sample 200]

Prints layouts per second of the vectorized evaluation (dsim.cost.plan.evaluate) and of the same
evaluator run one layout at a time (dsim.cost.plan.evaluate_layout, a one-row Layouts: what a plain
loop over layouts would cost) on a sample of the same layouts, their ratio, and checks that the two
give the same numbers (relative difference <= 1e-9; exit status 1 otherwise). Cases:
  1. DeepSeek-V3 on 2048 H800s (the pre-training reproduction's job): the full search cold
     (building the tables from the time model, in a fresh process) and warm (tables built, the
     evaluation alone);
  2. a sweep of cluster sizes (64 to 16384 H100s) for DeepSeek-V3, warm;
  3. the DeepSeek-V3 layouts repeated --repeat times: the per-layout cost once fixed costs are
     amortised.
"""

from __future__ import annotations

import os

# One core: numpy's elementwise operations run on one thread; keep BLAS and OpenMP pools to one too.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from dsim.config import preset  # noqa: E402
from dsim.cost.plan import (
    OUTPUTS,
    TrainingJob,
    enumerate_layouts,
    evaluate,
    evaluate_layout,  # noqa: E402
    plan_training,
)


def best_of(fn, n: int = 5) -> float:
    """The fastest of n runs, in seconds: the code's speed, not the noise of a shared machine."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=50, help="copies of the V3 layouts for case 3")
    ap.add_argument("--sample", type=int, default=200, help="layouts evaluated one at a time")
    ns = ap.parse_args()
    job = TrainingJob(
        preset("deepseek-v3"),
        "H800",
        n_gpus=2048,
        tokens=14.8e12,
        seq_len=4096,
        global_batch=15360,
        optimizer_dtype="bf16",
    )
    t = time.perf_counter()
    res = plan_training(job, top=10)
    cold = time.perf_counter() - t
    L, _ = enumerate_layouts(job)
    warm = best_of(lambda: plan_training(job, top=10), 20)
    ev = best_of(lambda: evaluate(job, L), 20)
    print("1. DeepSeek-V3, 2048 x H800, sequences of 4096, global batch 15360")
    print(
        f"   {res.layouts_evaluated:,} layouts; "
        f"full search cold {cold:.3f} s (tables from the time model), "
        f"warm {warm:.3f} s; evaluation alone {ev * 1e3:.1f} ms = {len(L) / ev:,.0f} layouts/s"
    )

    total, seconds = 0, 0.0
    for n in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384):
        j = TrainingJob(
            preset("deepseek-v3"), "H100", n_gpus=n, seq_len=4096, global_batch=max(1024, 2 * n)
        )
        try:
            Ln, _ = enumerate_layouts(j)
        except ValueError:
            continue
        evaluate(j, Ln)  # build the tables
        seconds += best_of(lambda: evaluate(j, Ln), 10)
        total += len(Ln)
    print(
        f"2. DeepSeek-V3 on 64 ... 16384 x H100 (9 clusters): "
        f"{total:,} layouts in {seconds:.3f} s = "
        f"{total / seconds:,.0f} layouts/s"
    )

    big = L.take(np.tile(np.arange(len(L)), ns.repeat))
    t_big = best_of(lambda: evaluate(job, big), 5)
    rate = len(big) / t_big
    print(
        f"3. the V3 layouts x {ns.repeat}: {len(big):,} layouts in {t_big:.3f} s = "
        f"{rate:,.0f} layouts/s"
    )

    rng = np.random.default_rng(0)
    sample = rng.choice(len(L), size=min(ns.sample, len(L)), replace=False)
    t = time.perf_counter()
    refs = [evaluate_layout(job, L.row(int(i))) for i in sample]
    t_ref = time.perf_counter() - t
    ref_rate = len(sample) / t_ref
    out = evaluate(job, L)
    worst = 0.0
    for i, ref in zip(sample, refs):
        for key in OUTPUTS:
            a, b = out[key][i], ref[key]
            # relative, with a floor: a time that is exactly 0 in one and
            # 1e-15 s in the other agrees
            worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-3))
    print(
        f"one layout at a time (evaluate_layout): {len(sample)} layouts in {t_ref:.2f} s = "
        f"{ref_rate:,.0f} layouts/s"
    )
    print(
        f"vectorized / one at a time: {len(L) / ev / ref_rate:,.0f}x (case 1), "
        f"{rate / ref_rate:,.0f}x (case 3); "
        f"largest relative difference {worst:.1e}"
    )
    if worst > 1e-9:
        print(
            "MISMATCH between the vectorized evaluation and one layout at a time", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
