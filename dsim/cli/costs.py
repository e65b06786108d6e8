"""`dsim params`, `dsim flops` and `dsim memory`: what one model costs in parameters, in FLOPs per
step and in bytes per GPU."""

from __future__ import annotations

import argparse

from dsim.cli.args import UsageError, load_model, load_model_args
from dsim.cli.output import gb, human, print_json, table


def cmd_params(ns: argparse.Namespace) -> int:
    from dsim.cost import params

    args = load_model_args(ns.model)
    p = params(args)
    if ns.json:
        print_json(
            {
                "model": args.name,
                "total": p.total,
                "total_no_mtp": p.total_no_mtp,
                "active": p.active,
                "active_no_embedding": p.active_no_embedding,
                "mtp": p.mtp,
                "breakdown": p.breakdown,
                "active_breakdown": p.active_breakdown,
            }
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
                f"--tp {ns.tp} x --pp {ns.pp} x --dp {dp} = {ns.tp * ns.pp * dp} "
                f"is not --gpus {ns.gpus}"
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
                "recompute": ns.recompute,
                "stage": est.stage,
                "bytes": kinds,
                "total_bytes": est.total,
                "gpu_bytes": gpu.hbm_bytes,
                "fits": fits,
            }
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
