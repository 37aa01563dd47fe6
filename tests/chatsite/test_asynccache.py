"""chatsite.asynccache: the chat's per-frame cache calls, awaited without a thread hop, must read
and write exactly what Django's own cache API reads and writes (the reaper and erasure use that)."""

import asyncio
import threading

import pytest
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from chatsite import asynccache

STATE = {"message_id": "m1", "seq": 3, "text": "so far, 한국어 too", "model": "demo:echo"}


async def test_a_value_set_here_is_what_the_sync_cache_reads():
    await asynccache.aset("t:state", STATE, 60)
    assert await asyncio.to_thread(cache.get, "t:state") == STATE
    await asynccache.aset("t:flag", True, 60)
    await asynccache.aset("t:count", 7, 60)
    assert await asyncio.to_thread(cache.get_many, ["t:flag", "t:count"]) == {"t:flag": True, "t:count": 7}


async def test_a_value_the_sync_cache_set_is_read_here():
    await asyncio.to_thread(cache.set, "t:state", STATE, 60)
    assert await asynccache.aget("t:state") == STATE
    assert await asynccache.aget("t:missing") is None
    assert await asynccache.aget("t:missing", "fallback") == "fallback"


async def test_get_many_reads_only_the_keys_that_hold_a_value():
    await asyncio.to_thread(cache.set, "t:a", STATE, 60)
    await asynccache.aset("t:b", True, 60)
    assert await asynccache.aget_many(["t:a", "t:b", "t:none"]) == {"t:a": STATE, "t:b": True}
    assert await asynccache.aget_many([]) == {}


async def test_delete_removes_every_key_given_and_a_zero_timeout_deletes():
    for key in ("t:a", "t:b", "t:c"):
        await asynccache.aset(key, key, 60)
    await asynccache.adelete("t:a", "t:b", "t:never-set")
    assert await asyncio.to_thread(cache.get_many, ["t:a", "t:b", "t:c"]) == {"t:c": "t:c"}
    await asynccache.aset("t:c", "again", 0)
    assert await asynccache.aget("t:c") is None


async def test_no_call_runs_on_another_thread():
    """The point of the module: nothing waits for the thread Channels runs SQL on."""
    seen = set()
    backend = caches["default"]
    original_get = type(backend).get

    def spy_get(self, *args, **kwargs):
        seen.add(threading.get_ident())
        return original_get(self, *args, **kwargs)

    type(backend).get = spy_get
    try:
        await asynccache.aset("t:x", 1, 60)
        await asynccache.aget("t:x")
    finally:
        type(backend).get = original_get
    # Local memory is called on this thread; Redis is not called through Django at all.
    assert seen <= {threading.get_ident()}


@pytest.mark.usefixtures("needs_redis")
async def test_on_redis_the_key_expires_as_django_would_set_it():
    backend = caches["default"]
    assert isinstance(backend, RedisCache)
    await asynccache.aset("t:ttl", STATE, 120)
    made = backend.make_and_validate_key("t:ttl")
    ttl = await asyncio.to_thread(lambda: backend._cache.get_client().ttl(made))
    assert 0 < ttl <= 120
    await asynccache.aset("t:forever", STATE, None)
    assert await asyncio.to_thread(lambda: backend._cache.get_client().ttl(backend.make_and_validate_key("t:forever"))) == -1


@pytest.mark.usefixtures("needs_redis")
async def test_on_redis_a_connection_the_server_closed_is_replaced_not_failed():
    # As after a Redis restart: the pooled connection is dead, and its next command must not be
    # the caller's failure (a socket opening then was dropped with "Connection closed by server").
    backend = caches["default"]
    await asynccache.aset("t:kept", STATE, 60)
    client = asynccache._redis(backend)
    connection_id = await client.client_id()  # the pool's one idle connection, used again next
    killed = await asyncio.to_thread(lambda: backend._cache.get_client().client_kill_filter(_id=connection_id))
    assert killed == 1
    assert await asynccache.aget("t:kept") == STATE
