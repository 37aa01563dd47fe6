"""Data rights, the conversations part: export a person's conversations and forget them.

The accounts app runs export and erasure (accounts.data_rights) and asks this module for the
rows it owns. Everything here reads messages with `.iterator()` and writes in batches, so memory
stays flat however long the history is.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _
from markdown_it import MarkdownIt

from .models import Conversation, Message
from .turns import buffer_key, stream_state

logger = logging.getLogger(__name__)

MESSAGE_CHUNK = 500  # rows fetched per round trip while exporting
DELETE_BATCH = 500  # messages deleted per transaction while forgetting
RUNNING = [Message.Status.PENDING, Message.Status.STREAMING]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- Reading ------------------------------------------------------------------------------------


def conversations_counts(*, user_id: int) -> dict[str, int]:
    """How many conversations and messages `user_id` owns (for progress and previews)."""
    return {
        "conversations": Conversation.objects.filter(owner_id=user_id).count(),
        "messages": Message.objects.filter(conversation__owner_id=user_id).count(),
    }


def conversations_for_export(*, user_id: int) -> Iterator[Conversation]:
    """The user's conversations, oldest first; heavy text is loaded one conversation at a time."""
    ids = Conversation.objects.filter(owner_id=user_id).order_by("created_at", "id").values_list("id", flat=True)
    for conversation_id in ids.iterator(chunk_size=MESSAGE_CHUNK):
        conversation = Conversation.objects.filter(pk=conversation_id).first()
        if conversation is not None:  # deleted while the export ran: skip it
            yield conversation


def conversation_messages(*, conversation: Conversation) -> Iterator[Message]:
    """Every message of `conversation`, in the order they were said, streamed from the database.
    A reply still being written holds its words so far in the stream buffer, not in its row
    (the row is written when it ends): those words are what the person has seen, so they are
    what its content says here (the row itself is not changed)."""
    messages = Message.objects.filter(conversation=conversation).order_by("created_at", "id")
    for message in messages.iterator(chunk_size=MESSAGE_CHUNK):
        if message.status in RUNNING and not message.content:
            try:
                state = stream_state(conversation_id=conversation.id)
            except Exception:  # noqa: BLE001 - a cache fault leaves the row's own (empty) content
                logger.warning("stream buffer of conversation %s unreadable while exporting", conversation.id)
                state = None
            if state is not None and str(state.get("message_id")) == str(message.id):
                message.content = state.get("text") or ""
        yield message


def conversation_as_dict(conversation: Conversation) -> dict:
    """The conversation's fields as documented in the export README (without its messages)."""
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "temperature": str(conversation.temperature) if conversation.temperature is not None else None,
        "max_tokens": conversation.max_tokens,
        "summary": conversation.summary,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
    }


def message_as_dict(message: Message) -> dict:
    return {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "model": message.model,
        "finish_reason": message.finish_reason,
        "error_code": message.error_code,
        "reply_to": str(message.reply_to_id) if message.reply_to_id else None,
        "created_at": _iso(message.created_at),
        # Money as a decimal string, never a float.
        "usage": {
            "input_tokens": message.input_tokens,
            "output_tokens": message.output_tokens,
            "cost": format(message.cost, "f"),
        },
    }


def conversation_json_head(conversation: Conversation) -> str:
    """The conversation's JSON object up to the opening of its "messages" array."""
    head = json.dumps(conversation_as_dict(conversation), ensure_ascii=False)
    return head[:-1] + ', "messages": ['


def message_json(message: Message, *, first: bool) -> str:
    return ("\n" if first else ",\n") + "  " + json.dumps(message_as_dict(message), ensure_ascii=False)


def conversation_json_tail() -> str:
    return "\n]}"


def conversation_json_chunks(*, conversation: Conversation) -> Iterator[str]:
    """One conversation as a JSON object (the single-conversation download), a message at a time."""
    yield conversation_json_head(conversation)
    for index, message in enumerate(conversation_messages(conversation=conversation)):
        yield message_json(message, first=index == 0)
    yield conversation_json_tail() + "\n"


def _tz(tz_name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(tz_name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def _when(value: datetime, tz_name: str) -> str:
    return timezone.localtime(value, _tz(tz_name)).strftime("%Y-%m-%d %H:%M %Z")


# The files are read in Markdown viewers, most of which load images and render raw HTML. Model
# output is untrusted (the chat page shows no image and no HTML of it): a reply can be made to
# write an image whose address carries the conversation away. This parser (raw HTML on, as such
# a viewer's) only finds the texts that would load or run something there.
_viewer = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")
_TITLE_MARKUP = re.compile(r"([\\`*_\[\]<>])")


_END = "parley-end-of-text"


def _loads_or_runs(text: str) -> bool:
    """Whether a Markdown viewer showing `text` would fetch an image or render raw HTML, or would
    read on past its end inside it (a reply cut in a code block): then the next message's own
    text, a fence that closes this one, would be read out of its place."""
    tokens = _viewer.parse(f"{text}\n\n{_END}\n")
    for token in tokens:
        if token.type == "html_block":
            return True
        if any(child.type in ("image", "html_inline") for child in token.children or ()):
            return True
    end = tokens[-2] if len(tokens) >= 2 else None
    return end is None or end.type != "inline" or end.content != _END or end.level != 1


def _markdown_text(text: str) -> str:
    """`text`, Markdown already, as it was written; one that would load or run something in a
    viewer goes in a code block, shown as its source (a fence longer than any run of backticks in
    it, so no line of it closes the block). conversations.json holds it as written either way."""
    if not _loads_or_runs(text):
        return text
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def conversation_markdown_head(conversation: Conversation, *, tz_name: str = "UTC") -> str:
    # A title is plain text everywhere: its Markdown and HTML characters are escaped.
    title = _TITLE_MARKUP.sub(r"\\\1", conversation.title) if conversation.title else _("Untitled conversation")
    parts = [
        f"# {title}\n\n",
        f"- {_('Model')}: `{conversation.model}`\n",
        f"- {_('Started')}: {_when(conversation.created_at, tz_name)}\n",
        f"- {_('Conversation id')}: `{conversation.id}`\n\n",
    ]
    if conversation.system_prompt:
        parts.append(f"## {_('System prompt')}\n\n{_markdown_text(conversation.system_prompt)}\n\n")
    parts.append("---\n")
    return "".join(parts)


def message_markdown(message: Message, *, tz_name: str = "UTC") -> str:
    """One message: a heading naming who spoke and when, then the text as it was written (it is
    Markdown already), as its source where a viewer would load or run something of it."""
    who = _("You") if message.role == Message.Role.USER else _("Assistant")
    if message.role == Message.Role.ASSISTANT and message.model:
        who = f"{who} ({message.model})"
    parts = [f"\n### {who} · {_when(message.created_at, tz_name)}\n\n"]
    if message.status != Message.Status.DONE:
        parts.append(f"*{_('Status')}: {message.get_status_display()}*\n\n")
    parts.append(_markdown_text(message.content or "") + "\n")
    return "".join(parts)


def conversation_markdown_chunks(*, conversation: Conversation, tz_name: str = "UTC") -> Iterator[str]:
    """One conversation as a Markdown document: a heading, its settings, then every message."""
    yield conversation_markdown_head(conversation, tz_name=tz_name)
    for message in conversation_messages(conversation=conversation):
        yield message_markdown(message, tz_name=tz_name)


def conversation_file_stem(conversation: Conversation) -> str:
    """A file name that sorts by date and is unique: `2026-11-21-some-title-1a2b3c4d`."""
    slug = slugify(conversation.title or "", allow_unicode=True)[:60].strip("-") or "conversation"
    return f"{conversation.created_at:%Y-%m-%d}-{slug}-{conversation.id.hex[:8]}"


# --- Forgetting ---------------------------------------------------------------------------------


def conversations_stop_running(*, user_id: int) -> int:
    """Mark the user's pending and streaming replies cancelled (the rows are deleted right after
    anyway; this makes a turn that checks its message's status stop writing). Returns how many."""
    return Message.objects.filter(conversation__owner_id=user_id, status__in=RUNNING).update(
        status=Message.Status.CANCELLED, finish_reason="cancelled"
    )


def conversation_ids_of(*, user_id: int, limit: int | None = None) -> list:
    ids = Conversation.objects.filter(owner_id=user_id).order_by("created_at", "id").values_list("id", flat=True)
    return list(ids[:limit] if limit else ids)


def stream_cache_prefixes(*, conversation_ids: Iterable[str]) -> list[str]:
    """Cache key prefixes holding a conversation's live reply (the turn's stream buffer)."""
    return [buffer_key(cid) for cid in conversation_ids]


def _scrub_admin_log(object_ids: list[str], model) -> None:
    """The admin history names changed objects by their str() (a conversation's title): keep the
    entry, drop the words."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    content_type = ContentType.objects.get_for_model(model)
    LogEntry.objects.filter(content_type=content_type, object_id__in=object_ids).update(
        object_repr=f"(erased {model._meta.model_name})", change_message=""
    )


@dataclass
class Forgotten:
    conversations: int = 0
    messages: int = 0


def _delete_messages(message_filter: dict) -> int:
    """Delete matching messages one bounded batch per transaction (resumable: what was deleted
    stays deleted). Links into the batch are cut first so the delete never loads whole rows."""
    total = 0
    while True:
        ids = list(Message.objects.filter(**message_filter).values_list("id", flat=True)[:DELETE_BATCH])
        if not ids:
            return total
        with transaction.atomic():
            Conversation.objects.filter(summary_upto_id__in=ids).update(summary_upto=None)
            Message.objects.filter(reply_to_id__in=ids).update(reply_to=None)
            _scrub_admin_log([str(i) for i in ids], Message)
            Message.objects.filter(id__in=ids).only("id").delete()
        total += len(ids)


def conversations_delete(*, conversation_ids: list) -> Forgotten:
    """Delete these conversations with all their messages and summaries."""
    result = Forgotten()
    if not conversation_ids:
        return result
    result.messages = _delete_messages({"conversation_id__in": conversation_ids})
    with transaction.atomic():
        _scrub_admin_log([str(i) for i in conversation_ids], Conversation)
        _total, per_model = Conversation.objects.filter(id__in=conversation_ids).delete()
        result.conversations = per_model.get(Conversation._meta.label, 0)
    return result


def conversations_purge_older_than(*, days: int, now: datetime | None = None) -> Forgotten:
    """Retention: delete conversations with no activity for `days` days. Activity is the later of
    the conversation's `updated_at` and its newest message; a conversation with a reply still
    running is kept. Usage records are not touched, so recorded spend never goes down."""
    if days <= 0:
        raise ValueError("days must be positive")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    recent_or_running = Message.objects.filter(conversation=OuterRef("pk")).filter(
        Q(created_at__gte=cutoff) | Q(status__in=RUNNING)
    )
    stale = (
        Conversation.objects.filter(updated_at__lt=cutoff, created_at__lt=cutoff)
        .exclude(Exists(recent_or_running))
        .values_list("id", flat=True)
    )
    total = Forgotten()
    while True:
        ids = list(stale[:200])
        if not ids:
            return total
        batch = conversations_delete(conversation_ids=ids)
        total.conversations += batch.conversations
        total.messages += batch.messages


def conversation_get_for_owner(*, conversation_id: uuid.UUID, user_id: int) -> Conversation | None:
    """The conversation if `user_id` owns it, else None (the view answers 404 either way)."""
    return Conversation.objects.filter(pk=conversation_id, owner_id=user_id).first()
