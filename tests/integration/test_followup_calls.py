"""The follow-up provider calls a turn queues (a title, a rolling summary) through the real
stack: the real keys, ledger and budgets, the real SDK adapters against the fake provider.
They are provider calls like any other: billed as such, and reported to the key state machine
as such."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from billing import budgets
from billing import keys as keys_mod
from billing.models import Budget, ProviderKey, UsageRecord
from conversations import services
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def _untitled_with_a_question(conversation_for, user) -> Conversation:
    conversation = conversation_for(user, title="")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan in the spring")
    return conversation


def test_a_title_call_cut_off_after_text_is_billed_like_a_cut_turn_and_not_retried(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("cuttitle")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-title-cut", priority=200, mode="stream_error", cut_after=3, text="Trip to Busan in spring")
    add_key("openai", "sk-title-spare", priority=100, text="Spare title")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    # The provider took the input and sent three words: a second call would bill the input again.
    assert len(fake_provider.requests_for("sk-title-cut")) == 1
    assert fake_provider.requests_for("sk-title-spare") == []
    (row,) = UsageRecord.objects.all()
    assert row.outcome == "error" and row.estimated is True
    assert row.input_tokens > 0 and row.output_tokens >= 3 and row.cost > 0
    budget = Budget.objects.get(user=user)
    assert budget.spent == row.cost and budget.reserved == Decimal("0")
    # The partial answer is not a title: the first words of the question stand in.
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


def test_a_title_call_refused_for_a_secret_rotated_meanwhile_leaves_the_new_secret_usable(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("rotated")
    budgets.budget_set(user=user, period="month", limit="5")
    key = add_key("openai", "sk-title-old", mode="error", status=401, first_delay_ms=300)
    conversation = _untitled_with_a_question(conversation_for, user)

    call = threading.Thread(target=services.conversation_title_generate, kwargs={"conversation_id": conversation.id})
    call.start()
    deadline = time.monotonic() + 10
    while not fake_provider.requests_for("sk-title-old") and time.monotonic() < deadline:
        time.sleep(0.01)
    # The operator replaces the secret while the call with the old one is on the wire.
    fake_provider.script("sk-title-new", text="New secret works")
    keys_mod.key_update(key_id=key.id, secret="sk-title-new")
    call.join(timeout=20)
    assert not call.is_alive()

    # The 401 was about the old secret: the new one stays healthy and is chosen.
    assert ProviderKey.objects.get(id=key.id).health == ProviderKey.Health.HEALTHY
    lease = keys_mod.key_choose(provider="openai")
    assert lease is not None and lease.id == key.id and lease.secret == "sk-title-new"
