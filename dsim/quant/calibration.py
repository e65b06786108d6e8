"""Calibration of activation ranges for static INT8 scales: absmax, percentile, MSE and KL
(TensorRT's entropy calibration), for one tensor (calibrate) or every W8A8 layer of a model
(calibrate_model)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

try:
    from numba import njit
except (
    ImportError
):  # pragma: no cover - the KL search then runs as plain Python (slow, same result)

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


from dsim.quant.checks import check_bits, check_float, check_int
from dsim.quant.convert import _check_module
from dsim.quant.layers import QuantExperts, QuantLinear


@njit(cache=True)
def _kl_search(hist: np.ndarray, n_levels: int) -> int:
    """TensorRT's entropy calibration: the number of histogram bins i whose clipping to n_levels
    quantization levels loses the least information, KL(P || Q).

    P: hist[:i] with everything beyond bin i folded into its last bin (the clipped distribution).
    Q: hist[:i] merged into n_levels equal runs of bins, each run's mass spread evenly over its
       non-empty bins (what quantization with threshold i keeps). Both are smoothed with eps.
    """
    n_bins = hist.shape[0]
    eps = 1e-4
    best_i, best_kl = n_bins, np.inf
    for i in range(n_levels, n_bins + 1):
        p = hist[:i].astype(np.float64)
        p[i - 1] += hist[i:].sum()
        q = np.zeros(i)
        for j in range(n_levels):
            start, stop = j * i // n_levels, (j + 1) * i // n_levels
            total, nonzero = 0.0, 0
            for k in range(start, stop):
                total += hist[k]
                nonzero += hist[k] != 0
            if nonzero > 0:
                for k in range(start, stop):
                    if hist[k] != 0:
                        q[k] = total / nonzero
        kl = 0.0
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p_zero, q_zero = (p == 0).sum(), (q == 0).sum()
        p_eps = eps * p_zero / max(i - p_zero, 1)
        q_eps = eps * q_zero / max(i - q_zero, 1)
        for k in range(i):
            pk = p[k] / ps
            pk = eps if pk == 0 else pk - p_eps
            qk = q[k] / qs
            qk = eps if qk == 0 else qk - q_eps
            if pk > 0 and qk > 0:
                kl += pk * np.log(pk / qk)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def calibrate(
    x: torch.Tensor,
    method: str = "absmax",
    bits: int = 8,
    percentile: float = 99.99,
    num_bins: int = 2048,
    max_samples: int = 1 << 16,
) -> float:
    """The clipping threshold T of a symmetric per-tensor quantizer for samples x (scale T / qmax).

    absmax:     T = max|x|, nothing clipped.
    percentile: T = the `percentile`-th percentile of |x|.
    mse:        T minimising E[(x - dequant(quant(x)))^2] over 100 thresholds in (0, max|x|].
    kl:         TensorRT's entropy calibration over a `num_bins` histogram of |x| (see _kl_search).
    mse uses at most `max_samples` evenly strided samples (deterministic).
    """
    check_float(x, "calibration sample")
    check_bits(bits)
    if method not in ("absmax", "percentile", "mse", "kl"):
        raise ValueError(f"method = {method!r} is not supported: absmax, percentile, mse or kl")
    check_int(max_samples, "max_samples", 1)
    # KL needs at least one histogram bin per quantization level (TensorRT uses 2048 bins)
    check_int(num_bins, "num_bins", 2 ** (bits - 1))
    a = x.detach().abs().float().flatten()
    if a.numel() == 0:
        raise ValueError("calibrate needs at least one sample")
    amax = float(a.max())
    qmax = 2 ** (bits - 1) - 1
    if amax == 0 or method == "absmax":
        return amax
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile = {percentile} must be in (0, 100]")
        k = max(1, math.ceil(percentile / 100 * a.numel()))
        return float(a.kthvalue(k).values)
    if method == "mse":
        s = a[:: max(1, a.numel() // max_samples)]  # [n] samples
        thresholds = amax * torch.arange(1, 101, dtype=torch.float32) / 100  # [100]
        scale = (thresholds / qmax)[:, None]  # [100, 1]
        err = ((torch.clamp(torch.round(s / scale), -qmax, qmax) * scale - s) ** 2).mean(dim=1)
        return float(thresholds[int(err.argmin())])
    hist = torch.histc(a, bins=num_bins, min=0.0, max=amax).double().numpy()  # method == "kl"
    return _kl_search(hist, qmax + 1) * amax / num_bins


@torch.no_grad()
def calibrate_model(
    model: nn.Module, batches: Iterable[torch.Tensor], method: str = "absmax", **kwargs
) -> dict[str, float]:
    """Give every W8A8 layer of a quantized model a static per-tensor activation scale.

    Runs `model` on the token batches [B, S], records the inputs of each QuantLinear (and the input
    and hidden activations of each QuantExperts), and sets act_scale = calibrate(...) / 127.
    Returns the thresholds by name. Until this runs, W8A8 scales activations per token on the fly.
    """
    _check_module(model)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (QuantLinear, QuantExperts)) and m.scheme == "w8a8"
    ]
    if not layers:
        raise ValueError(
            "calibrate_model needs a model with W8A8 layers: "
            "call quantize_model(model, 'w8a8') first"
        )
    for _, m in layers:
        m.act_scale = None
        if isinstance(m, QuantExperts):
            m.act_scale_hidden = None
            m._observed = {"in": [], "hidden": []}
        else:
            m._observed = []
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for tokens in batches:
            model(tokens)
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        for _, m in layers:
            m._observed = None
        raise ValueError("calibrate_model needs at least one batch of tokens: batches was empty")
    thresholds: dict[str, float] = {}
    for name, m in layers:
        observed, m._observed = m._observed, None
        if isinstance(m, QuantExperts):
            for key, attr in (("in", "act_scale"), ("hidden", "act_scale_hidden")):
                if observed[key]:
                    t = calibrate(torch.cat(observed[key]), method, 8, **kwargs)
                    thresholds[f"{name}.{key}"] = t
                    setattr(m, attr, torch.tensor(max(t, 1e-12) / 127))
        elif observed:
            t = calibrate(torch.cat(observed), method, 8, **kwargs)
            thresholds[name] = t
            m.act_scale = torch.tensor(max(t, 1e-12) / 127)
    return thresholds
