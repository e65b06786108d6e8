"""
Fitting the collective model to measurements: a plain alpha-beta line (fit_alpha_beta) and
the full NCCL-like model of dsim.cost.comm.collectives (calibrate_from_measurements), whose
output on the committed 2 x H200 sweep (dsim/data/comm_nccl_h200x2.json) is the constants
there (tests/cost/test_comm.py re-runs the fit and checks they are equal).
"""

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsim.cost.checks import check_int, check_real
from dsim.cost.comm.collectives import MEASURED_FILE, bulk_time, bus_bandwidth_factor, check_kind
from dsim.cost.hardware import GPU, get_gpu

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# -----------------------------------------------------------------------------
# fitting measured curves


@dataclass(frozen=True)
class AlphaBeta:
    """time(nbytes) = alpha + beta * nbytes (seconds, seconds/byte)."""

    alpha: float
    beta: float

    @property
    def bandwidth(self) -> float:
        """1/beta, bytes/s."""
        return 1.0 / self.beta

    @property
    def half_saturation_bytes(self) -> float:
        """Message size at which latency equals transfer time: half the bandwidth is reached."""
        return self.alpha / self.beta

    def __call__(self, nbytes: float) -> float:
        return self.alpha + self.beta * nbytes


def fit_alpha_beta(sizes, times, relative: bool = True) -> AlphaBeta:
    """Least-squares fit of time = alpha + beta*size to measured (sizes bytes, times s).
    relative=True minimizes relative errors, which suits log-spaced sweeps (otherwise
    the biggest messages decide everything). A negative alpha is clipped to 0."""
    s = np.asarray(sizes, dtype=float).ravel()
    t = np.asarray(times, dtype=float).ravel()
    if s.shape != t.shape or s.size < 2:
        raise ValueError(
            f"sizes and times must have the same length >= 2, got {s.size} and {t.size}"
        )
    if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
        raise ValueError("sizes must be finite numbers >= 0")
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise ValueError("times must be finite numbers > 0")
    if np.unique(s).size < 2:
        raise ValueError("sizes must contain at least two distinct values")
    w = 1.0 / t if relative else np.ones_like(t)
    A = np.stack([np.ones_like(s), s], axis=1) * w[:, None]
    alpha, beta = np.linalg.lstsq(A, t * w, rcond=None)[0]
    if alpha < 0:  # refit through the origin
        alpha, beta = 0.0, float(np.sum(w * w * s * t) / np.sum(w * w * s * s))
    if beta <= 0:
        raise ValueError("times do not grow with sizes: cannot fit a bandwidth")
    return AlphaBeta(float(alpha), float(beta))


# -----------------------------------------------------------------------------
# calibrating the collective model on a measured sweep


def _bulk_steps(kind: str, n_ranks: int) -> int:
    """Dependent steps of the bulk protocol on one node: 2(n-1) for a ring all-reduce,
    n-1 for reduce-scatter and all-gather, 1 for all-to-all and send/recv (direct)."""
    if kind == "all_reduce":
        return 2 * (n_ranks - 1)
    if kind in ("reduce_scatter", "all_gather"):
        return n_ranks - 1
    return 1


def _sig3(x: float) -> float:
    """x rounded to 3 significant digits (the fit's precision: the measurements scatter by
    several per cent, so more digits would be noise)."""
    return float(f"{x:.3g}")


def _sig3_grid(lo: float, hi: float) -> np.ndarray:
    """Every number with 3 significant digits in [lo, hi], ascending."""
    out = []
    for e in range(math.floor(math.log10(lo)) - 2, math.floor(math.log10(hi)) + 1):
        out += [float(f"{m}e{e}") for m in range(100, 1000)]
    v = np.array(sorted(set(out)))
    return v[(v >= lo) & (v <= hi)]


def _best_floor(pred_log: np.ndarray, meas_log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of pred_log (log seconds on the wire, shape (..., P)), the floor x = log L
    minimising mean |log max(L, T) - log t| and that minimum. The loss is piecewise linear
    in x with breaks at the predicted and the measured points, so the best x is one of them."""
    cands = np.concatenate([pred_log, np.broadcast_to(meas_log, pred_log.shape)], axis=-1)
    loss = np.abs(np.maximum(cands[..., :, None], pred_log[..., None, :]) - meas_log).mean(-1)
    i = loss.argmin(-1)[..., None]
    return np.take_along_axis(loss, i, -1)[..., 0], np.take_along_axis(cands, i, -1)[..., 0]


def _grid_search(
    wire: dict[str, np.ndarray], steps: dict[str, np.ndarray], meas: dict[str, np.ndarray]
) -> tuple[float, dict[str, tuple[float, float]]]:
    """The search of calibrate_from_measurements on per-point arrays (one entry per measured
    point of each kind): wire bytes, bulk-protocol steps and log seconds. Returns the chunk
    overhead c and, per kind, (bus bandwidth, floor). Points of several world sizes may be pooled
    (their steps differ): dsim.cost.comm.crossval fits one set of constants to them."""
    kinds = list(wire)

    def per_kind(k, c, bws):
        """Loss and floor for each bandwidth in bws, chunk overhead c."""
        pred = 2 * np.log(np.sqrt(wire[k][None, :] / bws[:, None]) + np.sqrt(steps[k] * c))
        return _best_floor(pred, meas[k])

    # coarse
    coarse_c = np.exp(np.linspace(math.log(1e-8), math.log(1e-4), 93))
    coarse_b = np.exp(np.linspace(math.log(1e8), math.log(1e13), 237))
    best = None
    for c in coarse_c:
        total, bws = 0.0, {}
        for k in kinds:
            loss, _ = per_kind(k, c, coarse_b)
            i = int(loss.argmin())
            total += loss[i]
            bws[k] = coarse_b[i]
        if best is None or total < best[0]:
            best = (total, c, bws)
    _, c0, b0 = best
    # fine, on 3-significant-digit values
    fine_b = {k: _sig3_grid(b0[k] / 1.12, b0[k] * 1.12) for k in kinds}
    best = None
    for c in _sig3_grid(c0 / 1.2, c0 * 1.2):
        total, fit = 0.0, {}
        for k in kinds:
            loss, floor = per_kind(k, c, fine_b[k])
            i = int(loss.argmin())
            total += loss[i]
            fit[k] = (float(fine_b[k][i]), math.exp(floor[i]))
        if best is None or total < best[0]:
            best = (total, float(c), fit)
    return best[1], best[2]


@dataclass(frozen=True)
class CommCalibration:
    """The collective model fitted to one measured sweep on n_ranks GPUs of one node.
    launch_overhead_s, bus_bw: per measured kind (seconds; bytes/s); chunk_overhead_s:
    per step of the bulk protocol, shared by the kinds; mean_abs_log_error: the fit's loss,
    mean |log(model/measured)| over every point, averaged over the kinds."""

    gpu: str
    n_ranks: int
    launch_overhead_s: dict
    chunk_overhead_s: float
    bus_bw: dict
    mean_abs_log_error: float

    @property
    def peak_efficiency(self) -> float:
        """All-reduce bus bandwidth over the GPU's datasheet NVLink bandwidth."""
        return self.bus_bw["all_reduce"] / get_gpu(self.gpu).nvlink_bw

    def predict(self, kind: str, nbytes: float) -> float:
        """Seconds per call of the fitted model: max(launch, T_bulk) on one node."""
        n, w = self.n_ranks, check_real("nbytes", nbytes) * bus_bandwidth_factor(kind, self.n_ranks)
        return max(
            self.launch_overhead_s[kind],
            bulk_time(w, self.bus_bw[kind], _bulk_steps(kind, n) * self.chunk_overhead_s),
        )


def load_measurements(name: str = MEASURED_FILE) -> dict:
    """A bench/comm_bench.py result committed in dsim/data/ (default: the 2 x H200 NCCL run)."""
    path = DATA_DIR / name
    if not path.exists():
        raise ValueError(f"name must be a file in {DATA_DIR}, got {name!r}")
    return json.loads(path.read_text())


def _points(records, n_ranks, gpu):
    """(n_ranks, gpu name, {kind: (sizes, times)}) from a bench result or from
    (kind, nbytes, seconds) rows."""
    if isinstance(records, Mapping):
        if "collectives" not in records:
            raise ValueError(
                "records must be a bench/comm_bench.py result (with 'collectives') "
                "or an iterable of (kind, nbytes, seconds)"
            )
        n = records.get("world_size") if n_ranks is None else n_ranks
        rpn = records.get("ranks_per_node") or n
        gpu = gpu or records.get("gpu_model")
        pts = {
            k: (list(c["sizes_bytes"]), list(c["time_s"]))
            for k, c in records["collectives"].items()
        }
    else:
        n, rpn, pts = n_ranks, n_ranks, {}
        for row in records:
            kind, nbytes, seconds = row
            s, t = pts.setdefault(kind, ([], []))
            s.append(nbytes)
            t.append(seconds)
    n = check_int("n_ranks", n, lo=2)
    if rpn is None or rpn < n:
        raise ValueError(
            f"ranks_per_node must be >= n_ranks={n}: the fit models one node, got {rpn!r}"
        )
    if gpu is None:
        raise ValueError("gpu must name the measured GPU (records carry none)")
    g = get_gpu(gpu)
    if not pts:
        raise ValueError("records hold no measurement")
    out = {}
    for kind, (s, t) in pts.items():
        check_kind(kind)
        s, t = np.asarray(s, dtype=float), np.asarray(t, dtype=float)
        if s.size < 3 or s.shape != t.shape:
            raise ValueError(
                f"records of {kind} must be >= 3 (nbytes, seconds) pairs, got {s.size}"
            )
        if not (
            np.all(np.isfinite(s)) and np.all(s > 0) and np.all(np.isfinite(t)) and np.all(t > 0)
        ):
            raise ValueError(f"records of {kind}: sizes and times must be finite numbers > 0")
        out[kind] = (s, t)
    return n, g.name, out


def calibrate_from_measurements(
    records, n_ranks: int | None = None, gpu: "str | GPU | None" = None
) -> CommCalibration:
    """Fit the collective model to a measured sweep on one node:

        time(kind, S) = max(launch_kind, (sqrt(S * f_kind / B_kind) + sqrt(steps_kind * c))^2)

    (f_kind: the bus-bandwidth factor, so S * f_kind is the wire bytes; steps_kind from
    _bulk_steps), with a launch floor and a bus bandwidth per kind and one per-step chunk
    overhead c for all kinds. The loss is the mean |log(model / measured)| over each kind's
    points (robust to the odd slow point), the kinds weighing equally. The search is a coarse
    log grid (about 10% on c, 5% on B), then every 3-significant-digit value within 20% (c)
    and 12% (B) of the coarse optimum; each floor is exact (_best_floor), then rounded to 3
    significant digits. Deterministic: the same records give the same constants.

    records: a bench/comm_bench.py result (dict with "collectives", "world_size",
      "ranks_per_node", "gpu_model"), or an iterable of (kind, nbytes, seconds) rows, with
      n_ranks and gpu given.
    """
    n, gpu_name, pts = _points(records, n_ranks, gpu)
    kinds = list(pts)
    wire = {k: pts[k][0] * bus_bandwidth_factor(k, n) for k in kinds}
    steps = {k: np.full(pts[k][0].shape, float(_bulk_steps(k, n))) for k in kinds}
    meas = {k: np.log(pts[k][1]) for k in kinds}
    c, fit = _grid_search(wire, steps, meas)
    launch = {k: _sig3(fit[k][1]) for k in kinds}
    bus_bw = {k: float(fit[k][0]) for k in kinds}
    cal = CommCalibration(
        gpu=gpu_name,
        n_ranks=n,
        launch_overhead_s=launch,
        chunk_overhead_s=c,
        bus_bw=bus_bw,
        mean_abs_log_error=0.0,
    )
    err = [np.mean(np.abs(np.log([cal.predict(k, s) for s in pts[k][0]]) - meas[k])) for k in kinds]
    return CommCalibration(
        gpu=gpu_name,
        n_ranks=n,
        launch_overhead_s=launch,
        chunk_overhead_s=c,
        bus_bw=bus_bw,
        mean_abs_log_error=float(np.mean(err)),
    )


@functools.cache
def measured_calibration(name: str = MEASURED_FILE) -> CommCalibration:
    """calibrate_from_measurements on a committed run (cached): the source of the constants in
    dsim.cost.comm.collectives."""
    return calibrate_from_measurements(load_measurements(name))
