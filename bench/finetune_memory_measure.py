#!/usr/bin/env python
"""LoRA, QLoRA and full fine-tuning memory of dsim.model, measured, against dsim.cost.finetune.

For each method it builds the model (default: DeepSeek-V2-Lite's widths, 64 routed experts of
1408, dim 2048, MLA, scaled to 3 layers and a vocabulary of 8192 so that it fits one GPU three
times over), applies dsim.lora (QLoRA: INT4 groups of 64), moves it to the device in bf16, and
runs two optimizer steps (AdamW, states in the parameters' dtype) on random tokens. It records:

    state        bytes of the tensors that persist: frozen base (codes and scales for QLoRA),
                 adapters, their gradients, Adam's moments (summed from the tensors: exact)
    after_step   cuda memory_allocated() after the second step (state + allocator rounding)
    peak         cuda max_memory_allocated() during the second step
    saved        bytes autograd keeps after the forward (saved_tensors_hooks; every device)
and the prediction of dsim.cost.finetune.finetune_memory for the same shapes and dtypes.
tests/cost/test_finetune_measure.py runs the CPU path (tiny model, fp32) and holds state and
saved bytes to the prediction; a GPU run's JSON is for a later session to commit.

    # GPU (a later session; about a minute on an H100/H200):
    python bench/finetune_memory_measure.py --out dsim/data/finetune_memory_h200.json
    # CPU (tiny, fp32):
    python bench/finetune_memory_measure.py --device cpu --out /tmp/ft_mem.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsim.config import ModelArgs, preset  # noqa: E402
from dsim.cost.finetune import finetune_memory  # noqa: E402
from dsim.cost.memory import saved_activation_bytes  # noqa: E402
from dsim.lora import add_lora, add_qlora, lora_parameters  # noqa: E402
from dsim.model import Transformer  # noqa: E402
from dsim.quant import to_bf16  # noqa: E402

METHODS = ("lora", "qlora", "full")


def shapes(device: str, seq_len: int) -> ModelArgs:
    """GPU: V2-Lite widths, 3 layers (1 dense, 2 MoE), vocabulary 8192. CPU: the tiny preset."""
    common = dict(max_seq_len=seq_len, original_seq_len=seq_len, n_mtp_layers=0)
    if device == "cpu":
        return preset("tiny", **common)
    return preset("deepseek-v2-lite", n_layers=3, n_dense_layers=1, vocab_size=8192, **common)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def measure(
    args: ModelArgs, method: str, device: str, batch: int, seq_len: int, rank: int, group: int
) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    model = Transformer(args)
    if method == "lora":
        add_lora(model, rank=rank)
    elif method == "qlora":
        add_qlora(model, rank=rank, group_size=group)
    if cuda:
        to_bf16(model)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        model(tokens).float().logsumexp(-1).mean().backward()
        opt.step()

    step()  # allocates the gradients and Adam's states
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step()
    rec: dict[str, Any] = {"method": method}
    if cuda:
        torch.cuda.synchronize()
        rec["after_step"] = torch.cuda.memory_allocated()
        rec["peak"] = torch.cuda.max_memory_allocated()
    frozen = [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())
    moments = [
        t for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")
    ]
    rec["state"] = {
        "weights": _tensor_bytes(frozen),
        "trainable": _tensor_bytes(trainable),
        "gradients": _tensor_bytes(p.grad for p in trainable),
        "optimizer": _tensor_bytes(moments),
    }
    rec["adapter_params"] = sum(p.numel() for p in lora_parameters(model))

    def routing() -> list[torch.Tensor]:
        r = [moe.routing for moe in model.moe_layers()]
        return [t for x in r for t in (x.scores, x.indices, x.weights, x.logits)]

    opt.zero_grad(set_to_none=True)
    exclude = list(model.parameters()) + list(model.buffers()) + [model.freqs_cis, tokens]
    logits: list[torch.Tensor] = []  # the step's output, which dsim.cost.memory counts too
    _, rec["saved"] = saved_activation_bytes(
        lambda: logits.append(model(tokens)), exclude, lambda: routing() + logits
    )
    dt = "bf16" if cuda else "fp32"
    base_dtype = "int4" if method == "qlora" else dt
    pred = finetune_memory(
        args,
        method,
        rank=rank,
        batch=batch,
        seq_len=seq_len,
        base_dtype=base_dtype,
        group_size=group,
        adapter_dtype=dt,
        grad_dtype=dt,
        master_dtype=None,
        optimizer_dtype=dt,
        compute_dtype=dt,
        device="cuda" if cuda else "cpu",
    )
    rec["predicted"] = {
        k: getattr(pred, k)
        for k in (
            "weights",
            "adapters",
            "gradients",
            "optimizer",
            "activations",
            "dequant",
            "total",
        )
    }
    return rec


def run(device: str, batch: int, seq_len: int, rank: int, group: int) -> dict[str, Any]:
    args = shapes(device, seq_len)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU; use --device cpu for the CPU path")
    records = []
    for m in METHODS:  # the model of one method is freed before the next is built
        records.append(measure(args, m, device, batch, seq_len, rank, group))
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return dict(
        script="bench/finetune_memory_measure.py",
        device=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        torch=torch.__version__,
        args={k: v for k, v in vars(args).items() if k != "name"},
        batch=batch,
        seq_len=seq_len,
        rank=rank,
        group_size=group,
        records=records,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=None, help="default: 2048 on GPU, 32 on CPU")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args(argv)
    seq = ns.seq_len or (32 if ns.device == "cpu" else 2048)
    group = ns.group_size if ns.device != "cpu" else 32  # tiny widths are 32 and 64
    result = run(ns.device, ns.batch, seq, ns.rank, group)
    ns.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["records"]:
        measured = r.get("peak", sum(r["state"].values()) + r["saved"])
        print(
            f"{r['method']:<6} measured {measured / 2**20:10.1f} MiB   "
            f"predicted {r['predicted']['total'] / 2**20:10.1f} MiB"
        )
    return result


if __name__ == "__main__":
    main()
