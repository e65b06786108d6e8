"""DeepSeek's day of serving (dsim.serving.day6): the committed table is what the code computes,
its arithmetic holds, and the base case is within 15 % of both published throughputs."""

import math

import pytest

from dsim.serving.day6 import DAY6, VARIANTS, decode_capacity, load_day6, prefill_capacity

REL = 1e-6


@pytest.fixture(scope="module")
def day6():
    return load_day6()


def test_table_has_every_variant(day6):
    assert list(day6) == [key for key, _, _ in VARIANTS]
    for key, cv, balance in VARIANTS:
        assert day6[key]["assumptions"]["length_cv"] == cv
        assert day6[key]["assumptions"]["balance_prefill"] is balance


def test_arithmetic(day6):
    for v in day6.values():
        pre, dec = v["prefill"]["tokens_per_s_per_node"], v["decode"]["tokens_per_s_per_node"]
        nodes_pre = DAY6["input_tokens"] / DAY6["day_s"] / pre
        nodes_dec = DAY6["output_tokens"] / DAY6["day_s"] / dec
        assert v["nodes_at_capacity"]["prefill"] == pytest.approx(nodes_pre, rel=REL)
        assert v["nodes_at_capacity"]["decode"] == pytest.approx(nodes_dec, rel=REL)
        u = (nodes_pre + nodes_dec) / DAY6["average_nodes"]
        assert v["utilisation"] == pytest.approx(u, rel=REL)
        assert v["error"]["prefill"] == pytest.approx(pre * u / 73.7e3 - 1, rel=REL)
        assert v["error"]["decode"] == pytest.approx(dec * u / 14.8e3 - 1, rel=REL)


def test_base_case_within_15_percent(day6):
    base = day6["length_cv=0"]
    assert abs(base["error"]["prefill"]) < 0.15
    assert abs(base["error"]["decode"]) < 0.15
    # the unit capacities themselves sit well above the day averages: the deployment was not full
    assert base["utilisation"] < 1
    assert base["prefill"]["prefix_hit_rate"] == pytest.approx(0.5625, abs=0.002)


def test_prefill_capacity_reproduces(day6):
    got = prefill_capacity(20000, 0.0, seed=0)
    want = day6["length_cv=0"]["prefill"]
    assert got["tokens_per_s_per_node"] == pytest.approx(want["tokens_per_s_per_node"], rel=REL)


def test_decode_capacity_reproduces(day6):
    got = decode_capacity(40000, 0.0, seed=0)
    want = day6["length_cv=0"]["decode"]
    assert got["tokens_per_s_per_node"] == pytest.approx(want["tokens_per_s_per_node"], rel=REL)
    assert got["preemptions"] == want["preemptions"]
    # a user sees 1 + 0.875 tokens per step at the unit's step time
    assert got["tokens_per_s_per_user"] == pytest.approx(1.875 / got["mean_step_s"], rel=0.1)
    assert math.isfinite(got["sequences_per_gpu"])


def test_the_prefill_balancer_keeps_long_prompts_from_idling_the_unit(day6):
    """Without it, every step of a unit waits for its GPU with the longest-context chunk."""
    bal, unbal = day6["length_cv=1"], day6["length_cv=1,unbalanced"]
    assert bal["prefill"]["tokens_per_s_per_node"] > 1.5 * unbal["prefill"]["tokens_per_s_per_node"]
    for key in ("length_cv=0", "length_cv=0.5", "length_cv=1"):
        assert abs(day6[key]["error"]["prefill"]) < 0.15
        assert abs(day6[key]["error"]["decode"]) < 0.15
