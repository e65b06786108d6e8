"""Pipeline schedules as events: which rank runs which chunk of which micro-batch, and when.

dsim.cost.pipeline gives a schedule's bubble as a formula (the table of deepseek-ai/DualPipe's
README); this module lists the (rank, micro-batch, op, start, end) events that such a schedule
runs, so that a figure can draw it and a test can hold the events' makespan to the formula.

The model is the formula's: every stage takes F seconds for a forward chunk, B for a full backward
chunk (of which W is the weight-gradient part, so B - W for the input-gradient part alone), F&B for
a forward and a backward chunk run overlapped (DualPipe), and communication takes no time. Each
rank runs its ops in the order the schedule gives (`_ops_1f1b`, `_ops_dualpipe`, the latter step
by step after DualPipe's `DualPipe.step`); an op starts when its rank is free and its inputs have
arrived: a forward after the previous stage's forward of that micro-batch, a backward after the
next stage's backward (the last stage's after its own forward).

Ops: "F" forward, "B" full backward, "Bx" input-gradient backward whose weight-gradient part is
deferred (zero bubble), "W" a deferred weight-gradient chunk, "FB" a forward and a backward run
overlapped (its `microbatch` is the forward's and `other` the backward's).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsim.cost.checks import check_int, check_real
from dsim.cost.pipeline import PIPELINE_SCHEDULES

EVENT_SCHEDULES = ("1f1b", "dualpipe")


@dataclass(frozen=True)
class Event:
    """One chunk on one rank. direction: 0 for micro-batches that enter at rank 0, 1 for those
    that enter at rank pp-1 (DualPipe's second half); stage: the pipeline stage it runs."""

    rank: int
    microbatch: int
    op: str
    start: float
    end: float
    direction: int = 0
    stage: int = 0
    other: int = -1  # FB only: the micro-batch of the backward half
    other_direction: int = -1  # FB only: its direction


# an op in a rank's program: (op, direction, deferred W?) for F/B; FB carries two directions
_Op = tuple[str, int, int]


def _ops_1f1b(pp: int, m: int) -> list[list[_Op]]:
    """Each rank's program under 1F1B: pp-1-rank warm-up forwards, then one forward and one
    backward in turn, then the remaining backwards (Megatron-LM's non-interleaved schedule)."""
    progs = []
    for r in range(pp):
        warm = min(pp - 1 - r, m)
        prog: list[_Op] = [("F", 0, 0)] * warm
        for _ in range(m - warm):
            prog += [("F", 0, 0), ("B", 0, 0)]
        prog += [("B", 0, 0)] * warm
        progs.append(prog)
    return progs


def _ops_dualpipe(pp: int, m: int) -> list[list[_Op]]:
    """Each rank's program under DualPipe, the eight steps of deepseek-ai/DualPipe's
    `DualPipe.step`. Phase 0 of a rank is the direction in which it holds an early stage
    (direction 0 on the first half of the ranks, 1 on the second), phase 1 the other; an op
    ("Bx", d, 0) is a backward whose weight gradient waits for a later "W"."""
    half, chunks = pp // 2, m // 2
    progs = []
    for r in range(pp):
        hr = min(r, pp - 1 - r)
        p0, p1 = (0, 1) if r < half else (1, 0)
        middle = hr == half - 1
        prog: list[_Op] = [("F", p0, 0)] * ((half - hr - 1) * 2)  # step 1: nF0
        prog += [("F", p0, 0), ("F", p1, 0)] * (hr + 1)  # step 2: nF0F1
        prog += [("Bx", p1, 0), ("W", -1, 0), ("F", p1, 0)] * (half - hr - 1)  # 3: nB1W1F1
        for i in range(chunks - pp + hr + 1):  # step 4 (main): nF0B1F1B0
            if i == 0 and middle:  # not overlapped, to shrink the bubble
                prog += [("F", p0, 0), ("B", p1, 0)]
            else:
                prog.append(("FB", p0, p1))
            prog.append(("FB", p1, p0))
        prog += [("B", p1, 0), ("FB", p1, p0)] * (half - hr - 1)  # step 5: nB1F1B0
        zb = False  # step 6: nB1B0, the second half with zero bubble
        steps6 = hr + 1
        for i in range(steps6):
            if i == steps6 // 2 and hr % 2 == 1:
                zb = True
            prog.append(("Bx" if zb else "B", p1, 0))
            if i == steps6 // 2 and hr % 2 == 0:
                zb = True
            prog.append(("Bx" if zb else "B", p0, 0))
        prog += [("W", -1, 0), ("Bx", p0, 0)] * (half - hr - 1)  # step 7: nWB0
        prog += [("W", -1, 0)] * (hr + 1)  # step 8: nW
        progs.append(prog)
    return progs


def schedule_events(
    schedule: str,
    pp: int,
    n_microbatches: int,
    f: float,
    b: float,
    w: float = 0.0,
    f_and_b: float | None = None,
) -> list[Event]:
    """The events of one training step of `schedule` ("1f1b" or "dualpipe") on pp ranks with
    n_microbatches micro-batches, chunk times f, b (w of it weight gradient) and f_and_b (DualPipe's
    overlapped forward + backward; default f + b), by list scheduling the ranks' programs. Sorted
    by (rank, start)."""
    if schedule not in EVENT_SCHEDULES:
        raise ValueError(
            f"schedule must be one of {EVENT_SCHEDULES} (of {PIPELINE_SCHEDULES}), got {schedule!r}"
        )
    p, m = check_int("pp", pp), check_int("n_microbatches", n_microbatches)
    f, b, w = check_real("f", f), check_real("b", b), check_real("w", w)
    if w > b:
        raise ValueError(f"w (weight-gradient part of b) must be <= b={b}, got {w}")
    fb = f + b if f_and_b is None else check_real("f_and_b", f_and_b)
    if not max(f, b) <= fb <= f + b:
        raise ValueError(
            f"f_and_b must be between max(f, b)={max(f, b)} and f + b={f + b}, got {fb}"
        )
    if schedule == "dualpipe":
        if p % 2:
            raise ValueError(f"pp must be even for dualpipe, got {p}")
        if m % 2 or m < 2 * p:
            raise ValueError(
                f"n_microbatches must be even and >= 2*pp={2 * p} for dualpipe, got {m}"
            )
        progs, per_dir = _ops_dualpipe(p, m), m // 2
    else:
        progs, per_dir = _ops_1f1b(p, m), m

    def stage(rank: int, d: int) -> int:
        return rank if d == 0 else p - 1 - rank

    f_done: dict[tuple[int, int, int], float] = {}  # (direction, stage, micro-batch) -> end
    b_done: dict[tuple[int, int, int], float] = {}
    nxt_f = [[0, 0] for _ in range(p)]  # next micro-batch per rank and direction
    nxt_b = [[0, 0] for _ in range(p)]
    pc, free = [0] * p, [0.0] * p
    deferred: list[list[tuple[int, int]]] = [[] for _ in range(p)]  # (direction, mb) awaiting W
    events: list[Event] = []

    def f_ready(r: int, d: int) -> float | None:
        st, mb = stage(r, d), nxt_f[r][d]
        return 0.0 if st == 0 else f_done.get((d, st - 1, mb))

    def b_ready(r: int, d: int) -> float | None:
        st, mb = stage(r, d), nxt_b[r][d]
        key = (d, st, mb) if st == p - 1 else (d, st + 1, mb)
        return (f_done if st == p - 1 else b_done).get(key)

    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pc[r] < len(progs[r]):
                op, d, d2 = progs[r][pc[r]]
                if op == "F":
                    t = f_ready(r, d)
                elif op in ("B", "Bx"):
                    t = b_ready(r, d)
                elif op == "FB":
                    t1, t2 = f_ready(r, d), b_ready(r, d2)
                    t = None if t1 is None or t2 is None else max(t1, t2)
                else:
                    t = free[r]
                if t is None:
                    break  # waits on another rank
                start = max(t, free[r])
                if op == "F":
                    mb, end = nxt_f[r][d], start + f
                    f_done[(d, stage(r, d), mb)] = end
                    nxt_f[r][d] += 1
                    events.append(Event(r, mb, op, start, end, d, stage(r, d)))
                elif op in ("B", "Bx"):
                    mb, end = nxt_b[r][d], start + (b if op == "B" else b - w)
                    b_done[(d, stage(r, d), mb)] = end
                    nxt_b[r][d] += 1
                    if op == "Bx":
                        deferred[r].append((d, mb))
                    events.append(Event(r, mb, op, start, end, d, stage(r, d)))
                elif op == "FB":
                    mf, mb, end = nxt_f[r][d], nxt_b[r][d2], start + fb
                    f_done[(d, stage(r, d), mf)] = end
                    b_done[(d2, stage(r, d2), mb)] = end
                    nxt_f[r][d] += 1
                    nxt_b[r][d2] += 1
                    events.append(Event(r, mf, op, start, end, d, stage(r, d), mb, d2))
                else:  # W: the oldest deferred weight gradient
                    dw, mb = deferred[r].pop(0)
                    end = start + w
                    events.append(Event(r, mb, op, start, end, dw, stage(r, dw)))
                free[r] = end
                pc[r] += 1
                progress = True
    stuck = [r for r in range(p) if pc[r] < len(progs[r])]
    if stuck:  # a program that waits on itself: a bug in the programs above
        raise RuntimeError(f"schedule {schedule!r} deadlocked on ranks {stuck}")
    dirs = (0, 1) if schedule == "dualpipe" else (0,)
    if any(nxt_f[r][d] != per_dir or nxt_b[r][d] != per_dir for r in range(p) for d in dirs):
        raise RuntimeError(f"schedule {schedule!r} did not run every micro-batch on every rank")
    return sorted(events, key=lambda e: (e.rank, e.start))


def makespan(events: list[Event]) -> float:
    """Seconds from the first event's start to the last one's end."""
    return max(e.end for e in events) - min(e.start for e in events)
