"""The `dsim` command line.

    dsim tour                 train the tiny model on the standard library, plot the loss,
                              and print every preset's parameter counts next to the published ones
    dsim params --model NAME  parameter counts of a preset or a Hugging Face config.json

Errors in the input exit with status 2 and one line naming the problem, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dsim.config import PUBLISHED_PARAMS, ModelArgs, preset, preset_names


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def load_model_args(spec: str) -> ModelArgs:
    """A preset name or a path to a Hugging Face config.json."""
    if spec.lower() in preset_names():
        return preset(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        return ModelArgs.from_hf_config(path)
    raise UsageError(f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor a config.json path")


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
        rows.append({"model": name, "total": p.total_no_mtp, "active": p.active,
                     "active_no_embedding": p.active_no_embedding,
                     "published_total": pub[0] if pub else None, "published_active": pub[1] if pub else None,
                     "source": pub[2] if pub else ""})
    return rows


def format_params_table(rows: list[dict]) -> str:
    def b(x):
        return "-" if x is None else (f"{x / 1e9:8.2f}B" if x >= 1e8 else f"{x / 1e6:8.2f}M")
    out = [f"{'model':18} {'total':>10} {'published':>10} {'active':>10} {'w/o embed':>10} {'published':>10}"]
    for r in rows:
        out.append(f"{r['model']:18} {b(r['total']):>10} {b(r['published_total']):>10} "
                   f"{b(r['active']):>10} {b(r['active_no_embedding']):>10} {b(r['published_active']):>10}")
    out.append("total: main model without MTP modules (DeepSeek's convention for 671B); active: parameters one "
               "token touches, with and without the input embedding table")
    return "\n".join(out)


def cmd_tour(ns: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dsim.train import TrainConfig, evaluate, get_corpus, train, unigram_entropy

    torch.set_num_threads(max(1, min(ns.threads, torch.get_num_threads())))
    cfg = TrainConfig(steps=ns.steps, seed=ns.seed)
    print(f"dsim tour: training the 'tiny' preset for {cfg.steps} steps on the Python standard library "
          f"({get_corpus('train').numel() / 1e6:.1f} MB of source as bytes)")
    t0 = time.time()
    model, history = train("tiny", cfg, progress=not ns.quiet)
    seconds = time.time() - t0
    bpb = history.bits_per_byte
    h0 = unigram_entropy(get_corpus("train"))
    val = evaluate(model, get_corpus("val"))
    print(text_plot(bpb, label="(training loss, bits per byte)"))
    print(f"\nunigram entropy of the corpus : {h0:.3f} bits/byte (the best a model without context can do)")
    print(f"training loss, first step     : {bpb[0]:.3f} bits/byte")
    print(f"training loss, last 20 steps  : {sum(bpb[-20:]) / 20:.3f} bits/byte")
    print(f"held-out loss                 : {val:.3f} bits/byte  ({h0 - val:.2f} below the unigram entropy)")
    print(f"trained in {seconds:.1f} s")
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(bpb, label="training loss")
    ax.axhline(h0, color="gray", ls="--", label="unigram entropy")
    ax.set_xlabel("step"), ax.set_ylabel("bits per byte"), ax.set_title("dsim tiny MoE on the standard library")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"loss plot saved to {out}\n")
    print("Parameters of every preset (computed by dsim.cost.params; published figures from the papers):")
    print(format_params_table(params_table(preset_names())))
    return 0


def cmd_params(ns: argparse.Namespace) -> int:
    from dsim.cost import params
    args = load_model_args(ns.model)
    p = params(args)
    if ns.json:
        print(json.dumps({"model": args.name, "total": p.total, "total_no_mtp": p.total_no_mtp, "active": p.active,
                          "active_no_embedding": p.active_no_embedding, "mtp": p.mtp,
                          "breakdown": p.breakdown, "active_breakdown": p.active_breakdown}, indent=2))
    else:
        print(p.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tour", help="train the tiny model and print what it costs",
                       description="Train the tiny preset on the standard library's text, plot the loss, "
                                   "and print every preset's parameter counts.\n\nexample: dsim tour --steps 400")
    p.add_argument("--steps", type=int, default=400, help="training steps (default 400, about 30 s on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--out", default="runs/tour_loss.png", help="where to save the loss plot (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tour)
    p = sub.add_parser("params", help="parameter counts of a model",
                       description="example: dsim params --model deepseek-v3")
    p.add_argument("--model", default="deepseek-v3", help="a preset name or a path to a Hugging Face config.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if getattr(ns, "steps", 1) is not None and getattr(ns, "steps", 1) < 1:
            raise UsageError(f"--steps must be >= 1, got {ns.steps}")
        return ns.func(ns)
    except (UsageError, ValueError) as e:
        print(f"dsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
