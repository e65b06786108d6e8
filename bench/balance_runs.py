#!/usr/bin/env python
"""Routing collapse and its repair, measured: writes dsim/data/balance_runs.json for chapter 4.

Trains the `tiny` preset with 16 routed experts (top-2, one shared expert, one MoE layer) on the
standard library's text, 300 steps of 16 x 64 bytes, from the same initialisation and the same
batches (seed 0) in every run, so that runs differ only in what the name says:

    {softmax, sigmoid} gate  x  {none, switch, seq_paper, seq_strong, bias_paper, bias_fast}
    + sigmoid with group-limited routing (4 groups of 4 experts, a token may use 2): none, bias_fast
    + sigmoid with a capacity factor of 1.0 (token dropping): none, bias_fast
    + sigmoid, bias_fast, with one MTP module (lambda 0.3 then 0.1, as DeepSeek-V3): acceptance rate
    + sigmoid none and bias_fast again from seed 1 (other initialisation and batches): the noise

Balancing settings (paper values and stronger ones, labelled as such):
    switch      Switch-Transformer aux loss, alpha = 0.01 (the Switch paper's value)
    seq_paper   sequence-wise loss, alpha = 0.0001 (DeepSeek-V3's value)
    seq_strong  sequence-wise loss, alpha = 0.01 (100x the paper's)
    bias_paper  bias update, gamma = 0.001 (DeepSeek-V3's value)
    bias_fast   bias update, gamma = 0.01 (10x the paper's)

Nothing else is changed from the defaults (the router trains at the same learning rate as every
other weight): at this size the router collapses by itself within tens of steps.

Each run is single-threaded and independent of the others, so the numbers do not depend on
--workers. Usage:
    # all runs, 2 processes (~3-6 min on 2 cores):
    .venv/bin/python bench/balance_runs.py
    .venv/bin/python bench/balance_runs.py --steps 20 --only softmax/none --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

STEPS = 300
SNAPSHOT_EVERY = 10  # load and bias snapshots: the mean load over each window of 10 steps
MODEL = dict(n_routed_experts=16)  # on top of preset("tiny")
TRAIN = dict(batch_size=16, seq_len=64, lr=3e-3, warmup=20, seed=0)  # on top of TrainConfig()
PAPER_GAMMA, FAST_GAMMA = 0.001, 0.01
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("no balancing", {}),
    "switch": ("Switch aux loss, alpha=0.01", {"switch_aux_alpha": 0.01}),
    "seq_paper": ("sequence-wise loss, alpha=1e-4 (paper)", {"seq_aux_alpha": 1e-4}),
    "seq_strong": ("sequence-wise loss, alpha=1e-2 (100x paper)", {"seq_aux_alpha": 1e-2}),
    "bias_paper": ("bias update, gamma=0.001 (paper)", {"bias_update_speed": PAPER_GAMMA}),
    "bias_fast": ("bias update, gamma=0.01 (10x paper)", {"bias_update_speed": FAST_GAMMA}),
}
GROUPS = dict(n_expert_groups=4, n_limited_groups=2)
CAPACITY = dict(capacity_factor=1.0)


def run_specs(steps: int = STEPS) -> list[dict[str, Any]]:
    """Every run: name, gate, method, label, model changes, train-config changes, extra flags."""
    specs = []
    for gate in ("softmax", "sigmoid"):
        for method, (label, cfg) in METHODS.items():
            specs.append(
                dict(
                    name=f"{gate}/{method}",
                    gate=gate,
                    method=method,
                    label=label,
                    model={"score_func": gate},
                    train=dict(cfg),
                    variant="base",
                )
            )
    for method in ("none", "bias_fast"):
        label, cfg = METHODS[method]
        specs.append(
            dict(
                name=f"sigmoid/groups/{method}",
                gate="sigmoid",
                method=method,
                label=f"{label}; 4 groups, 2 allowed",
                model={"score_func": "sigmoid", **GROUPS},
                train=dict(cfg),
                variant="groups",
            )
        )
        specs.append(
            dict(
                name=f"sigmoid/capacity/{method}",
                gate="sigmoid",
                method=method,
                label=f"{label}; capacity factor 1.0",
                model={"score_func": "sigmoid", **CAPACITY},
                train=dict(cfg),
                variant="capacity",
            )
        )
    label, cfg = METHODS["bias_fast"]
    specs.append(
        dict(
            name="sigmoid/mtp/bias_fast",
            gate="sigmoid",
            method="bias_fast",
            label=f"{label}; MTP D=1, lambda 0.3 then 0.1",
            model={"score_func": "sigmoid", "n_mtp_layers": 1},
            train={
                **cfg,
                "mtp_lambda": 0.3,
                "mtp_lambda_schedule": [[round(steps * 10 / 14.8), 0.1]],
            },
            variant="mtp",
        )
    )
    for method in ("none", "bias_fast"):  # the same runs from another seed:
        label, cfg = METHODS[method]  # how much of a difference is noise
        specs.append(
            dict(
                name=f"sigmoid/seed1/{method}",
                gate="sigmoid",
                method=method,
                label=f"{label}; seed 1",
                model={"score_func": "sigmoid"},
                train={**cfg, "seed": 1},
                variant="seed",
            )
        )
    return specs


def _r(x: float, digits: int = 4) -> float:
    """Round to `digits` significant digits (keeps the JSON small; the data are noisy anyway)."""
    return float(f"{x:.{digits}g}")


def windows_mean(rows: list[np.ndarray], every: int) -> list[np.ndarray]:
    return [np.mean(rows[i : i + every], axis=0) for i in range(0, len(rows), every)]


def run_one(spec: dict[str, Any], steps: int = STEPS) -> dict[str, Any]:
    """Train one configuration and summarise it (single-threaded, deterministic)."""
    import torch

    torch.set_num_threads(1)
    from dsim.config import preset
    from dsim.train import TrainConfig, Trainer, evaluate, get_corpus, mtp_acceptance

    args = preset("tiny", **MODEL, **spec["model"])
    cfg = TrainConfig(steps=steps, **{**TRAIN, **spec["train"]})
    t0 = time.perf_counter()
    trainer = Trainer(args, cfg)
    trainer.run(progress=False)
    seconds = time.perf_counter() - t0
    h = trainer.history
    val = get_corpus("val")
    tail = max(1, min(50, steps // 5))
    K = args.n_activated_experts
    load = [l[0] for l in h.load]  # one MoE layer: [E] per step
    out: dict[str, Any] = {
        **{k: spec[k] for k in ("name", "gate", "method", "label", "variant")},
        "model_changes": spec["model"],
        "train_config": cfg.to_dict(),
        "loss": [_r(x) for x in h.loss],
        "imbalance": [_r(x) for x in h.imbalance],
        "entropy": [_r(x) for x in h.entropy],
        "dropped": list(h.dropped),
        "aux_loss": [_r(x) for x in h.aux_loss],
        "mtp_loss": [_r(x) for x in h.mtp_loss],
        "load_snapshots": [[_r(v, 3) for v in row] for row in windows_mean(load, SNAPSHOT_EVERY)],
        "bias_snapshots": [
            [_r(v, 3) for v in h.bias[i][0]]
            for i in range(SNAPSHOT_EVERY - 1, steps, SNAPSHOT_EVERY)
        ],
        "final": {
            "imbalance": _r(float(np.mean(h.imbalance[-tail:]))),
            "entropy": _r(float(np.mean(h.entropy[-tail:]))),
            "train_bpb": _r(float(np.mean(h.bits_per_byte[-tail:]))),
            "val_bpb": _r(
                evaluate(trainer.model, val, seq_len=cfg.seq_len, batches=8, batch_size=16)
            ),
            "dropped_fraction": _r(
                float(np.mean(h.dropped[-tail:])) / (cfg.batch_size * cfg.seq_len * K)
            ),
            "tail_steps": tail,
        },
        "seconds": round(seconds, 1),
    }
    if args.n_expert_groups > 1:  # load per group of experts
        G = args.n_expert_groups
        group_load = [np.asarray(l).reshape(G, -1).sum(-1) for l in load]
        out["group_imbalance"] = [_r(float(g.max() * G)) for g in group_load]
        out["final"]["group_imbalance"] = _r(float(np.mean(out["group_imbalance"][-tail:])))
    if args.n_mtp_layers:
        acc = mtp_acceptance(trainer.model, val, context=64, windows=512, batch_size=128)
        out["final"]["mtp_acceptance"] = _r(acc.rate)
        out["final"]["mtp_main_accuracy"] = _r(acc.main_accuracy)
        out["final"]["mtp_draft_accuracy"] = _r(acc.draft_accuracy)
        out["final"]["mtp_windows"] = acc.n
        out["final"]["mtp_bpb"] = _r(float(np.mean(h.mtp_loss[-tail:])) / np.log(2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument(
        "--workers", type=int, default=2, help="processes, each single-threaded (default 2)"
    )
    p.add_argument("--only", nargs="*", help="run names to run (default: all)")
    p.add_argument("--out", default=str(REPO / "dsim" / "data" / "balance_runs.json"))
    ns = p.parse_args(argv)
    specs = [s for s in run_specs(ns.steps) if not ns.only or s["name"] in ns.only]
    if not specs:
        names = ", ".join(s["name"] for s in run_specs(ns.steps))
        p.error(f"no run matches --only {ns.only}; names: {names}")
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=max(1, ns.workers), mp_context=ctx
    ) as pool:
        futures = {pool.submit(run_one, s, ns.steps): s["name"] for s in specs}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results[r["name"]] = r
            f = r["final"]
            extra = f"  accept {f['mtp_acceptance']:.3f}" if "mtp_acceptance" in f else ""
            print(
                f"{r['name']:28s} imbalance {f['imbalance']:6.3f}  entropy {f['entropy']:.3f}  "
                f"val {f['val_bpb']:.3f} bpb  dropped {f['dropped_fraction']:.3f}{extra}  "
                f"({r['seconds']:.0f} s)",
                flush=True,
            )
    import torch

    data = {
        "description": (
            "Routing collapse and balancing on dsim's tiny preset with 16 experts "
            "(bench/balance_runs.py)"
        ),
        "setup": {
            "preset": "tiny",
            "model_changes": MODEL,
            "train": TRAIN,
            "steps": ns.steps,
            "snapshot_every": SNAPSHOT_EVERY,
            "paper_gamma": PAPER_GAMMA,
            "fast_gamma": FAST_GAMMA,
            "threads_per_run": 1,
            "torch": torch.__version__,
            "final_is_mean_over_last_steps": min(50, ns.steps // 5),
            "load_snapshots": (
                "mean fraction of assignments per expert over each window of snapshot_every steps"
            ),
            "bias_snapshots": "gate bias at the end of each window",
        },
        "runs": [results[s["name"]] for s in specs],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) in {data['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
