"""Figures for the notebooks and the book: crisp, captioned, described.

A teaching cell is a model call, a plot and a number. The plotting part is short when the figure
comes from these helpers:

    setup()                                      # once per notebook: sizes, fonts, 2x PNG
    fig = lines(tokens, {"MLA": mla, "GQA": gqa}, xlabel="tokens", ylabel="GB", logx=True)
    show(fig, "KV cache per sequence: MLA stores a latent, GQA full keys and values.")

`show` displays the figure as a PNG rendered at twice its displayed size (sharp on any screen and
when the book column scales it) and attaches the caption and an alt text (described from the axes
unless given) as output metadata; scripts/build_book.py turns that into a numbered
<figure> with <figcaption> and alt text. The text/plain part of the output is the caption, so nbval
checks that the figure is still there and still says the same thing. `small_multiples` draws the
grid a widget would explore, one small panel per value, so that the book (which has no kernel)
shows the effect of the control.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# The width of the book's text column (mdBook's content is 750 px wide, less a margin) in
# inches at DISPLAY_DPI.
DISPLAY_DPI = 100
COLUMN_IN = 7.3
# Figures are rendered at this multiple of their displayed size.
OVERSAMPLE = 2

STYLE = {
    "figure.dpi": DISPLAY_DPI,
    "savefig.dpi": DISPLAY_DPI * OVERSAMPLE,
    "figure.figsize": (COLUMN_IN, 3.2),
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.cmap": "viridis",
    "svg.hashsalt": "dsim",  # stable ids if a figure is ever saved as SVG
}


def setup() -> None:
    """Apply the book's figure style; in IPython, inline figures become 2x PNGs.

    Call once at the top of a notebook (after the imports). Figures drawn with plain
    `plt.show()` are then sharp too, but only `show` gives them a caption and alt text."""
    matplotlib.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to configure
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")  # PNG at 2x, displayed at 1x (width metadata)


def figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    height: float | None = None,
    width: float = COLUMN_IN,
    **kwargs: Any,
) -> tuple[Figure, Any]:
    """plt.subplots sized for the book's column: `height` in inches (default: 3.2 for one row,
    2.4 per row for more), `width` the column's 7.3 inches."""
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}")
    if height is None:
        height = 3.2 if nrows == 1 else 2.4 * nrows
    if not (0 < width <= 20 and 0 < height <= 30):
        raise ValueError(
            f"figure size must be 0 < width <= 20 and 0 < height <= 30 in, got "
            f"width={width}, height={height}"
        )
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def lines(
    x: Sequence[float] | np.ndarray,
    series: Mapping[str, Sequence[float] | np.ndarray],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    marker: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One line per entry of `series` (label -> y values over `x`), labelled axes, a legend."""
    if not series:
        raise ValueError("series must hold at least one line")
    fig, ax = (ax.figure, ax) if ax is not None else figure()
    for label, y in series.items():
        if len(y) != len(x):
            raise ValueError(f"series {label!r} has {len(y)} values for {len(x)} x values")
        ax.plot(x, y, label=label, marker=marker)
    _decorate(ax, xlabel, ylabel, title, logx, logy, legend=len(series) > 1)
    return fig


def bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float] | np.ndarray],
    *,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars: one group per category, one bar per entry of `series` (label -> values)."""
    if not series:
        raise ValueError("series must hold at least one set of bars")
    fig, ax = (ax.figure, ax) if ax is not None else figure()
    x = np.arange(len(categories))
    width = 0.8 / len(series)
    for i, (label, y) in enumerate(series.items()):
        if len(y) != len(categories):
            raise ValueError(f"series {label!r} has {len(y)} values for {len(categories)} bars")
        ax.bar(x + (i - (len(series) - 1) / 2) * width, y, width, label=label)
    ax.set_xticks(x, categories, rotation=15 if len(categories) > 4 else 0)
    _decorate(ax, None, ylabel, title, False, logy, legend=len(series) > 1)
    ax.grid(axis="x", visible=False)
    return fig


def heatmap(
    values: np.ndarray,
    *,
    xlabels: Sequence[Any],
    ylabels: Sequence[Any],
    xlabel: str,
    ylabel: str,
    cbar: str,
    title: str | None = None,
    fmt: str | None = None,
    ax: Axes | None = None,
    **imshow: Any,
) -> Figure:
    """A labelled matrix (rows: ylabels, columns: xlabels) with a colour bar; `fmt` (e.g. "{:.2f}")
    writes each value in its cell."""
    values = np.asarray(values)
    if values.shape != (len(ylabels), len(xlabels)):
        raise ValueError(
            f"values has shape {values.shape}, labels give ({len(ylabels)}, {len(xlabels)})"
        )
    fig, ax = (ax.figure, ax) if ax is not None else figure()
    im = ax.imshow(values, aspect="auto", origin="lower", interpolation="nearest", **imshow)
    ax.set_xticks(range(len(xlabels)), [str(v) for v in xlabels])
    ax.set_yticks(range(len(ylabels)), [str(v) for v in ylabels])
    ax.grid(False)
    if fmt is not None:
        mid = np.nanmean(values)
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v < mid else "black",
            )
    fig.colorbar(im, ax=ax, label=cbar)
    _decorate(ax, xlabel, ylabel, title, False, False, legend=False)
    return fig


def small_multiples(
    draw: Callable[[Axes, Any], None],
    values: Iterable[Any],
    *,
    ncols: int = 3,
    title: Callable[[Any], str] | str = "{}",
    panel_height: float = 2.2,
    sharex: bool = True,
    sharey: bool = True,
) -> Figure:
    """One small panel per value of a control: draw(ax, value) fills a panel. The book shows the
    grid a widget explores, since a static page cannot move the widget."""
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one panel's value")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(values))
    nrows = -(-len(values) // ncols)
    fig, axes = figure(
        nrows, ncols, height=panel_height * nrows, sharex=sharex, sharey=sharey, squeeze=False
    )
    for ax, value in zip(axes.flat, values):
        draw(ax, value)
        ax.set_title(title(value) if callable(title) else title.format(value))
    for ax in axes.flat[len(values) :]:
        ax.set_visible(False)
    return fig


def _decorate(ax, xlabel, ylabel, title, logx, logy, legend) -> None:
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if legend:
        ax.legend()


def describe(fig: Figure) -> str:
    """An alt text drawn from the figure's own axes: panels, titles, axis labels and ranges,
    legend entries. Good enough for a screen reader when no better description is given."""
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    parts = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        parts.append(fig._suptitle.get_text() + ".")
    if len(panels) > 1:
        parts.append(f"{len(panels)} panels.")
    for ax in panels:
        bits = []
        if ax.get_title():
            bits.append(ax.get_title())
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            label = axis.get_label().get_text()
            if label:
                lo, hi = ax.get_xlim() if name == "x" else ax.get_ylim()
                scale = ", log scale" if axis.get_scale() == "log" else ""
                bits.append(f"{name}: {label} from {_g(min(lo, hi))} to {_g(max(lo, hi))}{scale}")
        legend = ax.get_legend()
        if legend is not None:
            names = [t.get_text() for t in legend.get_texts()]
            bits.append("series: " + ", ".join(names))
        if bits:
            parts.append("; ".join(bits) + ".")
    if not parts:
        raise ValueError("the figure has no titles or axis labels to describe: pass alt=...")
    return " ".join(parts)


def _g(x: float) -> str:
    return f"{x:.3g}"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of a PNG image."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", data[16:24])


def render(fig: Figure) -> tuple[bytes, int]:
    """The figure as a PNG at OVERSAMPLE x the display resolution, and its displayed width."""
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=DISPLAY_DPI * OVERSAMPLE,
        bbox_inches="tight",
        pad_inches=0.05,
        metadata={"Software": None},
    )
    data = buf.getvalue()
    width, _ = png_size(data)
    return data, round(width / OVERSAMPLE)


def show(fig: Figure, caption: str, *, alt: str | None = None) -> None:
    """Display `fig` with its caption and alt text (described from the axes when not given) and
    close it. The book numbers the figure and prints the caption under it."""
    if not caption or not caption.strip():
        raise ValueError("caption must be a non-empty sentence saying what the figure shows")
    alt = alt if alt is not None else describe(fig)
    data, width = render(fig)
    plt.close(fig)
    from IPython.display import display

    display(
        {"image/png": base64.b64encode(data).decode("ascii"), "text/plain": f"Figure: {caption}"},
        raw=True,
        metadata={"image/png": {"width": width}, "dsim": {"caption": caption, "alt": alt}},
    )
