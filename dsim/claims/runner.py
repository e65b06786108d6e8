"""Running the checks: the verdict on one claim or on all of them, counts by article, and the text
table (summary). Importing this module imports every topic module, which registers its checks."""

from __future__ import annotations

from collections import Counter

# The topic modules register their checks in CHECKS when imported.
from dsim.claims import (  # noqa: F401
    compute,
    parameters,
    serving,
    sizes,
    speedups,
    systems,
    training,
)
from dsim.claims.verdict import (
    CHECKS,
    NOT_NUMERIC,
    VERDICTS,
    Claim,
    Verdict,
    fmt,
    get_claim,
    load_claims,
)


# ---------------------------------------------------------------------------------------------
# Running the checks
# ---------------------------------------------------------------------------------------------
def _not_numeric(c: Claim) -> Verdict:
    return Verdict(
        claim_id=c.id,
        article=c.article,
        topic=c.topic,
        claim=c.claim,
        verdict=NOT_NUMERIC,
        reason=c.reason or "not a numeric claim",
        arithmetic=c.note,
    )


def check_claim(claim: Claim | str) -> Verdict:
    """The verdict on one claim (a Claim or its id)."""
    c = get_claim(claim) if isinstance(claim, str) else claim
    if not c.numeric:
        return _not_numeric(c)
    if c.id not in CHECKS:
        raise ValueError(f"numeric claim {c.id!r} has no registered check")
    return CHECKS[c.id](c)


def check_all() -> list[Verdict]:
    """Verdicts on every claim of claims_data.json, in file order (non-numeric ones as
    not_numeric)."""
    return [check_claim(c) for c in load_claims()]


def counts(verdicts: list[Verdict] | None = None) -> dict[str, Counter]:
    """Verdict counts by article label (a0..a4)."""
    out: dict[str, Counter] = {}
    for v in verdicts if verdicts is not None else check_all():
        out.setdefault(v.article_label, Counter())[v.verdict] += 1
    return out


def summary(verdicts: list[Verdict] | None = None, width: int = 60) -> str:
    """A text table of every claim: article, topic, id, verdict, stated, computed, off by."""
    vs = verdicts if verdicts is not None else check_all()
    head = (
        f"{'art':3s} {'topic':13s} {'claim':{width}s} {'verdict':11s} "
        f"{'stated':>10s} {'computed':>10s} {'off by':>8s}"
    )
    rows = [head, "-" * len(head)]
    for v in sorted(vs, key=lambda v: (v.article, v.topic, v.claim_id)):
        s = "" if v.stated is None else fmt(v.stated, 3)
        k = "" if v.computed is None else fmt(v.computed, 3)
        off = v.off_by if v.verdict in ("off", "cannot_hold") else ""
        rows.append(
            f"{v.article_label:3s} {v.topic:13s} {v.claim_id[:width]:{width}s} {v.verdict:11s} "
            f"{s:>10s} {k:>10s} {off:>8s}"
        )
    rows.append("")
    for art, cnt in sorted(counts(vs).items()):
        rows.append(
            f"{art}: " + ", ".join(f"{k} {cnt[k]}" for k in (*VERDICTS, NOT_NUMERIC) if cnt[k])
        )
    return "\n".join(rows)
