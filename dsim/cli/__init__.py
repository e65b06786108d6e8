"""The `dsim` command line.

    dsim tour                 train the tiny model on the standard library, plot the loss,
                              and print every preset's parameter counts next to the published ones
    dsim params --model NAME  parameter counts of a preset or a Hugging Face config.json
    dsim flops  --model NAME  FLOPs of a training step, a prefill or a decode step, by component
    dsim memory --model NAME  bytes per GPU of a training (or serving) layout, by kind
    dsim plan   --model NAME --gpu H800 --gpus 2048 --tokens 14.8T
                              the fastest training layouts of a cluster: time, MFU, memory, cost
    dsim serve  --model NAME --gpu H800 --gpus 144 --phase decode
                              prefill or decode capacity of a deployment, per GPU and per node
    dsim serve  --model NAME --gpu H800 --disaggregate 32:144 --rate 100 (or --trace FILE)
                              requests through a deployment: latency percentiles, throughput, cost

--model takes a preset name or a path to a Hugging Face config.json; sizes take K/M/B/T suffixes
(--tokens 14.8T); GB means 10^9 bytes.

exit status: 0 the command answered (`dsim memory` answers "does NOT fit" with 0 too: its JSON
says "fits"); 2 bad input, or nothing fits (`dsim plan`, `dsim serve`), reported in one line on
stderr that names the option or the file; 1 an internal error of dsim (one line; DSIM_DEBUG=1 shows
the traceback). Never a traceback otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from dsim.cli.args import (
    MAX_GPUS,
    OneLineParser,
    UsageError,
    dtype_arg,
    real,
    size,
    size_int,
    whole,
)
from dsim.cli.costs import cmd_flops, cmd_memory, cmd_params
from dsim.cli.output import human, table
from dsim.cli.plan import cmd_plan, cmd_serve
from dsim.cli.simulate import add_options as add_simulation_options
from dsim.cli.tour import cmd_tour

__all__ = ["build_parser", "human", "main", "table"]


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
        "--steps",
        type=whole(1, 10**6),
        default=400,
        help="training steps (default 400: about half a minute of training on 2 idle cores)",
    )
    p.add_argument("--seed", type=whole(0, 2**63 - 1), default=0)
    p.add_argument(
        "--threads", type=whole(1, 4096), default=2, help="CPU threads for torch (default 2)"
    )
    p.add_argument("--out", default="runs/tour_loss.png", help="where to save the loss plot (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: the losses and the parameter table (implies --quiet)",
    )
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


MODEL_HELP = (
    "a preset name (deepseek-v3, deepseek-v2, mixtral-8x7b, ...) "
    "or a path to a Hugging Face config.json"
)
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
        "--seq-len",
        type=size_int,
        default=None,
        help="tokens per sequence (decode: cached tokens; default 4096, or the model's "
        "max_seq_len if shorter, less one in decode for the new token)",
    )
    p.add_argument("--batch", type=size_int, default=1, help="sequences (default 1)")
    p.add_argument(
        "--context",
        type=whole(0, suffix=True),
        default=None,
        help="cached tokens before a prefill chunk",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser(
        "memory",
        help="bytes per GPU of a layout, by kind",
        formatter_class=RAW,
        description="Weights, gradients, optimizer states, activations and KV cache on the busiest "
        "GPU of a layout (dsim.cost.memory.memory).",
        epilog="examples:\n"
        "  dsim memory --model deepseek-v3 --gpu h800 --gpus 2048 --pp 16 --ep 64 "
        "--zero 1 --recompute full\n"
        "  dsim memory --model deepseek-v3 --mode inference --gpu h200 --tp 8 --batch 32 "
        "--seq-len 32768 --dtype fp8",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--gpu", default="H100-SXM", help="GPU type (h100, h800, h200, a100, ...)")
    p.add_argument(
        "--gpus",
        type=whole(1, MAX_GPUS, suffix=True),
        default=None,
        help="GPUs in all (sets dp = gpus / (tp x pp))",
    )
    p.add_argument("--mode", choices=("train", "inference"), default="train")
    for name in ("tp", "pp", "ep"):
        p.add_argument(f"--{name}", type=whole(1, MAX_GPUS), default=1)
    p.add_argument(
        "--dp",
        type=whole(1, MAX_GPUS),
        default=None,
        help="data-parallel size (default 1, or from --gpus)",
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
    p.add_argument(
        "--seq-len",
        type=size_int,
        default=None,
        help="tokens per sequence (default 4096, or the model's max_seq_len if shorter)",
    )
    p.add_argument("--recompute", choices=("none", "selective", "full"), default="none")
    p.add_argument("--dtype", default="bf16", help="weight dtype (bf16, fp8, int8, int4, ...)")
    p.add_argument(
        "--kv-dtype",
        type=dtype_arg,
        default="bf16",
        help="KV cache format (inference): fp32, bf16, fp16, fp8, int8, int4, or bits per element",
    )
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
    p.add_argument(
        "--gpus",
        type=whole(1, MAX_GPUS, suffix=True),
        default=256,
        help="GPUs (whole nodes of 8)",
    )
    p.add_argument(
        "--tokens",
        type=size,
        default=1e12,
        help="token budget, e.g. 14.8T (default 1T; at least one global batch)",
    )
    p.add_argument(
        "--seq-len",
        type=size_int,
        default=None,
        help="tokens per sequence (default 4096, or the model's max_seq_len if shorter)",
    )
    batch = p.add_mutually_exclusive_group()
    batch.add_argument(
        "--global-batch", type=size_int, default=1024, help="sequences per step (default 1024)"
    )
    batch.add_argument(
        "--global-batch-tokens", type=size, default=None, help="tokens per step, e.g. 62.9M"
    )
    p.add_argument("--price", type=real(0.0, 1e6), default=2.0, help="$ per GPU-hour (default 2)")
    p.add_argument(
        "--optimizer-dtype", choices=("fp32", "bf16"), default="fp32", help="Adam moments"
    )
    for name in ("tp", "pp", "ep", "dp"):
        p.add_argument(
            f"--{name}", type=whole(1, MAX_GPUS), default=None, help=f"fix {name} (default: search)"
        )
    p.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None)
    p.add_argument("--micro-batch", type=whole(1), default=None, help="sequences per micro-batch")
    p.add_argument("--recompute", choices=("none", "selective", "full"), default=None)
    p.add_argument("--schedule", choices=("1f1b", "dualpipe"), default=None)
    p.add_argument("--dtype", choices=("bf16", "fp8"), default=None, help="matmul precision")
    p.add_argument("--top", type=whole(1), default=10, help="plans to show (default 10)")
    p.add_argument("--include-unfit", action="store_true", help="rank layouts that do not fit too")
    p.add_argument(
        "--activation-recipe",
        choices=("plain", "deepseek-v3"),
        default="plain",
        help="how activations are kept: plain autograd, or DeepSeek-V3's fp8 caching and "
        "recomputation (dsim.cost.memory.DEEPSEEK_V3_RECIPE)",
    )
    p.add_argument(
        "--json", action="store_true", help='{"layouts_evaluated": N, "plans": [...]}, best first'
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "serve",
        help="prefill or decode capacity of a deployment, or requests through it",
        formatter_class=RAW,
        description="Throughput per GPU and per node, latency, cost per million tokens and the "
        "KV-cache bound on the batch of a deployment with data-parallel attention and "
        "expert-parallel experts; with --rate or --trace, a request-level simulation of it "
        "(dsim.serving).",
        epilog="examples:\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --gpus 144 --phase decode "
        "--redundant-experts 32 --context 4989\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --gpus 32 --phase prefill "
        "--redundant-experts 32 --prompt 4383 --cache-hit 0.563\n"
        "  dsim serve --model deepseek-v3 --gpu h200 --gpus 16 --latency-ms 50\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --disaggregate 32:144 "
        "--redundant-experts 32 --rate 100 --mtp-acceptance 0.85\n"
        "  dsim serve --model deepseek-v3 --gpu h800 --gpus 16 --trace requests.csv "
        "--prefix-cache-tokens inf\n"
        "  dsim serve --model deepseek-v3 --gpu h200 --gpus 8 --rate 1,2,4,8,12 "
        "--plot latency.png",
    )
    p.add_argument("--model", default="deepseek-v3", help=MODEL_HELP)
    p.add_argument("--gpu", default="H800", help="GPU type (h100, h800, h200, a100, ...)")
    p.add_argument(
        "--gpus",
        type=whole(1, MAX_GPUS, suffix=True),
        default=None,
        help="GPUs of one deployment unit (default 16: two nodes of 8)",
    )
    p.add_argument("--phase", choices=("prefill", "decode"), default=None, help="default decode")
    p.add_argument(
        "--ep",
        type=whole(1, MAX_GPUS),
        default=None,
        help="expert-parallel size (default: the most GPUs that divide both --gpus and the "
        "routed + redundant experts; all GPUs for DeepSeek-V3)",
    )
    p.add_argument(
        "--tp",
        type=whole(1, MAX_GPUS),
        default=1,
        help="tensor parallelism of attention (default 1: data parallel)",
    )
    p.add_argument(
        "--batch",
        type=whole(1, suffix=True),
        default=None,
        help="sequences per GPU (default: the most that fit)",
    )
    p.add_argument(
        "--context",
        type=whole(1, suffix=True),
        default=None,
        help="decode: cached tokens per sequence (default 4096, or less to fit max_seq_len)",
    )
    p.add_argument(
        "--prompt",
        type=whole(1, suffix=True),
        default=None,
        help="prefill: prompt tokens per sequence (default 4096, or the model's max_seq_len)",
    )
    p.add_argument(
        "--cache-hit",
        type=real(0.0, 1.0),
        default=None,
        help="prefill: fraction of the prompt already cached, in [0, 1) (default 0)",
    )
    p.add_argument(
        "--redundant-experts",
        type=whole(0),
        default=0,
        help="extra expert replicas (DeepSeek: 32)",
    )
    p.add_argument("--dtype", choices=("bf16", "fp8"), default="fp8", help="weights and matmuls")
    p.add_argument(
        "--kv-dtype",
        type=dtype_arg,
        default="bf16",
        help="KV cache format: fp32, bf16, fp16, fp8, int8, int4, or bits per element",
    )
    p.add_argument(
        "--latency-ms",
        type=real(0.0, strict=True),
        default=None,
        help="decode: largest batch within this time per token",
    )
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="do not hide all-to-all behind a second micro-batch",
    )
    p.add_argument("--price", type=real(0.0, 1e6), default=2.0, help="$ per GPU-hour (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_simulation_options(p)
    p.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, reported in one line)
        return int(e.code or 0)
    try:
        return ns.func(ns)
    except (UsageError, ValueError) as e:
        print(f"dsim: error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (| head) went away: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("dsim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of dsim: one line, status 1 (DSIM_DEBUG=1 for the traceback)
        if os.environ.get("DSIM_DEBUG"):
            raise
        print(
            f"dsim: internal error: {type(e).__name__}: {one_line(e)} "
            "(a bug in dsim; DSIM_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def one_line(e: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
