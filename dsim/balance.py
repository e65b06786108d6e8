"""Load balancing of routed experts: the losses, the bias update, and load statistics.

Without balancing a router collapses: a few experts win early, get trained more, and win more.
DeepSeek-V3 balances with a per-expert bias that only steers the choice (auxiliary-loss-free,
section 2.1.2 of the technical report) plus a tiny sequence-wise loss; earlier MoEs add an
auxiliary loss (Switch Transformer) and a router z-loss (ST-MoE). Each is here, switchable on its own.

All functions read the `Routing` each MoE layer keeps from its last forward (dsim.model.MoE.routing):
scores [T, E], indices [T, K], logits [T, E], with T = B*S tokens in batch-major order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from dsim.model import Routing, Transformer


def expert_counts(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert: [T, K] -> [E] (float)."""
    return torch.bincount(indices.flatten(), minlength=n_experts).float()


def sequence_balance_loss(routing: "Routing", batch: int, seq: int, alpha: float) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss (eqs. 17-20), averaged over the batch's sequences.

        L = alpha * sum_i f_i P_i, per sequence of T tokens, with
        f_i = E / (K T) * #{t : expert i in top-K of token t}
        P_i = 1/T * sum_t s'_{i,t},   s'_{i,t} = s_{i,t} / sum_j s_{j,t}   (normalised affinities)
    """
    E = routing.scores.shape[-1]
    K = routing.indices.shape[-1]
    s = routing.scores.view(batch, seq, E)
    s = s / s.sum(dim=-1, keepdim=True)
    chosen = torch.zeros_like(s).scatter_(-1, routing.indices.view(batch, seq, K), 1.0)
    f = chosen.sum(dim=1) * E / (K * seq)                                  # [B, E], no gradient path
    P = s.mean(dim=1)                                                      # [B, E]
    return alpha * (f * P).sum(dim=-1).mean()


def switch_loss(routing: "Routing", alpha: float) -> torch.Tensor:
    """Switch Transformer's auxiliary loss over the whole batch: alpha * E * sum_i f_i P_i, with f_i the
    fraction of (token, expert) assignments that go to expert i and P_i its mean router probability
    (normalised scores, so that a sigmoid gate is treated like a softmax one)."""
    E = routing.scores.shape[-1]
    p = routing.scores / routing.scores.sum(dim=-1, keepdim=True)
    f = expert_counts(routing.indices, E) / routing.indices.numel()
    return alpha * E * (f * p.mean(dim=0)).sum()


def z_loss(routing: "Routing", coef: float) -> torch.Tensor:
    """ST-MoE's router z-loss: coef * mean_t (logsumexp_i logits_{t,i})^2, keeps router logits small."""
    return coef * torch.logsumexp(routing.logits, dim=-1).square().mean()


def aux_losses(model: "Transformer", shape: tuple[int, int], cfg) -> torch.Tensor:
    """Sum of the enabled balance losses over every MoE layer, for input shape (B, S)."""
    total = torch.zeros(())
    batch, seq = shape
    for moe in model.moe_layers():
        r = moe.routing
        if r is None or r.scores.shape[0] != batch * seq:
            continue  # an MTP layer sees shorter sequences: its tokens are balanced through the main layers
        if cfg.seq_aux_alpha > 0:
            total = total + sequence_balance_loss(r, batch, seq, cfg.seq_aux_alpha)
        if cfg.switch_aux_alpha > 0:
            total = total + switch_loss(r, cfg.switch_aux_alpha)
        if cfg.z_loss > 0:
            total = total + z_loss(r, cfg.z_loss)
    return total


@torch.no_grad()
def update_bias(model: "Transformer", gamma: float) -> None:
    """Auxiliary-loss-free balancing: after each optimizer step, per layer and expert,
    bias_i += gamma * sign(mean_load - load_i). Overloaded experts become less attractive to the
    top-k choice; the combine weights never see the bias."""
    for moe in model.moe_layers():
        if moe.routing is None:
            continue
        load = expert_counts(moe.routing.indices, moe.gate.bias.numel())
        moe.gate.bias += gamma * torch.sign(load.mean() - load)


@dataclass
class LoadStats:
    """Expert load of the last step, over all main MoE layers."""
    load: np.ndarray        # [layers, E] fraction of assignments per expert (rows sum to 1)
    imbalance: float        # max load / mean load, averaged over layers (1 = perfectly balanced)
    entropy: float          # load entropy / log(E), averaged over layers (1 = uniform)
    dropped: int            # assignments dropped by a capacity limit, all layers


def load_stats(model: "Transformer") -> LoadStats:
    """Cheap per-step statistics (one bincount per layer)."""
    rows, dropped = [], 0
    for moe in model.moe_layers():
        if moe.routing is None:
            continue
        c = expert_counts(moe.routing.indices, moe.gate.bias.numel())
        rows.append((c / c.sum()).numpy())
        dropped += moe.routing.dropped
    if not rows:
        return LoadStats(np.zeros((0, 0)), 1.0, 1.0, 0)
    load = np.stack(rows)
    E = load.shape[1]
    imbalance = float(np.mean(load.max(axis=1) * E))
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(load > 0, load * np.log(load), 0.0), axis=1) / np.log(E)
    return LoadStats(load, imbalance, float(np.mean(ent)), dropped)
