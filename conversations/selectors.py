"""Reads. Every lookup is scoped to its owner inside the query itself, so another user's
conversation is simply "not found" (404), never "forbidden"."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.db.models import QuerySet

from .models import Conversation, Message

RUNNING = (Message.Status.PENDING, Message.Status.STREAMING)
# The error_code of a reply the provider's safety filter ended (Anthropic's stop_reason "refusal").
# Anthropic: the refused turn must leave the context, or every later request is refused as well.
REFUSED = "refused"
# The error_code of a reply the provider's content filter cut (OpenAI's finish_reason
# "content_filter"): sent back, the turn would trip the filter on every later request.
FILTERED = "content_filter"
ENDED_BY_PROVIDER = (REFUSED, FILTERED)  # turns the model is never shown again


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


def conversation_timeline(*, conversation) -> list[Message]:
    """Every message of `conversation`, oldest first, with what messages_seen_by_model and the
    positions around summary_upto need (the turn's history and the rolling summary read it)."""
    return list(
        Message.objects.filter(conversation=conversation)
        .order_by("created_at", "id")
        .only("id", "role", "content", "reply_to_id", "created_at", "status", "error_code")
    )


def messages_seen_by_model(*, messages: Sequence[Message], answering_id: uuid.UUID | None = None) -> list[Message]:
    """The conversation as the model sees it: from `messages` (one conversation's, oldest first),
    each question that has an answer, followed by that one answer, in the order they were written.

    The one rule for every request that shows the conversation to a model (the turn's history,
    the rolling summary), so that the summary never holds what the model was never shown.

    Per question, the answer is the newest reply that finished (done), else the newest that has
    text (a cut or stopped reply keeps what it said): a failed or stopped regeneration does not
    replace a complete answer, and leaves the question answered. A question with no reply with
    text (refused as too long, over budget, failed before any output) is left out: the model never
    answered it, and it must not push answered turns out of the window nor be summarised. A reply
    the provider's safety or content filter ended (ENDED_BY_PROVIDER) counts as none: its text
    stays on the page, but the model is never shown the turn again (the provider refuses, or
    filters, every later request else). The one exception is `answering_id`, the question being
    answered now: it is kept, and its earlier replies are not (a regeneration asks afresh).
    """
    chosen: dict[uuid.UUID, Message] = {}  # question id -> the reply the model sees
    for message in messages:
        if (
            message.role != Message.Role.ASSISTANT
            or message.reply_to_id is None
            or message.reply_to_id == answering_id
            or not message.content
            or message.status in RUNNING
            or message.error_code in ENDED_BY_PROVIDER
        ):
            continue
        current = chosen.get(message.reply_to_id)
        # Oldest first: a newer reply wins unless it did not finish and the current one did.
        if current is None or message.status == Message.Status.DONE or current.status != Message.Status.DONE:
            chosen[message.reply_to_id] = message
    seen: list[Message] = []
    kept_questions: set[uuid.UUID] = set()
    for message in messages:
        if message.role == Message.Role.USER:
            if message.content and (message.id == answering_id or message.id in chosen):
                seen.append(message)
                kept_questions.add(message.id)
        elif message.reply_to_id is None:
            # A reply whose question row is gone (reply_to is SET_NULL): its text is all there is.
            if message.content and message.status not in RUNNING:
                seen.append(message)
        elif message.reply_to_id in kept_questions and chosen.get(message.reply_to_id) is message:
            seen.append(message)
    return seen
