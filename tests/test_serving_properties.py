"""Properties of the serving simulator under random systems and workloads: every run ends with
every request served, in order (arrival <= admission <= first token <= finish), with exactly its
output tokens, within the batch and KV-cache limits, and with Little's law holding on its own
bookkeeping; preemption, MTP, a prefix cache, chunking and disaggregation included.

Deterministic (derandomize=True): the same examples on every run, so CI never flakes.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsim.serving import (
    ConstantStepCost,
    LinearStepCost,
    Pool,
    PrefixCache,
    Request,
    Simulator,
    read_trace,
    summarize,
)

SETTINGS = dict(
    derandomize=True, deadline=None, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


@st.composite
def requests(draw):
    n = draw(st.integers(1, 40))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    out = []
    t = 0.0
    for i in range(n):
        t += gaps[i]
        prompt = draw(st.integers(1, 300))
        output = draw(st.integers(1, 40))
        pid = draw(st.one_of(st.none(), st.integers(0, 3)))
        ptok = draw(st.integers(0, prompt)) if pid is not None else 0
        out.append(Request(i, t, prompt, output, pid, ptok))
    return out


@st.composite
def systems(draw, reqs):
    mtp = draw(st.integers(0, 2))
    longest = max(r.prompt_tokens + r.output_tokens for r in reqs) + mtp
    kv = longest + draw(st.integers(0, 3 * longest))  # from just enough to plenty
    step = draw(
        st.one_of(
            st.floats(1e-3, 0.05).map(ConstantStepCost),
            st.just(LinearStepCost(2e-3, 1e-4, 1e-7, 1e-5, 1e-9)),
        )
    )

    def pool(role):
        return Pool(
            role,
            draw(st.integers(1, 2)),
            draw(st.integers(1, 3)),
            8,
            step,
            kv,
            max_batch=draw(st.integers(1, 8)),
            chunk_tokens=draw(st.integers(16, 512)),
            mixed_steps=draw(st.booleans()),
            balance_prefill=draw(st.booleans()),
        )

    pools = [pool("both")] if draw(st.booleans()) else [pool("prefill"), pool("decode")]
    cache = draw(st.sampled_from([None, math.inf, 200]))
    sim = Simulator(
        pools,
        mtp_draft_tokens=mtp,
        mtp_acceptance=draw(st.floats(0, 1)) if mtp else 0.0,
        prefix_cache=None if cache is None else PrefixCache(cache),
        kv_transfer_s=draw(st.sampled_from([0.0, 0.01])) if len(pools) == 2 else 0.0,
        seed=draw(st.integers(0, 3)),
    )
    return sim, pools


@settings(**SETTINGS)
@given(data=st.data())
def test_every_request_is_served_in_order_within_the_limits(data):
    reqs = data.draw(requests())
    sim, pools = data.draw(systems(reqs))
    tr = sim.run(reqs)
    arrival = np.array([r.arrival_s for r in reqs])
    assert np.array_equal(tr.arrival, arrival)
    assert np.all(tr.admitted >= tr.arrival - 1e-12)
    assert np.all(tr.first_token >= tr.admitted)
    assert np.all(tr.finish >= tr.first_token)
    # one-token requests finish with their first token
    one = tr.output == 1
    assert np.all(tr.finish[one] == tr.first_token[one])
    # exactly the output tokens: the first from prefill, the rest from decode steps
    decoded = sum(s[3] for steps in tr.steps.values() for s in steps)
    assert decoded == int((tr.output - 1).sum())
    for p in pools:
        steps = np.array(tr.steps[p.role]).reshape(-1, 5)
        if len(steps):
            assert steps[:, 4].max() <= p.max_batch * p.ranks * p.units
            assert np.all(steps[:, 1] > steps[:, 0])  # every step takes time
    # hits never exceed the shared prefix, and never cover the whole prompt
    prefix = np.array([r.prefix_tokens for r in reqs])
    assert np.all(tr.hit_tokens <= prefix * (1 + tr.preemptions))
    assert np.all(tr.hit_tokens < tr.prompt * (1 + tr.preemptions))
    rep = summarize(tr)
    assert rep.littles_law["L"] == pytest.approx(rep.littles_law["lambda_W"], rel=1e-6)
    assert 0 <= rep.prefix_hit_rate < 1


@settings(**SETTINGS)
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.lists(
                st.one_of(st.integers(-5, 10**9), st.floats(allow_nan=True), st.text(max_size=5)),
                min_size=1,
                max_size=6,
            ),
            max_size=5,
        ).map(
            lambda rows: (
                "arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n"
                + "\n".join(",".join(map(str, r)) for r in rows)
            )
        ),
    ),
    suffix=st.sampled_from([".csv", ".jsonl"]),
)
def test_any_trace_file_reads_or_is_refused_by_name(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("trace") / f"t{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        reqs = read_trace(path)
    except ValueError as e:
        assert str(path) in str(e)  # the message names the file (and the line where it can)
        return
    assert reqs and all(isinstance(r, Request) for r in reqs)
    assert [r.arrival_s for r in reqs] == sorted(r.arrival_s for r in reqs)
