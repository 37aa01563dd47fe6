"""The one retry rule of Parley's asyncio Redis clients (the stream buffer's cache client and the
channel layer): a pooled connection Redis closed (a restart, an idle timeout) fails its next
command once; that command is retried on a fresh connection, twice at most, and never after a
timeout. Imports nothing from Django: the settings use it."""

from __future__ import annotations

RETRIES = 2


def dropped_connection_retry():
    """A redis.asyncio Retry for one connection pool."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(ExponentialBackoff(cap=0.2, base=0.02), RETRIES, supported_errors=(RedisConnectionError,))
