"""dsim.cost.layout: the layout rules shared by the memory model and the planner."""

import numpy as np
import pytest

from dsim.config import preset
from dsim.cost.layout import (
    kv_tp_split,
    replicated_under_tp,
    stage_layers,
    stage_params,
    zero_params,
)
from dsim.cost.params import params


def test_stage_layers_split_contiguously_and_evenly():
    stages = stage_layers(61, 16)
    assert [len(s) for s in stages] == [4] * 13 + [3] * 3
    assert [i for s in stages for i in s] == list(range(61))
    assert stage_layers(5, 1) == [range(5)]
    for pp in (0, 62):
        with pytest.raises(ValueError, match="pp must be between 1 and n_layers=61"):
            stage_layers(61, pp)


def test_replicated_under_tp():
    for name in (
        "layers.3.attn_norm",
        "layers.3.attn.kv_norm",
        "layers.3.ffn.gate",
        "layers.0.attn.wq_a",
        "layers.0.attn.wkv_a",
        "mtp.0.eh_proj",
        "norm",
    ):
        assert replicated_under_tp(name), name
    for name in (
        "embed",
        "head",
        "layers.0.attn.wq_b",
        "layers.3.ffn.experts",
        "layers.3.ffn.shared_experts",
        "layers.0.attn.wo",
    ):
        assert not replicated_under_tp(name), name


@pytest.mark.parametrize("model", ["deepseek-v3", "mixtral-8x7b"])
def test_stage_params_add_up_to_the_model(model):
    """Over every stage of a pipeline, one GPU per stage without tensor or expert parallelism holds
    every parameter once; with tp and ep the replicated modules stay whole and the rest divide."""
    args = preset(model)
    counts = params(args).modules
    stages = stage_layers(args.n_layers, 4)
    held = [stage_params(counts, s, k == 0, k == 3, 1, 1) for k, s in enumerate(stages)]
    assert sum(d + e for d, e in held) == pytest.approx(sum(counts.values()), rel=1e-12)
    experts = sum(n for name, n in counts.items() if name.endswith("ffn.experts"))
    assert sum(e for _, e in held) == pytest.approx(experts, rel=1e-12)
    replicated = sum(n for name, n in counts.items() if replicated_under_tp(name))
    d8, e8 = zip(*(stage_params(counts, s, k == 0, k == 3, 8, 4) for k, s in enumerate(stages)))
    assert sum(e8) == pytest.approx(experts / 32, rel=1e-12)
    assert sum(d8) == pytest.approx(
        replicated + (sum(counts.values()) - experts - replicated) / 8, rel=1e-12
    )


def test_tied_head_is_copied_to_a_last_stage_without_the_embedding():
    args = preset("mixtral-8x7b", tie_embeddings=True, n_layers=4)
    counts = params(args).modules
    last, _ = stage_params(counts, [3], False, True, 2, 1, tied=True)
    untied, _ = stage_params(counts, [3], False, True, 2, 1)
    assert last - untied == counts["embed"] / 2
    both, _ = stage_params(
        counts, [0, 3], True, True, 2, 1, tied=True
    )  # a DualPipe rank with both ends
    assert both == stage_params(counts, [0, 3], True, True, 2, 1)[0]


def test_zero_params_shard_each_state_from_its_stage():
    dense, expert, dp, ep = 1000.0, 4000.0, 8, 4
    share = dense / 8 + expert / 2
    for zero, sharded in (
        (0, ()),
        (1, ("optimizer",)),
        (2, ("optimizer", "gradients")),
        (3, ("optimizer", "gradients", "weights")),
    ):
        held = zero_params(zero, dense, expert, dp, ep)
        for kind in ("weights", "gradients", "optimizer"):
            assert held[kind] == pytest.approx(
                share if kind in sharded else dense + expert, rel=1e-15
            )
    arrays = zero_params(
        np.array([0, 3]), np.full(2, dense), np.full(2, expert), np.full(2, 8.0), np.full(2, 4.0)
    )
    assert arrays["weights"] == pytest.approx([dense + expert, share])


def test_kv_tp_split():
    assert kv_tp_split(preset("deepseek-v3"), 8) == 1  # MLA's latent is on every TP rank
    assert kv_tp_split(preset("mixtral-8x7b"), 8) == 8  # 8 KV heads over 8 ranks
    assert kv_tp_split(preset("mixtral-8x7b"), 16) == 1  # 8 KV heads do not split 16 ways
