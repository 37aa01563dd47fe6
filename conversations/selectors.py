"""Reads. Every lookup is scoped to its owner inside the query itself, so another user's
conversation is simply "not found" (404), never "forbidden"."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from .models import Conversation, Message

RUNNING = (Message.Status.PENDING, Message.Status.STREAMING)


def conversation_get(*, owner, conversation_id) -> Conversation | None:
    try:
        conversation_id = uuid.UUID(str(conversation_id))
    except (TypeError, ValueError):
        return None
    return Conversation.objects.filter(owner=owner, id=conversation_id).first()


def conversation_list(*, owner, title_contains: str = "") -> QuerySet[Conversation]:
    qs = Conversation.objects.filter(owner=owner)
    if title_contains:
        qs = qs.filter(title__icontains=title_contains)
    # id breaks ties so pagination by offset never shows a row twice.
    return qs.order_by("-updated_at", "-id")


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return Message.objects.filter(conversation=conversation).order_by("created_at", "id")


def message_running(*, conversation_id) -> Message | None:
    return Message.objects.filter(conversation_id=conversation_id, status__in=RUNNING).first()
