"""The turn's own database threads (conversations.turns._db)."""

import pytest
from django.conf import settings
from django.db import connection

from conversations import turns
from conversations.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_connection():
    from django.db import connection as thread_connection

    Message.objects.exists()
    return thread_connection.connection


@pytest.mark.skipif(connection.vendor != "sqlite", reason="PostgreSQL lends open connections from its pool instead")
async def test_a_turn_thread_keeps_its_sqlite_connection_between_calls():
    """Opening a SQLite connection costs about a millisecond, three times per turn; the turn's
    few long-lived threads keep theirs, while the site's setting (other threads) stays 0."""
    calls = settings.TURN_DB_THREADS * 4
    # The objects are held, so no id is reused: a new connection per call would give `calls`.
    raw = [await turns._db(_raw_connection)() for _ in range(calls)]
    assert len({id(r) for r in raw}) <= settings.TURN_DB_THREADS
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
