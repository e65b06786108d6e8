"""Fitting the calibration to measured op times, and judging the model against measurements.

`fit_calibration` fits the constants of `Calibration` stage by stage (`FIT_STAGES`: memory kernels
first, then norms, GEMMs, grouped GEMMs, gathers and sorts, the gate, attention), each on the
records that isolate it, by least squares on relative error; `validate` and `error_summary`
compare the predictions with measurements the fit never saw (bench/validate_timing.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dsim.cost.hardware import GPU, get_gpu
from dsim.cost.timing.calibration import Calibration
from dsim.cost.timing.ops import op_time, roofline_time

# Stages: (name, op kinds whose calibration records fit them, constants fitted, bounds).
# Each stage fits only its own constants, with those of the earlier stages fixed.
_ATTN_KEYS = tuple(Calibration().attn_eff)
# ANCHOR: fit_stages
FIT_STAGES: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, float, float], ...]], ...] = (
    (
        "memory",
        ("elementwise",),
        (
            ("op_start_s", 0.0, 10e-6),
            ("launch_s", 0.5e-6, 20e-6),
            ("bw_eff", 0.3, 1.0),
            ("l2_write_frac", 0.0, 1.0),
            ("strided_s_per_elt", 1e-13, 1e-10),
            ("strided_fixed_s", 0.0, 10e-6),
            ("reduce_s_per_elt", 1e-13, 1e-10),
        ),
    ),
    (
        "rmsnorm",
        ("rmsnorm",),
        (("row_s_per_byte", 1e-11, 1e-8), ("rms_eff", 0.3, 1.0), ("rms_bwd_passes", 0.5, 10.0)),
    ),
    (
        "gemm",
        ("gemm:bf16",),
        (
            ("mma_eff", 0.3, 1.0),
            ("tile_ai0", 0.0, 200.0),
            ("tile_fill", 0.0, 16.0),
            ("epilogue_bw", 0.5, 100.0),
            ("gemm_launch_s", 0.5e-6, 30e-6),
            ("sm_bw", 1.0, 16.0),
        ),
    ),
    ("fp32 gemm", ("gemm:fp32",), (("fp32_eff", 0.1, 1.0),)),
    (
        "grouped gemm",
        ("grouped_gemm",),
        (("grouped_eff", 0.2, 1.0), ("grouped_small_eff", 0.1, 1.0), ("grouped_bw_eff", 0.3, 1.0)),
    ),
    (
        "rows and sort",
        ("gather_rows", "index_select_rows", "index_add_rows", "sort"),
        (
            ("gather_eff", 0.1, 1.0),
            ("atomic_eff", 0.01, 1.0),
            ("index_put_eff", 0.02, 1.0),
            ("sort_small_s", 1e-6, 500e-6),
            ("sort_setup_s", 0.0, 200e-6),
        ),
    ),
    ("gate", ("gate",), (("topk_s_per_elt", 1e-12, 1e-9),)),
    (
        "attention",
        ("attention",),
        tuple((f"attn_eff.{k}", 0.05, 1.0) for k in _ATTN_KEYS) + (("attn_fill", 0.0, 8.0),),
    ),
    ("moe_ffn", ("moe_ffn",), ()),  # no constant of its own: a check of the composition
)
# ANCHOR_END: fit_stages


def fit_constants() -> tuple[str, ...]:
    """Every constant some stage of FIT_STAGES may fit (names as in Calibration.constants())."""
    return tuple(name for _, _, params in FIT_STAGES for name, _, _ in params)


def _get(cal: Calibration, name: str) -> float:
    """A constant by name; 'attn_eff.cudnn_fwd_mha_causal' reads an entry of the attn_eff table."""
    if "." in name:
        table, key = name.split(".")
        return getattr(cal, table)[key]
    return getattr(cal, name)


def _with(cal: Calibration, values: dict[str, float]) -> Calibration:
    """A copy of cal with some constants changed (names as in _get)."""
    plain = {k: float(v) for k, v in values.items() if "." not in k}
    tables: dict[str, dict] = {}
    for k, v in values.items():
        if "." in k:
            table, key = k.split(".")
            tables.setdefault(table, dict(getattr(cal, table)))[key] = float(v)
    return cal.replace(**plain, **tables)


def record_kind(r: dict) -> str:
    """The op kind of a measurement record for the fit stages ('gemm:bf16', 'gemm:fp32',
    'attention', ...)."""
    return f"gemm:{'fp32' if r['dtype'] == 'fp32' else 'bf16'}" if r["op"] == "gemm" else r["op"]


def predict_record(r: dict, cal: Calibration, gpu: str | GPU | None = None) -> float:
    """op_time for a measurement record (as written by bench/timing_measure.py)."""
    return op_time(r["op"], gpu or cal.gpu, r["dtype"], r["backward"], cal, **r["shape"])


def fit_calibration(
    records: list[dict], gpu: str | GPU = "H100-SXM", start: Calibration | None = None
) -> Calibration:
    """Least-squares fit of the efficiency constants to measured op times.

    records: measurement records (op, dtype, backward, shape, time_s), e.g. the calibration split
    of dsim/data/timing_h100.json. Minimises sum(log(predicted / measured)^2), i.e. relative
    errors, stage by stage (FIT_STAGES): each stage fits its constants on the records of its op
    kinds, with the earlier stages' constants fixed, from two starting points (the start values and
    the middle of the bounds; the better fit wins). Constants that no record constrains keep their
    start value (`Calibration.fitted_constants()` lists the others); the SDPA backends are read
    from the records. Deterministic.
    """
    g = get_gpu(gpu)
    cal = (start or Calibration()).replace(gpu=g.name)
    usable = [r for r in records if "error" not in r and r.get("time_s", 0) > 0]
    cal = cal.replace(**_measured_backends(usable, cal))
    diag: dict[str, Any] = {}
    for stage, kinds, params in FIT_STAGES:
        rs = [r for r in usable if record_kind(r) in kinds]
        if not rs:
            continue
        meas = np.array([r["time_s"] for r in rs])
        names = [p[0] for p in params]

        def residuals(vals: np.ndarray, names=names, rs=rs, meas=meas, base=cal) -> np.ndarray:
            c = _with(base, dict(zip(names, vals)))
            return np.log(np.array([predict_record(r, c, g) for r in rs]) / meas)

        if params:
            x0 = np.array([_get(cal, n) for n in names], dtype=float)
            lo, hi = np.array([p[1] for p in params]), np.array([p[2] for p in params])
            free = _constrained(residuals, x0, lo, hi)  # constants some record depends on
            if free.any():
                sub = lambda v, free=free, x0=x0: residuals(_scatter(free, v, x0))  # noqa: E731
                fits = [
                    _least_squares(sub, start_, lo[free], hi[free])
                    for start_ in (x0[free], (lo[free] + hi[free]) / 2)
                ]
                best = min(fits, key=lambda v: float(np.sum(sub(v) ** 2)))
                cal = _with(cal, dict(zip(names, _scatter(free, best, x0))))
        err = np.abs(np.expm1(np.log(np.array([predict_record(r, cal, g) for r in rs]) / meas)))
        diag[stage] = dict(
            records=len(rs),
            median_error=float(np.median(err)),
            worst_error=float(np.max(err)),
            fitted=[n for n, f in zip(names, free) if f] if params else [],
        )
    return cal.replace(source=f"fitted to {len(usable)} calibration records", fit=diag)


def _measured_backends(records: list[dict], cal: Calibration) -> dict[str, str]:
    """Which SDPA backend the GPU ran for equal and for unequal head dims, from the records."""
    out = {}
    for key, equal in (("attn_backend_equal", True), ("attn_backend_unequal", False)):
        seen = [
            r.get("extra", {}).get("backend")
            for r in records
            if r["op"] == "attention"
            and (r["shape"]["qk_head_dim"] == r["shape"]["v_head_dim"]) == equal
        ]
        seen = [
            b
            for b in seen
            if b in ("flash_attention", "efficient_attention", "cudnn_attention", "math")
        ]
        if seen:
            out[key] = max(set(seen), key=seen.count)
    return out


def _scatter(mask: np.ndarray, values: np.ndarray, base: np.ndarray) -> np.ndarray:
    out = base.copy()
    out[mask] = values
    return out


def _constrained(
    residuals: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Which constants change some prediction when moved (the others are left alone)."""
    r0 = residuals(x0)
    free = np.zeros(len(x0), dtype=bool)
    for j in range(len(x0)):
        for target in (lo[j] + 0.25 * (hi[j] - lo[j]), lo[j] + 0.75 * (hi[j] - lo[j])):
            x = x0.copy()
            x[j] = target
            if np.max(np.abs(residuals(x) - r0)) > 1e-9:
                free[j] = True
                break
    return free


def _least_squares(
    residuals: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    iters: int = 200,
) -> np.ndarray:
    """Bounded Levenberg-Marquardt: minimise sum(residuals(x)^2) over lo <= x <= hi.

    Works in logistic coordinates (x = lo + (hi - lo) * sigmoid(u)) so that the bounds hold, with a
    forward-difference Jacobian. scipy.optimize.least_squares(bounds=(lo, hi), method="trf"), tried
    in its place (scipy 1.17.1; x_scale 1, "jac" or hi - lo), settles in other minima of these
    stage fits (summed squared log errors on the calibration records 5.89 to 7.55 against 6.65 on
    the H100, 2.31 to 2.41 against 2.08 on the H200) and moves the committed records' predictions
    by up to 26 to 49 % (H100) and 20 % (H200), so it would not reproduce the committed
    calibrations."""
    span = hi - lo
    to_x = lambda u: lo + span / (1.0 + np.exp(-u))  # noqa: E731
    p = np.clip((x0 - lo) / span, 0.02, 0.98)  # off the bounds, where the slope vanishes
    u = np.log(p / (1 - p))
    r = residuals(to_x(u))
    cost, lam = float(r @ r), 1e-3
    for _ in range(iters):
        J = np.empty((len(r), len(u)))
        for j in range(len(u)):
            h = 1e-4 * max(1.0, abs(u[j]))
            du = np.zeros_like(u)
            du[j] = h
            J[:, j] = (residuals(to_x(u + du)) - r) / h
        A, grad = J.T @ J, J.T @ r
        improved = False
        while lam < 1e10:
            step = np.linalg.solve(A + lam * (np.diag(np.diag(A)) + 1e-9 * np.eye(len(u))), -grad)
            u_new = np.clip(u + step, -30, 30)
            r_new = residuals(to_x(u_new))
            c_new = float(r_new @ r_new)
            if c_new < cost:
                improved = cost - c_new > 1e-12 * max(cost, 1e-30)
                u, r, cost, lam = u_new, r_new, c_new, max(lam / 4, 1e-9)
                break
            lam *= 4
        if not improved:
            break
    return to_x(u)


# ---------------------------------------------------------------------------------------------
# Validation: measured against predicted
# ---------------------------------------------------------------------------------------------
def load_measurements(path: str | Path) -> dict[str, Any]:
    """A measurement file of bench/timing_measure.py (JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"measurement file not found: {path}") from None
    if not isinstance(data, dict) or "records" not in data:
        raise ValueError(f"{path} is not a timing_measure.py output (no 'records')")
    return data


def validate(records: list[dict], cal: Calibration, gpu: str | GPU | None = None) -> list[dict]:
    """Predicted, measured and datasheet-roofline times of each record, with relative errors."""
    rows = []
    for r in records:
        if "error" in r or not r.get("time_s"):
            continue
        pred = predict_record(r, cal, gpu)
        roof = roofline_time(r["op"], gpu or cal.gpu, r["dtype"], r["backward"], **r["shape"])
        rows.append(
            dict(
                op=r["op"],
                kind=record_kind(r),
                split=r["split"],
                backward=r["backward"],
                dtype=r["dtype"],
                shape=r["shape"],
                measured_s=r["time_s"],
                predicted_s=pred,
                roofline_s=roof,
                error=pred / r["time_s"] - 1.0,
                roofline_error=roof / r["time_s"] - 1.0,
                backend=r.get("extra", {}).get("backend"),
            )
        )
    return rows


def error_summary(rows: list[dict], key: str = "op") -> dict[str, dict[str, float]]:
    """Median and worst |relative error| (model and datasheet roofline) per `key` and overall."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    groups["all"] = rows
    out = {}
    for name, rs in groups.items():
        if not rs:
            continue
        e = np.abs([r["error"] for r in rs])
        q = np.abs([r["roofline_error"] for r in rs])
        out[name] = dict(
            n=len(rs),
            median=float(np.median(e)),
            worst=float(np.max(e)),
            roofline_median=float(np.median(q)),
            roofline_worst=float(np.max(q)),
        )
    return out
