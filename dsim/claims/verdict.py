"""The checker's machinery: a claim of the inventory (Claim, load_claims), the verdict on it
(Reading, Verdict), the rules that give a verdict (agree, at_least, below_max, ..., combine, make),
the number formatting the arithmetic text uses (fmt, pct), and the registry of checks (@check,
CHECKS).

    holds        the stated number agrees with the computed one within a tolerance (5 % unless
                 the check says otherwise), or lies inside a computed feasible range;
    off          it disagrees, by a factor or a percentage;
    cannot_hold  it violates a bound that no implementation can beat;
    depends      the claim is ambiguous; each reading is computed and gets its own verdict
                 (`Verdict.readings`), and the readings disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

VERDICTS = ("holds", "off", "cannot_hold", "depends")
NOT_NUMERIC = "not_numeric"
TOLERANCE = 0.05
ARTICLES = {
    "000_648e38935dd2b9e3.txt": "a0: parameter scale (1.5T MoE, offloading)",
    "001_04275804c2f0b6f3.txt": "a1: DeepSeek-8B engineering",
    "002_ca5ffbd08cee82b3.txt": "a2: principles and low compute",
    "003_7d9d29d2b6dc4aed.txt": "a3: parameter guide",
    "004_0d1d97e7b669c1ba.txt": "a4: architecture and optimisation",
}


# ---------------------------------------------------------------------------------------------
# Claims and verdicts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One entry of claims_data.json."""

    id: str
    article: str
    claim: str
    topic: str
    numeric: bool
    check: str
    quantities: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    reason: str = ""
    note: str = ""
    formula: str = ""
    expected: dict = field(default_factory=dict)
    verdict_hint: str = ""
    why: str = ""

    @property
    def q(self) -> dict:
        return self.quantities


@dataclass(frozen=True)
class Reading:
    """One interpretation of a claim, computed: what it states, what dsim computes, the verdict."""

    label: str
    stated: float
    computed: float
    verdict: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.stated / self.computed if self.computed else math.inf


@dataclass(frozen=True)
class Verdict:
    """The check of one claim.

    stated, computed: the claim's number and dsim's (of the first reading) in `unit`;
    ratio = stated / computed. verdict: holds / off / cannot_hold / depends, or not_numeric.
    arithmetic: the computation as text. sources: what it used. readings: every interpretation
    with its own verdict (one for an unambiguous claim). reason: why a claim is not checked.
    """

    claim_id: str
    article: str
    topic: str
    claim: str
    verdict: str
    stated: float | None = None
    computed: float | None = None
    unit: str = ""
    arithmetic: str = ""
    sources: tuple[str, ...] = ()
    readings: tuple[Reading, ...] = ()
    tolerance: float = TOLERANCE
    bound: str = ""
    reason: str = ""

    @property
    def ratio(self) -> float | None:
        if self.stated is None or not self.computed:
            return None
        return self.stated / self.computed

    @property
    def off_by(self) -> str:
        """'x2.5' when stated and computed differ by a factor of 2 or more, else '+12.0%'."""
        r = self.ratio
        if r is None:
            return ""
        if r >= 2 or r <= 0.5:
            return f"x{max(r, 1 / r):.3g}" if r > 0 else "sign"
        return f"{(r - 1) * 100:+.1f}%"

    @property
    def article_label(self) -> str:
        return ARTICLES.get(self.article, self.article)[:2]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_claims() -> tuple[Claim, ...]:
    """Every claim of claims_data.json, in file order."""
    text = resources.files("dsim.claims").joinpath("claims_data.json").read_text(encoding="utf-8")
    known = set(Claim.__dataclass_fields__)
    return tuple(Claim(**{k: v for k, v in d.items() if k in known}) for d in json.loads(text))


def get_claim(claim_id: str) -> Claim:
    for c in load_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"unknown claim {claim_id!r}; see [c.id for c in load_claims()]")


# ---------------------------------------------------------------------------------------------
# Formatting and the verdict rules
# ---------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 4) -> str:
    """A number for the arithmetic text: 1,234 / 1.536e12 / 0.0113."""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (abs(x) >= 1 and float(x).is_integer() and abs(x) < 1e7):
        return f"{int(x):,d}" if abs(x) < 1e7 else f"{x:.{digits}g}".replace("e+", "e")
    return f"{x:.{digits}g}".replace("e+", "e").replace("e-0", "e-")


def pct(x: float, digits: int = 3) -> str:
    return f"{x * 100:.{digits}g} %"


def agree(
    label: str, stated: float, computed: float, tol: float = TOLERANCE, note: str = ""
) -> Reading:
    """The claim states a value: holds within tol, else off."""
    ok = abs(stated / computed - 1) <= tol if computed else stated == 0
    return Reading(label, stated, computed, "holds" if ok else "off", note)


def at_least(
    label: str,
    stated: float,
    computed: float,
    tol: float = TOLERANCE,
    note: str = "",
    fail: str = "off",
) -> Reading:
    """The claim says 'over / at least stated': holds if the computed value reaches it."""
    return Reading(
        label, stated, computed, "holds" if computed >= stated * (1 - tol) else fail, note
    )


def at_most(
    label: str,
    stated: float,
    computed: float,
    tol: float = TOLERANCE,
    note: str = "",
    fail: str = "off",
) -> Reading:
    """The claim says 'under / at most stated': holds if the computed value stays below it. With
    fail="cannot_hold" the computed value is a floor no implementation can go below."""
    return Reading(
        label, stated, computed, "holds" if computed <= stated * (1 + tol) else fail, note
    )


def below_max(
    label: str, stated: float, bound: float, tol: float = TOLERANCE, note: str = ""
) -> Reading:
    """stated must not exceed a physical or logical maximum `bound` (a speed-up, a capacity)."""
    return Reading(
        label, stated, bound, "cannot_hold" if stated > bound * (1 + tol) else "holds", note
    )


def above_min(
    label: str, stated: float, bound: float, tol: float = TOLERANCE, note: str = ""
) -> Reading:
    """stated must not fall below a physical or logical minimum `bound` (bytes, active
    parameters)."""
    return Reading(
        label, stated, bound, "cannot_hold" if stated < bound * (1 - tol) else "holds", note
    )


def within(label: str, stated: float, lo: float, hi: float, note: str = "") -> Reading:
    """The claim's value must lie in a computed feasible range [lo, hi]; computed = the midpoint."""
    return Reading(label, stated, (lo + hi) / 2, "holds" if lo <= stated <= hi else "off", note)


def in_range(label: str, lo: float, hi: float, computed: float, note: str = "") -> Reading:
    """The claim states a range [lo, hi]: holds if the computed value lies in it; stated = the
    midpoint."""
    return Reading(label, (lo + hi) / 2, computed, "holds" if lo <= computed <= hi else "off", note)


def combine(readings: tuple[Reading, ...] | list[Reading]) -> str:
    """One verdict for all readings: theirs when they agree, else depends."""
    kinds = {r.verdict for r in readings}
    return kinds.pop() if len(kinds) == 1 else "depends"


def make(
    c: Claim,
    readings: list[Reading] | Reading,
    unit: str,
    arithmetic: str | list[str],
    sources: list[str] | tuple[str, ...],
    bound: str = "",
    tol: float = TOLERANCE,
) -> Verdict:
    """The Verdict of claim c from its readings (the first one gives stated and computed); the
    readings are appended to the arithmetic when there are several."""
    rs = (readings,) if isinstance(readings, Reading) else tuple(readings)
    text = "\n".join(arithmetic) if isinstance(arithmetic, list) else arithmetic
    if len(rs) > 1:
        text += "\n" + "\n".join(
            f"  reading '{r.label}': stated {fmt(r.stated)} vs {fmt(r.computed)} -> {r.verdict}"
            + (f" ({r.note})" if r.note else "")
            for r in rs
        )
    return Verdict(
        claim_id=c.id,
        article=c.article,
        topic=c.topic,
        claim=c.claim,
        verdict=combine(rs),
        stated=rs[0].stated,
        computed=rs[0].computed,
        unit=unit,
        arithmetic=text,
        sources=tuple(sources),
        readings=rs,
        tolerance=tol,
        bound=bound,
    )


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
CHECKS: dict[str, Callable[[Claim], Verdict]] = {}


def check(*claim_ids: str) -> Callable[[Callable[[Claim], Verdict]], Callable[[Claim], Verdict]]:
    """Register a check function for these claim ids."""

    def register(fn: Callable[[Claim], Verdict]) -> Callable[[Claim], Verdict]:
        for cid in claim_ids:
            if cid in CHECKS:
                raise ValueError(f"claim {cid!r} already has a check ({CHECKS[cid].__name__})")
            CHECKS[cid] = fn
        return fn

    return register
