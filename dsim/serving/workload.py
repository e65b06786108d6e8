"""The requests of a serving trace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    id: int
    arrival_s: float  # seconds from the start of the trace
    prompt_tokens: int  # >= 1
    output_tokens: int  # >= 1 (the first output token comes from the prefill)
    prefix_id: int | None = None  # requests with the same prefix_id share their first prefix_tokens
    prefix_tokens: int = 0  # 0 <= prefix_tokens <= prompt_tokens
