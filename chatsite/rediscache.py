"""The default cache on Redis: Django's RedisCache, with one redis client per connection pool.

Django's client makes a new `redis.Redis` for every cache call (`RedisCacheClient.get_client`),
and each one copies redis-py's table of ~170 response callbacks: measured here, 78 µs of CPU out
of the 159 µs a `cache.get` costs. A chat turn makes several cache calls (session, rate limit,
stream buffer) and every page reads its session through the cache, so every one of them paid it.
A `redis.Redis` is safe to share between threads: it takes a connection from its pool for each
command and gives it back (redis-py's documentation, "Thread safety").
"""

from __future__ import annotations

from django.core.cache.backends import redis as django_redis


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, object] = {}  # id of a pool (kept in self._pools) -> its client

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients.setdefault(id(pool), self._client(connection_pool=pool))
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient
