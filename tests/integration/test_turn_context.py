"""What the model is shown of a conversation, through the real stack: which turns a request
carries (refused messages, failed regenerations), and what the rolling summary is made of.

The conversation's earlier turns are sometimes written straight into the table: a test sets up
a state (a superseded reply, a regeneration that failed) it would otherwise need many scripted
provider calls to reach, and says so."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import budgets, prices
from conversations import services
from conversations.models import Message

from .conftest import OPENAI_MODEL, db, replies_finished, ws_frames_until_end, ws_open, ws_turn

pytestmark = pytest.mark.django_db(transaction=True)

SUMMARY_INSTRUCTION = "Update the running summary"


def _chats(fake_provider, key: str) -> list:
    """The key's requests that were turns (not summary or title calls)."""
    return [
        r for r in fake_provider.requests_for(key)
        if SUMMARY_INSTRUCTION not in str(r.messages[0]["content"]) and "Write a title" not in str(r.messages[0]["content"])
    ]


def _sent(request) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.messages]


def _written(conversation, role, content, *, reply_to=None, status="done", seconds_ago: int):
    """A message as an earlier turn left it (set up directly: see the module docstring)."""
    message = Message.objects.create(conversation=conversation, role=role, content=content, reply_to=reply_to, status=status)
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(seconds=seconds_ago))
    message.refresh_from_db()
    return message


async def test_a_message_refused_as_too_long_is_not_sent_later_and_does_not_push_out_earlier_turns(
    priced, add_key, fake_provider, make_user, conversation_for
):
    await db(prices.price_set)(
        model_id=OPENAI_MODEL, input_per_million="2", output_per_million="8", context_window=2000, max_output_tokens=200
    )
    user = await db(make_user)("huge")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-huge", text="Noted, your name is Mina.")
    conversation = await db(conversation_for)(user)
    ws = await ws_open(user, conversation.id)
    await ws_turn(ws, "My name is Mina.")
    await replies_finished()
    frames = await ws_turn(ws, "word " * 5000)  # far larger than the window
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid_input"
    await ws_turn(ws, "What is my name?")
    await replies_finished()
    await ws.disconnect()

    chats = _chats(fake_provider, "sk-huge")
    assert len(chats) == 2
    # The refused message never reached the model; the turns before it fit, and are sent as they are.
    assert _sent(chats[1]) == [
        ("user", "My name is Mina."), ("assistant", "Noted, your name is Mina."), ("user", "What is my name?"),
    ]
    # Nothing was trimmed, so nothing was summarised (the summary call is billed).
    assert not [r for r in fake_provider.requests_for("sk-huge") if SUMMARY_INSTRUCTION in str(r.messages[0]["content"])]


async def test_a_failed_regeneration_leaves_the_earlier_answer_in_the_context(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = await db(make_user)("regen")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-regen", text="It is four.")
    conversation = await db(conversation_for)(user)
    ws = await ws_open(user, conversation.id)
    await ws_turn(ws, "What is 2+2?")
    await replies_finished()
    # Regenerate; the provider refuses it before any text (a 400: the key stays usable).
    fake_provider.script("sk-regen", mode="error", status=400)
    await ws.send_json_to({"type": "regenerate"})
    frames = await ws_frames_until_end(ws)
    await replies_finished()
    assert frames[-1].get("finish_reason") == "error" or frames[-1]["type"] == "error"
    fake_provider.script("sk-regen", text="Twelve.")
    await ws_turn(ws, "And times 3?")
    await replies_finished()
    await ws.disconnect()

    assert _sent(_chats(fake_provider, "sk-regen")[-1]) == [
        ("user", "What is 2+2?"), ("assistant", "It is four."), ("user", "And times 3?"),
    ]


async def test_a_stopped_regeneration_with_partial_text_does_not_replace_a_complete_answer(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = await db(make_user)("partial")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-partial", text="Next question answered.")
    conversation = await db(conversation_for)(user)

    def earlier_turns():
        question = _written(conversation, "user", "What is 2+2?", seconds_ago=30)
        _written(conversation, "assistant", "It is four.", reply_to=question, seconds_ago=29)
        _written(conversation, "assistant", "It is fo", reply_to=question, status="cancelled", seconds_ago=28)

    await db(earlier_turns)()
    ws = await ws_open(user, conversation.id)
    await ws_turn(ws, "And times 3?")
    await replies_finished()
    await ws.disconnect()

    assert _sent(_chats(fake_provider, "sk-partial")[-1]) == [
        ("user", "What is 2+2?"), ("assistant", "It is four."), ("user", "And times 3?"),
    ]


def test_the_summary_leaves_out_a_reply_that_was_regenerated_away(priced, add_key, fake_provider, make_user, conversation_for):
    user = make_user("superseded")
    add_key("openai", "sk-superseded", text="a summary")
    conversation = conversation_for(user)
    question = _written(conversation, "user", "What is 2+2?", seconds_ago=30)
    _written(conversation, "assistant", "REJECTED-ANSWER five", reply_to=question, seconds_ago=29)
    _written(conversation, "assistant", "It is four.", reply_to=question, seconds_ago=28)
    unanswered = _written(conversation, "user", "REFUSED-QUESTION", seconds_ago=27)
    _written(conversation, "user", "Next?", seconds_ago=26)

    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=unanswered.id) is True

    (request,) = fake_provider.requests_for("sk-superseded")
    sent = request.messages[-1]["content"]
    assert "It is four." in sent and "What is 2+2?" in sent
    assert "REJECTED-ANSWER" not in sent and "REFUSED-QUESTION" not in sent
    conversation.refresh_from_db()
    assert conversation.summary == "a summary" and conversation.summary_upto_id == unanswered.id
