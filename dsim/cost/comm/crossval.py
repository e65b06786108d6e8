"""
The collective model fitted on some world sizes and validated on the others.

The constants of dsim.cost.comm.collectives were fitted on one sweep (2 x H200). A model that
knows how a collective's cost grows with the number of ranks should predict a 4- or 8-rank sweep
from constants fitted elsewhere. This module states that test:

    calibrate_world_sizes(runs)        one set of constants (a launch floor and a bus bandwidth
                                       per collective, one chunk overhead) fitted to the sweeps
                                       of several world sizes at once
    predict(cal, kind, nbytes, n)      that fitted model at any world size on one node
    sweep_errors(run, model)           model / measured - 1 at every point of one sweep
    summarize(errors)                  median and worst |error|, per collective and over all
    fit_and_validate(runs, fit_on)     the split: fit on the world sizes `fit_on`, errors on the
                                       others (the issue's goal: median <= 15 %, worst <= 50 %)
    committed_model(gpu, rpn)          dsim.cost.comm.collective_time with the committed
                                       constants, as a `model` for sweep_errors

A run is a bench/comm_bench.py result (one JSON per world size; `--world-sizes 2,4,8`). The model
form is calibrate_from_measurements' (dsim.cost.comm.fit): with S * f_kind(n) bytes on the wire
and steps_kind(n) dependent steps (2(n-1) for all-reduce, n-1 for reduce-scatter and all-gather,
1 for all-to-all),

    time(kind, S, n) = max(launch_kind, (sqrt(S f_kind(n) / B_kind) + sqrt(steps_kind(n) c))^2)

so the world size enters only through f and steps; the constants are shared by every n.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dsim.cost.checks import check_int
from dsim.cost.comm.collectives import bus_bandwidth_factor, collective_time
from dsim.cost.comm.fit import (
    CommCalibration,
    _bulk_steps,
    _grid_search,
    _points,
    _sig3,
)
from dsim.cost.hardware import get_gpu

# The goal for the held-out world sizes (|model / measured - 1|).
GOAL_MEDIAN = 0.15
GOAL_WORST = 0.50


def _runs_by_size(runs: Iterable[Mapping]) -> tuple[str, dict[int, dict]]:
    """(gpu name, {world size: (kind -> (sizes, times))}) of bench/comm_bench.py results, checked:
    one GPU model, one sweep per world size."""
    gpu, out = None, {}
    for run in runs:
        n, g, pts = _points(run, None, None)
        if gpu is not None and g != gpu:
            raise ValueError(f"runs must be of one GPU model: got {gpu} and {g}")
        if n in out:
            raise ValueError(f"runs must hold one sweep per world size: world_size={n} twice")
        gpu, out[n] = g, pts
    if not out:
        raise ValueError("runs must hold at least one bench/comm_bench.py result")
    return gpu, out


def calibrate_world_sizes(runs: Iterable[Mapping]) -> CommCalibration:
    """calibrate_from_measurements' fit on the pooled points of several world sizes (each point
    with its own wire bytes and steps), the collectives weighing equally and, inside one
    collective, every point equally. The result's n_ranks is the smallest fitted world size;
    predict() evaluates it at any other."""
    gpu, by_n = _runs_by_size(runs)
    kinds = sorted({k for pts in by_n.values() for k in pts})
    wire, steps, meas = {}, {}, {}
    for k in kinds:
        rows = [(n, pts[k]) for n, pts in sorted(by_n.items()) if k in pts]
        wire[k] = np.concatenate([s * bus_bandwidth_factor(k, n) for n, (s, _) in rows])
        steps[k] = np.concatenate(
            [np.full(s.shape, float(_bulk_steps(k, n))) for n, (s, _) in rows]
        )
        meas[k] = np.log(np.concatenate([t for _, (_, t) in rows]))
    c, fit = _grid_search(wire, steps, meas)
    cal = CommCalibration(
        gpu=gpu,
        n_ranks=min(by_n),
        launch_overhead_s={k: _sig3(fit[k][1]) for k in kinds},
        chunk_overhead_s=c,
        bus_bw={k: fit[k][0] for k in kinds},
        mean_abs_log_error=0.0,
    )
    err = []
    for k in kinds:
        pred = [predict(cal, k, s, n) for n, pts in by_n.items() if k in pts for s in pts[k][0]]
        err.append(np.mean(np.abs(np.log(pred) - meas[k])))
    return dataclasses.replace(cal, mean_abs_log_error=float(np.mean(err)))


def predict(cal: CommCalibration, kind: str, nbytes: float, n_ranks: int) -> float:
    """Seconds per call of the fitted model on n_ranks GPUs of one node."""
    n = check_int("n_ranks", n_ranks, lo=2)
    return dataclasses.replace(cal, n_ranks=n).predict(kind, nbytes)


def committed_model(gpu: str, ranks_per_node: int) -> Callable[[str, float, int], float]:
    """dsim.cost.comm.collective_time (the committed constants, fitted on 2 x H200) as a model
    (kind, nbytes, n_ranks) -> seconds, for sweep_errors."""
    get_gpu(gpu)
    check_int("ranks_per_node", ranks_per_node)
    return lambda kind, nbytes, n: collective_time(kind, nbytes, n, gpu, ranks_per_node)


def sweep_errors(
    run: Mapping, model: Callable[[str, float, int], float], min_bytes: float = 0
) -> dict[str, dict[str, list[float]]]:
    """model / measured - 1 at every point of a bench/comm_bench.py sweep of at least min_bytes
    (+ means the model is slower): {kind: {"sizes_bytes", "measured_s", "model_s", "error"}}.
    model: (kind, nbytes, n_ranks) -> seconds, e.g. functools.partial(predict, cal) or
    committed_model(...)."""
    n, _, pts = _points(run, None, None)
    out = {}
    for kind, (s, t) in pts.items():
        keep = s >= min_bytes
        if not keep.any():
            raise ValueError(
                f"min_bytes={min_bytes:g} leaves no point of {kind} (largest {s.max():g})"
            )
        m = np.array([model(kind, float(x), n) for x in s[keep]])
        out[kind] = dict(
            sizes_bytes=s[keep].tolist(),
            measured_s=t[keep].tolist(),
            model_s=m.tolist(),
            error=(m / t[keep] - 1).tolist(),
        )
    return out


@dataclass(frozen=True)
class ErrorSummary:
    """|model / measured - 1| over a set of points: median, worst, how many, and whether the
    issue's goal (median <= GOAL_MEDIAN, worst <= GOAL_WORST) is met."""

    median: float
    worst: float
    points: int

    @property
    def meets_goal(self) -> bool:
        return self.median <= GOAL_MEDIAN and self.worst <= GOAL_WORST


def _summary(errors: Sequence[float]) -> ErrorSummary:
    e = np.abs(np.asarray(errors, dtype=float))
    return ErrorSummary(float(np.median(e)), float(e.max()), int(e.size))


def summarize(errors: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, ErrorSummary]:
    """ErrorSummary per collective of sweep_errors' output, and "all" over every point."""
    out = {k: _summary(v["error"]) for k, v in errors.items()}
    out["all"] = _summary([x for v in errors.values() for x in v["error"]])
    return out


@dataclass(frozen=True)
class CrossValidation:
    """The model fitted on the world sizes `fit_on`; its errors (sweep_errors) and summaries on
    every world size, the held-out ones (`held_out`) being the validation."""

    calibration: CommCalibration
    fit_on: tuple[int, ...]
    held_out: tuple[int, ...]
    errors: dict[int, dict]
    summary: dict[int, dict[str, ErrorSummary]]

    @property
    def validation(self) -> ErrorSummary:
        """Over every point of every held-out world size."""
        return _summary(
            [x for n in self.held_out for v in self.errors[n].values() for x in v["error"]]
        )


def fit_and_validate(
    runs: Iterable[Mapping], fit_on: Sequence[int], min_bytes: float = 0
) -> CrossValidation:
    """Fit on the sweeps whose world size is in fit_on; report the errors on every sweep (the
    others held out) at messages of at least min_bytes."""
    runs = list(runs)
    _, by_n = _runs_by_size(runs)
    fit_on = tuple(sorted(set(check_int("fit_on", n, lo=2) for n in fit_on)))
    missing = [n for n in fit_on if n not in by_n]
    if missing:
        raise ValueError(f"fit_on must name measured world sizes {sorted(by_n)}, got {missing}")
    held_out = tuple(n for n in sorted(by_n) if n not in fit_on)
    if not held_out:
        raise ValueError(f"fit_on={list(fit_on)} leaves no world size to validate on")
    size = {id(r): _points(r, None, None)[0] for r in runs}
    cal = calibrate_world_sizes(r for r in runs if size[id(r)] in fit_on)

    def model(kind: str, nbytes: float, n: int) -> float:
        return predict(cal, kind, nbytes, n)

    errors = {size[id(r)]: sweep_errors(r, model, min_bytes) for r in runs}
    return CrossValidation(
        calibration=cal,
        fit_on=fit_on,
        held_out=held_out,
        errors=errors,
        summary={n: summarize(e) for n, e in errors.items()},
    )


def report(runs: Sequence[Mapping], fit_on: Sequence[int], min_bytes: float = 0) -> str:
    """The text the chapter quotes: the committed model's errors on every sweep, then the model
    fitted on fit_on and its errors on the held-out world sizes, against the goal."""
    runs = list(runs)
    gpu, by_n = _runs_by_size(runs)
    lines = [f"collective model on {gpu}, messages >= {min_bytes:g} B, |model/measured - 1|"]
    lines.append("committed constants (fitted on 2 x H200):")
    for run in runs:
        rpn = run.get("ranks_per_node") or run["world_size"]
        s = summarize(sweep_errors(run, committed_model(gpu, rpn), min_bytes))
        lines += [_line(run["world_size"], k, v) for k, v in s.items()]
    cv = fit_and_validate(runs, fit_on, min_bytes)
    c = cv.calibration
    lines.append(
        f"refitted on world sizes {list(cv.fit_on)}: chunk overhead {c.chunk_overhead_s:.3g} s, "
        + ", ".join(f"{k} {c.bus_bw[k] / 1e9:.0f} GB/s" for k in c.bus_bw)
    )
    for n in sorted(by_n):
        tag = "held out" if n in cv.held_out else "fitted"
        lines += [_line(n, k, v, tag) for k, v in cv.summary[n].items()]
    v = cv.validation
    lines.append(
        f"validation (held out {list(cv.held_out)}): median {v.median:.1%}, worst {v.worst:.1%} "
        f"over {v.points} points; goal median <= {GOAL_MEDIAN:.0%}, worst <= {GOAL_WORST:.0%}: "
        + ("met" if v.meets_goal else "NOT met")
    )
    return "\n".join(lines)


def _line(n: int, kind: str, s: ErrorSummary, tag: str = "") -> str:
    return (
        f"  {n} ranks {tag:8} {kind:15} median {s.median:7.1%}  worst {s.worst:7.1%}  "
        f"({s.points} points)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """python -m dsim.cost.comm.crossval --fit-on 2 dsim/data/comm_sweep_h200x*.json"""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description=report.__doc__)
    p.add_argument("files", nargs="+", type=Path, help="bench/comm_bench.py JSONs, one per size")
    p.add_argument("--fit-on", required=True, help="world sizes to fit on, e.g. 2 or 2,4")
    p.add_argument("--min-bytes", type=float, default=0)
    a = p.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in a.files]
    print(report(runs, [int(n) for n in a.fit_on.split(",")], a.min_bytes))


if __name__ == "__main__":
    main()
