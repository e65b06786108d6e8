#!/usr/bin/env python
"""Fit dsim's time model on the calibration records of a measurement file and judge it on the rest.

Reads a file written by bench/timing_measure.py, fits the efficiency constants on its calibration
split (dsim.cost.timing.fit_calibration), predicts every validation record (shapes the fit never
saw) and prints, per case and per op kind, the relative error of the model and, for comparison,
of the datasheet roofline. Writes, next to the data file (or into --out-dir):
  timing_calibration_<gpu>.json   the fitted constants (dsim.cost.timing loads them)
  timing_validation_<gpu>.json    the validation table and its summary
Runs on a CPU in seconds. Targets (per op kind, validation split): median |error| <= 10%,
worst <= 25%. fp32 GEMMs (gemm:fp32, the MoE router's) are reported apart and are not a target.

Usage:
  python bench/validate_timing.py --data dsim/data/timing_h100.json
  python bench/validate_timing.py --data dsim/data/timing_h200.json --quiet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsim.cost.hardware import get_gpu  # noqa: E402
from dsim.cost.timing import error_summary, fit_calibration, load_measurements, validate  # noqa: E402

TARGET_MEDIAN, TARGET_WORST = 0.10, 0.25


def describe(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items() if k not in ("numel",) and v is not None)


def run(
    data_path: Path, gpu: str | None = None, out_dir: Path | None = None, quiet: bool = False
) -> dict:
    """Fit, validate, print, write; returns the validation summary."""
    start = time.time()
    data = load_measurements(data_path)
    env = data.get("env", {})
    name = gpu or env.get("gpu", "H100-SXM")
    try:
        g = get_gpu(name)
    except ValueError:
        print(
            f"note: {name!r} is not in the GPU catalog (CPU test data?): "
            "fitting the H100-SXM model to it only exercises the code",
            flush=True,
        )
        g = get_gpu("H100-SXM")
    records = [r for r in data["records"] if "error" not in r]
    failed = [r for r in data["records"] if "error" in r]
    cal_recs = [r for r in records if r["split"] == "calibration"]
    val_recs = [r for r in records if r["split"] == "validation"]
    cal = fit_calibration(cal_recs, g)
    rows = validate(val_recs, cal, g)
    rows_cal = validate(cal_recs, cal, g)

    print(
        f"\nvalidate_timing: {data_path.name} "
        f"({env.get('device_name', '?')}, torch {env.get('torch', '?')}); "
        f"{len(cal_recs)} calibration / {len(val_recs)} validation records"
        + (f", {len(failed)} failed measurements" if failed else "")
    )
    fitted = {n for d in cal.fit.values() for n in d["fitted"]}
    consts = {
        k: v for k, v in cal.to_dict().items() if k not in ("fit", "source", "gpu", "attn_eff")
    }
    consts.update(
        {f"attn_eff.{k}": v for k, v in cal.attn_eff.items() if f"attn_eff.{k}" in fitted}
    )
    print(
        "constants (* fitted): "
        + ", ".join(
            f"{k}{'*' if k in fitted else ''}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in consts.items()
        )
    )
    for stage, d in cal.fit.items():
        print(
            f"  stage {stage:14} {d['records']:3} records: "
            f"median {d['median_error']:6.1%}, worst {d['worst_error']:6.1%}"
        )
    if not quiet:
        print(
            f"\n{'op':18}{'bwd':>4}  {'shape':58}"
            f"{'measured':>11}{'model':>11}{'error':>8}{'roofline':>10}"
        )
        for r in sorted(rows, key=lambda r: (r["op"], r["backward"], r["measured_s"])):
            print(
                f"{r['op']:18}{'yes' if r['backward'] else '':>4}  {describe(r['shape'])[:57]:58}"
                f"{r['measured_s'] * 1e6:9.1f}us{r['predicted_s'] * 1e6:9.1f}us{r['error']:+8.1%}"
                f"{r['roofline_error']:+10.1%}"
            )
    summary = error_summary(rows, "kind")
    summary_cal = error_summary(rows_cal, "kind")
    print(
        f"\n{'validation':16}{'n':>5}{'median':>9}{'worst':>9}   "
        f"{'roofline median':>16}{'worst':>9}"
    )
    ok = True
    for kind, s in summary.items():
        met = s["median"] <= TARGET_MEDIAN and s["worst"] <= TARGET_WORST
        ok &= met or kind in ("all", "gemm:fp32")
        print(
            f"{kind:16}{s['n']:5}{s['median']:9.1%}{s['worst']:9.1%}   {s['roofline_median']:16.1%}"
            f"{s['roofline_worst']:9.1%}   {'' if met else '<- misses the target'}"
        )
    print(
        f"(calibration split, for reference: "
        f"median {summary_cal.get('all', {}).get('median', float('nan')):.1%}, "
        f"worst {summary_cal.get('all', {}).get('worst', float('nan')):.1%})"
    )
    print(
        f"targets (median <= {TARGET_MEDIAN:.0%}, worst <= {TARGET_WORST:.0%} per op kind): "
        f"{'MET' if ok else 'MISSED'}; {time.time() - start:.1f}s"
    )

    key = data_path.stem.replace("timing_", "", 1)
    out_dir = out_dir or data_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"timing_calibration_{key}.json").write_text(
        json.dumps(
            dict(
                gpu=g.name,
                data=data_path.name,
                device_name=env.get("device_name"),
                torch=env.get("torch"),
                calibration=cal.to_dict(),
            ),
            indent=1,
        )
    )
    (out_dir / f"timing_validation_{key}.json").write_text(
        json.dumps(
            dict(
                gpu=g.name,
                data=data_path.name,
                device_name=env.get("device_name"),
                calibration_source=cal.source,
                targets=dict(median=TARGET_MEDIAN, worst=TARGET_WORST),
                summary=summary,
                summary_calibration=summary_cal,
                rows=rows,
            ),
            indent=1,
        )
    )
    print(
        f"wrote {out_dir / f'timing_calibration_{key}.json'} and "
        f"{out_dir / f'timing_validation_{key}.json'}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", required=True, help="timing_measure.py output, e.g. dsim/data/timing_h100.json"
    )
    ap.add_argument(
        "--gpu", default=None, help="catalog GPU name (default: the one recorded in the file)"
    )
    ap.add_argument(
        "--out-dir", default=None, help="where to write (default: the data file's folder)"
    )
    ap.add_argument("--quiet", action="store_true", help="no per-case table")
    a = ap.parse_args(argv)
    run(Path(a.data), a.gpu, Path(a.out_dir) if a.out_dir else None, a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
