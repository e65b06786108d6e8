#!/usr/bin/env python
"""The trained tiny model's routing as an expert cache sees it: writes
dsim/data/offload_routing_cpu.json for chapter 11.

Trains the `tiny` preset as bench/finetune_lora.py does (150 steps of 8 x 128 bytes, seed 0),
once as it is (no balancing: its router collapses onto a few experts) and once with DeepSeek-V3's
auxiliary-loss-free bias update (gamma = 0.01), routes 16 held-out windows of 255 bytes (the
validation split) and replays each MoE layer's routing, token by token as decoding meets it,
through dsim.offload's LRU policy (dsim.cost.offload.simulate_lru, which tests/test_offload.py
holds to the module's own counts) for every cache size; beside it, Che's approximation from the
routing shares alone and the hit rate of uniform routing (cache_size / E). Single-threaded,
about 40 s.

    .venv/bin/python bench/offload_routing.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from dsim.config import preset
from dsim.cost.offload import lru_hit_rate, routing_load, simulate_lru
from dsim.offload import routing_trace
from dsim.train import TrainConfig, Trainer, get_batch, get_corpus

OUT = Path(__file__).resolve().parents[1] / "dsim" / "data" / "offload_routing_cpu.json"


MODELS = {
    "unbalanced": {},  # dsim.train's defaults: no balancing; the router collapses
    "balanced": dict(bias_update_speed=0.01),  # DeepSeek-V3's bias update (10x the paper's speed)
}


def replay(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per MoE layer: routing shares and, per cache size, replayed / Che / uniform hit rates."""
    E, K = model.args.n_routed_experts, model.args.n_activated_experts
    layers = []
    for trace in routing_trace(model, x):  # [B*S, K], sequence after sequence
        steps = trace.tolist()
        load = routing_load(steps, E)
        rows = [
            dict(
                cache_size=c,
                replayed=simulate_lru(steps, c)["hit_rate"],
                che=lru_hit_rate(load, c, K),
                uniform=c / E,
            )
            for c in range(1, E + 1)
        ]
        layers.append(dict(load=load, rows=rows))
    return layers


def run(steps: int = 150, sequences: int = 16) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    x, _ = get_batch(get_corpus("val"), sequences, 255, torch.Generator().manual_seed(7))
    models = {}
    for name, change in MODELS.items():
        cfg = TrainConfig(
            steps=steps, batch_size=8, seq_len=128, warmup=min(20, steps), seed=0, **change
        )
        trainer = Trainer(preset("tiny"), cfg)
        trainer.run(progress=False)
        models[name] = dict(train_config=change, layers=replay(trainer.model.eval(), x))
    args = preset("tiny")
    return dict(
        description="LRU hit rate of the trained tiny model's routing on held-out text, replayed "
        "token by token, against Che's approximation and uniform routing; trained without "
        "balancing and with DeepSeek-V3's bias update",
        script="bench/offload_routing.py",
        torch=torch.__version__,
        steps=steps,
        sequences=sequences,
        tokens=int(x.numel()),
        n_routed_experts=args.n_routed_experts,
        n_activated_experts=args.n_activated_experts,
        models=models,
        seconds=time.perf_counter() - t0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args()
    result = run(ns.steps)
    ns.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, m in result["models"].items():
        for layer in m["layers"]:
            print(name, "load", [round(v, 3) for v in layer["load"]])
            for r in layer["rows"]:
                print(
                    f"cache {r['cache_size']}: replayed {r['replayed']:.3f}  Che {r['che']:.3f}  "
                    f"uniform {r['uniform']:.3f}"
                )
    print(f"wrote {ns.out} in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
