#!/usr/bin/env python
"""How fast is dsim's MoE layer? Against Hugging Face transformers and against a dense GEMM.

At two layer sizes (DeepSeek-V2-Lite-like: hidden 2048, moe_inter 1408, 64 experts top-6, 2 shared,
16k tokens; DeepSeek-V3-like: hidden 7168, moe_inter 2048, 256 experts top-8, 1 shared, 8k
tokens), forward and forward+backward, bf16, this measures
  dsim          dsim.model.MoE as the repository has it (expert_impl "grouped");
  dsim:<v>      alternative `Experts.forward_grouped` (variants below): the previous one (v0), two
                other ways to weight and sum, and a what-if with w1 and w3 fused;
  hf:<impl>     transformers' DeepseekV3MoE with each experts implementation this transformers
                offers ("grouped_mm", "batched_mm", "eager", ...), same weights, same routing
                (sigmoid scores, group-limited top-k, as DeepSeek-V3);
  dense         the ceiling: three dense bf16 GEMMs with the routed experts' total FLOPs,
                x[T*K, D] @ [D, I] twice and [T*K, I] @ [I, D] (their backward for fwd+bwd).
Throughput is in TFLOP/s of useful work: 2*3*T*K*D*I (routed) + 2*3*T*D*S*I (S shared experts)
per forward, 3x that for forward+backward; the gate's FLOPs are not counted.
Targets (GitHub issue): dsim >= 1.5x transformers' fwd+bwd throughput, >= 60% of the dense ceiling.

Usage:
  python bench/moe_bench.py --out dsim/data/moe_bench_h100.json          # ~1-2 min on an H100
  python bench/moe_bench.py --device cpu --quick --out /tmp/moe_bench_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timing_measure import Timer, environment, in_bf16  # noqa: E402

from dsim.config import ModelArgs  # noqa: E402
from dsim.model import Experts, MoE, _Permute, grouped_mm  # noqa: E402

# (name, dim, moe_inter_dim, n_routed_experts, n_activated_experts, n_shared_experts,
#  n_expert_groups, n_limited_groups, route_scale, tokens)
SHAPES = [
    ("v2-lite-like", 2048, 1408, 64, 6, 2, 1, 1, 1.0, 16384),
    ("v3-like", 7168, 2048, 256, 8, 1, 8, 4, 2.5, 8192),
]
QUICK_SHAPES = [("tiny", 64, 32, 8, 2, 1, 1, 1, 1.0, 64)]


# ---------------------------------------------------------------------------------------------
# Alternatives to Experts.forward_grouped (same math, other kernels), to keep the fastest.
# ---------------------------------------------------------------------------------------------
def _sorted(indices: torch.Tensor, n_experts: int):
    flat = indices.flatten()
    order = torch.argsort(flat, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = flat.new_zeros(n_experts).scatter_add_(0, flat, torch.ones_like(flat))
    return order, inverse, counts


def variant_v0_index_add(self: Experts, x, indices, weights):
    """dsim before this change: x[token] (backward: sort + scatter-add) and
    index_add_ (atomics) to unpermute."""
    T, K = indices.shape
    flat = indices.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // K
    counts = flat.new_zeros(self.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
    xs = x[token]
    h = F.silu(grouped_mm(xs, self.w1, counts)) * grouped_mm(xs, self.w3, counts)
    ys = grouped_mm(h, self.w2, counts) * weights.flatten()[order, None]
    return torch.zeros_like(x).index_add_(0, token, ys)


def variant_bmm_combine(self: Experts, x, indices, weights):
    """As dsim, but the weighted sum over the K experts as one batched
    GEMM [T, 1, K] x [T, K, D]."""
    T, K = indices.shape
    order, inverse, counts = _sorted(indices, self.n_experts)
    xs = _Permute.apply(x, order // K, inverse, K)
    h = F.silu(grouped_mm(xs, self.w1, counts)) * grouped_mm(xs, self.w3, counts)
    ys = _Permute.apply(grouped_mm(h, self.w2, counts), inverse, order, 1)
    return torch.bmm(weights.unsqueeze(1), ys.view(T, K, -1)).squeeze(1)


def variant_weights_in_h(self: Experts, x, indices, weights):
    """As dsim, but the combine weights multiply h (width I) before w2; then a plain sum over K."""
    T, K = indices.shape
    order, inverse, counts = _sorted(indices, self.n_experts)
    xs = _Permute.apply(x, order // K, inverse, K)
    h = F.silu(grouped_mm(xs, self.w1, counts)) * grouped_mm(xs, self.w3, counts)
    h = h * weights.flatten()[order, None]
    ys = _Permute.apply(grouped_mm(h, self.w2, counts), inverse, order, 1)
    return ys.view(T, K, -1).sum(1)


def variant_w13_fused_whatif(self: Experts, x, indices, weights):
    """What-if (not allowed in dsim: it needs w1 and w3 stored as one [E, 2I, D]
    parameter, as HF stores gate_up_proj): one grouped GEMM for w1 and w3. Measures what
    the separate storage costs."""
    T, K = indices.shape
    order, inverse, counts = _sorted(indices, self.n_experts)
    if not hasattr(self, "_w13"):
        self._w13 = torch.nn.Parameter(torch.cat([self.w1.detach(), self.w3.detach()], dim=1))
    h1, h3 = grouped_mm(_Permute.apply(x, order // K, inverse, K), self._w13, counts).chunk(
        2, dim=-1
    )
    ys = _Permute.apply(grouped_mm(F.silu(h1) * h3, self.w2, counts), inverse, order, 1)
    return (ys.view(T, K, -1) * weights.unsqueeze(-1)).sum(1)


VARIANTS: dict[str, Callable] = {
    "v0_index_add": variant_v0_index_add,
    "bmm_combine": variant_bmm_combine,
    "weights_in_h": variant_weights_in_h,
    "w13_fused_whatif": variant_w13_fused_whatif,
}


# ---------------------------------------------------------------------------------------------
def build_dsim(shape: tuple, device: torch.device) -> MoE:
    name, d, i, e, k, s, g, lg, scale, t = shape
    args = ModelArgs(
        dim=d,
        moe_inter_dim=i,
        n_routed_experts=e,
        n_activated_experts=k,
        n_shared_experts=s,
        n_expert_groups=g,
        n_limited_groups=lg,
        score_func="sigmoid",
        route_norm=True,
        route_scale=scale,
        n_layers=1,
        n_dense_layers=0,
        inter_dim=0,
        name=name,
    )
    return in_bf16(MoE, args, device)


def build_hf(
    shape: tuple, device: torch.device, dsim_moe: MoE | None
) -> tuple[torch.nn.Module, str]:
    """transformers' DeepseekV3MoE with dsim's weights copied in (when the layouts match)."""
    from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    name, d, i, e, k, s, g, lg, scale, t = shape
    cfg = DeepseekV3Config(
        hidden_size=d,
        moe_intermediate_size=i,
        intermediate_size=4 * d,
        n_routed_experts=e,
        num_experts_per_tok=k,
        n_shared_experts=s,
        n_group=g,
        topk_group=lg,
        norm_topk_prob=True,
        routed_scaling_factor=scale,
        hidden_act="silu",
        num_hidden_layers=1,
        first_k_dense_replace=0,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            hf = DeepseekV3MoE(cfg)
    finally:
        torch.set_default_dtype(default)
    note = "weights copied from dsim"
    with torch.no_grad():
        for p in hf.parameters():
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
        try:
            ex = dsim_moe.experts
            hf.gate.weight.copy_(dsim_moe.gate.weight)
            hf.experts.gate_up_proj[:, :i].copy_(ex.w1)  # [E, 2I, D]: gate (w1) then up (w3)
            hf.experts.gate_up_proj[:, i:].copy_(ex.w3)
            hf.experts.down_proj.copy_(ex.w2)  # [E, D, I]
            sh = dsim_moe.shared_experts
            hf.shared_experts.gate_proj.weight.copy_(sh.w1.weight)
            hf.shared_experts.up_proj.weight.copy_(sh.w3.weight)
            hf.shared_experts.down_proj.weight.copy_(sh.w2.weight)
        except Exception as err:  # another transformers layout: random weights
            note = f"random weights ({type(err).__name__}: {str(err)[:120]})"
    return hf, note


def hf_implementations() -> list[str]:
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        found = (
            list(ALL_EXPERTS_FUNCTIONS.keys())
            if hasattr(ALL_EXPERTS_FUNCTIONS, "keys")
            else list(ALL_EXPERTS_FUNCTIONS._global_mapping)
        )
    except Exception:
        found = []
    order = ["grouped_mm", "batched_mm", "eager"]
    return [m for m in order if m in found or m == "eager"] + [m for m in found if m not in order]


def set_hf_impl(hf: torch.nn.Module, impl: str) -> None:
    hf.config._experts_implementation = impl
    hf.experts.config._experts_implementation = impl


def flops(shape: tuple, backward: bool) -> float:
    name, d, i, e, k, s, g, lg, scale, t = shape
    f = 2 * 3 * t * k * d * i + 2 * 3 * t * d * s * i
    return 3 * f if backward else f


def time_module(
    timer: Timer, module: Callable, x: torch.Tensor, backward: bool, params: list
) -> dict:
    if backward:
        g = torch.randn_like(x)

        def fn():
            module(x).backward(g)

        def setup():
            x.grad = None
            for p in params:
                p.grad = None

        return timer.measure(fn, setup, sleep_ms=2.0)

    def fwd():
        with torch.no_grad():
            module(x)

    return timer.measure(fwd, None, sleep_ms=2.0)


def dense_ceiling(timer: Timer, shape: tuple, device: torch.device, backward: bool) -> dict:
    """Three dense GEMMs with the routed experts' FLOPs: [T*K, D]x[D, I] twice, [T*K, I]x[I, D]."""
    name, d, i, e, k, s, g, lg, scale, t = shape
    rows = t * k
    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16, requires_grad=backward)
    h = torch.randn(rows, i, device=device, dtype=torch.bfloat16, requires_grad=backward)
    w1, w3 = (
        torch.randn(i, d, device=device, dtype=torch.bfloat16, requires_grad=backward)
        for _ in range(2)
    )
    w2 = torch.randn(d, i, device=device, dtype=torch.bfloat16, requires_grad=backward)
    if backward:
        gi, gd = (
            torch.randn(rows, i, device=device, dtype=torch.bfloat16),
            torch.randn(rows, d, device=device, dtype=torch.bfloat16),
        )

        def fn():
            F.linear(x, w1).backward(gi)
            F.linear(x, w3).backward(gi)
            F.linear(h, w2).backward(gd)

        def setup():
            for p in (x, h, w1, w2, w3):
                p.grad = None

        res = timer.measure(fn, setup, sleep_ms=2.0)
    else:
        res = timer.measure(lambda: (F.linear(x, w1), F.linear(x, w3), F.linear(h, w2)), None)
    f = 2 * 3 * rows * d * i * (3 if backward else 1)
    return {**res, "tflops": f / res["time_s"] / 1e12}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    torch.manual_seed(0)
    timer = Timer(device, a.quick)
    env = environment(device)
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception:
        env["transformers"] = None
    start = time.time()
    results: list[dict] = []
    impls = [] if a.no_hf else hf_implementations()
    print(
        f"moe_bench on {env['device_name']}: torch {env['torch']}, "
        f"transformers {env['transformers']}, "
        f"hf experts implementations {impls}",
        flush=True,
    )

    for shape in QUICK_SHAPES if a.quick else SHAPES:
        name, d, i, e, k, s, g, lg, scale, t = shape
        print(
            f"[{time.time() - start:5.1f}s] {name}: T={t} D={d} I={i} E={e} top-{k} shared={s}",
            flush=True,
        )
        row: dict[str, Any] = dict(
            shape=dict(
                name=name,
                tokens=t,
                dim=d,
                moe_inter_dim=i,
                n_routed_experts=e,
                n_activated_experts=k,
                n_shared_experts=s,
                n_expert_groups=g,
                n_limited_groups=lg,
            ),
            runs={},
        )
        for bwd in (False, True):
            row["runs"][f"dense{'_fwdbwd' if bwd else ''}"] = dense_ceiling(
                timer, shape, device, bwd
            )
        x = torch.randn(t, d, device=device, dtype=torch.bfloat16)
        moe = build_dsim(shape, device)
        with torch.no_grad():
            y_ref = moe(x).float()
        for label, patch in [("dsim", None)] + [(f"dsim:{v}", f) for v, f in VARIANTS.items()]:
            if patch is not None:
                moe.experts.forward_grouped = patch.__get__(moe.experts)
                with torch.no_grad():
                    err = ((moe(x).float() - y_ref).norm() / y_ref.norm()).item()
            else:
                err = 0.0
            for bwd in (False, True):
                xx = x.clone().requires_grad_(bwd)
                try:
                    r = time_module(timer, moe, xx, bwd, list(moe.parameters()))
                    r.update(tflops=flops(shape, bwd) / r["time_s"] / 1e12, rel_err_vs_dsim=err)
                except Exception as ex:
                    r = dict(error=f"{type(ex).__name__}: {str(ex)[:300]}")
                row["runs"][label + ("_fwdbwd" if bwd else "")] = r
            if patch is not None:
                del moe.experts.forward_grouped
                if hasattr(moe.experts, "_w13"):
                    del moe.experts._w13
            print(
                f"    {label:18} fwd {row['runs'][label].get('tflops', float('nan')):6.1f}  "
                f"fwd+bwd "
                f"{row['runs'][label + '_fwdbwd'].get('tflops', float('nan')):6.1f} TFLOP/s",
                flush=True,
            )
        hf = None
        for impl in impls:
            try:
                if hf is None:
                    moe.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    hf, note = build_hf(shape, device, moe)
                    row["hf_weights"] = note
                    if device.type == "cuda":
                        del moe
                        moe = None
                        torch.cuda.empty_cache()
                set_hf_impl(hf, impl)
                if impl == "batched_mm" and t * k * 3 * d * i * 2 > 20e9:
                    raise MemoryError(
                        f"batched_mm gathers one weight copy per (token, expert): "
                        f"{t * k * 3 * d * i * 2 / 1e9:.0f} GB at this size"
                    )
                with torch.no_grad():
                    err = (
                        (hf(x.view(1, t, d)).float().view(t, d) - y_ref).norm() / y_ref.norm()
                    ).item()
                for bwd in (False, True):
                    xx = x.view(1, t, d).clone().requires_grad_(bwd)
                    r = time_module(timer, hf, xx, bwd, list(hf.parameters()))
                    r.update(tflops=flops(shape, bwd) / r["time_s"] / 1e12, rel_err_vs_dsim=err)
                    row["runs"][f"hf:{impl}" + ("_fwdbwd" if bwd else "")] = r
                print(
                    f"    hf:{impl:15} fwd {row['runs'][f'hf:{impl}']['tflops']:6.1f}  fwd+bwd "
                    f"{row['runs'][f'hf:{impl}_fwdbwd']['tflops']:6.1f} TFLOP/s  "
                    f"(output vs dsim: rel. err {err:.1e})",
                    flush=True,
                )
            except Exception as ex:
                for suffix in ("", "_fwdbwd"):
                    row["runs"][f"hf:{impl}{suffix}"] = dict(
                        error=f"{type(ex).__name__}: {str(ex)[:300]}"
                    )
                print(
                    f"    hf:{impl:15} unavailable: {type(ex).__name__}: {str(ex)[:150]}",
                    flush=True,
                )
        hf = moe = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["summary"] = summarize(row["runs"])
        print("    " + json.dumps(row["summary"]), flush=True)
        results.append(row)

    data = dict(
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        env=env,
        quick=a.quick,
        flops_definition=(
            "2*3*T*K*D*I routed + 2*3*T*D*S*I shared per forward; x3 for forward+backward; "
            "gate not counted"
        ),
        results=results,
    )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"moe_bench: wrote {out} in {time.time() - start:.0f}s", flush=True)
    return 0


def summarize(runs: dict[str, dict]) -> dict[str, Any]:
    """dsim's best (as committed) against the fastest transformers
    implementation and the dense ceiling."""
    out: dict[str, Any] = {}
    for suffix, tag in (("", "fwd"), ("_fwdbwd", "fwdbwd")):
        dsim = runs.get("dsim" + suffix, {}).get("tflops")
        hf = {
            k[3 : len(k) - len(suffix)]: v["tflops"]
            for k, v in runs.items()
            if k.startswith("hf:")
            and k.endswith(suffix)
            and (suffix or not k.endswith("_fwdbwd"))
            and "tflops" in v
        }
        variants = {
            k[: len(k) - len(suffix)]: v["tflops"]
            for k, v in runs.items()
            if k.startswith("dsim")
            and k.endswith(suffix)
            and (suffix or not k.endswith("_fwdbwd"))
            and "tflops" in v
        }
        dense = runs.get("dense" + suffix, {}).get("tflops")
        best_hf = max(hf.items(), key=lambda kv: kv[1]) if hf else (None, None)
        out[tag] = dict(
            dsim_tflops=dsim,
            best_hf=best_hf[0],
            best_hf_tflops=best_hf[1],
            dense_tflops=dense,
            speedup_vs_best_hf=dsim / best_hf[1] if dsim and best_hf[1] else None,
            speedup_vs_hf={m: dsim / v for m, v in hf.items()} if dsim else {},
            fraction_of_dense=dsim / dense if dsim and dense else None,
            fastest_dsim_variant=max(variants.items(), key=lambda kv: kv[1])[0]
            if variants
            else None,
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
