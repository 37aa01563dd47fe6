"""Issue 6 through the real stack: a person erases their account while a real reply streams to
them. Afterwards no table and no cache key holds their name, email or words, the reply has
stopped for good, and the money it cost stays in the ledger without them."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model

from accounts import data_rights
from accounts.models import ErasureRequest
from billing import budgets
from billing.models import Reservation, UsageRecord
from conversations import turns
from conversations.models import Conversation, Message
from tests.accounts.data_rights_fixtures import scan_cache, scan_database

from .conftest import OPENAI_MODEL, db, replies_finished, ws_open

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("model_id", [OPENAI_MODEL, "demo:echo"])
async def test_erasure_during_a_streaming_reply_leaves_nothing_and_stops_the_reply(
    model_id, priced, add_key, fake_provider, make_user, conversation_for, settings
):
    tag = uuid.uuid4().hex[:8]
    settings.DEMO_DELAY_MS = 60  # the demo model streams slowly enough to be erased mid-reply
    user = await db(make_user)(f"erin{tag}", display_name=f"Erin Quill {tag}")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    said = f"my private plan kumquat{tag} " + " ".join(f"step{i}-{tag}" for i in range(120))
    # The fake provider answers with words that are the person's too (their reply).
    reply_words = " ".join(f"answer{i}-{tag}" for i in range(200))
    await db(add_key)("openai", f"sk-erase-{tag}", text=reply_words, pace_ms=40)
    conversation = await db(conversation_for)(user, model=model_id, title=f"plans of {tag}")

    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": said, "client_id": str(uuid.uuid4())})
    deltas = []
    while len(deltas) < 3:
        frame = await ws.receive_json_from(timeout=10)
        if frame["type"] == "delta":
            deltas.append(frame["text"])
    assert await db(Message.objects.filter(status__in=["pending", "streaming"]).exists)()

    erasure = await db(data_rights.erasure_request)(user=user, requested_by=user)

    # The erased person's socket either hears the reply end as cancelled or is closed outright
    # (the consumer closes every socket of a deactivated account, 4401); both end the stream.
    ending = []
    while True:
        message = await ws.receive_output(timeout=30)
        if message["type"] == "websocket.close":
            assert message.get("code") == 4401
            break
        frame = json.loads(message["text"])
        ending.append(frame)
        if frame["type"] == "done":
            assert frame["finish_reason"] == "cancelled"
            break
    await replies_finished()
    await ws.disconnect()

    assert (await db(ErasureRequest.objects.get)(pk=erasure.pk)).status == ErasureRequest.Status.DONE
    # Distinctive needles only (a two-letter word would turn up in any base64 by chance).
    streamed = [d.strip() for d in deltas if tag in d]
    needles = [user.username, user.email, user.display_name, f"kumquat{tag}", f"step7-{tag}", f"answer1-{tag}", *streamed]
    assert await db(scan_database)(needles) == []
    assert scan_cache(needles) == []
    assert not await db(get_user_model().objects.filter(pk=user.pk).exists)()
    assert await db(Conversation.objects.count)() == 0 and await db(Message.objects.count)() == 0
    # The reply wrote nothing back after the erasure, and no reply is left running anywhere.
    assert turns.stream_state(conversation_id=conversation.id) is None
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()
    if model_id == OPENAI_MODEL:
        assert len(fake_provider.requests_for(f"sk-erase-{tag}")) == 1
        # The provider billed what it streamed: that money stays, linked to nobody.
        (record,) = await db(list)(UsageRecord.objects.all())
        assert record.user_id is None and record.conversation_id is None and record.message_id is None
        assert record.cost > 0 and record.outcome == "cancelled"


async def test_a_socket_opened_before_the_account_was_locked_cannot_start_a_reply(priced, add_key, fake_provider, make_user, conversation_for):
    """Erasure locks the account at once and erases in a task; a socket already open must not
    start a reply (or save new words) in between."""
    user = await db(make_user)("leaving")
    await db(add_key)("openai", "sk-leaving")
    conversation = await db(conversation_for)(user)
    ws = await ws_open(user, conversation.id)

    await db(data_rights.erasure_request)(user=user, queue=False)  # locked; the task has not run
    await ws.send_json_to({"type": "user_message", "content": "one last thing", "client_id": str(uuid.uuid4())})
    # The consumer re-reads the session on every frame: a locked account's socket is closed
    # (4401) before the frame reaches the turn; the turn's own check refuses it otherwise.
    message = await ws.receive_output(timeout=10)
    if message["type"] == "websocket.send":
        frames = [json.loads(message["text"]), await ws.receive_json_from(timeout=10)]
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid_input"
    else:
        assert message["type"] == "websocket.close" and message.get("code") == 4401
    await ws.disconnect()

    assert await db(Message.objects.count)() == 0
    assert fake_provider.requests == []
