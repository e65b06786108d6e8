"""Drawing helpers shared by the diagrams: a blank figure in data units, boxes, arrows, colours.

Figures are `matplotlib.figure.Figure` objects made without pyplot, so that a notebook cell that
returns one shows it once (pyplot's inline backend would show it a second time), at DPI dots per
inch: a PNG at twice the size a 100-dpi page shows it, or an SVG with `fig.savefig("x.svg")`.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

DPI = 200  # 2x the 100 px per inch at which a page shows a figure of this size

# one colour per kind of thing, the same in every diagram
COLORS = {
    "act": "#dbe9f6",  # an activation (a tensor that flows)
    "weight": "#eeeeee",  # a weight matrix
    "cached": "#fdd9a8",  # kept in the KV cache
    "cached_edge": "#d95f02",
    "absorbed": "#e5d8f0",  # a weight folded into another product
    "op": "#d9f0d3",  # an operation (attention, softmax, ...)
    "edge": "#444444",
    "F": "#4e79a7",  # pipeline forward
    "B": "#59a14f",  # pipeline backward
    "W": "#edc948",  # pipeline weight-gradient chunk
    "dir1": "#e15759",  # DualPipe's second direction
    "ib": "#d62728",  # InfiniBand
    "nvlink": "#2ca02c",  # NVLink
    "shared": "#b07aa1",  # a shared expert
}


def blank(width: float, height: float, xlim: float, ylim: float, caption: str) -> tuple:
    """A figure of width x height inches with one axis spanning it, in data units 0..xlim x
    0..ylim, no ticks. The caption (one sentence, also the alt text) is the figure's label."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="none")
    fig.set_label(caption)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, xlim)
    ax.set_ylim(0, ylim)
    ax.set_axis_off()
    return fig, ax


def box(
    ax,
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    detail: str = "",
    kind: str = "act",
    fontsize: float = 8.5,
) -> tuple[float, float, float, float]:
    """A rounded box centred at (x, y), `title` in bold over `detail`; cached boxes get a thick
    orange edge. Returns (left, right, bottom, top)."""
    cached = kind == "cached"
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle=f"round,pad=0,rounding_size={min(0.6, 0.25 * min(w, h)):.3g}",
            facecolor=COLORS[kind],
            edgecolor=COLORS["cached_edge"] if cached else COLORS["edge"],
            linewidth=2.2 if cached else 0.8,
            linestyle="-" if kind != "absorbed" else "--",
        )
    )
    if detail:
        ax.text(x, y + h * 0.16, title, ha="center", va="center", fontsize=fontsize, weight="bold")
        ax.text(x, y - h * 0.2, detail, ha="center", va="center", fontsize=fontsize - 1.5)
    else:
        ax.text(x, y, title, ha="center", va="center", fontsize=fontsize, weight="bold")
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def arrow(
    ax,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str = COLORS["edge"],
    width: float = 1.0,
    style: str = "-",
    rad: float = 0.0,
    label: str = "",
    fontsize: float = 7,
) -> None:
    """An arrow from start to end (optionally curved by `rad`), with a label at its middle."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=8,
            color=color,
            linewidth=width,
            linestyle=style,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=1,
            shrinkB=1,
        )
    )
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(
            mx,
            my,
            label,
            ha="center",
            va="center",
            fontsize=fontsize,
            color=color,
            bbox=dict(facecolor="white", edgecolor="none", pad=0.5, alpha=0.9),
        )


def fmt_int(n: int) -> str:
    """12,345."""
    return f"{n:,}"


def fmt_bytes(n: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (powers of 1000: kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} B"


def texts(fig: Figure) -> list[str]:
    """Every string drawn in the figure (for tests and alt text)."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return [t for t in out if t]
