"""The session engine (accounts.sessions): sessions read through the cache, and no cache fault
leaves an ended session signed in or fails a page that could be served from the database."""

import pytest
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.sessions import SessionStore

pytestmark = pytest.mark.django_db


class FailingCache:
    """The real cache, except that the named operations raise as a Redis that is down does."""

    def __init__(self, *failing: str):
        self.failing = set(failing)

    def __getattr__(self, name):
        if name in self.failing:

            def fail(*args, **kwargs):
                raise ConnectionError(f"cache down ({name})")

            return fail
        return getattr(cache, name)

    def __contains__(self, key):  # `key in cache` skips __getattr__
        if "__contains__" in self.failing:
            raise ConnectionError("cache down (__contains__)")
        return key in cache


def _signed_in_session(client, user) -> str:
    client.force_login(user)
    return client.cookies["sessionid"].value


def _store(session_key: str, *failing: str) -> SessionStore:
    store = SessionStore(session_key=session_key)
    if failing:
        store._cache = FailingCache(*failing)
    return store


def test_a_session_read_a_second_time_comes_from_the_cache(client, user):
    key = _signed_in_session(client, user)
    cache.clear()
    with CaptureQueriesContext(connection) as first:
        assert _store(key).load()["_auth_user_id"] == str(user.pk)
    with CaptureQueriesContext(connection) as second:
        assert _store(key).load()["_auth_user_id"] == str(user.pk)
    assert len(first.captured_queries) == 1 and len(second.captured_queries) == 0


def test_a_logout_ends_a_cached_session(client, user):
    key = _signed_in_session(client, user)
    assert _store(key).load()  # now cached
    client.post("/accounts/logout/")
    assert _store(key).load() == {}
    assert not Session.objects.filter(session_key=key).exists()


@pytest.mark.parametrize("failing", [("get",), ("set",), ("get", "set")])
def test_a_cache_fault_on_read_falls_back_to_the_database(client, user, failing):
    key = _signed_in_session(client, user)
    cache.clear()
    assert _store(key, *failing).load()["_auth_user_id"] == str(user.pk)


def test_the_pages_work_while_the_session_cache_is_down(client, user, monkeypatch, settings):
    from django.contrib.sessions.backends import cached_db

    _signed_in_session(client, user)
    monkeypatch.setattr(cached_db, "caches", {settings.SESSION_CACHE_ALIAS: FailingCache("get", "set")})
    response = client.get("/accounts/profile/")
    assert response.status_code == 200 and response.context["user"] == user


def test_a_login_works_while_the_session_cache_is_down(client, user, monkeypatch, settings):
    from django.contrib.sessions.backends import cached_db

    monkeypatch.setattr(cached_db, "caches", {settings.SESSION_CACHE_ALIAS: FailingCache("get", "set", "__contains__")})
    response = client.post("/accounts/login/", {"username": "alice", "password": "correct horse battery 9"})
    assert response.status_code == 302
    key = client.cookies["sessionid"].value
    assert Session.objects.get(session_key=key).get_decoded()["_auth_user_id"] == str(user.pk)


def test_a_logout_the_cache_cannot_record_fails_whole(client, user):
    key = _signed_in_session(client, user)
    assert _store(key).load()  # cached
    with pytest.raises(ConnectionError):
        _store(key, "delete").delete()
    # Nothing changed: the row and the cached copy agree, and still sign the user in.
    assert Session.objects.filter(session_key=key).exists()
    assert _store(key).load()["_auth_user_id"] == str(user.pk)


def test_a_read_racing_a_logout_does_not_keep_the_session_alive(client, user, monkeypatch):
    """A request that read the row just before the logout deleted it caches it afterwards."""
    key = _signed_in_session(client, user)
    from django.contrib.sessions.backends.db import SessionStore as DBStore

    real_delete = DBStore.delete

    def delete_while_another_request_reads(self, session_key=None):
        racing = SessionStore(session_key=key)
        row = racing._get_session_from_db()
        real_delete(self, session_key)
        cache.set(racing.cache_key, racing.decode(row.session_data), 60)  # the racer's late cache write

    monkeypatch.setattr(DBStore, "delete", delete_while_another_request_reads)
    _store(key).delete()
    assert _store(key).load() == {}


def test_a_session_ended_by_a_password_change_goes_to_login_while_the_cache_is_down(client, user, monkeypatch, settings):
    # Its cached copy holds the old password's hash: it can sign nobody in, so ending it need
    # not wait for the cache (Django's get_user flushes it on every request otherwise: a 500).
    from django.contrib.sessions.backends import cached_db

    key = _signed_in_session(client, user)
    user.set_password("a brand new pw 4242")  # changed on another device, or by an admin
    user.save()
    monkeypatch.setattr(cached_db, "caches", {settings.SESSION_CACHE_ALIAS: FailingCache("get", "set", "delete")})
    response = client.get("/accounts/profile/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not Session.objects.filter(session_key=key).exists()


def test_a_password_change_while_the_cache_is_down_keeps_this_device_signed_in(client, user, monkeypatch, settings):
    # The change cycles the session key; the old key's copy holds the old password's hash.
    from django.contrib.sessions.backends import cached_db

    old_key = _signed_in_session(client, user)
    monkeypatch.setattr(cached_db, "caches", {settings.SESSION_CACHE_ALIAS: FailingCache("get", "set", "delete")})
    new = "a brand new pw 4242"
    response = client.post(
        "/accounts/password/change/", {"old_password": "correct horse battery 9", "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)
    assert client.get("/accounts/profile/").status_code == 200  # still signed in, on a new key
    assert client.cookies["sessionid"].value != old_key
    assert not Session.objects.filter(session_key=old_key).exists()


def test_a_logout_still_fails_whole_when_the_cache_is_down(client, user, monkeypatch, settings):
    # A signed-in session's cached copy would go on signing in: the logout must not half-happen.
    from django.contrib.sessions.backends import cached_db

    key = _signed_in_session(client, user)
    assert _store(key).load()  # cached
    monkeypatch.setattr(cached_db, "caches", {settings.SESSION_CACHE_ALIAS: FailingCache("delete")})
    client.raise_request_exception = False
    response = client.post("/accounts/logout/")
    assert response.status_code == 500
    assert Session.objects.filter(session_key=key).exists()
