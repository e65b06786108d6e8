"""Quantization-aware training: straight-through fake quantization (fake_quant, FakeQuant),
prepare_qat / finish_qat around a model, and a short fine-tune (qat_finetune) that makes the model
robust to INT4."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from dsim.model import Experts
from dsim.quant.checks import check_bits, check_block, check_float
from dsim.quant.convert import QuantReport, _targets, quantize_model
from dsim.quant.integer import Granularity, _int_qparams, _int_round, _to_groups


def fake_quant(
    x: torch.Tensor,
    bits: int = 4,
    granularity: Granularity = "channel",
    group_size: int = 128,
    symmetric: bool = True,
    scale_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Quantize and dequantize x in the forward pass; pass the gradient straight through (STE).

    forward: exactly dequantize(quantize(x, ...)); backward: d out / d x = identity (the rounding
    has zero gradient almost everywhere, so QAT pretends it is the identity). Scales are computed
    from x without gradient.
    """
    check_float(x)
    check_bits(bits)
    with torch.no_grad():
        xg = _to_groups(x.float(), granularity, group_size)
        scale, zero = _int_qparams(xg, bits, symmetric, scale_dtype)
        q = _int_round(xg, scale, zero, bits)
        deq = ((q - zero) if zero is not None else q) * scale
        deq = deq.reshape(x.shape).to(x.dtype)
    return x + (deq - x).detach()


class FakeQuant(nn.Module):
    """A parametrization (torch.nn.utils.parametrize): the layer sees fake_quant(weight)."""

    def __init__(self, bits: int = 4, group_size: int | None = 128):
        super().__init__()
        check_bits(bits)
        if group_size is not None:
            check_block(group_size, "group_size")
        self.bits, self.group_size = bits, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.group_size is None:
            return fake_quant(w, self.bits, "channel")
        return fake_quant(w, self.bits, "group", self.group_size)


def prepare_qat(
    model: nn.Module, bits: int = 4, group_size: int | None = 128, layers: str = "all"
) -> list[str]:
    """Make every layer that quantize_model would quantize see fake-quantized weights (in place)."""
    names = []
    for _, _, module, name in _targets(model, layers):
        for attr in ("w1", "w2", "w3") if isinstance(module, Experts) else ("weight",):
            parametrize.register_parametrization(module, attr, FakeQuant(bits, group_size))
        names.append(name)
    return names


def finish_qat(model: nn.Module, layers: str = "all", group_size: int | None = 128) -> QuantReport:
    """Drop the fake-quant parametrizations (keeping the trained latent weights) and quantize W4A16.

    The quantized model computes what the QAT model computed: quantize() of the latent weights
    gives exactly the weights that fake_quant showed the forward pass.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    return quantize_model(model, "w4a16", layers, group_size)


def qat_finetune(
    model: nn.Module,
    data: torch.Tensor,
    steps: int = 50,
    lr: float = 1e-3,
    group_size: int | None = 128,
    layers: str = "all",
    batch_size: int = 16,
    seq_len: int = 128,
    seed: int = 0,
    fake: bool = True,
) -> tuple[QuantReport | None, list[float]]:
    """Fine-tune `model` on token data with INT4 fake-quantized weights, then quantize it W4A16.

    Plain next-byte cross-entropy, AdamW (no weight decay), cosine decay from lr to 0, gradient
    clipping 1.0. fake=False runs the same fine-tune without fake quantization (a control that
    separates "more training" from "quantization-aware") and leaves the model in fp32.
    Returns (the quantization report or None, the loss per step in bits per byte).
    """
    from dsim.train import LOG2E, get_batch, lm_loss

    if fake:
        prepare_qat(model, 4, group_size, layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = get_batch(data, batch_size, seq_len, gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item() * LOG2E)
    model.eval()
    return (finish_qat(model, layers, group_size) if fake else None), losses
