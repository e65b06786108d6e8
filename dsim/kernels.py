"""The expert dispatch kernels of dsim.model's MoE layer, kept apart as DeepSeek-V3 keeps its
kernels in kernel.py: a gather whose backward is a gather too (`_Permute`), and a grouped GEMM
that runs every expert's rows in one call (`grouped_mm`).

Shapes: T tokens, K activated experts per token, E routed experts, N = T*K (token, expert) pairs.
"""

from __future__ import annotations

import torch


# ANCHOR: permute
class _Permute(torch.autograd.Function):
    """out[i] = x[rows[i]], where each row of x appears k times in rows (out has k * len(x) rows)
    and `inverse` is the inverse permutation of the copies. The gradient of a gather is a
    scatter-add; here it is a gather as well: grad[inverse], then the sum of each row's k copies (no
    atomics, deterministic).
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, rows: torch.Tensor, inverse: torch.Tensor, k: int
    ) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        grad = grad[inverse]
        if ctx.k > 1:
            grad = grad.view(-1, ctx.k, grad.shape[-1]).sum(1)
        return grad, None, None, None
        # ANCHOR_END: permute


def _grouped_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch._grouped_mm needs bf16 on a Hopper GPU (or newer), 16-byte aligned strides."""
    return (
        hasattr(torch, "_grouped_mm")
        and x.is_cuda
        and x.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(x.device)[0] >= 9
        and x.shape[-1] % 8 == 0
        and w.shape[1] % 8 == 0
    )


def grouped_mm(xs: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of xs sorted by expert, counts[e] rows for expert e: returns xs_e @ w[e]^T for every e.

    xs: [N, in], w: [E, out, in], counts: [E] -> [N, out]
    """
    if _grouped_mm_ok(xs, w):
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        return torch._grouped_mm(xs, w.transpose(-2, -1), offs=offs)
    # Padded batched GEMM: scatter the rows into [E, max_count, in], one bmm, gather back.
    E, N = w.shape[0], xs.shape[0]
    if N == 0:
        return xs.new_zeros(0, w.shape[1])
    cap = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    expert = torch.repeat_interleave(torch.arange(E, device=xs.device), counts)  # [N]
    slot = torch.arange(N, device=xs.device) - starts[expert]
    padded = xs.new_zeros(E, cap, xs.shape[1]).index_put_((expert, slot), xs)
    out = torch.bmm(padded, w.transpose(-2, -1))  # [E, cap, out]
    return out[expert, slot]
