"""The claims as a reader sees them: HTML tables for notebook 09 and the book, built from the
verdicts and the inventory's text (the claim in our words, where it stands, how it is read).

    article_table(verdicts, "a0")   every numeric claim of one article, by topic: the claim and
                                     where it stands, the article's number over dsim's, the
                                     verdict; the reading, the computation and every reading's
                                     verdict fold out below the claim
    unchecked_table(verdicts)        the claims that are not numeric, with the reason
    counts_table(verdicts)           verdicts by article

The tables are sized for a text column of about 700 px: three columns, text that wraps, the
arithmetic in a block that scrolls inside itself.
"""

from __future__ import annotations

import html
from collections import Counter

from dsim.claims.verdict import ARTICLES, NOT_NUMERIC, VERDICTS, Verdict, fmt, get_claim

COLORS = {
    "holds": "#1e6b1e",
    "off": "#9a5b00",
    "cannot_hold": "#b00020",
    "depends": "#1f5fa8",
    NOT_NUMERIC: "#666666",
}
TOPICS = {
    "params": "Parameters",
    "flops": "FLOPs",
    "memory": "Memory",
    "kv_cache": "KV cache",
    "quantization": "Quantization",
    "throughput": "Speed and latency",
    "communication": "Communication",
    "training_cost": "Training cost and data",
    "energy": "Energy",
    "other": "Other",
}
_TABLE = "width:100%;table-layout:fixed;border-collapse:collapse;font-size:0.85em"
_CELL = "padding:3px 5px;vertical-align:top;border-top:1px solid #ddd;overflow-wrap:anywhere"
_PRE = "white-space:pre-wrap;font-size:0.85em;max-height:24em;overflow:auto"


def badge(verdict: str) -> str:
    """The verdict in its colour ('cannot_hold' written as 'cannot hold')."""
    text = verdict.replace("_", " ")
    return f"<b style='color:{COLORS[verdict]}'>{text}</b>"


def label(v: Verdict, index: int) -> str:
    """'a0.3': the article and the claim's place among its numeric claims."""
    return f"{v.article_label}.{index}"


def readings_table(v: Verdict) -> str:
    """Every reading of a claim: its part, the stated and the computed number, its verdict."""
    rows = "".join(
        f"<tr><td style='{_CELL}'>{html.escape(r.label)}"
        + (f" <i>({html.escape(r.part)})</i>" if r.part else "")
        + (" <small>[not stated by the article: context]</small>" if r.unstated else "")
        + f"</td><td style='{_CELL}'>{fmt(r.stated, 4)}</td><td style='{_CELL}'>"
        f"{fmt(r.computed, 4)}</td><td style='{_CELL}'>{badge(r.verdict)}</td></tr>"
        for r in v.readings
    )
    head = "".join(
        f"<th style='{_CELL};width:{w}'>{h}</th>"
        for h, w in (("reading", "52%"), ("stated", "16%"), ("dsim", "16%"), ("verdict", "16%"))
    )
    return f"<table style='{_TABLE}'><tr>{head}</tr>{rows}</table>"


def claim_row(v: Verdict, index: int) -> str:
    """One numeric claim as a table row: the claim and where it stands, the article's number over
    dsim's, the verdict; the reading and the computation fold out beneath the claim."""
    c = get_claim(v.claim_id)
    off = f"<br><small>{v.off_by}</small>" if v.verdict in ("off", "cannot_hold") else ""
    bound = f"<p><i>Bound:</i> {html.escape(v.bound)}</p>" if v.bound else ""
    check = (
        "<details><summary><small>reading and computation</small></summary>"
        f"<p><i>Reading:</i> {html.escape(c.reading)}</p>"
        f"<pre style='{_PRE}'>{html.escape(v.arithmetic)}</pre>{bound}"
        f"{readings_table(v)}<p><small>Sources: {html.escape('; '.join(v.sources))}"
        f" &middot; claim id <code>{v.claim_id}</code></small></p></details>"
    )
    text = (
        f"<b>{label(v, index)}</b> {html.escape(c.claim)} <small>({html.escape(c.where)})</small>"
        f"{check}"
    )
    unit = f"<br><small>{html.escape(v.unit)}</small>" if v.unit else ""
    numbers = f"{fmt(v.stated, 3)}<br>{fmt(v.computed, 3)}{unit}"
    cells = (text, numbers, badge(v.verdict) + off)
    return "<tr>" + "".join(f"<td style='{_CELL}'>{x}</td>" for x in cells) + "</tr>"


def numeric_by_article(verdicts: list[Verdict], article: str) -> list[Verdict]:
    """The numeric verdicts of one article ('a0'..'a4') in inventory order."""
    return [v for v in verdicts if v.article_label == article and v.verdict != NOT_NUMERIC]


def article_table(verdicts: list[Verdict], article: str) -> str:
    """Every numeric claim of one article, grouped by topic, as one table."""
    vs = numeric_by_article(verdicts, article)
    index = {v.claim_id: i + 1 for i, v in enumerate(vs)}
    head = "".join(
        f"<th style='{_CELL};width:{w};text-align:left'>{h}</th>"
        for h, w in (("claim", "70%"), ("article<br>dsim", "15%"), ("verdict", "15%"))
    )
    rows = []
    for topic in TOPICS:
        group = [v for v in vs if v.topic == topic]
        if group:
            rows.append(
                f"<tr><th colspan='4' style='{_CELL};text-align:left'>{TOPICS[topic]}</th></tr>"
            )
            rows += [claim_row(v, index[v.claim_id]) for v in group]
    if len(rows) != len(vs) + len({v.topic for v in vs}):
        raise ValueError(f"a claim of {article} has a topic outside {list(TOPICS)}")
    return f"<table style='{_TABLE}'><tr>{head}</tr>{''.join(rows)}</table>"


def unchecked_table(verdicts: list[Verdict]) -> str:
    """The claims that are not numeric: the claim, where, and why it is not checked."""
    rows = "".join(
        f"<tr><td style='{_CELL}'><b>{v.article_label}</b> {html.escape(v.claim)} <small>("
        f"{html.escape(get_claim(v.claim_id).where)})</small></td>"
        f"<td style='{_CELL}'>{html.escape(v.reason)}</td></tr>"
        for v in verdicts
        if v.verdict == NOT_NUMERIC
    )
    head = f"<tr><th style='{_CELL};width:64%'>claim</th><th style='{_CELL}'>not checked</th></tr>"
    return f"<table style='{_TABLE}'>{head}{rows}</table>"


def counts_table(verdicts: list[Verdict]) -> str:
    """Verdicts by article, with a row of totals."""
    kinds = (*VERDICTS, NOT_NUMERIC)
    by = {a[:2]: Counter() for a in ARTICLES.values()}
    for v in verdicts:
        by[v.article_label][v.verdict] += 1
    by["all"] = sum(by.values(), start=Counter())
    head = "".join(f"<th style='{_CELL}'>{badge(k)}</th>" for k in kinds)
    rows = "".join(
        f"<tr><td style='{_CELL}'>{a}</td>"
        + "".join(f"<td style='{_CELL};text-align:right'>{n[k]}</td>" for k in kinds)
        + "</tr>"
        for a, n in by.items()
    )
    return f"<table style='{_TABLE}'><tr><th style='{_CELL}'>article</th>{head}</tr>{rows}</table>"
