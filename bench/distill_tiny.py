#!/usr/bin/env python
"""Distillation of the trained tiny model into smaller students, measured on a CPU: writes
dsim/data/distill_cpu.json for chapter 11.

Teacher: the `tiny` preset (2 layers, 8 routed experts, top-2) trained `--steps` steps of 8 x 128
bytes on the corpus's training split, seed 0 (the base of bench/finetune_lora.py).
Students, each trained the same number of steps on the same batches, with the same learning-rate
schedule, from the same initialisation, twice:
    alone      the next-byte loss only
    distilled  alpha * tau^2 * KL(teacher || student at temperature tau) + (1 - alpha) * next-byte
               loss (dsim.distill), tau = 2, alpha = 0.5
    experts4   4 routed experts instead of 8 (top-2 kept)
    layers1    one MoE layer instead of a dense and an MoE layer
Held-out bits per byte (the corpus's validation split, fixed windows) of the teacher and each
student, and their parameter counts. Single-threaded; one to two minutes.

    .venv/bin/python bench/distill_tiny.py
    .venv/bin/python bench/distill_tiny.py --steps 5 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from dsim.config import preset
from dsim.distill import student_args, train_student
from dsim.model import Transformer
from dsim.train import TrainConfig, Trainer, evaluate, get_corpus

OUT = Path(__file__).resolve().parents[1] / "dsim" / "data" / "distill_cpu.json"
STUDENTS = {"experts4": dict(n_routed_experts=4), "layers1": dict(n_layers=1)}


def run(steps: int = 150, temperature: float = 2.0, alpha: float = 0.5) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = TrainConfig(steps=steps, batch_size=8, seq_len=128, warmup=min(20, steps), seed=0)
    trainer = Trainer(preset("tiny"), cfg)
    trainer.run(progress=False)
    teacher = trainer.model.eval()
    val = get_corpus("val")

    def bpb(model: torch.nn.Module) -> float:
        return evaluate(model, val, cfg.seq_len, 8, 8)

    def n_params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    rows = [dict(model="teacher", params=n_params(teacher), bpb=bpb(teacher))]
    for name, change in STUDENTS.items():
        args = student_args(teacher.args, **change)
        for how in ("alone", "distilled"):
            torch.manual_seed(1)  # the same initialisation for both
            student = Transformer(args)
            t = time.perf_counter()
            losses = train_student(
                student,
                trainer.data,
                cfg,
                teacher=teacher if how == "distilled" else None,
                temperature=temperature,
                alpha=alpha,
            )
            rows.append(
                dict(
                    model=name,
                    how=how,
                    params=n_params(student),
                    bpb=bpb(student),
                    train_loss_last10=sum(losses[-10:]) / len(losses[-10:]),
                    seconds=time.perf_counter() - t,
                )
            )
    return dict(
        description="tiny teacher and smaller students on the corpus's training split; "
        "bits per byte on the validation split",
        script="bench/distill_tiny.py",
        torch=torch.__version__,
        threads=1,
        steps=steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        temperature=temperature,
        alpha=alpha,
        students={k: v for k, v in STUDENTS.items()},
        rows=rows,
        total_seconds=time.perf_counter() - t0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args()
    result = run(ns.steps)
    ns.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["rows"]:
        print(f"{r['model']:<9} {r.get('how', ''):<10} {r['params']:>8,}  bpb {r['bpb']:.3f}")
    print(f"wrote {ns.out} in {result['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
