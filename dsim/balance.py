"""Load balancing of routed experts: the losses, the bias update, and load statistics.

Without balancing a router collapses: a few experts win early, get trained more, and win more.
DeepSeek-V3 balances with a per-expert bias that only steers the choice (auxiliary-loss-free,
section 2.1.2 of the technical report, arXiv:2412.19437) plus a tiny sequence-wise loss; earlier
MoEs add an auxiliary loss (Switch Transformer, arXiv:2101.03961) and a router z-loss (ST-MoE,
arXiv:2202.08906). Each is here, switchable on its own.

All functions read the `Routing` each MoE layer keeps from its last forward
(dsim.model.MoE.routing): scores [T, E], indices [T, K], logits [T, E], with T = B*S tokens in
batch-major order.

Notation (DeepSeek-V3's): N_r = E routed experts, K_r = K chosen per token, s_{i,t} the affinity of
token t for expert i (softmax or sigmoid of the router logit), b_i the balancing bias of expert i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from dsim.model import MoE, Routing, Transformer


class BalanceConfig(Protocol):
    """The fields of dsim.train.TrainConfig that `aux_losses` reads."""

    seq_aux_alpha: float
    switch_aux_alpha: float
    z_loss: float


def expert_counts(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert: [T, K] -> [E] (float)."""
    return torch.bincount(indices.flatten(), minlength=n_experts).float()


def main_moe_layers(model: Transformer) -> list[MoE]:
    """The MoE FFNs of the main trunk (not those inside MTP modules), in layer order."""
    from dsim.model import MoE

    return [layer.ffn for layer in model.layers if isinstance(layer.ffn, MoE)]


# ------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------
# ANCHOR: sequence_balance_loss
def sequence_balance_loss(
    routing: Routing,
    batch: int,
    seq: int,
    alpha: float,
    count: Literal["scores", "choice"] = "scores",
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (eqs. 17-20), averaged over sequences.

    For one sequence of T tokens (the paper's T is the sequence length, not the batch):

        L_Bal = alpha * sum_i f_i P_i                                            (17)
        f_i   = N_r / (K_r T) * sum_t 1(s_{i,t} in TopK({s_{j,t}}, K_r))         (18)
        s'_{i,t} = s_{i,t} / sum_j s_{j,t}                                       (19)
        P_i   = 1/T * sum_t s'_{i,t}                                             (20)

    f_i is a count (no gradient); the gradient flows through P_i and pushes probability away from
    the experts that this sequence over-uses. A perfectly balanced sequence has f_i = 1 and
    P_i = 1/N_r, so L_Bal = alpha.

    count: which top-K eq. 18 counts. "scores" is the paper's formula as written: the top-K of the
    affinities s alone, without the bias b and without group limits (Megatron-LM's
    `compute_routing_scores_for_aux_loss` does the same). "choice" counts the experts the router
    actually chose (with bias and group limits), the load that the bias update balances; the two
    agree when the bias is zero and there is one group.
    """
    if count not in ("scores", "choice"):
        raise ValueError(f"count = {count!r} is invalid: must be 'scores' or 'choice'")
    E = routing.scores.shape[-1]
    K = routing.indices.shape[-1]
    if routing.scores.shape[0] != batch * seq:
        raise ValueError(
            f"routing has {routing.scores.shape[0]} tokens, not batch * seq = {batch} * {seq}"
        )
    s = routing.scores.view(batch, seq, E)  # [B, S, E]
    s = s / s.sum(dim=-1, keepdim=True)  # s' (19)
    top = routing.scores.detach().topk(K, dim=-1)[1] if count == "scores" else routing.indices
    chosen = torch.zeros(batch, seq, E, device=s.device).scatter_(-1, top.view(batch, seq, K), 1.0)
    f = chosen.sum(dim=1) * E / (K * seq)  # [B, E] (18), a count
    P = s.mean(dim=1)  # [B, E] (20)
    return alpha * (f * P).sum(dim=-1).mean()  # (17), mean over sequences
    # ANCHOR_END: sequence_balance_loss


def switch_loss(routing: Routing, alpha: float) -> torch.Tensor:
    """Switch Transformer's auxiliary loss over the whole batch: alpha * E * sum_i f_i P_i.

    f_i: fraction of the T*K (token, expert) assignments that went to expert i (the actual choice);
    P_i: mean router probability of expert i (scores normalised per token, so that a sigmoid gate is
    treated like a softmax one). Balanced routing gives alpha; full collapse onto K experts gives
    alpha * E / K.
    """
    E = routing.scores.shape[-1]
    p = routing.scores / routing.scores.sum(dim=-1, keepdim=True)  # [T, E]
    f = expert_counts(routing.indices, E) / routing.indices.numel()  # [E], sums to 1
    return alpha * E * (f * p.mean(dim=0)).sum()


def z_loss(routing: Routing, coef: float) -> torch.Tensor:
    """ST-MoE's router z-loss, which keeps router logits small:

    coef * mean_t (logsumexp_i logits_{t,i})^2
    """
    return coef * torch.logsumexp(routing.logits, dim=-1).square().mean()


def aux_losses(model: Transformer, shape: tuple[int, int], cfg: BalanceConfig) -> torch.Tensor:
    """Sum of the enabled balance losses over every MoE layer (main and MTP), for input
    shape (B, S).

    An MTP module at depth k routes B * (S - k) tokens; its sequence length is read from its
    routing.
    """
    total = torch.zeros(())
    batch = shape[0]
    for moe in model.moe_layers():
        r = moe.routing
        if r is None:
            continue
        seq = r.scores.shape[0] // batch
        if cfg.seq_aux_alpha > 0:
            total = total + sequence_balance_loss(r, batch, seq, cfg.seq_aux_alpha)
        if cfg.switch_aux_alpha > 0:
            total = total + switch_loss(r, cfg.switch_aux_alpha)
        if cfg.z_loss > 0:
            total = total + z_loss(r, cfg.z_loss)
    return total


# ------------------------------------------------------------------------------------------
# The auxiliary-loss-free bias update
# ------------------------------------------------------------------------------------------
@torch.no_grad()
# ANCHOR: update_bias
def update_bias(model: Transformer, gamma: float) -> None:
    """Auxiliary-loss-free balancing (DeepSeek-V3 section 2.1.2), after each optimizer step.

    Per MoE layer (main and MTP) and expert, from the load c_i of the step's batch:

        b_i <- b_i + gamma * sign(mean_j c_j - c_i)

    An overloaded expert loses gamma of choice score, an underloaded one gains gamma. The bias is a
    buffer outside autograd and enters only the top-k choice (dsim.model.Gate), never the combine
    weights, so it steers load without a gradient that competes with the language-model loss.
    The paper uses gamma = 0.001 for the first 14.3T tokens and 0 for the last 500B.
    """
    for moe in model.moe_layers():
        if moe.routing is None:
            continue
        load = expert_counts(moe.routing.indices, moe.gate.bias.numel())
        moe.gate.bias += gamma * torch.sign(load.mean() - load)
    # ANCHOR_END: update_bias


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------
@dataclass
class LoadStats:
    """Expert load of the last step, over the main MoE layers."""

    load: np.ndarray  # [layers, E] fraction of assignments per expert (rows sum to 1)
    imbalance: float  # max load / mean load, averaged over layers (1 = balanced, E/K = collapsed)
    entropy: float  # load entropy / log(E), averaged over layers (1 = uniform)
    dropped: int  # (token, expert) assignments dropped by a capacity limit, all layers


def load_entropy(load: np.ndarray) -> np.ndarray:
    """Normalised entropy of each row of a [layers, E] load: H(load) / log(E), in [0, 1]."""
    E = load.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(load > 0, load * np.log(np.where(load > 0, load, 1.0)), 0.0).sum(axis=-1)
    return h / np.log(E) if E > 1 else np.ones_like(h)


def load_stats(model: Transformer, include_mtp: bool = False) -> LoadStats:
    """Cheap per-step statistics (one bincount per layer), from each layer's last routing.

    include_mtp: also count the MoE layers inside MTP modules (off by default, so that runs with
    and without MTP compare the same layers).
    """
    return load_stats_of(model.moe_layers() if include_mtp else main_moe_layers(model))


def load_stats_of(layers: list[MoE]) -> LoadStats:
    """Load statistics of the given MoE layers' last routing (layers that have not routed are
    skipped)."""
    rows, dropped = [], 0
    for moe in layers:
        if moe.routing is None:
            continue
        c = expert_counts(moe.routing.indices, moe.gate.bias.numel())
        rows.append((c / c.sum()).numpy())
        dropped += moe.routing.dropped
    if not rows:
        return LoadStats(np.zeros((0, 0), dtype=np.float32), 1.0, 1.0, 0)
    load = np.stack(rows)  # [L, E]
    E = load.shape[1]
    imbalance = float(np.mean(load.max(axis=1) * E))
    return LoadStats(load, imbalance, float(np.mean(load_entropy(load))), dropped)


def gate_biases(model: Transformer, include_mtp: bool = False) -> np.ndarray:
    """The balancing bias of each main MoE layer (and MTP layer if asked): [layers, E]."""
    layers = model.moe_layers() if include_mtp else main_moe_layers(model)
    if not layers:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([m.gate.bias.detach().cpu().numpy().copy() for m in layers])
