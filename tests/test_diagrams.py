"""dsim.diagrams: each diagram draws on a CPU in a moment, without warnings, and the numbers it
draws are the model's and the cost models' own."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dsim.config import preset
from dsim.cost.comm import moe_a2a_bytes
from dsim.cost.memory import kv_cache_bytes_per_token
from dsim.cost.pipeline import pipeline_bubble_time
from dsim.cost.schedule import makespan, schedule_events
from dsim.diagrams import (
    ep_all_to_all,
    expert_counts,
    kept_groups,
    mla_dataflow,
    mla_shapes,
    moe_dispatch,
    pipeline_schedule,
    routed_batch,
)
from dsim.diagrams._draw import DPI, texts
from dsim.model import MoE

pytestmark = pytest.mark.filterwarnings("error")  # a diagram that warns fails


def _render(fig: Figure) -> None:
    """Draw the figure to PNG (what a notebook does), so that layout problems surface."""
    import io

    assert isinstance(fig, Figure) and fig.get_label()
    assert fig.dpi == DPI
    fig.savefig(io.BytesIO(), format="png")


def _joined(fig: Figure) -> str:
    return "\n".join(texts(fig))


# ---------------------------------------------------------------------------------- MLA


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2-lite", "tiny"])
def test_mla_shapes_are_the_modules(name):
    a = preset(name)
    H, R, dr, dn, dv = (
        a.n_heads,
        a.kv_lora_rank,
        a.qk_rope_head_dim,
        a.qk_nope_head_dim,
        a.v_head_dim,
    )
    naive = mla_shapes(a.replace(attn_impl="naive"))
    absorb = mla_shapes(a.replace(attn_impl="absorb"))
    assert naive.cache == {"k": H * (dn + dr), "v": H * dv}
    assert absorb.cache == {"kv": R, "pe": dr}
    assert naive.weights["wkv_a"] == (R + dr, a.dim)
    assert naive.weights["wkv_b"] == (H * (dn + dv), R)
    # the cost model's KV cache holds the same numbers (bytes / 2 in bf16, per layer)
    assert kv_cache_bytes_per_token(a.replace(attn_impl="absorb"), "bf16") == pytest.approx(
        2 * absorb.cached_per_token * a.n_layers
    )


def test_mla_dataflow_draws_the_real_widths():
    a = preset("deepseek-v3")
    fig = mla_dataflow(a)
    _render(fig)
    t = _joined(fig)
    assert "= 576 numbers" in t and "= 40,960 numbers" in t  # cached per token and layer
    assert "7,168 -> 576" in t  # W_DKV: dim -> kv_lora_rank + qk_rope_head_dim
    assert "512 -> 32,768" in t  # W_UK | W_UV: 128 heads x (128 + 128)
    assert "7,168 -> 1,536" in t  # W_DQ
    assert f"{40960 / 576:.1f}x" in t
    one = mla_dataflow(a, "absorb")
    assert "40,960" not in _joined(one) and "x W_UK" in _joined(one)
    noq = _joined(mla_dataflow(preset("deepseek-v2-lite"), "naive"))  # q_lora_rank = 0: W_Q
    assert "W_Q" in noq and "W_DQ" not in noq


def test_mla_bad_input():
    with pytest.raises(ValueError, match="impl must be one of"):
        mla_dataflow(preset("tiny"), "fused")
    with pytest.raises(ValueError, match="attn_type must be 'mla'"):
        mla_dataflow(preset("mixtral-8x7b"))


# ---------------------------------------------------------------------------------- dispatch


def _bars(ax) -> list[float]:
    return [p.get_width() for p in ax.patches if isinstance(p, Rectangle)]


def test_dispatch_counts_are_the_gates():
    a = preset("tiny", n_expert_groups=4, n_limited_groups=2, score_func="sigmoid")
    fig = moe_dispatch(a, n_tokens=8, seed=3)
    _render(fig)
    # the gate of the same seeded layer, run here without the diagram's helpers
    torch.manual_seed(3)
    moe = MoE(a).eval()
    x = torch.randn(8, a.dim)
    with torch.no_grad():
        r = moe.gate(x)
    want = torch.bincount(r.indices.flatten(), minlength=a.n_routed_experts).tolist()
    counts_ax = fig.axes[-1]
    assert _bars(counts_ax) == want + [8]  # routed experts, then the shared expert sees all 8
    assert str(want) in fig.get_label()
    # the chosen weights are printed on the score map
    t = _joined(fig)
    for wt in r.weights.flatten().tolist():
        assert f"{wt:.2f}" in t


def test_dispatch_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    routed_batch(preset("tiny"), 4, seed=0)
    assert torch.equal(torch.rand(3), want)


def test_group_limit_holds():
    a = preset("tiny", n_expert_groups=4, n_limited_groups=2, score_func="sigmoid")
    moe, _, r, kept = routed_batch(a, 16, seed=1)
    assert kept.shape == (16, 4) and (kept.sum(1) == 2).all()
    group_of = r.indices.numpy() // (a.n_routed_experts // a.n_expert_groups)
    assert all(kept[t, g] for t in range(16) for g in group_of[t])  # chosen inside kept groups
    # and they are the top-k of the scores inside the kept groups
    masked = np.where(np.repeat(kept, 2, axis=1), r.scores.numpy(), -np.inf)
    top = np.sort(np.argsort(-masked, axis=1)[:, : a.n_activated_experts], axis=1)
    assert (top == np.sort(r.indices.numpy(), axis=1)).all()
    assert expert_counts(r, a.n_routed_experts).sum() == 16 * a.n_activated_experts
    ungrouped = preset("tiny")
    m2, _, r2, k2 = routed_batch(ungrouped, 4, seed=0)
    assert k2.shape == (4, 1) and k2.all()
    assert kept_groups(m2, r2).all()


def test_dispatch_capacity_drops_are_not_counted():
    a = preset("tiny", capacity_factor=0.5)
    _, _, r, _ = routed_batch(a, 16, seed=0)
    assert r.dropped > 0
    assert expert_counts(r, a.n_routed_experts).sum() == 16 * a.n_activated_experts - r.dropped


def test_dispatch_bad_input():
    with pytest.raises(ValueError, match="n_tokens must be"):
        moe_dispatch(n_tokens=0)
    with pytest.raises(ValueError, match="n_routed_experts"):
        moe_dispatch(preset("tiny", n_layers=1, n_dense_layers=1))


# ---------------------------------------------------------------------------------- pipeline


def _extent(ax) -> float:
    return max(p.get_x() + p.get_width() for p in ax.patches if isinstance(p, Rectangle))


@pytest.mark.parametrize("pp, m", [(4, 8), (8, 20)])
def test_pipeline_drawn_step_is_the_models(pp, m):
    fig = pipeline_schedule(pp, m)
    _render(fig)
    ax_1f1b, ax_dual = fig.axes[:2]
    # 1F1B: the events' makespan is the planner's m(F+B) + (pp-1)(F+B)
    want = m * 3.0 + pipeline_bubble_time("1f1b", pp, 1.0, 2.0, 1.0)
    assert _extent(ax_1f1b) == pytest.approx(want)
    assert _extent(ax_dual) == pytest.approx(
        makespan(schedule_events("dualpipe", pp, m, 1.0, 2.0, 1.0))
    )
    # at F:B:W = 1:2:1 DualPipe's step is the table's too
    assert _extent(ax_dual) == pytest.approx(
        m * 3.0 + pipeline_bubble_time("dualpipe", pp, 1.0, 2.0, 1.0)
    )
    assert f"step {want:.4g}" in fig.get_label()
    # one bar per event (an overlapped F&B chunk is two half-height bars)
    for ax, s in ((ax_1f1b, "1f1b"), (ax_dual, "dualpipe")):
        ev = schedule_events(s, pp, m, 1.0, 2.0, 1.0)
        n_bars = sum(2 if e.op == "FB" else 1 for e in ev)
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == n_bars


def test_pipeline_one_schedule_and_bad_input():
    fig = pipeline_schedule(4, 6, schedules=("1f1b",))
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match="schedules must name"):
        pipeline_schedule(schedules=())
    with pytest.raises(ValueError, match="n_microbatches must be even"):
        pipeline_schedule(4, 7)


# ---------------------------------------------------------------------------------- all-to-all


@pytest.mark.parametrize("ep, limit", [(64, 4), (8, None), (16, None)])
def test_all_to_all_bytes_are_the_comm_models(ep, limit):
    a = preset("deepseek-v3")
    fig = ep_all_to_all(a, ep=ep, node_limit=limit)
    _render(fig)
    bars = [p.get_height() for p in fig.axes[-1].patches if isinstance(p, Rectangle)]
    call = (4096, a.dim, a.n_activated_experts, a.n_routed_experts, ep, 8, limit)
    d, c = moe_a2a_bytes(*call, bytes_per_elem=1.0), moe_a2a_bytes(*call, bytes_per_elem=2.0)
    # bars: IB dispatch, IB combine, NVLink dispatch, NVLink combine (MB)
    assert bars == pytest.approx(
        [d.ib_bytes / 1e6, c.ib_bytes / 1e6, d.nvlink_bytes / 1e6, c.nvlink_bytes / 1e6]
    )
    if ep == 8:
        assert d.ib_bytes == 0  # one node: NVLink only


def test_all_to_all_bad_input():
    with pytest.raises(ValueError, match="must divide n_routed_experts"):
        ep_all_to_all(preset("deepseek-v3"), ep=48)
