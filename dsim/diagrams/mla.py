"""MLA's data flow, drawn from the module itself: the widths are the shapes of `dsim.model.MLA`'s
weights and of the cache it fills, for any ModelArgs (DeepSeek-V3's preset by default)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from dsim.config import ModelArgs, preset
from dsim.diagrams._draw import COLORS, arrow, blank, box, fmt_int
from dsim.model import MLA
from dsim.model.layers import precompute_freqs_cis

IMPLS = ("naive", "absorb")


@dataclass(frozen=True)
class MLAShapes:
    """What one token meets in one MLA layer: weight shapes (out, in) by name, and the numbers the
    cache keeps per token, by cache buffer ("k", "v" naive; "kv", "pe" absorbed)."""

    weights: dict[str, tuple[int, ...]]
    cache: dict[str, int]

    @property
    def cached_per_token(self) -> int:
        return sum(self.cache.values())


def mla_shapes(args: ModelArgs) -> MLAShapes:
    """Build `MLA(args)` on the meta device (shapes only, no memory), run one token through it
    with the cache on, and read its weight shapes and cache buffers."""
    if args.attn_type != "mla":
        raise ValueError(
            f"ModelArgs.attn_type must be 'mla' for this diagram, got {args.attn_type!r}"
        )
    args = args.replace(max_batch_size=1)
    with torch.device("meta"):
        mla = MLA(args)
        mla(torch.empty(1, 1, args.dim), 0, precompute_freqs_cis(args)[:1], use_cache=True)
    weights = {n.removesuffix(".weight"): tuple(p.shape) for n, p in mla.named_parameters()}
    cache = {}
    for name, buf in mla.cache.items():  # [batch, max_seq_len, *per token]
        cache[name] = int(torch.Size(buf.shape[2:]).numel())
    return MLAShapes(weights, cache)


def mla_dataflow(args: ModelArgs | None = None, impl: str | None = None) -> Figure:
    """MLA's data flow for one token: the query and key/value projections with their real widths,
    what the KV cache keeps (orange), and, in the absorbed form, W_UK and W_UV folded into the
    query and the output. impl: "naive", "absorb", or None for both, one above the other."""
    args = args or preset("deepseek-v3")
    impls = IMPLS if impl is None else (impl,)
    for i in impls:
        if i not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS} or None, got {i!r}")
    shapes = {i: mla_shapes(args.replace(attn_impl=i)) for i in impls}
    H, R, dr = args.n_heads, args.kv_lora_rank, args.qk_rope_head_dim
    dn, dv = args.qk_nope_head_dim, args.v_head_dim
    per = {i: s.cached_per_token for i, s in shapes.items()}
    caption = f"MLA data flow of {args.name}: " + "; ".join(
        f"{i} caches {fmt_int(n)} numbers per token and layer" for i, n in per.items()
    )
    panel_h = 42
    fig, ax = blank(10, 3.9 * len(impls), 100, panel_h * len(impls), caption)
    for k, i in enumerate(impls):
        _panel(ax, args, shapes[i], i, y0=panel_h * (len(impls) - 1 - k))
    if len(impls) == 2:
        ratio = per["naive"] / per["absorb"]
        ax.text(
            50,
            1.2,
            f"the absorbed form caches {ratio:.1f}x fewer numbers per token: "
            f"{fmt_int(per['absorb'])} = kv_lora_rank {R} + qk_rope_head_dim {dr}, against "
            f"{fmt_int(per['naive'])} = n_heads {H} x (qk_head_dim {dn + dr} + v_head_dim {dv})",
            ha="center",
            fontsize=7.5,
            style="italic",
        )
    return fig


def _panel(ax, a: ModelArgs, s: MLAShapes, impl: str, y0: float) -> None:
    """One form of MLA in a 100 x 42 band starting at height y0."""
    w = s.weights
    H, R, dr = a.n_heads, a.kv_lora_rank, a.qk_rope_head_dim
    dn, dv = a.qk_nope_head_dim, a.v_head_dim
    yq, ykv, ymid = y0 + 31, y0 + 12, y0 + 21.5
    bw, bh = 11, 6.5
    title = (
        "naive: decompress K and V, cache them per head"
        if impl == "naive"
        else ("absorbed: W_UK folded into the query, W_UV into the output; cache the latent")
    )
    ax.text(1, y0 + 39.5, f"{a.name}, attn_impl={impl!r}: {title}", fontsize=9, weight="bold")
    box(ax, 6, ymid, 9, bh, "x", f"dim {fmt_int(a.dim)}")
    # query path
    if a.q_lora_rank:
        box(ax, 19, yq, bw, bh, "W_DQ", _shape(w["wq_a"]), "weight")
        box(ax, 32, yq, bw, bh, "c_q", f"q_lora_rank {fmt_int(a.q_lora_rank)}")
        box(ax, 45, yq, bw, bh, "W_UQ", _shape(w["wq_b"]), "weight")
        for xa, xb in ((10.5, 13.5), (24.5, 26.5), (37.5, 39.5)):
            arrow(ax, (xa, yq if xa > 11 else ymid), (xb, yq))
        q_from = 50.5
    else:
        box(ax, 32, yq, bw + 8, bh, "W_Q", _shape(w["wq"]), "weight")
        arrow(ax, (10.5, ymid), (22.5, yq))
        q_from = 41.5
    arrow(ax, (q_from, yq), (53.5, yq + 3.6))
    arrow(ax, (q_from, yq), (53.5, yq - 3.6))
    box(ax, 59, yq + 3.6, bw, 5.5, "q_nope", f"{H} x {dn}", fontsize=8)
    box(ax, 59, yq - 3.6, bw, 5.5, "q_rope", f"{H} x {dr} (RoPE)", fontsize=8)
    # key/value path
    box(ax, 19, ykv, bw, bh, "W_DKV", _shape(w["wkv_a"]), "weight")
    arrow(ax, (10.5, ymid), (13.5, ykv))
    latent_kind = "cached" if impl == "absorb" else "act"
    box(ax, 32, ykv + 3.6, bw, 5.5, "c_kv", f"kv_lora_rank {R}", latent_kind, fontsize=8)
    box(ax, 32, ykv - 3.6, bw, 5.5, "k_rope", f"{dr}, all heads", latent_kind, fontsize=8)
    arrow(ax, (24.5, ykv), (26.5, ykv + 3.6))
    arrow(ax, (24.5, ykv), (26.5, ykv - 3.6))
    att_x = 79
    if impl == "naive":
        box(ax, 45, ykv + 3.6, bw, bh, "W_UK | W_UV", _shape(w["wkv_b"]), "weight", fontsize=8)
        arrow(ax, (37.5, ykv + 3.6), (39.5, ykv + 3.6))
        box(ax, 59, ykv + 3.6, bw, 5.5, "k", f"{H} x ({dn}+{dr})", "cached", fontsize=8)
        box(ax, 59, ykv - 3.6, bw, 5.5, "v", f"{H} x {dv}", "cached", fontsize=8)
        arrow(ax, (50.5, ykv + 3.6), (53.5, ykv + 3.6))
        arrow(ax, (50.5, ykv + 3.6), (53.5, ykv - 3.6))
        arrow(ax, (37.5, ykv - 3.6), (53.5, ykv + 2.5), rad=-0.15)  # k_rope joins every head's k
        for yy in (yq + 3.6, yq - 3.6, ykv + 3.6, ykv - 3.6):
            arrow(ax, (64.5, yy), (att_x - 6, ymid))
        box(ax, att_x, ymid, 12, bh, "attention", f"{H} heads", "op")
        out_detail = f"{H} x {dv}"
    else:
        box(ax, 71, yq + 3.6, 11, 5.5, "x W_UK", f"absorbed: {H} x {R}", "absorbed", fontsize=8)
        arrow(ax, (64.5, yq + 3.6), (65.5, yq + 3.6))
        for start in ((76.5, yq + 3.6), (64.5, yq - 3.6), (37.5, ykv + 3.6), (37.5, ykv - 3.6)):
            arrow(
                ax, start, (att_x - 6 + 6, ymid + 3.25) if start[1] > ymid else (att_x, ymid - 3.25)
            )
        box(ax, att_x + 0.5, ymid, 12, bh, "attention", f"on the latent, {H} heads", "op")
        out_detail = f"{H} x {R}"
        box(ax, att_x + 0.5, y0 + 5, 12, 5.5, "x W_UV", f"absorbed: {H} x {dv}", "absorbed", 8)
        arrow(ax, (att_x + 0.5, ymid - 3.25), (att_x + 0.5, y0 + 7.75), label=out_detail)
        out_detail = f"{H} x {dv}"
    box(ax, 93, ymid, 10, bh, "W_O", _shape(w["wo"]), "weight", fontsize=8)
    if impl == "naive":
        arrow(ax, (att_x + 6, ymid), (88, ymid), label=out_detail)
    else:
        arrow(ax, (att_x + 6.5, y0 + 5), (88, ymid - 2), label=out_detail)
    ax.text(93, ymid - 5.5, f"-> dim {fmt_int(a.dim)}", ha="center", fontsize=7.5)
    parts = " + ".join(f"{name} {fmt_int(n)}" for name, n in s.cache.items())
    ax.text(
        1,
        y0 + 2,
        f"KV cache per token and layer: {parts} = {fmt_int(s.cached_per_token)} numbers",
        ha="left",
        fontsize=8,
        color=COLORS["cached_edge"],
        weight="bold",
    )


def _shape(shape: tuple[int, ...]) -> str:
    """A Linear weight [out, in] written as in -> out."""
    out, inp = shape
    return f"{fmt_int(inp)} -> {fmt_int(out)}"
