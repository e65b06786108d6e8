"""The real serving check: batched decode of requests at different positions in their own cache
rows (slots) equals decoding each request alone, and dsim.serving.real's loop keeps its books
(every request served once, in order of the policy, never more than max_batch at a time)."""

import json

import numpy as np
import pytest
import torch

from dsim.config import ModelArgs, preset
from dsim.model import Transformer
from dsim.serving.real import RealRun, serve_trace
from dsim.serving.workload import Request

ATOL = 1e-5  # fp32 logits; measured differences ~3e-6

PROMPTS = (5, 9, 3, 12)  # one request per slot, each at its own length
SLOTS = (3, 0, 5, 1)
STEPS = 4

CONFIGS = {
    "tiny-naive": preset("tiny"),
    "tiny-absorb": preset("tiny", attn_impl="absorb"),
    # GQA with a sliding window of 4 on layer 0 (shorter than every prompt) and attention sinks
    "gqa-window-sink": preset(
        "tiny",
        attn_type="gqa",
        head_dim=16,
        n_kv_heads=2,
        sliding_window=4,
        window_layers=(0,),
        attn_sink=True,
    ),
    # DeepSeek-V3.2's indexer picks 6 keys. With few indexer heads many index scores are exactly 0
    # (relu) and top-k breaks such ties by position in a longer or shorter row; 16 heads make
    # ties rare, so both decodes pick the same keys.
    "indexer-absorb": preset(
        "tiny",
        q_lora_rank=16,
        index_n_heads=16,
        index_head_dim=16,
        index_topk=6,
        attn_impl="absorb",
    ),
    "indexer-naive": preset(
        "tiny", q_lora_rank=16, index_n_heads=16, index_head_dim=16, index_topk=6
    ),
}


def _model(args: ModelArgs) -> Transformer:
    torch.manual_seed(0)
    return Transformer(args).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_ragged_decode_equals_per_sequence_decode(name):
    model = _model(CONFIGS[name])
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (1, n + STEPS), generator=gen) for n in PROMPTS]
    with torch.no_grad():
        alone = []  # each request by itself: cache row 0, the shared start_pos
        for seq, n in zip(seqs, PROMPTS):
            model.reset_cache()
            model(seq[:, :n], use_cache=True)
            steps = [
                model(seq[:, i : i + 1], i, use_cache=True)[0, -1] for i in range(n, n + STEPS)
            ]
            alone.append(torch.stack(steps))  # [STEPS, V]
        model.reset_cache()
        # stale rows: slots hold another request's longer history beyond each prompt
        model(torch.randint(0, 256, (4, 20), generator=gen), use_cache=True)
        for seq, n, slot in zip(seqs, PROMPTS, SLOTS):
            model(seq[:, :n], use_cache=True, slots=torch.tensor([slot]))  # prefill into a slot
        batched = []
        for k in range(STEPS):
            tokens = torch.cat([seq[:, n + k : n + k + 1] for seq, n in zip(seqs, PROMPTS)])
            positions = torch.tensor([n + k for n in PROMPTS])
            logits = model(tokens, use_cache=True, slots=torch.tensor(SLOTS), positions=positions)
            batched.append(logits[:, -1])  # [B, V]
    batched = torch.stack(batched, dim=1)  # [B, STEPS, V]
    for b in range(len(PROMPTS)):
        torch.testing.assert_close(batched[b], alone[b], atol=ATOL, rtol=ATOL)


def test_prefill_of_a_slot_after_a_cached_prefix_equals_one_prefill():
    model = _model(CONFIGS["tiny-absorb"])
    tokens = torch.randint(0, 256, (1, 14))
    slot = torch.tensor([2])
    with torch.no_grad():
        whole = model(tokens)
        model.reset_cache()
        head = model(tokens[:, :6], use_cache=True, slots=slot)
        tail = model(tokens[:, 6:], start_pos=6, use_cache=True, slots=slot)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole, atol=ATOL, rtol=ATOL)


def _bad(model, tokens, match, **kw):
    with pytest.raises(ValueError, match=match):
        model(tokens, **{"use_cache": True, **kw})


def test_bad_slots_and_positions_raise_value_error():
    model = _model(preset("tiny", max_batch_size=4))
    one, two = torch.zeros(1, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    _bad(
        model,
        two,
        r"slots must be in \[0, ModelArgs.max_batch_size=4\)",
        slots=torch.tensor([0, 4]),
    )
    _bad(model, two, "slots must be in", slots=torch.tensor([-1, 0]))
    _bad(model, two, "distinct", slots=torch.tensor([1, 1]))
    _bad(model, two, r"shape \(3,\)", slots=torch.tensor([0, 1, 2]))
    _bad(model, one, "integer", slots=torch.tensor([0.0]))
    _bad(model, one, "use_cache", slots=torch.tensor([0]), use_cache=False)
    _bad(model, one, "positions need slots", positions=torch.tensor([3]))
    _bad(
        model, two, r"max_seq_len=256", slots=torch.tensor([0, 1]), positions=torch.tensor([3, 256])
    )
    _bad(
        model,
        two,
        "positions must be in",
        slots=torch.tensor([0, 1]),
        positions=torch.tensor([-1, 2]),
    )
    _bad(model, two, r"shape \(1,\)", slots=torch.tensor([0, 1]), positions=torch.tensor([2]))
    _bad(
        model,
        torch.zeros(1, 3, dtype=torch.long),
        r"tokens must be \[batch, 1\]",
        slots=torch.tensor([0]),
        positions=torch.tensor([2]),
    )
    _bad(
        model,
        one,
        "leave start_pos at 0",
        start_pos=2,
        slots=torch.tensor([0]),
        positions=torch.tensor([2]),
    )


# ---------------------------------------------------------------------------------------------
# dsim.serving.real.serve_trace
# ---------------------------------------------------------------------------------------------
def _trace(n: int, seed: int = 0, rate: float = 2000.0) -> list[Request]:
    """n requests, prompts 4..40, outputs 1..12 tokens: a burst (a Poisson process of `rate` per
    second, faster than the loop serves, so that requests wait for slots), then after 50 ms of
    quiet (the loop sleeps) the last request."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    arrivals[-1] = arrivals[-2] + 0.05
    return [
        Request(i, float(arrivals[i]), int(rng.integers(4, 41)), int(rng.integers(1, 13)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def served() -> tuple[Transformer, list[Request], dict[str, RealRun]]:
    model = _model(preset("tiny", max_batch_size=4, attn_impl="absorb"))
    requests = _trace(16)
    runs = {
        chunk: serve_trace(model, requests, max_batch=3, chunk_tokens=chunk, device="cpu", seed=0)
        for chunk in (None, 8)
    }
    return model, requests, runs


@pytest.mark.parametrize("chunk", [None, 8], ids=["whole", "chunk8"])
def test_serve_trace_books(served, chunk):
    _, requests, runs = served
    run = runs[chunk]
    by_id = {r.id: r for r in requests}
    assert sorted(r.id for r in run.requests) == sorted(by_id)  # every request finishes once
    for rec in run.requests:
        req = by_id[rec.id]
        assert (rec.arrival_s, rec.prompt_tokens, rec.output_tokens) == (
            req.arrival_s,
            req.prompt_tokens,
            req.output_tokens,
        )
        assert rec.arrival_s <= rec.admitted_s <= rec.first_token_s <= rec.finish_s
        assert len(run.output_ids[rec.id]) == req.output_tokens
        assert 0 <= rec.slot < 3
    steps = run.iterations
    assert max(s.n_running for s in steps) == 3  # the burst fills every slot, never more
    assert all(s.n_decode <= 3 for s in steps)
    assert all(a.start_s + a.duration_s <= b.start_s for a, b in zip(steps, steps[1:]))
    # tokens: one per request per decode step after the first, which the prefill makes
    assert sum(s.n_decode for s in steps) == sum(r.output_tokens - 1 for r in requests)
    prefills = [s for s in steps if s.kind == "prefill"]
    assert sum(s.prefill_tokens for s in prefills) == sum(r.prompt_tokens for r in requests)
    if chunk is not None:
        assert max(s.prefill_tokens for s in prefills) == chunk
    # at most one prefill step and one decode step per iteration, the prefill first
    kinds: dict[int, list[str]] = {}
    for s in steps:
        kinds.setdefault(s.iteration, []).append(s.kind)
    assert all(k in (["prefill"], ["decode"], ["prefill", "decode"]) for k in kinds.values())
    # FIFO: admitted in order of arrival
    admitted = sorted(run.requests, key=lambda r: r.admitted_s)
    assert [r.id for r in admitted] == [r.id for r in sorted(requests, key=lambda r: r.arrival_s)]


def test_serve_trace_decode_context_is_the_sum_of_positions(served):
    _, requests, runs = served
    run = runs[None]
    prompt = {r.id: r.prompt_tokens for r in requests}
    # replay the policy's bookkeeping from the records: each running sequence at prompt + made - 1
    made: dict[int, int] = {}
    first = {r.id: r.first_token_s for r in run.requests}
    finish = {r.id: r.finish_s for r in run.requests}
    for s in run.iterations:
        if s.kind == "prefill":
            made[s.request_id] = 1
            continue
        live = [i for i in made if first[i] <= s.start_s and finish[i] > s.start_s]
        assert len(live) == s.n_decode
        assert sum(prompt[i] + made[i] - 1 for i in live) == s.decode_context_tokens
        for i in live:
            made[i] += 1


def test_serve_trace_tokens_equal_greedy_generation_alone(served):
    model, requests, runs = served
    gen = torch.Generator().manual_seed(0)  # serve_trace's prompt ids for seed 0, in arrival order
    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    prompts = {r.id: torch.randint(0, 256, (r.prompt_tokens,), generator=gen) for r in order}
    for r in requests:
        alone = model.generate(prompts[r.id][None], r.output_tokens)[0, r.prompt_tokens :]
        for chunk, run in runs.items():
            assert run.output_ids[r.id] == alone.tolist(), (r.id, chunk)


def test_serve_trace_to_dict_round_trips(served):
    run = served[2][None]
    for columns in (False, True):
        d = json.loads(json.dumps(run.to_dict(columns)))
        assert set(d) == {"requests", "iterations"}
        back = RealRun.from_dict(d)
        assert back.requests == run.requests and back.iterations == run.iterations
    summary = run.summary()
    assert summary["requests"] == 16 and summary["ttft_p50_s"] <= summary["ttft_p90_s"]


def test_serve_trace_refuses_bad_input():
    model = _model(preset("tiny", max_batch_size=4))
    ok = [Request(0, 0.0, 4, 2)]
    cases = [
        (
            dict(max_batch=5),
            r"max_batch = 5 must be an integer in \[1, ModelArgs.max_batch_size=4\]",
        ),
        (dict(max_batch=0), "max_batch"),
        (dict(max_batch=2, chunk_tokens=0), "chunk_tokens"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            serve_trace(model, ok, device="cpu", **kw)
    bad = [
        ([], "empty"),
        ([Request(0, 0.0, 4, 2), Request(0, 1.0, 4, 2)], "distinct"),
        ([Request(0, -1.0, 4, 2)], "arrival_s"),
        ([Request(0, 0.0, 0, 2)], "prompt_tokens"),
        ([Request(0, 0.0, 4, 0)], "output_tokens"),
        ([Request(0, 0.0, 200, 58)], r"257 exceeds ModelArgs.max_seq_len=256"),
        ([Request(0, 0.0, 4, 2, prefix_id=1, prefix_tokens=5)], "prefix_tokens"),
    ]
    for requests, match in bad:
        with pytest.raises(ValueError, match=match):
            serve_trace(model, requests, max_batch=2, device="cpu")
