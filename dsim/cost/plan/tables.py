"""Per-model training quantities, each computed once per distinct key from the cost modules.

The evaluator (`dsim.cost.plan.evaluate`) gathers these per layout: compute profiles per (tp,
micro-batch, precision), routed experts and all-to-all per (tp, micro-batch, ep, precision),
activations per (micro-batch, recomputation), parameters per (pp, schedule, tp), data-parallel
collectives per (pp, schedule, tp, dp, ep, ZeRO). Pipeline stages holding the same kinds of layers
are one position (column) of the evaluation: at most 5 for DeepSeek-V3.

    parameters      dsim.cost.params, divided over GPUs by dsim.cost.layout (stage_params)
    activations     dsim.cost.memory.layer_activation_bytes / model_activation_bytes
    compute         the ops of dsim.cost.timing.block_plan / step_plan, timed by `OpTimes`
    communication   dsim.cost.comm: collective_time, moe_dispatch_time, dp_volumes
"""

from __future__ import annotations

import json

import numpy as np

from dsim.cost import comm
from dsim.cost.components import Component
from dsim.cost.flops import flops, six_nd
from dsim.cost.graph import first_moe_layer, is_moe_layer, mtp_layer_id, step_graph
from dsim.cost.hardware import peak_flops
from dsim.cost.layout import stage_layers, stage_params
from dsim.cost.memory import bytes_per_param, layer_activation_bytes, model_activation_bytes
from dsim.cost.params import params
from dsim.cost.plan.job import (
    ACT_DTYPE,
    GRAD_COMM_BYTES,
    GRAD_DTYPE,
    MASTER_DTYPE,
    RECOMPUTED_MATMULS,
    WEIGHT_DTYPE,
    TrainingJob,
    shard_args,
)
from dsim.cost.plan.times import OpTimes
from dsim.cost.timing import PlanOp, block_plan, op_time, step_plan


def model_graph_ops(args, seq_len: int):
    """The ops of one sequence's training step (the op graph, math attention backward)."""
    return step_graph(args, 1, seq_len, "train", attn_kernel="math").ops


class Tables(OpTimes):
    """Per-model training quantities, computed once per distinct key from the cost modules."""

    def __init__(self, job: TrainingJob):
        super().__init__(job.args, job.gpu, job.calibration)
        a = self.args
        self.job = job
        self.counts = params(a).modules
        self.moe_layer = first_moe_layer(a)  # None for a dense model
        self.layer_is_moe = [a.is_moe and is_moe_layer(a, i) for i in range(a.n_layers)]
        self.mtp_is_moe = is_moe_layer(a, mtp_layer_id(a))
        # MFU conventions (dsim.cost.plan.search): FLOPs of one sequence's training step
        S = job.seq_len
        model = flops(a, 1, S, "train", attn_kernel="math")  # backward = 2 x forward everywhere
        self.flops_per_seq = float(model.total_causal)  # the MFU numerator: model FLOPs
        self.flops_conventions = dict(
            model=self.flops_per_seq,
            hardware=float(flops(a, 1, S, "train", attn_kernel="fused").total_causal),
            noncausal=float(model.total),
            six_nd=float(six_nd(a, S)),
        )
        # forward FLOPs that recomputation runs again, per sequence: selective = MLA's
        # up-projections (the RMSNorms have no matmul), full = every block's forward
        fwd = [(op, op.flops.forward_causal) for op in model_graph_ops(a, S) if op.flops]
        self.recompute_flops_per_seq = dict(
            none=0.0,
            selective=float(sum(f for op, f in fwd if op.block and op.name in RECOMPUTED_MATMULS)),
            full=float(sum(f for op, f in fwd if op.block)),
        )
        self.peak = peak_flops(self.gpu, "bf16")
        # Adam: read the fp32 gradient, read + write master weights and both moments, write the bf16
        # weight.
        ob = bytes_per_param(job.optimizer_dtype)
        self.adam_bytes_per_param = (
            bytes_per_param(GRAD_DTYPE)
            + 2 * bytes_per_param(MASTER_DTYPE)
            + 4 * ob
            + bytes_per_param(WEIGHT_DTYPE)
        )
        self.state_bytes = dict(
            weights=bytes_per_param(WEIGHT_DTYPE),
            gradients=bytes_per_param(GRAD_DTYPE),
            optimizer=bytes_per_param(MASTER_DTYPE) + 2 * ob,
        )
        # the optimizer is one streaming elementwise pass: its time is affine in the bytes it moves
        t0 = op_time("elementwise", self.gpu, "bf16", False, self.cal, bytes=0)
        t1 = op_time("elementwise", self.gpu, "bf16", False, self.cal, bytes=10**10)
        self.opt_a, self.opt_b = t0, (t1 - t0) / 1e10

    # ---- parameters ----
    def largest_block(self, tp: int, ep: int) -> float:
        """Parameters of the largest block on one GPU (what ZeRO-3 gathers ahead of use)."""
        a, blocks = self.args, []
        if a.n_dense_layers:
            blocks.append(stage_params(self.counts, [0], False, False, tp, ep))
        if a.is_moe:
            blocks.append(stage_params(self.counts, [self.moe_layer], False, False, tp, ep))
        return max(d + e for d, e in blocks)

    # ---- activations ----
    def activations(self, mb: int, rc: str) -> tuple[float, float, float]:
        """Bytes one micro-batch keeps (one GPU, before / tp): a dense block, an MoE block, and the
        final norm, logits and MTP modules."""

        def build() -> tuple[float, float, float]:
            a, S = self.args, self.job.seq_len
            r = self.job.recipe
            dense = (
                layer_activation_bytes(a, 0, mb, S, ACT_DTYPE, "cuda", rc, recipe=r)
                if a.n_dense_layers
                else 0
            )
            moe = (
                layer_activation_bytes(a, self.moe_layer, mb, S, ACT_DTYPE, "cuda", rc, recipe=r)
                if a.is_moe
                else 0
            )
            head = model_activation_bytes(
                a, mb, S, ACT_DTYPE, "cuda", rc, layers=range(0), head=True, recipe=r
            )
            return float(dense), float(moe), float(head)

        return self.memo(("act", mb, rc), build)

    # ---- compute ----
    def profile(self, tp: int, mb: int, dt: str) -> dict[str, np.ndarray]:
        """Per micro-batch of mb sequences on one TP rank: a dense block, an MoE block without its
        routed experts, the embedding, the head (final norm, logits, loss) and MTP's eh_proj (the
        ops of dsim.cost.timing.block_plan / step_plan for the rank's slice of the model)."""

        def build() -> dict[str, np.ndarray]:
            a, S = shard_args(self.args, tp), self.job.seq_len
            out = {"dense": np.zeros(4), "moe": np.zeros(4)}
            if a.n_dense_layers:
                ops = block_plan(a, 0, mb, S, 0, "train")
                out["dense"] = self.sum_ops(ops, dt)
                if self.job.recipe.dense_swiglu:  # the backward runs silu(w1 x) * w3 x again
                    again = [p for p in ops if p.label.endswith("silu(h1) * h3")]
                    out["dense"][1] += self.sum_ops(again, dt)[0]
            if a.is_moe:
                out["moe"] = self.sum_ops(
                    [
                        p
                        for p in block_plan(a, self.moe_layer, mb, S, 0, "train")
                        if p.op != "moe_ffn"
                    ],
                    dt,
                )
            one = a.first_layers(1, n_mtp_layers=0)
            extras = [
                p for p in step_plan(one, mb, S, "train") if not p.label.startswith("layers.")
            ]
            out["embed"] = self.sum_ops(
                [p for p in extras if p.component == Component.EMBEDDING], dt
            )
            out["head"] = self.sum_ops(
                [p for p in extras if p.component != Component.EMBEDDING], dt
            )
            eh = PlanOp(
                Component.MTP,
                "eh_proj",
                "gemm",
                dict(m=mb * S, n=a.dim, k=2 * a.dim, batch=1),
                True,
            )
            out["eh_proj"] = self.sum_ops([eh], dt)
            return out

        return self.memo(("profile", tp, mb, dt), build)

    def experts(self, tp: int, mb: int, ep: int, dt: str) -> np.ndarray:
        """The routed experts of one MoE block on one GPU: mb sequences, n_routed_experts / ep
        experts of width moe_inter_dim / tp."""
        a = self.args
        if not a.is_moe:
            return np.zeros(4)
        tokens, inter = mb * self.job.seq_len, a.moe_inter_dim // tp
        t = self.expert_time(tokens, a.n_routed_experts // ep, inter, dt, True)
        if self.job.recipe.swiglu_recompute:  # the backward runs silu(w1 x) * w3 x again
            rows = tokens * (a.n_activated_experts + a.n_shared_experts)
            shape = dict(bytes=10 * rows * inter, kernels=2)  # as the graph's SwiGLU op
            op = PlanOp(Component.ROUTED_EXPERTS, "swiglu recompute", "elementwise", shape)
            t = t + np.array([0.0, self._op(op, "bf16", False), 0.0, 0.0])
        return t

    # ---- communication ----
    def tp_allreduce(self, tp: int, mb: int) -> float:
        """One tensor-parallel all-reduce of a block's activations (bf16; with sequence parallelism
        a reduce-scatter + all-gather of the same bytes)."""
        return self.coll(
            "all_reduce", mb * self.job.seq_len * self.args.dim * 2.0, tp, self.job.gpus_per_node
        )

    def ep_a2a(self, tp: int, mb: int, ep: int, dt: str) -> float:
        """Dispatch + combine of one MoE block for a micro-batch (each TP rank sends its 1/tp of the
        tokens)."""
        return self.a2a(
            -(-mb * self.job.seq_len // tp), ep, max(1, self.job.gpus_per_node // tp), dt
        )

    def p2p(self, tp: int, mb: int, cross_node: bool) -> float:
        """One pipeline send of a micro-batch's activations (bf16, sequence-parallel: / tp)."""
        nbytes = mb * self.job.seq_len * self.args.dim * 2.0 / tp
        return self.coll("send_recv", nbytes, 2, 1 if cross_node else self.job.gpus_per_node)

    def dp_times(self, n_params: float, dp: int, zero: int, rpn: int) -> tuple[float, float]:
        """(reduce seconds, gather seconds) per step for `n_params` parameters over dp ranks
        (dsim.cost.comm.dp_volumes: ZeRO 0 all-reduce; 1-2 reduce-scatter + all-gather; 3 two
        all-gathers + reduce-scatter)."""
        n = int(round(n_params))
        if dp <= 1 or n == 0:
            return 0.0, 0.0

        def build() -> tuple[float, float]:
            red = gat = 0.0
            for v in comm.dp_volumes(n, dp, zero, GRAD_COMM_BYTES):
                t = v.calls * self.coll(v.kind, v.nbytes, v.n_ranks, rpn)
                if v.kind == "all_gather":
                    gat += t
                else:
                    red += t
            return red, gat

        return self.memo(("dp", n, dp, zero, rpn), build)

    def optimizer_time(self, shard_params: np.ndarray | float) -> np.ndarray | float:
        """Adam over `shard_params` parameters: a + b x bytes (one streaming pass)."""
        return self.opt_a + self.opt_b * self.adam_bytes_per_param * shard_params

    # ---- per pipeline position, padded to a common width (padding: zero counts) ----
    def padded_columns(self, pp: int, schedule: str, width: int) -> np.ndarray:
        """Rows of `width` positions (padding: zeros) for the evaluation: for memory the counts
        times the micro-batches kept (mem_dense, mem_moe, mem_last); for compute the counts times
        the share a GPU runs per micro-batch (n_dense, n_moe, first, last), and the blocks and MoE
        blocks (MTP's included) it runs."""

        def build() -> np.ndarray:
            c = self.stage_columns(pp, schedule)
            share, n_mtp = c["compute"], self.args.n_mtp_layers
            rows = (
                c["mem_dense"],
                c["mem_moe"],
                c["mem_last"],
                share * c["n_dense"],
                share * c["n_moe"],
                share * c["first"],
                share * c["last"],
                share * (c["n_dense"] + c["n_moe"] + n_mtp * c["last"]),
                share * (c["n_moe"] + (n_mtp if self.mtp_is_moe else 0) * c["last"]),
            )
            out = np.zeros((len(rows), width))
            for k, row in enumerate(rows):
                out[k, : len(row)] = row
            return out.ravel()

        return self.memo(("padded", pp, schedule, width), build)

    def column_params(self, pp: int, schedule: str, tp: int, width: int) -> np.ndarray:
        """[non-expert parameters per position (width), routed-expert parameters per position before
        / ep]: dsim.cost.layout.stage_params of the layers the position's GPU holds."""

        def build() -> np.ndarray:
            stages = stage_layers(self.args.n_layers, pp)
            out = np.zeros((2, width))
            for col, held in enumerate(self.stage_columns(pp, schedule)["held"]):
                layers = [i for s in held for i in stages[s]]
                out[:, col] = stage_params(
                    self.counts, layers, 0 in held, pp - 1 in held, tp, 1, self.args.tie_embeddings
                )
            return out.ravel()

        return self.memo(("colparams", pp, schedule, tp, width), build)

    def column_dp(
        self, pp: int, schedule: str, tp: int, dp: int, ep: int, zero: int, width: int
    ) -> np.ndarray:
        """[reduce seconds per position, gather seconds per position]: non-expert parameters over dp
        ranks, routed experts over dp / ep ranks (dsim.cost.comm.dp_volumes and collective_time)."""

        def build() -> np.ndarray:
            g = self.job.gpus_per_node
            p = self.column_params(pp, schedule, tp, width).reshape(2, width)
            out = np.zeros((2, width))
            for col in range(width):
                r1, g1 = self.dp_times(p[0, col], dp, zero, max(1, g // tp))
                r2, g2 = self.dp_times(p[1, col] / ep, dp // ep, zero, max(1, g // (tp * ep)))
                out[:, col] = r1 + r2, g1 + g2
            return out.ravel()

        return self.memo(("coldp", pp, schedule, tp, dp, ep, zero, width), build)

    # ---- pipeline stages ----
    def stage_columns(self, pp: int, schedule: str) -> dict[str, np.ndarray]:
        """The distinct pipeline positions of a pp-stage pipeline, as columns of the evaluation.

        1F1B: one column per distinct stage (numbers of dense and MoE layers, first, last); of
            stages alike, the earliest keeps the most micro-batches (pp - s), so it stands for all.
        DualPipe: one column per distinct pair (s, pp-1-s) held by one GPU; counts are the pair's
            sums. Its activations (deepseek-ai/DualPipe, dualpipe.py: steps 1-4 run pp - s - 1
            forwards of the shallow stage s and s + 1 of the deep stage pp-1-s before the first
            backward of the former, and each later backward frees one) peak at pp - s micro-batches
            of stage s and s + 1 of stage pp-1-s: pp + 1 in all, as the DualPipe table says. Of
            pairs alike, the first and the last stand for all (the memory is linear in s).
        Returns the counts n_dense, n_moe, first, last; `compute`, the share of the counts a GPU
        runs per micro-batch (1, or 1/2 for a DualPipe pair); `mem_dense`, `mem_moe`, `mem_last`,
        the micro-batches of activations kept times the counts ((pp - s) x the stage's counts for
        1F1B); and `held`, the stages of the GPU a column stands for ((s,) or (s, pp-1-s))."""

        def build() -> dict[str, np.ndarray]:
            stages = stage_layers(self.args.n_layers, pp)
            sig = []
            for s, layers in enumerate(stages):
                nm = sum(self.layer_is_moe[i] for i in layers)
                sig.append((len(layers) - nm, nm, int(s == 0), int(s == pp - 1)))
            cols: list[tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]] = []
            if schedule == "1f1b":
                seen: set = set()
                for s, g in enumerate(sig):
                    if g not in seen:
                        seen.add(g)
                        inflight = max(1, pp - s)
                        cols.append((g, tuple(inflight * x for x in g[:2] + g[3:]), (s,)))
                share = 1.0
            else:
                pairs: dict[tuple, list[int]] = {}
                for s in range(pp // 2):
                    pairs.setdefault((sig[s], sig[pp - 1 - s]), []).append(s)
                for (lo, hi), ss in pairs.items():
                    for s in sorted({ss[0], ss[-1]}):
                        g = tuple(x + y for x, y in zip(lo, hi))
                        mem = tuple((pp - s) * x + (s + 1) * y for x, y in zip(lo, hi))
                        cols.append((g, mem[:2] + mem[3:], (s, pp - 1 - s)))
                share = 0.5
            arr = np.array([c[0] for c in cols], dtype=float).reshape(-1, 4)
            mem = np.array([c[1] for c in cols], dtype=float).reshape(-1, 3)
            return dict(
                n_dense=arr[:, 0],
                n_moe=arr[:, 1],
                first=arr[:, 2],
                last=arr[:, 3],
                mem_dense=mem[:, 0],
                mem_moe=mem[:, 1],
                mem_last=mem[:, 2],
                compute=np.full(len(cols), share),
                held=[c[2] for c in cols],
            )

        return self.memo(("stages", pp, schedule), build)


_TABLE_CACHE: dict[str, Tables] = {}


def tables(job: TrainingJob) -> Tables:
    """The job's tables, shared between jobs that differ only in cluster size, budget or batch."""
    key = json.dumps(
        [
            job.args.to_dict(),
            job.gpu.name,
            job.seq_len,
            job.gpus_per_node,
            job.optimizer_dtype,
            None if job.calibration is None else job.calibration.to_dict(),
            job.recipe,
        ],
        sort_keys=True,
        default=str,
    )
    if key not in _TABLE_CACHE:
        if len(_TABLE_CACHE) > 16:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = Tables(job)
    return _TABLE_CACHE[key]
