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
    return thread_connection.connection, thread_connection.settings_dict["CONN_MAX_AGE"]


async def test_a_turn_thread_keeps_its_sqlite_connection_and_borrows_a_pooled_postgres_one():
    """Opening a SQLite connection costs about a millisecond, three times per turn: the turn's few
    long-lived threads keep theirs. PostgreSQL's pool already lends open connections, and refuses
    persistent ones: there the threads keep the site's 0. Other threads keep 0 on both."""
    calls = settings.TURN_DB_THREADS * 4
    # The objects are held, so no id is reused: a new connection per call would give `calls`.
    seen = [await turns._db(_raw_connection)() for _ in range(calls)]
    if connection.vendor == "sqlite":
        assert len({id(raw) for raw, _age in seen}) <= settings.TURN_DB_THREADS
        assert {age for _raw, age in seen} == {None}
    else:
        assert {age for _raw, age in seen} == {0}
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
