"""Models side by side: the numbers each design choice changes (the MoE zoo chapter).

One `Profile` per model, every number from the same cost views as the rest of dsim:

    total, active        parameters (`params`): all of the main model (MTP modules left out, as
                         the published sizes do), and those one token passes through without the
                         embedding table (the N of 6ND)
    expert_width         moe_inter_dim / dim: how fine-grained the routed experts are (Mixtral's
                         hidden layer is 3.5 model widths wide, DeepSeek-V3's 0.29)
    kv_bytes_per_token   KV cache per token at each context length, as a deployment keeps it (MLA:
                         the absorbed latent; sliding-window layers: their window only), bf16
    flops_per_token      forward model FLOPs of decoding one token after `context` cached ones:
                         attention over the keys the mask keeps (causal, window, V3.2's top-k)
    serve_bytes          weights (routed experts in `expert_dtype`, the rest in bf16) plus the
                         KV cache of `batch` sequences of `context` tokens: what one replica of
                         the model needs, before activations and fragmentation
"""

from __future__ import annotations

from dataclasses import dataclass

from dsim.config import ModelArgs
from dsim.cost.flops import flops
from dsim.cost.memory import kv_cache_bytes_per_token, memory
from dsim.cost.params import params


@dataclass(frozen=True)
class Profile:
    """One model's numbers for the comparison (see the module docstring)."""

    name: str
    args: ModelArgs
    total: int
    active: int
    expert_width: float
    kv_bytes_per_token: dict[int, float]
    flops_per_token: float
    serve_bytes: float
    expert_dtype: str
    context: int
    batch: int

    @property
    def active_share(self) -> float:
        """Active parameters as a share of all of them."""
        return self.active / self.total


def profile(
    args: ModelArgs,
    *,
    contexts: tuple[int, ...] = (32768, 131072),
    context: int = 32768,
    batch: int = 32,
    expert_dtype: str = "bf16",
    name: str | None = None,
) -> Profile:
    """The comparison's numbers for one model (see the module docstring).

    contexts: the context lengths of the KV-cache column; context and batch: the decode step
    whose FLOPs per token and serving memory are reported. The lengths may exceed the model's
    max_seq_len: this is a what-if of the architecture, not a claim that it was trained there.
    """
    if not isinstance(args, ModelArgs):
        raise ValueError(f"args must be a dsim.config.ModelArgs, got {type(args).__name__}")
    for label, value in [("context", context), ("batch", batch)] + [
        ("contexts", c) for c in contexts
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must hold integers >= 1, got {value!r}")
    p = params(args)
    kv = {c: kv_cache_bytes_per_token(args, "bf16", seq_len=c) for c in contexts}
    step = flops(args, batch=1, seq_len=context, mode="decode")
    mem = memory(
        args.replace(n_mtp_layers=0),
        mode="inference",
        batch=batch,
        seq_len=context,
        dtype="bf16",
        expert_dtype=expert_dtype,
    )
    return Profile(
        name=name or args.name,
        args=args,
        total=p.total_no_mtp,
        active=p.active_no_embedding,
        expert_width=args.moe_inter_dim / args.dim if args.is_moe else 0.0,
        kv_bytes_per_token=kv,
        flops_per_token=step.total_causal,
        serve_bytes=mem.weights + mem.kv_cache,
        expert_dtype=expert_dtype,
        context=context,
        batch=batch,
    )


def table(profiles: list[Profile]) -> list[dict[str, object]]:
    """Rows for a table (one per model): sizes in billions, bytes in KiB or GB, FLOPs in GFLOP."""
    rows = []
    for pr in profiles:
        a = pr.args
        row: dict[str, object] = {
            "model": pr.name,
            "total (B)": round(pr.total / 1e9, 1),
            "active (B)": round(pr.active / 1e9, 1),
            "experts": f"{a.n_activated_experts}/{a.n_routed_experts}+{a.n_shared_experts}"
            if a.is_moe
            else "dense",
            "expert width": round(pr.expert_width, 2),
            "attention": _attention(a),
        }
        for c, b in pr.kv_bytes_per_token.items():
            row[f"KV KiB/token @{c // 1024}K"] = round(b / 1024, 1)
        row[f"GFLOP/token @{pr.context // 1024}K"] = round(pr.flops_per_token / 1e9, 1)
        row[f"GB to serve {pr.batch} x {pr.context // 1024}K"] = round(pr.serve_bytes / 1e9)
        rows.append(row)
    return rows


def _attention(a: ModelArgs) -> str:
    """A short description of the attention design: MLA (with V3.2's top-k), or GQA's heads and
    the options that change its cost."""
    if a.attn_type == "mla":
        return f"MLA r={a.kv_lora_rank}" + (f", top-{a.index_topk}" if a.has_indexer else "")
    text = f"{a.attn_type.upper()} {a.n_heads}/{a.kv_heads}x{a.head_size}"
    if a.sliding_window:
        text += f", window {a.sliding_window} in {len(a.window_layers)}/{a.n_layers}"
    return text
