"""Plot and table helpers for the notebooks and the book (see plots.py and tables.py)."""

from dsim.viz.plots import (
    COLUMN_IN,
    DISPLAY_DPI,
    OVERSAMPLE,
    bars,
    describe,
    figure,
    heatmap,
    lines,
    render,
    setup,
    show,
    small_multiples,
)
from dsim.viz.tables import Answers, Table, table

__all__ = [
    "Answers",
    "COLUMN_IN",
    "DISPLAY_DPI",
    "OVERSAMPLE",
    "Table",
    "bars",
    "describe",
    "figure",
    "heatmap",
    "lines",
    "render",
    "setup",
    "show",
    "small_multiples",
    "table",
]
