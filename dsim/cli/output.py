"""What the user reads: aligned text tables, numbers with K/M/B/T suffixes, gigabytes, seconds,
a loss curve drawn in characters, and the JSON that --json prints."""

from __future__ import annotations

import json


def print_json(data: dict) -> None:
    """The output of --json: one indented JSON document on stdout."""
    print(json.dumps(data, indent=2))


def table(rows: list[list], header: list[str] | None, align: str | None = None) -> str:
    """Aligned text columns under an optional header: `align` has one letter per column, l or r
    (default: first left, the rest right)."""
    ncol = len(header) if header else len(rows[0])
    align = align or "l" + "r" * (ncol - 1)
    cells = ([[str(c) for c in header]] if header else []) + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]

    def fmt(row: list[str]) -> str:
        padded = (c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align))
        return "  ".join(padded).rstrip()

    lines = [fmt(r) for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gb(x: float) -> str:
    return f"{x / 1e9:.1f}"


def secs(x: float) -> str:
    """Seconds with enough digits for both a 20 s step and a 2 ms one."""
    return "0" if x == 0 else (f"{x:.2f}" if x >= 1 else f"{x:.3g}")


def human(x: float, unit: str = "") -> str:
    """Three significant digits and a suffix: 1.23K, 4.56M, 7.89B, 1.23T, 1.25P."""
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def text_plot(values: list[float], width: int = 60, height: int = 10, label: str = "") -> str:
    """A small line plot in characters: good enough to see a loss curve in a terminal."""
    if not values:
        return "(no data)"
    n = len(values)
    cols = [values[min(n - 1, int(i * n / width))] for i in range(min(width, n))]
    lo, hi = min(cols), max(cols)
    span = (hi - lo) or 1.0
    rows = []
    for r in range(height):
        level = hi - span * r / (height - 1)
        line = "".join("*" if abs(v - level) <= span / (2 * (height - 1)) else " " for v in cols)
        rows.append(f"{level:8.3f} |{line}")
    rows.append(" " * 9 + "+" + "-" * len(cols))
    rows.append(" " * 10 + f"step 0 .. {n}  {label}")
    return "\n".join(rows)
