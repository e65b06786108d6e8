"""Requests: what a serving system is asked to do, generated (Poisson arrivals) or read from a
trace.

A request arrives at `arrival_s`, brings a prompt of `prompt_tokens` tokens and wants
`output_tokens` tokens back (the first of them comes out of the prefill). Requests with the same
`prefix_id` share their first `prefix_tokens` prompt tokens (a system prompt, a document, the
earlier turns of a conversation): a prefix KV cache can skip recomputing them.

Trace files are CSV (a header naming the columns) or JSON Lines (one object per line), with the
columns arrival_s, prompt_tokens, output_tokens and, optionally, prefix_id and prefix_tokens.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens")
MAX_TOKENS = 1 << 24  # one request's prompt or output: far beyond any model's context
MAX_TRACE_BYTES = 1 << 30


@dataclass(frozen=True)
class Request:
    id: int
    arrival_s: float  # seconds from the start of the trace
    prompt_tokens: int  # >= 1
    output_tokens: int  # >= 1 (the first output token comes from the prefill)
    prefix_id: int | None = None  # requests with the same prefix_id share their first tokens
    prefix_tokens: int = 0  # 0 <= prefix_tokens <= prompt_tokens

    def __post_init__(self):
        where = f"request {self.id}"
        if not (isinstance(self.arrival_s, (int, float)) and math.isfinite(self.arrival_s)):
            raise ValueError(f"{where}: arrival_s must be a finite number, got {self.arrival_s!r}")
        if self.arrival_s < 0:
            raise ValueError(f"{where}: arrival_s must be >= 0, got {self.arrival_s}")
        for name in ("prompt_tokens", "output_tokens"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, np.integer))
                or not 1 <= v <= MAX_TOKENS
            ):
                raise ValueError(
                    f"{where}: {name} must be an integer in [1, {MAX_TOKENS}], got {v!r}"
                )
        p = self.prefix_tokens
        if (
            isinstance(p, bool)
            or not isinstance(p, (int, np.integer))
            or not 0 <= p <= self.prompt_tokens
        ):
            raise ValueError(
                f"{where}: prefix_tokens must be an integer in [0, prompt_tokens="
                f"{self.prompt_tokens}], got {p!r}"
            )
        if p and self.prefix_id is None:
            raise ValueError(f"{where}: prefix_tokens={p} needs a prefix_id")


def lognormal_lengths(
    rng: np.random.Generator, mean: float, cv: float, n: int, name: str
) -> np.ndarray:
    """n integer lengths >= 1 with the given mean: fixed (cv = 0) or lognormal with coefficient of
    variation cv (a long right tail, as prompt and output lengths have)."""
    if not (math.isfinite(mean) and 1 <= mean <= MAX_TOKENS):
        raise ValueError(f"{name} must be a number in [1, {MAX_TOKENS}], got {mean!r}")
    if not (math.isfinite(cv) and 0 <= cv <= 10):
        raise ValueError(f"{name}_cv must be in [0, 10], got {cv!r}")
    if cv == 0:
        return np.full(n, max(1, round(mean)), dtype=np.int64)
    sigma2 = math.log1p(cv * cv)
    x = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)
    return np.clip(np.rint(x), 1, MAX_TOKENS).astype(np.int64)


def poisson_requests(
    rate: float,
    n: int,
    prompt_tokens: float,
    output_tokens: float,
    *,
    prompt_cv: float = 0.0,
    output_cv: float = 0.0,
    shared_prefix: float = 0.0,
    n_prefixes: int = 0,
    seed: int = 0,
) -> list[Request]:
    """n requests arriving as a Poisson process of `rate` requests per second.

    Prompt and output lengths have the given means, fixed or lognormal (`*_cv`). With
    `n_prefixes` > 0, each request's first `shared_prefix` fraction of its prompt is one of
    n_prefixes shared prefixes (chosen uniformly), so that a prefix cache can hit; with the default
    0 no two requests share anything."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number of requests per second > 0, got {rate!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000_000:
        raise ValueError(f"n must be an integer in [1, 10000000], got {n!r}")
    if not (0 <= shared_prefix <= 1):
        raise ValueError(f"shared_prefix must be a fraction in [0, 1], got {shared_prefix!r}")
    if isinstance(n_prefixes, bool) or not isinstance(n_prefixes, int) or n_prefixes < 0:
        raise ValueError(f"n_prefixes must be an integer >= 0, got {n_prefixes!r}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    prompts = lognormal_lengths(rng, prompt_tokens, prompt_cv, n, "prompt_tokens")
    outputs = lognormal_lengths(rng, output_tokens, output_cv, n, "output_tokens")
    ids = rng.integers(0, n_prefixes, n) if n_prefixes else None
    out = []
    for i in range(n):
        pid, ptok = None, 0
        if ids is not None and shared_prefix > 0:
            pid, ptok = int(ids[i]), int(math.floor(shared_prefix * prompts[i]))
        out.append(Request(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]), pid, ptok))
    return out


def _field(row: dict, name: str, where: str, kind: type, default=None):
    v = row.get(name)
    if v is None or v == "":
        if default is not None or name in ("prefix_id",):
            return default
        raise ValueError(f"{where}: missing {name}")
    try:
        if kind is int:
            f = float(v)
            if not f.is_integer():
                raise ValueError
            return int(f)
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: {name} must be a{'n integer' if kind is int else ' number'}, got {v!r}"
        ) from None


def read_trace(path: str | Path) -> list[Request]:
    """Requests from a CSV or JSON Lines trace, sorted by arrival time."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"trace {p} is not a regular file")
    if p.stat().st_size > MAX_TRACE_BYTES:
        raise ValueError(f"trace {p} is larger than {MAX_TRACE_BYTES >> 20} MB")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"trace {p} is not UTF-8 text") from None
    if p.suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{p}:{i}: each line must be a JSON object")
            rows.append((f"{p}:{i}", obj))
    elif p.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"arrival_s", "prompt_tokens", "output_tokens"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{p}: the header lacks {', '.join(sorted(missing))}")
        rows = [(f"{p}:{i}", r) for i, r in enumerate(reader, 2)]
    else:
        raise ValueError(f"trace {p} must end in .csv or .jsonl")
    out = []
    for where, r in rows:
        if None in r:  # csv.DictReader keeps a row's extra fields under None
            raise ValueError(f"{where}: more fields than the header has columns")
        unknown = set(r) - set(TRACE_COLUMNS)
        if unknown:
            names = ", ".join(sorted(repr(k) for k in unknown))
            raise ValueError(f"{where}: unknown column(s) {names}")
        out.append(
            (
                _field(r, "arrival_s", where, float),
                _field(r, "prompt_tokens", where, int),
                _field(r, "output_tokens", where, int),
                _field(r, "prefix_id", where, int),
                _field(r, "prefix_tokens", where, int, 0),
                where,
            )
        )
    if not out:
        raise ValueError(f"trace {p} has no requests")
    out.sort(key=lambda t: t[0])
    reqs = []
    for i, (a, pt, ot, pid, ptok, where) in enumerate(out):
        try:
            reqs.append(Request(i, a, pt, ot, pid, ptok))
        except ValueError as e:
            raise ValueError(f"{where}: {str(e).split(': ', 1)[1]}") from None
    return reqs


def write_trace(requests: list[Request], path: str | Path) -> None:
    """Write requests as CSV (.csv) or JSON Lines (.jsonl)."""
    p = Path(path)
    rows = [
        dict(
            arrival_s=r.arrival_s,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            prefix_id=r.prefix_id,
            prefix_tokens=r.prefix_tokens,
        )
        for r in requests
    ]
    if p.suffix == ".csv":
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, TRACE_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    elif p.suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(f"trace {p} must end in .csv or .jsonl")
