"""dsim.cost.schedule: the events of a pipeline schedule, held to the bubble table of
dsim.cost.pipeline (deepseek-ai/DualPipe's README)."""

import itertools

import pytest

from dsim.cost.pipeline import pipeline_bubble_time
from dsim.cost.schedule import makespan, schedule_events


def _busy(events, rank):
    return sum(e.end - e.start for e in events if e.rank == rank)


def _no_overlap(events):
    """No rank runs two events at once."""
    by_rank = {}
    for e in events:
        by_rank.setdefault(e.rank, []).append(e)
    for evs in by_rank.values():
        evs.sort(key=lambda e: e.start)
        for a, b in itertools.pairwise(evs):
            assert a.end <= b.start + 1e-12, (a, b)


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 3, 8, 17])
@pytest.mark.parametrize("fbw", [(1.0, 2.0, 1.0), (0.7, 1.9, 0.0), (2.0, 2.0, 0.5)])
def test_1f1b_makespan_is_work_plus_bubble(pp, m, fbw):
    f, b, w = fbw
    ev = schedule_events("1f1b", pp, m, f, b, w)
    assert makespan(ev) == pytest.approx(m * (f + b) + pipeline_bubble_time("1f1b", pp, f, b, w))
    assert len(ev) == 2 * pp * m  # a forward and a backward per (stage, micro-batch)
    _no_overlap(ev)
    for r in range(pp):  # every rank does m forwards and m backwards, each micro-batch once
        assert sorted(e.microbatch for e in ev if e.rank == r and e.op == "F") == list(range(m))
        assert sorted(e.microbatch for e in ev if e.rank == r and e.op == "B") == list(range(m))


def test_1f1b_dependencies():
    """A forward follows the previous stage's forward of its micro-batch; a backward the next
    stage's backward."""
    pp, m = 4, 6
    ev = schedule_events("1f1b", pp, m, 1.0, 2.0)
    at = {(e.op, e.stage, e.microbatch): e for e in ev}
    for s, i in itertools.product(range(pp), range(m)):
        if s:
            assert at[("F", s, i)].start >= at[("F", s - 1, i)].end
        if s < pp - 1:
            assert at[("B", s, i)].start >= at[("B", s + 1, i)].end
        else:
            assert at[("B", s, i)].start >= at[("F", s, i)].end


@pytest.mark.parametrize("pp", [2, 4, 6, 8, 16])
@pytest.mark.parametrize("extra", [0, 2, 2 * 8])
@pytest.mark.parametrize("f_and_b", [None, 2.5, 2.0])
def test_dualpipe_idle_is_the_table_at_1_2_1(pp, extra, f_and_b):
    """At the README's proportions F:B:W = 1:2:1, the busiest rank idles exactly the table's
    (PP/2-1)(F&B + B - 3W), for any F&B."""
    m = 2 * pp + extra
    f, b, w = 1.0, 2.0, 1.0
    ev = schedule_events("dualpipe", pp, m, f, b, w, f_and_b)
    span = makespan(ev)
    idle = max(span - _busy(ev, r) for r in range(pp))
    assert idle == pytest.approx(pipeline_bubble_time("dualpipe", pp, f, b, w, f_and_b))
    _no_overlap(ev)
    if f_and_b is None:  # no overlap gain: the step is the work plus the table's bubble
        assert span == pytest.approx(m * (f + b) + pipeline_bubble_time("dualpipe", pp, f, b, w))


@pytest.mark.parametrize("pp", [2, 4, 8])
def test_dualpipe_runs_every_chunk_once(pp):
    m = 2 * pp + 2
    ev = schedule_events("dualpipe", pp, m, 1.0, 2.0, 1.0)
    for r in range(pp):
        fwd = [(e.direction, e.microbatch) for e in ev if e.rank == r and e.op in ("F", "FB")]
        bwd = [(e.direction, e.microbatch) for e in ev if e.rank == r and e.op in ("B", "Bx")]
        bwd += [(e.other_direction, e.other) for e in ev if e.rank == r and e.op == "FB"]
        want = sorted((d, i) for d in (0, 1) for i in range(m // 2))
        assert sorted(fwd) == want and sorted(bwd) == want
        # every deferred weight gradient is run once
        assert sorted((e.direction, e.microbatch) for e in ev if e.rank == r and e.op == "W") == (
            sorted((e.direction, e.microbatch) for e in ev if e.rank == r and e.op == "Bx")
        )
    # rank r holds stage r of direction 0 and stage pp-1-r of direction 1
    assert all(e.stage == (e.rank if e.direction == 0 else pp - 1 - e.rank) for e in ev)


def test_dualpipe_beats_1f1b():
    pp, m = 8, 32
    one = makespan(schedule_events("1f1b", pp, m, 1.0, 2.0, 1.0))
    dual = makespan(schedule_events("dualpipe", pp, m, 1.0, 2.0, 1.0))
    assert dual < one


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: schedule_events("gpipe", 4, 8, 1, 2), "schedule must be one of"),
        (lambda: schedule_events("dualpipe", 3, 8, 1, 2), "pp must be even"),
        (lambda: schedule_events("dualpipe", 4, 6, 1, 2), "n_microbatches must be even"),
        (lambda: schedule_events("1f1b", 0, 8, 1, 2), "pp must be an integer"),
        (lambda: schedule_events("1f1b", 4, 8, 1, 2, 3), "w .* must be <= b"),
        (lambda: schedule_events("1f1b", 4, 8, -1, 2), "f must be a finite number"),
        (lambda: schedule_events("dualpipe", 4, 8, 1, 2, 1, 1.5), "f_and_b must be between"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
