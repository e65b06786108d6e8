"""Measured: accuracy against size. accuracy_size_table quantizes copies of a model with each
scheme and reports held-out loss and bytes; to_bf16 and clone_model are its helpers."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from dsim.model import Routing
from dsim.quant.convert import LINEAR_KINDS, bytes_by_kind, quantize_model
from dsim.quant.qat import qat_finetune


def to_bf16(model: nn.Module) -> nn.Module:
    """Cast floating-point parameters and buffers to bfloat16 in place. (model.to(torch.bfloat16)
    would also cast the complex RoPE table to a real one, silently breaking the positions.)"""
    for m in model.modules():
        for tensors in (m._parameters, m._buffers):
            for t in tensors.values():
                if t is not None and t.is_floating_point():
                    t.data = t.data.to(torch.bfloat16)
    return model


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of a model; the MoE layers' last routing (tensors inside the autograd graph of
    the last forward pass, which cannot be deep-copied) is left behind."""
    saved = {}
    for m in model.modules():
        if isinstance(getattr(m, "routing", None), Routing):
            saved[m], m.routing = m.routing, None
    try:
        return copy.deepcopy(model)
    finally:
        for m, routing in saved.items():
            m.routing = routing


def accuracy_size_table(
    model: nn.Module,
    heldout: torch.Tensor,
    group_size: int = 128,
    train_data: torch.Tensor | None = None,
    qat_steps: int = 50,
    qat_lr: float = 1e-3,
    evaluate: Callable[..., float] | None = None,
    **eval_kwargs,
) -> list[dict]:
    """Bits per byte on held-out text and checkpoint bytes for fp32, bf16 and each quantized scheme.

    Every scheme quantizes a copy of `model` (layers="all": attention, dense FFN, shared and routed
    experts; embedding, head, gate and norms stay as they are). group_size is the INT4 group and the
    FP8 block side (DeepSeek: 128; the tiny model's widths of 32 and 64 need 32). With train_data,
    two more rows: QAT INT4 (fine-tuned qat_steps with fake quantization, then W4A16 per group),
    and its control, the same fine-tune in fp32. evaluate(model, heldout, **eval_kwargs) defaults to
    dsim.train.evaluate (bits per byte).
    Row keys: scheme, weights, activations, bits_per_byte, delta_bpb (vs fp32), bytes (whole
    checkpoint), linear_bytes (the quantizable layers), ratio (bytes / fp32 bytes).
    """
    if evaluate is None:
        from dsim.train import evaluate
    g = group_size
    variants: list[tuple[str, str, str, Callable[[nn.Module], None]]] = [
        ("fp32", "fp32", "fp32", lambda m: None),
        ("bf16", "bf16", "bf16", to_bf16),
        ("W8A8", "INT8 per channel", "INT8 per token", lambda m: quantize_model(m, "w8a8")),
        (
            "W4A16 per-channel",
            "INT4 per channel",
            "fp32",
            lambda m: quantize_model(m, "w4a16", group_size=None),
        ),
        (
            f"W4A16 g{g}",
            f"INT4 per {g} inputs",
            "fp32",
            lambda m: quantize_model(m, "w4a16", group_size=g),
        ),
        (
            f"FP8 {g}x{g}",
            f"E4M3 per {g}x{g} block",
            f"E4M3 per 1x{g} tile",
            lambda m: quantize_model(m, "fp8", group_size=g),
        ),
    ]
    if train_data is not None:
        variants += [
            (
                f"fp32 +{qat_steps} steps",
                "fp32",
                "fp32",
                lambda m: qat_finetune(m, train_data, qat_steps, qat_lr, g, fake=False),
            ),
            (
                f"QAT INT4 g{g}",
                f"INT4 per {g} inputs",
                "fp32",
                lambda m: qat_finetune(m, train_data, qat_steps, qat_lr, g),
            ),
        ]
    rows = []
    for name, weights, acts, apply in variants:
        m = clone_model(model).eval()
        apply(m)
        kinds = bytes_by_kind(m)
        rows.append(
            dict(
                scheme=name,
                weights=weights,
                activations=acts,
                bits_per_byte=float(evaluate(m, heldout, **eval_kwargs)),
                bytes=sum(kinds.values()),
                linear_bytes=sum(kinds[k] for k in LINEAR_KINDS),
            )
        )
    base = rows[0]
    for r in rows:
        r["delta_bpb"] = r["bits_per_byte"] - base["bits_per_byte"]
        r["ratio"] = r["bytes"] / base["bytes"]
    return rows
