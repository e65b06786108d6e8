"""Pipeline schedules, drawn from the events of `dsim.cost.schedule.schedule_events`: one row per
rank, one bar per chunk, the idle time left white, and the step time of the planner's bubble table
(`dsim.cost.pipeline.pipeline_bubble_time`) marked for comparison."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from dsim.cost.pipeline import pipeline_bubble_time
from dsim.cost.schedule import EVENT_SCHEDULES, Event, makespan, schedule_events
from dsim.diagrams._draw import COLORS, DPI

_NAMES = {"1f1b": "1F1B", "dualpipe": "DualPipe"}


def pipeline_schedule(
    pp: int = 8,
    n_microbatches: int = 20,
    f: float = 1.0,
    b: float = 2.0,
    w: float = 1.0,
    f_and_b: float | None = None,
    schedules: tuple[str, ...] = EVENT_SCHEDULES,
) -> Figure:
    """One training step of each schedule on pp ranks with n_microbatches micro-batches and chunk
    times f (forward), b (backward, of which w is the weight gradient) and f_and_b (DualPipe's
    overlapped forward + backward, default f + b), on one time axis. The defaults are the example of
    deepseek-ai/DualPipe's README (8 ranks, 20 micro-batches, F:B:W = 1:2:1). Each panel's title
    gives the events' step time next to the bubble table's m(F+B) + bubble, which the dashed line
    marks."""
    if not schedules:
        raise ValueError(f"schedules must name at least one of {EVENT_SCHEDULES}")
    runs = {s: schedule_events(s, pp, n_microbatches, f, b, w, f_and_b) for s in schedules}
    work = n_microbatches * (f + b)
    table = {s: work + pipeline_bubble_time(s, pp, f, b, w, f_and_b) for s in schedules}
    span = max(max(makespan(ev), table[s]) for s, ev in runs.items())
    caption = f"Pipeline schedules on {pp} ranks, {n_microbatches} micro-batches: " + "; ".join(
        f"{_NAMES[s]} step {makespan(ev):.4g}" for s, ev in runs.items()
    )
    fig = Figure(figsize=(11, 0.9 + (0.3 * pp + 0.8) * len(schedules)), dpi=DPI, layout="none")
    fig.set_label(caption)
    axes = fig.subplots(len(schedules), 1, sharex=True, squeeze=False)[:, 0]
    fig.subplots_adjust(
        left=0.07,
        right=0.99,
        top=1 - 0.55 / fig.get_figheight(),
        hspace=0.55,
        bottom=0.75 / fig.get_figheight(),
    )
    for ax, (s, ev) in zip(axes, runs.items()):
        _draw(ax, ev, pp, n_microbatches)
        idle = max(
            makespan(ev) - sum(e.end - e.start for e in ev if e.rank == r) for r in range(pp)
        )
        ax.axvline(table[s], color="black", linestyle="--", linewidth=1)
        ax.set_title(
            f"{_NAMES[s]}: step {makespan(ev):.4g} (events); bubble table m(F+B) + bubble = "
            f"{work:.4g} + {table[s] - work:.4g} = {table[s]:.4g} (dashed); "
            f"largest idle on one rank {idle:.4g}",
            fontsize=8.5,
            loc="left",
        )
        ax.set_xlim(0, span * 1.01)
    unit = "seconds" if f != 1.0 else "units of F"
    axes[-1].set_xlabel(f"time ({unit})", fontsize=8)
    handles = [
        Patch(facecolor=COLORS["F"], label="forward F"),
        Patch(facecolor=COLORS["B"], label="backward B"),
        Patch(facecolor=COLORS["B"], hatch="///", edgecolor="white", label="B without W"),
        Patch(facecolor=COLORS["W"], label="weight gradient W"),
        Patch(facecolor=_shade(COLORS["F"]), label="F, DualPipe's 2nd direction"),
        Patch(facecolor=_shade(COLORS["B"]), label="B, 2nd direction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7.5, frameon=False)
    return fig


def _draw(ax, events: list[Event], pp: int, m: int) -> None:
    """The events as bars: rank 0 on top; a DualPipe F&B chunk as its forward half over its
    backward half; the micro-batch number inside (the second direction's numbered from m/2)."""
    half = m // 2
    for e in events:
        y, d, x0, wd = e.rank, e.end - e.start, e.start, e.end - e.start
        label = str(e.microbatch + (half if e.direction == 1 else 0))
        if e.op == "FB":
            other = str(e.other + (half if e.other_direction == 1 else 0))
            _bar(ax, x0, y - 0.4, wd, 0.4, _color("F", e.direction), label)
            _bar(ax, x0, y, wd, 0.4, _color("B", e.other_direction), other)
            continue
        _bar(
            ax,
            x0,
            y - 0.4,
            d,
            0.8,
            _color(e.op, e.direction),
            label,
            hatch="///" if e.op == "Bx" else None,
        )
    ax.set_ylim(pp - 0.5, -0.5)
    ax.set_yticks(range(pp), [f"rank {r}" for r in range(pp)])
    ax.tick_params(labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _color(op: str, direction: int) -> str:
    if op == "W":
        return COLORS["W"]
    base = COLORS["F"] if op == "F" else COLORS["B"]
    return base if direction == 0 else _shade(base)


def _shade(color: str) -> str:
    """The second direction's variant of a colour: mixed half-way with COLORS['dir1']."""
    a = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(COLORS["dir1"][i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{(x + y) // 2:02x}" for x, y in zip(a, b))


def _bar(ax, x: float, y: float, w: float, h: float, color: str, label: str, hatch=None) -> None:
    ax.add_patch(
        Rectangle((x, y), w, h, facecolor=color, edgecolor="white", linewidth=0.6, hatch=hatch)
    )
    if w >= 0.45:
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=5.5, color="white")
