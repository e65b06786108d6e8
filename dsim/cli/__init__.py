"""The `dsim` command line.

    dsim tour                 train the tiny model on the standard library, plot the loss,
                              and print every preset's parameter counts next to the published ones
    dsim params --model NAME  parameter counts of a preset or a Hugging Face config.json
    dsim flops  --model NAME  FLOPs of a training step, a prefill or a decode step, by component
    dsim memory --model NAME  bytes per GPU of a training (or serving) layout, by kind
    dsim plan   --model NAME --gpu H800 --gpus 2048 --tokens 14.8T
                              the fastest training layouts of a cluster, with time, MFU, memory, cost
    dsim serve  --model NAME --gpu H800 --gpus 144 --phase decode
                              prefill or decode capacity of a deployment, per GPU and per node

--model takes a preset name or a path to a Hugging Face config.json; sizes take K/M/B/T suffixes
(--tokens 14.8T). Errors in the input exit with status 2 and one line naming the problem, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dsim.config import PUBLISHED_PARAMS, ModelArgs, preset, preset_names


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line (no usage block), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(
            f"dsim: error: {self.prog.split(' ', 1)[-1] + ': ' if ' ' in self.prog else ''}{message}",
            file=sys.stderr,
        )
        raise SystemExit(2)


def size(text: str) -> float:
    """argparse type: a positive count with an optional K/M/B/T suffix (14.8T, 62.9M, 4096)."""
    from dsim.cost.plan import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size_int(text: str) -> int:
    """argparse type: a whole positive count with an optional suffix (2k = 2000)."""
    value = size(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def load_model(spec: str) -> ModelArgs:
    """load_model_args, with a malformed config.json reported as one line."""
    try:
        return load_model_args(spec)
    except KeyError as e:
        raise UsageError(
            f"--model {spec}: malformed config.json: a required key is missing ({e})"
        ) from None
    except (TypeError, AttributeError) as e:
        raise UsageError(
            f"--model {spec}: malformed config.json ({type(e).__name__}: {e})"
        ) from None


def table(rows: list[list], header: list[str] | None, align: str | None = None) -> str:
    """Aligned text columns under an optional header: `align` has one letter per column, l or r
    (default: first left, the rest right)."""
    ncol = len(header) if header else len(rows[0])
    align = align or "l" + "r" * (ncol - 1)
    cells = ([[str(c) for c in header]] if header else []) + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]
    fmt = lambda r: "  ".join(
        c.ljust(w) if a == "l" else c.rjust(w)  # noqa: E731
        for c, w, a in zip(r, widths, align)
    ).rstrip()
    lines = [fmt(r) for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def secs(x: float) -> str:
    """Seconds with enough digits for both a 20 s step and a 2 ms one."""
    return "0" if x == 0 else (f"{x:.2f}" if x >= 1 else f"{x:.3g}")


def human(x: float, unit: str = "") -> str:
    """Three significant digits and a suffix: 1.23K, 4.56M, 7.89B, 1.23T, 1.25P."""
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def load_model_args(spec: str) -> ModelArgs:
    """A preset name or a path to a Hugging Face config.json."""
    if spec.lower() in preset_names():
        return preset(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        return ModelArgs.from_hf_config(path)
    raise UsageError(
        f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor a config.json path"
    )


def text_plot(values: list[float], width: int = 60, height: int = 10, label: str = "") -> str:
    """A small line plot in characters: good enough to see a loss curve in a terminal."""
    if not values:
        return "(no data)"
    n = len(values)
    cols = [values[min(n - 1, int(i * n / width))] for i in range(min(width, n))]
    lo, hi = min(cols), max(cols)
    span = (hi - lo) or 1.0
    rows = []
    for r in range(height):
        level = hi - span * r / (height - 1)
        line = "".join("*" if abs(v - level) <= span / (2 * (height - 1)) else " " for v in cols)
        rows.append(f"{level:8.3f} |{line}")
    rows.append(" " * 9 + "+" + "-" * len(cols))
    rows.append(" " * 10 + f"step 0 .. {n}  {label}")
    return "\n".join(rows)


def params_table(names: list[str]) -> list[dict]:
    """Computed total/active parameters for presets, with the published figures where known."""
    from dsim.cost import params

    rows = []
    for name in names:
        p = params(preset(name))
        pub = PUBLISHED_PARAMS.get(name)
        rows.append(
            {
                "model": name,
                "total": p.total_no_mtp,
                "active": p.active,
                "active_no_embedding": p.active_no_embedding,
                "published_total": pub[0] if pub else None,
                "published_active": pub[1] if pub else None,
                "source": pub[2] if pub else "",
            }
        )
    return rows


def format_params_table(rows: list[dict]) -> str:
    def b(x):
        return "-" if x is None else (f"{x / 1e9:8.2f}B" if x >= 1e8 else f"{x / 1e6:8.2f}M")

    out = [
        f"{'model':18} {'total':>10} {'published':>10} {'active':>10} {'w/o embed':>10} {'published':>10}"
    ]
    for r in rows:
        out.append(
            f"{r['model']:18} {b(r['total']):>10} {b(r['published_total']):>10} "
            f"{b(r['active']):>10} {b(r['active_no_embedding']):>10} {b(r['published_active']):>10}"
        )
    out.append(
        "total: main model without MTP modules (DeepSeek's convention for 671B); active: parameters one "
        "token touches, with and without the input embedding table"
    )
    return "\n".join(out)


def cmd_tour(ns: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dsim.train import TrainConfig, evaluate, get_corpus, train, unigram_entropy

    torch.set_num_threads(max(1, min(ns.threads, torch.get_num_threads())))
    cfg = TrainConfig(steps=ns.steps, seed=ns.seed)
    print(
        f"dsim tour: training the 'tiny' preset for {cfg.steps} steps on the Python standard library "
        f"({get_corpus('train').numel() / 1e6:.1f} MB of source as bytes)"
    )
    t0 = time.time()
    model, history = train("tiny", cfg, progress=not ns.quiet)
    seconds = time.time() - t0
    bpb = history.bits_per_byte
    h0 = unigram_entropy(get_corpus("train"))
    val = evaluate(model, get_corpus("val"))
    print(text_plot(bpb, label="(training loss, bits per byte)"))
    print(
        f"\nunigram entropy of the corpus : {h0:.3f} bits/byte (the best a model without context can do)"
    )
    print(f"training loss, first step     : {bpb[0]:.3f} bits/byte")
    print(f"training loss, last 20 steps  : {sum(bpb[-20:]) / 20:.3f} bits/byte")
    print(
        f"held-out loss                 : {val:.3f} bits/byte  ({h0 - val:.2f} below the unigram entropy)"
    )
    print(f"trained in {seconds:.1f} s")
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(bpb, label="training loss")
    ax.axhline(h0, color="gray", ls="--", label="unigram entropy")
    (
        ax.set_xlabel("step"),
        ax.set_ylabel("bits per byte"),
        ax.set_title("dsim tiny MoE on the standard library"),
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"loss plot saved to {out}\n")
    print(
        "Parameters of every preset (computed by dsim.cost.params; published figures from the papers):"
    )
    print(format_params_table(params_table(preset_names())))
    return 0


def cmd_params(ns: argparse.Namespace) -> int:
    from dsim.cost import params

    args = load_model_args(ns.model)
    p = params(args)
    if ns.json:
        print(
            json.dumps(
                {
                    "model": args.name,
                    "total": p.total,
                    "total_no_mtp": p.total_no_mtp,
                    "active": p.active,
                    "active_no_embedding": p.active_no_embedding,
                    "mtp": p.mtp,
                    "breakdown": p.breakdown,
                    "active_breakdown": p.active_breakdown,
                },
                indent=2,
            )
        )
    else:
        print(p.table())
    return 0


def cmd_flops(ns: argparse.Namespace) -> int:
    from dsim.cost.flops import KINDS, flops, six_nd

    args = load_model(ns.model)
    f = flops(args, batch=ns.batch, seq_len=ns.seq_len, mode=ns.mode, context=ns.context)
    br, brc = f.breakdown, f.breakdown_causal
    nd = six_nd(args, f.tokens, ns.mode)
    if ns.json:
        print(
            json.dumps(
                {
                    "model": args.name,
                    "mode": ns.mode,
                    "batch": ns.batch,
                    "seq_len": f.seq_len,
                    "context": f.context,
                    "tokens": f.tokens,
                    "total": f.total,
                    "total_causal": f.total_causal,
                    "per_token": f.per_token,
                    "six_nd": nd,
                    "breakdown": br,
                    "breakdown_causal": brc,
                },
                indent=2,
            )
        )
        return 0
    rows = [
        [k, human(br[k]), f"{br[k] / f.total:.1%}", human(brc[k]), human(brc[k] / f.tokens)]
        for k in KINDS
        if br[k]
    ]
    print(
        f"{args.name}: {ns.mode}, batch {ns.batch} x {f.seq_len} new tokens"
        + (f" after {f.context} cached" if f.context else "")
    )
    print(table(rows, ["component", "FLOPs", "share", "causal", "causal/token"]))
    print(
        f"total {human(f.total)} FLOPs (full attention scores, as torch's FlopCounterMode counts), "
        f"{human(f.total_causal)} with causal masking; {human(f.total_causal / f.tokens)} per token"
    )
    print(
        f"6ND rule of thumb ({'6' if ns.mode == 'train' else '2'} x active non-embedding params x tokens): "
        f"{human(nd)} ({f.total_causal / nd - 1:+.1%} from the causal count)"
    )
    return 0


def cmd_memory(ns: argparse.Namespace) -> int:
    from dsim.cost.hardware import get_gpu
    from dsim.cost.memory import memory

    args = load_model(ns.model)
    gpu = get_gpu(ns.gpu)
    dp = ns.dp
    if ns.gpus is not None:
        if ns.gpus % (ns.tp * ns.pp):
            raise UsageError(
                f"--tp {ns.tp} x --pp {ns.pp} = {ns.tp * ns.pp} does not divide --gpus {ns.gpus}"
            )
        implied = ns.gpus // (ns.tp * ns.pp)
        if dp is not None and dp != implied:
            raise UsageError(
                f"--tp {ns.tp} x --pp {ns.pp} x --dp {dp} = {ns.tp * ns.pp * dp} is not --gpus {ns.gpus}"
            )
        dp = implied
    dp = dp or 1
    est = memory(
        args,
        mode=ns.mode,
        batch=ns.micro_batch,
        seq_len=ns.seq_len,
        dtype=ns.dtype,
        tp=ns.tp,
        pp=ns.pp,
        dp=dp,
        ep=ns.ep,
        zero=ns.zero,
        recompute=ns.recompute,
        optimizer_dtype=ns.optimizer_dtype,
        kv_dtype=ns.kv_dtype,
    )
    kinds = dict(
        weights=est.weights,
        gradients=est.gradients,
        optimizer=est.optimizer,
        activations=est.activations,
        kv_cache=est.kv_cache,
    )
    fits = est.total <= gpu.hbm_bytes
    if ns.json:
        print(
            json.dumps(
                {
                    "model": args.name,
                    "gpu": gpu.name,
                    "mode": ns.mode,
                    "tp": ns.tp,
                    "pp": ns.pp,
                    "dp": dp,
                    "ep": ns.ep,
                    "zero": ns.zero,
                    "recompute": ns.recompute,
                    "stage": est.stage,
                    "bytes": kinds,
                    "total_bytes": est.total,
                    "gpu_bytes": gpu.hbm_bytes,
                    "fits": fits,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{args.name}, {ns.mode}: tp {ns.tp}, pp {ns.pp}, dp {dp}, ep {ns.ep}, ZeRO-{ns.zero}, "
        f"{'micro-batch' if ns.mode == 'train' else 'batch'} {ns.micro_batch} x {ns.seq_len} tokens"
        + (f", recompute {ns.recompute}" if ns.mode == "train" else "")
        + f"; busiest GPU: stage {est.stage}"
    )
    rows = [
        [k, gb(v), f"{v / est.total:.1%}" if est.total else "-"]
        for k, v in kinds.items()
        if v or k != "kv_cache"
    ]
    rows.append(["total", gb(est.total), ""])
    print(table(rows, ["kind", "GB", "share"]))
    print(
        f"{'fits' if fits else 'does NOT fit'} on one {gpu.name} ({gpu.hbm_bytes / 1e9:.0f} GB)"
        " before the CUDA context, communication buffers and fragmentation"
    )
    return 0


def _fixed_layout(ns: argparse.Namespace) -> dict:
    return {
        k: getattr(ns, k)
        for k in ("tp", "pp", "dp", "ep", "zero", "micro_batch", "recompute", "schedule", "dtype")
        if getattr(ns, k) is not None
    }


def cmd_plan(ns: argparse.Namespace) -> int:
    from dsim.cost.plan import TrainingJob, plan_training

    args = load_model(ns.model)
    if ns.global_batch_tokens is not None:
        batch = TrainingJob.batch_from_tokens(ns.global_batch_tokens, ns.seq_len)
    else:
        batch = ns.global_batch
    job = TrainingJob(
        args,
        ns.gpu,
        n_gpus=ns.gpus,
        tokens=ns.tokens,
        seq_len=ns.seq_len,
        global_batch=batch,
        price_per_gpu_hour=ns.price,
        optimizer_dtype=ns.optimizer_dtype,
    )
    res = plan_training(
        job,
        top=ns.top,
        require_fit=not ns.include_unfit,
        progress=not ns.quiet,
        **_fixed_layout(ns),
    )
    if ns.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    g = job.gpu
    print(
        f"{args.name} on {job.n_gpus} x {g.name} ({g.hbm_bytes / 1e9:.0f} GB): {human(job.tokens)} tokens, "
        f"sequences of {job.seq_len}, global batch {batch} sequences ({human(job.batch_tokens)} tokens), "
        f"${job.price_per_gpu_hour:g}/GPU-hour"
    )
    print(
        f"{res.layouts_evaluated:,} layouts evaluated, {res.n_fit:,} fit in memory"
        + "".join(f"; {n:,} rejected: {r}" for r, n in res.rejected.items())
    )
    rows = []
    for i, p in enumerate(res.plans, 1):
        rows.append(
            [
                i,
                p.tp,
                p.pp,
                p.ep,
                p.dp,
                p.zero,
                p.micro_batch,
                p.recompute,
                p.schedule,
                p.dtype,
                secs(p.step_time_s),
                secs(p.compute_s),
                secs(p.exposed_comm_s),
                secs(p.bubble_s),
                f"{p.mfu:.1%}",
                human(p.tokens_per_s),
                f"{p.days:.1f}",
                human(p.gpu_hours),
                f"${human(p.cost)}",
                gb(p.memory_per_gpu_bytes) + ("" if p.fits else " !"),
            ]
        )
    print(
        table(
            rows,
            [
                "#",
                "tp",
                "pp",
                "ep",
                "dp",
                "zero",
                "mb",
                "recompute",
                "schedule",
                "dtype",
                "step s",
                "compute",
                "comm",
                "bubble",
                "MFU",
                "tok/s",
                "days",
                "GPU-h",
                "cost",
                "GB/GPU",
            ],
            "rrrrrrrlllrrrrrrrrrr",
        )
    )
    print(
        "step = compute + exposed communication + pipeline bubble; MFU = model FLOPs (causal attention, MTP, "
        "no recomputation) / (step x GPUs x dense bf16 peak)"
        + ("; ! = does not fit" if ns.include_unfit else "")
    )
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from dsim.cost.plan import plan_serving

    args = load_model(ns.model)
    p = plan_serving(
        args,
        ns.gpu,
        ns.phase,
        ns.gpus,
        ep=ns.ep,
        tp=ns.tp,
        batch=ns.batch,
        context=ns.context,
        prompt=ns.prompt,
        cache_hit=ns.cache_hit,
        dtype=ns.dtype,
        kv_dtype=ns.kv_dtype,
        redundant_experts=ns.redundant_experts,
        overlap=not ns.no_overlap,
        latency_target=None if ns.latency_ms is None else ns.latency_ms / 1e3,
        price_per_gpu_hour=ns.price,
    )
    if ns.json:
        print(json.dumps(p.to_dict(), indent=2))
        return 0
    unit = "input tokens (cache hits included)" if p.phase == "prefill" else "output tokens"
    print(
        f"{p.model} {p.phase} on {p.n_gpus} x {p.gpu}: attention tp {p.tp} x dp {p.dp}, experts ep {p.ep} "
        f"({p.experts_per_gpu} routed per GPU)"
    )
    seq = (
        f"{p.new_tokens} new tokens after {p.context} cached"
        if p.phase == "prefill"
        else f"one new token after {p.context} cached"
    )
    rows = [
        ["batch per GPU", f"{p.batch} sequences ({seq}); at most {p.max_batch} fit"],
        [
            "step time",
            f"{p.step_time_s * 1e3:.1f} ms (compute {p.compute_s * 1e3:.1f}, exposed all-to-all "
            f"{p.exposed_comm_s * 1e3:.1f})",
        ],
        ["per GPU", f"{p.tokens_per_s_per_gpu:,.0f} {unit}/s"],
        ["per node", f"{p.tokens_per_s_per_node:,.0f} {unit}/s"],
        [
            "latency" if p.phase == "prefill" else "per output token",
            f"{p.latency_s * 1e3:.1f} ms"
            + ("" if p.phase == "prefill" else f" ({1 / p.latency_s:.1f} tokens/s per user)"),
        ],
        ["cost", f"${p.cost_per_million_tokens:.3f} per million {unit} at ${ns.price:g}/GPU-hour"],
    ]
    rows += [[f"memory: {k}", f"{gb(v)} GB"] for k, v in p.memory.items()]
    print(table(rows, None, "ll"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "tour",
        help="train the tiny model and print what it costs",
        description="Train the tiny preset on the standard library's text, plot the loss, "
        "and print every preset's parameter counts.\n\nexample: dsim tour --steps 400",
    )
    p.add_argument(
        "--steps", type=int, default=400, help="training steps (default 400, about 30 s on 2 cores)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--out", default="runs/tour_loss.png", help="where to save the loss plot (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tour)
    p = sub.add_parser(
        "params",
        help="parameter counts of a model",
        description="example: dsim params --model deepseek-v3",
    )
    p.add_argument(
        "--model",
        default="deepseek-v3",
        help="a preset name or a path to a Hugging Face config.json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_params)
    _add_cost_commands(sub)
    return parser


MODEL_HELP = "a preset name (deepseek-v3, deepseek-v2, mixtral-8x7b, ...) or a path to a Hugging Face config.json"
RAW = argparse.RawDescriptionHelpFormatter


def _add_cost_commands(sub) -> None:
    """The subcommands flops, memory, plan and serve."""
    p = sub.add_parser(
        "flops",
        help="FLOPs of a step, by component",
        formatter_class=RAW,
        description="FLOPs of every matmul of a training step, a prefill or a decode step.",
        epilog="examples:\n  dsim flops --model deepseek-v3\n"
        "  dsim flops --model deepseek-v3 --mode decode --seq-len 4096 --batch 64\n"
        "  dsim flops --model path/to/config.json --json",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--mode", choices=("train", "prefill", "decode"), default="train")
    p.add_argument(
        "--seq-len", type=size_int, default=4096, help="tokens per sequence (decode: cached tokens)"
    )
    p.add_argument("--batch", type=size_int, default=1, help="sequences (default 1)")
    p.add_argument("--context", type=int, default=None, help="cached tokens before a prefill chunk")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser(
        "memory",
        help="bytes per GPU of a layout, by kind",
        formatter_class=RAW,
        description="Weights, gradients, optimizer states, activations and KV cache on the busiest "
        "GPU of a layout (dsim.cost.memory.memory).",
        epilog="examples:\n  dsim memory --model deepseek-v3 --gpu h800 --gpus 2048 --pp 16 --ep 64 "
        "--zero 1 --recompute full\n"
        "  dsim memory --model deepseek-v3 --mode inference --gpu h200 --tp 8 --batch 32 "
        "--seq-len 32768 --dtype fp8",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--gpu", default="H100-SXM", help="GPU type (h100, h800, h200, a100, ...)")
    p.add_argument(
        "--gpus", type=size_int, default=None, help="GPUs in all (sets dp = gpus / (tp x pp))"
    )
    p.add_argument("--mode", choices=("train", "inference"), default="train")
    for name in ("tp", "pp", "ep"):
        p.add_argument(f"--{name}", type=int, default=1)
    p.add_argument(
        "--dp", type=int, default=None, help="data-parallel size (default 1, or from --gpus)"
    )
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=0)
    p.add_argument(
        "--micro-batch",
        "--batch",
        dest="micro_batch",
        type=size_int,
        default=1,
        help="sequences per micro-batch (inference: per batch)",
    )
    p.add_argument("--seq-len", type=size_int, default=4096)
    p.add_argument("--recompute", choices=("none", "selective", "full"), default="none")
    p.add_argument("--dtype", default="bf16", help="weight dtype (bf16, fp8, int8, int4, ...)")
    p.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (inference)")
    p.add_argument(
        "--optimizer-dtype", choices=("fp32", "bf16"), default="fp32", help="Adam moments"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser(
        "plan",
        help="the fastest training layouts of a cluster",
        formatter_class=RAW,
        description="Search every layout (tp, pp with 1F1B or DualPipe, ep, dp, ZeRO stage, "
        "micro-batch, recomputation, bf16/fp8), drop those that do not fit in memory and "
        "rank the rest by step time. Options --tp ... --dtype fix that part of the layout.",
        epilog="examples:\n"
        "  dsim plan --model deepseek-v3 --gpu h800 --gpus 2048 --tokens 14.8T "
        "--global-batch 15360\n"
        "  dsim plan --model deepseek-v3 --gpu h800 --gpus 2048 --tokens 14.8T --pp 16 --ep 64 "
        "--schedule dualpipe --dtype fp8 --top 3\n"
        "  dsim plan --model mixtral-8x7b --gpu a100 --gpus 256 --tokens 1T --json",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--gpu", default="H100-SXM", help="GPU type (h100, h800, h200, a100, ...)")
    p.add_argument("--gpus", type=size_int, default=256, help="GPUs (whole nodes of 8)")
    p.add_argument(
        "--tokens", type=size, default=1e12, help="token budget, e.g. 14.8T (default 1T)"
    )
    p.add_argument("--seq-len", type=size_int, default=4096)
    batch = p.add_mutually_exclusive_group()
    batch.add_argument(
        "--global-batch", type=size_int, default=1024, help="sequences per step (default 1024)"
    )
    batch.add_argument(
        "--global-batch-tokens", type=size, default=None, help="tokens per step, e.g. 62.9M"
    )
    p.add_argument("--price", type=float, default=2.0, help="$ per GPU-hour (default 2)")
    p.add_argument(
        "--optimizer-dtype", choices=("fp32", "bf16"), default="fp32", help="Adam moments"
    )
    for name in ("tp", "pp", "ep", "dp"):
        p.add_argument(f"--{name}", type=int, default=None, help=f"fix {name} (default: search)")
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None)
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch")
    p.add_argument("--recompute", choices=("none", "selective", "full"), default=None)
    p.add_argument("--schedule", choices=("1f1b", "dualpipe"), default=None)
    p.add_argument("--dtype", choices=("bf16", "fp8"), default=None, help="matmul precision")
    p.add_argument("--top", type=int, default=10, help="plans to show (default 10)")
    p.add_argument("--include-unfit", action="store_true", help="rank layouts that do not fit too")
    p.add_argument(
        "--json", action="store_true", help='{"layouts_evaluated": N, "plans": [...]}, best first'
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "serve",
        help="prefill or decode capacity of a deployment",
        formatter_class=RAW,
        description="Throughput per GPU and per node, latency, cost per million tokens and the "
        "KV-cache bound on the batch of a deployment with data-parallel attention and "
        "expert-parallel experts.",
        epilog="examples:\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --gpus 144 --phase decode "
        "--redundant-experts 32 --context 4989\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --gpus 32 --phase prefill "
        "--redundant-experts 32 --prompt 4383 --cache-hit 0.563\n"
        "  dsim serve --model deepseek-v3 --gpu h200 --gpus 16 --latency-ms 50",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--gpu", default="H800", help="GPU type (h100, h800, h200, a100, ...)")
    p.add_argument("--gpus", type=size_int, default=8, help="GPUs of one deployment unit")
    p.add_argument("--phase", choices=("prefill", "decode"), default="decode")
    p.add_argument("--ep", type=int, default=None, help="expert-parallel size (default: all GPUs)")
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor parallelism of attention (default 1: data parallel)",
    )
    p.add_argument(
        "--batch", type=int, default=None, help="sequences per GPU (default: the most that fit)"
    )
    p.add_argument(
        "--context", type=size_int, default=4096, help="decode: cached tokens per sequence"
    )
    p.add_argument(
        "--prompt", type=size_int, default=4096, help="prefill: prompt tokens per sequence"
    )
    p.add_argument(
        "--cache-hit",
        type=float,
        default=0.0,
        help="prefill: fraction of the prompt already cached",
    )
    p.add_argument(
        "--redundant-experts", type=int, default=0, help="extra expert replicas (DeepSeek: 32)"
    )
    p.add_argument("--dtype", choices=("bf16", "fp8"), default="fp8", help="weights and matmuls")
    p.add_argument("--kv-dtype", default="bf16", help="KV cache dtype")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=None,
        help="decode: largest batch within this time per token",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="do not hide all-to-all behind a second micro-batch",
    )
    p.add_argument("--price", type=float, default=2.0, help="$ per GPU-hour (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, reported in one line)
        return int(e.code or 0)
    try:
        if getattr(ns, "steps", 1) is not None and getattr(ns, "steps", 1) < 1:
            raise UsageError(f"--steps must be >= 1, got {ns.steps}")
        return ns.func(ns)
    except (UsageError, ValueError) as e:
        print(f"dsim: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (| head) went away: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
