"""`dsim tour`: train the tiny preset for a few hundred steps, plot its loss, and print every
preset's parameter counts next to the published ones."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dsim.cli.args import UsageError
from dsim.cli.output import print_json, text_plot
from dsim.config import PUBLISHED_PARAMS, preset, preset_names


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
        f"{'model':18} {'total':>10} {'published':>10} "
        f"{'active':>10} {'w/o embed':>10} {'published':>10}"
    ]
    for r in rows:
        out.append(
            f"{r['model']:18} {b(r['total']):>10} {b(r['published_total']):>10} "
            f"{b(r['active']):>10} {b(r['active_no_embedding']):>10} {b(r['published_active']):>10}"
        )
    out.append(
        "total: main model without MTP modules (DeepSeek's convention for 671B); "
        "active: parameters one token touches, with and without the input embedding table"
    )
    return "\n".join(out)


def writable_plot_path(text: str) -> Path:
    """The --out path, checked before training: a .png in a directory that exists (or can be made)
    and can be written, and not a directory itself."""
    out = Path(text)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {text}: the loss plot is a PNG: give a path ending in .png")
    if out.is_dir():
        raise UsageError(f"--out {text} is a directory: give a file name ending in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {text}: cannot create {out.parent} ({e.strerror})") from None
    existed = out.exists()
    try:
        with open(out, "ab"):  # opened for writing, as savefig will, but nothing written
            pass
    except OSError as e:
        raise UsageError(f"--out {text}: cannot write there ({e.strerror})") from None
    if not existed:
        out.unlink()
    return out


def cmd_tour(ns: argparse.Namespace) -> int:
    out = writable_plot_path(ns.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dsim.train import TrainConfig, evaluate, get_corpus, train, unigram_entropy

    say = (lambda *a, **k: None) if ns.json else print
    torch.set_num_threads(max(1, min(ns.threads, torch.get_num_threads())))
    cfg = TrainConfig(steps=ns.steps, seed=ns.seed)
    quiet = ns.quiet or ns.json
    say(
        f"dsim tour: training the 'tiny' preset for {cfg.steps} steps "
        "on the Python standard library "
        f"({get_corpus('train').numel() / 1e6:.1f} MB of source as bytes)"
    )
    if not quiet:
        say(
            "progress bar: bpb = training loss in bits per byte; imb = expert load imbalance "
            "(the busiest expert's tokens / the mean, averaged over MoE layers; 1.00 = balanced)"
        )
    t0 = time.time()
    model, history = train("tiny", cfg, progress=not quiet)
    seconds = time.time() - t0
    bpb = history.bits_per_byte
    h0 = unigram_entropy(get_corpus("train"))
    val = evaluate(model, get_corpus("val"))
    last = bpb[-20:]
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
    plt.close(fig)
    table_rows = params_table(preset_names())
    if ns.json:
        print_json(
            {
                "steps": cfg.steps,
                "seed": cfg.seed,
                "train_seconds": seconds,
                "bits_per_byte": bpb,
                "unigram_entropy": h0,
                "final_loss": sum(last) / len(last),
                "held_out_loss": val,
                "plot": str(out),
                "params": table_rows,
            }
        )
        return 0
    print(text_plot(bpb, label="(training loss, bits per byte)"))
    print(
        f"\nunigram entropy of the corpus : {h0:.3f} bits/byte "
        "(the best a model without context can do)"
    )
    print(f"training loss, first step     : {bpb[0]:.3f} bits/byte")
    print(f"training loss, last {len(last):<2} steps  : {sum(last) / len(last):.3f} bits/byte")
    print(
        f"held-out loss                 : {val:.3f} bits/byte  "
        f"({h0 - val:.2f} below the unigram entropy)"
    )
    print(f"trained in {seconds:.1f} s")
    print(f"loss plot saved to {out}\n")
    print(
        "Parameters of every preset "
        "(computed by dsim.cost.params; published figures from the papers):"
    )
    print(format_params_table(table_rows))
    return 0
