"""Checking the seed articles' numbers with dsim.

Five Chinese articles about DeepSeek (the book's seed material) make many numeric claims.
`claims_data.json` (package data in this package; `claims_notes.md` beside it explains it)
inventories every one of them: an English paraphrase, the stated quantities, the inputs a check
needs, the topic, and whether the claim is numeric at all (benchmark scores, advice and code
descriptions are not). This package recomputes each numeric claim with
dsim's cost models and gives it a verdict:

    holds        the stated number agrees with the computed one within a tolerance (5 % unless
                 the check says otherwise), or lies inside a computed feasible range;
    off          it disagrees, by a factor or a percentage;
    cannot_hold  it violates a bound that no implementation can beat: bytes below bits x count / 8,
                 active parameters below top-k of the experts, a speed-up above the ratio of peak
                 throughputs and of bytes moved, a model larger than the memory it must fit in;
    depends      the claim is ambiguous; each reading is computed and gets its own verdict
                 (`Verdict.readings`), and the readings the article allows bracket the claim.

The rules that combine readings into a verdict are written down in `verdict.combine` (readings the
article never states are context; a range is checked at both ends; a per-step bound does not make a
deployment speed-up cannot_hold). `report` renders the claims as chapter 9's tables.

A claim that is not numeric gets the verdict `not_numeric` with the inventory's reason.

Each kind of check is one small function registered for the claim ids it checks
(`@check("a1-fp16-16gb", ...)`); `check_all()` runs them and `summary()` prints the table.
Every verdict carries the arithmetic as text and the sources it used (dsim functions, the GPU
catalog, committed measurements, published figures in `REFERENCES`).

    from dsim.claims import check_all, check_claim, summary
    print(check_claim("a3-calc-moe-flops").arithmetic)
    print(summary())
One concept per module:

    verdict     Claim, Reading, Verdict, the verdict rules (agree, at_least, range_ends,
                per_step_bound, not_stated, combine, ...), fmt, @check
    references  published figures (REFERENCES, ref, src) and reference_checks()
    models      the models the checks use besides dsim's presets
    parameters, compute, sizes, speedups, serving, training, systems
                the checks of each topic, registered in CHECKS when imported
    runner      check_claim, check_all, counts, summary
    report      the HTML tables of chapter 9 (article_table, unchecked_table, counts_table)
"""

from dsim.claims.compute import calculate_moe_flops_as_written, window_length_for, window_saving
from dsim.claims.models import (
    DEEPSEEK_MOE,
    deepseek_llm_7b,
    deepseek_llm_67b,
    deepseek_models,
    llama31_8b,
    moe_8b,
    quant_bytes_per_param,
    toy_moe,
)
from dsim.claims.parameters import range_check
from dsim.claims.references import REFERENCES, ref, reference_checks, src
from dsim.claims.runner import check_all, check_claim, counts, summary

# notebook 09 shows where a measured speed-up comes from
from dsim.claims.speedups import _measured_speedup as _measured_speedup
from dsim.claims.speedups import serving_speedup
from dsim.claims.verdict import (
    ARTICLES,
    CHECKS,
    NOT_NUMERIC,
    TOLERANCE,
    VERDICTS,
    Claim,
    Reading,
    Verdict,
    above_min,
    agree,
    at_least,
    at_most,
    below_max,
    check,
    combine,
    fmt,
    get_claim,
    in_range,
    load_claims,
    make,
    not_stated,
    pct,
    per_step_bound,
    range_ends,
    within,
)

__all__ = [
    "ARTICLES",
    "CHECKS",
    "DEEPSEEK_MOE",
    "NOT_NUMERIC",
    "REFERENCES",
    "TOLERANCE",
    "VERDICTS",
    "Claim",
    "Reading",
    "Verdict",
    "above_min",
    "agree",
    "at_least",
    "at_most",
    "below_max",
    "calculate_moe_flops_as_written",
    "check",
    "check_all",
    "check_claim",
    "combine",
    "counts",
    "deepseek_llm_67b",
    "deepseek_llm_7b",
    "deepseek_models",
    "fmt",
    "get_claim",
    "in_range",
    "llama31_8b",
    "load_claims",
    "make",
    "moe_8b",
    "not_stated",
    "pct",
    "per_step_bound",
    "quant_bytes_per_param",
    "range_check",
    "range_ends",
    "ref",
    "reference_checks",
    "serving_speedup",
    "src",
    "summary",
    "toy_moe",
    "window_length_for",
    "window_saving",
    "within",
]
