#!/usr/bin/env python
"""Expert offloading measured: decode tokens/s against the cache size, against dsim.cost.offload.

GPU (a later session): a model of DeepSeek-V2-Lite's widths (dim 2048, 64 routed experts of 1408,
top-6, 2 shared experts, MLA), 4 layers (1 dense + 3 MoE) and a vocabulary of 8192, in bf16. For
the resident model and for each cache size (experts per layer on the GPU, the rest pinned in CPU
memory: dsim.offload), with and without prefetching, it decodes `--tokens` tokens greedily at batch
1 after a prompt, and records tokens/s, the cache's hits, misses and prefetches, and the host-to-
device bandwidth of a large pinned copy. The prediction is dsim.cost.offload.decode_seconds at the
measured hit rate and link bandwidth (no overlap: dsim.offload copies, then computes), and the
resident step time is taken from the resident run, as the cost model's compute term assumes
HBM-bound decoding that a batch-1 step of a small model does not reach (launch overheads).

CPU path (--device cpu): the tiny preset with 3 layers, a few tokens; tests/test_offload.py runs
it. Usage:
    python bench/offload_measure.py --out dsim/data/offload_h200.json          # GPU, ~2 min
    python bench/offload_measure.py --device cpu --out /tmp/offload_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsim.config import ModelArgs, preset  # noqa: E402
from dsim.cost.offload import decode_seconds, expert_bytes, n_moe_layers  # noqa: E402
from dsim.model import Transformer  # noqa: E402
from dsim.offload import offload_experts  # noqa: E402
from dsim.quant import clone_model, to_bf16  # noqa: E402


def shapes(device: str) -> ModelArgs:
    if device == "cpu":
        return preset("tiny", n_layers=3, expert_impl="loop")
    return preset(
        "deepseek-v2-lite",
        n_layers=4,
        n_dense_layers=1,
        vocab_size=8192,
        max_seq_len=512,
        original_seq_len=512,
        n_mtp_layers=0,
    )


def host_link_bandwidth(device: str, nbytes: int = 256 * 2**20) -> float | None:
    """Bytes/s of one pinned host-to-device copy of `nbytes` (None on a CPU)."""
    if device == "cpu":
        return None
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t)


def decode_rate(model: Transformer, prompt: torch.Tensor, tokens: int, device: str) -> float:
    """Tokens/s of greedy batch-1 decoding (prompt excluded), after a short warm-up."""
    model.generate(prompt, 4)
    if device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(prompt, tokens)
    if device != "cpu":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - t)


def build(args: ModelArgs, device: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(args).eval()
    if device != "cpu":
        to_bf16(model)
    return model


def run(device: str, tokens: int, cache_sizes: list[int], gpu: str | None) -> dict[str, Any]:
    if device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU; use --device cpu for the CPU path")
    args = shapes(device)
    prompt = torch.randint(0, args.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    base = build(args, device)  # on the host; every run below starts from a copy of it
    resident = clone_model(base).to(device)
    resident_rate = decode_rate(resident, prompt, tokens, device)
    del resident
    link = host_link_bandwidth(device)
    dtype = "bf16" if device != "cpu" else "fp32"
    eb = expert_bytes(args, dtype, None)
    records = []
    for c in cache_sizes:
        for prefetch in (False, True):
            model = clone_model(base)
            layers = offload_experts(model, c, device, prefetch=prefetch)
            model.to(device)
            rate = decode_rate(model, prompt, tokens, device)
            st = [layer.stats() for layer in layers]
            hits, misses = sum(s["hits"] for s in st), sum(s["misses"] for s in st)
            rec = dict(
                cache_size=c,
                prefetch=prefetch,
                tokens_per_s=rate,
                hits=hits,
                misses=misses,
                prefetched=sum(s["prefetched"] for s in st),
                hit_rate=hits / (hits + misses),
            )
            if link is not None and gpu is not None:
                pred = decode_seconds(args, gpu, link, rec["hit_rate"], dtype=dtype)
                # the measured resident step in place of the HBM-bound compute term
                rec["predicted_tokens_per_s"] = 1 / (pred["transfer"] + 1 / resident_rate)
                rec["predicted_transfer_s"] = pred["transfer"]
            records.append(rec)
    return dict(
        script="bench/offload_measure.py",
        device=torch.cuda.get_device_name() if device != "cpu" else "cpu",
        gpu=gpu,
        torch=torch.__version__,
        args={k: v for k, v in vars(args).items() if k != "name"},
        moe_layers=n_moe_layers(args),
        expert_bytes=eb,
        tokens=tokens,
        link_bytes_per_s=link,
        resident_tokens_per_s=resident_rate,
        records=records,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gpu", default="h200", help="dsim.cost.hardware name for the prediction")
    ap.add_argument("--tokens", type=int, default=None, help="default: 64 on GPU, 6 on CPU")
    ap.add_argument("--cache-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args(argv)
    cpu = ns.device == "cpu"
    tokens = ns.tokens or (6 if cpu else 64)
    sizes = ns.cache_sizes or ([1, 2, 4, 8] if cpu else [1, 2, 4, 6, 8, 16, 32, 64])
    result = run(ns.device, tokens, sizes, None if cpu else ns.gpu)
    ns.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"resident: {result['resident_tokens_per_s']:.1f} tokens/s")
    for r in result["records"]:
        print(
            f"cache {r['cache_size']:>3} prefetch {r['prefetch']!s:<5} "
            f"{r['tokens_per_s']:8.1f} tokens/s  hit rate {r['hit_rate']:.2f}"
        )
    return result


if __name__ == "__main__":
    main()
