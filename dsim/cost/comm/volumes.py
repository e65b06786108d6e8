"""
Communication volume of each parallelism strategy per training step: the collectives that
tensor (Megatron), pipeline, and data parallelism (ZeRO stages 0-3) issue, with their
bytes on the wire and their time (dsim.cost.comm.collectives.collective_time).
"""

from dataclasses import dataclass

from dsim.cost.checks import check_int, check_real
from dsim.cost.comm.collectives import bus_bandwidth_factor, check_kind, collective_time
from dsim.cost.hardware import GPU


@dataclass(frozen=True)
class CommVolume:
    """A collective that recurs `calls` times per step, each on an nbytes per-rank buffer."""

    kind: str
    nbytes: float
    n_ranks: int
    calls: int

    def __post_init__(self):
        check_kind(self.kind)
        check_real("nbytes", self.nbytes)
        check_int("n_ranks", self.n_ranks)
        check_int("calls", self.calls, lo=0)

    @property
    def total_bytes(self) -> float:
        """Sum of the buffers handed to the collective, bytes."""
        return self.calls * self.nbytes

    @property
    def wire_bytes(self) -> float:
        """Bytes each rank sends per step (bus-bandwidth convention)."""
        return self.total_bytes * bus_bandwidth_factor(self.kind, self.n_ranks)

    def time(
        self, gpu: "str | GPU" = "H100-SXM", ranks_per_node: int = 8, algorithm: str | None = None
    ) -> float:
        """Seconds per step spent in these calls, none of it overlapped."""
        if self.calls == 0:
            return 0.0
        return self.calls * collective_time(
            self.kind, self.nbytes, self.n_ranks, gpu, ranks_per_node, algorithm
        )


def tp_volume(
    batch: int, seq_len: int, dim: int, n_layers: int, tp: int, bytes_per_elem: float = 2.0
) -> CommVolume:
    """Megatron tensor parallelism (Shoeybi et al. 2019, fig. 4): per transformer layer,
    2 all-reduces of the batch x seq_len x dim activations in the forward (after attention and
    after the MLP) and 2 in the backward. batch = sequences this rank processes per step.
    (Sequence parallelism swaps each all-reduce for RS + AG: same bytes.)"""
    b, s, h = check_int("batch", batch), check_int("seq_len", seq_len), check_int("dim", dim)
    layers = check_int("n_layers", n_layers, lo=0)
    return CommVolume(
        "all_reduce",
        b * s * h * check_real("bytes_per_elem", bytes_per_elem, strict=True),
        check_int("tp", tp),
        calls=4 * layers,
    )


def pp_volume(
    micro_batch: int, seq_len: int, dim: int, n_microbatches: int, bytes_per_elem: float = 2.0
) -> CommVolume:
    """Pipeline parallelism, per stage boundary: each micro-batch sends its activations
    forward and their gradients backward (micro_batch x seq_len x dim each). For stages on
    different nodes, call .time(ranks_per_node=1)."""
    b, s, h = (
        check_int("micro_batch", micro_batch),
        check_int("seq_len", seq_len),
        check_int("dim", dim),
    )
    m = check_int("n_microbatches", n_microbatches)
    return CommVolume(
        "send_recv",
        b * s * h * check_real("bytes_per_elem", bytes_per_elem, strict=True),
        n_ranks=2,
        calls=2 * m,
    )


def dp_volumes(
    n_params: int, dp: int, zero_stage: int = 0, bytes_per_param: float = 2.0
) -> tuple[CommVolume, ...]:
    """Data parallelism, per step, after the ZeRO paper (Rajbhandari et al. 2020, sec. 7):
    stage 0: all-reduce the gradients (2*Psi on the wire);
    stages 1-2: reduce-scatter the gradients + all-gather the updated parameters (2*Psi);
    stage 3: all-gather parameters in forward and again in backward, reduce-scatter
    gradients (3*Psi). n_params: parameters this DP group replicates (Psi)."""
    psi = check_int("n_params", n_params, lo=0) * check_real(
        "bytes_per_param", bytes_per_param, strict=True
    )
    n = check_int("dp", dp)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if zero_stage == 0:
        return (CommVolume("all_reduce", psi, n, 1),)
    if zero_stage in (1, 2):
        return (CommVolume("reduce_scatter", psi, n, 1), CommVolume("all_gather", psi, n, 1))
    return (CommVolume("all_gather", psi, n, 2), CommVolume("reduce_scatter", psi, n, 1))


def zero_comm_bytes(
    n_params: int, dp: int, zero_stage: int = 0, bytes_per_param: float = 2.0
) -> float:
    """Bytes each DP rank sends per step: 2*Psi*(n-1)/n for stages 0-2,
    3*Psi*(n-1)/n for stage 3."""
    return sum(v.wire_bytes for v in dp_volumes(n_params, dp, zero_stage, bytes_per_param))
