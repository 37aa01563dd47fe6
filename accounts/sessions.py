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
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import cached_db
from django.contrib.sessions.backends.db import SessionStore as DBStore

logger = logging.getLogger(__name__)


class SessionStore(cached_db.SessionStore):
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
        self._cache.delete(cache_key)  # raises on a cache fault: the logout fails, nothing changed
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
