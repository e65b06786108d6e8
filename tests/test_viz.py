"""dsim.viz: figures rendered at twice their displayed size, with a caption and an alt text drawn
from the axes; small multiples; tables whose markdown and plain text agree."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from dsim import viz
from dsim.viz.plots import png_size


@pytest.fixture(autouse=True)
def _style():
    viz.setup()
    yield
    plt.close("all")


def test_render_is_twice_the_displayed_width():
    fig = viz.lines([1, 2, 3], {"a": [1, 4, 9]}, xlabel="x", ylabel="y")
    data, width = viz.render(fig)
    px, _ = png_size(data)
    assert abs(px - 2 * width) <= 1
    # The column is 750 px: a default figure is displayed at most that wide.
    assert 500 < width <= 750


def test_describe_names_the_axes_ranges_and_series():
    fig = viz.lines(
        [1, 10, 100],
        {"MLA": [1, 2, 3], "GQA": [2, 4, 6]},
        xlabel="tokens",
        ylabel="GB",
        logx=True,
        title="KV cache",
    )
    alt = viz.describe(fig)
    assert "KV cache" in alt and "x: tokens" in alt and "log scale" in alt
    assert "y: GB" in alt and "series: MLA, GQA" in alt


def test_describe_refuses_an_unlabelled_figure():
    fig, ax = viz.figure()
    ax.plot([1, 2])
    with pytest.raises(ValueError, match="alt="):
        viz.describe(fig)


def test_show_publishes_png_caption_alt_and_width(monkeypatch):
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.append((a, k)))
    fig = viz.bars(["a", "b"], {"total": [3, 4], "active": [1, 2]}, ylabel="B")
    viz.show(fig, "Two bars.")
    ((args, kwargs),) = shown
    data = args[0]
    assert data["text/plain"] == "Figure: Two bars."
    png = base64.b64decode(data["image/png"])
    meta = kwargs["metadata"]
    assert meta["dsim"]["caption"] == "Two bars." and "series: total, active" in meta["dsim"]["alt"]
    assert abs(png_size(png)[0] - 2 * meta["image/png"]["width"]) <= 1
    assert not plt.get_fignums(), "show closes the figure (no second copy at the cell's end)"
    with pytest.raises(ValueError, match="caption"):
        viz.show(viz.lines([1], {"a": [1]}, xlabel="x", ylabel="y"), " ")


def test_small_multiples_one_panel_per_value():
    seen = []

    def draw(ax, k):
        seen.append(k)
        ax.plot(np.arange(3) * k)

    fig = viz.small_multiples(draw, [1, 2, 4, 8], ncols=3, title="top-{}")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert seen == [1, 2, 4, 8] and len(visible) == 4 and len(fig.axes) == 6
    assert [ax.get_title() for ax in visible] == ["top-1", "top-2", "top-4", "top-8"]
    with pytest.raises(ValueError, match="values"):
        viz.small_multiples(draw, [])


def test_heatmap_checks_its_labels():
    with pytest.raises(ValueError, match="shape"):
        viz.heatmap(
            np.zeros((2, 3)), xlabels=[1, 2], ylabels=[1, 2], xlabel="a", ylabel="b", cbar="c"
        )
    fig = viz.heatmap(
        np.eye(2),
        xlabels=["p", "q"],
        ylabels=[1, 2],
        xlabel="a",
        ylabel="b",
        cbar="c",
        fmt="{:.1f}",
    )
    assert len(fig.axes[0].texts) == 4


def test_table_markdown_and_text():
    t = viz.table(
        [("v3", 671.0, 37), ("lite", 15.7, 2)],
        ["model", "total", "active"],
        fmt={"total": "{:.1f}B"},
    )
    md = t._repr_markdown_().splitlines()
    assert md[0] == "| model | total | active |"
    assert md[1] == "| :--- | ---: | ---: |"
    assert md[2] == "| v3 | 671.0B | 37 |"
    assert repr(t).splitlines() == [
        "model   total  active",
        "v3     671.0B      37",
        "lite    15.7B       2",
    ]
    with pytest.raises(ValueError, match="row 0"):
        viz.table([(1, 2)], ["a"])
    with pytest.raises(ValueError, match="not in the header"):
        viz.table([(1,)], ["a"], fmt={"b": "{}"})


def test_answers_print_and_list(capsys):
    answer = viz.Answers(chapter=2)
    answer(2, "routed experts hold 96%")
    answer(1, "3.5%")
    assert capsys.readouterr().out.splitlines() == [
        "Answer 2.2: routed experts hold 96%",
        "Answer 2.1: 3.5%",
    ]
    assert answer._repr_markdown_().splitlines() == [
        "1. **Answer 2.1:** 3.5%",
        "2. **Answer 2.2:** routed experts hold 96%",
    ]
    with pytest.raises(ValueError, match="empty"):
        answer(3, " ")
    with pytest.raises(ValueError, match="chapter"):
        viz.Answers(chapter=0)
