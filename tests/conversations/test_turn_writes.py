"""The database is written a bounded number of times per reply, not once per delta."""

import uuid

import pytest
from channels.db import database_sync_to_async
from django.db.backends import utils as db_utils

from conversations import turns
from conversations.llm.base import Finish, TextDelta, Usage
from conversations.models import Message

from .conftest import receive_until, ws_connect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def write_counter(monkeypatch):
    """Counts INSERT/UPDATE/DELETE statements from every thread (the ORM runs in worker threads)."""
    writes: list[str] = []
    original = db_utils.CursorWrapper.execute

    def execute(self, sql, params=None):
        if sql.lstrip().split(" ", 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            writes.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(db_utils.CursorWrapper, "execute", execute)
    return writes


async def _reply_writes(ws, chat_backends, write_counter, n_deltas: int) -> int:
    chat_backends.scripts.append([TextDelta(f"w{i} ") for i in range(n_deltas)] + [Usage(5, n_deltas), Finish("stop")])
    write_counter.clear()
    await ws.send_json_to({"type": "user_message", "content": "count", "client_id": str(uuid.uuid4())})
    frames = await receive_until(ws, "done")
    await turns.replies_wait()
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "".join(f"w{i} " for i in range(n_deltas))
    return len([w for w in write_counter if "conversations_" in w])


async def test_database_writes_per_reply_do_not_grow_with_its_length(
    chat_backends, user, conversation_factory, write_counter, monkeypatch
):
    # No heartbeat inside the test (it would depend on wall time, not on the reply's length).
    monkeypatch.setattr(turns, "HEARTBEAT_SECONDS", 3600)
    conversation = await database_sync_to_async(conversation_factory)(user, title="counted")
    ws, _ = await ws_connect(user, conversation.id)
    short = await _reply_writes(ws, chat_backends, write_counter, 10)
    long = await _reply_writes(ws, chat_backends, write_counter, 500)
    assert short == long
    # user message, assistant message, "streaming" flip, final message + conversation touch.
    assert short <= 6
    reply = await database_sync_to_async(lambda: Message.objects.filter(role="assistant").order_by("-created_at").first())()
    assert reply.output_tokens == 500
    await ws.disconnect()
