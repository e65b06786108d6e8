"""LoRA and QLoRA: low-rank adapters on a frozen dsim.model, the base in float or in INT4.

LoRA (Hu et al. 2021) freezes a weight W [out, in] and learns a low-rank change:

    y = x W^T + (alpha / r) * (x A^T) B^T        A: [r, in] (random), B: [out, r] (zeros)

so only r * (in + out) numbers per weight train, and with B = 0 the model starts exactly where the
base model is. QLoRA (Dettmers et al. 2023) stores the frozen W in 4 bits and dequantizes it for
each product; here the base is dsim's INT4 group quantization (dsim.quant, scheme "w4a16"), not
QLoRA's NF4 with double quantization.

The adapters wrap the model's modules from outside; dsim.model is not changed:
- `LoRALinear` wraps an nn.Linear or a dsim.quant.QuantLinear (attention projections, dense FFN,
  shared experts);
- `LoRAExperts` wraps the stacked routed experts (dsim.model.Experts or dsim.quant.QuantExperts):
  expert e gets its own A_e, B_e for each of w1, w2, w3, stored stacked ([E, r, in], [E, out, r]),
  and the adapter runs through the same grouped GEMM as the experts (two thin GEMMs per weight).

    add_lora(model, rank=8)                # attention + routed experts; everything else frozen
    add_qlora(model, rank=8, group_size=32)  # quantize the base to INT4 first
    finetune(model, data, steps=60)        # AdamW on the parameters that require grad
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dsim.kernels import _Permute, grouped_mm
from dsim.model import Experts, Transformer
from dsim.offload import unsupported_expert_features
from dsim.quant import QuantExperts, QuantLinear, kind_of, quantize_model
from dsim.train import get_batch, lm_loss

TARGETS = ("attention", "routed_experts", "shared_experts", "dense_ffn")


class _Dequantized(torch.autograd.Function):
    """y = x W^T (counts None) or the grouped product of rows sorted by expert (counts [E]) with a
    frozen W that `dequant()` rebuilds from its INT4 codes: once in the forward and once more in the
    backward, so that autograd keeps the 4-bit codes, never the dequantized weight (QLoRA's
    memory trick; bitsandbytes does the same). Only x gets a gradient."""

    @staticmethod
    def forward(ctx, x, counts, dequant):
        ctx.counts, ctx.dequant = counts, dequant
        w = dequant().to(x.dtype)  # [out, in] or [E, out, in]
        return F.linear(x, w) if counts is None else grouped_mm(x, w, counts)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.dequant().to(grad.dtype)
        if ctx.counts is None:
            return grad @ w, None, None
        return grouped_mm(grad, w.transpose(-2, -1).contiguous(), ctx.counts), None, None


def _check_rank(rank: int, alpha: float) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank = {rank!r} must be an integer >= 1")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha = {alpha!r} must be a finite number > 0")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * (x A^T) B^T around a frozen linear layer (float or quantized).

    base: nn.Linear or QuantLinear, bias-free, [out, in]. A: [rank, in], Kaiming-uniform as in
    nn.Linear (and PEFT); B: [out, rank], zeros.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        _check_rank(rank, alpha)
        if not isinstance(base, (nn.Linear, QuantLinear)):
            raise ValueError(
                f"LoRALinear wraps nn.Linear or QuantLinear, got {type(base).__name__}"
            )
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        out_features, in_features = base.out_features, base.in_features
        ref = next(base.buffers() if isinstance(base, QuantLinear) else base.parameters())
        dtype = torch.float32 if isinstance(base, QuantLinear) else ref.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=ref.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=ref.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        """The merged weight W + (alpha / r) B A (MLA's absorbed attention reads wkv_b.weight)."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        if isinstance(self.base, QuantLinear) and self.base.scheme == "w4a16":
            return _Dequantized.apply(x, None, lambda: self.base.weight) + low
        return self.base(x) + low

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


class LoRAExperts(nn.Module):
    """Routed experts (float Experts or INT4 QuantExperts, frozen) with one adapter per expert.

    For expert e and weight w in (w1, w2, w3): W_e + (alpha / r) B_e A_e, with
    A_w1, A_w3: [E, r, D], B_w1, B_w3: [E, I, r], A_w2: [E, r, I], B_w2: [E, D, r].
    The forward pass is Experts.forward_grouped with two more grouped GEMMs per weight; with a
    float base and B = 0 it computes exactly what the base experts compute.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        _check_rank(rank, alpha)
        if not isinstance(base, (Experts, QuantExperts)):
            raise ValueError(
                f"LoRAExperts wraps Experts or QuantExperts, got {type(base).__name__}"
            )
        if unsupported_expert_features(base):
            raise ValueError(f"LoRAExperts cannot run {unsupported_expert_features(base)}")
        if isinstance(base, QuantExperts) and base.scheme != "w4a16":
            raise ValueError(f"QLoRA's base must be w4a16 (INT4), got scheme {base.scheme!r}")
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        self.n_experts = base.n_experts
        for p in base.parameters():
            p.requires_grad_(False)
        E = base.n_experts
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in ("w1", "w2", "w3"):
            w = self._base_weight(name)  # [E, out, in]
            dtype = torch.float32 if isinstance(base, QuantExperts) else w.dtype
            a = torch.empty(E, rank, w.shape[2], dtype=dtype, device=w.device)
            for e in range(E):
                nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(
                torch.zeros(E, w.shape[1], rank, dtype=dtype, device=w.device)
            )

    def _base_weight(self, name: str) -> torch.Tensor:
        """The frozen stacked weight [E, out, in]; an INT4 base is dequantized here, on every call
        (QLoRA's cost: the 4-bit weight is stored, the product runs in the adapter's dtype)."""
        if isinstance(self.base, QuantExperts):
            return self.base.dequantized(name)
        return getattr(self.base, name)

    def _linear(self, xs: torch.Tensor, name: str, counts: torch.Tensor) -> torch.Tensor:
        """Rows xs [N, in] sorted by expert -> [N, out]: W_e x + s B_e (A_e x) for each row's e."""
        low = grouped_mm(grouped_mm(xs, self.lora_A[name], counts), self.lora_B[name], counts)
        if isinstance(self.base, QuantExperts):
            base = _Dequantized.apply(xs, counts, lambda: self._base_weight(name))
        else:
            base = grouped_mm(xs, self._base_weight(name), counts)
        return base + self.scaling * low

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "grouped"
    ) -> torch.Tensor:
        """x: [T, D], indices/weights: [T, K] -> [T, D] (impl is accepted for the MoE's call)."""
        T, K = indices.shape
        flat = indices.flatten()
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(T * K, device=order.device)
        counts = flat.new_zeros(self.n_experts).scatter_add_(0, flat, torch.ones_like(flat))
        xs = _Permute.apply(x, order // K, inverse, K)  # [T*K, D] sorted by expert
        h = F.silu(self._linear(xs, "w1", counts)) * self._linear(xs, "w3", counts)
        ys = _Permute.apply(self._linear(h, "w2", counts), inverse, order, 1)  # [T*K, D]
        return (ys.view(T, K, -1) * weights.unsqueeze(-1)).sum(1)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, rank={self.rank}, scaling={self.scaling:g}"


class FrozenQuantLinear(nn.Module):
    """A frozen INT4 linear layer that QLoRA does not adapt (the dense FFN, the shared experts):
    y = x W^T through _Dequantized, so autograd keeps its codes, not its dequantized weight."""

    def __init__(self, base: QuantLinear):
        super().__init__()
        if not isinstance(base, QuantLinear) or base.scheme != "w4a16":
            raise ValueError("FrozenQuantLinear wraps a w4a16 QuantLinear")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Dequantized.apply(x, None, lambda: self.base.weight)


def add_lora(
    model: Transformer,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Iterable[str] = ("attention", "routed_experts"),
) -> list[str]:
    """Freeze every parameter of `model` and wrap the targeted modules with adapters, in place.

    targets: any of "attention" (every projection of MLA or GQA), "routed_experts",
    "shared_experts", "dense_ffn". The embedding, head, gate and norms stay frozen and unwrapped.
    Returns the names of the wrapped modules.
    """
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"targets = {targets!r}: choose one or more of {', '.join(TARGETS)}")
    _check_rank(rank, alpha)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        if isinstance(parent, (LoRALinear, LoRAExperts)):
            continue
        for attr, child in list(parent.named_children()):
            name = f"{parent_name}.{attr}" if parent_name else attr
            if name == "head":
                continue
            kind = kind_of(name + ".weight")
            if kind not in targets:
                continue
            if isinstance(child, (Experts, QuantExperts)):
                setattr(parent, attr, LoRAExperts(child, rank, alpha))
            elif isinstance(child, (nn.Linear, QuantLinear)):
                setattr(parent, attr, LoRALinear(child, rank, alpha))
            else:
                continue
            wrapped.append(name)
    return wrapped


def add_qlora(
    model: Transformer,
    rank: int = 8,
    alpha: float = 16.0,
    group_size: int = 32,
    targets: Iterable[str] = ("attention", "routed_experts"),
) -> list[str]:
    """QLoRA: quantize the base's linear layers and routed experts to INT4 per group of
    `group_size` input channels (dsim.quant "w4a16"; embedding, head, gate and norms stay), then
    add_lora; the quantized linear layers left without an adapter become FrozenQuantLinear (routed
    experts left without one keep QuantExperts' loop). Returns the wrapped modules' names."""
    quantize_model(model, "w4a16", layers="all", group_size=group_size)
    wrapped = add_lora(model, rank, alpha, targets)
    for parent in list(model.modules()):
        if isinstance(parent, (LoRALinear, FrozenQuantLinear)):
            continue
        for attr, child in list(parent.named_children()):
            if isinstance(child, QuantLinear):
                setattr(parent, attr, FrozenQuantLinear(child))
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (every A and B)."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def finetune(
    model: Transformer,
    data: torch.Tensor,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 8,
    seq_len: int = 128,
    seed: int = 0,
) -> list[float]:
    """AdamW on the parameters that require grad, next-byte loss on random windows of `data`.

    Returns the training loss (nats) of each step. A model after add_lora trains its adapters
    only; a plain model trains everything (a full fine-tune).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps = {steps!r} must be an integer >= 1")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad: nothing to fine-tune")
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, batch_size, seq_len, gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
