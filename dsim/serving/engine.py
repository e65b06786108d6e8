"""The serving simulator: requests through a scheduler, step by step, on units of GPUs.

A *pool* is a set of identical *units* (a deployment unit: e.g. DeepSeek's decode unit of 144
H800s, expert-parallel over all of them), each of `ranks` attention ranks (data-parallel
attention: one GPU, or one tensor-parallel group). A unit runs steps back to back while it has
work; all of its ranks take part in every step (the experts' all-to-all synchronises them), so a
step lasts as long as its busiest rank's step (`StepTimer` of that rank's `StepShape`).

The scheduler, per rank, every step (continuous batching):
1. admit waiting sequences to the running batch while the batch is below `max_batch` and the KV
   cache has room for them;
2. decode every running sequence once: 1 token, plus the accepted MTP draft tokens (each of
   `mtp_draft_tokens` drafts is accepted with probability `mtp_acceptance` if all earlier ones
   were; the step verifies 1 + drafts tokens per sequence);
3. prefill (chunked): up to `chunk_tokens` new prompt tokens, minus the decode tokens of a
   colocated rank (with `balance_prefill`, fewer on a rank whose chunk would outlast the median
   rank's step), taken from the head of the rank's prefill queue. A prompt's first chunk looks
   its prefix up in the prefix cache; hit tokens are not recomputed (they are attended to). The
   step that ends a prompt gives its first output token.
A sequence whose KV cache no longer fits is preempted (newest first) and recomputed: it goes back
to prefill with its prompt and the tokens generated so far.

Pools are colocated (one pool does both) or disaggregated (a prefill pool hands finished prompts,
with their first token, to a decode pool, after `kv_transfer_s`). Arriving work goes to the least
loaded rank of the pool (queued prefill tokens; running and waiting sequences).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dsim.serving.prefix_cache import PrefixCache
from dsim.serving.step_cost import StepShape, StepTimer
from dsim.serving.workload import Request

ROLES = ("both", "prefill", "decode")


@dataclass
class Pool:
    """`units` units of `ranks` attention ranks, `gpus` GPUs per unit, in one role."""

    role: str
    units: int
    ranks: int
    gpus: int
    step_time: StepTimer
    kv_capacity_tokens: float  # per rank
    max_batch: int = 256  # running sequences per rank
    chunk_tokens: int = 8192  # prefill tokens per rank per step
    mixed_steps: bool = True  # colocated: prefill chunks ride along with decode in one step;
    # False: a step is either a prefill (of the first waiting prompt) or a decode, alternately
    balance_prefill: bool = False  # size each rank's prompt chunk so that no rank's step outlasts
    # the median rank's (a core-attention balancer: ranks that attend to long contexts take fewer
    # tokens); False: every rank fills its chunk_tokens

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        for name in ("units", "ranks", "gpus", "max_batch", "chunk_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 20:
                raise ValueError(f"{name} must be an integer in [1, {1 << 20}], got {v!r}")
        if not self.kv_capacity_tokens >= 1:
            raise ValueError(f"kv_capacity_tokens must be >= 1, got {self.kv_capacity_tokens!r}")


@dataclass
class Trace:
    """What happened: per request, per step, and the system's occupancy over time."""

    arrival: np.ndarray
    admitted: np.ndarray  # start of the first prefill (a preempted request's recompute is later)
    first_token: np.ndarray
    finish: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    hit_tokens: np.ndarray
    preemptions: np.ndarray
    steps: dict[str, list] = field(default_factory=dict)  # per pool role: (start, end, tokens...)
    occupancy: list[tuple[float, int]] = field(default_factory=list)  # (time, requests in system)
    prefix_hit_rate: float = 0.0
    pools: tuple = ()


class _Unit:
    def __init__(self, pool: Pool, index: int):
        self.pool, self.index = pool, index
        r = pool.ranks
        # per rank: prompts to prefill, [request, tokens left, tokens done, total, started], and
        # sequences waiting to decode, [request, cached tokens, output tokens left]
        self.prefill_q: list[deque] = [deque() for _ in range(r)]
        self.wait_q: list[deque] = [deque() for _ in range(r)]
        self.queued_tokens = np.zeros(r)
        self.run_req = np.zeros(0, dtype=np.int64)
        self.run_rank = np.zeros(0, dtype=np.int64)
        self.run_ctx = np.zeros(0, dtype=np.int64)
        self.run_left = np.zeros(0, dtype=np.int64)
        self.last_prefill = False  # the unit's last step was a prefill (mixed_steps=False)

    def load(self) -> np.ndarray:
        """Per rank: how busy it is, for routing (prefill tokens queued, sequences held)."""
        seqs = np.bincount(self.run_rank, minlength=self.pool.ranks).astype(float)
        seqs += np.array([len(q) for q in self.wait_q])
        return (
            self.queued_tokens + 1e6 * seqs
            if self.pool.role == "decode"
            else (self.queued_tokens + seqs)
        )

    def has_work(self) -> bool:
        return bool(len(self.run_req)) or any(self.prefill_q) or any(self.wait_q)

    def in_system(self) -> int:
        return (
            len(self.run_req)
            + sum(len(q) for q in self.prefill_q)
            + sum(len(q) for q in self.wait_q)
        )


class Simulator:
    """Runs requests through pools (see the module docstring). One seeded RNG draws the MTP
    acceptances, so a run is reproducible."""

    def __init__(
        self,
        pools: list[Pool],
        *,
        mtp_draft_tokens: int = 0,
        mtp_acceptance: float = 0.0,
        prefix_cache: PrefixCache | None = None,
        kv_transfer_s: float = 0.0,
        seed: int = 0,
    ):
        roles = sorted(p.role for p in pools)
        if roles not in (["both"], ["decode", "prefill"]):
            raise ValueError(
                "pools must be one colocated pool (role 'both') or a 'prefill' and a 'decode' pool"
            )
        if isinstance(mtp_draft_tokens, bool) or mtp_draft_tokens not in range(0, 9):
            raise ValueError(
                f"mtp_draft_tokens must be an integer in [0, 8], got {mtp_draft_tokens!r}"
            )
        if not (0 <= mtp_acceptance <= 1):
            raise ValueError(f"mtp_acceptance must be in [0, 1], got {mtp_acceptance!r}")
        if not (0 <= kv_transfer_s < math.inf):
            raise ValueError(f"kv_transfer_s must be a finite number >= 0, got {kv_transfer_s!r}")
        self.pools = {p.role: p for p in pools}
        self.mtp_k, self.mtp_p = mtp_draft_tokens, mtp_acceptance
        self.cache = prefix_cache
        self.kv_transfer_s = kv_transfer_s
        self.rng = np.random.default_rng(seed)

    # -- routing ---------------------------------------------------------------------------------
    def _route(self, units: list[_Unit]) -> tuple[_Unit, int]:
        best, best_load = None, math.inf
        for u in units:
            load = u.load()
            r = int(np.argmin(load))
            if load[r] < best_load:
                best, best_load = (u, r), load[r]
        return best

    def _to_prefill(self, i: int, tokens: int, now: float) -> _Unit:
        units = self.units["prefill"] if "prefill" in self.units else self.units["both"]
        u, r = self._route(units)
        u.prefill_q[r].append([i, tokens, 0, tokens, False])  # req, left, done, total, started
        u.queued_tokens[r] += tokens
        return u

    def _to_decode(self, i: int, ctx: int, left: int) -> _Unit:
        u, r = self._route(self.units["decode"])
        u.wait_q[r].append([i, ctx, left])
        return u

    # -- one step of one unit --------------------------------------------------------------------
    def _step(self, u: _Unit, now: float) -> float:
        """Run one step of unit u from `now`; returns its end (now when it has nothing to run)."""
        pool = u.pool
        if pool.role in ("both", "decode"):
            self._admit(u)
        run_decode, run_prefill = self._what_runs(u)
        tpseq = 1 + self.mtp_k
        R = pool.ranks
        n_dec = np.bincount(u.run_rank, minlength=R) if run_decode else np.zeros(R, np.int64)
        ctx_sum = np.bincount(u.run_rank, weights=u.run_ctx, minlength=R)
        pre_seqs, pre_tok, pre_ctx = np.zeros(R, np.int64), np.zeros(R, np.int64), np.zeros(R)
        done_prefill = []
        if run_prefill:
            budgets = pool.chunk_tokens - n_dec * tpseq
            if pool.balance_prefill:
                budgets = self._balanced_budgets(u, n_dec, ctx_sum, budgets)
            done_prefill = self._chunks(u, now, budgets, pre_seqs, pre_tok, pre_ctx)
        # ANCHOR: step_time
        # the step's time: the busiest rank's
        times = {}
        for r in range(R):
            if n_dec[r] == 0 and pre_tok[r] == 0:
                continue
            shape = StepShape(
                int(n_dec[r]),
                tpseq,
                int(round(ctx_sum[r] / n_dec[r])) if n_dec[r] else 0,
                int(pre_seqs[r]),
                int(pre_tok[r]),
                int(round(pre_ctx[r] / pre_seqs[r])) if pre_seqs[r] else 0,
            )
            if shape not in times:
                times[shape] = pool.step_time(shape)
        if not times:
            return now
        end = now + max(times.values())
        # ANCHOR_END: step_time
        out_tokens = self._decode(u, end) if run_decode else 0
        self._end_prefills(u, end, done_prefill)
        self.steps[pool.role].append((now, end, int(pre_tok.sum()), out_tokens, len(u.run_req)))
        return end

    def _admit(self, u: _Unit) -> None:
        """Waiting sequences join each rank's running batch while it has a place and KV room."""
        pool, R = u.pool, u.pool.ranks
        if not any(u.wait_q):
            return
        counts = np.bincount(u.run_rank, minlength=R)
        kv = np.bincount(u.run_rank, weights=u.run_ctx, minlength=R)
        add = []  # (request, rank, cached tokens, tokens left)
        for r in range(R):
            q = u.wait_q[r]
            while (
                q
                and counts[r] < pool.max_batch
                and kv[r] + q[0][1] + 1 + self.mtp_k <= pool.kv_capacity_tokens
            ):
                i, ctx, left = q.popleft()
                add.append((i, r, ctx, left))
                counts[r] += 1
                kv[r] += ctx
        if add:
            req, rank, ctx, left = (np.array(c, dtype=np.int64) for c in zip(*add))
            u.run_req = np.concatenate([u.run_req, req])
            u.run_rank = np.concatenate([u.run_rank, rank])
            u.run_ctx = np.concatenate([u.run_ctx, ctx])
            u.run_left = np.concatenate([u.run_left, left])

    def _what_runs(self, u: _Unit) -> tuple[bool, bool]:
        """(decode, prefill): whether this step decodes the running batch and prefills prompts."""
        pool = u.pool
        run_decode = pool.role in ("both", "decode") and len(u.run_req) > 0
        run_prefill = pool.role in ("both", "prefill") and any(u.prefill_q)
        if run_prefill and pool.role == "both":  # a prompt can go on only with a slot for it
            held = np.bincount(u.run_rank, minlength=pool.ranks)
            run_prefill = any(
                q and (q[0][4] or held[r] + len(u.wait_q[r]) < pool.max_batch)
                for r, q in enumerate(u.prefill_q)
            )
        if pool.role == "both" and not pool.mixed_steps:
            # alternate: a prefill step when a prompt waits and the last step was not one
            run_prefill = run_prefill and (not u.last_prefill or not run_decode)
            run_decode = run_decode and not run_prefill
            u.last_prefill = run_prefill
        return run_decode, run_prefill

    def _plan(self, u: _Unit, r: int, budget: int, slots: int) -> tuple[int, int, int]:
        """(prompts, tokens, cached tokens ahead of them) that rank r's chunk would take with this
        budget; changes nothing (the dry run of `_chunks`)."""
        seqs = tokens = ahead = 0
        for i, left, done, total, started in u.prefill_q[r]:
            if budget <= 0:
                break
            if not started:
                if u.pool.role == "both" and slots <= 0:
                    break
                if self.cache is not None:
                    req = self.requests[i]
                    done = self.cache.peek(req.prefix_id, min(req.prefix_tokens, total - 1))
                    left = total - done
            slots -= 1
            take = min(left, budget)
            seqs, tokens, ahead, budget = seqs + 1, tokens + take, ahead + done, budget - take
        return seqs, tokens, ahead

    def _balanced_budgets(
        self, u: _Unit, n_dec: np.ndarray, ctx_sum: np.ndarray, budgets: np.ndarray
    ) -> np.ndarray:
        """Per-rank prefill budgets such that no rank's step is longer than the median rank's:
        a rank whose chunk would be slower (it attends to a longer context) takes fewer tokens,
        found by bisection on its budget (down to 1/16 of it)."""
        pool, tpseq = u.pool, 1 + self.mtp_k
        held = np.bincount(u.run_rank, minlength=pool.ranks)
        slots = pool.max_batch - held - np.array([len(q) for q in u.wait_q])

        def time(r: int, budget: int) -> float:
            seqs, tokens, ahead = self._plan(u, r, budget, int(slots[r]))
            if not tokens and not n_dec[r]:
                return 0.0
            shape = StepShape(
                int(n_dec[r]),
                tpseq,
                int(round(ctx_sum[r] / n_dec[r])) if n_dec[r] else 0,
                seqs,
                tokens,
                int(round(ahead / seqs)) if seqs else 0,
            )
            return pool.step_time(shape)

        full = {r: time(r, int(budgets[r])) for r in range(pool.ranks) if u.prefill_q[r]}
        active = [t for t in full.values() if t > 0]
        if len(active) < 2:
            return budgets
        target = float(np.median(active))
        out = budgets.copy()
        for r, t in full.items():
            if t <= target * (1 + 1e-9):
                continue
            lo, hi = max(1, int(budgets[r]) // 16), int(budgets[r])
            if time(r, lo) > target:
                out[r] = lo
                continue
            while hi - lo > max(1, lo // 32):  # about 3 % apart
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if time(r, mid) <= target else (lo, mid)
            out[r] = lo
        return out

    def _chunks(
        self,
        u: _Unit,
        now: float,
        budgets: np.ndarray,
        pre_seqs: np.ndarray,
        pre_tok: np.ndarray,
        pre_ctx: np.ndarray,
    ) -> list[tuple[int, int]]:
        """Each rank's prompt chunks for this step, from the head of its queue, within its token
        budget (chunk_tokens less the decode tokens, or less when balanced); fills pre_seqs,
        pre_tok and pre_ctx (cached tokens ahead of the chunks) per rank. Returns (rank, request)
        of the prompts that end."""
        pool = u.pool
        done: list[tuple[int, int]] = []
        held = np.bincount(u.run_rank, minlength=pool.ranks)  # colocated: sequences with a slot
        for r in range(pool.ranks):
            budget = int(budgets[r])
            slots = pool.max_batch - held[r] - len(u.wait_q[r])
            for item in u.prefill_q[r]:
                if budget <= 0:
                    break
                i, left, done_tokens, total, started = item
                if not started:
                    if pool.role == "both" and slots <= 0:
                        break  # no slot for another sequence: the prompt waits
                    item[4] = True
                    if self.admitted[i] < 0:  # the first admission (not a recompute)
                        self.admitted[i] = now
                    if self.cache is not None:
                        req = self.requests[i]
                        # the last prompt token is always computed (it gives the next one)
                        reusable = min(req.prefix_tokens, total - 1)
                        hit = self.cache.lookup(req.prefix_id, reusable, total)
                        self.hit[i] += hit
                        item[1], item[2] = left, done_tokens = total - hit, hit
                        u.queued_tokens[r] -= hit
                slots -= 1
                take = min(left, budget)
                pre_seqs[r] += 1
                pre_tok[r] += take
                pre_ctx[r] += done_tokens
                item[1] -= take
                item[2] += take
                u.queued_tokens[r] -= take
                budget -= take
                if item[1] == 0:
                    done.append((r, i))
                if not pool.mixed_steps and pool.role == "both":
                    break  # one prompt per prefill step
        return done

    def _decode(self, u: _Unit, end: float) -> int:
        """Every running sequence gets its tokens (MTP: plus accepted drafts); the finished ones
        leave, and a full KV cache preempts. Returns the tokens made."""
        # ANCHOR: mtp_accept
        emit = np.ones(len(u.run_req), dtype=np.int64)
        if self.mtp_k and self.mtp_p > 0:
            ok = self.rng.random((len(u.run_req), self.mtp_k)) < self.mtp_p
            emit += np.cumprod(ok, axis=1).sum(axis=1)
        emit = np.minimum(emit, u.run_left)
        # ANCHOR_END: mtp_accept
        u.run_left = u.run_left - emit
        u.run_ctx = u.run_ctx + emit
        fin = u.run_left <= 0
        if fin.any():
            self.finish[u.run_req[fin]] = end
            self.n_done += int(fin.sum())
            heapq.heappush(self.leaving, (end, int(fin.sum())))
            keep = ~fin
            u.run_req, u.run_rank = u.run_req[keep], u.run_rank[keep]
            u.run_ctx, u.run_left = u.run_ctx[keep], u.run_left[keep]
        self._preempt(u, end)
        return int(emit.sum())

    def _end_prefills(self, u: _Unit, end: float, done: list[tuple[int, int]]) -> None:
        """Prompts whose last chunk ran: the first token, then on to decode (this unit's queue, or
        the decode pool after the KV transfer)."""
        for r, i in done:
            q = u.prefill_q[r]
            item = q.popleft() if q and q[0][0] == i else _remove(q, i)
            req = self.requests[i]
            if self.cache is not None:
                self.cache.insert(req.prefix_id, req.prefix_tokens)
            left = int(self.left_after_prefill[i])
            if self.first[i] < 0:
                self.first[i] = end
                left = req.output_tokens - 1
            if left <= 0:
                self.finish[i] = end
                self.n_done += 1
                heapq.heappush(self.leaving, (end, 1))
            elif u.pool.role == "both":
                u.wait_q[r].append([i, item[3], left])
            else:
                self.pending_decode.append((end + self.kv_transfer_s, i, item[3], left))

    def _preempt(self, u: _Unit, now: float) -> None:
        """Sequences whose KV cache no longer fits go back to prefill, newest first."""
        cap = u.pool.kv_capacity_tokens
        kv = np.bincount(u.run_rank, weights=u.run_ctx, minlength=u.pool.ranks)
        over = np.nonzero(kv > cap)[0]
        if not len(over):
            return
        drop = np.zeros(len(u.run_req), dtype=bool)
        for r in over:
            idx = np.nonzero(u.run_rank == r)[0][::-1]  # newest admitted last in the arrays
            excess = kv[r] - cap
            for j in idx:
                if excess <= 0:
                    break
                drop[j] = True
                excess -= u.run_ctx[j]
        for j in np.nonzero(drop)[0]:
            i = int(u.run_req[j])
            self.preempted[i] += 1
            self.left_after_prefill[i] = int(u.run_left[j])
            self._to_prefill(i, int(u.run_ctx[j]), now)
        keep = ~drop
        u.run_req, u.run_rank = u.run_req[keep], u.run_rank[keep]
        u.run_ctx, u.run_left = u.run_ctx[keep], u.run_left[keep]

    # -- the run ---------------------------------------------------------------------------------
    def run(self, requests: list[Request], progress: bool = False) -> Trace:
        """Simulate until every request has finished."""
        if not requests:
            raise ValueError("no requests to simulate")
        reqs = sorted(requests, key=lambda r: r.arrival_s)
        n = len(reqs)
        holder = self.pools.get("decode", self.pools.get("both"))
        for r in reqs:  # a sequence that no rank's KV cache holds would never finish
            need = r.prompt_tokens + r.output_tokens + self.mtp_k
            if need > holder.kv_capacity_tokens:
                raise ValueError(
                    f"request {r.id}: prompt_tokens={r.prompt_tokens} + output_tokens="
                    f"{r.output_tokens}"
                    + (f" + {self.mtp_k} MTP draft" if self.mtp_k else "")
                    + f" = {need} tokens is more than one rank's KV cache of the "
                    f"{holder.role} pool holds ({holder.kv_capacity_tokens:.0f} tokens)"
                )
        self.requests = reqs
        self.admitted = np.full(n, -1.0)
        self.first = np.full(n, -1.0)
        self.finish = np.full(n, -1.0)
        self.hit = np.zeros(n, dtype=np.int64)
        self.preempted = np.zeros(n, dtype=np.int64)
        self.left_after_prefill = np.zeros(n, dtype=np.int64)
        self.n_done = 0
        self.pending_decode: list[tuple[float, int, int, int]] = []
        self.leaving: list[tuple[float, int]] = []  # (finish time, requests): done, not yet gone
        self.units = {role: [_Unit(p, k) for k in range(p.units)] for role, p in self.pools.items()}
        self.steps = {role: [] for role in self.pools}
        occupancy: list[tuple[float, int]] = []
        all_units = [u for us in self.units.values() for u in us]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="req", desc="serving", leave=False)
        nxt = 0  # next arrival
        heap: list[tuple[float, int]] = []  # (time a unit is free, unit index in all_units)
        now = 0.0
        while self.n_done < n:
            # the next event: an arrival, a hand-over to decode, or a unit becoming free
            t_arr = reqs[nxt].arrival_s if nxt < n else math.inf
            self.pending_decode.sort()
            t_pd = self.pending_decode[0][0] if self.pending_decode else math.inf
            t_unit = heap[0][0] if heap else math.inf
            now = min(t_arr, t_pd, t_unit)
            if now == math.inf:
                raise RuntimeError("the simulation stalled: work is left but nothing can run")
            while nxt < n and reqs[nxt].arrival_s <= now:
                self._to_prefill(nxt, reqs[nxt].prompt_tokens, now)
                self.left_after_prefill[nxt] = reqs[nxt].output_tokens - 1
                nxt += 1
            while self.pending_decode and self.pending_decode[0][0] <= now:
                _, i, ctx, left = self.pending_decode.pop(0)
                self._to_decode(i, ctx, left)
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)
            while self.leaving and self.leaving[0][0] <= now:
                heapq.heappop(self.leaving)
            held = sum(u.in_system() for u in all_units) + len(self.pending_decode)
            occupancy.append((now, held + sum(c for _, c in self.leaving)))
            busy = {k for _, k in heap}
            for k, u in enumerate(all_units):
                if k in busy or not u.has_work():
                    continue
                end = self._step(u, now)
                if end > now:
                    heapq.heappush(heap, (end, k))
            if bar is not None:
                bar.update(self.n_done - bar.n)  # redraws at most every mininterval
        if bar is not None:
            bar.close()
        # requests whose last step was under way when the loop ended leave at its end
        held = occupancy[-1][1]
        for t, c in sorted(self.leaving):
            held -= c
            occupancy.append((t, held))
        occupancy.append((float(self.finish.max()), 0))
        return Trace(
            arrival=np.array([r.arrival_s for r in reqs]),
            admitted=self.admitted,
            first_token=self.first,
            finish=self.finish,
            prompt=np.array([r.prompt_tokens for r in reqs]),
            output=np.array([r.output_tokens for r in reqs]),
            hit_tokens=self.hit,
            preemptions=self.preempted,
            steps=self.steps,
            occupancy=occupancy,
            prefix_hit_rate=self.cache.hit_rate if self.cache is not None else 0.0,
            pools=tuple(self.pools.values()),
        )


def _remove(q: deque, i: int):
    for item in q:
        if item[0] == i:
            q.remove(item)
            return item
    raise KeyError(i)
