"""The MoE layer's routing for one batch of tokens, drawn from what `dsim.model.MoE`'s gate
decided, and the expert-parallel all-to-all that carries the tokens to their experts, with the
bytes of `dsim.cost.comm.moe_a2a_bytes`."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dsim.config import ModelArgs, preset
from dsim.cost.comm import DEEPSEEK_V3_NODE_LIMIT, Topology, moe_a2a_bytes, moe_dispatch_time
from dsim.cost.hardware import get_gpu
from dsim.diagrams._draw import COLORS, DPI, arrow, box, fmt_bytes
from dsim.model import MoE
from dsim.model.moe import Routing


def routed_batch(
    args: ModelArgs, n_tokens: int, seed: int
) -> tuple[MoE, torch.Tensor, Routing, np.ndarray]:
    """Run a seeded `MoE(args)` on n_tokens seeded random tokens: (the layer, the tokens [T, D],
    its gate's Routing, and which of each token's groups the group limit kept, bool [T, G])."""
    if not args.is_moe:
        raise ValueError("ModelArgs.n_routed_experts must be >= 1 (a model with MoE layers)")
    if not isinstance(n_tokens, int) or not 1 <= n_tokens <= 64:
        raise ValueError(f"n_tokens must be an integer between 1 and 64, got {n_tokens!r}")
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leaves the caller's RNG as it was
        torch.manual_seed(seed)
        moe = MoE(args).eval()
        x = torch.randn(n_tokens, args.dim)
        moe(x)
    routing = moe.routing
    return moe, x, routing, kept_groups(moe, routing)


def kept_groups(moe: MoE, routing: Routing) -> np.ndarray:
    """bool [T, G]: the groups each token may pick from, by the Gate's rule (`Gate.forward` step 3:
    score each group of scores + bias by its top-2 sum or its max, keep the n_limited_groups best).
    With one group, every token keeps it."""
    a = moe.args
    T, G = routing.scores.shape[0], a.n_expert_groups
    if G == 1:
        return np.ones((T, 1), dtype=bool)
    choice = (routing.scores + moe.gate.bias).view(T, G, -1)
    if a.group_score == "max":
        group_scores = choice.amax(dim=-1)
    else:
        group_scores = choice.topk(2, dim=-1)[0].sum(dim=-1)
    keep = group_scores.topk(a.n_limited_groups, dim=-1)[1]
    return torch.zeros(T, G, dtype=torch.bool).scatter_(1, keep, True).numpy()


def expert_counts(routing: Routing, n_experts: int) -> np.ndarray:
    """Tokens each routed expert receives: the (token, expert) pairs the gate chose, less those the
    capacity limit dropped (weight set to zero)."""
    idx = routing.indices[routing.weights != 0]
    return torch.bincount(idx.flatten(), minlength=n_experts).numpy()


def moe_dispatch(args: ModelArgs | None = None, n_tokens: int = 8, seed: int = 0) -> Figure:
    """The gate's decisions for n_tokens tokens of a seeded MoE layer: left, each token's lines to
    its top-k experts (line width: the combine weight), experts boxed by group; middle, the
    scores, with the groups the group limit ruled out greyed; right, tokens per expert, and the
    shared experts that see every token. Default: the tiny preset with DeepSeek-V3's routing rules
    (sigmoid scores, 4 groups of which each token may use 2)."""
    args = args or preset("tiny", n_expert_groups=4, n_limited_groups=2, score_func="sigmoid")
    moe, _, r, kept = routed_batch(args, n_tokens, seed)
    E, K, G = args.n_routed_experts, args.n_activated_experts, args.n_expert_groups
    T = n_tokens
    scores, idx, wts = r.scores.numpy(), r.indices.numpy(), r.weights.numpy()
    counts = expert_counts(r, E)
    per_group = E // G
    caption = (
        f"Routing of {T} tokens by the gate of {args.name}: top-{K} of {E} experts"
        + (f" within {args.n_limited_groups} of {G} groups" if G > 1 else "")
        + f"; tokens per expert {counts.tolist()}"
    )
    fig = Figure(figsize=(11, 0.42 * max(T, E) + 1.6), dpi=DPI, layout="none")
    fig.set_label(caption)
    fig.suptitle(
        f"{args.name}: {args.score_func} gate, top-{K} of {E} routed experts"
        + (f", group limit {args.n_limited_groups} of {G} groups" if G > 1 else "")
        + f", {args.n_shared_experts} shared expert(s); route_scale {args.route_scale:g}",
        fontsize=9.5,
        weight="bold",
    )
    cmap = mpl.colormaps["tab10"]

    # ---- left: tokens -> experts ----
    ax = fig.add_axes((0.01, 0.04, 0.36, 0.84))
    ax.set_axis_off()
    n = max(T, E)
    ax.set_xlim(0, 10)
    ax.set_ylim(-1.8, n)

    def ty(t: int) -> float:
        return n - 0.5 - t * n / T

    def ey(e: int) -> float:
        return n - 0.5 - e * n / E

    for g in range(G):
        top, bottom = ey(g * per_group) + 0.45, ey((g + 1) * per_group - 1) - 0.45
        ax.add_patch(
            Rectangle(
                (7.1, bottom),
                2.8,
                top - bottom,
                facecolor="none",
                edgecolor="#999999",
                linestyle=":",
                linewidth=0.9,
            )
        )
        if G > 1:
            ax.text(9.95, (top + bottom) / 2, f"group {g}", rotation=90, va="center", fontsize=6.5)
    for e in range(E):
        box(ax, 8.3, ey(e), 1.9, 0.62, f"expert {e}", fontsize=7)
    wmax = float(np.abs(wts).max()) or 1.0
    for t in range(T):
        box(ax, 0.8, ty(t), 1.3, 0.62, f"t{t}", fontsize=7.5)
        for k in range(K):
            e, wt = int(idx[t, k]), float(wts[t, k])
            style = "-" if wt != 0 else ":"
            arrow(
                ax,
                (1.5, ty(t)),
                (7.3, ey(e)),
                color=cmap(t % 10),
                width=0.6 + 2.4 * wt / wmax,
                style=style,
            )
    if args.n_shared_experts:
        box(ax, 8.3, -1.2, 2.6, 0.8, f"shared x{args.n_shared_experts}", "every token", "op", 7)
        ax.text(
            4.4,
            -1.2,
            f"all {T} tokens ->",
            ha="center",
            va="center",
            fontsize=7,
            color=COLORS["shared"],
        )

    # ---- middle: scores, the group limit, the choice ----
    ax = fig.add_axes((0.42, 0.12, 0.3, 0.72))
    masked = np.repeat(~kept, per_group, axis=1)  # [T, E]
    im = ax.imshow(np.ma.array(scores, mask=masked), cmap="Blues", aspect="auto")
    ax.imshow(np.where(masked, 1.0, np.nan), cmap="Greys", vmin=0, vmax=4, aspect="auto")
    for t in range(T):
        for k in range(K):
            e = int(idx[t, k])
            ax.add_patch(Rectangle((e - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="#d95f02", lw=2))
            ax.text(e, t, f"{wts[t, k]:.2f}", ha="center", va="center", fontsize=6.5)
    for g in range(1, G):
        ax.axvline(g * per_group - 0.5, color="black", linewidth=1.2)
    ax.set_xticks(range(E))
    ax.set_yticks(range(T), [f"t{t}" for t in range(T)])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("expert (grey: outside the token's kept groups)", fontsize=7.5)
    ax.set_title("scores; orange: chosen, with combine weight", fontsize=8)
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.ax.tick_params(labelsize=6.5)

    # ---- right: tokens per expert ----
    ax = fig.add_axes((0.8, 0.12, 0.18, 0.72))
    bars = ax.barh(range(E), counts, color=COLORS["F"], label="routed")
    ax.bar_label(bars, fontsize=7, padding=2)
    if args.n_shared_experts:
        sh = ax.barh([E], [T], color=COLORS["shared"], label="shared")
        ax.bar_label(sh, fontsize=7, padding=2)
    ax.set_yticks(
        range(E + bool(args.n_shared_experts)),
        [f"expert {e}" for e in range(E)] + (["shared"] if args.n_shared_experts else []),
    )
    ax.invert_yaxis()
    ax.set_xlim(0, max(T, int(counts.max())) * 1.25)
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"tokens (of {T} x top-{K} = {T * K})", fontsize=7.5)
    ax.set_title("tokens per expert", fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def ep_all_to_all(
    args: ModelArgs | None = None,
    ep: int = 64,
    ranks_per_node: int = 8,
    tokens: int = 4096,
    node_limit: int | None = DEEPSEEK_V3_NODE_LIMIT,
    dispatch_bytes_per_elem: float = 1.0,
    combine_bytes_per_elem: float = 2.0,
    gpu: str = "H800",
) -> Figure:
    """The expert-parallel all-to-all of one MoE layer as DeepSeek-V3 runs it (sec. 3.2.2): a
    rank's tokens cross InfiniBand once per other node they need (to the GPU of the same local
    index), then NVLink to the GPUs there that host their experts; the combine brings the outputs
    back the same way. Bytes per rank from dsim.cost.comm.moe_a2a_bytes (uniform routing), times
    from moe_dispatch_time. Defaults: DeepSeek-V3 on EP64 over 8 nodes, 4096 tokens per rank,
    fp8 dispatch, bf16 combine, at most 4 nodes per token."""
    args = args or preset("deepseek-v3")
    topo = Topology(ep, ranks_per_node, intra_bw=1.0, inter_bw=1.0)  # validates ep / ranks
    n_nodes, g = topo.n_nodes, topo.local_ranks
    E, K, D = args.n_routed_experts, args.n_activated_experts, args.dim
    vol = {}
    secs = {}
    for phase, bpe in (("dispatch", dispatch_bytes_per_elem), ("combine", combine_bytes_per_elem)):
        call = (tokens, D, K, E, ep, ranks_per_node, node_limit, bpe)
        vol[phase] = moe_a2a_bytes(*call)
        secs[phase] = moe_dispatch_time(
            tokens, D, K, E, ep, get_gpu(gpu), ranks_per_node, node_limit, bpe
        )
    caption = (
        f"Expert-parallel all-to-all of {args.name} on EP{ep} ({n_nodes} nodes of {g} GPUs): "
        f"per rank, dispatch {fmt_bytes(vol['dispatch'].ib_bytes)} over IB and "
        f"{fmt_bytes(vol['dispatch'].nvlink_bytes)} over NVLink"
    )
    fig = Figure(figsize=(11, 4.6), dpi=DPI, layout="none")
    fig.set_label(caption)
    fig.suptitle(
        f"{args.name}: EP{ep} = {n_nodes} node(s) x {g} GPUs, {E // ep} experts per GPU, "
        f"{tokens} tokens per GPU, top-{K}"
        + (f", at most {node_limit} nodes per token" if node_limit else ""),
        fontsize=9.5,
        weight="bold",
    )
    ax = fig.add_axes((0.0, 0.0, 0.64, 0.9))
    ax.set_axis_off()
    shown = min(n_nodes, 4)  # nodes drawn; the others are summarised
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 10 * shown + 6)
    node_w, gpu_w = 70, 70 / g
    src_node, src_gpu = 0, 0

    def gpu_xy(node: int, r: int) -> tuple[float, float]:
        return 22 + (r + 0.5) * gpu_w, 10 * (shown - node) - 1

    per_node_ib = vol["dispatch"].ib_bytes / max(1, n_nodes - 1)
    per_gpu_nv = vol["dispatch"].nvlink_bytes / max(1, g - 1)
    for node in range(shown):
        y = 10 * (shown - node) - 1
        ax.add_patch(
            Rectangle((21, y - 3.6), node_w + 2, 7.2, facecolor="#f7f7f7", edgecolor="#888888")
        )
        label = f"node {node}"
        if node == shown - 1 and shown < n_nodes:
            label += f"\n(nodes {node}-{n_nodes - 1}\nalike)"
        ax.text(20, y, label, ha="right", va="center", fontsize=8, weight="bold")
        for r in range(g):
            x, _ = gpu_xy(node, r)
            kind = "cached" if (node, r) == (src_node, src_gpu) else "act"
            box(ax, x, y, gpu_w * 0.8, 4.2, f"{node * g + r}", f"{E // ep} exp.", kind, 6.5)
    sx, sy = gpu_xy(src_node, src_gpu)
    for node in range(1, shown):  # IB: one copy per other node, to the same local index
        x, y = gpu_xy(node, src_gpu)
        arrow(
            ax,
            (sx - 1.5, sy - 2.2),
            (x - 1.5, y + 2.2),
            color=COLORS["ib"],
            width=1.6,
            rad=0.25,
            label=f"IB {fmt_bytes(per_node_ib)}\nper node" if node == 1 else "",
        )
        x2, _ = gpu_xy(node, g - 1)
        arrow(ax, (x + 1, y - 2.3), (x2, y - 2.3), color=COLORS["nvlink"], width=1.2, rad=0.15)
    for r in range(1, g):  # NVLink fan-out on the own node
        x, y = gpu_xy(src_node, r)
        arrow(
            ax,
            (sx + 1, sy - 2.3),
            (x, y - 2.3),
            color=COLORS["nvlink"],
            width=1.0,
            rad=0.2,
            label=f"NVLink {fmt_bytes(per_gpu_nv)} per GPU" if r == g - 1 else "",
        )
    ax.text(
        50,
        1.2,
        "dispatch: GPU 0's tokens to their experts (red IB, green NVLink); the "
        "combine returns the outputs along the same paths",
        ha="center",
        fontsize=7.5,
        style="italic",
    )

    # ---- right: bytes per rank ----
    ax = fig.add_axes((0.7, 0.16, 0.27, 0.66))
    phases = ("dispatch", "combine")
    ib = [vol[p].ib_bytes / 1e6 for p in phases]
    nv = [vol[p].nvlink_bytes / 1e6 for p in phases]
    xs = np.arange(2)
    b1 = ax.bar(xs - 0.2, ib, 0.4, color=COLORS["ib"], label="InfiniBand")
    b2 = ax.bar(xs + 0.2, nv, 0.4, color=COLORS["nvlink"], label="NVLink")
    ax.bar_label(b1, fmt="%.3g", fontsize=7, padding=1)
    ax.bar_label(b2, fmt="%.3g", fontsize=7, padding=1)
    bpe = {"dispatch": dispatch_bytes_per_elem, "combine": combine_bytes_per_elem}
    ax.set_xticks(xs, [f"{p}\n{bpe[p]:g} B/elem\n{secs[p] * 1e6:.0f} us on {gpu}" for p in phases])
    ax.set_ylabel("MB sent per GPU, one MoE layer", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    ax.set_ylim(0, max(ib + nv) * 1.2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
