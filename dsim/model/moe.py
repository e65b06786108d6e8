"""Feed-forward layers: the dense SwiGLU MLP, DeepSeek's gate, the routed experts and the MoE
layer that combines them with the shared experts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs
from dsim.kernels import _Permute, grouped_mm


class MLP(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x). Used for dense layers and shared experts."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class Routing:
    """What the gate decided for T tokens; kept on the MoE module for losses and statistics."""

    scores: torch.Tensor  # [T, E] affinities (softmax or sigmoid), before bias and group masking
    indices: torch.Tensor  # [T, K] chosen experts
    weights: torch.Tensor  # [T, K] combine weights (zero where a token was dropped)
    logits: torch.Tensor  # [T, E] raw router logits (for the z-loss)
    dropped: int = 0  # (token, expert) assignments dropped by the capacity limit


class Gate(nn.Module):
    """DeepSeek's router: scores, a bias that steers the choice only, group-limited top-k.

    1. scores s = softmax(x W^T) or sigmoid(x W^T)                        [T, E]
    2. choice scores c = s + bias (bias: the auxiliary-loss-free balancing term, a buffer updated
       outside autograd; zero unless training updates it)
    3. with groups: score each group (sum of its top-2 c, or its max), keep the n_limited_groups
       best, mask the other groups' experts with -inf
    4. top-k over c picks the experts; the combine weights are gathered from s (never from c),
       renormalised if route_norm (sigmoid), times route_scale.

    Softmax over all experts, top-k, then renormalising equals softmax over the top-k logits
    (Mixtral, gpt-oss, DBRX), so one order serves every family. gpt-oss adds a learned bias to the
    logits (`logit_bias`, when args.router_bias), which unlike `bias` enters the weights.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.topk = args.n_activated_experts
        self.n_groups, self.topk_groups = args.n_expert_groups, args.n_limited_groups
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("bias", torch.zeros(args.n_routed_experts, dtype=torch.float32))
        self.logit_bias = (
            nn.Parameter(torch.zeros(args.n_routed_experts)) if args.router_bias else None
        )

    # ANCHOR: gate_forward
    def forward(self, x: torch.Tensor) -> Routing:
        logit_bias = None if self.logit_bias is None else self.logit_bias.float()
        logits = F.linear(x.float(), self.weight.float(), logit_bias)  # [T, E], fp32 as DeepSeek
        scores = logits.softmax(dim=-1) if self.args.score_func == "softmax" else logits.sigmoid()
        choice = scores + self.bias
        if self.n_groups > 1:
            grouped = choice.view(x.size(0), self.n_groups, -1)  # [T, G, E/G]
            if self.args.group_score == "max":
                group_scores = grouped.amax(dim=-1)
            else:
                group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # [T, G]
            keep = group_scores.topk(self.topk_groups, dim=-1)[1]
            dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            choice = grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(1)
        indices = choice.topk(self.topk, dim=-1)[1]  # [T, K]
        weights = scores.gather(1, indices)
        if self.args.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.args.route_scale
        return Routing(scores=scores, indices=indices, weights=weights, logits=logits)
        # ANCHOR_END: gate_forward


class Experts(nn.Module):
    """E routed SwiGLU experts stored as stacked weights, so that a grouped GEMM can run them all.

    w1, w3: [E, I, D]   w2: [E, D, I]   (expert e computes w2[e] (silu(w1[e] x) * w3[e] x))
    With bias (gpt-oss): b1, b3: [E, I] and b2: [E, D] added after each projection. With
    swiglu_limit > 0 (gpt-oss) the activation is the clamped variant (see `act`).
    """

    def __init__(
        self, n_experts: int, dim: int, inter_dim: int, bias: bool = False, swiglu_limit: float = 0
    ):
        super().__init__()
        self.n_experts, self.swiglu_limit = n_experts, swiglu_limit
        self.w1 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        for w in (self.w1, self.w2, self.w3):
            nn.init.normal_(w, std=w.shape[-1] ** -0.5)
        self.b1 = nn.Parameter(torch.zeros(n_experts, inter_dim)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim)) if bias else None
        self.b3 = nn.Parameter(torch.zeros(n_experts, inter_dim)) if bias else None

    def act(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up, or gpt-oss's clamped SwiGLU: gate <= limit, |up| <= limit,
        (up + 1) * gate * sigmoid(1.702 * gate)."""
        limit = self.swiglu_limit
        if limit <= 0:
            return F.silu(gate) * up
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
        return (up + 1) * gate * torch.sigmoid(1.702 * gate)

    def _bias(self, b: torch.Tensor | None, e: int | torch.Tensor) -> torch.Tensor | None:
        return None if b is None else b[e]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x: [n, D] -> [n, D]."""
        gate = F.linear(x, self.w1[e], self._bias(self.b1, e))
        up = F.linear(x, self.w3[e], self._bias(self.b3, e))
        return F.linear(self.act(gate, up), self.w2[e], self._bias(self.b2, e))

    def forward_loop(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The readable reference: for each expert, gather its tokens, run it, scatter-add back."""
        y = torch.zeros_like(x)  # [T, D]
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts).tolist()
        for e in range(self.n_experts):
            if counts[e] == 0:
                continue
            token, slot = torch.where(indices == e)
            y.index_add_(0, token, self.expert(e, x[token]) * weights[token, slot, None])
        return y

    def forward_grouped(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Sort the T*K (token, expert) pairs by expert, run one grouped GEMM per weight, unsort.

        Uses `torch._grouped_mm` where this torch and device support it, else a padded batched GEMM.
        Rows move only by gathers, forward and backward (`_Permute`: no scatter-add, no atomics),
        and nothing here waits for the GPU (no host sync), so the CPU queues the whole layer ahead.
        """
        T, K = indices.shape
        flat = indices.flatten()  # [T*K] expert of each pair
        order = torch.argsort(flat, stable=True)  # pairs sorted by expert
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(T * K, device=order.device)  # where each pair went
        # tokens per expert [E]: a scatter-add, as torch.bincount syncs with the host on CUDA
        counts = flat.new_zeros(self.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
        xs = _Permute.apply(x, order // K, inverse, K)  # [T*K, D] sorted by expert
        gate, up = grouped_mm(xs, self.w1, counts), grouped_mm(xs, self.w3, counts)  # [T*K, I]
        down = grouped_mm(self.act(*self._add_bias(gate, up, flat[order])), self.w2, counts)
        if self.b2 is not None:
            down = down + self.b2[flat[order]]
        ys = _Permute.apply(down, inverse, order, 1)  # [T*K, D] in pair order
        return (ys.view(T, K, -1) * weights.unsqueeze(-1)).sum(1)  # weighted sum over the K experts

    def _add_bias(
        self, gate: torch.Tensor, up: torch.Tensor, expert: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """gate and up projections of sorted rows plus their expert's bias (expert: [T*K])."""
        if self.b1 is None:
            return gate, up
        return gate + self.b1[expert], up + self.b3[expert]

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "grouped"
    ) -> torch.Tensor:
        return (
            self.forward_loop(x, indices, weights)
            if impl == "loop"
            else self.forward_grouped(x, indices, weights)
        )


class MoE(nn.Module):
    """DeepSeekMoE: shared experts that see every token plus routed experts picked by the gate.

    With args.shared_expert_gate (Qwen2-MoE) the shared experts' output is scaled per token by
    sigmoid(shared_gate(x)), shared_gate: [1, D].
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.gate = Gate(args)
        self.experts = Experts(
            args.n_routed_experts, args.dim, args.moe_inter_dim, args.expert_bias, args.swiglu_limit
        )
        self.shared_experts = (
            MLP(args.dim, args.n_shared_experts * args.moe_inter_dim)
            if args.n_shared_experts
            else None
        )
        self.shared_gate = nn.Linear(args.dim, 1, bias=False) if args.shared_expert_gate else None
        self.routing: Routing | None = None

    # ANCHOR: moe_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.args.dim)  # [T, D]
        routing = self.gate(x)
        weights = routing.weights
        if self.args.capacity_factor > 0:
            keep = capacity_mask(
                routing,
                self.args.n_routed_experts,
                self.args.capacity_factor,
                self.args.drop_policy,
            )
            routing.dropped = int((~keep).sum())
            weights = routing.weights = weights * keep
        self.routing = routing
        y = self.experts(x, routing.indices, weights.type_as(x), self.args.expert_impl)
        if self.shared_experts is not None:
            shared = self.shared_experts(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            y = y + shared
        return y.view(shape)
        # ANCHOR_END: moe_forward


def capacity_mask(
    routing: Routing, n_experts: int, capacity_factor: float, policy: str
) -> torch.Tensor:
    """[T, K] bool: which (token, expert) assignments fit in each expert's capacity.

    capacity = ceil(capacity_factor * T * K / E). Over-full experts keep their highest-score
    assignments (policy "score") or their earliest tokens (policy "position").
    """
    T, K = routing.indices.shape
    capacity = math.ceil(capacity_factor * T * K / n_experts)
    flat = routing.indices.flatten()
    if policy == "score":
        priority = routing.scores.gather(1, routing.indices).flatten()  # higher keeps first
    else:
        priority = -torch.arange(
            T * K, device=flat.device, dtype=torch.float32
        )  # earlier keeps first
    # Sort by (expert, -priority); a row's rank inside its expert decides whether it fits.
    order = torch.argsort(priority, descending=True, stable=True)
    order = order[torch.argsort(flat[order], stable=True)]
    counts = torch.bincount(flat, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(T * K, device=flat.device) - starts[flat[order]]
    return (rank < capacity).view(T, K)
