"""chatsite.rediscache: Django's Redis cache, with one redis client per connection pool shared by
every call and thread (Django's own made a new client for every call)."""

import threading

import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache

pytestmark = pytest.mark.usefixtures("needs_redis")


def test_every_call_uses_the_same_client():
    backend = caches["default"]
    assert isinstance(backend, RedisCache)  # Django's class, so code that checks for it still works
    client = backend._cache.get_client(write=True)
    assert backend._cache.get_client() is client
    backend.set("t:shared", 1, 60)
    assert backend.get("t:shared") == 1
    assert backend._cache.get_client() is client


def test_threads_sharing_the_client_each_read_their_own_values_and_lose_no_increment():
    backend = caches["default"]
    backend.set("t:counter", 0, 60)
    errors: list = []

    def work(n: int) -> None:
        cache = backend  # one backend, so one client, used by all eight threads at once
        try:
            for i in range(100):
                cache.set(f"t:own:{n}", (n, i), 60)
                assert cache.get(f"t:own:{n}") == (n, i)
                cache.incr("t:counter")
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread's number
            errors.append((n, exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert backend.get("t:counter") == 800
