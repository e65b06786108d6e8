#!/usr/bin/env python
"""LoRA, QLoRA and a full fine-tune of the trained tiny model, measured on a CPU: writes
dsim/data/finetune_lora_cpu.json for chapter 11.

1. Train the `tiny` preset on the training split of the corpus (the standard library's source,
   dsim.train.get_corpus("train")), `--base-steps` steps of 8 x 128 bytes, seed 0.
2. Split the held-out corpus (get_corpus("val"), files the base never saw) into blocks of 2 KiB:
   every 5th block is the evaluation slice, the rest the fine-tuning slice.
3. From copies of that base, fine-tune `--steps` steps on the fine-tuning slice, same batches:
       lora   rank-8 adapters on the attention projections and the routed experts (fp32 base)
       qlora  the same adapters on the base quantized to INT4 (groups of 32, dsim.quant w4a16)
       full   every parameter (AdamW at 3e-3, the base's own rate; the adapters train at 1e-2)
   and record bits per byte on the evaluation slice, before and after, with the number of
   trainable parameters and the wall time (informative only: a shared CPU).

Single-threaded (torch.set_num_threads(1)) so the numbers do not depend on the machine's cores.
Usage (about 40 s):
    .venv/bin/python bench/finetune_lora.py
    .venv/bin/python bench/finetune_lora.py --base-steps 5 --steps 3 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from dsim.config import preset
from dsim.lora import add_lora, add_qlora, finetune, lora_parameters
from dsim.quant import clone_model, quantize_model
from dsim.train import TrainConfig, Trainer, evaluate, get_corpus

OUT = Path(__file__).resolve().parents[1] / "dsim" / "data" / "finetune_lora_cpu.json"
SEQ, BATCH = 128, 8


def heldout_slices(block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out corpus cut into blocks of `block` bytes: every 5th block is the evaluation
    slice, the other four of five the fine-tuning slice (same files, disjoint text)."""
    val = get_corpus("val")
    n = val.numel() // block
    blocks = val[: n * block].view(n, block)
    is_eval = torch.arange(n) % 5 == 4
    return blocks[~is_eval].flatten(), blocks[is_eval].flatten()


def train_base(steps: int, seed: int = 0) -> torch.nn.Module:
    """The tiny model trained on the training split (8 x 128 bytes a step)."""
    cfg = TrainConfig(steps=steps, batch_size=BATCH, seq_len=SEQ, warmup=min(20, steps), seed=seed)
    trainer = Trainer(preset("tiny"), cfg)
    trainer.run(progress=False)
    return trainer.model.eval()


def run(
    base_steps: int = 150,
    steps: int = 60,
    rank: int = 8,
    group_size: int = 32,
    lr: float = 1e-2,
    lr_full: float = 3e-3,
    eval_batches: int = 8,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    base = train_base(base_steps)
    base_seconds = time.perf_counter() - t0
    ft_data, ev_data = heldout_slices()

    def bpb(model: torch.nn.Module) -> float:
        return evaluate(model, ev_data, SEQ, eval_batches, BATCH)

    def trainable(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    n_params = sum(p.numel() for p in base.parameters())
    rows: list[dict[str, Any]] = []
    base_bpb = bpb(base)
    int4 = clone_model(base)
    quantize_model(int4, "w4a16", layers="all", group_size=group_size)
    rows.append(dict(method="base", trainable=0, bpb_before=base_bpb, bpb_after=base_bpb))
    rows.append(dict(method="base_int4", trainable=0, bpb_before=bpb(int4), bpb_after=bpb(int4)))
    for method in ("lora", "qlora", "full"):
        model = clone_model(base)
        if method == "lora":
            add_lora(model, rank=rank)
        elif method == "qlora":
            add_qlora(model, rank=rank, group_size=group_size)
        before = bpb(model)
        t = time.perf_counter()
        losses = finetune(
            model,
            ft_data,
            steps,
            lr=lr_full if method == "full" else lr,
            batch_size=BATCH,
            seq_len=SEQ,
            seed=1,
        )
        seconds = time.perf_counter() - t
        rows.append(
            dict(
                method=method,
                trainable=trainable(model),
                adapter_params=sum(p.numel() for p in lora_parameters(model)),
                bpb_before=before,
                bpb_after=bpb(model),
                train_loss_first=losses[0],
                train_loss_last10=sum(losses[-10:]) / len(losses[-10:]),
                seconds=seconds,
            )
        )
    return dict(
        description=(
            "tiny model trained on the corpus's training split, then fine-tuned on 4 of every 5 "
            "2-KiB blocks of the held-out split and evaluated (bits per byte) on the 5th"
        ),
        script="bench/finetune_lora.py",
        torch=torch.__version__,
        threads=1,
        model="tiny",
        model_params=n_params,
        base_steps=base_steps,
        base_seconds=base_seconds,
        steps=steps,
        batch_size=BATCH,
        seq_len=SEQ,
        rank=rank,
        alpha=16.0,
        group_size=group_size,
        lr_adapters=lr,
        lr_full=lr_full,
        eval_batches=eval_batches,
        finetune_bytes=int(ft_data.numel()),
        eval_bytes=int(ev_data.numel()),
        rows=rows,
        total_seconds=time.perf_counter() - t0,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args()
    result = run(ns.base_steps, ns.steps, ns.rank)
    ns.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["rows"]:
        print(
            f"{r['method']:<10} trainable {r['trainable']:>8,}  bpb {r['bpb_before']:.3f} -> "
            f"{r['bpb_after']:.3f}"
        )
    print(f"wrote {ns.out} in {result['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
