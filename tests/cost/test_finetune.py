"""The LoRA/QLoRA cost model (dsim.cost.finetune) held to dsim.lora on the real model (CPU)."""

from __future__ import annotations

import pytest
import torch

from dsim.config import preset
from dsim.cost.finetune import (
    adapter_params,
    dequant_seconds,
    finetune_flops,
    finetune_memory,
    finetune_step_seconds,
    gpus_to_finetune,
)
from dsim.cost.memory import memory, saved_activation_bytes
from dsim.lora import add_lora, lora_parameters
from dsim.model import Transformer

ALL = ("attention", "routed_experts", "shared_experts", "dense_ffn")


def _routing(model):
    return [
        t
        for moe in model.moe_layers()
        for t in (moe.routing.scores, moe.routing.indices, moe.routing.weights, moe.routing.logits)
    ]


@pytest.mark.parametrize(
    "changes",
    [{}, dict(q_lora_rank=16, n_mtp_layers=1), dict(attn_type="gqa", n_kv_heads=2)],
    ids=["tiny", "q_lora+mtp", "gqa"],
)
@pytest.mark.parametrize("targets", [("attention", "routed_experts"), ALL, ("routed_experts",)])
def test_adapter_params_equal_the_model(changes, targets):
    args = preset("tiny").replace(**changes)
    model = Transformer(args)
    add_lora(model, rank=8, targets=targets)
    assert sum(p.numel() for p in lora_parameters(model)) == sum(
        adapter_params(args, 8, targets).values()
    )


def test_state_bytes_equal_the_tensors_after_a_step():
    """fp32 everything on a CPU: base weights, adapters, their gradients and Adam's two moments
    are exactly the bytes finetune_memory predicts."""
    args, rank = preset("tiny"), 4
    model = Transformer(args)
    add_lora(model, rank=rank)
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    x = torch.randint(0, 256, (2, 32))
    model(x).logsumexp(-1).mean().backward()
    opt.step()
    est = finetune_memory(
        args,
        "lora",
        rank=rank,
        batch=2,
        seq_len=32,
        base_dtype="fp32",
        adapter_dtype="fp32",
        master_dtype=None,
        compute_dtype="fp32",
        device="cpu",
    )
    frozen = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    assert est.weights == frozen
    assert est.adapters == sum(p.numel() * 4 for p in params)
    assert est.gradients == sum(p.grad.numel() * 4 for p in params)
    moments = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for k, t in s.items()
        if k in ("exp_avg", "exp_avg_sq")
    )
    assert est.optimizer == moments


@pytest.mark.parametrize("rank", [1, 8, 16])
def test_activations_within_a_quarter_of_the_saved_tensors(rank):
    """LoRA keeps fewer tensors than a full step (frozen head, gate, norms) plus its rank-r
    intermediates; the model counts a full step's and those: within 25 % on the tiny model."""
    args = preset("tiny")
    model = Transformer(args)
    add_lora(model, rank=rank)
    model.train()
    x = torch.randint(0, 256, (2, 64))
    exclude = list(model.parameters()) + list(model.buffers()) + [model.freqs_cis, x]
    out: list[torch.Tensor] = []
    _, kept = saved_activation_bytes(
        lambda: out.append(model(x)), exclude, lambda: _routing(model) + out
    )
    est = finetune_memory(
        args,
        "lora",
        rank=rank,
        batch=2,
        seq_len=64,
        base_dtype="fp32",
        compute_dtype="fp32",
        device="cpu",
    )
    assert 0.75 * est.activations <= kept <= 1.25 * est.activations


def test_full_is_dsim_cost_memory_and_methods_order():
    args = preset("deepseek-v2-lite")
    full = finetune_memory(args, "full", recompute="full")
    ref = memory(args, recompute="full")
    assert full.total == ref.weights + ref.gradients + ref.optimizer + ref.activations
    lora = finetune_memory(args, "lora", recompute="full")
    qlora = finetune_memory(args, "qlora", recompute="full")
    assert qlora.weights < lora.weights == full.weights
    assert lora.gradients < full.gradients / 50 and lora.optimizer < full.optimizer / 50
    assert qlora.dequant > 0 == lora.dequant
    # INT4 with a bf16 scale per 64: 0.5 + 2/64 bytes per parameter, a quarter of bf16 and a bit
    assert qlora.weights / lora.weights == pytest.approx((0.5 + 2 / 64) / 2)


def test_gpus_to_finetune_deepseek_v3():
    v3 = preset("deepseek-v3")
    q = gpus_to_finetune(v3, "h100", "qlora", rank=16)
    lo = gpus_to_finetune(v3, "h100", "lora", rank=16)
    assert q.memory.total <= q.capacity and lo.memory.total <= lo.capacity
    assert q.n_gpus < lo.n_gpus
    # INT4 weights alone need 671e9 x 0.53 bytes: more than 4 H100s of 76 GB could hold
    assert q.n_gpus * q.capacity > 671e9 * (0.5 + 2 / 64)
    with pytest.raises(ValueError, match="does not fit"):
        gpus_to_finetune(v3, "h100", "qlora", rank=16, max_gpus=q.n_gpus // 2)


def test_flops_and_dequant_time():
    args = preset("deepseek-v3")
    full = finetune_flops(args, 1000, "full")
    lora = finetune_flops(args, 1000, "lora", rank=16)
    assert 2 / 3 < lora / full < 0.7  # 4N instead of 6N, plus the adapters
    one, two = dequant_seconds(args, "h100", 8), dequant_seconds(args, "h100", 16)
    assert one == pytest.approx(2 * two)
    t = finetune_step_seconds(args, "h100", "qlora", 4096, 8, mfu=0.3, microbatches=2)
    assert t["dequant"] == pytest.approx(2 * one) and t["total"] > t["compute"]
    assert finetune_step_seconds(args, "h100", "lora", 4096, 8, mfu=0.3)["dequant"] == 0


def test_bad_input_is_refused():
    args = preset("tiny")
    with pytest.raises(ValueError, match="method"):
        finetune_memory(args, "dora")
    with pytest.raises(ValueError, match="rank"):
        adapter_params(args, 0)
    with pytest.raises(ValueError, match="targets"):
        adapter_params(args, 4, ("head",))
    with pytest.raises(ValueError, match="zero"):
        finetune_memory(args, "lora", zero=1)
    with pytest.raises(ValueError, match="mfu"):
        finetune_step_seconds(args, "h100", "lora", 10, 1, mfu=0)
    with pytest.raises(ValueError, match="tokens"):
        finetune_flops(args, 0, "full")


def test_measure_script_cpu_path(tmp_path):
    """bench/finetune_memory_measure.py on the CPU (tiny, fp32): the persistent state is exactly
    the prediction (the float base; QLoRA's base keeps its fp32 embedding and head, which the
    prediction counts in INT4), the saved tensors within 25 %."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "finetune_memory_measure.py"
    spec = importlib.util.spec_from_file_location("finetune_memory_measure", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--device", "cpu", "--out", str(tmp_path / "m.json")])
    recs = {r["method"]: r for r in out["records"]}
    assert set(recs) == {"lora", "qlora", "full"}
    gate_bias = 8 * 4  # the one buffer of the tiny model: its gate's balancing bias
    lora, full = recs["lora"], recs["full"]
    assert lora["state"]["weights"] - gate_bias == lora["predicted"]["weights"]
    for r in (lora, recs["qlora"]):
        assert r["state"]["trainable"] == r["predicted"]["adapters"]
        assert r["state"]["gradients"] == r["predicted"]["gradients"]
        assert r["state"]["optimizer"] == r["predicted"]["optimizer"]
        assert 0.75 <= r["saved"] / r["predicted"]["activations"] <= 1.25
    assert full["state"]["trainable"] == full["predicted"]["weights"]
    assert full["state"]["optimizer"] == full["predicted"]["optimizer"]
    assert recs["qlora"]["state"]["weights"] < lora["state"]["weights"]
