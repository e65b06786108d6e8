"""Tables for the notebooks and the book: a list of rows in, a table out.

    table(rows, ["model", "total", "active"], fmt={"total": "{:.1f}B"})

shows a markdown table (JupyterLab and the book render it; it fits the page, unlike a wide
printed block) whose plain-text form is the same table aligned in columns (what nbval
compares, and what a terminal shows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class Table:
    """Rows of values under a header; `fmt` maps a column name to a format string."""

    def __init__(
        self,
        rows: Sequence[Sequence[Any]],
        header: Sequence[str],
        fmt: Mapping[str, str] | None = None,
        caption: str | None = None,
    ) -> None:
        fmt = dict(fmt or {})
        unknown = set(fmt) - set(header)
        if unknown:
            raise ValueError(f"fmt names columns not in the header: {sorted(unknown)}")
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise ValueError(f"row {i} has {len(row)} values for {len(header)} columns")
        self.header = list(header)
        self.caption = caption
        self.cells = [
            [_cell(v, fmt.get(name)) for v, name in zip(row, self.header)] for row in rows
        ]
        # Numbers are right-aligned, text left-aligned (decided on the raw values).
        self.numeric = [
            bool(rows) and all(isinstance(r[j], (int, float)) for r in rows)
            for j in range(len(self.header))
        ]

    def _repr_markdown_(self) -> str:
        esc = [[c.replace("|", "\\|") for c in row] for row in [self.header, *self.cells]]
        align = ["---:" if n else ":---" for n in self.numeric]
        lines = ["| " + " | ".join(esc[0]) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
        if self.caption:
            lines = [f"**{self.caption}**", ""] + lines
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        widths = [
            max(len(r[j]) for r in [self.header, *self.cells]) for j in range(len(self.header))
        ]

        def line(row):
            return "  ".join(
                c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, self.numeric)
            ).rstrip()

        out = [line(self.header)] + [line(r) for r in self.cells]
        return "\n".join(([self.caption] if self.caption else []) + out)


def _cell(value: Any, fmt: str | None) -> str:
    if fmt is not None:
        return fmt.format(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str],
    fmt: Mapping[str, str] | None = None,
    caption: str | None = None,
) -> Table:
    """A Table; the last expression of a cell displays it."""
    return Table(rows, header, fmt, caption)


class Answers:
    """The computed answers of a chapter's problems, printed where they are computed and listed
    again at the end (the book folds that list into a collapsible block under the problems).

        answer = Answers(chapter=2)
        answer(1, f"a token uses {share:.1%} of the parameters")   # prints "Answer 2.1: ..."
        answer                                                      # at the end: the list
    """

    def __init__(self, chapter: int) -> None:
        if not isinstance(chapter, int) or chapter < 1:
            raise ValueError(f"chapter must be a positive integer, got {chapter!r}")
        self.chapter = chapter
        self.given: dict[int, str] = {}

    def __call__(self, number: int, text: str) -> None:
        if not isinstance(number, int) or number < 1:
            raise ValueError(f"answer number must be a positive integer, got {number!r}")
        if not text.strip():
            raise ValueError(f"answer {self.chapter}.{number} is empty")
        self.given[number] = text
        print(f"Answer {self.chapter}.{number}: {text}")

    def _repr_markdown_(self) -> str:
        return (
            "\n".join(
                f"{n}. **Answer {self.chapter}.{n}:** {self.given[n]}" for n in sorted(self.given)
            )
            + "\n"
        )

    def __repr__(self) -> str:
        return "\n".join(f"Answer {self.chapter}.{n}: {self.given[n]}" for n in sorted(self.given))
