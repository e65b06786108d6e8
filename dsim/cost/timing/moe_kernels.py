"""The kernels of the MoE layer: dsim.model.Gate and Experts.forward_grouped, as PyTorch runs them.

Each memory-bound kernel is written as the aten op it runs and the tensors it reads and writes
(`KernelModel.io`), named as a profiler trace shows them: T tokens, D dim, I moe_inter_dim,
E n_routed_experts, K n_activated_experts, N = T*K token copies. The kernels and their counts
follow an eager trace of the layer on an H100; the bytes are the sizes of the tensors each kernel
moves, and where one is counted at another size than its own (the renormalisation's sums, the gate
backward's nine tiny kernels) its name says so.
"""

from __future__ import annotations

from dsim.cost.timing.kernels import BF16, F32, I32, I64, Kernel, KernelModel, expert_load


def gate_kernels(
    x: KernelModel,
    T: int,
    D: int,
    E: int,
    K: int,
    renormalize: bool,
    backward: bool,
    prefix: str = "gate.",
) -> list[Kernel]:
    """dsim.model.Gate (softmax, no groups): fp32 router, scores, top-k, combine weights.

    The kernels of an eager trace, each with the tensors it moves (T tokens, D dim,
    E n_routed_experts, K n_activated_experts); the L2 absorbs only the writes of the fp32 copy of
    x and, backward, of the bf16 dx (the constants were fitted so)."""
    p = prefix
    TD, TE, TK = T * D, T * E, T * K
    ks = [
        # aten._to_copy: logits = F.linear(x.float(), weight.float())
        x.io(p + "x.float()", read={"x bf16 [T,D]": BF16 * TD},
             write={"x fp32 [T,D]": F32 * TD}, kind="strided", elements=TD),
        x.io(p + "weight.float()", read={"W bf16 [E,D]": BF16 * E * D},
             write={"W fp32 [E,D]": F32 * E * D}, kind="strided", elements=E * D, l2_writes=False),
        x.gemm(p + "logits = x @ W^T (fp32)", T, E, D, dtype="fp32"),
        # aten._softmax
        x.io(p + "softmax", read={"logits fp32 [T,E]": F32 * TE},
             write={"scores fp32 [T,E]": F32 * TE}, l2_writes=False),
        # aten.add: choice = scores + bias
        x.io(p + "scores + bias", read={"scores fp32 [T,E]": F32 * TE, "bias fp32 [E]": F32 * E},
             write={"choice fp32 [T,E]": F32 * TE}, l2_writes=False),
        # aten.topk: two kernels (a radix select per row, then a sort of the k it keeps)
        x.io(p + "topk (select, sort the k)", read={"choice fp32 [T,E]": F32 * TE},
             write={"top-k values fp32 [T,K]": F32 * TK, "indices int64 [T,K]": I64 * TK},
             kind="topk", count=2, elements=TE, l2_writes=False),
        # aten.gather: weights = scores.gather(1, indices)
        x.io(p + "gather weights",
             read={"indices int64 [T,K]": I64 * TK, "scores fp32 [T,K] (gathered)": F32 * TK},
             write={"weights fp32 [T,K]": F32 * TK}, l2_writes=False),
    ]  # fmt: skip
    if renormalize:
        # aten.sum (keepdim), aten.div: the sums [T,1] are counted at [T,K], written and read
        ks.append(x.io(p + "renormalise (sum, divide)",
                       read={"weights fp32 [T,K] (sum)": F32 * TK,
                             "weights fp32 [T,K] (divide)": F32 * TK,
                             "sums fp32 [T,K] (divide)": F32 * TK},
                       write={"sums fp32 [T,K] (sum)": F32 * TK,
                              "weights fp32 [T,K] (divide)": F32 * TK},
                       count=2, l2_writes=False))  # fmt: skip
    # aten.mul: weights * route_scale
    ks.append(x.io(p + "x route_scale", read={"weights fp32 [T,K]": F32 * TK},
                   write={"weights fp32 [T,K]": F32 * TK}, l2_writes=False))  # fmt: skip
    if backward:
        ks += [
            # the backward of the combine weights: aten._to_copy (bf16 -> fp32), aten.mul
            # (route_scale), and of the renormalisation aten.div x2, aten.neg, aten.mul, aten.div,
            # aten.sum, aten.add: nine tiny kernels, each charged one fp32 [T,K] tensor
            x.io(p + "d(weights to bf16, x route_scale, renormalise)", read={},
                 write={"d weights fp32 [T,K] (x9 kernels)": 9 * F32 * TK},
                 count=9, l2_writes=False),
            # aten.new_zeros, aten.scatter_add: the backward of the gather
            x.io(p + "d gather (zeros + scatter_add)",
                 read={"indices int64 [T,K]": I64 * TK, "d weights fp32 [T,K]": F32 * TK},
                 write={"d scores fp32 [T,E] (zeros)": F32 * TE,
                        "d scores fp32 [T,K] (scatter_add)": F32 * TK},
                 count=2, l2_writes=False),
            # aten._softmax_backward_data
            x.io(p + "d softmax", read={"d scores fp32 [T,E]": F32 * TE,
                                        "scores fp32 [T,E]": F32 * TE},
                 write={"d logits fp32 [T,E]": F32 * TE}, l2_writes=False),
            x.gemm(p + "dW = dlogits^T @ x (fp32)", E, D, T, dtype="fp32"),
            x.gemm(p + "dx = dlogits @ W (fp32)", T, D, E, dtype="fp32"),
            # aten._to_copy x2: the gradients back to the bf16 of x and of the weight
            x.io(p + "dW, dx to bf16",
                 read={"dW fp32 [E,D]": F32 * E * D, "dx fp32 [T,D]": F32 * TD},
                 write={"dW bf16 [E,D]": BF16 * E * D, "dx bf16 [T,D]": BF16 * TD},
                 count=2, l2_writes=("dx bf16 [T,D]",)),
        ]  # fmt: skip
    return ks


def moe_kernels(x: KernelModel, s: dict, backward: bool) -> list[Kernel]:
    """dsim.model.MoE (no shared experts): the gate, then Experts.forward_grouped, kernel by kernel.

    Sort the N = T*K (token, expert) pairs by expert; gather the tokens' rows (x[rows]); grouped
    GEMMs w1, w3, SiLU(h1)*h3, w2; gather the rows back into pair order (ys[inverse]); weighted sum
    over the K experts of each token. The backward gathers too (kernels.py's _Permute), with no
    scatter-add. Each memory-bound kernel names the aten op and the tensors it moves."""
    T, D, I = s["tokens"], s["dim"], s["moe_inter_dim"]
    E, K = s["n_routed_experts"], s["n_activated_experts"]
    N = T * K  # token copies (rows of the grouped GEMMs)
    ND, NI, TD = N * D, N * I, T * D
    ks_gate_fwd = gate_kernels(x, T, D, E, K, s["renormalize"], False)
    # aten._to_copy: weights.type_as(x)
    ks = ks_gate_fwd + [x.io("gate.weights to bf16", read={"weights fp32 [T,K]": F32 * N},
                             write={"weights bf16 [T,K]": BF16 * N}, l2_writes=False)]  # fmt: skip
    _, active, mean_rows = expert_load(T, K, E, 64)
    tiles = lambda bm: expert_load(T, K, E, bm)[0]  # noqa: E731
    per_expert = N / E

    def grouped(name: str, n: int, k: int) -> Kernel:
        return x.grouped(name, tiles, N, n, k, E, active, per_expert)

    ks += [
        x.sort("experts.argsort(expert ids)", N),
        # aten.arange, aten.index_put_: inverse[order] = arange(N)
        x.io("experts.inverse[order] = arange",
             read={"order int64 [N]": I64 * N, "arange int64 [N]": I64 * N},
             write={"arange int64 [N]": I64 * N, "inverse int64 [N]": I64 * N},
             count=2, l2_writes=False),
        # aten.new_zeros, aten.ones_like, aten.scatter_add_: tokens per expert
        x.io("experts.counts (zeros, ones, scatter_add)",
             read={"expert ids int64 [N]": I64 * N, "ones int64 [N]": I64 * N},
             write={"counts int64 [E]": I64 * E, "ones int64 [N]": I64 * N},
             count=3, l2_writes=False),
        # aten.floor_divide
        x.io("experts.rows = order // K", read={"order int64 [N]": I64 * N},
             write={"rows int64 [N]": I64 * N}, l2_writes=False),
        x.gather("experts.xs = x[rows]", N, D, T),
        # aten.cumsum(counts, dtype=int32) before each of the three grouped GEMMs: the cast to int32
        # and the scan's two kernels
        x.io("experts.offsets = cumsum(counts) (x3)", read={"counts int64 [E] (x3)": 3 * I64 * E},
             write={"counts int32 [E] (x3)": 3 * I32 * E, "offsets int32 [E] (x3)": 3 * I32 * E},
             count=9, l2_writes=False),
        grouped("experts.h1 = xs @ w1", I, D),
        # aten.silu
        x.io("experts.silu(h1)", read={"h1 bf16 [N,I]": BF16 * NI},
             write={"silu(h1) bf16 [N,I]": BF16 * NI}),
        grouped("experts.h3 = xs @ w3", I, D),
        # aten.mul
        x.io("experts.silu(h1) * h3",
             read={"silu(h1) bf16 [N,I]": BF16 * NI, "h3 bf16 [N,I]": BF16 * NI},
             write={"h bf16 [N,I]": BF16 * NI}),
        grouped("experts.ys = h @ w2", D, I),
        x.gather("experts.ys[inverse]", N, D, N),
        # aten.mul, broadcast [T,K,D] * [T,K,1]
        x.io("experts.ys * weights",
             read={"ys bf16 [T,K,D]": BF16 * ND, "weights bf16 [T,K]": BF16 * N},
             write={"weighted ys bf16 [T,K,D]": BF16 * ND}, kind="strided", elements=ND),
        # aten.sum over dim 1
        x.io("experts.sum over the K experts", read={"weighted ys bf16 [T,K,D]": BF16 * ND},
             write={"y bf16 [T,D]": BF16 * TD}, kind="reduce", elements=ND),
    ]  # fmt: skip
    if backward:
        ks += [
            # aten.mul, broadcast: d ys = dy [T,1,D] * weights [T,K,1]
            x.io("experts.d ys = dy * weights",
                 read={"dy bf16 [T,D]": BF16 * TD, "weights bf16 [T,K]": BF16 * N},
                 write={"d ys bf16 [T,K,D]": BF16 * ND}, kind="strided", elements=ND),
            # aten.mul, then aten.sum over D: the gradient of the combine weights
            x.io("experts.d weights: dy * ys",
                 read={"dy bf16 [T,D]": BF16 * TD, "ys bf16 [T,K,D]": BF16 * ND},
                 write={"dy * ys bf16 [T,K,D]": BF16 * ND}, kind="strided", elements=ND),
            x.io("experts.d weights: sum over D", read={"dy * ys bf16 [T,K,D]": BF16 * ND},
                 write={"d weights bf16 [T,K]": BF16 * N}, l2_writes=False),
            x.gather("experts.d ys[inverse] = d ys[order]", N, D, N),
            x.grouped_wgrad("experts.dw2 = h^T @ dys", N, I, D, E, active, mean_rows),
            grouped("experts.dh = dys @ w2^T", I, D),
            # aten.mul x2: d silu(h1) = dh * h3, dh3 = dh * silu(h1)
            x.io("experts.d silu(h1)*h3 (two products)",
                 read={"dh bf16 [N,I] (x2)": 2 * BF16 * NI, "h3 bf16 [N,I]": BF16 * NI,
                       "silu(h1) bf16 [N,I]": BF16 * NI},
                 write={"d silu(h1) bf16 [N,I]": BF16 * NI, "dh3 bf16 [N,I]": BF16 * NI},
                 count=2),
            x.grouped_wgrad("experts.dw3 = xs^T @ dh3", N, D, I, E, active, mean_rows),
            grouped("experts.dxs3 = dh3 @ w3^T", D, I),
            # aten.silu_backward
            x.io("experts.silu backward",
                 read={"d silu(h1) bf16 [N,I]": BF16 * NI, "h1 bf16 [N,I]": BF16 * NI},
                 write={"dh1 bf16 [N,I]": BF16 * NI}),
            x.grouped_wgrad("experts.dw1 = xs^T @ dh1", N, D, I, E, active, mean_rows),
            grouped("experts.dxs1 = dh1 @ w1^T", D, I),
            # aten.add
            x.io("experts.dxs1 + dxs3",
                 read={"dxs1 bf16 [N,D]": BF16 * ND, "dxs3 bf16 [N,D]": BF16 * ND},
                 write={"dxs bf16 [N,D]": BF16 * ND}),
            x.gather("experts.d x[rows]: gather by inverse", N, D, N),
            # aten.sum over dim 1 (_Permute.backward)
            x.io("experts.d x[rows]: sum the K copies", read={"dxs bf16 [T,K,D]": BF16 * ND},
                 write={"dx bf16 [T,D]": BF16 * TD}, kind="reduce", elements=ND),
        ]  # fmt: skip
        ks += gate_kernels(x, T, D, E, K, s["renormalize"], True, "gate.")[len(ks_gate_fwd) :]
        # aten.add
        ks += [x.io("dx = dx_experts + dx_gate",
                    read={"dx experts bf16 [T,D]": BF16 * TD, "dx gate bf16 [T,D]": BF16 * TD},
                    write={"dx bf16 [T,D]": BF16 * TD})]  # fmt: skip
    return ks
