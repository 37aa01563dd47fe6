"""Writes on conversations (the turn, which writes messages, lives in turns.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from .models import Conversation

# The fields a body may set. owner, id, summary and timestamps are never taken from a request.
EDITABLE_FIELDS = ("title", "model", "system_prompt", "temperature", "max_tokens")
MAX_TOKENS_CEILING = 1_000_000


@dataclass
class InvalidField(Exception):
    field: str
    message: str


def _clean(data: dict) -> dict:
    """Type-checks and normalizes the editable fields present in `data`; raises InvalidField."""
    out: dict = {}
    for name in EDITABLE_FIELDS:
        if name not in data:
            continue
        value = data[name]
        if name == "title":
            if not isinstance(value, str) or len(value) > 200:
                raise InvalidField(name, _("The title must be text of at most 200 characters."))
            out[name] = value.strip()
        elif name == "system_prompt":
            if not isinstance(value, str) or len(value) > settings.MAX_MESSAGE_CHARS:
                raise InvalidField(name, _("The system prompt must be text of at most %(n)d characters.") % {"n": settings.MAX_MESSAGE_CHARS})
            out[name] = value
        elif name == "model":
            if not isinstance(value, str) or ":" not in value or len(value) > 120:
                raise InvalidField(name, _("The model must be named provider:model."))
            from billing.prices import price_for

            if price_for(model_id=value) is None:
                raise InvalidField(name, _("This model is not available."))
            out[name] = value
        elif name == "temperature":
            if value is None:
                out[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise InvalidField(name, _("The temperature must be a number from 0 to 2."))
            try:
                # Via str: a float like 0.7 becomes Decimal("0.7"), not its binary expansion.
                temp = Decimal(str(value)).quantize(Decimal("0.01"))
            except (InvalidOperation, ValueError):
                raise InvalidField(name, _("The temperature must be a number from 0 to 2.")) from None
            if not (Decimal("0") <= temp <= Decimal("2")):
                raise InvalidField(name, _("The temperature must be a number from 0 to 2."))
            out[name] = temp
        elif name == "max_tokens":
            if value is None:
                out[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= MAX_TOKENS_CEILING):
                raise InvalidField(name, _("Max tokens must be a whole number from 1 to %(n)d.") % {"n": MAX_TOKENS_CEILING})
            out[name] = value
    return out


def conversation_create(*, owner, data: dict | None = None) -> Conversation:
    fields = _clean(data or {})
    fields.setdefault("model", owner.default_model or settings.DEFAULT_MODEL)
    conversation = Conversation(owner=owner, **fields)
    try:
        conversation.full_clean()
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        raise InvalidField(name, " ".join(messages)) from None
    conversation.save()
    return conversation


def conversation_update(*, conversation: Conversation, data: dict) -> Conversation:
    fields = _clean(data)
    if not fields:
        return conversation
    for name, value in fields.items():
        setattr(conversation, name, value)
    conversation.updated_at = timezone.now()
    conversation.full_clean()
    conversation.save(update_fields=[*fields, "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    # A running reply is stopped first so its task settles the budget instead of writing into a
    # deleted row; recorded spend lives in the ledger and is untouched by the delete.
    from .turns import turn_stop

    turn_stop(conversation_id=conversation.id)
    with transaction.atomic():
        conversation.delete()


def conversation_touch(*, conversation_id) -> None:
    Conversation.objects.filter(id=conversation_id).update(updated_at=timezone.now())
