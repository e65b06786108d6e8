"""The request-level serving simulator (dsim.serving): queueing theory where it has an answer
(M/D/1 waits, Little's law), the prefix cache's hand counts, MTP's tokens per step, preemption,
disaggregation, chunked prefill, trace files, and the step cost against the steady-state plan."""

import math

import numpy as np
import pytest

from dsim.config import preset
from dsim.cost.plan.serve import plan_serving
from dsim.serving import (
    ConstantStepCost,
    LinearStepCost,
    Pool,
    PrefixCache,
    Request,
    Simulator,
    StepCost,
    StepShape,
    poisson_requests,
    read_trace,
    summarize,
    write_trace,
)

BIG = 1 << 30  # a KV cache that never fills


def colocated(step_s=0.01, ranks=1, kv=BIG, max_batch=256, chunk=8192, units=1):
    return Pool("both", units, ranks, ranks, ConstantStepCost(step_s), kv, max_batch, chunk)


def littles_law(trace):
    """L (the time-average of requests in the system) equals lambda * W (arrival rate over the
    run times the mean time in the system): the run's bookkeeping of arrivals, finishes and
    occupancy agrees with itself. Returns the report."""
    rep = summarize(trace)
    assert rep.littles_law["L"] == pytest.approx(rep.littles_law["lambda_W"], rel=1e-6)
    assert rep.littles_law["L"] > 0
    return rep


def spaced(n, prompt, output, gap=100.0, prefix=None, prefix_tokens=0):
    """n requests far apart in time (each alone in the system)."""
    return [Request(i, gap * i, prompt, output, prefix, prefix_tokens) for i in range(n)]


# -- queueing theory -----------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_is_pollaczek_khinchine(rho):
    """One server of deterministic service D (one step per request: a prompt of chunk_tokens
    tokens and one output token, max_batch 1) under Poisson arrivals of rate lambda = rho / D is
    M/D/1: the mean wait before service is rho D / (2 (1 - rho)). Waits are autocorrelated, so
    the tolerance is 4 standard errors from batch means (40 batches of 1000 consecutive requests,
    each batch far longer than the queue's relaxation time), and the standard error itself must
    be under 4 % of the answer for the check to mean something. Fixed seed: deterministic."""
    D, n, chunk = 0.01, 40_000, 16
    reqs = poisson_requests(rho / D, n, chunk, 1, seed=1)
    trace = Simulator([colocated(D, max_batch=1, chunk=chunk)]).run(reqs)
    wait = trace.admitted - trace.arrival
    assert np.all(wait >= -1e-12)
    assert np.allclose(trace.finish - trace.admitted, D)  # service is exactly one step
    theory = rho * D / (2 * (1 - rho))
    batches = wait.reshape(40, -1).mean(axis=1)
    se = batches.std(ddof=1) / math.sqrt(len(batches))
    assert se < 0.04 * theory
    assert abs(wait.mean() - theory) < 4 * se, (wait.mean(), theory, se)
    littles_law(trace)


def test_littles_law_on_a_disaggregated_run_with_mtp_prefix_cache_and_preemption():
    prefill = Pool("prefill", 2, 2, 2, ConstantStepCost(0.02), BIG, 64, 512)
    decode = Pool("decode", 1, 2, 2, ConstantStepCost(0.01), 3000, 64, 512)
    reqs = poisson_requests(
        20.0, 600, 300, 150, prompt_cv=0.5, output_cv=0.8, shared_prefix=0.5, n_prefixes=5, seed=3
    )
    sim = Simulator(
        [prefill, decode],
        mtp_draft_tokens=2,
        mtp_acceptance=0.7,
        prefix_cache=PrefixCache(2000),
        kv_transfer_s=0.005,
        seed=4,
    )
    trace = sim.run(reqs)
    rep = littles_law(trace)
    assert rep.preemptions > 0 and rep.prefix_hit_rate > 0
    assert np.all(trace.finish >= trace.first_token) and np.all(trace.first_token > trace.arrival)


# -- prefix cache --------------------------------------------------------------------------------


def test_no_shared_prefixes_hit_nothing():
    reqs = poisson_requests(50.0, 300, 200, 20, prompt_cv=1.0, seed=0)
    trace = Simulator([colocated(0.005)], prefix_cache=PrefixCache()).run(reqs)
    assert trace.prefix_hit_rate == 0 and trace.hit_tokens.sum() == 0
    littles_law(trace)


def test_shared_prefixes_hit_the_hand_count():
    """Unbounded cache, requests one at a time: the first request of a prefix misses, each later
    one hits min(its prefix, the longest cached one), less the prompt's last token (always
    computed, to give the first output token)."""
    rng = np.random.default_rng(0)
    reqs, want, cached = [], [], {}
    for i in range(60):
        prompt = int(rng.integers(50, 400))
        pid = int(rng.integers(0, 6))
        ptok = prompt if i % 7 == 0 else int(rng.integers(1, prompt + 1))  # some whole prompts
        reqs.append(Request(i, 10.0 * i, prompt, 3, pid, ptok))
        want.append(min(ptok, cached.get(pid, 0), prompt - 1))
        cached[pid] = max(cached.get(pid, 0), ptok)
    trace = Simulator([colocated()], prefix_cache=PrefixCache()).run(reqs)
    assert trace.hit_tokens.tolist() == want
    assert sum(want) > 0
    # the hit rate counts the tokens the prefill skipped: the same hand count
    assert trace.prefix_hit_rate == pytest.approx(sum(want) / sum(r.prompt_tokens for r in reqs))
    littles_law(trace)


def test_prefix_cache_evicts_least_recently_used():
    c = PrefixCache(100)
    for pid in (1, 2, 3):
        c.insert(pid, 30)
    assert list(c.entries) == [1, 2, 3] and c.used == 90
    assert c.lookup(1, 30, 50) == 30  # 1 is now the most recently used
    c.insert(4, 30)  # evicts 2, the least recently used
    assert list(c.entries) == [3, 1, 4] and c.used == 90
    assert c.lookup(2, 30, 50) == 0
    c.insert(5, 70)  # evicts 3 and 1
    assert list(c.entries) == [4, 5] and c.used == 100
    c.insert(6, 101)  # larger than the cache: not kept, nothing evicted
    assert list(c.entries) == [4, 5]
    assert c.lookup(4, 10, 40) == 10  # a shorter prefix of a cached one hits its own length
    assert c.hit_tokens == 40 and c.lookup_tokens == 140
    with pytest.raises(ValueError, match="capacity_tokens"):
        PrefixCache(float("nan"))


# -- MTP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_mtp_one_draft_gives_one_plus_p_tokens_per_step(p):
    """Constant steps of D, each request alone: its decode takes k steps for output - 1 tokens,
    so tokens per step = (output - 1) / k, whose mean is 1 + p (one draft accepted with
    probability p; the last step's clamp is negligible at 2000 tokens). Standard error of the
    mean over 20 x 1300 steps: 0.5 / sqrt(26000) = 0.003; tolerance 0.02."""
    D, out = 0.01, 2001
    trace = Simulator([colocated(D)], mtp_draft_tokens=1, mtp_acceptance=p, seed=7).run(
        spaced(20, 100, out)
    )
    steps = (trace.finish - trace.first_token) / D
    assert np.allclose(steps, np.round(steps))
    per_step = (out - 1) * len(steps) / steps.sum()
    assert per_step == pytest.approx(1 + p, abs=0.02)
    tpot = summarize(trace).tpot_s["mean"]
    assert tpot == pytest.approx(D / (1 + p), rel=0.02)
    littles_law(trace)


def test_mtp_acceptance_zero_gives_exactly_one_token_per_step():
    D, out = 0.01, 500
    for k in (0, 1, 3):
        trace = Simulator([colocated(D)], mtp_draft_tokens=k, mtp_acceptance=0.0).run(
            spaced(5, 100, out)
        )
        assert np.allclose(trace.finish - trace.first_token, (out - 1) * D, rtol=1e-9)
        assert summarize(trace).tpot_s["p99"] == pytest.approx(D, rel=1e-9)


# -- preemption and capacity ---------------------------------------------------------------------


def test_preemption_when_the_kv_cache_fills_and_every_request_finishes():
    """Twelve sequences arrive together on one rank whose cache holds 1500 tokens: all are
    admitted at 100 prompt tokens, none can reach its 400 output tokens alongside the others,
    so some are preempted and recomputed; still each gets exactly its tokens."""
    reqs = [Request(i, 0.001 * i, 100, 400) for i in range(12)]
    trace = Simulator([colocated(0.01, kv=1500)]).run(reqs)
    assert trace.preemptions.sum() > 0
    assert np.all(trace.finish > 0) and np.all(trace.finish > trace.first_token)
    steps = np.array(trace.steps["both"])
    assert steps[:, 3].sum() == sum(r.output_tokens - 1 for r in reqs)  # decode tokens out
    # recomputation: prefill tokens = prompts + the context of every preempted sequence
    assert steps[:, 2].sum() > sum(r.prompt_tokens for r in reqs)
    littles_law(trace)


def test_a_request_larger_than_the_kv_cache_is_refused():
    reqs = [Request(0, 0.0, 100, 10), Request(1, 0.5, 900, 200)]
    with pytest.raises(ValueError, match=r"request 1.*1100 tokens.*1000") as e:
        Simulator([colocated(kv=1000)]).run(reqs)
    assert "prompt" in str(e.value) and "output" in str(e.value)
    # disaggregated: the decode pool's cache is the one that holds the sequence
    pools = [
        Pool("prefill", 1, 1, 1, ConstantStepCost(0.01), BIG),
        Pool("decode", 1, 1, 1, ConstantStepCost(0.01), 1000),
    ]
    with pytest.raises(ValueError, match="request 1"):
        Simulator(pools).run(reqs)
    Simulator([colocated(kv=1100)]).run(reqs)  # just fits


# -- disaggregation and chunked prefill ----------------------------------------------------------


def test_disaggregated_transfer_is_after_the_first_token():
    Dp, Dd, xfer, out = 0.05, 0.01, 0.3, 21
    pools = [
        Pool("prefill", 1, 1, 1, ConstantStepCost(Dp), BIG),
        Pool("decode", 1, 1, 1, ConstantStepCost(Dd), BIG),
    ]
    trace = Simulator(pools, kv_transfer_s=xfer).run(spaced(4, 1000, out, gap=10.0))
    assert np.allclose(trace.first_token - trace.arrival, Dp)  # TTFT: the prefill step only
    assert np.allclose(trace.finish - trace.first_token, xfer + (out - 1) * Dd)
    rep = littles_law(trace)
    assert rep.ttft_s["p99"] == pytest.approx(Dp)
    assert rep.tpot_s["mean"] == pytest.approx((xfer + (out - 1) * Dd) / (out - 1))


def test_colocated_chunked_prefill_respects_chunk_tokens():
    chunk = 64
    reqs = poisson_requests(30.0, 200, 500, 40, prompt_cv=0.5, seed=2)
    trace = Simulator([colocated(0.005, chunk=chunk)]).run(reqs)
    steps = np.array(trace.steps["both"])
    assert steps[:, 2].max() <= chunk  # one rank: prefill tokens per step
    assert steps[:, 2].sum() == sum(r.prompt_tokens for r in reqs)
    assert (steps[:, 2] > 0).sum() >= math.ceil(sum(r.prompt_tokens for r in reqs) / chunk)
    # two ranks: at most chunk per rank
    trace = Simulator([colocated(0.005, ranks=2, chunk=chunk)]).run(reqs)
    steps = np.array(trace.steps["both"])
    assert steps[:, 2].max() <= 2 * chunk and steps[:, 2].max() > chunk
    littles_law(trace)


# -- trace files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_trace_round_trip(tmp_path, suffix):
    reqs = poisson_requests(
        3.0, 50, 300, 80, prompt_cv=1.0, output_cv=1.0, shared_prefix=0.4, n_prefixes=3, seed=5
    )
    reqs += [Request(50, reqs[-1].arrival_s + 1, 10, 2)]  # no prefix
    path = tmp_path / f"t{suffix}"
    write_trace(reqs, path)
    assert read_trace(path) == reqs


BAD_TRACES = [
    ("t.csv", "arrival_s,prompt_tokens\n0,10\n", r"header lacks output_tokens"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,1.5,5\n", r"t.csv:3: prompt_tok"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens\n0,ten,5\n", r"t.csv:2: prompt_tokens"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens\n-1,10,5\n", r"t.csv:2: arrival_s .*>= 0"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens,user\n0,10,5,a\n", r":2: unknown .*user"),
    ("t.csv", "", r"header lacks arrival_s"),
    ("t.jsonl", "", r"has no requests"),
    ("t.jsonl", '{"arrival_s": 0, "prompt_tokens": 3}\n', r"t.jsonl:1: missing output_tokens"),
    ("t.jsonl", '{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 0}\n', r":1: output_tok"),
    ("t.jsonl", "{nope\n", r"t.jsonl:1: not JSON"),
    ("t.jsonl", "[1, 2]\n", r"t.jsonl:1: each line must be a JSON object"),
    ("t.txt", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n", r"must end in .csv or .jsonl"),
    ("t.csv", "arrival_s,prompt_tokens,output_tokens,prefix_tokens\n0,10,5,3\n", r"needs a prefix"),
]


@pytest.mark.parametrize("name, text, message", BAD_TRACES)
def test_bad_trace_names_the_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trace(path)


def test_missing_trace_and_bad_suffix_on_write(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        read_trace(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="must end in"):
        write_trace([Request(0, 0.0, 1, 1)], tmp_path / "t.txt")


# -- step cost -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v3():
    args = preset("deepseek-v3")
    kw = dict(gpu="H800", n_gpus=144, ep=144, redundant_experts=32)
    return args, StepCost(args, **kw), StepCost(args, decode_attention="flashmla", **kw)


@pytest.mark.parametrize("batch, context", [(1, 1000), (8, 4989), (16, 20000), (24, 4096)])
def test_decode_step_matches_the_steady_state_plan(v3, batch, context):
    """DeepSeek-V3's decode unit (144 H800s, EP144, 32 redundant experts): a decode-only step is
    the plan's step, up to the bucketing of the context (2 % apart)."""
    args, cost, _ = v3
    plan = plan_serving(
        args, "H800", "decode", 144, ep=144, redundant_experts=32, context=context, batch=batch
    )
    assert cost(StepShape(batch, 1, context)) == pytest.approx(plan.step_time_s, rel=0.03)


def test_decode_step_grows_with_batch_and_context_and_flashmla_is_faster(v3):
    _, cost, fused = v3
    by_batch = [cost(StepShape(b, 1, 4096)) for b in (1, 4, 16, 24)]
    by_ctx = [cost(StepShape(16, 1, c)) for c in (512, 4096, 32768)]
    assert all(x < y for x, y in zip(by_batch, by_batch[1:]))
    assert all(x < y for x, y in zip(by_ctx, by_ctx[1:]))
    assert fused(StepShape(16, 1, 32768)) < cost(StepShape(16, 1, 32768))
    assert 0 < cost.kv_capacity_tokens == fused.kv_capacity_tokens
    # MTP: verifying a draft token costs less than a second step
    one, two = cost(StepShape(16, 1, 4096)), cost(StepShape(16, 2, 4096))
    assert one < two < 2 * one
    with pytest.raises(ValueError, match="decode_attention"):
        StepCost(preset("tiny"), decode_attention="fast")


def test_linear_step_cost_fit_recovers_known_coefficients():
    true = LinearStepCost(2e-3, 1e-5, 3e-9, 2e-6, 4e-10)
    rng = np.random.default_rng(0)
    shapes = [
        StepShape(
            int(rng.integers(0, 64)),
            1,
            int(rng.integers(1, 8000)),
            int(rng.integers(0, 4)),
            int(rng.integers(0, 4000)),
            int(rng.integers(0, 2000)),
        )
        for _ in range(200)
    ]
    shapes = [s for s in shapes if s.tokens > 0]
    fit = LinearStepCost.fit(shapes, [true(s) for s in shapes])
    for name in ("base", "per_seq", "per_kv", "per_token", "per_pair"):
        assert getattr(fit, name) == pytest.approx(getattr(true, name), rel=1e-3), name
    with pytest.raises(ValueError, match="at least 5"):
        LinearStepCost.fit(shapes[:3], [1.0, 1.0, 1.0])


def test_slo_attainment_counts_requests_within_both_targets():
    # one rank, a batch of one, 10 ms steps, requests far apart: TTFT is one step (10 ms), TPOT
    # one step per token
    reqs = [Request(i, float(i), 10, 1 + i % 3) for i in range(30)]
    pool = Pool("both", 1, 1, 1, ConstantStepCost(0.01), 1e6, max_batch=1, chunk_tokens=64)
    tr = Simulator([pool]).run(reqs)
    assert summarize(tr, slo_ttft_s=0.0101).slo_attainment == 1.0
    assert summarize(tr, slo_ttft_s=0.0099).slo_attainment == 0.0
    # a TPOT target below one step: only the one-token requests (a third) meet it
    assert summarize(tr, slo_tpot_s=0.005).slo_attainment == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="slo_tpot_s"):
        summarize(tr, slo_tpot_s=0)


def test_balanced_prefill_chunks_keep_long_contexts_from_stalling_the_unit():
    """Four ranks step together; a rank whose chunk attends to a long context would hold the
    others up. Balanced, it takes fewer tokens and the same prompts finish sooner."""
    step = LinearStepCost(1e-3, 0.0, 0.0, 1e-6, 1e-9)  # attention pairs are what cost
    reqs = poisson_requests(1000.0, 300, 3000, 1, prompt_cv=1.5, seed=3)
    ends = {}
    for balance in (False, True):
        pools = [
            Pool("prefill", 1, 4, 4, step, 1e9, chunk_tokens=2048, balance_prefill=balance),
            Pool("decode", 1, 1, 1, step, 1e9),
        ]
        tr = Simulator(pools).run(reqs)
        steps = np.array(tr.steps["prefill"])
        assert steps[:, 2].max() <= 4 * 2048  # never more than the ranks' budgets
        littles_law(tr)
        ends[balance] = tr.finish.max()
    assert ends[True] < 0.9 * ends[False]


def test_a_sliding_window_model_is_served_with_a_cache_that_never_overcommits():
    """gpt-oss keeps only the last 128 tokens in half its layers. The simulator counts cache in
    tokens, so it prices each token as a sequence within the window does (every layer keeps it):
    the capacity of the same model without windows. Its steps read only the windows."""
    from pathlib import Path

    from dsim.config import ModelArgs

    cfg = Path(__file__).resolve().parents[1] / "dsim" / "data" / "hf_configs" / "gpt-oss-20b.json"
    oss = ModelArgs.from_hf_config(cfg)
    full = oss.replace(sliding_window=0, window_layers=())
    windowed, unwindowed = (StepCost(a, "H800", 16, max_step_tokens=4096) for a in (oss, full))
    assert windowed.kv_capacity_tokens == unwindowed.kv_capacity_tokens > 0
    # a window layer's cache holds its window only, so a step at a long context reads less, with
    # PyTorch's attention or a fused kernel over the cache; short of the window nothing changes
    long, short = (
        StepShape(decode_seqs=8, decode_context=8192),
        StepShape(decode_seqs=8, decode_context=64),
    )
    assert windowed(long) < unwindowed(long) and windowed(short) == unwindowed(short)
    fused = [
        StepCost(a, "H800", 16, decode_attention="flashmla", max_step_tokens=4096)
        for a in (oss, full)
    ]
    assert fused[0](long) < fused[1](long)
    pool = Pool("both", 1, 16, 16, windowed, windowed.kv_capacity_tokens, 64, 4096)
    trace = Simulator([pool]).run(poisson_requests(5.0, 40, 512, 32, seed=0))
    assert littles_law(trace).requests == 40


def test_a_model_windowed_in_every_layer_decodes_as_fast_past_its_window():
    """Mistral-7B's every layer keeps its last 4096 tokens: a decode step after 32K cached tokens
    reads and holds what one after 8K does, so the steady-state plan is the same; a model without
    the window pays for the longer context."""
    from pathlib import Path

    from dsim.config import ModelArgs

    cfg = Path(__file__).resolve().parents[1] / "dsim" / "data" / "hf_configs"
    mistral = ModelArgs.from_hf_config(cfg / "mistral-7b-instruct-v0.1.json")
    full = mistral.replace(sliding_window=0, window_layers=())
    at = {
        (m.sliding_window, ctx): plan_serving(m, "H100-SXM", "decode", 8, batch=16, context=ctx)
        for m in (mistral, full)
        for ctx in (8192, 32000)
    }
    assert at[4096, 32000].step_time_s == at[4096, 8192].step_time_s
    assert at[0, 32000].step_time_s > at[0, 8192].step_time_s > at[4096, 8192].step_time_s
