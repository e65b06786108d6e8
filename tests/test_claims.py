"""The claims checker: every numeric claim of the seed articles gets a computed verdict."""

import math
import time

import pytest

from dsim import claims as C
from dsim.claims import (
    NOT_NUMERIC,
    VERDICTS,
    check_all,
    check_claim,
    load_claims,
    reference_checks,
    summary,
)
from dsim.cost import bytes_per_param


@pytest.fixture(scope="module")
def verdicts():
    t0 = time.perf_counter()
    vs = check_all()
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, f"check_all took {elapsed:.1f} s"
    return {v.claim_id: v for v in vs}


def test_inventory_is_well_formed():
    claims = load_claims()
    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids)), "claim ids must be unique"
    assert {c.article for c in claims} == set(C.ARTICLES), (
        "every article has claims, and only those"
    )
    for c in claims:
        assert c.id[:2] == C.ARTICLES[c.article][:2], c.id
        assert c.claim and c.topic and c.check, c.id
        if c.numeric:
            assert c.quantities, f"{c.id}: a numeric claim states quantities"


def test_every_numeric_claim_has_a_computed_verdict(verdicts):
    numeric = [c for c in load_claims() if c.numeric]
    missing = [c.id for c in numeric if c.id not in C.CHECKS]
    assert not missing, f"numeric claims without a check: {missing}"
    for c in numeric:
        v = verdicts[c.id]
        assert v.verdict in VERDICTS, (c.id, v.verdict)
        assert v.readings, c.id
        assert math.isfinite(v.stated) and math.isfinite(v.computed), c.id
        assert v.arithmetic.strip() and v.sources, c.id
        assert v.verdict == C.combine(v.readings), c.id
        for r in v.readings:
            assert r.verdict in VERDICTS[:3], (c.id, r)


def test_no_check_is_registered_for_a_missing_or_non_numeric_claim():
    numeric = {c.id for c in load_claims() if c.numeric}
    assert set(C.CHECKS) <= numeric, sorted(set(C.CHECKS) - numeric)


def test_non_numeric_claims_carry_a_reason(verdicts):
    for c in load_claims():
        if not c.numeric:
            v = verdicts[c.id]
            assert v.verdict == NOT_NUMERIC
            assert v.reason.strip() and v.reason == c.reason, c.id


def test_depends_means_readings_disagree_and_cannot_hold_names_a_bound(verdicts):
    for v in verdicts.values():
        if v.verdict == "depends":
            assert len({r.verdict for r in v.readings}) >= 2, v.claim_id
        if v.verdict == "cannot_hold":
            assert v.bound, f"{v.claim_id}: say which bound is violated"


def test_deepseek_v3_671b_37b_holds():
    v3 = next(v for v in reference_checks() if v.claim_id == "ref-deepseek-v3")
    assert v3.verdict == "holds"
    total, active = v3.readings
    assert total.stated == 671e9 and abs(total.computed / 671e9 - 1) < 0.01
    assert active.stated == 37e9 and abs(active.computed / 37e9 - 1) < 0.05
    assert all(v.verdict == "holds" for v in reference_checks())


def test_fp16_bytes_per_parameter(verdicts):
    assert bytes_per_param("fp16") == 2
    v = verdicts["a1-fp16-16gb"]
    assert v.verdict == "holds"
    assert v.computed == 8e9 * 2 == v.stated


def test_calculate_moe_flops_mismatch(verdicts):
    printed = C.calculate_moe_flops_as_written(expert_num=64, expert_size=4096, capacity_factor=1.2)
    assert printed == 2**31 == 64 * 2 * 4096 * 4096
    v = verdicts["a3-calc-moe-flops"]
    assert v.verdict == "off"
    assert v.stated == 24_248_320 and v.computed == printed
    assert v.off_by == f"x{printed / 24_248_320:.3g}"
    # Python's round: 1.2 * 64 = 76.8 -> 77 experts, capped at 64; half-way cases round to even
    assert C.calculate_moe_flops_as_written(4, 10, 0.625) == 2 * 2 * 10 * 10


@pytest.mark.parametrize(
    "claim_id, verdict",
    [
        ("a0-v100-65b-int8-21gb", "cannot_hold"),  # bits vs bytes
        ("a4-200b-35b-top2-of-8", "cannot_hold"),  # active vs total
        ("a4-quant-table-int8-2.5x", "cannot_hold"),  # a speed-up above both ratios
        ("a4-quant-table-int4-4.8x", "cannot_hold"),
        ("a4-quant-table-bf16-1.2x", "off"),
        ("a1-equiv-13b-dense-compute", "cannot_hold"),
        ("a0-single-node-340b-training", "cannot_hold"),
        ("a2-1b-energy-mwh", "cannot_hold"),
        ("a2-data-100b-vs-570b", "off"),  # GB of text read as tokens
        ("a1-flops-ratio-vs-100b", "holds"),
        ("a2-lora-bert-99pct", "holds"),
        ("a3-int8-quarter-of-fp32", "holds"),
        ("a2-int8-storage-75pct", "depends"),  # FP32 or FP16 baseline
    ],
)
def test_known_verdicts(verdicts, claim_id, verdict):
    assert verdicts[claim_id].verdict == verdict, verdicts[claim_id].arithmetic


def test_quantized_bytes_come_from_dsim_quant():
    assert C.quant_bytes_per_param(8, 128) == bytes_per_param("int8", 128)
    assert C.quant_bytes_per_param(4, 128) == bytes_per_param("int4", 128)


def test_verdict_rules():
    assert C.agree("x", 102, 100).verdict == "holds"
    assert C.agree("x", 110, 100).verdict == "off"
    assert C.below_max("x", 2.5, 2.0).verdict == "cannot_hold"
    assert C.above_min("x", 21e9, 65e9).verdict == "cannot_hold"
    assert C.at_least("x", 40, 68).verdict == "holds"
    assert C.at_most("x", 120, 6000, fail="cannot_hold").verdict == "cannot_hold"
    assert C.combine([C.agree("a", 1, 1), C.agree("b", 2, 1)]) == "depends"


def test_check_claim_accepts_an_id_and_rejects_unknown_ones():
    assert check_claim("a4-bank-hw-65pct").verdict == "holds"
    with pytest.raises(ValueError, match="unknown claim"):
        check_claim("no-such-claim")


def test_summary_lists_every_claim_and_the_counts(verdicts):
    text = summary(list(verdicts.values()))
    for cid in verdicts:
        assert cid[:60] in text
    for label in ("a0", "a1", "a2", "a3", "a4"):
        assert f"\n{label}: " in text
