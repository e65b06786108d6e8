"""Expert offloading: routed experts kept in host memory, a device cache of a few per layer.

A MoE model's routed experts are most of its weights but a token uses only K of E per layer, so a
GPU can hold the attention, the shared experts and a cache of `cache_size` experts per layer while
the rest wait in CPU memory (pinned where CUDA exists, so that copies can run asynchronously).
When the gate picks an expert that is not cached, it is copied into the least recently used slot.

`OffloadedExperts` replaces a MoE layer's `Experts` and computes exactly what `Experts.forward_loop`
computes (same per-expert arithmetic, experts visited in ascending order), so the offloaded model's
logits equal the resident model's with expert_impl="loop" bit for bit, whatever the cache size
(tests/test_offload.py), and equal the default grouped dispatch to rounding. Visiting the needed
experts in ascending order is the simple choice: a faster schedule runs the cached experts first
while the missing ones are copied.

With `prefetch=True`, `offload_experts` also hooks each MoE layer so that, before it runs, it feeds
its own input to the *next* MoE layer's gate and copies that gate's most chosen experts into the
next layer's cache (the hidden state changes little from one layer to the next, so the next gate's
choice on it is a good guess; Eliseev and Mazur 2023 use the same trick). Prefetched copies are
counted apart from misses.

    layers = offload_experts(model, cache_size=2, device="cuda", prefetch=True)
    model.to("cuda")   # the rest of the model; the offloaded experts stay on the host
    model(tokens); [l.stats() for l in layers]    # hits, misses, prefetched, bytes copied

Copies are issued with non_blocking=True on the current stream; overlapping them with compute on
a separate copy stream is not done here (bench/offload_measure.py measures what this costs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dsim.model import Experts, MoE, Transformer


def unsupported_expert_features(module: nn.Module) -> list[str]:
    """Features of other model families (expert biases, a clamped SwiGLU, a gated shared expert)
    that the offloaded, adapted (dsim.lora) and exported (dsim.export) experts do not compute:
    their names, so that those modules refuse such a layer instead of computing something else.
    `module` is an Experts or a MoE; attributes a dsim.model version lacks count as absent."""
    experts = module.experts if isinstance(module, MoE) else module
    found = [
        f"expert bias {b}" for b in ("b1", "b2", "b3") if getattr(experts, b, None) is not None
    ]
    if getattr(experts, "swiglu_limit", 0) > 0:
        found.append("clamped SwiGLU (swiglu_limit)")
    if isinstance(module, MoE) and getattr(module, "shared_gate", None) is not None:
        found.append("gated shared expert (shared_gate)")
    return found


class OffloadedExperts(nn.Module):
    """E routed experts in host memory, `cache_size` of them resident on `device` at a time (LRU).

    Host: w1, w3: [E, I, D], w2: [E, D, I] (pinned when CUDA is available). Device: slot tensors
    [cache_size, I, D] / [cache_size, D, I]. Not trainable: an inference-time layout.
    """

    def __init__(self, experts: Experts, cache_size: int, device: str | torch.device = "cpu"):
        super().__init__()
        if not isinstance(experts, Experts):
            raise ValueError(f"OffloadedExperts takes dsim.model.Experts, got {type(experts)}")
        if unsupported_expert_features(experts):
            raise ValueError(f"OffloadedExperts cannot run {unsupported_expert_features(experts)}")
        E = experts.n_experts
        if not isinstance(cache_size, int) or not 1 <= cache_size <= E:
            raise ValueError(f"cache_size = {cache_size!r} must be an integer in [1, {E}]")
        self.n_experts, self.cache_size, self.device = E, cache_size, torch.device(device)
        pin = torch.cuda.is_available()
        # plain attributes, not buffers: Module.to(device) must leave the host copies on the host
        self.host = {}
        for n in ("w1", "w2", "w3"):
            w = getattr(experts, n).detach().to("cpu").contiguous()
            self.host[n] = w.pin_memory() if pin else w.clone()
        self.slots = {
            n: torch.empty((cache_size, *w.shape[1:]), dtype=w.dtype, device=self.device)
            for n, w in self.host.items()
        }
        self.where: OrderedDict[int, int] = OrderedDict()  # expert -> slot, least recent first
        self.expert_bytes = sum(w[0].numel() * w.element_size() for w in self.host.values())
        self.reset_stats()

    def reset_stats(self) -> None:
        self.hits = self.misses = self.prefetched = 0

    def stats(self) -> dict[str, int]:
        copies = self.misses + self.prefetched
        return dict(
            hits=self.hits,
            misses=self.misses,
            prefetched=self.prefetched,
            bytes_copied=copies * self.expert_bytes,
        )

    def _load(self, e: int) -> int:
        """Copy expert e from the host into the least recently used slot; returns the slot."""
        if len(self.where) < self.cache_size:
            slot = len(self.where)
        else:
            _, slot = self.where.popitem(last=False)  # evict the least recently used
        for n, w in self.host.items():
            self.slots[n][slot].copy_(w[e], non_blocking=True)
        self.where[e] = slot
        return slot

    def fetch(self, e: int) -> int:
        """The slot holding expert e, loading it on a miss; e becomes the most recently used."""
        if e in self.where:
            self.hits += 1
            self.where.move_to_end(e)
            return self.where[e]
        self.misses += 1
        return self._load(e)

    def prefetch(self, experts: Iterable[int]) -> None:
        """Load these experts ahead of use (at most cache_size of them, the first ones first)."""
        for e in list(experts)[: self.cache_size]:
            if e in self.where:
                self.where.move_to_end(e)
            else:
                self.prefetched += 1
                self._load(e)

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, impl: str = "loop"
    ) -> torch.Tensor:
        """Experts.forward_loop with each expert's weights taken from its cache slot.
        x: [T, D], indices/weights: [T, K] -> [T, D]."""
        y = torch.zeros_like(x)
        for e in torch.unique(indices).tolist():  # ascending, as forward_loop
            s = self.fetch(e)
            token, slot = torch.where(indices == e)
            w1, w2, w3 = self.slots["w1"][s], self.slots["w2"][s], self.slots["w3"][s]
            h = F.silu(F.linear(x[token], w1)) * F.linear(x[token], w3)
            y.index_add_(0, token, F.linear(h, w2) * weights[token, slot, None])
        return y

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, cache_size={self.cache_size}, device={self.device}"


def _prefetch_hook(next_moe: MoE, offloaded: OffloadedExperts):
    """A forward pre-hook for a MoE layer: its input, through the next MoE layer's gate, names the
    experts to prefetch there (the most chosen first)."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].reshape(-1, next_moe.args.dim)
        with torch.no_grad():
            chosen = next_moe.gate(x).indices.flatten()
        counts = torch.bincount(chosen, minlength=offloaded.n_experts)
        order = torch.argsort(counts, descending=True, stable=True)
        offloaded.prefetch(int(e) for e in order[: int((counts > 0).sum())])

    return hook


def offload_experts(
    model: Transformer,
    cache_size: int,
    device: str | torch.device = "cpu",
    prefetch: bool = False,
) -> list[OffloadedExperts]:
    """Replace every MoE layer's routed experts by OffloadedExperts (in place); returns them in
    layer order. With prefetch, each MoE layer prefetches the next one's likely experts. Move the
    rest of the model to `device` afterwards (model.to(device))."""
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    if not moes:
        raise ValueError("the model has no MoE layer: nothing to offload")
    out = []
    for moe in moes:
        moe.experts = OffloadedExperts(moe.experts, cache_size, device)
        out.append(moe.experts)
    if prefetch:
        main = [m for m in model.layers if isinstance(m.ffn, MoE)]
        for cur, nxt in zip(main, main[1:]):
            cur.ffn.register_forward_pre_hook(_prefetch_hook(nxt.ffn, nxt.ffn.experts))
    return out


@torch.no_grad()
def routing_trace(model: Transformer, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The experts each MoE layer of the main model picks for every token: one [T, K] tensor per
    layer (T = B*S tokens of `tokens` [B, S], in order), from one forward pass."""
    model(tokens)
    return [b.ffn.routing.indices.clone() for b in model.layers if isinstance(b.ffn, MoE)]
