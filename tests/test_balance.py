"""Load balancing: the bias steers the choice only, the bias update balances a skewed
router, and the losses equal the formulas of the papers they come from (DeepSeek-V3
eqs. 17-20, Switch, ST-MoE)."""

import math

import numpy as np
import pytest
import torch

from dsim import balance
from dsim.config import ModelArgs
from dsim.model import MoE, Routing

torch.set_num_threads(1)

MOE = dict(
    vocab_size=64,
    dim=16,
    inter_dim=32,
    moe_inter_dim=8,
    n_layers=2,
    n_dense_layers=1,
    n_heads=2,
    n_routed_experts=8,
    n_shared_experts=1,
    n_activated_experts=2,
    kv_lora_rank=8,
    qk_nope_head_dim=4,
    qk_rope_head_dim=4,
    v_head_dim=4,
    max_seq_len=32,
    original_seq_len=32,
)


class OneLayer:
    """The little of a Transformer that dsim.balance needs: its MoE layers."""

    def __init__(self, moe: MoE):
        self.moe = moe

    def moe_layers(self) -> list[MoE]:
        return [self.moe]


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_bias_never_enters_the_combine_weights(score_func):
    torch.manual_seed(0)
    args = ModelArgs(**MOE, score_func=score_func)
    moe = MoE(args)
    x = torch.randn(32, args.dim)
    with torch.no_grad():
        moe.gate.bias.copy_(torch.linspace(0.3, -0.3, 8))  # large enough to change the choice
    y = moe(x)
    r = moe.routing
    w = r.scores.gather(1, r.indices)  # weights from the unbiased scores
    if args.renormalize:
        w = w / w.sum(-1, keepdim=True)
    torch.testing.assert_close(r.weights, w * args.route_scale)
    # The layer's output is exactly the experts mixed with those weights, plus the shared expert.
    expected = moe.experts.forward_loop(x, r.indices, w * args.route_scale) + moe.shared_experts(x)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    # The bias is a buffer: no gradient reaches it, and shifting all biases equally changes nothing.
    assert not moe.gate.bias.requires_grad and "gate.bias" not in dict(moe.named_parameters())
    with torch.no_grad():
        moe.gate.bias += 0.7
    torch.testing.assert_close(moe(x), y)
    assert torch.equal(moe.routing.indices, r.indices)
    with torch.no_grad():
        moe.gate.bias.zero_()
    moe(x)
    assert not torch.equal(moe.routing.indices, r.indices)  # but the bias did steer the choice


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_bias_update_balances_a_skewed_router(score_func):
    """The router favours experts 0, 1, ... along a direction u that every token shares: the
    unbalanced choice sends 3-4x the mean load to expert 0. Sign-based bias updates bring
    the load close to uniform. (A gamma much larger than these ends in a limit cycle: every
    step overshoots by gamma.)"""
    torch.manual_seed(0)
    args = ModelArgs(**MOE, score_func=score_func)
    moe = MoE(args)
    u = torch.randn(args.dim)
    u = u / u.norm()
    x = torch.randn(256, args.dim) + 2 * u
    with torch.no_grad():
        moe.gate.weight.copy_(
            torch.randn(8, args.dim) * 0.3 + torch.linspace(1.0, -1.0, 8)[:, None] * u
        )
    model = OneLayer(moe)
    weights_before = moe.gate.weight.clone()
    gamma = 0.003 if score_func == "softmax" else 0.005
    imbalance = []
    for _ in range(200):
        with torch.no_grad():
            moe(x)
        imbalance.append(balance.load_stats_of([moe]).imbalance)
        balance.update_bias(model, gamma)
    start, end = imbalance[0], float(np.mean(imbalance[-20:]))
    assert start > 3.0  # over 3x the mean load on one expert
    assert end < 1.35, (start, end)
    assert torch.equal(moe.gate.weight, weights_before)  # only the bias moved
    # each update moved each bias by -gamma, 0 or +gamma: the bias is a multiple of gamma
    steps = moe.gate.bias / gamma
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def paper_sequence_loss(
    scores: torch.Tensor, indices: torch.Tensor | None, K: int, alpha: float
) -> float:
    """DeepSeek-V3 eqs. 17-20 evaluated with loops, for one sequence. scores: [T, N_r].

    indices None: eq. 18 as printed (top-K of the affinities s); otherwise
    the given choice [T, K]."""
    T, N = scores.shape
    s = scores.tolist()
    total = 0.0
    for i in range(N):
        count = 0
        for t in range(T):
            if indices is None:
                topk = sorted(range(N), key=lambda j: -s[t][j])[:K]
            else:
                topk = indices[t].tolist()
            count += 1 if i in topk else 0
        f_i = N / (K * T) * count  # (18)
        P_i = sum(s[t][i] / sum(s[t]) for t in range(T)) / T  # (19), (20)
        total += f_i * P_i
    return alpha * total  # (17)


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_sequence_loss_equals_the_papers_formula(score_func):
    torch.manual_seed(1)
    args = ModelArgs(**{**MOE, "n_activated_experts": 3}, score_func=score_func)
    moe = MoE(args)
    B, S, alpha = 3, 7, 1e-2
    with torch.no_grad():
        moe.gate.bias.copy_(torch.linspace(0.05, -0.05, 8))  # makes "choice" differ from "scores"
    moe(torch.randn(B * S, args.dim))
    r = moe.routing
    for count in ("scores", "choice"):
        got = balance.sequence_balance_loss(r, B, S, alpha, count=count).item()
        expected = np.mean(
            [
                paper_sequence_loss(
                    r.scores[b * S : (b + 1) * S].detach(),
                    None if count == "scores" else r.indices[b * S : (b + 1) * S],
                    3,
                    alpha,
                )
                for b in range(B)
            ]
        )
        assert got == pytest.approx(expected, rel=1e-5), count
    # balanced case: f_i = 1 and P_i = 1/N_r give exactly alpha
    E = 8
    uniform = Routing(
        scores=torch.full((E, E), 0.3),
        indices=torch.arange(E * 2).view(E, 2) % E,
        weights=torch.ones(E, 2),
        logits=torch.zeros(E, E),
    )
    assert balance.sequence_balance_loss(
        uniform, 1, E, alpha, count="choice"
    ).item() == pytest.approx(alpha)
    with pytest.raises(ValueError, match="count"):
        balance.sequence_balance_loss(r, B, S, alpha, count="bias")


def test_sequence_loss_gradient_flows_through_P_only():
    torch.manual_seed(2)
    logits = torch.randn(10, 8, requires_grad=True)
    scores = logits.sigmoid()
    r = Routing(
        scores=scores, indices=scores.topk(2, -1)[1], weights=torch.ones(10, 2), logits=logits
    )
    balance.sequence_balance_loss(r, 2, 5, 1.0).backward()
    # d/ds of sum_i f_i mean_t s'_{i,t}: an expert nobody chose (f_i = 0) is pushed only through the
    # normalisation of s'; a chosen one is pushed down. Check the sign on the most chosen expert.
    f = torch.bincount(r.indices.flatten(), minlength=8)
    assert logits.grad[:, f.argmax()].sum() > 0


def test_switch_and_z_loss_values():
    E, K, T, alpha = 8, 2, 16, 0.01
    balanced = Routing(
        scores=torch.full((T, E), 1 / E),
        indices=torch.arange(T * K).view(T, K) % E,
        weights=torch.ones(T, K),
        logits=torch.zeros(T, E),
    )
    assert balance.switch_loss(balanced, alpha).item() == pytest.approx(alpha)
    collapsed_scores = torch.zeros(T, E)
    collapsed_scores[:, :K] = 1 / K
    collapsed = Routing(
        scores=collapsed_scores,
        indices=torch.arange(K).repeat(T, 1),
        weights=torch.ones(T, K),
        logits=torch.zeros(T, E),
    )
    assert balance.switch_loss(collapsed, alpha).item() == pytest.approx(alpha * E / K)
    assert balance.z_loss(balanced, 1e-3).item() == pytest.approx(1e-3 * math.log(E) ** 2)


def test_load_stats():
    E = 8
    moe = MoE(ModelArgs(**MOE))
    moe.routing = Routing(
        scores=torch.zeros(4, E),
        indices=torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]]),
        weights=torch.ones(4, 2),
        logits=torch.zeros(4, E),
        dropped=3,
    )
    st = balance.load_stats_of([moe])
    np.testing.assert_allclose(st.load[0], [0.5, 0.25, 0.125, 0.125, 0, 0, 0, 0])
    assert st.imbalance == pytest.approx(0.5 * E)  # max / mean = 0.5 / (1/8)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert st.entropy == pytest.approx(-(p * np.log(p)).sum() / np.log(E))
    assert st.dropped == 3
    moe.routing = Routing(
        scores=torch.zeros(4, E),
        indices=torch.arange(8).view(4, 2),
        weights=torch.ones(4, 2),
        logits=torch.zeros(4, E),
    )
    st = balance.load_stats_of([moe])
    assert st.imbalance == pytest.approx(1.0) and st.entropy == pytest.approx(1.0)
