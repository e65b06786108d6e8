"""`dsim plan` and `dsim serve`: the fastest training layouts of a cluster, and the prefill or
decode capacity of a deployment."""

from __future__ import annotations

import argparse
import math

from dsim.cli.args import UsageError, check_length, default_length, load_model
from dsim.cli.output import gb, human, print_json, secs, table


def _fixed_layout(ns: argparse.Namespace) -> dict:
    return {
        k: getattr(ns, k)
        for k in ("tp", "pp", "dp", "ep", "zero", "micro_batch", "recompute", "schedule", "dtype")
        if getattr(ns, k) is not None
    }


def cmd_plan(ns: argparse.Namespace) -> int:
    from dsim.cost.plan import TrainingJob, plan_training

    args = load_model(ns.model)
    seq_len = default_length(args, ns.seq_len)
    check_length(args, "--seq-len", seq_len)
    if ns.global_batch_tokens is not None:
        batch = TrainingJob.batch_from_tokens(ns.global_batch_tokens, seq_len)
    else:
        batch = ns.global_batch
    if ns.tokens < batch * seq_len:
        raise UsageError(
            f"--tokens {ns.tokens:g} is less than one step: a global batch of {batch} sequences "
            f"x {seq_len} tokens = {batch * seq_len:,} tokens"
        )
    job = TrainingJob(
        args,
        ns.gpu,
        n_gpus=ns.gpus,
        tokens=ns.tokens,
        seq_len=seq_len,
        global_batch=batch,
        price_per_gpu_hour=ns.price,
        optimizer_dtype=ns.optimizer_dtype,
        recipe=ns.activation_recipe,
    )
    res = plan_training(
        job,
        top=ns.top,
        require_fit=not ns.include_unfit,
        progress=not ns.quiet,
        **_fixed_layout(ns),
    )
    if ns.json:
        print_json(res.to_dict())
        return 0
    g = job.gpu
    print(
        f"{args.name} on {job.n_gpus} x {g.name} ({g.hbm_bytes / 1e9:.0f} GB): "
        f"{human(job.tokens)} tokens, sequences of {job.seq_len}, "
        f"global batch {batch} sequences ({human(job.batch_tokens)} tokens), "
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
                f"{p.days:.3g}",
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
        "step = compute + exposed communication + pipeline bubble (seconds); "
        "MFU = model FLOPs (causal attention, MTP, no recomputation) "
        "/ (step x GPUs x dense bf16 peak)"
        + (
            f"; #1 under other conventions: hardware FLOPs (with recomputation) "
            f"{res.plans[0].mfu_conventions['hardware']:.1%}, non-causal attention "
            f"{res.plans[0].mfu_conventions['noncausal']:.1%}, 6ND "
            f"{res.plans[0].mfu_conventions['six_nd']:.1%}"
            if res.plans
            else ""
        )
        + "; GB/GPU: the busiest GPU's model state, activations and "
        f"buffers ({job.reserved_bytes / 1e9:.0f} GB reserved for the CUDA context, communication "
        "and fragmentation, and ZeRO-3's gathered weights), GB = 10^9 bytes"
        + ("; ! = does not fit" if ns.include_unfit else "")
    )
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from dsim.cli.simulate import cmd_simulate, refuse_without_source
    from dsim.cost.plan import plan_serving

    if ns.rate is not None or ns.trace is not None:
        return cmd_simulate(ns)
    refuse_without_source(ns)
    ns.gpus = 16 if ns.gpus is None else ns.gpus
    ns.phase = ns.phase or "decode"
    ns.cache_hit = 0.0 if ns.cache_hit is None else ns.cache_hit
    args = load_model(ns.model)
    if ns.phase == "decode":
        context = min(4096, args.max_seq_len - 1) if ns.context is None else ns.context
        check_length(args, "--context (the cached tokens and the new one)", context + 1)
        prompt = default_length(args, ns.prompt)
    else:
        prompt = default_length(args, ns.prompt)
        check_length(args, "--prompt", prompt)
        context = default_length(args, ns.context)
    ep = ns.ep
    if ep is None and args.is_moe:  # the most GPUs that divide both the GPUs and the experts
        ep = math.gcd(ns.gpus, args.n_routed_experts + ns.redundant_experts)
    p = plan_serving(
        args,
        ns.gpu,
        ns.phase,
        ns.gpus,
        ep=ep,
        tp=ns.tp,
        batch=ns.batch,
        context=context,
        prompt=prompt,
        cache_hit=ns.cache_hit,
        dtype=ns.dtype,
        kv_dtype=ns.kv_dtype,
        redundant_experts=ns.redundant_experts,
        overlap=not ns.no_overlap,
        latency_target=None if ns.latency_ms is None else ns.latency_ms / 1e3,
        price_per_gpu_hour=ns.price,
    )
    if ns.json:
        print_json(p.to_dict())
        return 0
    unit = "input tokens (cache hits included)" if p.phase == "prefill" else "output tokens"
    print(
        f"{p.model} {p.phase} on {p.n_gpus} x {p.gpu}: attention tp {p.tp} x dp {p.dp}, "
        f"experts ep {p.ep} "
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
            f"{p.exposed['expert'] * 1e3:.1f}, tensor-parallel all-reduce "
            f"{p.exposed['tensor'] * 1e3:.1f})",
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
    rows.append(["", "GB = 10^9 bytes"])
    print(table(rows, None, "ll"))
    return 0
