"""Times of ops and collectives for one model on one GPU, each computed once (memoised).

Every time comes from the cost modules, never from a formula re-derived here: compute from
dsim.cost.timing (`op_time`, and `op_kernels` for the MoE layer) with the GPU's calibration,
communication from dsim.cost.comm (`collective_time`, `moe_dispatch_time`). Training (`Tables`) and
serving (`Serving`) share them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from dsim.config import ModelArgs
from dsim.cost import comm, timing
from dsim.cost.components import Component
from dsim.cost.hardware import GPU
from dsim.cost.memory import bytes_per_param
from dsim.cost.plan.job import FP8_COMPONENTS, SELECTIVE_LABELS, node_limit
from dsim.cost.timing import PlanOp, op_kernels, op_time


class OpTimes:
    """Times of ops and collectives for one model on one GPU, each computed once (memoised).

    Compute is returned as arrays [f, fb, w, sel]: forward seconds, forward + backward, the
    weight-gradient part of the backward, and what selective recomputation runs again."""

    def __init__(self, args: ModelArgs, gpu: GPU, calibration: timing.Calibration | None):
        self.args, self.gpu = args, gpu
        self.cal = calibration or timing.gpu_calibration(gpu)
        self._memo: dict[tuple, Any] = {}

    def memo(self, key: tuple, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def _op(self, p: PlanOp, dtype: str, backward: bool) -> float:
        key = ("op", p.op, dtype, backward, tuple(sorted(p.shape.items())))
        return self.memo(key, lambda: op_time(p.op, self.gpu, dtype, backward, self.cal, **p.shape))

    def _quant(self, elements: int, backward: bool, component: Component) -> float:
        """One pass that quantises a GEMM input to fp8: read bf16, write fp8 (3 bytes per
        element)."""
        shape = dict(bytes=3 * int(elements), kernels=1)
        p = PlanOp(component, "quantize", "elementwise", shape, backward)
        return self._op(p, "bf16", backward)

    def sum_ops(self, ops: Iterable[PlanOp], dt: str) -> np.ndarray:
        """[forward, forward + backward, weight-gradient part, selective recomputation] of a list of
        ops (an op's backward counts only when the op has backward=True)."""
        f = fb = w = sel = 0.0
        for p in ops:
            d = (
                "fp8"
                if (dt == "fp8" and p.op == "gemm" and p.component in FP8_COMPONENTS)
                else "bf16"
            )
            tf = self._op(p, d, False)
            tfb = self._op(p, d, True) if p.backward else tf
            if d == "fp8":
                elems = p.shape["m"] * p.shape["k"] * p.shape.get("batch", 1)
                tf += self._quant(elems, False, p.component)
                tfb += self._quant(elems, p.backward, p.component)
            f, fb = f + tf, fb + tfb
            if p.op == "gemm":
                w += (tfb - tf) / 2  # dW is one of the two backward matmuls
            if p.op == "rmsnorm" or p.label.startswith(SELECTIVE_LABELS):
                sel += tf
        return np.array([f, fb, w, sel])

    def expert_time(
        self, tokens: int, local_experts: int, moe_inter_dim: int, dt: str, train: bool
    ) -> np.ndarray:
        """[f, fb, w, 0] of the routed experts on one GPU: `tokens` local tokens whose top-k copies
        land (balanced) on `local_experts` experts of width moe_inter_dim. The time model's
        `moe_ffn` op routes over these (its n_routed_experts); the router GEMM is corrected to
        score all of the model's n_routed_experts."""

        def build() -> np.ndarray:
            a = self.args
            K, E, D = a.n_activated_experts, a.n_routed_experts, a.dim
            # tokens * K rows over local_experts groups; with fewer local experts than K, keep the
            # rows.
            n = local_experts
            toks, k = (tokens, K) if n >= K else (-(-tokens * K // n), n)
            shape = dict(
                tokens=toks,
                dim=D,
                moe_inter_dim=moe_inter_dim,
                n_routed_experts=local_experts,
                n_activated_experts=k,
                renormalize=a.renormalize,
            )
            res = []
            for backward in (False, True) if train else (False,):
                total, grouped = self.memo(
                    ("moe_ffn", tuple(shape.items()), backward),
                    lambda b=backward: _moe_ffn(
                        op_kernels("moe_ffn", self.gpu, "bf16", b, self.cal, **shape)
                    ),
                )

                def router(m: int, n: int, b: bool = backward) -> float:
                    shape = dict(m=m, n=n, k=D, batch=1)
                    return self._op(PlanOp(Component.GATE, "router", "gemm", shape, b), "fp32", b)

                total += router(tokens, E) - router(toks, local_experts)
                if dt == "fp8":
                    rows = -(-toks * k // local_experts)
                    shp = PlanOp(
                        Component.ROUTED_EXPERTS,
                        "expert gemm",
                        "gemm",
                        dict(m=rows, n=moe_inter_dim, k=D, batch=local_experts),
                        backward,
                    )
                    ratio = self._op(shp, "fp8", backward) / self._op(shp, "bf16", backward)
                    total += grouped * (ratio - 1) + self._quant(
                        toks * k * (D + moe_inter_dim), backward, Component.ROUTED_EXPERTS
                    )
                    grouped *= ratio
                res.append((total, grouped))
            (f, gf), (fb, gfb) = res[0], res[-1]
            return np.array([f, fb, (gfb - gf) / 2, 0.0])

        return self.memo(("experts", tokens, local_experts, moe_inter_dim, dt, train), build)

    def coll(self, kind: str, nbytes: float, n: int, rpn: int) -> float:
        """One collective (dsim.cost.comm.collective_time) over n ranks, rpn of them per node."""
        if n <= 1 or nbytes <= 0:
            return 0.0
        return self.memo(
            ("coll", kind, float(nbytes), n, rpn),
            lambda: comm.collective_time(kind, nbytes, n, self.gpu, rpn),
        )

    def a2a(
        self, tokens: int, ep: int, rpn: int, dt: str, n_routed_experts: int | None = None
    ) -> float:
        """Forward dispatch (fp8 with its scales, or bf16) + combine (bf16) of one MoE block:
        seconds on a GPU that sends `tokens` tokens to ep expert-parallel ranks, rpn of them per
        node; the tokens route over n_routed_experts experts (default the model's; serving with
        redundant experts routes over more)."""
        a = self.args
        if ep == 1 or not a.is_moe:
            return 0.0
        return self.memo(
            ("a2a", tokens, ep, rpn, dt, n_routed_experts),
            lambda: _a2a_time(a, self.gpu, tokens, ep, rpn, dt, n_routed_experts),
        )


def _moe_ffn(kernels: list) -> tuple[float, float]:
    """(all kernels' seconds, the grouped GEMMs' seconds) of the time model's MoE layer."""
    return sum(k.time_s for k in kernels), sum(
        k.time_s for k in kernels if k.kind == "grouped_gemm"
    )


def _a2a_time(
    a: ModelArgs, gpu: GPU, tokens: int, ep: int, rpn: int, dt: str, n_routed_experts: int | None
) -> float:
    """dsim.cost.comm.moe_dispatch_time for the dispatch and the combine, with the node limit of
    group-limited routing when the groups map onto nodes."""
    E = n_routed_experts or a.n_routed_experts
    limit = node_limit(a, max(1, ep // rpn))
    t = 0.0
    for bpe in ((bytes_per_param("fp8") if dt == "fp8" else 2.0), 2.0):
        try:
            t += comm.moe_dispatch_time(
                tokens, a.dim, a.n_activated_experts, E, ep, gpu, rpn, limit, bpe
            )
        except ValueError:  # a node limit the expert counts cannot honour: route without it
            t += comm.moe_dispatch_time(
                tokens, a.dim, a.n_activated_experts, E, ep, gpu, rpn, None, bpe
            )
    return t
