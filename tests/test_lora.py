"""LoRA and QLoRA adapters on dsim.model (dsim.lora)."""

from __future__ import annotations

import pytest
import torch

from dsim.config import preset
from dsim.lora import (
    LoRAExperts,
    LoRALinear,
    add_lora,
    add_qlora,
    finetune,
    lora_parameters,
)
from dsim.model import Experts, Transformer
from dsim.quant import QuantExperts, QuantLinear, clone_model, quantize_model


def _model(**changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny").replace(**changes)).eval()


TOKENS = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("attn_impl", ["naive", "absorb"])
def test_zero_b_gives_the_base_logits_exactly(attn_impl):
    model = _model(attn_impl=attn_impl)
    with torch.no_grad():
        base = model(TOKENS)
    wrapped = add_lora(model, rank=4, targets=TARGETS_ALL)
    assert any("experts" in n for n in wrapped) and any("attn" in n for n in wrapped)
    with torch.no_grad():
        out = model(TOKENS)
    assert torch.equal(out, base)  # x W^T + 0 is x W^T bit for bit (absorb: W + 0 B A = W)


TARGETS_ALL = ("attention", "routed_experts", "shared_experts", "dense_ffn")


def test_only_adapters_get_gradients():
    model = _model()
    add_lora(model, rank=4)
    for p in lora_parameters(model):  # B = 0 would leave A without a gradient: move B off zero
        if p.shape[-1] == 4:
            torch.nn.init.normal_(p.data, std=0.01)
    model.train()
    model(TOKENS).logsumexp(-1).mean().backward()
    adapters = {id(p) for p in lora_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in adapters:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_expert_adapter_is_per_expert_low_rank():
    """The adapter of expert e changes only the tokens routed to e, by W_e + s B_e A_e."""
    model = _model()
    moe = model.moe_layers()[0]
    base_experts = clone_model(moe.experts)
    lora = LoRAExperts(moe.experts, rank=3, alpha=6.0)
    torch.manual_seed(1)
    for name in ("w1", "w2", "w3"):
        lora.lora_B[name].data.normal_(std=0.1)
    x = torch.randn(10, 64)
    indices = torch.randint(0, 8, (10, 2))
    weights = torch.rand(10, 2)
    merged = Experts_like(base_experts, lora)
    with torch.no_grad():
        torch.testing.assert_close(
            lora(x, indices, weights), merged(x, indices, weights, "loop"), rtol=1e-5, atol=1e-5
        )
    assert lora.lora_A["w1"].shape == (8, 3, 64) and lora.lora_B["w2"].shape == (8, 64, 3)


def Experts_like(base, lora):
    """A plain Experts whose weights are the merged W_e + s B_e A_e."""
    merged = clone_model(base)
    for name in ("w1", "w2", "w3"):
        delta = lora.scaling * (lora.lora_B[name] @ lora.lora_A[name])
        getattr(merged, name).data += delta.detach()
    return merged


def test_qlora_base_is_the_int4_model_and_stays_frozen():
    model = _model()
    ref = clone_model(model)
    quantize_model(ref, "w4a16", layers="all", group_size=32)
    add_qlora(model, rank=4, group_size=32)
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    assert any(isinstance(m, QuantExperts) for m in model.modules())
    assert any(
        isinstance(m, LoRALinear) and isinstance(m.base, QuantLinear) for m in model.modules()
    )
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), ref(TOKENS), rtol=1e-4, atol=1e-4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not b.requires_grad for b in model.buffers())


def test_finetune_moves_only_the_adapters():
    model = _model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora(model, rank=4)
    data = torch.randint(0, 256, (4000,), dtype=torch.uint8)
    losses = finetune(model, data, steps=3, batch_size=2, seq_len=32)
    assert len(losses) == 3
    for n, p in model.named_parameters():
        key = n.replace(".base.", ".")
        if "lora_" not in n:
            assert torch.equal(p, frozen[key]), n
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rank"):
        add_lora(_model(), rank=0)
    with pytest.raises(ValueError, match="alpha"):
        add_lora(_model(), alpha=-1.0)
    with pytest.raises(ValueError, match="targets"):
        add_lora(_model(), targets=("head",))
    with pytest.raises(ValueError, match="LoRALinear wraps"):
        LoRALinear(torch.nn.Conv1d(2, 2, 1), 2, 2.0)
    with pytest.raises(ValueError, match="steps"):
        finetune(_model(), torch.zeros(1000, dtype=torch.uint8), steps=0)


def test_qlora_gradients_equal_lora_on_the_dequantized_base():
    """QLoRA (INT4 codes, dequantized in forward and again in backward) trains like LoRA on a float
    model whose weights are the dequantized INT4 weights: same loss, same adapter gradients."""
    model = _model()
    add_qlora(model, rank=4, group_size=32)
    plain = clone_model(model)  # swap each INT4 base for a float copy of its dequantized weight
    for m in plain.modules():
        if isinstance(m, LoRALinear) and isinstance(m.base, QuantLinear):
            lin = torch.nn.Linear(m.base.in_features, m.base.out_features, bias=False)
            lin.weight.data.copy_(m.base.weight)
            lin.weight.requires_grad_(False)
            m.base = lin
        elif isinstance(m, LoRAExperts) and isinstance(m.base, QuantExperts):
            ex = Experts(m.n_experts, 64, 32)
            for n in ("w1", "w2", "w3"):
                getattr(ex, n).data.copy_(m.base.dequantized(n))
                getattr(ex, n).requires_grad_(False)
            m.base = ex
    for m in (model, plain):
        for p in lora_parameters(m):
            if p.shape[-1] == 4:
                p.data.fill_(0.01)
        m.train()
    grads = []
    for m in (model, plain):
        loss = m(TOKENS).logsumexp(-1).mean()
        loss.backward()
        grads.append([p.grad for p in lora_parameters(m)])
    for g_q, g_f in zip(*grads):
        torch.testing.assert_close(g_q, g_f, rtol=1e-4, atol=1e-6)


def _bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_finetune_run_agrees_with_the_code():
    """dsim/data/finetune_lora_cpu.json: its adapter counts are dsim.cost.finetune's, its full
    fine-tune trains every parameter, and the script's numbers hang together."""
    import json
    from pathlib import Path

    from dsim.cost.finetune import adapter_params
    from dsim.cost.params import params

    run = json.loads(
        (Path(__file__).resolve().parents[1] / "dsim/data/finetune_lora_cpu.json").read_text()
    )
    rows = {r["method"]: r for r in run["rows"]}
    n_adapters = sum(adapter_params(preset("tiny"), run["rank"]).values())
    assert rows["lora"]["trainable"] == rows["qlora"]["trainable"] == n_adapters
    assert rows["full"]["trainable"] == params(preset("tiny")).total == run["model_params"]
    assert rows["lora"]["bpb_before"] == rows["base"]["bpb_after"]
    assert rows["qlora"]["bpb_before"] == rows["base_int4"]["bpb_after"]
    for m in ("lora", "qlora", "full"):
        assert rows[m]["bpb_after"] < rows[m]["bpb_before"]  # every fine-tune helped


def test_finetune_script_cpu_path():
    out = _bench("finetune_lora").run(base_steps=2, steps=2, eval_batches=1)
    assert [r["method"] for r in out["rows"]] == ["base", "base_int4", "lora", "qlora", "full"]
    assert out["rows"][2]["trainable"] == out["rows"][2]["adapter_params"] > 0
