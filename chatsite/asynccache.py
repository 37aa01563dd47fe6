"""The default cache, awaited from the event loop without a thread hop.

Django's cache backends have no async code of their own: `cache.aget()` runs the sync call through
sync_to_async, on the one thread Channels also runs every database call on. A running reply writes
its stream buffer once a frame (25 times a second); through that thread, hundreds of replies would
queue behind each other's SQL and every turn's preparation. So the chat's per-frame keys go here:

- local memory (the embedded default): called directly; it only takes a lock around a dict.
- Redis: a redis.asyncio client of this event loop, writing the key Django's cache would write
  (`cache.make_key`) in the format its RedisCache writes (RedisSerializer), so sync code reading
  the same key with `cache.get()` (the reaper, erasure) sees the same value.
- any other backend: Django's own async methods.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache, RedisSerializer

# Commands of one event loop share this many connections (waiting up to POOL_TIMEOUT for one).
POOL_SIZE = 50
POOL_TIMEOUT = 5.0
SOCKET_TIMEOUT = 5.0

_serializer = RedisSerializer()
_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _redis(backend: RedisCache):
    """This event loop's client for the cache's Redis server (the first, which Django writes to)."""
    loop = asyncio.get_running_loop()
    location = backend._servers[0]
    clients = _clients.setdefault(loop, {})
    client = clients.get(location)
    if client is None:
        import redis.asyncio

        from .redis_retry import dropped_connection_retry

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            location,
            max_connections=POOL_SIZE,
            timeout=POOL_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            retry=dropped_connection_retry(),  # a connection Redis closed: once more, on a fresh one
        )
        client = clients[location] = redis.asyncio.Redis(connection_pool=pool)
    return client


async def aget(key: str, default: Any = None) -> Any:
    cache = caches["default"]
    if isinstance(cache, LocMemCache):
        return cache.get(key, default)
    if isinstance(cache, RedisCache):
        value = await _redis(cache).get(cache.make_and_validate_key(key))
        return default if value is None else _serializer.loads(value)
    return await cache.aget(key, default)


async def aget_many(keys: list[str]) -> dict[str, Any]:
    """{key: value} of the keys that hold a value, in one call."""
    cache = caches["default"]
    if isinstance(cache, LocMemCache):
        return cache.get_many(keys)
    if isinstance(cache, RedisCache):
        if not keys:
            return {}
        values = await _redis(cache).mget([cache.make_and_validate_key(key) for key in keys])
        return {key: _serializer.loads(value) for key, value in zip(keys, values, strict=True) if value is not None}
    return await cache.aget_many(keys)


async def aset(key: str, value: Any, timeout: int | None) -> None:
    cache = caches["default"]
    if isinstance(cache, LocMemCache):
        cache.set(key, value, timeout)
        return
    if isinstance(cache, RedisCache):
        made = cache.make_and_validate_key(key)
        seconds = cache.get_backend_timeout(timeout)
        if seconds == 0:
            await _redis(cache).delete(made)
        else:
            await _redis(cache).set(made, _serializer.dumps(value), ex=seconds)
        return
    await cache.aset(key, value, timeout)


async def adelete(*keys: str) -> None:
    cache = caches["default"]
    if isinstance(cache, LocMemCache):
        for key in keys:
            cache.delete(key)
        return
    if isinstance(cache, RedisCache):
        if keys:
            await _redis(cache).delete(*(cache.make_and_validate_key(key) for key in keys))
        return
    for key in keys:
        await cache.adelete(key)
