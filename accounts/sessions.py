"""The session engine: Django's cached_db (read through the cache, kept in the database), with
its two cache faults made safe.

Every chat message re-reads its socket's session, and every page request reads one: from the
cache that is a lookup instead of a query. Django's engine, when the cache fails:
- on a read that missed, raises from the cache write after the database read (the page fails);
- on a logout, has already deleted the database row when the cache delete raises, and the
  cached copy then goes on signing the session in until it expires.
Here a read (and the check that a new session key is free) falls back to the database alone,
and a logout forgets the cached copy first: if the cache cannot, the logout fails whole and
nothing changed.

Not every ended session needs that: one whose cached copy could sign nobody in (anonymous, or
holding a password hash that no longer matches: a session ended by a password change, or the
old key a password change cycles away from) is ended in the database even when the cache is
down. Failing those too made every page of a device signed out by a password change a 500,
and a password change itself a 500 after the new password was saved.
"""

from __future__ import annotations

import contextlib
import logging

from asgiref.sync import sync_to_async
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends import cached_db
from django.contrib.sessions.backends.db import SessionStore as DBStore
from django.utils.crypto import constant_time_compare

logger = logging.getLogger(__name__)


def _signs_in(data: dict) -> bool:
    """Whether session data could sign its user in: django.contrib.auth.get_user's own check (the
    user exists and the stored hash matches their password now, or under a fallback secret)."""
    user_id = data.get(SESSION_KEY)
    if user_id is None:
        return False
    user_model = get_user_model()
    try:
        user = user_model._default_manager.filter(pk=user_model._meta.pk.to_python(user_id)).first()
    except Exception:  # noqa: BLE001 - cannot tell: assume it could
        return True
    if user is None:
        return False
    stored = data.get(HASH_SESSION_KEY) or ""
    return any(constant_time_compare(stored, h) for h in (user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()))


class SessionStore(cached_db.SessionStore):
    # The data of the session flush() or cycle_key() is ending, while they run: what delete()
    # judges a cache fault by. None otherwise: a key deleted from outside (an erasure ending a
    # user's sessions) is treated as one that could sign in.
    _ending: dict | None = None

    @contextlib.contextmanager
    def _ending_this_session(self):
        self._ending = dict(self._session)
        try:
            yield
        finally:
            self._ending = None

    def flush(self):
        with self._ending_this_session():
            super().flush()

    def cycle_key(self):
        with self._ending_this_session():
            super().cycle_key()

    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except Exception:  # noqa: BLE001 - a cache fault costs the cache, not the request
            logger.warning("session cache unavailable; reading the session from the database")
            return DBStore.load(self)
        if data is not None:
            return data
        row = self._get_session_from_db()
        if row is None:
            return {}
        data = self.decode(row.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=row.expire_date))
        except Exception:  # noqa: BLE001
            logger.warning("session cache unavailable; the session was read from the database")
        return data

    def exists(self, session_key):
        # Asked for every new session key (a login makes one); the database has them all.
        try:
            return super().exists(session_key)
        except Exception:  # noqa: BLE001
            logger.warning("session cache unavailable; checking the new session key in the database")
            return DBStore.exists(self, session_key)

    def delete(self, session_key=None):
        session_key = session_key or self.session_key
        if session_key is None:
            return
        cache_key = self.cache_key_prefix + session_key
        try:
            self._cache.delete(cache_key)
        except Exception:
            if self._ending is None or _signs_in(self._ending):
                raise  # a copy left cached would keep signing in: the logout fails, nothing changed
            logger.warning("session cache unavailable; ended a session whose cached copy signs nobody in")
        DBStore.delete(self, session_key)
        # A request that read the row just before it went may have cached it again meanwhile.
        try:
            self._cache.delete(cache_key)
        except Exception:  # noqa: BLE001 - the first delete went through; this only closes a race
            logger.warning("session cache unavailable on the second forget of an ended session")

    # The async forms run the same code, so no path skips the guards above.
    async def aload(self):
        return await sync_to_async(self.load)()

    async def adelete(self, session_key=None):
        await sync_to_async(self.delete)(session_key)

    async def aflush(self):
        await sync_to_async(self.flush)()

    async def acycle_key(self):
        await sync_to_async(self.cycle_key)()
