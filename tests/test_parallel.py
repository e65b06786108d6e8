"""Real multi-process runs on the CPU (gloo, loopback): expert parallelism and data parallelism with
a ZeRO-1 optimizer against one process. (The launcher's own tests are in tests/test_launch.py.)

Processes are forked from a forkserver that imports torch once, so a run
costs ~0.3 s after the first.
"""

import pytest
import torch

from dsim.config import preset
from dsim.launch import run_distributed
from dsim.parallel import (
    EPMoE,
    all_to_all,
    dp_reference,
    dp_zero_worker,
    ep_check_worker,
    ep_reference,
)

pytestmark = pytest.mark.timeout(120)
INF = float("-inf")
ARGS = preset("tiny")  # 8 routed experts, top-2, one shared expert, dim 64


def check_ep(world: int, tokens_per_rank: list[int], gate_bias: list[float]) -> list[dict]:
    """Run EPMoE on `world` ranks and hold it to the single-process MoE on the same batch."""
    res = run_distributed(
        ep_check_worker, world, args=(ARGS, tokens_per_rank, 0, gate_bias), timeout_s=60
    )
    ref = ep_reference(ARGS, tokens_per_rank, 0, gate_bias)
    # outputs, input gradients, and the gradients of the sharded experts: bit for bit
    assert torch.equal(torch.cat([r["y"] for r in res]), ref["y"])
    assert torch.equal(torch.cat([r["dx"] for r in res]), ref["dx"])
    for w in ("w1", "w2", "w3"):
        assert torch.equal(
            torch.cat([r["expert_grads"][w] for r in res]), ref["grads"][f"experts.{w}"]
        ), w
    # replicated gate and shared experts: each rank's own share is exact (= one
    # process on its rows) ...
    lo = 0
    for rank, n in enumerate(tokens_per_rank):
        if n:
            shard = ep_reference(ARGS, tokens_per_rank, 0, gate_bias, rows=slice(lo, lo + n))
            for k, g in res[rank]["replicated_grads_local"].items():
                assert torch.equal(g, shard["grads"][k]), (rank, k)
        lo += n
    # ... and their all-reduced sum equals the full-batch gradient up to fp32 rounding: a sum of
    # per-rank partial sums is added in another order than one GEMM over all tokens.
    for r in res:
        for k, g in r["replicated_grads_reduced"].items():
            torch.testing.assert_close(g, ref["grads"][k], rtol=1e-5, atol=1e-6)
    # the split counts are what the single-process gate decided
    recv = torch.stack([r["recv_counts"].sum(0) for r in res]).flatten()  # rows per expert
    assert torch.equal(recv, ref["counts"])
    return res


def test_ep_4_ranks_2_experts_each_uneven_and_empty():
    # rank 1 has no token; experts 6 and 7 (all of rank 3's) get no token; expert 0 gets most.
    tokens = [9, 0, 14, 5]
    res = check_ep(4, tokens, [0.5, 0, 0, 0, 0, 0, INF, INF])
    assert int(res[3]["recv_counts"].sum()) == 0  # rank 3 received nothing ...
    assert int(res[1]["send_counts"].sum()) == 0  # ... rank 1 sent nothing
    received = [int(r["recv_counts"].sum()) for r in res]
    assert received[0] > 2 * received[1]  # uneven splits


def test_ep_2_ranks_4_experts_each_with_an_idle_expert():
    res = check_ep(2, [11, 4], [0, 0, INF, 0, 0.3, 0, 0, 0])
    assert int(res[0]["recv_counts"][:, 2].sum()) == 0  # expert 2 idle
    assert [int(r["send_counts"].sum()) for r in res] == [22, 8]  # T*K rows each


def _a2a_roundtrip(rank: int, world: int) -> dict:
    """Rank r sends r+j+1 rows to rank j: variable splits both ways, gradients come back."""
    send = [rank + j + 1 for j in range(world)]
    recv = [j + rank + 1 for j in range(world)]
    x = torch.arange(sum(send), dtype=torch.float32).add(100 * rank).unsqueeze(1).requires_grad_()
    y = all_to_all(x, recv, send)
    (y * (torch.arange(len(y)) + 1).unsqueeze(1)).sum().backward()
    return dict(y=y.detach().flatten().tolist(), grad=x.grad.flatten().tolist(), recv=recv)


def test_all_to_all_variable_splits_and_backward():
    res = run_distributed(_a2a_roundtrip, 3, timeout_s=60)
    for rank, r in enumerate(res):
        start = [
            sum(src + j + 1 for j in range(rank)) for src in range(3)
        ]  # offset of my block at src
        want = [100 * src + start[src] + i for src in range(3) for i in range(src + rank + 1)]
        assert r["y"] == want
    # the gradient of a row is the weight (1-based position) the receiver gave it
    for src in range(3):
        grads, pos = res[src]["grad"], 0
        for dst in range(3):
            offset = sum(s + dst + 1 for s in range(src))  # where src's rows sit at dst
            for i in range(src + dst + 1):
                assert grads[pos] == offset + i + 1
                pos += 1


def test_dp_with_zero1_equals_one_process_full_batch():
    steps, batch, seq, lr = 3, 4, 16, 1e-3
    res = run_distributed(dp_zero_worker, 2, args=(ARGS, steps, batch, seq, lr, 0), timeout_s=60)
    ref = dp_reference(ARGS, steps, batch, seq, lr, 0)
    # fp32 tolerance: DDP averages two half-batch gradients where one process sums them in one pass
    assert res[0]["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    for r in res:
        for k, p in r["params"].items():
            torch.testing.assert_close(p, ref["params"][k], rtol=1e-5, atol=1e-6, msg=k)
    # ZeRO-1: the Adam moments are split between the ranks, none holds them all
    local = [r["optimizer_state_numel"] for r in res]
    assert sum(local) == ref["optimizer_state_numel"] and max(local) < ref["optimizer_state_numel"]


def _ep_bad_args(rank: int, world: int) -> list[str]:
    msgs = []
    for args in (ARGS.replace(capacity_factor=1.0), ARGS):  # token dropping; 8 experts on 3 ranks
        try:
            EPMoE(args)
        except ValueError as e:
            msgs.append(str(e))
    return msgs


def test_ep_rejects_capacity_and_uneven_sharding():
    res = run_distributed(_ep_bad_args, 3, timeout_s=60)
    assert "capacity_factor" in res[0][0]
    assert "n_routed_experts=8 must be divisible by the number of ranks 3" in res[0][1]
