"""
Pipeline schedules and the overlap of communication with compute: the bubble (idle time per
rank) of 1F1B, zero-bubble ZB1P and DualPipe after the table of deepseek-ai/DualPipe's
README.md, and how much of a communication hides behind concurrent compute.
"""

from dsim.cost.checks import check_int, check_real

PIPELINE_SCHEDULES = ("1f1b", "zb1p", "dualpipe")

# -----------------------------------------------------------------------------
# pipeline bubbles


def bubble_fraction_1f1b(pp: int, n_microbatches: int) -> float:
    """Idle fraction of a 1F1B pipeline step: (p-1)/(m+p-1)."""
    p, m = check_int("pp", pp), check_int("n_microbatches", n_microbatches)
    return (p - 1) / (m + p - 1)


def pipeline_bubble_time(
    schedule: str, pp: int, f: float, b: float, w: float = 0.0, f_and_b: float | None = None
) -> float:
    """Bubble (seconds of idle per rank) from the table in deepseek-ai/DualPipe README.md:
      1F1B      (PP-1)(F+B)
      ZB1P      (PP-1)(F+B-2W)
      DualPipe  (PP/2-1)(F&B+B-3W)
    F: forward chunk, B: full backward chunk, W: its weight-gradient part, F&B: two
    mutually overlapped forward and backward chunks (default F+B: no overlap gain).
    Clipped at 0."""
    if schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule must be one of {PIPELINE_SCHEDULES}, got {schedule!r}")
    p = check_int("pp", pp)
    f, b, w = check_real("f", f), check_real("b", b), check_real("w", w)
    if w > b:
        raise ValueError(f"w (weight-gradient part of b) must be <= b={b}, got {w}")
    if schedule == "1f1b":
        return (p - 1) * (f + b)
    if schedule == "zb1p":
        return max(0.0, (p - 1) * (f + b - 2 * w))
    if p % 2:
        raise ValueError(f"pp must be even for dualpipe, got {p}")
    fb = f + b if f_and_b is None else check_real("f_and_b", f_and_b)
    return max(0.0, (p // 2 - 1) * (fb + b - 3 * w))


def pipeline_bubble_fraction(
    schedule: str,
    pp: int,
    n_microbatches: int,
    f: float = 1.0,
    b: float = 2.0,
    w: float = 1.0,
    f_and_b: float | None = None,
) -> float:
    """Bubble / (bubble + useful work m*(F+B)). For 1F1B this is (p-1)/(m+p-1).
    DualPipe needs an even number of micro-batches >= 2*pp (assert in dualpipe/dualpipe.py)."""
    p, m = check_int("pp", pp), check_int("n_microbatches", n_microbatches)
    if schedule == "dualpipe" and (m % 2 or m < 2 * p):
        raise ValueError(f"n_microbatches must be even and >= 2*pp={2 * pp} for dualpipe, got {m}")
    bubble = pipeline_bubble_time(schedule, pp, f, b, w, f_and_b)
    work = m * (f + b)
    return bubble / (bubble + work) if bubble + work > 0 else 0.0


# -----------------------------------------------------------------------------
# overlap with compute


def exposed_comm_time(comm_s: float, overlappable_compute_s: float) -> float:
    """Seconds of communication left on the critical path when it runs concurrently
    with overlappable_compute_s seconds of independent compute: max(0, comm - compute)."""
    comm = check_real("comm_s", comm_s)
    return max(0.0, comm - check_real("overlappable_compute_s", overlappable_compute_s))


def hidden_comm_fraction(comm_s: float, overlappable_compute_s: float) -> float:
    """Fraction of the communication hidden behind compute (1.0 when there is none)."""
    comm = check_real("comm_s", comm_s)
    if comm == 0:
        return 1.0
    return 1.0 - exposed_comm_time(comm, overlappable_compute_s) / comm
