"""The real check of the serving simulator: a serving loop that runs dsim.model.Transformer on a
trace of requests in real time, with continuous batching and a batched decode over the KV cache,
and records what the simulator predicts (per request: admission, first token, finish; per step:
its kind, its tokens and its duration), so that the two can be compared.

The policy, exactly (the simulator is configured with the same one):

  * A request becomes visible when the loop's clock (time.perf_counter from the loop's start)
    passes its arrival_s; it joins a FIFO waiting queue.
  * The model's KV cache has max_batch rows (slots); a request holds one from its admission to its
    last token.
  * Each iteration:
      1. prefill: when no request is part-way through its prefill, a slot is free and a request
         waits, the oldest waiting request takes the lowest free slot (it is admitted). Then one
         prefill step of the admitted request: its whole prompt (chunk_tokens None), or its next
         chunk_tokens prompt tokens. The step that completes the prompt gives the first output
         token (greedy). At most one prefill step per iteration.
      2. decode: one batched decode step (greedy) of every running sequence, i.e. every one whose
         prompt is complete, including one whose prefill ended in step 1 of this iteration; each
         gets one more token. A sequence with output_tokens tokens finishes and frees its slot.
  * With nothing running, prefilling or waiting, the loop sleeps until the next arrival.
  * The prompt is always prefilled in full: prefix_id is not used for caching (requests with the
    same prefix_id do get the same first prefix_tokens token ids).
  * Prompt token ids are random (a seeded torch.Generator); the output tokens are the model's.

Times are seconds from the loop's start, each read after synchronizing the device (CUDA), so a
step's duration is its real time on the device plus the host's. A sequence's first token exists at
the end of its last prefill step (first_token_s); its last at the end of the decode step that
makes it (finish_s); a request of one output token finishes at its first token.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from dsim.model import Transformer
from dsim.serving.workload import Request


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request (times in seconds from the loop's start)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    slot: int
    admitted_s: float  # start of its first prefill step
    first_token_s: float  # end of its last prefill step
    finish_s: float  # end of the step that made its last token

    @property
    def ttft_s(self) -> float:
        """Time to first token, from arrival."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None for a request of one output token."""
        if self.output_tokens == 1:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float:
        """End-to-end latency, from arrival to the last token."""
        return self.finish_s - self.arrival_s


@dataclass(frozen=True)
class StepRecord:
    """One model call of the loop: a prefill step or a decode step of iteration `iteration`."""

    iteration: int
    kind: str  # "prefill" or "decode"
    start_s: float
    duration_s: float
    n_running: int  # slots held during the step (running sequences and the one prefilling)
    n_decode: int  # sequences decoded (0 for a prefill)
    decode_context_tokens: int  # sum over them of their cached tokens (their positions)
    prefill_tokens: int  # prompt tokens computed (0 for a decode)
    prefill_context_tokens: int  # prompt tokens cached before this chunk (0 without chunking)
    request_id: int | None  # the prefilled request (None for a decode)


@dataclass
class RealRun:
    """The record of one serve_trace run: per request and per step (model call); output_ids: the
    token ids each request was given (request id -> output_tokens ids), left out of to_dict."""

    requests: list[RequestRecord]
    iterations: list[StepRecord]
    output_ids: dict[int, list[int]] = field(default_factory=dict)

    def to_dict(self, columns: bool = False) -> dict[str, Any]:
        """{"requests": [record, ...], "iterations": [record, ...]} with each record a dict; with
        columns, each list as one dict of columns instead ({"id": [...], ...}), a third of the
        size in JSON."""
        out = {
            "requests": [asdict(r) for r in self.requests],
            "iterations": [asdict(s) for s in self.iterations],
        }
        if columns:
            return {k: _columns(v, t) for (k, v), t in zip(out.items(), _RECORDS)}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RealRun:
        """The run from to_dict's output, in rows or columns."""
        lists = []
        for key, kind in zip(("requests", "iterations"), _RECORDS):
            value = d[key]
            if isinstance(value, dict):  # columns
                n = len(next(iter(value.values()), []))
                value = [{f: value[f][i] for f in value} for i in range(n)]
            lists.append([kind(**r) for r in value])
        return cls(*lists)

    def summary(self) -> dict[str, float]:
        """Counts and the p50 / p90 of TTFT, TPOT (requests of 2+ output tokens) and end-to-end
        latency, in seconds."""
        out: dict[str, float] = {
            "requests": len(self.requests),
            "iterations": len({s.iteration for s in self.iterations}),
            "prefill_steps": sum(s.kind == "prefill" for s in self.iterations),
            "decode_steps": sum(s.kind == "decode" for s in self.iterations),
            "makespan_s": max(r.finish_s for r in self.requests),
        }
        tpot = [r.tpot_s for r in self.requests if r.tpot_s is not None]
        series = {
            "ttft": [r.ttft_s for r in self.requests],
            "tpot": tpot,
            "e2e": [r.e2e_s for r in self.requests],
        }
        for name, values in series.items():
            for q in (50, 90):
                out[f"{name}_p{q}_s"] = float(np.percentile(values, q)) if values else math.nan
        return out


_RECORDS = (RequestRecord, StepRecord)


def _columns(rows: list[dict[str, Any]], kind: type) -> dict[str, list]:
    return {f.name: [r[f.name] for r in rows] for f in fields(kind)}


@dataclass
class _Sequence:
    """A request in flight (mutable loop state)."""

    request: Request
    prompt: torch.Tensor  # [prompt_tokens] token ids on the device
    slot: int = -1
    prefilled: int = 0  # prompt tokens in the cache
    generated: int = 0  # output tokens made
    times: dict[str, float] = field(default_factory=dict)

    def record(self, finish_s: float) -> RequestRecord:
        r = self.request
        return RequestRecord(
            r.id,
            r.arrival_s,
            r.prompt_tokens,
            r.output_tokens,
            self.slot,
            self.times["admitted_s"],
            self.times["first_token_s"],
            finish_s,
        )


def serve_trace(
    model: Transformer,
    requests: list[Request],
    *,
    max_batch: int,
    chunk_tokens: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> RealRun:
    """Serve `requests` in real time with the policy of this module's docstring and return what
    happened. max_batch: running sequences at most (cache slots, <= model.args.max_batch_size);
    chunk_tokens: prompt tokens per prefill step (None: the whole prompt); device: where the token
    ids go (None: the model's device); seed: the prompts' token ids."""
    args = model.args
    _check(requests, args.max_seq_len, args.max_batch_size, max_batch, chunk_tokens)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    prompts = _prompt_ids(order, args.vocab_size, seed, device)
    free = list(range(max_batch))  # a heap: the lowest free slot first
    last = torch.zeros(max_batch, dtype=torch.long, device=device)  # each slot's newest token
    waiting: deque[_Sequence] = deque()
    running: dict[int, _Sequence] = {}  # slot -> a sequence with its whole prompt cached
    prefilling: _Sequence | None = None
    done: list[RequestRecord] = []
    emitted: list[tuple[list[int], torch.Tensor]] = []  # (request ids, their new token ids)
    steps: list[StepRecord] = []
    arrived, iteration = 0, 0
    model.eval()
    t0 = time.perf_counter()

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        while len(done) < len(order):
            now = clock()
            while arrived < len(order) and order[arrived].arrival_s <= now:
                waiting.append(_Sequence(order[arrived], prompts[order[arrived].id]))
                arrived += 1
            if prefilling is None and not running and not waiting:
                time.sleep(max(0.0, order[arrived].arrival_s - now))
                continue
            if prefilling is None and waiting and free:
                prefilling = waiting.popleft()
                prefilling.slot = heapq.heappop(free)
            if prefilling is not None:
                seq, start = prefilling, clock()
                seq.times.setdefault("admitted_s", start)
                n_running = len(running) + 1
                first = seq.prefilled
                n = seq.request.prompt_tokens - first
                n = n if chunk_tokens is None else min(n, chunk_tokens)
                seq.prefilled += n
                complete = seq.prefilled == seq.request.prompt_tokens
                chunk = seq.prompt[None, first : first + n]  # [1, n]
                nxt = prefill_step(model, chunk, seq.slot, first, complete)
                if nxt is not None:
                    last[seq.slot] = nxt[0]
                    emitted.append(([seq.request.id], nxt))
                end = clock()
                steps.append(
                    StepRecord(
                        iteration,
                        "prefill",
                        start,
                        end - start,
                        n_running,
                        n_decode=0,
                        decode_context_tokens=0,
                        prefill_tokens=n,
                        prefill_context_tokens=first,
                        request_id=seq.request.id,
                    )
                )
                if complete:
                    prefilling, seq.generated = None, 1
                    seq.times["first_token_s"] = end
                    if seq.request.output_tokens == 1:
                        done.append(seq.record(end))
                        heapq.heappush(free, seq.slot)
                    else:
                        running[seq.slot] = seq
            if running:
                start = clock()
                slots = sorted(running)
                seqs = [running[s] for s in slots]
                positions = [s.request.prompt_tokens + s.generated - 1 for s in seqs]
                n_running = len(running) + (prefilling is not None)
                at = torch.tensor(slots, device=device)
                nxt = decode_step(model, last[at][:, None], slots, positions)  # [B]
                last[at] = nxt
                emitted.append(([s.request.id for s in seqs], nxt))
                end = clock()
                steps.append(
                    StepRecord(
                        iteration,
                        "decode",
                        start,
                        end - start,
                        n_running,
                        n_decode=len(seqs),
                        decode_context_tokens=sum(positions),
                        prefill_tokens=0,
                        prefill_context_tokens=0,
                        request_id=None,
                    )
                )
                for seq in seqs:
                    seq.generated += 1
                    if seq.generated == seq.request.output_tokens:
                        done.append(seq.record(end))
                        del running[seq.slot]
                        heapq.heappush(free, seq.slot)
            iteration += 1
    output_ids: dict[int, list[int]] = {r.id: [] for r in order}
    for ids, new in emitted:
        for i, token in zip(ids, new.tolist()):
            output_ids[i].append(token)
    return RealRun(sorted(done, key=lambda r: r.id), steps, output_ids)


def prefill_step(
    model: Transformer, chunk: torch.Tensor, slot: int, start_pos: int, first_token: bool
) -> torch.Tensor | None:
    """One prefill step of one request in cache row `slot`: chunk [1, n] prompt ids at positions
    start_pos..start_pos+n-1. When the chunk ends the prompt (first_token), the greedy first
    output token [1] from the last position's logits (the head runs on that position only), else
    None."""
    h = model.hidden(chunk, start_pos=start_pos, use_cache=True, slots=torch.tensor([slot]))
    if not first_token:
        return None
    return model.head(model.norm(h[:, -1])).argmax(-1)  # [1]


def decode_step(
    model: Transformer, tokens: torch.Tensor, slots: list[int], positions: list[int]
) -> torch.Tensor:
    """One batched decode step: tokens [B, 1] (each sequence's newest token) at positions[b] of
    cache row slots[b] -> the greedy next token ids [B]."""
    logits = model(
        tokens, use_cache=True, slots=torch.tensor(slots), positions=torch.tensor(positions)
    )  # [B, 1, V]; slots and positions stay on the host, where the model checks them
    return logits[:, -1].argmax(-1)


def _check(
    requests: list[Request],
    max_seq_len: int,
    max_batch_size: int,
    max_batch: int,
    chunk_tokens: int | None,
) -> None:
    """ValueError naming the first bad argument or request."""

    def whole(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if not whole(max_batch) or not 1 <= max_batch <= max_batch_size:
        raise ValueError(
            f"max_batch = {max_batch!r} must be an integer in [1, ModelArgs.max_batch_size="
            f"{max_batch_size}]"
        )
    if chunk_tokens is not None and (not whole(chunk_tokens) or chunk_tokens < 1):
        raise ValueError(f"chunk_tokens = {chunk_tokens!r} must be None or an integer >= 1")
    if not requests:
        raise ValueError("requests is empty: a trace needs at least one request")
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be distinct")
    for r in requests:
        if not isinstance(r, Request):
            raise ValueError(f"requests must be Request objects, got {type(r).__name__}")
        if not (math.isfinite(r.arrival_s) and r.arrival_s >= 0):
            raise ValueError(f"request {r.id}: arrival_s = {r.arrival_s} must be finite and >= 0")
        if not whole(r.prompt_tokens) or r.prompt_tokens < 1:
            raise ValueError(f"request {r.id}: prompt_tokens = {r.prompt_tokens} must be >= 1")
        if not whole(r.output_tokens) or r.output_tokens < 1:
            raise ValueError(f"request {r.id}: output_tokens = {r.output_tokens} must be >= 1")
        if r.prompt_tokens + r.output_tokens - 1 > max_seq_len:
            raise ValueError(
                f"request {r.id}: prompt_tokens + output_tokens - 1 = "
                f"{r.prompt_tokens + r.output_tokens - 1} exceeds ModelArgs.max_seq_len="
                f"{max_seq_len}"
            )
        if not 0 <= r.prefix_tokens <= r.prompt_tokens:
            raise ValueError(
                f"request {r.id}: prefix_tokens = {r.prefix_tokens} must be in "
                f"[0, prompt_tokens={r.prompt_tokens}]"
            )


def _prompt_ids(
    requests: list[Request], vocab_size: int, seed: int, device: torch.device
) -> dict[int, torch.Tensor]:
    """Random prompt token ids per request id; requests of one prefix_id share its first
    prefix_tokens ids. Made before the loop starts, so that they cost it no time."""
    gen = torch.Generator().manual_seed(seed)
    longest: dict[int, int] = {}
    for r in requests:
        if r.prefix_id is not None:
            longest[r.prefix_id] = max(longest.get(r.prefix_id, 0), r.prefix_tokens)
    prefixes = {p: torch.randint(0, vocab_size, (n,), generator=gen) for p, n in longest.items()}
    out = {}
    for r in requests:
        shared = prefixes[r.prefix_id][: r.prefix_tokens] if r.prefix_id is not None else None
        n_shared = 0 if shared is None else len(shared)
        own = torch.randint(0, vocab_size, (r.prompt_tokens - n_shared,), generator=gen)
        ids = own if shared is None else torch.cat([shared, own])
        out[r.id] = ids.to(device)
    return out
