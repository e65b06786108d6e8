"""`dsim serve --rate R` and `dsim serve --trace FILE`: requests through a simulated deployment
(dsim.serving), step by step, instead of the steady-state plan: latency percentiles (TTFT, TPOT,
end to end), throughput per node, utilisation, cost, prefix-cache hits and preemptions.

The deployment is one unit of --gpus GPUs that prefills and decodes (colocated), or, with
--disaggregate P:D, a prefill unit of P GPUs handing its prompts' KV caches to a decode unit of D
GPUs. Each unit runs attention data-parallel over GPUs / --tp ranks and the routed experts over
--ep GPUs; its step times come from dsim's time model (dsim.serving.StepCost).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from dsim.cli.args import MAX_GPUS, UsageError, load_model, real, whole
from dsim.cli.output import human, print_json, table
from dsim.config import ModelArgs

DEFAULT_GPUS = 16  # = the --gpus default of the steady-state plan
MAX_REQUESTS = 10_000_000


def gpu_split(text: str) -> tuple[int, int]:
    """argparse type for --disaggregate: P:D, GPUs of the prefill unit and of the decode unit."""
    parts = text.split(":")
    try:
        p, d = (int(x) for x in parts)
    except ValueError:
        p = d = 0
    if len(parts) != 2 or not (1 <= p <= MAX_GPUS and 1 <= d <= MAX_GPUS):
        raise argparse.ArgumentTypeError(
            f"must be P:D, the GPUs of the prefill and of the decode unit (whole numbers between "
            f"1 and {MAX_GPUS:,}), got {text!r}"
        )
    return p, d


gpu_split.__name__ = "P:D"


def cache_size(text: str) -> float:
    """argparse type for --prefix-cache-tokens: a whole number of tokens (K/M/B suffixes) or
    inf (a cache that never evicts)."""
    if text.strip().lower() in ("inf", "infinity", "unbounded"):
        return math.inf
    try:
        return whole(1, suffix=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of tokens >= 1 (K/M/B suffixes) or inf, got {text!r}"
        ) from None


cache_size.__name__ = "tokens"

MAX_RATES = 32
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def rates(text: str) -> tuple[float, ...]:
    """argparse type for --rate: one arrival rate, or a comma-separated list of them (a sweep of
    the load), each a finite number of requests per second > 0."""
    parse = real(0.0, 1e9, strict=True)
    parts = [t.strip() for t in text.split(",")]
    if not 1 <= len(parts) <= MAX_RATES:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_RATES} rates, got {len(parts)}")
    values = tuple(parse(t) for t in parts)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"has a rate twice: {text!r}")
    return values


rates.__name__ = "R[,R...]"


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of the request-level simulation, on the serve parser."""
    g = p.add_argument_group(
        "request-level simulation (--rate or --trace)",
        "simulate requests through the deployment instead of printing the steady-state plan; "
        "--phase, --batch, --context, --prompt, --cache-hit and --latency-ms do not apply",
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--rate",
        type=rates,
        default=None,
        help="Poisson arrivals, requests per second; a comma-separated list sweeps the load "
        "(one line per rate; --plot draws latency against load)",
    )
    src.add_argument(
        "--trace",
        default=None,
        metavar="FILE",
        help="requests from a .csv (header: arrival_s,prompt_tokens,output_tokens"
        "[,prefix_id,prefix_tokens]) or a .jsonl file (one object per line, the same keys)",
    )
    g.add_argument(
        "--requests",
        type=whole(1, MAX_REQUESTS, suffix=True),
        default=None,
        help="--rate: how many requests (default 2000)",
    )
    g.add_argument(
        "--prompt-tokens",
        type=whole(1, suffix=True),
        default=None,
        help="--rate: mean prompt tokens (default 1024, or half the model's max_seq_len)",
    )
    g.add_argument(
        "--output-tokens",
        type=whole(1, suffix=True),
        default=None,
        help="--rate: mean output tokens (default 256, or a quarter of the max_seq_len)",
    )
    g.add_argument(
        "--length-cv",
        type=real(0.0, 10.0),
        default=None,
        help="--rate: coefficient of variation of the prompt and output lengths (lognormal; "
        "default 0: every request the same)",
    )
    g.add_argument(
        "--shared-prefix",
        type=real(0.0, 1.0),
        default=None,
        help="--rate: fraction of each prompt that is one of --prefixes shared prefixes",
    )
    g.add_argument(
        "--prefixes",
        type=whole(1, 1 << 20),
        default=None,
        help="--rate: how many distinct shared prefixes (default 1: one system prompt)",
    )
    g.add_argument(
        "--seed",
        type=whole(0, 2**63 - 1),
        default=None,
        help="seed of the arrivals, lengths and MTP acceptances (default 0)",
    )
    g.add_argument(
        "--disaggregate",
        type=gpu_split,
        default=None,
        metavar="P:D",
        help="a prefill unit of P GPUs and a decode unit of D GPUs (instead of one colocated "
        "unit of --gpus); --ep, if given, applies to both",
    )
    g.add_argument(
        "--kv-transfer-ms",
        type=real(0.0, 1e6),
        default=None,
        help="--disaggregate: time to move a prompt's KV cache to the decode unit (default 0)",
    )
    g.add_argument(
        "--mtp-acceptance",
        type=real(0.0, 1.0),
        default=None,
        help="probability that an MTP draft token is accepted, in [0, 1) (DeepSeek-V3: 0.85 to "
        "0.9); default: no MTP",
    )
    g.add_argument(
        "--mtp-draft-tokens",
        type=whole(1, 8),
        default=None,
        help="draft tokens verified per step (default 1 with --mtp-acceptance)",
    )
    g.add_argument(
        "--prefix-cache-tokens",
        type=cache_size,
        default=None,
        help="a prefix KV cache of this many tokens, least recently used out, or inf "
        "(default: none)",
    )
    g.add_argument(
        "--max-batch",
        type=whole(1, 1 << 20),
        default=None,
        help="running sequences per attention rank (default 256; the KV cache may bound it)",
    )
    g.add_argument(
        "--chunk-tokens",
        type=whole(1, 1 << 20, suffix=True),
        default=None,
        help="prefill tokens per attention rank per step, decode tokens included when "
        "colocated (default 8192)",
    )
    g.add_argument(
        "--decode-attention",
        choices=("dsim", "flashmla"),
        default=None,
        help="decode attention as dsim.model runs it (three kernels) or as one fused kernel "
        "(FlashMLA)",
    )
    g.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="with several --rate values: TTFT and TPOT (p50, p90) against the arrival rate, "
        f"written to FILE ({', '.join(PLOT_SUFFIXES)})",
    )
    g.add_argument(
        "--slo-ttft-ms",
        type=real(0.0, 1e9, strict=True),
        default=None,
        help="a time-to-first-token target: the share of requests that meet it (and "
        "--slo-tpot-ms) is reported",
    )
    g.add_argument(
        "--slo-tpot-ms",
        type=real(0.0, 1e9, strict=True),
        default=None,
        help="a time-per-output-token target (see --slo-ttft-ms)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


PLAN_ONLY = ("batch", "context", "prompt", "cache_hit", "latency_ms", "phase")
RATE_ONLY = ("requests", "prompt_tokens", "output_tokens", "length_cv", "shared_prefix", "prefixes")
SIMULATION = RATE_ONLY + (
    "seed", "disaggregate", "kv_transfer_ms", "mtp_acceptance", "mtp_draft_tokens",
    "prefix_cache_tokens", "max_batch", "chunk_tokens", "decode_attention", "plot",
    "slo_ttft_ms", "slo_tpot_ms",
)  # fmt: skip


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_without_source(ns: argparse.Namespace) -> None:
    """The steady-state plan: the simulation's options are an error there, not ignored."""
    for name in SIMULATION:
        if getattr(ns, name) is not None:
            raise UsageError(f"{_opt(name)} needs --rate or --trace (a request-level simulation)")
    if ns.quiet:
        raise UsageError("--quiet needs --rate or --trace (a request-level simulation)")


def _refuse(ns: argparse.Namespace) -> None:
    """Options that mean nothing for this run: an error, not silently ignored."""
    for name in PLAN_ONLY:
        if getattr(ns, name) is not None:
            raise UsageError(
                f"{_opt(name)} is an option of the steady-state plan, not of --rate or --trace"
            )
    if ns.trace is not None:
        for name in RATE_ONLY:
            if getattr(ns, name) is not None:
                raise UsageError(f"{_opt(name)} applies to --rate, not to --trace")
    if ns.disaggregate is not None and ns.gpus is not None:
        raise UsageError("--disaggregate P:D sets the GPUs of both units: drop --gpus")
    if ns.kv_transfer_ms is not None and ns.disaggregate is None:
        raise UsageError("--kv-transfer-ms applies to --disaggregate P:D")
    if ns.mtp_draft_tokens is not None and ns.mtp_acceptance is None:
        raise UsageError("--mtp-draft-tokens needs --mtp-acceptance")
    if ns.prefixes is not None and ns.shared_prefix is None:
        raise UsageError("--prefixes needs --shared-prefix")
    if ns.plot is not None:
        if ns.rate is None or len(ns.rate) < 2:
            raise UsageError("--plot needs two or more --rate values (a sweep of the load)")
        path = Path(ns.plot)
        if path.suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(f"--plot {ns.plot}: the file must end in {', '.join(PLOT_SUFFIXES)}")
        if not path.resolve().parent.is_dir():
            raise UsageError(f"--plot {ns.plot}: the folder {path.parent} does not exist")
        if path.is_dir():
            raise UsageError(f"--plot {ns.plot} is a folder")


def _requests(
    ns: argparse.Namespace, args: ModelArgs, rate: float | None = None
) -> tuple[list, str]:
    """The requests (at `rate`, with --rate) and a few words on where they come from."""
    from dsim.serving import poisson_requests, read_trace

    if ns.trace is not None:
        try:
            reqs = read_trace(ns.trace)
        except ValueError as e:
            raise UsageError(f"--trace: {e}") from None
        return reqs, f"trace {ns.trace}"
    prompt = ns.prompt_tokens or min(1024, args.max_seq_len // 2)
    output = ns.output_tokens or min(256, args.max_seq_len // 4)
    cv = ns.length_cv or 0.0
    reqs = poisson_requests(
        rate,
        ns.requests or 2000,
        prompt,
        output,
        prompt_cv=cv,
        output_cv=cv,
        shared_prefix=ns.shared_prefix or 0.0,
        n_prefixes=(ns.prefixes or 1) if ns.shared_prefix else 0,
        seed=ns.seed,
    )
    return reqs, f"Poisson at {rate:g}/s, prompts of {prompt}, outputs of {output}" + (
        f" (lognormal, cv {cv:g})" if cv else ""
    )


def _check_lengths(reqs: list, args: ModelArgs, trace: str | None) -> None:
    """Refuse a request longer than the model takes (prompt and all but the last output token
    pass through it)."""
    for r in reqs:
        tokens = r.prompt_tokens + r.output_tokens - 1
        if tokens > args.max_seq_len:
            where = f"--trace {trace}" if trace else "--rate"
            hint = "" if trace else " (shorter lengths or a smaller --length-cv)"
            raise UsageError(
                f"{where}: request {r.id} (from 0, by arrival time): prompt_tokens="
                f"{r.prompt_tokens} + output_tokens={r.output_tokens} - 1 = {tokens:,} tokens "
                f"is past {args.name}'s max_seq_len={args.max_seq_len:,}{hint}"
            )


def _pool(ns, args: ModelArgs, role: str, gpus: int, mtp: int):
    from dsim.serving import Pool, StepCost

    ep = ns.ep
    if ep is None and args.is_moe:  # as the steady-state plan: the most that divide both
        ep = math.gcd(gpus, args.n_routed_experts + ns.redundant_experts)
    if gpus % ns.tp:
        raise UsageError(f"--tp {ns.tp} does not divide the {gpus} GPUs of the {role} unit")
    cost = StepCost(
        args,
        ns.gpu,
        gpus,
        ep,
        ns.tp,
        ns.dtype,
        ns.kv_dtype,
        ns.redundant_experts,
        overlap=not ns.no_overlap,
        decode_attention=ns.decode_attention,
        max_step_tokens=max(ns.chunk_tokens, ns.max_batch * (1 + mtp)),
    )
    pool = Pool(
        role, 1, gpus // ns.tp, gpus, cost, cost.kv_capacity_tokens, ns.max_batch, ns.chunk_tokens
    )
    return pool, cost


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _clean(x):
    """JSON has no NaN or infinity: null instead (a TPOT of one-token requests, an unbounded
    cache)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _simulate(ns, pools, reqs, mtp: int):
    from dsim.serving import PrefixCache, Simulator, summarize

    sim = Simulator(
        [p for p, _ in pools],
        mtp_draft_tokens=mtp,
        mtp_acceptance=ns.mtp_acceptance or 0.0,
        prefix_cache=None
        if ns.prefix_cache_tokens is None
        else PrefixCache(ns.prefix_cache_tokens),
        kv_transfer_s=(ns.kv_transfer_ms or 0.0) / 1e3,
        seed=ns.seed,
    )
    trace = sim.run(reqs, progress=not ns.quiet and sys.stderr.isatty())
    return summarize(
        trace,
        price_per_gpu_hour=ns.price,
        slo_ttft_s=None if ns.slo_ttft_ms is None else ns.slo_ttft_ms / 1e3,
        slo_tpot_s=None if ns.slo_tpot_ms is None else ns.slo_tpot_ms / 1e3,
    )


def _sweep(ns, args: ModelArgs, pools, mtp: int) -> int:
    """One run per --rate value: a line each, and --plot's figure."""
    reps = []
    for rate in ns.rate:
        reqs, _ = _requests(ns, args, rate)
        _check_lengths(reqs, args, None)
        reps.append(_simulate(ns, pools, reqs, mtp))
    if ns.plot is not None:
        _plot(ns, args, pools, reps)
    if ns.json:
        print_json(_clean([dict(rate=r, **rep.to_dict()) for r, rep in zip(ns.rate, reps)]))
        return 0
    rows = [
        [f"{rate:g}", _ms(rep.ttft_s["p50"]), _ms(rep.ttft_s["p90"]), _ms(rep.tpot_s["p50"]),
         _ms(rep.tpot_s["p90"]), _ms(rep.e2e_s["p50"]),
         f"{rep.output_tokens_per_s_per_node:,.0f}", f"{rep.preemptions:,}"]
        + ([] if rep.slo_attainment is None else [f"{rep.slo_attainment:.1%}"])
        for rate, rep in zip(ns.rate, reps)
    ]  # fmt: skip
    print(f"{args.name}: latency against load ({len(reqs):,} requests per rate; times in ms)")
    header = ["requests/s", "TTFT p50", "TTFT p90", "TPOT p50", "TPOT p90", "E2E p50",
              "output tok/s/node", "preemptions"]  # fmt: skip
    if reps[0].slo_attainment is not None:
        header.append("SLO met")
    print(table(rows, header))
    if ns.plot is not None:
        print(f"figure: {ns.plot}")
    return 0


def _plot(ns, args: ModelArgs, pools, reps) -> None:
    """TTFT and TPOT, p50 and p90, against the arrival rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, key, name in zip(axes, ("ttft_s", "tpot_s"), ("time to first token", "time per "
                                                            "output token")):  # fmt: skip
        for q, style in (("p50", "-o"), ("p90", "--s")):
            ax.plot(ns.rate, [getattr(r, key)[q] * 1e3 for r in reps], style, label=q)
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    where = " + ".join(
        f"{p.role if p.role != 'both' else 'colocated'} {p.gpus} x {c.serving.gpu.name}"
        for p, c in pools
    )
    fig.suptitle(f"{args.name} on {where}: latency against load")
    try:
        fig.savefig(ns.plot, dpi=150)
    except OSError as e:
        raise UsageError(f"--plot {ns.plot}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def _slo(ns, rep) -> str:
    """The targets and the share of requests that met them."""
    parts = [f"TTFT <= {ns.slo_ttft_ms:g} ms" if ns.slo_ttft_ms is not None else None,
             f"TPOT <= {ns.slo_tpot_ms:g} ms" if ns.slo_tpot_ms is not None else None]  # fmt: skip
    return f"{rep.slo_attainment:.1%} of requests met {' and '.join(p for p in parts if p)}"


def cmd_simulate(ns: argparse.Namespace) -> int:
    _refuse(ns)
    ns.seed = ns.seed or 0
    ns.max_batch = ns.max_batch or 256
    ns.chunk_tokens = ns.chunk_tokens or 8192
    ns.decode_attention = ns.decode_attention or "dsim"
    args = load_model(ns.model)
    mtp = 0 if ns.mtp_acceptance is None else (ns.mtp_draft_tokens or 1)
    if ns.disaggregate is None:
        gpus = DEFAULT_GPUS if ns.gpus is None else ns.gpus
        pools = [_pool(ns, args, "both", gpus, mtp)]
    else:
        pools = [_pool(ns, args, r, g, mtp) for r, g in zip(("prefill", "decode"), ns.disaggregate)]
    if ns.rate is not None and len(ns.rate) > 1:
        return _sweep(ns, args, pools, mtp)
    reqs, source = _requests(ns, args, ns.rate[0] if ns.rate else None)
    _check_lengths(reqs, args, ns.trace)
    rep = _simulate(ns, pools, reqs, mtp)
    if ns.json:
        print_json(_clean(rep.to_dict()))
        return 0
    units = []
    for pool, cost in pools:
        s = cost.serving
        units.append(
            f"{pool.role if pool.role != 'both' else 'colocated'} {pool.gpus} x {s.gpu.name} "
            f"(attention tp {ns.tp} x dp {pool.ranks}, experts ep {s.ep}, KV cache "
            f"{human(pool.kv_capacity_tokens)} tokens per rank)"
        )
    print(f"{args.name}: {'; '.join(units)}")
    t0, t1 = rep.window_s
    print(
        f"{rep.requests:,} requests ({source}); steady-state window {t0:.3g} s to {t1:.3g} s"
        + (f"; MTP {mtp} draft, acceptance {ns.mtp_acceptance:g}" if mtp else "")
    )
    rows = [
        [name, *(_ms(d[q]) for q in ("p50", "p90", "p99", "mean"))]
        for name, d in (
            ("time to first token", rep.ttft_s),
            ("time per output token", rep.tpot_s),
            ("end to end", rep.e2e_s),
        )
    ]
    print(table(rows, ["ms", "p50", "p90", "p99", "mean"]))
    util = ", ".join(
        f"{role} {u:.0%}"
        + ("" if role == "prefill" else f" (mean batch {rep.batch_per_rank[role]:.3g} per rank)")
        for role, u in rep.utilisation.items()
    )
    rows = [
        ["throughput per node", f"{rep.output_tokens_per_s_per_node:,.0f} output tokens/s, "
         f"{rep.input_tokens_per_s_per_node:,.0f} input tokens/s (cache hits included)"],
        ["per user", f"{rep.tokens_per_s_per_user:.1f} tokens/s while decoding"],
        ["utilisation", util],
        ["cost", f"${rep.cost_per_million_output_tokens:.3f} per million output tokens at "
         f"${ns.price:g}/GPU-hour" if math.isfinite(rep.cost_per_million_output_tokens)
         else "no output token in the steady-state window (more requests)"],
        ["prefix cache", f"{rep.prefix_hit_rate:.1%} of prompt tokens hit"
         if ns.prefix_cache_tokens is not None else "none"],
        ["preemptions", f"{rep.preemptions:,}"],
        *([] if rep.slo_attainment is None else [["latency targets", _slo(ns, rep)]]),
        ["requests in system", f"{rep.littles_law['L']:.3g} (Little's law: lambda x W = "
         f"{rep.littles_law['lambda_W']:.3g})"],
    ]  # fmt: skip
    print(table(rows, None, "ll"))
    return 0
