"""The planner's one evaluator: step time, memory per GPU and whether it fits, for every layout.

`evaluate` works on numpy arrays over all layouts; `evaluate_layout` runs the same code on a
one-row `Layouts`. Whatever depends on only a few layout fields comes from `Tables` once per
distinct key and is gathered by index (`_lookup`); the arithmetic is a few hundred numpy
operations per chunk of 2048 layouts on [positions, layouts] arrays (the pipeline positions of
`Tables.stage_columns`): about a million layouts per second on one core (bench/plan_speed.py).

How a step is timed (per micro-batch and pipeline stage, then composed):
    compute     forward (F), backward (B) and its weight-gradient part (W) of every op the stage
                runs, plus recomputation: selective = the forward of the RMSNorms and of MLA's
                up-projections (DeepSeek-V3's recipe), full = the whole forward of every block
                again.
    exposed communication
                tensor parallel: 4 all-reduces of the block's activations per block (6 with full
                recomputation), never hidden; expert parallel: dispatch + combine per MoE block,
                forward and backward (and again with full recomputation): fully exposed under 1F1B,
                hidden behind the compute of the paired chunk under DualPipe (exposed = max(0, a2a -
                compute)); pipeline send/receive: on the critical path under 1F1B, hidden under
                DualPipe; data parallel (after the last micro-batch, `_dp_exposed`): ZeRO 0
                all-reduce, ZeRO 1 reduce-scatter + all-gather, hidden behind one micro-batch's
                backward (gradients) and forward (parameters); ZeRO 2 reduce-scatters after every
                micro-batch; ZeRO 3 gathers and scatters every micro-batch, each hidden behind that
                micro-batch's compute where it can be.
    pipeline    step = m x tau + bubble, tau = the slowest stage's time per micro-batch (compute +
                exposed communication); bubble from DualPipe's table (`pipeline_bubble`). DualPipe
                places stages s and pp-1-s on one GPU (2x parameters; activations of pp - s
                micro-batches of stage s and s + 1 of stage pp-1-s, Tables.stage_columns), and
                needs an even pp and an even number of micro-batches >= 2 pp.
    optimizer   Adam is one streaming pass over the local optimizer shard (an `elementwise` op of
                the time model; its time is affine in the bytes, so it is evaluated as a + b x
                bytes).
Memory per GPU: weights, gradients and optimizer states of the parameters the GPU holds, divided
by ZeRO as dsim.cost.layout.zero_params says; activations of the micro-batches in flight; buffers
(the reserve, plus the block ZeRO-3 prefetches). For 1F1B this is dsim.cost.memory.memory's
busiest stage (tests/cost/test_plan.py holds the two equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsim.cost.layout import zero_params
from dsim.cost.plan.job import MATMUL_DTYPES, RECOMPUTE, SCHEDULES, TrainingJob
from dsim.cost.plan.layouts import FIELDS, Layouts
from dsim.cost.plan.tables import Tables, tables

OUTPUTS = (
    "step_time_s",
    "compute_s",
    "exposed_comm_s",
    "bubble_s",
    "exposed_tp_s",
    "exposed_ep_s",
    "exposed_pp_s",
    "exposed_dp_s",
    "weights",
    "gradients",
    "optimizer",
    "activations",
    "buffers",
    "memory_per_gpu_bytes",
)
EXPOSED_KINDS = {
    "tensor": "exposed_tp_s",
    "expert": "exposed_ep_s",
    "pipeline": "exposed_pp_s",
    "data": "exposed_dp_s",
}
MEMORY_KINDS = ("weights", "gradients", "optimizer", "activations", "buffers")
REASONS = (
    "weights alone exceed the GPU memory",
    "weights, gradients and optimizer states exceed the GPU memory",
    "activations exceed the memory left after the model states",
)
_SELECTIVE, _FULL = RECOMPUTE.index("selective"), RECOMPUTE.index("full")
_DUALPIPE = SCHEDULES.index("dualpipe")


def _codes(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each row's value) of a column of small non-negative integers, in
    O(n) (sorted, np.unique, when the values are large: a micro-batch of 2^30 sequences)."""
    if int(col.max()) > 4 * len(col) + 4096:
        values, idx = np.unique(col, return_inverse=True)
        return values, idx.reshape(col.shape)
    present = np.zeros(int(col.max()) + 1, dtype=bool)
    present[col] = True
    values = np.flatnonzero(present)
    return values, (np.cumsum(present) - 1)[col]


def _combine(keys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct combined codes of integer key columns (each given as `_codes(column)`), and for
    every row the index of its combined code."""
    code = np.zeros(len(keys[0][1]), dtype=np.int64)
    for values, idx in keys:
        code = code * len(values) + idx
    return _codes(code)


def _decode(uniq: np.ndarray, keys: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, ...]]:
    """The key tuples of combined codes."""
    out = []
    for c in uniq.tolist():
        key = []
        for values, _ in reversed(keys):
            c, r = divmod(c, len(values))
            key.append(int(values[r]))
        out.append(tuple(reversed(key)))
    return out


def _group(keys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The distinct rows of integer key columns (each given as `_codes(column)`) and, for every row,
    the index of its distinct key."""
    uniq, inv = _combine(keys)
    return _decode(uniq, keys), inv


def _lookup(
    tabs: Tables, name: str, keys: list[tuple[np.ndarray, np.ndarray]], fn
) -> tuple[np.ndarray, np.ndarray]:
    """fn(*key) once per distinct key of the key columns: (values [len(fn(...)), keys], one column
    per distinct key, and each row's column index). The table is memoised with the job's tables."""
    uniq, inv = _combine(keys)
    memo_key = ("lookup", name, uniq.tobytes(), tuple(v.tobytes() for v, _ in keys))
    vals = tabs.memo(
        memo_key,
        lambda: np.ascontiguousarray(
            np.array(
                [np.atleast_1d(np.asarray(fn(*k), dtype=float)) for k in _decode(uniq, keys)]
            ).T
        ),
    )
    return vals, inv


def _first_max(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a [positions, layouts] array: the flat index (into a.ravel()) of each layout's first
    maximum, and the maximum. (np.argmax along axis 0 and a[k, i] indexing are several times
    slower.)"""
    mx = a.max(axis=0)
    k = np.full(a.shape[1], a.shape[0] - 1)
    for c in range(a.shape[0] - 2, -1, -1):
        k = np.where(a[c] == mx, c, k)
    return k * a.shape[1] + np.arange(a.shape[1]), mx


def pipeline_bubble(
    dual: np.ndarray, pp: np.ndarray, tau: np.ndarray, b: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """Seconds of pipeline bubble per step, elementwise over layouts: the table of
    dsim.cost.comm.pipeline_bubble_time (deepseek-ai/DualPipe), 1F1B (pp-1)(F+B) and DualPipe
    (pp/2-1)(F&B + B - 3W) clipped at 0, with the slowest stage's whole time per micro-batch `tau`
    (compute and exposed communication) for 1F1B's F+B and DualPipe's F&B. dual: 1 for DualPipe,
    0 for 1F1B; b, w: that stage's backward and weight-gradient seconds."""
    return dual * np.maximum(0.0, (pp // 2 - 1) * (tau + b - 3 * w)) + (1 - dual) * (pp - 1) * tau


def _dp_exposed(
    zero: np.ndarray, m: np.ndarray, red: np.ndarray, gat: np.ndarray, f: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Data-parallel seconds left exposed per step: the gradient reduction (`red`) hides behind a
    micro-batch's backward `b`, the parameter gathering (`gat`) behind its forward `f`. ZeRO 0-1
    reduce and gather once per step; ZeRO 2 reduces after every one of the m micro-batches; ZeRO 3
    reduces and gathers every micro-batch, behind its whole compute."""
    z01, z2, z3 = (zero <= 1).astype(float), (zero == 2).astype(float), (zero == 3).astype(float)
    grads_late = np.maximum(0.0, red - b)
    params_late = np.maximum(0.0, gat - f)
    all_late = np.maximum(0.0, red + gat - (f + b))
    return (z01 + z2 * m) * grads_late + (1 - z3) * params_late + z3 * m * all_late


def evaluate(
    job: TrainingJob, L: Layouts, chunk: int = 2048, progress: Any = None
) -> dict[str, np.ndarray]:
    """Step time (with its breakdown), memory per GPU (by kind, busiest GPU), whether it fits and
    why not, for every layout of `L`, as arrays (see OUTPUTS; `fits` bool, `reason` an index into
    REASONS or -1).

    Every quantity that depends on a few fields is computed per distinct key (`_lookup`) and
    gathered per layout; the pipeline positions of each (pp, schedule) are padded to one width, so
    the arithmetic is one pass over [positions, layouts] arrays, in chunks that stay in cache.
    `progress`: a tqdm bar or None."""
    tabs = tables(job)
    f = {name: _codes(getattr(L, name)) for name in FIELDS}  # (distinct values, row index)
    width = max(
        len(tabs.stage_columns(pp, SCHEDULES[s])["compute"])
        for pp, s in _group([f["pp"], f["schedule"]])[0]
    )
    prof_keys = ("dense", "moe", "embed", "head", "eh_proj")
    tp_mb_dt, tp_mb_ep_dt = (
        [f["tp"], f["micro_batch"], f["dtype"]],
        [f["tp"], f["micro_batch"], f["ep"], f["dtype"]],
    )
    x_tables = dict(
        prof=_lookup(
            tabs,
            "prof",
            tp_mb_dt,
            lambda tp, mb, dt: np.concatenate(
                [tabs.profile(tp, mb, MATMUL_DTYPES[dt])[k] for k in prof_keys]
            ),
        ),
        expt=_lookup(
            tabs,
            "expt",
            tp_mb_ep_dt,
            lambda tp, mb, ep, dt: np.append(
                tabs.experts(tp, mb, ep, MATMUL_DTYPES[dt]),
                tabs.ep_a2a(tp, mb, ep, MATMUL_DTYPES[dt]),
            ),
        ),
        comm1=_lookup(
            tabs,
            "comm1",
            [f["tp"], f["micro_batch"], f["dp"]],
            lambda tp, mb, dp: [
                tabs.tp_allreduce(tp, mb),
                tabs.p2p(tp, mb, tp * dp >= job.gpus_per_node),
            ],
        ),
        acts=_lookup(
            tabs,
            "acts",
            [f["micro_batch"], f["recompute"]],
            lambda mb, rc: tabs.activations(mb, RECOMPUTE[rc]),
        ),
        cols=_lookup(
            tabs,
            f"cols{width}",
            [f["pp"], f["schedule"]],
            lambda pp, s: tabs.padded_columns(pp, SCHEDULES[s], width),
        ),
        params=_lookup(
            tabs,
            f"params{width}",
            [f["pp"], f["schedule"], f["tp"]],
            lambda pp, s, tp: tabs.column_params(pp, SCHEDULES[s], tp, width),
        ),
        dp=_lookup(
            tabs,
            f"dp{width}",
            [f["pp"], f["schedule"], f["tp"], f["dp"], f["ep"], f["zero"]],
            lambda pp, s, tp, dp, ep, z: tabs.column_dp(pp, SCHEDULES[s], tp, dp, ep, z, width),
        ),
        block=_lookup(tabs, "block", [f["tp"], f["ep"]], tabs.largest_block),
    )
    out = {k: np.zeros(len(L)) for k in OUTPUTS}
    for start in range(0, len(L), chunk):
        r = slice(start, min(len(L), start + chunk))
        x = {name: np.take(vals, inv[r], axis=1) for name, (vals, inv) in x_tables.items()}
        _evaluate_rows(job, tabs, L, r, x, width, out)
        if progress is not None:
            progress.update(r.stop - r.start)
    hbm = job.hbm_bytes
    states = out["weights"] + out["buffers"] + out["gradients"] + out["optimizer"]
    out["fits"] = out["memory_per_gpu_bytes"] <= hbm
    out["reason"] = np.where(
        out["fits"],
        -1,
        np.where(out["weights"] + out["buffers"] > hbm, 0, np.where(states > hbm, 1, 2)),
    )
    return out


def evaluate_layout(job: TrainingJob, layout: dict[str, Any]) -> dict[str, Any]:
    """`evaluate` of one layout (a dict with the keys of `Layouts.row`), as plain numbers: the same
    code run on a one-row Layouts."""
    res = evaluate(job, Layouts.one(layout))
    out: dict[str, Any] = {k: float(res[k][0]) for k in OUTPUTS}
    out["fits"], out["reason"] = bool(res["fits"][0]), int(res["reason"][0])
    return out


def _evaluate_rows(
    job: TrainingJob,
    tabs: Tables,
    L: Layouts,
    r: slice,
    x: dict[str, np.ndarray],
    width: int,
    out: dict[str, np.ndarray],
) -> None:
    """The arithmetic for layouts `r`: [positions, layouts] arrays (per-position stage counts times
    per-layout vectors), then the slowest position for time and the fullest for memory.

    Positions come first so that every per-layout vector broadcasts along the long, contiguous axis;
    choices (schedule, recomputation, ZeRO stage) are 0/1 weights rather than np.where, which is
    several times slower than arithmetic on these arrays."""
    n = r.stop - r.start
    n_mtp = float(job.args.n_mtp_layers)
    tp, dp, ep, zero, m = (v[r].astype(float) for v in (L.tp, L.dp, L.ep, L.zero, L.n_microbatches))
    pp = L.pp[r]
    rc, dual = L.recompute[r], (L.schedule[r] == _DUALPIPE).astype(float)
    sel_rc, full = (rc == _SELECTIVE).astype(float), (rc == _FULL).astype(float)
    nd, nm, last, s_nd, s_nm, s_first, s_last, blocks, moe_blocks = x["cols"].reshape(9, width, n)

    # ---- compute per micro-batch: forward F, backward B (with recomputation), weight gradients W
    # (s_* are the stage counts times the share a GPU runs per micro-batch: 1, or 1/2 for a DualPipe
    # pair)
    d, mo, emb, hd, eh = x["prof"].reshape(5, 4, n)  # each [f, fb, w, sel] x layouts
    moe = mo + x["expt"][:4]  # an MoE block with its routed experts
    rec_d = sel_rc * d[3] + full * d[0]
    rec_m = sel_rc * mo[3] + full * moe[0]
    blk, rec_b = (moe, rec_m) if tabs.mtp_is_moe else (d, rec_d)  # the block inside an MTP module
    last_f = hd[0] + n_mtp * (blk[0] + eh[0] + hd[0])
    last_b = hd[1] - hd[0] + n_mtp * (blk[1] - blk[0] + rec_b + eh[1] - eh[0] + hd[1] - hd[0])
    last_w = hd[2] + n_mtp * (blk[2] + eh[2] + hd[2])
    # ANCHOR: stage_time
    F = s_nd * d[0] + s_nm * moe[0] + s_first * emb[0] + s_last * last_f
    B = (
        s_nd * (d[1] - d[0] + rec_d)
        + s_nm * (moe[1] - moe[0] + rec_m)
        + s_first * (emb[1] - emb[0])
        + s_last * last_b
    )
    FB = F + B

    # ---- communication per micro-batch, and what of it stays exposed ----
    tp_comm = blocks * (x["comm1"][0] * (4 + 2 * full))
    ep_comm = moe_blocks * (x["expt"][4] * (2 + full))
    pp_comm = (pp > 1) * 2 * x["comm1"][1]
    tau = FB + tp_comm + dual * np.maximum(0.0, ep_comm - FB) + (1 - dual) * (ep_comm + pp_comm)
    k, tau_k = _first_max(tau)  # the slowest position
    F_k, B_k = F.ravel()[k], B.ravel()[k]
    W_k = (
        s_nd.ravel()[k] * d[2]
        + s_nm.ravel()[k] * moe[2]
        + s_first.ravel()[k] * emb[2]
        + s_last.ravel()[k] * last_w
    )
    bubble = pipeline_bubble(dual, pp, tau_k, B_k, W_k)
    # ANCHOR_END: stage_time

    # ---- parameters each GPU keeps of each state (ZeRO), data-parallel collectives, optimizer ----
    params_ = x["params"].reshape(2, width, n)
    dense_p, exp_p = params_[0], params_[1] / ep  # dense and routed-expert parameters held
    held = zero_params(zero, dense_p, exp_p, dp, ep)
    opt_t = tabs.optimizer_time(held["optimizer"])
    red, gat = x["dp"].reshape(2, width, n)
    dp_exposed = _dp_exposed(zero, m, red, gat, F, B)
    j, tail = _first_max(dp_exposed + opt_t)
    out["step_time_s"][r] = m * tau_k + bubble + tail
    out["compute_s"][r] = m * (F_k + B_k) + opt_t.ravel()[j]
    out["bubble_s"][r] = bubble
    ep_k = ep_comm.ravel()[k]  # exposed communication by kind
    out["exposed_tp_s"][r] = m * tp_comm.ravel()[k]
    out["exposed_ep_s"][r] = m * (dual * np.maximum(0.0, ep_k - F_k - B_k) + (1 - dual) * ep_k)
    out["exposed_pp_s"][r] = m * (1 - dual) * pp_comm
    out["exposed_dp_s"][r] = dp_exposed.ravel()[j]
    # the sum of the kinds (= m (tau - F - B) + dp, without the cancellation that left -3.6e-15 s)
    out["exposed_comm_s"][r] = sum(out[v][r] for v in EXPOSED_KINDS.values())

    # ---- memory per GPU by kind, on the fullest position ----
    sb = tabs.state_bytes
    kinds = {kind: sb[kind] * p for kind, p in held.items()}
    a = x["acts"]
    kinds["activations"] = (nd * a[0] + nm * a[1] + last * a[2]) / tp  # nd etc. x micro-batches
    s, total = _first_max(
        kinds["weights"] + kinds["gradients"] + kinds["optimizer"] + kinds["activations"]
    )
    for kind, v in kinds.items():
        out[kind][r] = v.ravel()[s]
    buffers = job.reserved_bytes + (zero == 3) * 2 * sb["weights"] * x["block"][0]
    out["buffers"][r] = buffers
    out["memory_per_gpu_bytes"][r] = total + buffers
