"""Titles, rolling summaries and the reaper of replies whose process died."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from conversations import services, tasks, turns
from conversations.llm.base import Finish, TextDelta, Usage
from conversations.models import Conversation, Message

from .conftest import receive_until, ws_connect


@pytest.mark.django_db(transaction=True)
async def test_the_first_reply_gives_a_demo_conversation_a_title_from_its_first_words(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "Plan a  trip to Busan in the spring please", "client_id": str(uuid.uuid4())})
    await receive_until(ws, "done")
    await turns.replies_wait()
    await ws.disconnect()
    title = await database_sync_to_async(lambda: Conversation.objects.get(id=conversation.id).title)()
    assert title == "Plan a trip to Busan in"


@pytest.mark.django_db(transaction=True)
def test_a_title_task_the_broker_refuses_does_not_lose_the_summary_task(monkeypatch, caplog):
    """Redis down as a reply ends: the title's send fails (logged); the summary's still goes."""
    from kombu.exceptions import OperationalError

    def refused(*args):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    summaries = []
    monkeypatch.setattr(tasks.conversation_title, "delay", refused)
    monkeypatch.setattr(tasks.conversation_summarize, "delay", lambda *args: summaries.append(args))
    conversation_id, upto = uuid.uuid4(), uuid.uuid4()
    plan = type("Plan", (), {"conversation_id": conversation_id, "wants_title": True, "summarize_upto": upto})()

    turns._reply_followups(plan=plan, finish_reason="stop")

    assert summaries == [(str(conversation_id), str(upto))]
    assert "Connection refused" in caplog.text


@pytest.mark.django_db
def test_a_titled_conversation_keeps_its_title(chat_backends, user):
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Mine")
    Message.objects.create(conversation=conversation, role="user", content="something else")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Mine"


@pytest.mark.django_db
def test_a_real_model_titles_through_its_adapter_and_the_call_is_billed(chat_backends, user):
    chat_backends.key("k")
    chat_backends.scripts.append([TextDelta('"Trip'), TextDelta(' plans"'), Usage(40, 2), Finish("stop")])
    conversation = Conversation.objects.create(owner=user, model="openai:gpt-test")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Trip plans"
    assert chat_backends.usage[-1]["outcome"] == "ok" and chat_backends.usage[-1]["input_tokens"] == 40
    assert len(chat_backends.settlements) == 1


@pytest.mark.parametrize(
    "answer",
    [
        "**Trip to Busan**",
        "# Trip to Busan",
        "\u201cTrip to Busan\u201d",
        "'Trip to Busan'",
        '"Trip to Busan".',
        "Title: Trip to Busan",
        "## *Trip to Busan*\n\nA title for a trip.",
    ],
)
@pytest.mark.django_db
def test_a_generated_title_is_plain_text_without_the_models_quotes_and_markup(chat_backends, user, answer):
    chat_backends.key("k")
    chat_backends.scripts.append([TextDelta(answer), Usage(40, 5), Finish("stop")])
    conversation = Conversation.objects.create(owner=user, model="openai:gpt-test")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Trip to Busan"


@pytest.mark.django_db
def test_a_generated_title_keeps_quotes_and_marks_inside_it(chat_backends, user):
    chat_backends.key("k")
    chat_backends.scripts.append([TextDelta("Mina's *big* trip"), Usage(40, 5), Finish("stop")])
    conversation = Conversation.objects.create(owner=user, model="openai:gpt-test")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan")
    tasks.conversation_title(str(conversation.id))
    conversation.refresh_from_db()
    assert conversation.title == "Mina's *big* trip"


@pytest.mark.django_db
def test_the_rolling_summary_folds_dropped_turns_once(chat_backends, user):
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    first = Message.objects.create(conversation=conversation, role="user", content="My name is Mina.")
    reply = Message.objects.create(conversation=conversation, role="assistant", content="Hello Mina.", reply_to=first)
    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=reply.id) is True
    conversation.refresh_from_db()
    assert "Mina" in conversation.summary and conversation.summary_upto_id == reply.id
    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=first.id) is False


def _dead_reply(user):
    """A reply on openai:gpt-test whose process died 10 minutes ago, after 1000 input tokens and
    the text "so far" (in its stream buffer). Returns (conversation, reply, reservation id)."""
    from django.core.cache import cache

    conversation = Conversation.objects.create(owner=user, model="openai:gpt-test")
    question = Message.objects.create(conversation=conversation, role="user", content="q")
    stale = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", reply_to=question,
        heartbeat_at=timezone.now() - timedelta(minutes=10),
    )
    reservation = uuid.uuid4()
    cache.set(
        turns.buffer_key(conversation.id),
        {"message_id": str(stale.id), "seq": 3, "text": "so far", "model": "openai:gpt-test",
         "reservation_id": str(reservation), "input_tokens": 1000, "user_id": user.pk, "attempt": 1},
    )
    return conversation, stale, reservation


@pytest.mark.django_db
def test_the_reaper_marks_stale_replies_error_keeping_the_buffered_text(chat_backends, user):
    from django.core.cache import cache

    conversation, stale, reservation = _dead_reply(user)
    fresh_conv = Conversation.objects.create(owner=user, model="demo:echo")
    fresh = Message.objects.create(conversation=fresh_conv, role="assistant", status="streaming", heartbeat_at=timezone.now())

    assert tasks.replies_reap_stale() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.status, stale.finish_reason, stale.content) == ("error", "error", "so far")
    assert fresh.status == "streaming"
    assert cache.get(turns.buffer_key(conversation.id)) is None
    # Settled from what the buffer knew: 1000 input tokens at $1/M + 2 output tokens at $2/M.
    assert chat_backends.settlements == [(reservation, Decimal("0.001004"))]
    assert chat_backends.usage[-1]["outcome"] == "error" and chat_backends.usage[-1]["estimated"] is True
    assert stale.cost == Decimal("0.001004")
    assert tasks.replies_reap_stale() == 0
    assert len(chat_backends.settlements) == 1


@pytest.mark.django_db
def test_the_reaper_takes_a_reply_that_never_heartbeated_once_it_is_older_than_the_cutoff(chat_backends, user):
    old, young = (  # one running reply per conversation
        Message.objects.create(
            conversation=Conversation.objects.create(owner=user, model="demo:echo"), role="assistant", status="pending", content=text
        )
        for text in ("old", "young")
    )
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=10), heartbeat_at=None)
    Message.objects.filter(pk=young.pk).update(heartbeat_at=None)

    assert tasks.replies_reap_stale() == 1
    old.refresh_from_db()
    young.refresh_from_db()
    assert (old.status, old.error_code, old.content) == ("error", "interrupted", "old")
    assert young.status == "pending"


@pytest.mark.django_db
def test_the_reaper_charges_a_dead_reply_the_price_in_force_when_it_started(chat_backends, user, monkeypatch):
    """A price raised while the reply ran (or before the reaper came) does not apply to it."""
    from billing import prices

    from .conftest import _quote

    _conversation, stale, reservation = _dead_reply(user)
    raised_at = timezone.now()
    old, new = chat_backends.price_table["openai:gpt-test"], _quote("openai", "gpt-test", "GPT test", "100", "200")
    monkeypatch.setattr(prices, "price_for", lambda *, model_id, at=None: old if at is not None and at < raised_at else new)
    assert tasks.replies_reap_stale() == 1
    # 1000 input tokens at $1/M + 2 output tokens at $2/M: the old price, not $100/M and $200/M.
    assert chat_backends.settlements == [(reservation, Decimal("0.001004"))]
    stale.refresh_from_db()
    assert stale.cost == Decimal("0.001004")


@pytest.mark.django_db(transaction=True)
async def test_turns_trimmed_out_of_the_context_are_folded_into_the_summary(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, title="set")
    ws, _ = await ws_connect(user, conversation.id)
    for text in ["my name is Mina", "what is my name"]:
        await ws.send_json_to({"type": "user_message", "content": text, "client_id": str(uuid.uuid4())})
        await receive_until(ws, "done")
        await turns.replies_wait()
        chat_backends.drop_oldest = 2  # from the second turn on, the first exchange no longer fits
    await ws.disconnect()
    conversation = await database_sync_to_async(Conversation.objects.get)(id=conversation.id)
    first_reply = await database_sync_to_async(lambda: Message.objects.filter(role="assistant").order_by("created_at").first())()
    assert conversation.summary_upto_id == first_reply.id and "Mina" in conversation.summary
    # The next request carries the summary instead of the trimmed turns.
    chat_backends.drop_oldest = 0
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "and again", "client_id": str(uuid.uuid4())})
    await receive_until(ws, "done")
    await turns.replies_wait()
    await ws.disconnect()
    sent = [m.content for m in chat_backends.calls[-1][2].messages]
    assert sent[0].startswith("Summary:") and "my name is Mina" not in sent[1:]
