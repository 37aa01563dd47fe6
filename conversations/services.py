"""Writes on conversations (the turn, which writes messages, lives in turns.py)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from .models import Conversation

logger = logging.getLogger(__name__)

# The fields a body may set. owner, id, summary and timestamps are never taken from a request.
EDITABLE_FIELDS = ("title", "model", "system_prompt", "temperature", "max_tokens")
MAX_TOKENS_CEILING = 1_000_000


def message_too_long_text() -> str:
    """What a message over MAX_MESSAGE_CHARS is refused with, the limit named: by the socket, and
    by the chat page before it sends (one wording, one translation)."""
    return _("The message is longer than %(n)d characters.") % {"n": settings.MAX_MESSAGE_CHARS}


def text_unstorable(text: str) -> str | None:
    """Why not every database Parley runs on can store `text` as it is, or None when all can.
    A lone surrogate (a JSON escape like "\\ud800" decodes to one) cannot be encoded as UTF-8;
    PostgreSQL text cannot hold NUL while SQLite can: refused on both, so the two answer alike."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _("The text holds an unpaired surrogate, which is not a character.")
    if "\x00" in text:
        return _("The text must not contain NUL characters.")
    return None


@dataclass
class InvalidField(Exception):
    """`field` is the body's key (for programs); `message` is for people, in their language, and
    names the field in words (the chat page shows it as it is)."""

    field: str
    message: str


def _named(name: str, why: str) -> str:
    """A reason that does not say which field it is about, prefixed with the field's name in the
    reader's language (the model's verbose name): "System prompt: …", "시스템 프롬프트: …"."""
    try:
        label = capfirst(Conversation._meta.get_field(name).verbose_name)
    except FieldDoesNotExist:  # NON_FIELD_ERRORS: about no one field
        return why
    return f"{label}: {why}"


def _storable_text(name: str, value: str) -> None:
    if (why := text_unstorable(value)) is not None:
        raise InvalidField(name, _named(name, why))


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
            _storable_text(name, value)
            out[name] = value.strip()
        elif name == "system_prompt":
            if not isinstance(value, str) or len(value) > settings.MAX_MESSAGE_CHARS:
                raise InvalidField(name, _("The system prompt must be text of at most %(n)d characters.") % {"n": settings.MAX_MESSAGE_CHARS})
            _storable_text(name, value)
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
                temp = Decimal(str(value))
                # NaN and infinities first: a quiet NaN quantizes fine and only fails the range
                # comparison below, which raises InvalidOperation instead of answering False.
                if not temp.is_finite():
                    raise InvalidOperation
                temp = temp.quantize(Decimal("0.01"))
            except (InvalidOperation, ValueError):
                raise InvalidField(name, _("The temperature must be a number from 0 to 2.")) from None
            if not (Decimal("0") <= temp <= Decimal("2")):
                raise InvalidField(name, _("The temperature must be a number from 0 to 2."))
            # -0 is in range; copy_abs stores and answers it as 0, never as -0.0.
            out[name] = temp.copy_abs()
        elif name == "max_tokens":
            if value is None:
                out[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= MAX_TOKENS_CEILING):
                raise InvalidField(name, _("Max tokens must be a whole number from 1 to %(n)d.") % {"n": MAX_TOKENS_CEILING})
            out[name] = value
    return out


def model_default(*, user) -> str:
    """The model a new conversation of `user` starts on: their own default while it has a price,
    else DEFAULT_MODEL (whose price cannot be disabled). An operator disabling a price would
    otherwise leave every new conversation of theirs refusing each message."""
    from billing import prices

    chosen = user.default_model
    if chosen and prices.price_for(model_id=chosen) is not None:
        return chosen
    return settings.DEFAULT_MODEL


def conversation_create(*, owner, data: dict | None = None) -> Conversation:
    fields = _clean(data or {})
    if "model" not in fields:
        fields["model"] = model_default(user=owner)
    conversation = Conversation(owner=owner, **fields)
    try:
        conversation.full_clean()
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        raise InvalidField(name, _named(name, " ".join(messages))) from None
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
    conversations_delete_stopping_replies(conversation_ids=[conversation.id])


def conversations_delete_stopping_replies(*, conversation_ids: list) -> None:
    # A running reply is stopped first so its task settles the budget instead of writing into a
    # deleted row; recorded spend lives in the ledger and is untouched by the delete. Then data
    # rights' delete, which also takes the titles out of the admin history (an erasure later
    # could no longer find them: it only sees the conversations still there).
    from .data_rights import conversations_delete
    from .turns import turn_stop

    for conversation_id in conversation_ids:
        turn_stop(conversation_id=conversation_id)
    conversations_delete(conversation_ids=conversation_ids)


def conversation_touch(*, conversation_id) -> None:
    Conversation.objects.filter(id=conversation_id).update(updated_at=timezone.now())


# --- titles and rolling summaries (run from Celery tasks) --------------------------------------
TITLE_WORDS = 6
SUMMARY_CHARS = 4000


def _first_words(text: str, n: int = TITLE_WORDS) -> str:
    words = " ".join(text.split()).split(" ")
    title = " ".join(words[:n])
    return (title[:77] + "…") if len(title) > 80 else title


# Quotes a model wraps a title in, opening -> closing (a straight quote closes itself).
_TITLE_QUOTES = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "\u201e": "\u201c", "\u00ab": "\u00bb",
                 "\u300c": "\u300d", "\u300e": "\u300f"}
_TITLE_EMPHASIS = ("***", "**", "__", "*", "_", "~~")
_TITLE_LABEL = re.compile(r"^(?:title|subject|topic)\s*:\s*", re.IGNORECASE)


def _title_clean(answer: str) -> str:
    """The title in a model's answer, as plain text: models asked for "the title only" still
    answer "**Trip to Busan**", "# Trip to Busan", "\u201cTrip to Busan\u201d." or "Title: Trip to
    Busan", and the title is shown as plain text everywhere. Only wrappers are taken off: quotes
    and markup around the title, never inside it ("Mina's trip" keeps its apostrophe)."""
    line = next((line for line in answer.splitlines() if line.strip()), "")
    title = " ".join(line.split())
    while True:
        before = title
        title = re.sub(r"^#{1,6}\s+", "", title)  # a Markdown heading
        title = _TITLE_LABEL.sub("", title)
        if title.endswith(".") and not title.endswith(".."):
            title = title[:-1].rstrip()  # a title is not a sentence ("Busan." or "\u201cBusan\u201d.")
        for mark in _TITLE_EMPHASIS:
            if len(title) > 2 * len(mark) and title.startswith(mark) and title.endswith(mark):
                title = title[len(mark) : -len(mark)].strip()
                break
        closing = _TITLE_QUOTES.get(title[:1])
        if closing and len(title) > 1 and title.endswith(closing):
            title = title[1:-1].strip()
        if title == before:
            return title


FOLLOWUP_ATTEMPTS = 3  # keys a title or summary call tries at most: it has an offline fallback


def _complete(
    *, user, conversation_id, model_id: str, messages: list, max_tokens: int, counted: tuple[int, bool] | None = None
) -> str | None:
    """A short non-streamed completion (the stream joined), billed like any provider call:
    reserved first, failing over between keys as a turn does (failover.calls_with_failover),
    recorded in the ledger, settled. None when it cannot or should not run, or no call answered.

    `counted` is (tokens, estimated) of the request where the caller has counted its parts (the
    summary's pieces): the hold is taken on it instead of counting the request again."""
    from asgiref.sync import async_to_sync, sync_to_async

    from billing import budgets, keys, ledger, prices

    from . import context as context_mod
    from . import failover, llm
    from .llm.base import ChatRequest

    price = prices.price_for(model_id=model_id)
    provider, _sep, model_name = model_id.partition(":")
    if price is None:
        return None
    try:
        llm.get_adapter(provider)
    except KeyError:
        return None
    input_tokens, estimated = counted or context_mod.messages_tokens(messages=messages, model_id=model_id)
    try:
        reservation_id = budgets.budget_reserve(
            user=user,
            amount=prices.worst_case_cost(
                price=price, input_tokens=input_tokens, max_output_tokens=max_tokens, input_estimated=estimated
            ),
        )
    except budgets.BudgetExceeded:
        return None
    request = ChatRequest(model=model_name, messages=messages, max_tokens=max_tokens)
    # Taken at the start, as a turn takes it: the money stays with the team if the account is
    # erased while the call runs (and the memberships are read once, not at every ledger row).
    team_id = ledger.primary_team_id(user=user)

    def ledger_owner() -> dict:
        # The account may have been erased while the call ran: the row is then written without
        # the person or the conversation, and stays with the team (billing.ledger.ledger_owner).
        return ledger.ledger_owner(user=user, team_id=team_id, conversation_id=conversation_id, message_id=None)

    cost = Decimal("0")
    try:
        answer = failover.Collected()
        # The calls run on an event loop (a turn's, when a follow-up thread of it runs this);
        # their database steps come back to this thread (sync_to_async, thread-sensitive), on
        # its connection, as the rest of this function's do.
        ended = async_to_sync(failover.calls_with_failover)(
            provider=provider,
            model_id=model_id,
            request=request,
            first_key=keys.key_choose(provider=provider) if failover.needs_key(provider) else None,
            sink=answer,
            db=sync_to_async,
            ledger_owner=ledger_owner,
            max_attempts=FOLLOWUP_ATTEMPTS,
            reservation_id=reservation_id,
        )
        call = ended.call
        if call is not None:
            # Answered, or cut off after the provider began answering: it has billed the input
            # and what it sent, so this is billed as a turn is (failover.call_usage).
            if call.usage is None and counted is not None:
                # Billed by our count of the input: of the request as it was sent, as every other
                # call is. The parts' counts the hold was taken on add up to a few tokens more
                # (a line's trailing space or mark merges with the newline after it).
                input_tokens = context_mod.messages_tokens(messages=messages, model_id=model_id)[0]
            usage, estimated = failover.call_usage(
                usage=call.usage, input_tokens=input_tokens, text=answer.text, thinking="".join(call.thinking), model_id=model_id
            )
            cost = prices.cost_of(
                price=price, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens
            )
        with transaction.atomic():
            if call is not None:
                # The ledger row before the settlement: the lock order billing.ledger documents.
                ledger.usage_record(
                    **ledger_owner(), attempt=ended.attempt, provider=provider, model=model_name, key_id=ended.key_id,
                    input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens,
                    cost=cost, estimated=estimated, ttft_ms=None, latency_ms=call.latency_ms,
                    outcome="error" if call.error else "ok", error_kind=str(call.error.kind) if call.error else "",
                )
            budgets.budget_settle(reservation_id=reservation_id, actual=cost)
        if call is None or call.error is not None:
            return None  # a partial answer is not a title or a summary
        if ended.key_id is not None:
            keys.key_report_success(key_id=ended.key_id)
        return answer.text
    except BaseException:
        # A fault of ours, not a provider's answer (those are handled above): the worst-case
        # hold is settled now at what the call cost, not left to block the person's budget
        # until it expires (which still releases it, should this settle fail too). Settled
        # already, this does nothing.
        try:
            budgets.budget_settle(reservation_id=reservation_id, actual=cost)
        except Exception:  # noqa: BLE001 - the first fault is the one raised
            logger.exception("hold %s of a follow-up call not settled", reservation_id)
        raise


def conversation_title_generate(*, conversation_id) -> str | None:
    """Give an untitled conversation a title from its first exchange. Does nothing when it has
    one (running twice, or the user named it meanwhile)."""
    from .llm.base import ChatMessage
    from .models import Message

    conversation = Conversation.objects.select_related("owner").filter(id=conversation_id).first()
    if conversation is None or conversation.title:
        return None
    first = Message.objects.filter(conversation=conversation, role=Message.Role.USER).order_by("created_at", "id").first()
    if first is None:
        return None
    title = ""
    if not conversation.model.startswith("demo:"):
        reply = first.replies.filter(status=Message.Status.DONE).order_by("created_at").first()
        prompt = [
            ChatMessage("system", "Write a title of at most six words for this conversation. Answer with the title only."),
            ChatMessage("user", first.content[:2000] + ("\n\n" + reply.content[:1000] if reply else "")),
        ]
        title = (
            _complete(
                user=conversation.owner, conversation_id=conversation.id, model_id=conversation.model, messages=prompt, max_tokens=24
            )
            or ""
        )
        title = _title_clean(title)[:200]
    # The demo model (and any failure) falls back to the first words of the question.
    title = title or _first_words(first.content)
    updated = Conversation.objects.filter(id=conversation.id, title="").update(title=title)
    return title if updated else None


def _turns_to_summarize(*, conversation: Conversation, previous, upto) -> list:
    """The turns after `previous` up to and including `upto`, as the model was shown them
    (selectors.messages_seen_by_model, the rule the turn's history uses): a reply regenerated
    away or a question never answered was never in a context, so it is not in the summary."""
    from .selectors import conversation_timeline, messages_seen_by_model

    messages = conversation_timeline(conversation=conversation)
    ids = [m.id for m in messages]
    first = ids.index(previous.id) + 1 if previous is not None and previous.id in ids else 0
    # Positions, not times: the turn's history leaves out what the summary covers the same way.
    window = set(ids[first : ids.index(upto.id) + 1])
    return [m for m in messages_seen_by_model(messages=messages) if m.id in window]


SUMMARY_MAX_TOKENS = 400
SUMMARY_INSTRUCTION = (
    "Update the running summary of a conversation with the new turns. Keep facts, names, decisions "
    "and open questions. Answer with the summary only."
)
# Our count of a prompt is the model's own only for some models (tiktoken encodings of OpenAI's);
# for the others it is an estimate, and a provider refuses a prompt over its window outright. The
# pieces are cut this much below the room we count, so an estimate a little low still fits.
SUMMARY_ROOM_MARGIN = 0.9
# Below this many tokens of room for the turns, a piece would be a few words: not worth a call.
SUMMARY_MIN_ROOM = 64


def _summary_prompt(*, summary: str, piece: str) -> list:
    from .llm.base import ChatMessage

    return [
        ChatMessage("system", SUMMARY_INSTRUCTION),
        ChatMessage("user", f"Summary so far:\n{summary}\n\nNew turns:\n{piece}"),
    ]


@dataclass(frozen=True)
class _SummaryPiece:
    text: str
    whole: int  # index of the first turn not wholly in this piece or an earlier one
    tokens: int  # its lines' counts and the newlines joining them: each line counted once
    estimated: bool  # counted without the model's own encoding


def _summary_pieces(*, turns: list, model_id: str, room: int) -> list[_SummaryPiece]:
    """The turns as transcript pieces of at most `room` tokens, in order, with nothing left out.
    A turn larger than the room is cut into pieces of its own ("(continued)" on the later ones).
    Each line is counted once, and the piece's number is the sum: what the request is held for."""
    from . import context as context_mod

    lines: list[tuple[str, int, bool, int]] = []  # (line, tokens, estimated, index of the first turn not yet whole after it)
    for index, message in enumerate(turns):
        line = f"{message.role}: {message.content}"
        tokens, estimated = context_mod.count_tokens(text=line, model_id=model_id)
        if tokens <= room:
            lines.append((line, tokens, estimated, index + 1))
            continue
        # Room for the label beside each part.
        parts = context_mod.text_split(text=message.content, max_tokens=max(room - 8, 1), model_id=model_id)
        for number, part in enumerate(parts):
            label = message.role if number == 0 else f"{message.role} (continued)"
            line = f"{label}: {part}"
            whole_after = index + 1 if number == len(parts) - 1 else index
            lines.append((line, *context_mod.count_tokens(text=line, model_id=model_id), whole_after))
    pieces: list[_SummaryPiece] = []
    current: list[str] = []
    used = 0
    estimated = False
    whole = 0
    for line, tokens, line_estimated, whole_after in lines:
        # +1: the newline joining two lines (a token of its own at most).
        if current and used + 1 + tokens > room:
            pieces.append(_SummaryPiece("\n".join(current), whole, used, estimated))
            current, used, estimated = [], 0, False
        used += tokens + (1 if current else 0)
        estimated = estimated or line_estimated
        current.append(line)
        whole = whole_after
    if current:
        pieces.append(_SummaryPiece("\n".join(current), whole, used, estimated))
    return pieces


def _summary_by_model(*, conversation: Conversation, turns: list) -> tuple[str, int]:
    """(the summary, how many of `turns` it covers) folded in by the conversation's model, piece
    by piece so that every request fits the model's window and output limit: the summary so far
    and one piece of the new turns each time. Stops at the first piece that fails."""
    from billing import prices

    from . import context as context_mod

    summary = conversation.summary
    price = prices.price_for(model_id=conversation.model)
    if price is None or conversation.model.startswith("demo:") or not turns:
        return summary, 0
    model_id = conversation.model
    max_tokens = min(SUMMARY_MAX_TOKENS, price.max_output_tokens)
    fixed, fixed_estimated = context_mod.messages_tokens(messages=_summary_prompt(summary="", piece=""), model_id=model_id)
    summary_tokens, summary_estimated = context_mod.count_tokens(text=summary, model_id=model_id)
    # After the first piece the summary is the model's answer: at most max_tokens long.
    room = int((price.context_window - max_tokens - fixed - max(summary_tokens, max_tokens)) * SUMMARY_ROOM_MARGIN)
    if room < SUMMARY_MIN_ROOM:
        return summary, 0
    covered = 0
    for piece in _summary_pieces(turns=turns, model_id=model_id, room=room):
        answer = _complete(
            user=conversation.owner,
            conversation_id=conversation.id,
            model_id=model_id,
            messages=_summary_prompt(summary=summary, piece=piece.text),
            max_tokens=max_tokens,
            # The request is the fixed prompt, the summary so far and the piece: each counted
            # once already, not counted again for the hold.
            counted=(fixed + summary_tokens + piece.tokens, fixed_estimated or summary_estimated or piece.estimated),
        )
        if not answer:
            break
        summary, covered = answer.strip(), piece.whole
        summary_tokens, summary_estimated = context_mod.count_tokens(text=summary, model_id=model_id)
    return summary, covered


def conversation_summary_update(*, conversation_id, upto_message_id) -> bool:
    """Fold the turns trimmed out of the context (up to `upto_message_id`) into the rolling
    summary. Idempotent: a summary that already reaches that message is left alone.

    Every turn up to that message is covered, since none of them is sent again: by the model,
    in pieces that fit it; what it could not do (a failed call, no budget, the demo model) by
    the offline fallback, the first words of each turn."""
    from .models import Message

    conversation = Conversation.objects.select_related("owner", "summary_upto").filter(id=conversation_id).first()
    upto = Message.objects.filter(id=upto_message_id, conversation_id=conversation_id).first()
    if conversation is None or upto is None:
        return False
    previous = conversation.summary_upto
    if previous is not None and (previous.created_at, str(previous.id)) >= (upto.created_at, str(upto.id)):
        return False
    turns = _turns_to_summarize(conversation=conversation, previous=previous, upto=upto)
    summary, covered = _summary_by_model(conversation=conversation, turns=turns)
    if covered < len(turns):
        # Offline fallback: the first words of each turn, newest kept when it grows too long.
        lines = [f"{m.role}: {_first_words(m.content, 30)}" for m in turns[covered:]]
        summary = "\n".join(filter(None, [summary, *lines]))[-SUMMARY_CHARS:]
    updated = Conversation.objects.filter(id=conversation.id, summary_upto=previous).update(summary=summary, summary_upto=upto)
    return bool(updated)
