"""Quantized layers: QuantLinear and QuantExperts hold a QuantizedTensor (W8A8, W4A16 or FP8
blocks) in place of a weight and compute y = x W^T the way that scheme's kernel does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsim.model import Experts
from dsim.quant.checks import check_float
from dsim.quant.fp8 import act_quant, fp8_gemm
from dsim.quant.integer import QuantizedTensor, quantize, quantize_fp8

SCHEMES = ("w8a8", "w4a16", "fp8")


def quantize_weight(
    w: torch.Tensor, scheme: str, group_size: int | None = 128, scale_fmt: str | None = None
) -> QuantizedTensor:
    """A weight [..., N, K] quantized as `scheme` stores it.

    w8a8:  INT8 symmetric per output channel (an integer GEMM applies one weight scale per output
           column after accumulating, so finer weight scales would need FP8-style promotion).
    w4a16: INT4 symmetric per output channel (group_size=None) or per group of input channels.
    fp8:   E4M3 in group_size x group_size blocks (None: DeepSeek-V3's 128).
    """
    if scheme == "w8a8":
        return quantize(w, 8, "channel")
    if scheme == "w4a16":
        return (
            quantize(w, 4, "channel")
            if group_size is None
            else quantize(w, 4, "group", group_size, pad=None)
        )
    if scheme == "fp8":  # group_size None: DeepSeek-V3's 128 x 128 blocks
        return quantize_fp8(w, 128 if group_size is None else group_size, scale_fmt)
    raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")


# ANCHOR: linear_w8a8
def _linear_w8a8(
    x: torch.Tensor, w: QuantizedTensor, act_scale: torch.Tensor | None
) -> torch.Tensor:
    """INT8 x INT8 -> INT32 GEMM, then the two scales: y = (q_x q_w^T) * s_x * s_w.

    Activations get one scale per token (dynamic: absmax of the row, computed on the fly) or one
    static per-tensor scale from calibration. The integer accumulation is exact in float64 here, as
    it is in the int32 accumulator of an INT8 tensor core (|sum| < 2^31).
    """
    check_float(x, "activation")
    xf = x.float()
    if act_scale is None:
        s_x = xf.abs().amax(dim=-1, keepdim=True) / 127  # [..., 1] per token
        s_x = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
    else:
        s_x = act_scale.float()  # [] per tensor
    q_x = torch.clamp(torch.round(xf / s_x), -127, 127)
    acc = q_x.double() @ w.data.double().T  # [..., N] exact integers
    return (acc.float() * s_x * w.scale.float().reshape(-1)).to(x.dtype)
    # ANCHOR_END: linear_w8a8


def quant_linear(
    x: torch.Tensor, w: QuantizedTensor, scheme: str, act_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x W^T for a quantized weight W [N, K] under `scheme`. x: [..., K] -> [..., N]."""
    if scheme == "w8a8":
        return _linear_w8a8(x, w, act_scale)
    if scheme == "w4a16":  # weight-only: dequantize, multiply in x's dtype
        return F.linear(x, w.dequantize(x.dtype))
    if scheme == "fp8":  # DeepSeek's linear(): act_quant + fp8_gemm
        x_q, x_s = act_quant(x, w.group_size, w.scale_fmt)
        return fp8_gemm(x_q, x_s, w.data, w.scale, w.group_size).to(x.dtype)
    raise ValueError(f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}")


def _register_qt(module: nn.Module, prefix: str, qt: QuantizedTensor) -> None:
    """Store a QuantizedTensor's tensors as buffers (they move with .to() and appear in
    state_dict)."""
    module.register_buffer(f"{prefix}qweight", qt.data)
    module.register_buffer(f"{prefix}scale", qt.scale)
    module.register_buffer(f"{prefix}zero_point", qt.zero_point)
    setattr(
        module,
        f"_{prefix}meta",
        dict(
            bits=qt.bits,
            group_size=qt.group_size,
            shape=qt.shape,
            fmt=qt.fmt,
            granularity=qt.granularity,
            scale_fmt=qt.scale_fmt,
        ),
    )


def _get_qt(module: nn.Module, prefix: str) -> QuantizedTensor:
    return QuantizedTensor(
        getattr(module, f"{prefix}qweight"),
        getattr(module, f"{prefix}scale"),
        getattr(module, f"{prefix}zero_point"),
        **getattr(module, f"_{prefix}meta"),
    )


class QuantLinear(nn.Module):
    """A bias-free linear layer y = x W^T whose weight is stored quantized (W8A8, W4A16 or FP8).

    Buffers: qweight (codes), scale, zero_point (None here: all schemes are symmetric), act_scale
    (W8A8 only: None = dynamic per-token activation scales, else a calibrated per-tensor scale).
    `weight` returns the dequantized weight for code that reads it (MLA's absorbed path does, as
    DeepSeek's model.py calls weight_dequant there).
    """

    def __init__(self, qweight: QuantizedTensor, scheme: str):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(
                f"scheme = {scheme!r} is not supported: choose one of {', '.join(SCHEMES)}"
            )
        self.scheme = scheme
        self.out_features, self.in_features = qweight.shape
        _register_qt(self, "", qweight)
        self.register_buffer("act_scale", None)
        self._observed: list[torch.Tensor] | None = None  # calibration: inputs seen while observing

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scheme: str,
        group_size: int | None = 128,
        scale_fmt: str | None = None,
    ) -> QuantLinear:
        if linear.bias is not None:
            raise ValueError(
                "QuantLinear handles bias-free layers only (every dsim linear layer is)"
            )
        return cls(quantize_weight(linear.weight.detach(), scheme, group_size, scale_fmt), scheme)

    @property
    def qt(self) -> QuantizedTensor:
        return _get_qt(self, "")

    @property
    def weight(self) -> torch.Tensor:
        return self.qt.dequantize()

    @property
    def nbytes(self) -> int:
        return self.qt.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observed is not None:
            self._observed.append(x.detach().flatten())
        return quant_linear(x, self.qt, self.scheme, self.act_scale)

    def extra_repr(self) -> str:
        qt = self.qt
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scheme={self.scheme}, granularity={qt.granularity}, group_size={qt.group_size}"
        )


class QuantExperts(nn.Module):
    """Routed experts with stacked quantized weights, each expert quantized on its own.

    w1, w3: [E, I, D], w2: [E, D, I] as in dsim.model.Experts; scales per expert: [E, I, 1] per
    channel, [E, I, D/g] per group, [E, I/b, D/b] in FP8 blocks. The forward pass is the per-expert
    loop (the grouped-GEMM path computes the same thing). W8A8 may carry two calibrated
    activation scales: `act_scale` for the input x and `act_scale_hidden` for w2's input.
    """

    def __init__(self, w1: QuantizedTensor, w2: QuantizedTensor, w3: QuantizedTensor, scheme: str):
        super().__init__()
        self.scheme, self.n_experts = scheme, w1.shape[0]
        for name, qt in (("w1", w1), ("w2", w2), ("w3", w3)):
            _register_qt(self, f"{name}_", qt)
        self.register_buffer("act_scale", None)
        self.register_buffer("act_scale_hidden", None)
        self._observed: dict[str, list[torch.Tensor]] | None = None

    @classmethod
    def from_experts(
        cls,
        experts: Experts,
        scheme: str,
        group_size: int | None = 128,
        scale_fmt: str | None = None,
    ) -> QuantExperts:
        q = {
            n: quantize_weight(getattr(experts, n).detach(), scheme, group_size, scale_fmt)
            for n in ("w1", "w2", "w3")
        }
        return cls(q["w1"], q["w2"], q["w3"], scheme)

    @property
    def nbytes(self) -> int:
        return sum(_get_qt(self, f"{n}_").nbytes for n in ("w1", "w2", "w3"))

    def dequantized(self, name: str) -> torch.Tensor:
        """The stacked weight `name` ("w1", "w2", "w3") dequantized: [E, out, in]."""
        return _get_qt(self, f"{name}_").dequantize()

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x: [n, D] -> [n, D]."""
        if self._observed is not None:
            self._observed["in"].append(x.detach().flatten())
        w1, w2, w3 = (_get_qt(self, f"{n}_").select(e) for n in ("w1", "w2", "w3"))
        h = F.silu(quant_linear(x, w1, self.scheme, self.act_scale)) * quant_linear(
            x, w3, self.scheme, self.act_scale
        )
        if self._observed is not None:
            self._observed["hidden"].append(h.detach().flatten())
        return quant_linear(h, w2, self.scheme, self.act_scale_hidden)

    forward_loop = Experts.forward_loop

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "loop"
    ) -> torch.Tensor:
        return self.forward_loop(x, indices, weights)

    def extra_repr(self) -> str:
        qt = _get_qt(self, "w1_")
        return (
            f"n_experts={self.n_experts}, scheme={self.scheme}, "
            f"granularity={qt.granularity}, group_size={qt.group_size}"
        )
