"""Real expert-parallel and data-parallel runs on torch.distributed (gloo on CPUs, NCCL on GPUs).

The cost model (`dsim.cost.comm`) says what communication *should* cost; this module runs it.

    run_distributed(fn, world_size)   (dsim.launch, re-exported here) spawn world_size processes
                                      on this machine, give each a process group, return what fn
                                      returned on every rank
    all_to_all(x, out_splits, in_splits)
                                      all_to_all_single with variable splits that autograd can
                                      differentiate (its backward is the reverse all-to-all)
    EPMoE                             dsim.model.MoE with its routed experts sharded over the ranks:
                                      gate and shared experts replicated, tokens dispatched to the
                                      rank that holds their expert and combined back
    ep_check_worker / ep_reference    EP against the single-process MoE (the tests and notebook)
    dp_zero_worker / dp_reference     DistributedDataParallel + ZeroRedundancyOptimizer (ZeRO-1)
                                      against one process on the full batch

Expert parallelism in one picture (rank r holds experts [r*E/n, (r+1)*E/n)):

    x [T, D] -> gate -> (indices, weights) [T, K]
    sort the T*K (token, expert) rows by expert       -> rows grouped by destination rank
    all_to_all   (dispatch)                           -> rows for my experts, grouped by source rank
    local experts (dsim.model.Experts, grouped GEMM)
    all_to_all   (combine: the reverse splits)        -> each row back on its token's rank
    weight and sum the K rows of each token, add the shared experts

Every rank executes the same collectives in the same order, in the forward and in the backward
pass; a rank that sends or receives nothing still takes part (with empty buffers).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dsim.config import ModelArgs
from dsim.launch import DistributedError, run_distributed
from dsim.model import MLP, Experts, Gate, MoE, Transformer

# -----------------------------------------------------------------------------
# a differentiable all-to-all with variable splits


# ANCHOR: all_to_all
class _AllToAll(torch.autograd.Function):
    """all_to_all_single whose backward is the same exchange with the splits swapped:
    the gradient of a row goes back to the rank that sent the row."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group
    ) -> torch.Tensor:
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_in = grad.new_empty(sum(ctx.in_splits), *grad.shape[1:])
        dist.all_to_all_single(
            grad_in, grad.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group
        )
        return grad_in, None, None, None
        # ANCHOR_END: all_to_all


def all_to_all(
    x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None
) -> torch.Tensor:
    """Send rows x[sum(in_splits[:j]) : sum(in_splits[:j+1])] to rank j; receive out_splits[j] rows
    from rank j, concatenated in rank order. x: [sum(in_splits), ...] -> [sum(out_splits), ...].
    Differentiable. (torch.distributed.nn.functional.all_to_all_single does the same, but torch
    2.13 marks it deprecated and warns on every call.)"""
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group)


def exchange_counts(send_counts: torch.Tensor, group=None) -> torch.Tensor:
    """send_counts [n, c]: row j is what this rank sends to rank j. Returns [n, c]: row j is what
    rank j sends to this rank. (One small all_to_all_single; everybody learns its receive
    splits.)"""
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts.contiguous(), group=group)
    return recv


# -----------------------------------------------------------------------------
# expert parallelism


class EPMoE(nn.Module):
    """dsim.model.MoE with expert parallelism over the ranks of `group`.

    Rank r holds the routed experts [r*E/n, (r+1)*E/n) (a dsim.model.Experts of E/n experts);
    the gate and the shared experts are replicated. forward(x) takes this rank's tokens and
    returns their MoE output, equal to what the single-process MoE computes for the same rows.
    The gradients of the replicated parameters are this rank's share: sum them over the ranks
    (all_reduce_grads) as data parallelism would. Token dropping (capacity_factor > 0) is not
    supported: DeepSeek-V3 drops no token, and a capacity would depend on the global batch.

    After a forward, `self.routing` is the gate's decision and `self.send_counts` /
    `self.recv_counts` ([n, E/n] ints) say how many rows went to / came from each rank per expert.
    `exchange` is the all-to-all of the dispatch (first call of a forward) and of the combine
    (second); a benchmark may set a timed one on an instance (bench/ep_step_measure.py).
    """

    exchange = staticmethod(all_to_all)

    def __init__(self, args: ModelArgs, group=None):
        super().__init__()
        if args.capacity_factor > 0:
            raise ValueError(
                "EPMoE needs ModelArgs.capacity_factor = 0 (no token dropping), "
                f"got {args.capacity_factor}"
            )
        self.args, self.group = args, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        E = args.n_routed_experts
        if E % self.world:
            raise ValueError(
                f"n_routed_experts={E} must be divisible by the number of ranks {self.world}"
            )
        self.n_local = E // self.world
        self.first_expert = self.rank * self.n_local
        self.gate = Gate(args)
        self.experts = Experts(self.n_local, args.dim, args.moe_inter_dim)
        self.shared_experts = (
            MLP(args.dim, args.n_shared_experts * args.moe_inter_dim)
            if args.n_shared_experts
            else None
        )
        self.routing = None
        self.send_counts = self.recv_counts = None

    @classmethod
    def from_moe(cls, moe: MoE, group=None) -> EPMoE:
        """Shard a full MoE (the same on every rank, e.g. built with the same seed): copy the gate
        and the shared experts, and this rank's slice of the routed experts' weights (same device,
        dtype)."""
        w1 = moe.experts.w1
        with contextlib.ExitStack() as stack:
            if w1.device.type != "cpu":  # initialise the new shard where it will live
                stack.enter_context(torch.device(w1.device))
            ep = cls(moe.args, group)
        ep.gate = copy.deepcopy(moe.gate)
        ep.shared_experts = copy.deepcopy(moe.shared_experts)
        lo, hi = ep.first_expert, ep.first_expert + ep.n_local
        ep.experts.to(w1.dtype)
        with torch.no_grad():
            for name in ("w1", "w2", "w3"):
                getattr(ep.experts, name).copy_(getattr(moe.experts, name)[lo:hi])
        return ep

    def replicated_parameters(self) -> list[nn.Parameter]:
        """Parameters every rank holds a full copy of (gate, shared experts)."""
        mods = [self.gate] + ([self.shared_experts] if self.shared_experts is not None else [])
        return [p for m in mods for p in m.parameters()]

    def _local_experts(self, xr: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Run my experts on the received rows. xr: [R, D], expert: [R] local expert of each row.
        Reuses Experts.forward with top-1 routing and weight 1: it sorts the rows by expert
        (stably, so each expert sees its tokens in the global order), runs the grouped GEMM
        and puts every row back in place. Multiplying by 1.0 and adding to 0.0 are exact."""
        if xr.shape[0] == 0:
            # grouped_mm returns a fresh empty tensor for zero rows, which would cut this rank out
            # of the autograd graph, and then out of the backward all-to-alls that the other
            # ranks run: keep the (empty) output connected to the input and to the weights.
            return xr + sum(p.sum() for p in self.experts.parameters()) * 0
        ones = torch.ones(xr.shape[0], 1, dtype=xr.dtype, device=xr.device)
        return self.experts(xr, expert[:, None], ones, self.args.expert_impl)

    # ANCHOR: epmoe_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.args.dim)  # [T, D]
        routing = self.routing = self.gate(x)
        T, K = routing.indices.shape
        n, E_loc = self.world, self.n_local

        # 1. sort the T*K (token, expert) rows by expert: rows for rank 0's experts come first
        flat = routing.indices.flatten()  # [T*K]
        order = torch.argsort(flat, stable=True)
        token = order // K  # source token per row
        send = torch.bincount(flat, minlength=n * E_loc).view(
            n, E_loc
        )  # [n, E/n] rows per (rank, expert)
        recv = exchange_counts(send, self.group)  # [n, E/n] rows from each rank
        self.send_counts, self.recv_counts = send, recv
        send_splits, recv_splits = send.sum(1).tolist(), recv.sum(1).tolist()

        # 2. dispatch: rows travel to the rank that holds their expert
        xr = self.exchange(
            x[token], recv_splits, send_splits, self.group
        )  # [R, D] by source, then expert
        expert = torch.repeat_interleave(
            torch.arange(E_loc, device=x.device).repeat(n), recv.flatten()
        )  # [R]

        # 3. my experts, then combine: every row goes back to where it came from
        yr = self._local_experts(xr, expert)  # [R, D]
        ys = self.exchange(yr, send_splits, recv_splits, self.group)  # [T*K, D] in `order`

        # 4. weight the K rows of each token and add them up (as MoE.forward_grouped does)
        ys = ys * routing.weights.type_as(ys).flatten()[order, None]
        y = torch.zeros_like(x).index_add_(0, token, ys)  # [T, D]
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.view(shape)
        # ANCHOR_END: epmoe_forward


def all_reduce_grads(params: Sequence[nn.Parameter], group=None, average: bool = False) -> None:
    """Sum (or average) the gradients of replicated parameters over the ranks, in place."""
    n = dist.get_world_size(group)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, group=group)
        if average:
            p.grad /= n


# -----------------------------------------------------------------------------
# EP versus the single-process MoE


def ep_inputs(
    args: ModelArgs, tokens_per_rank: Sequence[int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch x [T, D] and the upstream gradient g [T, D] (rank r owns a contiguous
    slice)."""
    gen = torch.Generator().manual_seed(seed + 1)
    T = sum(tokens_per_rank)
    return torch.randn(T, args.dim, generator=gen), torch.randn(T, args.dim, generator=gen)


def build_moe(args: ModelArgs, seed: int, gate_bias: Sequence[float] | None = None) -> MoE:
    """The full MoE, identical on every rank. gate_bias steers the routing (it only changes which
    experts are chosen): -inf on an expert means no token goes there, +0.5 attracts many."""
    torch.manual_seed(seed)
    moe = MoE(args)
    if gate_bias is not None:
        moe.gate.bias.copy_(torch.tensor(gate_bias, dtype=torch.float32))
    return moe


def ep_check_worker(
    rank: int,
    world: int,
    args: ModelArgs,
    tokens_per_rank: Sequence[int],
    seed: int = 0,
    gate_bias: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One rank of the EP check: run EPMoE forward and backward on its slice of the batch.

    Returns its outputs y, input gradient dx, the gradients of its expert shard, its local (not yet
    reduced) and its all-reduced gradients of the replicated parameters, and the split counts."""
    moe = build_moe(args, seed, gate_bias)
    ep = EPMoE.from_moe(moe, group=None)
    x, g = ep_inputs(args, tokens_per_rank, seed)
    lo = sum(tokens_per_rank[:rank])
    x = x[lo : lo + tokens_per_rank[rank]].clone().requires_grad_()
    y = ep(x)
    y.backward(g[lo : lo + tokens_per_rank[rank]])
    rep = dict(ep.named_parameters())
    local_rep = {
        k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in rep.items()
        if not k.startswith("experts.")
    }
    all_reduce_grads(ep.replicated_parameters())
    return dict(
        y=y.detach(),
        dx=x.grad.detach(),
        expert_grads={k: getattr(ep.experts, k).grad.clone() for k in ("w1", "w2", "w3")},
        replicated_grads_local=local_rep,
        replicated_grads_reduced={
            k: p.grad.clone() for k, p in rep.items() if not k.startswith("experts.")
        },
        send_counts=ep.send_counts.clone(),
        recv_counts=ep.recv_counts.clone(),
    )


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread, as every rank of run_distributed does: a GEMM's summation order
    (and so its last bit) can depend on how many threads split it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@one_thread()
def ep_reference(
    args: ModelArgs,
    tokens_per_rank: Sequence[int],
    seed: int = 0,
    gate_bias: Sequence[float] | None = None,
    rows: slice | None = None,
) -> dict[str, Any]:
    """The single-process MoE on the same batch (or on `rows` of it): y, dx and every gradient.
    Runs on one thread, like the ranks."""
    moe = build_moe(args, seed, gate_bias)
    x, g = ep_inputs(args, tokens_per_rank, seed)
    if rows is not None:
        x, g = x[rows], g[rows]
    x = x.clone().requires_grad_()
    y = moe(x)
    y.backward(g)
    return dict(
        y=y.detach(),
        dx=x.grad.detach(),
        grads={k: p.grad.clone() for k, p in moe.named_parameters()},
        counts=torch.bincount(moe.routing.indices.flatten(), minlength=args.n_routed_experts),
    )


# -----------------------------------------------------------------------------
# data parallelism with a ZeRO-1 optimizer versus one process


def toy_batch(
    args: ModelArgs, step: int, batch: int, seq: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random token windows: inputs [B, S] and next-token targets [B, S]."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    w = torch.randint(0, args.vocab_size, (batch, seq + 1), generator=gen)
    return w[:, :-1], w[:, 1:]


def _lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def dp_zero_worker(
    rank: int,
    world: int,
    args: ModelArgs,
    steps: int = 3,
    batch: int = 4,
    seq: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """One rank of data parallelism: the same model on every rank (same seed), batch/world rows of
    each batch, DistributedDataParallel averaging the gradients with all-reduce, and AdamW wrapped
    in ZeroRedundancyOptimizer so that each rank keeps the Adam moments of only its share of the
    parameters (ZeRO stage 1) and broadcasts its updated share to the others after each step."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    if batch % world:
        raise ValueError(f"batch={batch} must be divisible by the number of ranks {world}")
    torch.manual_seed(seed)
    model = Transformer(args)
    ddp = DDP(model)
    opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.AdamW, lr=lr)
    b = batch // world
    losses = []
    for step in range(steps):
        x, y = toy_batch(args, step, batch, seq, seed)
        loss = _lm_loss(ddp, x[rank * b : (rank + 1) * b], y[rank * b : (rank + 1) * b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    state_numel = sum(
        t.numel()
        for s in opt.optim.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return dict(
        params={k: v.detach().clone() for k, v in model.named_parameters()},
        losses=losses,
        optimizer_state_numel=state_numel,
    )


@one_thread()
def dp_reference(
    args: ModelArgs, steps: int = 3, batch: int = 4, seq: int = 16, lr: float = 1e-3, seed: int = 0
) -> dict[str, Any]:
    """One process, full batches, plain AdamW: what dp_zero_worker must reproduce."""
    torch.manual_seed(seed)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x, y = toy_batch(args, step, batch, seq, seed)
        loss = _lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    state_numel = sum(
        t.numel()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return dict(
        params={k: v.detach().clone() for k, v in model.named_parameters()},
        losses=losses,
        optimizer_state_numel=state_numel,
    )


__all__ = [
    "DistributedError",
    "run_distributed",
    "all_to_all",
    "exchange_counts",
    "EPMoE",
    "all_reduce_grads",
    "one_thread",
    "ep_inputs",
    "build_moe",
    "ep_check_worker",
    "ep_reference",
    "toy_batch",
    "dp_zero_worker",
    "dp_reference",
]
