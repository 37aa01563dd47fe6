"""Per-user rate limits in the shared cache. (Issue 4 owns this.) INTERFACE STUB."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RateLimited(Exception):
    retry_after: int  # whole seconds to wait
    limit: str  # "requests_per_minute" | "tokens_per_minute"


def rate_limit_check(*, user, tokens: int) -> None:
    """Count one request of `tokens` tokens for `user`; raises RateLimited (counting nothing)
    when either per-minute limit (user's, team's or the default) would be passed."""
    raise NotImplementedError
