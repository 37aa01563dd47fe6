"""Retention: CONVERSATION_RETENTION_DAYS purges only what is older, and never lowers spend."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import data_rights
from accounts.tasks import conversations_retention_task
from billing import data_rights as billing_rights
from conversations.models import Conversation, Message

from .data_rights_fixtures import make_history


def _age(conversation, days):
    moment = timezone.now() - timedelta(days=days)
    Conversation.objects.filter(pk=conversation.pk).update(created_at=moment, updated_at=moment)
    Message.objects.filter(conversation=conversation).update(created_at=moment)


@pytest.fixture
def history(user, other_user):
    make_history(user, conversations=4, messages_each=2)
    make_history(other_user, conversations=1, messages_each=2)
    old, older, recent, revived = Conversation.objects.filter(owner=user).order_by("created_at")
    stranger_old = Conversation.objects.get(owner=other_user)
    _age(old, 31)
    _age(older, 400)
    _age(recent, 29)
    _age(revived, 90)
    Message.objects.create(conversation=revived, role="user", content="still talking")  # active today
    _age(stranger_old, 45)
    return {"old": old, "older": older, "recent": recent, "revived": revived, "stranger_old": stranger_old}


@pytest.mark.django_db
def test_retention_removes_only_conversations_older_than_the_setting(history, settings):
    settings.CONVERSATION_RETENTION_DAYS = 30
    totals = billing_rights.usage_totals()
    conversations_retention_task.delay()
    left = set(Conversation.objects.values_list("pk", flat=True))
    assert left == {history["recent"].pk, history["revived"].pk}
    assert not Message.objects.filter(conversation_id__in=[history["old"].pk, history["older"].pk]).exists()
    assert billing_rights.usage_totals() == totals  # deleting conversations never lowers spend


@pytest.mark.django_db
def test_retention_unset_keeps_everything(history, settings):
    settings.CONVERSATION_RETENTION_DAYS = None
    assert data_rights.retention_purge() is None
    assert Conversation.objects.count() == 5


@pytest.mark.django_db
def test_retention_keeps_a_conversation_whose_reply_is_still_running(history, settings):
    Message.objects.create(conversation=history["old"], role="assistant", status=Message.Status.STREAMING)
    Message.objects.filter(conversation=history["old"]).update(created_at=timezone.now() - timedelta(days=31))
    counts = data_rights.retention_purge(days=30)
    assert Conversation.objects.filter(pk=history["old"].pk).exists()
    assert counts["conversations"] == 2  # older and the stranger's


@pytest.mark.django_db
def test_retention_refuses_a_non_positive_window(history):
    from conversations.data_rights import conversations_purge_older_than

    with pytest.raises(ValueError):
        conversations_purge_older_than(days=0)
    assert Conversation.objects.count() == 5
