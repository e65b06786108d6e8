"""Measure activation memory and the KV cache of real layer sizes, and
compare with dsim.cost.memory.

On a GPU it builds one transformer block at a time in bf16 (a DeepSeek-V2-Lite layer, a DeepSeek-V3-
width layer with 16 experts, a Mixtral-width GQA layer, a DeepSeekMoE-16B MHA layer) and measures:

    activations  torch.cuda.memory_allocated() after the forward minus before it (the input already
                 allocated, the output kept): what the block keeps for its backward. Also recorded:
                 the peak over forward + backward, and the saved-tensor bytes seen by
                 torch.autograd.graph.saved_tensors_hooks on the device (a cross-check).
    kv_cache     memory_allocated() growth of a prefill + one decode step with use_cache.

Each record holds the model arguments, the shapes, predicted and measured bytes, the device name and
the torch version; tests/cost/test_memory.py::test_matches_gpu_measurements re-predicts them.

    # GPU, about a minute on an H100:
    python bench/measure_memory.py --out dsim/data/memory_measured.json
    # CPU: small layers, hook counting:
    python bench/measure_memory.py --device cpu --quick --out /tmp/mem.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsim.config import ModelArgs, preset, scaled_down  # noqa: E402
from dsim.cost.memory import (
    block_memory_delta,
    kv_cache_bytes_per_token,  # noqa: E402
    saved_activation_bytes,
)
from dsim.model import GQA, MLA, Block, MoE, _grouped_mm_ok, precompute_freqs_cis  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def gpu_layers(max_seq: int) -> dict[str, ModelArgs]:
    """Real layer widths; the last layer of each is the MoE block that is measured."""
    common = dict(max_seq_len=max_seq + 1, original_seq_len=max_seq + 1, n_mtp_layers=0)
    return {
        "deepseek-v2-lite layer": preset(
            "deepseek-v2-lite", n_layers=2, n_dense_layers=1, **common
        ),
        "deepseek-v3-width layer, 16 experts": preset(
            "deepseek-v3",
            n_layers=4,
            n_dense_layers=3,
            n_routed_experts=16,
            n_activated_experts=8,
            n_expert_groups=4,
            n_limited_groups=2,
            **common,
        ),
        "mixtral-width layer, 4 experts": preset(
            "mixtral-8x7b", n_layers=1, n_routed_experts=4, **common
        ),
        "deepseekmoe-16b layer (MHA)": preset(
            "deepseekmoe-16b", n_layers=2, n_dense_layers=1, **common
        ),
    }


def cpu_layers(max_seq: int) -> dict[str, ModelArgs]:
    """Small layers of the same structure, for a CPU run in seconds."""
    common = dict(max_seq_len=max_seq + 1, original_seq_len=max_seq + 1, n_mtp_layers=0)
    return {
        f"{name} (scaled down)": scaled_down(preset(name), dim=64, moe_inter_dim=32, **common)
        for name in ("deepseek-v2-lite", "deepseek-v3", "mixtral-8x7b", "deepseekmoe-16b")
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else 0


def routing_tensors(block: Block) -> list[torch.Tensor]:
    r = block.ffn.routing if isinstance(block.ffn, MoE) else None
    return [r.logits, r.scores, r.indices, r.weights] if r is not None else []


def measure_block(
    name: str, args: ModelArgs, batch: int, seq: int, recompute: str, dtype: str, device: str
) -> dict:
    """Activation bytes of the last block of `args` (an MoE block) for
    one forward of batch x seq."""
    layer_id = args.n_layers - 1
    torch.manual_seed(0)
    with torch.device(device):
        block = Block(layer_id, args).to(DTYPES[dtype])
        freqs = precompute_freqs_cis(args)[:seq]
        x = torch.randn(batch, seq, args.dim, dtype=DTYPES[dtype], requires_grad=True)

    def run() -> torch.Tensor:
        if recompute == "full":
            return checkpoint(block, x, 0, freqs, use_reentrant=False)
        return block(x, 0, freqs)

    def reset() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        if isinstance(block.ffn, MoE):
            block.ffn.routing = None
        gc.collect()
        sync(device)

    run().float().sum().backward()  # warm-up: cuBLAS workspaces, kernel selection
    reset()
    rec = dict(
        kind="activations",
        layer=name,
        args=args.to_dict(),
        layer_id=layer_id,
        batch=batch,
        seq_len=seq,
        recompute=recompute,
        dtype=dtype,
        device=device,
        expert_impl=args.expert_impl,
        predicted_bytes=block_memory_delta(args, layer_id, batch, seq, dtype, device, recompute),
        # for diagnosis: the prediction with the other device's kernels (decomposed vs fused
        # RMSNorm, math vs fused attention)
        predicted_bytes_other_kernels=block_memory_delta(
            args, layer_id, batch, seq, dtype, "cpu" if device == "cuda" else "cuda", recompute
        ),
    )
    exclude = list(block.parameters()) + list(block.buffers()) + [freqs, x]
    if device == "cuda":
        # Twice, keeping the second: a first run can leave a one-time allocation behind (a library
        # workspace, about 1 MiB), which is not the block's.
        for _ in range(2):
            base = allocated(device)
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            y = run()
            sync(device)
            rec["measured_bytes"] = allocated(device) - base
            y.backward(torch.ones_like(y))
            sync(device)
            rec["measured_peak_fwd_bwd_bytes"] = torch.cuda.max_memory_allocated() - base
            rec["seconds_fwd_bwd"] = round(time.perf_counter() - t0, 4)
            del y
            reset()
    y, saved = saved_activation_bytes(run, exclude=exclude, extra=lambda: routing_tensors(block))
    rec["saved_tensor_bytes"] = (
        saved + y.untyped_storage().nbytes()
    )  # same convention: output in, input out
    if device != "cuda":
        rec["measured_bytes"] = rec["saved_tensor_bytes"]
    rec["rel_error"] = rec["predicted_bytes"] / rec["measured_bytes"] - 1
    del y
    reset()
    return rec


def measure_kv(
    name: str, args: ModelArgs, batch: int, capacity: int, dtype: str, device: str, prompt: int = 16
) -> dict:
    """KV-cache bytes of one attention module sized for batch x capacity tokens, after a prefill of
    `prompt` tokens and one decode step (the model allocates the whole cache on first use)."""
    args = args.replace(max_batch_size=batch, max_seq_len=capacity, original_seq_len=capacity)
    torch.manual_seed(0)
    with torch.device(device):
        attn = (MLA(args) if args.attn_type == "mla" else GQA(args)).to(DTYPES[dtype])
        freqs = precompute_freqs_cis(args)
        x = torch.randn(batch, prompt + 1, args.dim, dtype=DTYPES[dtype])
    sync(device)
    base = allocated(device)
    with torch.no_grad():
        attn(x[:, :prompt], 0, freqs[:prompt], use_cache=True)
        attn(x[:, prompt:], prompt, freqs[prompt : prompt + 1], use_cache=True)
    gc.collect()
    sync(device)
    cache = sum(t.untyped_storage().nbytes() for t in attn.cache.values())
    per_layer = kv_cache_bytes_per_token(
        args, dtype, impl=args.attn_impl if args.attn_type == "mla" else None
    )
    rec = dict(
        kind="kv_cache",
        layer=name,
        args=args.to_dict(),
        batch=batch,
        seq_len=capacity,
        dtype=dtype,
        device=device,
        attn_impl=args.attn_impl,
        predicted_bytes=int(per_layer / args.n_layers * batch * capacity),
        measured_bytes=allocated(device) - base if device == "cuda" else cache,
        cache_tensor_bytes=cache,
    )
    rec["rel_error"] = rec["predicted_bytes"] / rec["measured_bytes"] - 1
    return rec


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("dsim/data/memory_measured.json"))
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="small layers and sequences (CPU)")
    opts = p.parse_args(argv)
    device = opts.device
    if device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available: run with --device cpu --quick")
    torch.set_num_threads(
        min(torch.get_num_threads(), 4) if device == "cpu" else torch.get_num_threads()
    )
    seqs = [32, 64] if opts.quick else [1024, 4096]
    layers = (cpu_layers if opts.quick else gpu_layers)(max(seqs))
    dtypes = ["fp32", "bf16"] if device == "cpu" else ["bf16"]
    runs = []
    for name, args in layers.items():
        for seq in seqs:
            for recompute in ("none", "full"):
                for dtype in dtypes:
                    runs.append((name, args.replace(expert_impl="loop"), 1, seq, recompute, dtype))
        if args.attn_type == "mla":  # MLA absorbed: the S x S probabilities are materialised
            runs.append(
                (
                    name + ", absorb",
                    args.replace(expert_impl="loop", attn_impl="absorb"),
                    1,
                    seqs[0],
                    "none",
                    dtypes[-1],
                )
            )
        if device == "cuda":  # the grouped GEMM path, where torch._grouped_mm runs it
            probe = torch.empty(8, args.dim, device=device, dtype=torch.bfloat16)
            if _grouped_mm_ok(probe, torch.empty(1, args.moe_inter_dim, args.dim, device=device)):
                runs.append(
                    (
                        name + ", grouped",
                        args.replace(expert_impl="grouped"),
                        1,
                        seqs[-1],
                        "none",
                        "bf16",
                    )
                )

    records = []
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"{'layer':48s} {'kind':11s} {'B':>2s} {'S':>5s} {'recomp':6s} {'dtype':5s} "
        f"{'predicted MiB':>14s} {'measured MiB':>13s} {'error':>8s}"
    )

    def show(r: dict) -> None:
        print(
            f"{r['layer'][:48]:48s} {r['kind']:11s} {r['batch']:2d} {r['seq_len']:5d} "
            f"{r.get('recompute', '-'):6s} {r['dtype']:5s} {r['predicted_bytes'] / 2**20:14.2f} "
            f"{r['measured_bytes'] / 2**20:13.2f} {r['rel_error']:+8.2%}",
            flush=True,
        )

    failed = []

    def attempt(what: str, fn) -> None:
        """Run one measurement; a failure (out of memory, a kernel this torch lacks) skips it."""
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the other measurements
            failed.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            print("FAILED", failed[-1], flush=True)
        else:
            records.append(r)
            show(r)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    for name, args, batch, seq, recompute, dtype in runs:
        attempt(
            f"{name} S={seq} {recompute} {dtype}",
            lambda: measure_block(name, args, batch, seq, recompute, dtype, device),
        )
    for name, args in layers.items():
        for impl in ["naive", "absorb"] if args.attn_type == "mla" else ["naive"]:
            label = f"{name}, {impl}" if args.attn_type == "mla" else name
            kv_args = args.replace(attn_impl=impl)
            if (
                device == "cuda"
            ):  # a first call may allocate a one-time workspace: measure the second
                measure_kv(label, kv_args, 4, seqs[-1] + 1, dtypes[-1], device)
                torch.cuda.empty_cache()
            attempt(
                f"{label} kv cache",
                lambda: measure_kv(label, kv_args, 4, seqs[-1] + 1, dtypes[-1], device),
            )
    for r in records:
        r.update(device_name=device_name, torch_version=torch.__version__)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(records, indent=1) + "\n")
    print(
        f"wrote {len(records)} records to {opts.out}"
        + (f"; {len(failed)} failed:" if failed else "")
    )
    for f in failed:
        print("  ", f)
    return records


if __name__ == "__main__":
    main()
