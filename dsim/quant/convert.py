"""Whole models: which layers of a Transformer to quantize, quantize_model that swaps them for
quantized layers, and the bytes each part of the model stores before and after."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from dsim.model import Experts
from dsim.quant.checks import check_block
from dsim.quant.layers import SCHEMES, QuantExperts, QuantLinear

LAYERS = ("all", "experts", "attention")
KINDS = (
    "embedding",
    "attention",
    "dense_ffn",
    "shared_experts",
    "routed_experts",
    "gate",
    "norms",
    "head",
    "other",
)
LINEAR_KINDS = ("attention", "dense_ffn", "shared_experts", "routed_experts", "other")


def kind_of(name: str) -> str:
    """Which part of a dsim Transformer a parameter or buffer name belongs to (see KINDS)."""
    parts = name.split(".")
    if parts[0] == "embed":
        return "embedding"
    if parts[0] == "head":
        return "head"
    if any(p.endswith("norm") for p in parts[:-1]):
        return "norms"
    if "attn" in parts:
        return "attention"
    if "ffn" in parts[:-1]:
        after = parts[parts.index("ffn") + 1]
        if after == "gate":
            return "gate"
        if after.startswith("experts"):
            return "routed_experts"
        if after == "shared_experts":
            return "shared_experts"
        return "dense_ffn"
    return "other"


def _check_module(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module (a Transformer), got {type(model).__name__}")


def bytes_by_kind(model: nn.Module) -> dict[str, int]:
    """Bytes of everything a checkpoint of `model` holds (parameters and persistent buffers), by
    kind.

    Tied tensors count once; non-persistent buffers (RoPE tables) count as nothing.
    """
    _check_module(model)
    out = {k: 0 for k in KINDS}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out[kind_of(name)] += t.numel() * t.element_size()
    return out


@dataclass
class QuantReport:
    """What quantize_model did: the modules it replaced and the bytes before and after, by kind."""

    scheme: str
    layers: str
    group_size: int | None
    before: dict[str, int]
    after: dict[str, int]
    replaced: list[str] = field(default_factory=list)

    @property
    def total_before(self) -> int:
        return sum(self.before.values())

    @property
    def total_after(self) -> int:
        return sum(self.after.values())

    def rows(self) -> list[dict]:
        return [
            dict(
                kind=k,
                bytes_before=self.before[k],
                bytes_after=self.after[k],
                ratio=self.after[k] / self.before[k] if self.before[k] else float("nan"),
            )
            for k in KINDS
            if self.before[k]
        ]

    def __str__(self) -> str:
        lines = [
            f"{self.scheme} ({self.layers}, group_size={self.group_size}): "
            f"{len(self.replaced)} modules",
            f"{'kind':<16}{'before':>12}{'after':>12}{'ratio':>8}",
        ]
        lines += [
            f"{r['kind']:<16}{r['bytes_before']:>12,}{r['bytes_after']:>12,}{r['ratio']:>8.3f}"
            for r in self.rows()
        ]
        lines.append(
            f"{'total':<16}{self.total_before:>12,}{self.total_after:>12,}"
            f"{self.total_after / self.total_before:>8.3f}"
        )
        return "\n".join(lines)


def _targets(model: nn.Module, layers: str) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(parent, attribute, module, full name) of every module quantize_model would replace.

    "all": every nn.Linear except the output head, and the routed experts. The embedding, the head,
    the gate and the norms stay in high precision, as in DeepSeek-V3 (paper, section 3.3.1).
    "attention": the attention projections. "experts": the routed experts only.
    """
    _check_module(model)
    if layers not in LAYERS:
        raise ValueError(f"layers = {layers!r} is not supported: choose one of {', '.join(LAYERS)}")
    out = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}" if parent_name else attr
            if isinstance(child, Experts):
                if layers in ("all", "experts"):
                    out.append((parent, attr, child, name))
            elif isinstance(child, nn.Linear) and name != "head":
                kind = kind_of(name + ".weight")
                if layers == "all" or (layers == "attention" and kind == "attention"):
                    out.append((parent, attr, child, name))
    return out


def quantize_model(
    model: nn.Module,
    scheme: str,
    layers: str = "all",
    group_size: int | None = 128,
    scale_fmt: str | None = None,
) -> QuantReport:
    """Replace linear layers and routed experts of `model` in place by quantized ones.

    scheme: "w8a8", "w4a16" (group_size=None: per channel) or "fp8" (group_size is the block side).
    layers: "all", "experts" or "attention" (see _targets). Returns the bytes before and after.
    """
    if scheme not in SCHEMES:
        raise ValueError(
            f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}"
        )
    if group_size is not None:
        check_block(group_size, "group_size")
    targets = _targets(model, layers)
    for _, _, module, name in targets:
        if parametrize.is_parametrized(module):
            raise ValueError(
                f"{name} carries a QAT parametrization: call finish_qat(model) instead"
            )
    before = bytes_by_kind(model)
    for parent, attr, module, _ in targets:
        if isinstance(module, Experts):
            new = QuantExperts.from_experts(module, scheme, group_size, scale_fmt)
        else:
            new = QuantLinear.from_linear(module, scheme, group_size, scale_fmt)
        setattr(parent, attr, new)
    return QuantReport(
        scheme,
        layers,
        None if scheme == "w8a8" else group_size,
        before,
        bytes_by_kind(model),
        [name for *_, name in targets],
    )
