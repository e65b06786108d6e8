"""`dsim params`, `dsim flops` and `dsim memory`: what one model costs in parameters, in FLOPs per
step and in bytes per GPU."""

from __future__ import annotations

import argparse

from dsim.cli.args import UsageError, check_length, default_length, load_model
from dsim.cli.output import gb, human, print_json, table

# Units of a parameter count: the largest that leaves the total at 1 or more.
UNITS = (
    (1e12, "T = 10^12", "trillions"),
    (1e9, "B = 10^9", "billions"),
    (1e6, "M = 10^6", "millions"),
    (1e3, "K = 10^3", "thousands"),
    (1.0, "", "parameters"),
)


def cmd_params(ns: argparse.Namespace) -> int:
    from dsim.cost.params import COMPONENTS, params

    args = load_model(ns.model)
    p = params(args)
    if ns.json:
        print_json(
            {
                "model": args.name,
                "unit": "parameters",
                "total": p.total,
                "total_no_mtp": p.total_no_mtp,
                "active": p.active,
                "active_no_embedding": p.active_no_embedding,
                "mtp": p.mtp,
                "active_mtp": p.active_mtp,
                "breakdown": p.breakdown,
                "active_breakdown": p.active_breakdown,
            }
        )
        return 0
    div, letter, words = next(u for u in UNITS if p.total >= u[0])
    digits = 3 if div > 1 else 0

    def n(x: int) -> str:
        return f"{x / div:,.{digits}f}"

    mtp = args.n_mtp_layers
    rows = [
        [k, n(p.breakdown[k]), n(p.active_breakdown[k])] for k in COMPONENTS if k != "mtp" or mtp
    ]
    if mtp:
        rows.append(["total with MTP", n(p.total), n(p.active + p.active_mtp)])
        rows.append(["total without MTP", n(p.total_no_mtp), n(p.active)])
    else:
        rows.append(["total", n(p.total), n(p.active)])
    unit = f"{words} ({letter})" if letter else words
    print(f"{args.name}: parameters in {unit}, all of them and those one token activates")
    print(table(rows, ["component", "total", "active"]))
    published = " (the published figures count this)" if mtp else ""
    print(
        (
            f"total with MTP: every parameter of the model, its {mtp} MTP module(s) included; "
            f"without MTP: the main model{published}. "
            if mtp
            else "no MTP modules. "
        )
        + f"active: the shared weights and top-{args.n_activated_experts} of the "
        f"{args.n_routed_experts} routed experts; {human(p.active_no_embedding)} without the input "
        "embedding table (the N of 6ND)"
    )
    return 0


def cmd_flops(ns: argparse.Namespace) -> int:
    from dsim.cost.flops import KINDS, flops, six_nd

    args = load_model(ns.model)
    seq_len = default_length(args, ns.seq_len)
    if ns.mode == "decode" and ns.seq_len is None and ns.context is None:
        seq_len = min(seq_len, args.max_seq_len - 1)  # the cache and the new token fit
    if ns.mode == "decode":
        cached = seq_len if ns.context is None else ns.context
        check_length(args, "--seq-len" if ns.context is None else "--context", cached + 1)
    else:
        check_length(args, "--seq-len", seq_len + (ns.context or 0))
    f = flops(args, batch=ns.batch, seq_len=seq_len, mode=ns.mode, context=ns.context)
    br, brc = f.breakdown, f.breakdown_causal
    nd = six_nd(args, f.tokens, ns.mode)
    if ns.json:
        print_json(
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
            }
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
        f"6ND rule of thumb ({'6' if ns.mode == 'train' else '2'} x active non-embedding params "
        "x tokens): "
        f"{human(nd)} ({f.total_causal / nd - 1:+.1%} from the causal count)"
    )
    return 0


def cmd_memory(ns: argparse.Namespace) -> int:
    from dsim.cost.hardware import get_gpu
    from dsim.cost.memory import memory
    from dsim.cost.plan.job import RESERVED_BYTES

    args = load_model(ns.model)
    gpu = get_gpu(ns.gpu)
    seq_len = default_length(args, ns.seq_len)
    check_length(args, "--seq-len", seq_len)
    dp = ns.dp
    if ns.gpus is not None:
        if ns.gpus % (ns.tp * ns.pp):
            raise UsageError(
                f"--tp {ns.tp} x --pp {ns.pp} = {ns.tp * ns.pp} does not divide --gpus {ns.gpus}"
            )
        implied = ns.gpus // (ns.tp * ns.pp)
        if dp is not None and dp != implied:
            raise UsageError(
                f"--tp {ns.tp} x --pp {ns.pp} x --dp {dp} = {ns.tp * ns.pp * dp} "
                f"is not --gpus {ns.gpus}"
            )
        dp = implied
    dp = 1 if dp is None else dp
    est = memory(
        args,
        mode=ns.mode,
        batch=ns.micro_batch,
        seq_len=seq_len,
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
        print_json(
            {
                "model": args.name,
                "gpu": gpu.name,
                "mode": ns.mode,
                "tp": ns.tp,
                "pp": ns.pp,
                "dp": dp,
                "ep": ns.ep,
                "zero": ns.zero,
                "batch": ns.micro_batch,
                "seq_len": seq_len,
                "recompute": ns.recompute,
                "stage": est.stage,
                "bytes": kinds,
                "total_bytes": est.total,
                "gpu_bytes": gpu.hbm_bytes,
                "fits": fits,
                "counts": "model state, activations and KV cache; not the CUDA context, "
                "communication buffers or fragmentation",
            }
        )
        return 0
    print(
        f"{args.name}, {ns.mode}: tp {ns.tp}, pp {ns.pp}, dp {dp}, ep {ns.ep}, ZeRO-{ns.zero}, "
        f"{'micro-batch' if ns.mode == 'train' else 'batch'} {ns.micro_batch} x {seq_len} tokens"
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
        f"{'fits' if fits else 'does NOT fit'} on one {gpu.name} ({gpu.hbm_bytes / 1e9:.0f} GB; "
        "GB = 10^9 bytes) before the CUDA context, communication buffers and fragmentation, "
        f"which `dsim plan` adds ({RESERVED_BYTES / 1e9:.0f} GB per GPU, and ZeRO-3's gathered "
        "weights) to the layout it picks"
    )
    return 0
