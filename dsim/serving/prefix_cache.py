"""A prefix KV cache: the KV of shared prompt prefixes, kept so that a later prompt that starts
with the same prefix skips recomputing it (its prefill still attends to it).

Least recently used prefixes are evicted when the cache's token capacity is full. DeepSeek's
serving keeps such a cache on disk (its day-6 overview reports 56.3 % of input tokens hit it); a
capacity of `math.inf` models a cache that never evicts.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class PrefixCache:
    """prefix_id -> cached prefix tokens, least recently used first out."""

    def __init__(self, capacity_tokens: float = math.inf):
        if not (capacity_tokens >= 0):  # NaN fails too
            raise ValueError(f"capacity_tokens must be >= 0, got {capacity_tokens!r}")
        self.capacity = capacity_tokens
        self.entries: OrderedDict[int, int] = OrderedDict()
        self.used = 0
        self.lookup_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # of which found in the cache

    def lookup(self, prefix_id: int | None, prefix_tokens: int, prompt_tokens: int) -> int:
        """Cached tokens at the start of a prompt (0 on a miss); counts the lookup."""
        self.lookup_tokens += prompt_tokens
        if prefix_id is None or prefix_tokens == 0 or prefix_id not in self.entries:
            return 0
        self.entries.move_to_end(prefix_id)
        hit = min(prefix_tokens, self.entries[prefix_id])
        self.hit_tokens += hit
        return hit

    def peek(self, prefix_id: int | None, prefix_tokens: int) -> int:
        """Cached tokens a lookup would find, without counting it or touching the LRU order."""
        if prefix_id is None or prefix_tokens == 0:
            return 0
        return min(prefix_tokens, self.entries.get(prefix_id, 0))

    def insert(self, prefix_id: int | None, prefix_tokens: int) -> None:
        """Keep a prefix after its prefill, evicting the least recently used to make room."""
        if prefix_id is None or prefix_tokens == 0 or prefix_tokens > self.capacity:
            return
        old = self.entries.pop(prefix_id, 0)
        self.used -= old
        keep = max(old, prefix_tokens)
        while self.entries and self.used + keep > self.capacity:
            self.used -= self.entries.popitem(last=False)[1]
        self.entries[prefix_id] = keep
        self.used += keep

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up prompt tokens found in the cache."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
