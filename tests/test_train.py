"""Training: configuration errors, schedules, the MTP loss and its gradients, per-step statistics,
capacity dropping, and the MTP draft acceptance rate measured against plain greedy decoding."""

import math

import numpy as np
import pytest
import torch

from dsim.config import preset
from dsim.train import (
    History,
    TrainConfig,
    Trainer,
    compute_losses,
    deepseek_v3_recipe,
    get_batch,
    get_corpus,
    lm_loss,
    mtp_acceptance,
    mtp_acceptance_rate,
)

torch.set_num_threads(1)

# A very small tiny: 1 dense + 1 MoE layer, 8 experts top-2, trains a step in milliseconds.
SMALL = dict(
    dim=32,
    inter_dim=64,
    moe_inter_dim=16,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=8,
    n_routed_experts=8,
    max_seq_len=64,
    original_seq_len=64,
)
FAST = dict(steps=6, batch_size=4, seq_len=32, warmup=2, max_train_bytes=100_000)


def small(**changes):
    return preset("tiny", **{**SMALL, **changes})


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("steps", 0, "TrainConfig.steps = 0 is invalid: must be an integer >= 1"),
        ("steps", 2.5, "TrainConfig.steps"),
        ("batch_size", True, "TrainConfig.batch_size"),
        ("seq_len", -3, "TrainConfig.seq_len"),
        ("lr", 0.0, "TrainConfig.lr = 0.0 is invalid: must be a finite number > 0"),
        ("lr", float("nan"), "TrainConfig.lr"),
        ("gate_lr_mult", 0, "TrainConfig.gate_lr_mult"),
        ("min_lr_ratio", 1.5, r"TrainConfig.min_lr_ratio = 1.5 is invalid: must be in \[0, 1\]"),
        ("warmup", -1, "TrainConfig.warmup"),
        ("weight_decay", -0.1, "TrainConfig.weight_decay"),
        ("grad_clip", float("inf"), "TrainConfig.grad_clip"),
        (
            "bias_update_speed",
            -0.001,
            "TrainConfig.bias_update_speed = -0.001 is invalid: must be a finite number >= 0",
        ),
        ("seq_aux_alpha", "0.1", "TrainConfig.seq_aux_alpha"),
        ("switch_aux_alpha", -1, "TrainConfig.switch_aux_alpha"),
        ("z_loss", -1e-3, "TrainConfig.z_loss"),
        ("mtp_lambda", -0.3, "TrainConfig.mtp_lambda"),
        ("eval_batches", 0, "TrainConfig.eval_batches"),
        (
            "max_train_bytes",
            100,
            r"TrainConfig.max_train_bytes = 100 is invalid: "
            r"must be None or an integer > seq_len \+ 1",
        ),
        (
            "mtp_lambda_schedule",
            ((10, 0.1), (5, 0.3)),
            "mtp_lambda_schedule steps must increase strictly",
        ),
        ("mtp_lambda_schedule", ((-1, 0.1),), "mtp_lambda_schedule has the pair"),
        ("bias_update_schedule", ((10, -0.1),), "bias_update_schedule has the pair"),
        ("bias_update_schedule", 5, "bias_update_schedule = 5 is invalid: must be a sequence of"),
    ],
)
def test_train_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_schedules_and_the_deepseek_v3_recipe():
    cfg = TrainConfig(
        steps=100,
        mtp_lambda=0.3,
        mtp_lambda_schedule=[(60, 0.1)],
        bias_update_speed=0.001,
        bias_update_schedule=[[90, 0]],
    )
    assert cfg.mtp_lambda_schedule == ((60, 0.1),) and cfg.bias_update_schedule == ((90, 0.0),)
    assert [cfg.mtp_lambda_at(s) for s in (0, 59, 60, 99)] == [0.3, 0.3, 0.1, 0.1]
    assert [cfg.bias_update_speed_at(s) for s in (0, 89, 90)] == [0.001, 0.001, 0.0]
    recipe = TrainConfig(steps=148, **deepseek_v3_recipe(148))
    assert (
        recipe.mtp_lambda_at(99) == 0.3 and recipe.mtp_lambda_at(100) == 0.1
    )  # 10T of 14.8T tokens
    assert recipe.bias_update_speed_at(142) == 0.001 and recipe.bias_update_speed_at(143) == 0.0
    assert recipe.seq_aux_alpha == 1e-4
    assert TrainConfig.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"stepz": 3})


def test_mtp_lambda_needs_mtp_modules():
    with pytest.raises(ValueError, match="n_mtp_layers >= 1"):
        Trainer(small(), TrainConfig(**FAST, mtp_lambda=0.3))


def test_mtp_loss_is_lambda_over_depth_and_reaches_shared_embedding_and_head():
    torch.manual_seed(0)
    trainer = Trainer(small(n_mtp_layers=2), TrainConfig(**FAST, mtp_lambda=0.3))
    model = trainer.model
    x, y = get_batch(trainer.data, 2, 16, torch.Generator().manual_seed(0))
    out = compute_losses(model, x, y, trainer.cfg)
    h = model.hidden(x)
    per_depth = [
        lm_loss(logits, y[:, k:]) for k, logits in enumerate(model.mtp_logits(h, x), start=1)
    ]
    assert len(per_depth) == 2
    torch.testing.assert_close(out["loss"], out["main"] + 0.3 / 2 * sum(per_depth))
    # gradients of the MTP loss alone: into the shared embedding and head,
    # each module, and the trunk
    model.zero_grad(set_to_none=True)
    out["mtp"].backward()
    for name in (
        "embed.weight",
        "head.weight",
        "mtp.0.eh_proj.weight",
        "mtp.1.eh_proj.weight",
        "mtp.1.block.ffn.gate.weight",
        "layers.0.attn.wkv_a.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.norm.weight.grad is None  # the main final norm is not on the MTP path
    # the head receives gradient from every depth: the depth-2 loss alone reaches it too
    model.zero_grad(set_to_none=True)
    per_depth = [
        lm_loss(logits, y[:, k:])
        for k, logits in enumerate(model.mtp_logits(model.hidden(x), x), start=1)
    ]
    per_depth[1].backward()
    assert (
        model.head.weight.grad.abs().sum() > 0 and model.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    )


def test_a_step_records_load_statistics_and_bias_updates():
    gamma = 0.01
    trainer = Trainer(
        small(), TrainConfig(**FAST, bias_update_speed=gamma, seq_aux_alpha=1e-4, z_loss=1e-3)
    )
    trainer.run(progress=False)
    h = trainer.history
    assert all(
        len(v) == 6
        for v in (h.loss, h.mtp_loss, h.aux_loss, h.load, h.imbalance, h.entropy, h.dropped, h.bias)
    )
    for load, imb, ent in zip(h.load, h.imbalance, h.entropy):
        assert load.shape == (1, 8) and load.sum() == pytest.approx(1.0)
        assert imb == pytest.approx(load.max() * 8) and 0 < ent <= 1
    assert all(a > 0 for a in h.aux_loss) and h.dropped == [0] * 6 and h.mtp_loss == [0.0] * 6
    bias = trainer.model.layers[1].ffn.gate.bias
    assert bias.grad is None and bias.abs().max() > 0
    steps = bias / gamma  # six moves of -gamma, 0 or +gamma
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 6
    np.testing.assert_array_equal(h.bias[-1][0], bias.numpy())


def test_capacity_factor_drops_tokens_and_is_counted():
    base = Trainer(small(), TrainConfig(**FAST))
    capped = Trainer(small(capacity_factor=0.5), TrainConfig(**FAST))
    base.run(progress=False)
    capped.run(progress=False)
    tokens = FAST["batch_size"] * FAST["seq_len"] * 2  # (token, expert) assignments
    assert base.history.dropped == [0] * 6
    assert all(
        tokens // 2 <= d < tokens for d in capped.history.dropped
    )  # capacity 0.5 keeps at most half
    assert capped.history.loss[0] != base.history.loss[0]


def test_mtp_acceptance_equals_greedy_decoding():
    """The function's numbers, recomputed with model.generate (KV-cache
    decoding) for the main model."""
    trainer = Trainer(small(n_mtp_layers=1), TrainConfig(**FAST, mtp_lambda=0.3))
    trainer.run(progress=False)
    model, data = trainer.model, get_corpus("val")
    res = mtp_acceptance(model, data, context=16, windows=12, batch_size=5, seed=7)
    gen = torch.Generator().manual_seed(7)
    accepted = main_ok = 0
    for b in (5, 5, 2):
        x, y = get_batch(data, b, 17, gen)
        ctx = x[:, :16]
        out = model.generate(ctx, 2)  # greedy: proposal a, then the verifier
        a, verify = out[:, 16], out[:, 17]
        ext = torch.cat([ctx, a[:, None]], 1)
        with torch.no_grad():
            draft = model.mtp_logits(model.hidden(ext), ext)[0][:, -1].argmax(-1)
        accepted += int((draft == verify).sum())
        main_ok += int((a == x[:, 16]).sum())
    assert res.n == 12 and res.rate == accepted / 12 and res.main_accuracy == main_ok / 12
    assert res.tokens_per_step == 1 + res.rate
    assert (
        mtp_acceptance_rate(model, data, context=16, windows=12, batch_size=5, seed=7) == res.rate
    )
    with pytest.raises(ValueError, match="no MTP module"):
        mtp_acceptance(Trainer(small(), TrainConfig(**FAST)).model, data)
    with pytest.raises(ValueError, match="context"):
        mtp_acceptance(model, data, context=64)


def test_history_bits_per_byte():
    h = History(loss=[math.log(2.0), 2 * math.log(2.0)])
    assert h.bits_per_byte == pytest.approx([1.0, 2.0])


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "balance_runs.py"
    spec = importlib.util.spec_from_file_location("balance_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_balance_runs_cover_every_configuration_and_show_collapse():
    """dsim/data/balance_runs.json (bench/balance_runs.py) has every run, complete, and the
    effect the chapter is about: collapse without balancing, repair with the fast bias
    update and the Switch loss."""
    import json
    from pathlib import Path

    import dsim

    data = json.loads((Path(dsim.__file__).parent / "data" / "balance_runs.json").read_text())
    bench = _bench()
    steps = data["setup"]["steps"]
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {s["name"] for s in bench.run_specs(steps)}
    for r in runs.values():
        assert all(
            len(r[k]) == steps
            for k in ("loss", "imbalance", "entropy", "dropped", "aux_loss", "mtp_loss")
        )
        assert len(r["load_snapshots"]) == steps // data["setup"]["snapshot_every"]
        assert all(abs(sum(row) - 1) < 0.02 for row in r["load_snapshots"])
    final = {name: r["final"]["imbalance"] for name, r in runs.items()}
    for gate in ("softmax", "sigmoid"):
        assert final[f"{gate}/none"] > 4 and final[f"{gate}/switch"] < 2
    assert final["sigmoid/bias_fast"] < 2 < final["sigmoid/bias_paper"]
    assert 0 <= runs["sigmoid/mtp/bias_fast"]["final"]["mtp_acceptance"] <= 1
    assert (
        runs["sigmoid/capacity/none"]["final"]["dropped_fraction"]
        > runs["sigmoid/capacity/bias_fast"]["final"]["dropped_fraction"]
    )


def test_balance_bench_runs_one_configuration():
    bench = _bench()
    spec = next(s for s in bench.run_specs(4) if s["name"] == "sigmoid/mtp/bias_fast")
    out = bench.run_one(spec, steps=4)
    assert (
        len(out["loss"]) == 4
        and len(out["load_snapshots"]) == 1
        and 0 <= out["final"]["mtp_acceptance"] <= 1
    )
    assert out["train_config"]["mtp_lambda_schedule"] == [[3, 0.1]]


@pytest.mark.parametrize(
    "data, match",
    [
        (torch.rand(5000), "integer token ids.*float32"),  # used to train on zeros (0.7 -> 0)
        (torch.zeros(5000, dtype=torch.bool), "integer token ids.*bool"),
        (torch.zeros(50, 100, dtype=torch.long), r"1-D.*\(50, 100\)"),
        (torch.full((5000,), 300), "token ids 300..300"),
        (torch.zeros(10, dtype=torch.uint8), "too short"),
    ],
    ids=["float", "bool", "2d", "beyond-vocab", "short"],
)
def test_trainer_refuses_data_that_is_not_token_ids(data, match):
    """Issue 19, defect 13: Trainer with float data truncated it to ids and trained on zeros."""
    with pytest.raises(ValueError, match=match):
        Trainer(small(), TrainConfig(**FAST), data=data)
