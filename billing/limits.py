"""Per-user rate limits in the shared cache (Redis when configured, so every process counts
together; local memory otherwise).

Two counters per user, requests and tokens, each over a sliding minute approximated from two
fixed one-minute windows: count = previous_window * (1 - elapsed/60) + current_window. A request
is counted with an atomic INCR; if that passes the limit it is taken back (DECR) and refused, so
a refused request counts nothing and concurrent requests can never be admitted past the limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

from django.conf import settings
from django.core.cache import cache
from django.utils.translation import gettext as _

WINDOW_SECONDS = 60


@dataclass
class RateLimited(Exception):
    retry_after: int  # whole seconds to wait
    limit: str  # "requests_per_minute" | "tokens_per_minute"
    # Set when one request needs more than a whole minute's allowance (`allowed`): waiting
    # never lets it through, and the message says so instead of "try again".
    needed: int | None = None
    allowed: int | None = None

    @property
    def message(self) -> str:
        if self.needed is not None:
            return _(
                "This request needs %(needed)s tokens, more than the %(allowed)s tokens a minute you may use: "
                "waiting will not help. Start a new conversation or send a shorter message."
            ) % {"needed": self.needed, "allowed": self.allowed}
        return _("Too many requests: try again in %(seconds)s seconds.") % {"seconds": self.retry_after}

    def __reduce__(self):
        # Exception's default pickling passes no arguments; a dataclass needs its fields.
        return (self.__class__, tuple(getattr(self, f.name) for f in fields(self)))

    def __str__(self) -> str:
        return f"rate_limited: {self.limit}, retry after {self.retry_after}s"


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int


def _clock() -> float:
    return time.time()  # a function so tests can move time


def limits_for(*, user) -> Limits:
    """The user's own override (else the settings' default), tightened by any team of theirs
    that sets a lower one: the strictest covering limit applies."""
    # None is "not set"; 0 cannot be stored (accounts' *_rate_limits_positive constraints).
    rpm = user.requests_per_minute if user.requests_per_minute is not None else settings.RATE_LIMIT_REQUESTS_PER_MINUTE
    tpm = user.tokens_per_minute if user.tokens_per_minute is not None else settings.RATE_LIMIT_TOKENS_PER_MINUTE
    for team_rpm, team_tpm in user.teams.values_list("requests_per_minute", "tokens_per_minute"):
        if team_rpm is not None:
            rpm = min(rpm, team_rpm)
        if team_tpm is not None:
            tpm = min(tpm, team_tpm)
    return Limits(requests_per_minute=rpm, tokens_per_minute=tpm)


def user_key_prefix(user_id: int) -> str:
    """Every rate-limit counter of a user starts with this (erasure deletes them by it)."""
    return f"billing:rl:{user_id}:"


def _key(user_id: int, metric: str, window: int) -> str:
    return f"{user_key_prefix(user_id)}{metric}:{window}"


def _incr(key: str, delta: int) -> int:
    # incr() is atomic on locmem and Redis, and raises ValueError when the counter is absent (the
    # first request of a window, or it expired): then add() creates it (only if still absent: a
    # concurrent request may have) and incr() runs again. Tried first, not after an add() every
    # time: within a window the counter exists, and each cache call is a round trip to Redis.
    for _attempt in range(3):
        try:
            return cache.incr(key, delta)
        except ValueError:
            cache.add(key, 0, timeout=WINDOW_SECONDS * 2 + 10)
    raise RuntimeError("rate-limit counter unavailable")


def _undo(key: str, delta: int) -> None:
    try:
        cache.decr(key, delta)
    except ValueError:
        pass  # the window already expired: nothing left to take back


def _wait_seconds(*, limit: int, need: int, previous: int, current: int, elapsed: float) -> int:
    """Seconds until previous*(1-e/W) + current + need fits under `limit` again."""
    w = WINDOW_SECONDS
    if current + need <= limit and previous > 0:
        # Wait for the previous window's weight to fade enough.
        t = w * (1 - (limit - current - need) / previous) - elapsed
    else:
        # Wait for this window to end; then it becomes the fading previous one.
        t = (w - elapsed) + (w * (1 - (limit - need) / current) if current > 0 else 0)
    return max(1, math.ceil(t))


def _count(user_id: int, metric: str, need: int, limit: int, window: int, elapsed: float, previous: int) -> None:
    """Count `need` on `metric` (`previous`: its count in the window before); when that passes
    `limit`, take it back and raise RateLimited."""
    if need > limit:
        # Counted or not, it can never pass: nothing to count, nothing to take back.
        raise RateLimited(retry_after=WINDOW_SECONDS, limit=metric, needed=need, allowed=limit)
    current_key = _key(user_id, metric, window)
    current = _incr(current_key, need)
    weighted = previous * (WINDOW_SECONDS - elapsed) / WINDOW_SECONDS + current
    if weighted <= limit:
        return None
    _undo(current_key, need)
    raise RateLimited(
        retry_after=_wait_seconds(limit=limit, need=need, previous=previous, current=current - need, elapsed=elapsed),
        limit=metric,
    )


def rate_limit_check(*, user, tokens: int) -> None:
    """Count one request of `tokens` tokens for `user`; raises RateLimited (counting nothing)
    when either per-minute limit (user's, team's or the default) would be passed."""
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError("tokens must be a non-negative integer")
    limits = limits_for(user=user)
    now = _clock()
    window = int(now // WINDOW_SECONDS)
    elapsed = now - window * WINDOW_SECONDS
    # Both previous windows in one read (one round trip to Redis, not two).
    metrics = ("requests_per_minute", "tokens_per_minute")
    previous_keys = {metric: _key(user.pk, metric, window - 1) for metric in metrics}
    found = cache.get_many(list(previous_keys.values()))
    previous = {metric: int(found.get(key) or 0) for metric, key in previous_keys.items()}
    _count(user.pk, metrics[0], 1, limits.requests_per_minute, window, elapsed, previous[metrics[0]])
    try:
        if tokens:
            _count(user.pk, metrics[1], tokens, limits.tokens_per_minute, window, elapsed, previous[metrics[1]])
    except RateLimited:
        _undo(_key(user.pk, "requests_per_minute", window), 1)
        raise
