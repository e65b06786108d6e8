"""Feed-forward ops: the dense SwiGLU MLP, and the MoE (gate, routed experts, shared experts)."""

from __future__ import annotations

from dsim.cost.components import Component
from dsim.cost.graph.ops import (
    C,
    Ctx,
    GraphOp,
    Item,
    cached_bytes,
    elementwise,
    ew,
    linear,
    make_op,
    matmul_flops,
)


def swiglu_items(item: str, rows: int, inter: int, e: int, in_moe: bool) -> list[Item]:
    """What SwiGLU keeps on [rows, inter]: w1 x (for silu) and w3 x, silu(w1 x) (for the
    product) and the product (w2's input). DeepSeek-V3 (sec. 3.3.3) caches the SwiGLU inputs of
    the MoE in fp8 and recomputes its output in the backward ("swiglu_recompute"); the product is
    a Linear input (fp8) everywhere. "dense_swiglu" treats a dense FFN's SwiGLU the same way."""
    n = rows * inter
    option = "swiglu_recompute" if in_moe else "dense_swiglu"
    inputs = cached_bytes(2 * n)
    return [
        Item(
            f"{item}: w1 x, w3 x",
            2 * n * e,
            fp8_bytes=inputs if in_moe else None,
            option=option,
            option_bytes=inputs,
        ),
        Item(f"{item}: silu(w1 x)", n * e, option=option),
        Item(f"{item}: product", n * e, fp8_bytes=cached_bytes(n), option=option),
    ]


def swiglu(
    c: Ctx, module: str, comp: Component, inter: int, label: str, item: str
) -> list[GraphOp]:
    """w2(silu(w1 x) * w3 x) on [T, D] -> [T, inter] -> [T, D]. It keeps w1 x (for silu),
    silu(w1 x) and w3 x (for the product) and the product (for w2); its input is counted by
    whoever produced it."""
    T, D = c.T, c.args.dim
    kept = swiglu_items(item, T, inter, c.e, comp != C.DENSE_FFN)
    return [
        linear(c, f"{module}.w1", comp, T, inter, D, label=f"{label}w1"),
        linear(c, f"{module}.w3", comp, T, inter, D, label=f"{label}w3"),
        elementwise(c, f"{label}silu(h1) * h3", module, comp, 10 * T * inter, 2, kept),
        linear(c, f"{module}.w2", comp, T, D, inter, label=f"{label}w2"),
    ]


def _gate(c: Ctx) -> GraphOp:
    """The router: float32 logits [T, E] = x W_g^T, scores, top-K indices and combine weights.
    Its time is part of the experts' `moe_ffn` op."""
    a, T, D, e = c.args, c.T, c.args.dim, c.e
    E, K = a.n_routed_experts, a.n_activated_experts
    held = dict(outside_autograd=True)  # MoE.routing holds these
    kept = []
    if e != 4:  # the gate runs in float32: F.linear(x.float(), weight.float()) keeps both copies
        kept += [
            Item("gate input float32", T * D * 4, True),
            Item("gate weight float32", E * D * 4),
        ]
    kept += [
        Item("gate logits float32 (held by MoE.routing)", T * E * 4, **held),
        Item("gate scores float32 (softmax/sigmoid output)", T * E * 4, **held),
        Item("gate top-k indices int64", T * K * 8, **held),
    ]
    if a.renormalize:
        kept.append(Item("gate top-k scores and their sum (renormalisation)", T * K * 4 + T * 4))
    kept.append(Item("gate combine weights float32 (held by MoE.routing)", T * K * 4, **held))
    if a.capacity_factor > 0:
        kept.append(Item("capacity keep-mask (bool)", T * K))
    io = dict(reads={"x": T * D * 4, "weight": E * D * 4}, writes={"logits": T * E * 4})  # float32
    f = matmul_flops(c, 2 * T * E * D)
    return make_op(c, "gate", f"{c.block}.ffn.gate", C.GATE, flops=f, saved=kept, **io)


def _experts(c: Ctx) -> GraphOp:
    """The routed experts: N = T K (token, expert) rows [N, D] -> [N, moe_inter] -> [N, D], then the
    weighted sum over each token's K experts. Carries the time model's `moe_ffn` (gate included)."""
    a, T, D, e = c.args, c.T, c.args.dim, c.e
    E, K, I = a.n_routed_experts, a.n_activated_experts, a.moe_inter_dim
    N = T * K
    fused = "fused_combine"  # the combine weight applied inside the expert: no N x D rows kept
    kept = [
        Item("experts: gathered input rows", N * D * e, fp8_bytes=cached_bytes(N * D)),
        *swiglu_items("experts", N, I, e, True),
        Item("experts: output rows and combine weight", N * D * e + N * e, option=fused),
        Item("experts: weighted rows (kept by index_add_)", N * D * e, option=fused),
        Item("experts: token/slot indices int64", N * 16),
    ]
    weights = min(E, N) * 3 * D * I * e  # the experts that get a row: at most min(E, N)
    io = dict(
        reads={"x rows": N * D * e, "w1, w2, w3 (experts hit)": weights}, writes={"y": T * D * e}
    )
    shape = dict(
        tokens=T,
        dim=D,
        moe_inter_dim=I,
        n_routed_experts=E,
        n_activated_experts=K,
        renormalize=a.renormalize,
    )
    time = [("moe (gate + routed experts)", "moe_ffn", shape)]
    if a.expert_bias:  # gpt-oss: b1, b3 [E, I] and b2 [E, D] gathered for each row, then added
        # per bias: write the gathered rows, then the add reads two and writes one (a seventh
        # kernel gathers the rows' expert ids again for b2: N int64, left out of the bytes)
        time.append(ew("experts: biases (gather + add)", 4 * N * (2 * I + D) * e, 7))
    if a.swiglu_limit:  # gpt-oss: clamp gate and up, then (up + 1) * gate * sigmoid(1.702 gate)
        # seven kernels (two clamps, scale, sigmoid, two products, add one) where SwiGLU runs two:
        # the passes beyond those moe_ffn times (silu(h1) reads one and writes one, * h3 three)
        time.append(ew("experts: clamped SwiGLU (beyond silu * up)", (16 - 5) * N * I * e, 5))
    f = matmul_flops(c, 6 * N * D * I)  # three D x moe_inter matmuls per row
    m = f"{c.block}.ffn.experts"
    return make_op(c, "experts", m, C.ROUTED_EXPERTS, time, flops=f, saved=kept, **io)


def moe(c: Ctx) -> list[GraphOp]:
    """DeepSeekMoE: gate, routed experts and the shared experts (an MLP of n_shared x moe_inter)."""
    a, p = c.args, f"{c.block}.ffn"
    if not a.n_shared_experts:
        return [_gate(c), _experts(c)]
    inter, S = a.n_shared_experts * a.moe_inter_dim, C.SHARED_EXPERTS
    shared = swiglu(c, f"{p}.shared_experts", S, inter, "shared ", "shared_experts")
    if a.shared_expert_gate:  # Qwen2-MoE: sigmoid(x w) [T, 1] scales the shared output
        kept = [Item("shared gate: sigmoid output", c.T * c.e)]
        shared += [
            linear(c, f"{p}.shared_gate", S, c.T, 1, a.dim),
            elementwise(c, "sigmoid(gate) * shared", p, S, 4 * c.T * a.dim * c.e, 2, kept),
        ]
    add = elementwise(c, "routed + shared", p, S, 6 * c.T * a.dim)
    return [_gate(c), _experts(c), *shared, add]
