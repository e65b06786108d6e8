"""The checker's machinery: a claim of the inventory (Claim, load_claims), the verdict on it
(Reading, Verdict), the rules that give a verdict (agree, at_least, below_max, ..., combine, make),
the number formatting the arithmetic text uses (fmt, pct), and the registry of checks (@check,
CHECKS).

    holds        the stated number agrees with the computed one within a tolerance (5 % unless
                 the check says otherwise), or lies inside a computed feasible range;
    off          it disagrees, by a factor or a percentage;
    cannot_hold  it violates a bound that no implementation can beat;
    depends      the claim is ambiguous; each reading is computed and gets its own verdict
                 (`Verdict.readings`), and the readings the article allows bracket the claim: one
                 holds and another does not, or they fall on either side of its number.

`combine` writes the rules down: readings the article never states are context only, a range is
checked at both ends, and a per-step bound does not make a deployment speed-up cannot_hold.
"""

from __future__ import annotations

import dataclasses
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
    """One entry of claims_data.json: the claim in our own words (`claim`, with the article's
    numbers as it gives them), where it stands in the article (`where`), how the check reads it
    (`reading`), the quantities it states and the inputs a check needs."""

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
    where: str = ""
    reading: str = ""
    expected: dict = field(default_factory=dict)
    verdict_hint: str = ""
    why: str = ""

    @property
    def q(self) -> dict:
        return self.quantities


@dataclass(frozen=True)
class Reading:
    """One interpretation of a claim, computed: what it states, what dsim computes, the verdict.

    part: which of the claim's numbers this is, when one reading checks several ("low end" and
    "high end" of a range, or the two rows of a comparison); the parts of one reading (same label)
    must all hold for the reading to hold. unstated: the reading assumes what the article never
    states while its text points elsewhere (top-4 where its code routes to 2 experts); it is shown
    for context and does not decide the verdict (see `combine`).
    """

    label: str
    stated: float
    computed: float
    verdict: str
    note: str = ""
    part: str = ""
    unstated: bool = False

    @property
    def ratio(self) -> float:
        return self.stated / self.computed if self.computed else math.inf

    @property
    def side(self) -> int:
        """0 when the reading holds, else +1 / -1 as dsim's number is above / below the claim's."""
        if self.verdict == "holds":
            return 0
        return 1 if self.computed > self.stated else -1


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


def range_ends(
    label: str,
    lo: float,
    hi: float,
    computed_lo: float,
    computed_hi: float | None = None,
    tol: float = TOLERANCE,
    note: str = "",
    what: str = "",
) -> list[Reading]:
    """A range claim [lo, hi], checked at both ends: the low end holds when dsim's smallest value
    (computed_lo) is not below lo, the high end when its largest (computed_hi, default computed_lo)
    is not above hi, each within tol. Both ends must hold for the reading to hold. `what` names
    the row when one reading checks several ranges ("BERT: low end")."""
    pre = f"{what}: " if what else ""
    top = computed_lo if computed_hi is None else computed_hi
    return [
        Reading(
            label,
            lo,
            computed_lo,
            "holds" if computed_lo >= lo * (1 - tol) else "off",
            note,
            part=pre + "low end",
        ),
        Reading(
            label, hi, top, "holds" if top <= hi * (1 + tol) else "off", note, part=pre + "high end"
        ),
    ]


def per_step_bound(
    label: str,
    stated: float,
    bound: float,
    deployment: bool,
    tol: float = TOLERANCE,
    note: str = "",
) -> Reading:
    """A speed-up against the most one step can gain (the ratio of bytes moved or of peak
    throughputs). Above the bound a step speed-up cannot hold; a deployment speed-up is only off
    under this reading, because a deployment can also change what one step does (a larger batch
    in the memory the smaller weights free, a model that now fits on fewer devices)."""
    if stated <= bound * (1 + tol):
        return Reading(label, stated, bound, "holds", note)
    return Reading(label, stated, bound, "off" if deployment else "cannot_hold", note)


def not_stated(r: Reading | list[Reading]) -> Reading | list[Reading]:
    """The reading(s) flagged as assuming what the article never states (context only)."""
    if isinstance(r, list):
        return [dataclasses.replace(x, unstated=True) for x in r]
    return dataclasses.replace(r, unstated=True)


def _fold_parts(readings: list[Reading]) -> list[Reading]:
    """One reading per label: the parts of a reading hold together, else the part farthest off
    decides (the one with the largest |log(stated / computed)|)."""
    groups: dict[str, list[Reading]] = {}
    for r in readings:
        groups.setdefault(r.label, []).append(r)

    def miss(r: Reading) -> float:
        if r.stated > 0 and r.computed > 0:
            return abs(math.log(r.stated / r.computed))
        return math.inf

    out = []
    for rs in groups.values():
        failing = [r for r in rs if r.verdict != "holds"]
        out.append(max(failing, key=miss) if failing else rs[0])
    return out


# ANCHOR: combine
def combine(readings: tuple[Reading, ...] | list[Reading]) -> str:
    """One verdict for all readings of a claim. The rules, in order:

    1. Only readings the article states or leaves open count; a reading flagged `unstated` (it
       assumes what the article never says while its text points elsewhere) is context. So a
       claim that only matches under an unstated reading is not "depends".
    2. The parts of one reading (a range's low and high end, the rows of a comparison) hold
       together: a range claim is checked at both ends, and fails at the end that misses.
    3. Every counted reading holds: holds.
    4. Some reading holds and another does not, or two readings put dsim's number on either side
       of the claim's (they bracket it): depends; the claim is true for some condition the
       article left out.
    5. Otherwise every reading misses on the same side: cannot_hold when every one breaks a hard
       bound, else off. (A per-step bound gives a deployment speed-up "off", never "cannot_hold":
       see `per_step_bound`.)
    """
    counted = _fold_parts([r for r in readings if not r.unstated])
    if not counted:
        raise ValueError("a claim needs at least one reading the article states or leaves open")
    sides = {r.side for r in counted}
    if sides == {0}:
        return "holds"
    if len(sides) > 1:
        return "depends"
    kinds = {r.verdict for r in counted}
    return "cannot_hold" if kinds == {"cannot_hold"} else "off"


# ANCHOR_END: combine


def make(
    c: Claim,
    readings: list[Reading] | Reading,
    unit: str,
    arithmetic: str | list[str],
    sources: list[str] | tuple[str, ...],
    bound: str = "",
    tol: float = TOLERANCE,
) -> Verdict:
    """The Verdict of claim c from its readings (the first counted one gives stated and computed);
    the readings are appended to the arithmetic when there are several."""
    rs = (readings,) if isinstance(readings, Reading) else tuple(readings)
    text = "\n".join(arithmetic) if isinstance(arithmetic, list) else arithmetic
    if len(rs) > 1:
        text += "\n" + "\n".join(
            f"  reading '{r.label}'"
            + (f", {r.part}" if r.part else "")
            + f": stated {fmt(r.stated)} vs {fmt(r.computed)} -> {r.verdict}"
            + (f" ({r.note})" if r.note else "")
            + (" [not stated by the article: context only]" if r.unstated else "")
            for r in rs
        )
    first = next((r for r in rs if not r.unstated), rs[0])
    return Verdict(
        claim_id=c.id,
        article=c.article,
        topic=c.topic,
        claim=c.claim,
        verdict=combine(rs),
        stated=first.stated,
        computed=first.computed,
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
