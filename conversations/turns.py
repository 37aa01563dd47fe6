"""The turn: one user message to one finished reply. See ARCHITECTURE.md "One turn, as data".

The reply belongs to this module, not to a socket: `turn_start` saves the user message, checks
price, context, budget and rate limit, creates the assistant message and launches the reply as
an asyncio task in this process. The task streams from the provider (failing over between keys),
publishes batched deltas to the conversation's channel-layer group, keeps the partial text in the
cache for late joiners, and at the end writes the message, the ledger row and the budget
settlement in one transaction. Sockets only relay what the group carries.

Database writes per reply are bounded: the user message, the assistant message, one "streaming"
flip, one usage row per failed attempt, and the final transaction; and one UPDATE per
HEARTBEAT_SECONDS touches every reply the process runs. Never one per delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from billing import budgets, keys, ledger, limits, prices
from chatsite import asynccache

from . import context as context_mod
from . import failover, llm
from .llm.base import ChatRequest, Usage
from .models import Conversation, Message
from .selectors import ENDED_BY_PROVIDER, FILTERED, REFUSED, RUNNING, conversation_timeline, messages_seen_by_model

logger = logging.getLogger(__name__)

FRAME_SECONDS = 0.04  # deltas are batched into one frame per this interval
HEARTBEAT_SECONDS = 5.0  # the running replies' rows are touched this often (one UPDATE for all)
STOP_POLL_SECONDS = 0.5  # how often the cache stop flag is read (the channel message is instant)
STALE_SECONDS = 90  # a running reply whose heartbeat is older is reaped as `error`
REAPED = "interrupted"  # the error_code of a reply the reaper ended
THINKING_EXHAUSTED = "thinking_exhausted"  # the error_code of a reply whose thinking took all of max_tokens
# Saved as the reply's error_code in place of the code on the wire (provider_error): what ended it.
_SAVED_KINDS = (REFUSED, FILTERED, THINKING_EXHAUSTED)
BUFFER_TTL = 60 * 60  # the stream buffer outlives any reply; the reaper deletes stale ones
ZERO = Decimal("0")
MONEY_PLACES = Decimal("0.0000000001")  # the ledger's precision (billing.models.MONEY)

# The turn's database calls run on threads of their own, not on the one thread Channels runs all
# sync code on: there, one turn's preparation queued behind every other's (with PostgreSQL most of
# a call is waiting for the server), and a reply's streaming flip and last save behind all of them.
# Each call is still one coarse step in one thread, with its own connection (or one from the pool).
# Follow-ups (title, summary) queue Celery tasks; with eager Celery (the embedded default) the task,
# a provider call of its own, runs right there: on threads of their own, not holding a turn's
# thread for seconds.
_THREADS = {"turn-db": lambda: settings.TURN_DB_THREADS, "turn-followup": lambda: 2}
_EXECUTORS: dict[str, ThreadPoolExecutor] = {}
# A forked child (a Celery prefork worker, a test server) has none of the parent's threads: an
# executor it inherited would take work and never run it.
os.register_at_fork(after_in_child=_EXECUTORS.clear)


def _thread_keeps_its_connection() -> None:
    """Each turn thread's SQLite connection stays open between calls (CONN_MAX_AGE=None on this
    thread's connection only). The site's setting is 0 because under ASGI each HTTP request runs
    on a thread of its own, and a kept connection there would leak one per request; these threads
    are few and live as long as the process. Opening one costs ~1 ms (file, WAL, pragmas), three
    times per turn. PostgreSQL needs none of this: its pool lends an open connection."""
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.vendor == "sqlite":
        connection.settings_dict = {**connection.settings_dict, "CONN_MAX_AGE": None}


def _db(fn, *, threads: str = "turn-db"):
    executor = _EXECUTORS.get(threads)
    if executor is None:
        executor = _EXECUTORS[threads] = ThreadPoolExecutor(
            max_workers=_THREADS[threads](), thread_name_prefix=threads, initializer=_thread_keeps_its_connection
        )
    return database_sync_to_async(fn, thread_sensitive=False, executor=executor)


# --- names ----------------------------------------------------------------------------------
def group_name(conversation_id) -> str:
    """The conversation's channel-layer group: built from the id only."""
    return f"chat.{uuid.UUID(str(conversation_id)).hex}"


def control_group_name(conversation_id) -> str:
    """Stop requests for the conversation's running reply (the task listens here)."""
    return f"turnctl.{uuid.UUID(str(conversation_id)).hex}"


def buffer_key(conversation_id) -> str:
    return f"stream:{uuid.UUID(str(conversation_id))}"


def _stop_key(message_id) -> str:
    return f"stop:{message_id}"


def money_str(amount: Decimal) -> str:
    """Money on the wire: a plain decimal string, never exponent notation."""
    return format(Decimal(amount).quantize(MONEY_PLACES), "f")


# --- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TurnError:
    code: str
    message: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TurnResult:
    """What the caller tells the sender: the ack (when a user message exists) and either the
    started reply's id or an error."""

    user_message_id: uuid.UUID | None
    client_id: uuid.UUID | None
    reply_id: uuid.UUID | None = None
    error: TurnError | None = None
    duplicate: bool = False  # a resend: the existing message, nothing new made or charged


@dataclass
class _ReplyPlan:
    user: object
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    model_id: str
    provider: str
    price: prices.PriceQuote
    request: ChatRequest
    input_tokens: int
    reservation_id: uuid.UUID
    wants_title: bool
    team_id: int | None = None  # the team the ledger files this call under (taken at the start)
    summarize_upto: uuid.UUID | None = None  # the last history item trimmed out of the context
    attempt: int = 0  # the provider call in progress (kept in the buffer for the reaper)
    key_id: uuid.UUID | None = None  # the key of that call (also in the buffer: the reaper's ledger row names it)
    # The key for the first call, chosen while preparing (one thread hop less before the first
    # token); None for the demo model, or when no key could serve.
    first_key: keys.KeyLease | None = None


@dataclass
class _Outcome:
    finish_reason: str  # stop | length | cancelled | error
    text: str = ""
    thinking: str = ""  # the last call's reasoning, never shown or saved: counted when no usage came
    error_code: str = ""
    error_message: str = ""
    error_kind: str = ""
    usage: Usage | None = None
    attempt: int = 0  # number of the last provider call (0: none was made)
    recorded: bool = False  # the last attempt's ledger row is already written (failed before output)
    key_id: uuid.UUID | None = None
    ttft_ms: int | None = None
    latency_ms: int | None = None


# --- starting a turn ----------------------------------------------------------------------------
SIGNED_OUT = "signed_out"  # the guard failed: nothing was saved (never sent; the socket closes)


async def turn_start(
    *, user, conversation: Conversation, content: str, client_id: uuid.UUID, guard: Callable[[object], bool] | None = None
) -> TurnResult:
    """Save the user's message (idempotent on client_id) and start its reply. Never raises for a
    refusal: the result carries the error code and message for the sender.

    `guard`, if given, runs in the same database call before anything is saved (the socket's
    "still signed in?" check: one trip to the database thread instead of two). It is given the
    owner's row as read with the conversation (None when the conversation is gone), so it need
    not read it again; when it fails nothing is saved and the error code is SIGNED_OUT."""
    return await _prepared_and_launched(
        _db(_turn_prepare)(user=user, conversation_id=conversation.id, content=content, client_id=client_id, guard=guard)
    )


async def turn_regenerate(*, user, conversation: Conversation) -> TurnResult:
    """A new reply to the last user message that has one; the old reply stays in the record."""
    return await _prepared_and_launched(_db(_regenerate_prepare)(user=user, conversation_id=conversation.id))


_PREPARING: set[asyncio.Task] = set()  # held here so a task whose caller was cancelled is not collected


async def _prepared_and_launched(prepare: Awaitable[tuple[TurnResult, _ReplyPlan | None]]) -> TurnResult:
    """Await the turn's database step, then launch its reply, to the end even when the caller is
    cancelled meanwhile (the server cancels a closed socket's handler, Daphne ten seconds after
    the close, and every handler when it stops): the step runs on in its thread and commits a hold
    and a reply row, and a reply nobody launched held the budget and the conversation until the
    reaper billed a call that was never made. The reply belongs to its turn, not to a socket."""

    async def run() -> TurnResult:
        result, plan = await prepare
        if plan is not None:
            _reply_launch(plan)
        return result

    task = asyncio.ensure_future(run())
    _PREPARING.add(task)
    task.add_done_callback(_PREPARING.discard)
    return await asyncio.shield(task)


def _closed_account() -> TurnError:
    return TurnError("invalid_input", _("This account is closed."))


def _turn_prepare(
    *, user, conversation_id, content: str, client_id: uuid.UUID, guard: Callable[[object], bool] | None = None
) -> tuple[TurnResult, _ReplyPlan | None]:
    # The owner is read with the conversation (one query): a socket opened before the account
    # was locked (erasure, deactivation) still holds the old user object, and must not start a
    # reply, or save words, while the erasure waits for its task.
    conversation = Conversation.objects.filter(id=conversation_id, owner=user).select_related("owner").first()
    if guard is not None and not guard(conversation.owner if conversation is not None else None):
        return TurnResult(None, client_id, error=TurnError(SIGNED_OUT, "")), None
    if conversation is None:  # deleted in another tab while this socket was open
        return TurnResult(None, client_id, error=TurnError("invalid_input", _("This conversation no longer exists."))), None
    if not conversation.owner.is_active:
        return TurnResult(None, client_id, error=_closed_account()), None
    # Inserted first, read only if it already exists: the unique (conversation, client_id) decides,
    # so a resend (or the same frame twice at once) never makes a second message or charge.
    try:
        with transaction.atomic():
            message = Message.objects.create(
                conversation=conversation, role=Message.Role.USER, content=content, client_id=client_id
            )
    except IntegrityError:
        existing = Message.objects.filter(conversation=conversation, client_id=client_id).first()
        if existing is None:
            raise
        return _resend(user=user, conversation=conversation, existing=existing, client_id=client_id)
    return _reply_prepare(user=user, conversation=conversation, reply_to=message, client_id=client_id)


def _resend(*, user, conversation: Conversation, existing: Message, client_id) -> tuple[TurnResult, _ReplyPlan | None]:
    """The same message sent again (same client_id): never a second message, nor a second
    charge. If its reply runs, the socket (already in the group) simply keeps receiving it; if it
    was answered, stopped or billed, the resend is only acknowledged. A message no call was ever
    billed for (refused: busy, budget, rate limit; or failed before the provider answered) is
    what a client retries: while it is still the newest message, its reply is attempted again.
    Once the conversation has moved on, answering it would answer an old question out of place."""
    running, settled = _resend_state(question_id=existing.id)
    if running is not None or settled:
        return TurnResult(existing.id, client_id, reply_id=running, duplicate=True), None
    newest = (
        Message.objects.filter(conversation=conversation)
        .exclude(reply_to_id=existing.id)  # its own failed attempts come after it
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
        .first()
    )
    if newest != existing.id:
        error = TurnError("invalid_input", _("This message was not answered and the conversation has moved on: send it as a new message."))
        return TurnResult(existing.id, client_id, error=error, duplicate=True), None
    return _reply_prepare(user=user, conversation=conversation, reply_to=existing, client_id=client_id, resend=True)


def _resend_state(*, question_id) -> tuple[uuid.UUID | None, bool]:
    """(the running reply's id, whether a reply settled it) for a resent question. Settled: a
    reply finished, has text, was stopped by the user, or cost anything (the reaper bills the
    input of a call whose process died; a stop before the first token is billed its input)."""
    running, settled = None, False
    for pk, status, text, cost in Message.objects.filter(reply_to_id=question_id).values_list("id", "status", "content", "cost"):
        if status in RUNNING:
            running = pk
        elif status in (Message.Status.DONE, Message.Status.CANCELLED) or text or cost:
            settled = True
    return running, settled


class _ResendSettled(Exception):
    """A resend's question was answered (or its reply started) by a racing resend."""

    def __init__(self, running) -> None:
        self.running = running


def _regenerate_prepare(*, user, conversation_id) -> tuple[TurnResult, _ReplyPlan | None]:
    conversation = Conversation.objects.filter(id=conversation_id, owner=user).select_related("owner").first()
    if conversation is None:
        return TurnResult(None, None, error=TurnError("invalid_input", _("This conversation no longer exists."))), None
    if not conversation.owner.is_active:
        return TurnResult(None, None, error=_closed_account()), None
    last_user = (
        Message.objects.filter(conversation=conversation, role=Message.Role.USER).order_by("-created_at", "-id").first()
    )
    if last_user is None:
        return TurnResult(None, None, error=TurnError("invalid_input", _("There is no reply to regenerate."))), None
    return _reply_prepare(user=user, conversation=conversation, reply_to=last_user, client_id=None)


def _history(*, conversation: Conversation, upto: Message) -> list | None:
    """The conversation as the model sees it (selectors.messages_seen_by_model) up to and
    including `upto`, the question being answered, without what the rolling summary already
    covers. None when a reply is running in the conversation (read in the same query: one less
    per turn; the database constraint still decides a race)."""
    messages = conversation_timeline(conversation=conversation)
    if any(m.status in RUNNING for m in messages):
        return None
    ids = [m.id for m in messages]
    if upto.id in ids:
        # Anything after the question being answered is its own earlier replies (a regeneration).
        messages = messages[: ids.index(upto.id) + 1]
    summarized: set = set()
    if conversation.summary_upto_id in ids:
        summarized = set(ids[: ids.index(conversation.summary_upto_id) + 1])
    return [
        context_mod.HistoryItem(id=m.id, role=m.role, content=m.content)
        for m in messages_seen_by_model(messages=messages, answering_id=upto.id)
        if m.id not in summarized
    ]


def _reply_prepare(
    *, user, conversation: Conversation, reply_to: Message, client_id, resend: bool = False
) -> tuple[TurnResult, _ReplyPlan | None]:
    def refuse(code: str, message: str, **extra) -> tuple[TurnResult, None]:
        return TurnResult(reply_to.id, client_id, error=TurnError(code, message, extra)), None

    model_id = conversation.model
    provider, _sep, model_name = model_id.partition(":")
    price = prices.price_for(model_id=model_id)
    if price is None or not _adapter_known(provider):
        return refuse("model_unavailable", _("The model %(model)s is not available.") % {"model": model_id})
    def busy() -> tuple[TurnResult, None]:
        if resend:  # perhaps busy with this very question, started by a racing resend
            running, settled = _resend_state(question_id=reply_to.id)
            if running is not None or settled:
                return TurnResult(reply_to.id, client_id, reply_id=running, duplicate=True), None
        return refuse("busy", _("A reply is already being written in this conversation."))

    history = _history(conversation=conversation, upto=reply_to)
    if history is None:
        return busy()

    max_tokens = min(conversation.max_tokens or price.max_output_tokens, price.max_output_tokens)
    try:
        built = context_mod.context_build(
            system_prompt=conversation.system_prompt,
            summary=conversation.summary,
            history=history,
            model_id=model_id,
            context_window=price.context_window,
            max_tokens=max_tokens,
        )
    except context_mod.ContextTooLong as exc:
        # Its message holds numbers only (tokens needed, window): safe to show.
        return refuse("invalid_input", str(exc))

    # Rate limit first, budget second. The limiter is a per-user counter in the cache; the budget
    # reservation locks budget rows that a whole team shares. Checked in this order, one person's
    # flood of requests is turned away by the cheap check and never queues on the team's rows.
    # The price: a request the budget then refuses stays counted for the minute. That is
    # deliberate: it was a request (the user is told why it failed, and resending at once cannot
    # succeed until the budget changes), and giving it back would let a script hammer the
    # budget's locked transaction without limit.
    try:
        limits.rate_limit_check(user=user, tokens=built.input_tokens)
    except limits.RateLimited as exc:
        return refuse("rate_limited", exc.message, retry_after=exc.retry_after)
    worst_case = prices.worst_case_cost(
        price=price, input_tokens=built.input_tokens, max_output_tokens=max_tokens, input_estimated=built.estimated
    )
    try:
        # The hold and the reply row in one transaction: when another turn won the race for the
        # conversation (message_one_running_per_conversation), the hold goes with the row.
        with transaction.atomic():
            if resend:
                # Checked again with the question locked (SQLite: the immediate transaction's
                # write lock): two resends at once, or one racing a fast reply, start one reply.
                # FOR NO KEY UPDATE, not FOR UPDATE: the first send of the question, holding the
                # budget rows this resend waits for next, checks its reply row's foreign key to
                # the question at commit (FOR KEY SHARE), which FOR UPDATE blocks: a deadlock on
                # PostgreSQL. Resends still queue on each other here; a new turn takes no lock.
                Message.objects.select_for_update(no_key=True).filter(id=reply_to.id).values_list("id", flat=True).first()
                running, settled = _resend_state(question_id=reply_to.id)
                if running is not None or settled:
                    raise _ResendSettled(running)
            reservation_id = budgets.budget_reserve(user=user, amount=worst_case)
            reply = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING,
                model=model_id,
                reply_to=reply_to,
                heartbeat_at=timezone.now(),
                # What the reaper bills by if the process dies and the buffer is lost with it.
                input_tokens=built.input_tokens,
                reservation_id=reservation_id,
            )
    except budgets.BudgetExceeded as exc:
        return refuse(
            "budget_exceeded",
            exc.message,
            budget={"scope": exc.scope, "name": exc.name, "period": exc.period, "limit": money_str(exc.limit)},
        )
    except IntegrityError:
        return busy()
    except _ResendSettled as settled:
        return TurnResult(reply_to.id, client_id, reply_id=settled.running, duplicate=True), None

    temperature = float(conversation.temperature) if conversation.temperature is not None else None
    try:
        team_id = ledger.primary_team_id(user=user)
        first_key = keys.key_choose(provider=provider) if failover.needs_key(provider) else None
        # The buffer exists before anyone can hear of the reply, so turn_stop and late joiners find it.
        cache.set(
            buffer_key(conversation.id),
            # attempt 1: the first call goes out right after this; a process that dies once it
            # is sent, before any text, has still made a call the reaper must bill.
            _buffer_state(
                reply.id, 0, "", model_id, reservation_id, built.input_tokens, user.pk, 1, first_key.id if first_key else None
            ),
            BUFFER_TTL,
        )
    except Exception:  # noqa: BLE001 - a cache or database fault after the reply row was committed
        # Undone at once, or the row would hold the conversation "busy" and the hold the budget
        # until the reaper. The user's message stays; regenerating (or a new message) retries.
        logger.exception("reply %s could not start", reply.id)
        _reply_abandon(message_id=reply.id, reservation_id=reservation_id)
        return refuse("provider_error", _("The reply could not be started. Please try again."))
    plan = _ReplyPlan(
        user=user,
        conversation_id=conversation.id,
        message_id=reply.id,
        model_id=model_id,
        provider=provider,
        price=price,
        request=ChatRequest(model=model_name, messages=built.messages, max_tokens=max_tokens, temperature=temperature),
        input_tokens=built.input_tokens,
        reservation_id=reservation_id,
        wants_title=not conversation.title,
        team_id=team_id,
        summarize_upto=built.dropped_ids[-1] if built.dropped_ids else None,
        first_key=first_key,
        key_id=first_key.id if first_key else None,
    )
    return TurnResult(reply_to.id, client_id, reply_id=reply.id), plan


def _reply_abandon(*, message_id, reservation_id) -> None:
    """A reply row that could not start: ended as an error, its hold released, nothing billed."""
    with transaction.atomic():
        Message.objects.filter(id=message_id, status__in=RUNNING).update(
            status=Message.Status.ERROR, finish_reason="error", error_code="provider_error", heartbeat_at=None, input_tokens=0
        )
        budgets.budget_settle(reservation_id=reservation_id, actual=ZERO)


def _buffer_state(
    message_id, seq, text, model_id, reservation_id, input_tokens, user_id, attempt, key_id, thinking_tokens: int = 0
) -> dict:
    # What a late joiner needs (message_id, seq, text, model), and what the reaper needs to
    # settle a reply whose process died (reservation, counted input, user, attempt, its key, and
    # the thinking a reasoning model streamed: output the provider bills, never kept as text).
    return {
        "message_id": str(message_id),
        "seq": seq,
        "text": text,
        "model": model_id,
        "reservation_id": str(reservation_id),
        "input_tokens": input_tokens,
        "user_id": user_id,
        "attempt": attempt,
        "key_id": str(key_id) if key_id else None,
        "thinking_tokens": thinking_tokens,
    }


def _adapter_known(provider: str) -> bool:
    try:
        llm.get_adapter(provider)
    except KeyError:
        return False
    return True


# --- the running reply --------------------------------------------------------------------------
_RUNNING: dict[uuid.UUID, asyncio.Task] = {}


_CANCELS: dict[uuid.UUID, asyncio.Event] = {}  # each running reply's stop, by message id
_INTERRUPTED: set[uuid.UUID] = set()  # the replies replies_shutdown stopped (not a person)
SHUTDOWN_GRACE_SECONDS = 5.0  # under Docker's 10 s between SIGTERM and SIGKILL, with room to save
_WATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its watcher task


def _reply_launch(plan: _ReplyPlan) -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(_reply_run(plan), name=f"reply-{plan.message_id}")
    # Held here so the task is not garbage-collected, and so tests can wait for it.
    _RUNNING[plan.message_id] = task
    task.add_done_callback(lambda _t: _RUNNING.pop(plan.message_id, None))
    watcher = _WATCHERS.get(loop)
    if watcher is None or watcher.done():
        _WATCHERS[loop] = loop.create_task(_watch_running(loop), name="replies-watch")


async def _watch_running(loop: asyncio.AbstractEventLoop) -> None:
    """What every reply of this event loop needs now and then, done for all of them at once:
    read the stop flags another process may have set (one cache call per STOP_POLL_SECONDS) and
    touch the heartbeat the reaper reads (one UPDATE per HEARTBEAT_SECONDS). Not per reply:
    hundreds of replies would make that hundreds of calls a second. Ends when none runs."""
    last_beat = time.monotonic()
    while True:
        await asyncio.sleep(STOP_POLL_SECONDS)
        mine = {
            mid: cancel
            for mid, cancel in _CANCELS.items()
            if (task := _RUNNING.get(mid)) is not None and task.get_loop() is loop
        }
        if not mine:
            return
        try:
            flags = await asynccache.aget_many([_stop_key(mid) for mid in mine])
        except Exception as exc:  # noqa: BLE001 - the cache is away: the channel message still stops
            logger.warning("reading the stop flags failed: %s", type(exc).__name__)
        else:
            for mid, cancel in mine.items():
                if flags.get(_stop_key(mid)):
                    cancel.set()
        now = time.monotonic()
        if now - last_beat >= HEARTBEAT_SECONDS:
            last_beat = now
            try:
                reaped = await _db(_replies_heartbeat)(message_ids=list(mine))
            except Exception as exc:  # noqa: BLE001 - next time; the reaper waits STALE_SECONDS
                logger.warning("the running replies' heartbeat failed: %s", type(exc).__name__)
            else:
                for mid in reaped:
                    mine[mid].set()


async def replies_wait(timeout: float = 30) -> None:
    """Wait for every reply running in this process (tests; graceful shutdown)."""
    tasks = list(_RUNNING.values())
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


async def replies_shutdown(*, grace: float = SHUTDOWN_GRACE_SECONDS) -> int:
    """The process is stopping (SIGTERM: a deploy, a restart; chatsite.asgi calls this). The
    replies running on this event loop get `grace` seconds to end; the rest are stopped and end
    now as interrupted: saved with their text, billed, settled and told to their sockets, instead
    of streaming into nothing until the reaper's check (STALE_SECONDS and more) ends them. Returns
    how many were stopped."""
    loop = asyncio.get_running_loop()

    def running() -> dict:
        return {mid: task for mid, task in _RUNNING.items() if task.get_loop() is loop and not task.done()}

    if not running():
        return 0
    await asyncio.wait(running().values(), timeout=grace)
    stopped = 0
    tasks = running()  # those started meanwhile too: the server listens until the reactor stops
    for mid in tasks:
        cancel = _CANCELS.get(mid)
        if cancel is not None and not cancel.is_set():
            _INTERRUPTED.add(mid)
            cancel.set()
            stopped += 1
    if tasks:
        await asyncio.wait(tasks.values(), timeout=grace)
    return stopped


def frame_event(frame: dict) -> dict:
    """The channel-layer event carrying one frame to every socket of the conversation: the frame
    encoded once here (not once per socket), with what a socket needs to drop what it already has
    (a late joiner's resume covers the start and the deltas up to its seq) beside it."""
    return {
        "type": "chat.frame",
        "kind": frame["type"],
        "message_id": frame.get("message_id"),
        "seq": frame.get("seq"),
        "text": json.dumps(frame, ensure_ascii=False),
    }


async def _publish(layer, conversation_id, frame: dict) -> None:
    await layer.group_send(group_name(conversation_id), frame_event(frame))


class _Stream:
    """The reply's text as it arrives: batched into frames, mirrored in the cache buffer."""

    def __init__(self, plan: _ReplyPlan, layer) -> None:
        self.plan = plan
        self.layer = layer
        self.seq = 0
        self.text = ""
        self.pending: list[str] = []
        # A reasoning model's thinking: never shown or kept, but billed by the provider, so the
        # buffer carries its count for the reaper. Counted with the estimator (never on the event
        # loop with tiktoken, whose first use may wait for a download), in un-rounded units so
        # that batch after batch adds up to the whole.
        self.pending_thinking: list[str] = []
        self.thinking_weight = 0.0
        self.lock = asyncio.Lock()
        self.finished = asyncio.Event()
        self.wakeup = asyncio.Event()  # set by add(): text is waiting
        self.marking: asyncio.Task | None = None  # the one "streaming" flip, started at the first text
        # Frames numbered but not yet published, oldest first, and whether the buffer lags the
        # text: a cache or layer fault holds them here, in order, until a flush gets through.
        self.unsent: list[dict] = []
        self.buffer_behind = False
        self.failing = False
        # Named once, not at every frame.
        self.buffer_key = buffer_key(plan.conversation_id)
        self.message_id = str(plan.message_id)

    def add(self, text: str) -> None:
        self.pending.append(text)
        self.wakeup.set()

    def add_thinking(self, text: str) -> None:
        self.pending_thinking.append(text)
        self.wakeup.set()

    @property
    def full_text(self) -> str:
        return self.text + "".join(self.pending)

    async def flush(self) -> None:
        """Number what arrived as the next frame, write the buffer, publish every unsent frame.
        Raises on a cache or layer fault, losing nothing: the frames wait for the next flush,
        so every socket still gets seq 1, 2, 3... with no gap once the fault passes."""
        # Serialized: the buffer must never show an older seq than a delta already published,
        # or a late joiner reading it would miss that delta.
        async with self.lock:
            if self.pending:
                chunk = "".join(self.pending)
                self.pending.clear()
                self.seq += 1
                self.text += chunk
                self.unsent.append({"type": "delta", "message_id": self.message_id, "seq": self.seq, "text": chunk})
                self.buffer_behind = True
            if self.pending_thinking:
                self.thinking_weight += context_mod.estimate_weight("".join(self.pending_thinking))
                self.pending_thinking.clear()
                self.buffer_behind = True
            if self.buffer_behind:
                # Buffer first, then publish: a joiner that read seq N is sure to receive N+1.
                plan = self.plan
                await asynccache.aset(
                    self.buffer_key,
                    _buffer_state(
                        self.message_id, self.seq, self.text, plan.model_id, plan.reservation_id, plan.input_tokens,
                        plan.user.pk, plan.attempt, plan.key_id, math.ceil(self.thinking_weight),
                    ),
                    BUFFER_TTL,
                )
                self.buffer_behind = False
            while self.unsent:
                await _publish(self.layer, self.plan.conversation_id, self.unsent[0])
                del self.unsent[0]

    async def note_attempt(self) -> None:
        """Write the buffer now, naming plan.attempt. On a fault it is written with the next frame."""
        self.buffer_behind = True
        with contextlib.suppress(Exception):
            await self.flush()

    async def run(self) -> None:
        """Flush every FRAME_SECONDS, and flip the row to "streaming" at the first text."""
        while not self.finished.is_set():
            # Text that arrives after a quiet spell goes out at once (the first delta is not held
            # back a whole frame); text that keeps coming is batched, one frame per FRAME_SECONDS.
            await self.wakeup.wait()
            self.wakeup.clear()
            had_text = bool(self.pending)
            had_thinking = bool(self.pending_thinking)  # batched like text, but not shown: no "streaming" flip
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the frames wait in order; tried again next frame
                if not self.failing:  # once a spell, not 25 times a second
                    logger.warning("reply %s: frames held back, the cache or layer failed (%s)", self.message_id, type(exc).__name__)
                self.failing = True
                self.wakeup.set()
                had_text = True
            else:
                if self.failing:
                    logger.warning("reply %s: held-back frames went out", self.message_id)
                self.failing = False
            if had_text or had_thinking:
                await asyncio.sleep(FRAME_SECONDS)
            if had_text:
                if self.marking is None:
                    # Not awaited: under a burst of new turns the database threads are busy, and
                    # the frames must not wait for them. Started a frame after the first text, not
                    # with it: the thread's ORM work competes for the GIL, and the first frame is
                    # the one a person waits for. The UPDATE only touches a running row.
                    self.marking = asyncio.create_task(_db(_reply_mark_streaming)(message_id=self.plan.message_id))


def _reply_mark_streaming(*, message_id) -> None:
    Message.objects.filter(id=message_id, status__in=RUNNING).update(status=Message.Status.STREAMING, heartbeat_at=timezone.now())


def _replies_heartbeat(*, message_ids: list) -> set:
    """Touch the running replies' rows; the ids among `message_ids` no longer running (reaped
    while this process stalled) are returned, to be stopped."""
    Message.objects.filter(id__in=message_ids, status__in=RUNNING).update(heartbeat_at=timezone.now())
    return set(message_ids) - set(Message.objects.filter(id__in=message_ids, status__in=RUNNING).values_list("id", flat=True))


async def _listen_stop(layer, channel: str, message_id, cancel: asyncio.Event) -> None:
    while True:
        event = await layer.receive(channel)
        if event.get("type") == "turn.listener_end":
            return
        if event.get("type") == "turn.stop" and event.get("message_id") in (None, str(message_id)):
            cancel.set()


async def _end_listener(layer, control: str, listener: asyncio.Task, *, conversation_id) -> None:
    with contextlib.suppress(Exception):
        await layer.group_discard(control_group_name(conversation_id), control)
    try:
        await layer.send(control, {"type": "turn.listener_end"})
        await asyncio.wait_for(asyncio.shield(listener), timeout=5)
    except Exception:  # noqa: BLE001 - the layer is away: cancelling is all that is left
        listener.cancel()
        with contextlib.suppress(BaseException):
            await listener


END_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # a step of the reply's end is tried again after these


async def _retried(step: Callable[[], Awaitable]) -> None:
    """Await step(); on a failure, again after each of END_RETRY_DELAYS; the last failure raises."""
    for delay in END_RETRY_DELAYS:
        try:
            return await step()
        except Exception as exc:  # noqa: BLE001
            logger.warning("a cache or layer call failed (%s); trying again in %.2f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
    return await step()


@dataclass
class _Wiring:
    """What a running reply sets up on the channel layer beside its provider call."""

    control: str | None = None  # the channel its stop listener reads
    listener: asyncio.Task | None = None
    flusher: asyncio.Task | None = None
    failed: bool = False


async def _reply_wire(plan: _ReplyPlan, layer, stream: _Stream, cancel: asyncio.Event, wiring: _Wiring) -> None:
    """The "start" frame, the stop listener and the flusher. Only the flusher publishes deltas,
    and it starts after "start" went out: text that arrives sooner waits in the stream. When the
    layer fails here the provider call is stopped: nobody could hear the reply or stop it."""
    try:
        await _publish(layer, plan.conversation_id, {"type": "start", "message_id": str(plan.message_id), "model": plan.model_id})
        wiring.control = await layer.new_channel()
        await layer.group_add(control_group_name(plan.conversation_id), wiring.control)
        wiring.listener = asyncio.create_task(_listen_stop(layer, wiring.control, plan.message_id, cancel))
        wiring.flusher = asyncio.create_task(stream.run())
    except Exception:  # noqa: BLE001 - the reply ends as an error below, billed for any call made
        logger.exception("reply %s: the channel layer failed as it started", plan.message_id)
        wiring.failed = True
        cancel.set()


async def _reply_run(plan: _ReplyPlan) -> None:
    layer = get_channel_layer()
    stream = _Stream(plan, layer)
    cancel = asyncio.Event()
    _CANCELS[plan.message_id] = cancel
    # The provider call goes out first: the wiring's task runs once the call waits on the
    # network, so its layer round trips (three on Redis) overlap the provider's time to its first
    # token instead of adding to the first delta's.
    wiring = _Wiring()
    wire = asyncio.create_task(_reply_wire(plan, layer, stream, cancel, wiring))
    try:
        outcome = await _reply_attempts(plan, stream, cancel)
    except Exception:  # noqa: BLE001 - whatever broke, the reply must end and settle
        logger.exception("reply %s failed unexpectedly", plan.message_id)
        outcome = _Outcome("error", error_code="provider_error", error_message=_("The reply failed."))
    finally:
        with contextlib.suppress(BaseException):
            await wire  # long done, unless the call ended at once
        _CANCELS.pop(plan.message_id, None)
        stream.finished.set()
        stream.wakeup.set()
        if wiring.flusher is not None:
            with contextlib.suppress(BaseException):
                await wiring.flusher
        if wiring.listener is not None:
            # End the listener with a message, not cancel(): on channels_redis a receive cancelled
            # while it waits on the process's shared inbox loses a message already taken for
            # another socket of this process (a delta would go missing there).
            await _end_listener(layer, wiring.control, wiring.listener, conversation_id=plan.conversation_id)
        elif wiring.control is not None:
            with contextlib.suppress(Exception):
                await layer.group_discard(control_group_name(plan.conversation_id), wiring.control)
    if plan.message_id in _INTERRUPTED:
        _INTERRUPTED.discard(plan.message_id)
        if outcome.finish_reason == "cancelled":  # stopped by the process's shutdown, not by a person
            outcome.finish_reason = "error"
            outcome.error_code = "provider_error"
            outcome.error_message = _("The reply was interrupted.")
            outcome.error_kind = REAPED
    if wiring.failed:
        # The call was stopped (or had ended); what it did is kept for the bill, not the reason.
        outcome.finish_reason = "error"
        outcome.error_code = "provider_error"
        outcome.error_message = _("The reply failed.")
    try:
        await _retried(stream.flush)
    except Exception:  # noqa: BLE001 - the text is in stream.text; saving it matters more than one frame
        logger.exception("reply %s: the last frame could not be published", plan.message_id)
    if stream.marking is not None:
        # Done before the closing save (which would make it a no-op anyway: it only flips a running row).
        with contextlib.suppress(Exception):
            await stream.marking
    outcome.text = stream.text
    saved = True
    try:
        usage = await _db(_reply_finish)(plan=plan, outcome=outcome)
        if usage is None:
            # Reaped meanwhile: its buffer may be a newer reply's now; the sockets heard the end.
            with contextlib.suppress(Exception):
                await asynccache.adelete(_stop_key(plan.message_id))
            return
    except Exception:  # noqa: BLE001 - the reaper will mark it; the sockets still hear the end
        logger.exception("reply %s could not be saved", plan.message_id)
        saved = False
        usage = {"input_tokens": 0, "output_tokens": 0, "cost": money_str(ZERO)}
        outcome = _Outcome("error", error_code="provider_error", error_message=_("The reply could not be saved."))
    # The reply is saved and settled; what follows only tells the sockets. A cache or layer
    # failure here (Redis away, pool exhausted) is logged and must not skip the follow-ups.
    # Each step retried over a few seconds (a Redis blip as the reply ends must not leave the
    # sockets without "done"), and a step that still fails does not skip the next.
    # Buffer gone before "done" goes out: a joiner either read the buffer before (and is in the
    # group, so hears "done") or finds no buffer (and reads the finished message over HTTP).
    # Unless the save failed: then the buffer (its text, hold, input and attempt) is what the
    # reaper saves the reply from, and bills the call by. A buffer whose delete is lost is not
    # resumed from: stream_resume_state checks the reply still runs.
    gone = (buffer_key(plan.conversation_id), _stop_key(plan.message_id)) if saved else (_stop_key(plan.message_id),)
    ending = [lambda: asynccache.adelete(*gone)]
    if outcome.error_code:
        error = {"type": "error", "code": outcome.error_code, "message": outcome.error_message, "message_id": str(plan.message_id)}
        ending.append(lambda: _publish(layer, plan.conversation_id, error))
    done = {"type": "done", "message_id": str(plan.message_id), "finish_reason": outcome.finish_reason, "usage": usage}
    ending.append(lambda: _publish(layer, plan.conversation_id, done))
    for step in ending:
        try:
            await _retried(step)
        except Exception:  # noqa: BLE001
            logger.exception("reply %s: the end of the reply could not be published", plan.message_id)
    # After "done": with eager Celery (no Redis) these run right here, and must not delay it.
    if plan.wants_title or plan.summarize_upto is not None:
        await _db(_reply_followups, threads="turn-followup")(plan=plan, finish_reason=outcome.finish_reason)


def _reply_followups(*, plan: _ReplyPlan, finish_reason: str) -> None:
    from .tasks import conversation_summarize, conversation_title

    # Robust: a broker that cannot take one task (Redis down) must not lose the other, nor fail
    # the reply already done. Both come back: the next reply of an untitled conversation asks for
    # its title, and the next trimmed turn for the summary.
    conversation_id = str(plan.conversation_id)
    if plan.wants_title and finish_reason in ("stop", "length"):
        transaction.on_commit(lambda: conversation_title.delay(conversation_id), robust=True)
    if plan.summarize_upto is not None:
        upto = str(plan.summarize_upto)
        transaction.on_commit(lambda: conversation_summarize.delay(conversation_id, upto), robust=True)


def _thinking_exhausted_text(plan: _ReplyPlan) -> str:
    tokens = plan.request.max_tokens
    if tokens < plan.price.max_output_tokens:
        return _(
            "The model used its whole allowance of %(tokens)s output tokens thinking and wrote no answer. "
            "Raise Max tokens in this conversation's settings, or ask for a shorter answer."
        ) % {"tokens": tokens}
    return _(
        "The model used its whole allowance of %(tokens)s output tokens thinking and wrote no answer. "
        "Ask for a shorter answer, or choose another model."
    ) % {"tokens": tokens}


def _ended_by_provider_text(kind: str) -> str:
    if kind == REFUSED:
        return _("The model declined to continue this reply. Rephrase your message or start a new conversation.")
    return _("The provider's content filter stopped this reply. The text that arrived before it is kept.")


def saved_error_words() -> dict[str, str]:
    """Each error_code a reply is saved with, in a few words of the reader's language (the chat
    page shows them beside a reply that ended in an error)."""
    return {
        "provider_error": _("the reply failed"),
        "provider_unavailable": _("the provider was unavailable"),
        "model_unavailable": _("the model is not available"),
        REFUSED: _("the model declined to continue"),
        FILTERED: _("stopped by the provider's content filter"),
        THINKING_EXHAUSTED: _("the model used all its output tokens thinking"),
        REAPED: _("the reply was interrupted"),
    }


async def _reply_attempts(plan: _ReplyPlan, stream: _Stream, cancel: asyncio.Event) -> _Outcome:
    """The reply's provider calls, failing over between keys (failover.calls_with_failover), and
    how the last one ended, as the reply tells and saves it."""
    key, plan.first_key = plan.first_key, None  # the plan outlives the call: not the secret

    async def before_call(attempt: int, lease) -> None:
        plan.attempt = attempt
        plan.key_id = lease.id if lease is not None else None
        if attempt > 1:
            # The buffer names the call in progress before it goes out (the first's is named
            # when the reply is prepared): the reaper bills a dead process's call by it.
            await stream.note_attempt()

    ended = await failover.calls_with_failover(
        provider=plan.provider,
        model_id=plan.model_id,
        request=plan.request,
        first_key=key,
        sink=stream,
        db=_db,
        ledger_owner=lambda: _ledger_owner(plan=plan),
        cancel=cancel,
        before_call=before_call,
        reservation_id=plan.reservation_id,
    )
    call = ended.call
    if call is None:  # no call to bill: each one made has its ledger row already
        if ended.cancelled:
            return _Outcome("cancelled", attempt=ended.attempt, recorded=ended.attempt > 0)
        return _Outcome(
            "error",
            error_code=ended.error_code,
            error_message=ended.error_message,
            error_kind=ended.error_kind,
            attempt=ended.attempt,
            recorded=ended.attempt > 0,
        )
    outcome = _Outcome(
        "stop",
        thinking="".join(call.thinking),
        attempt=ended.attempt,
        key_id=ended.key_id,
        usage=call.usage,
        ttft_ms=call.ttft_ms,
        latency_ms=call.latency_ms,
    )
    if call.error is not None:
        # Cut mid-reply: keep what arrived and say why.
        outcome.finish_reason = "error"
        outcome.error_code = "provider_error"
        outcome.error_message = _("The reply was cut off: %(why)s") % {"why": failover.error_text(call.error)}
        outcome.error_kind = str(call.error.kind)
        return outcome
    outcome.finish_reason = "cancelled" if call.cancelled else (call.finish or "stop")
    if outcome.finish_reason in ("refused", "filtered"):
        # The provider ended the reply (its model declined, or its content filter cut it)
        # and said nothing a person could read: they hear why here. Neither is a finish
        # reason the contract has, so it is told as an error. The text that came stays
        # and is billed; the key is fine.
        outcome.error_kind = REFUSED if outcome.finish_reason == "refused" else FILTERED
        outcome.finish_reason = "error"
        outcome.error_code = "provider_error"
        outcome.error_message = _ended_by_provider_text(outcome.error_kind)
    elif outcome.finish_reason == "length" and not stream.full_text.strip():
        # A reasoning model thought through its whole output allowance (max_tokens) and
        # wrote no answer: an empty reply that says nothing would look like a fault. It
        # stays a "length" finish (the truth, and the contract's), billed as reported,
        # with an error frame saying why and what to change.
        outcome.error_code = "provider_error"
        outcome.error_message = _thinking_exhausted_text(plan)
        outcome.error_kind = THINKING_EXHAUSTED
    return outcome


def _ledger_owner(*, plan: _ReplyPlan) -> dict:
    """Who a ledger row of this reply is filed under (billing.ledger.ledger_owner)."""
    return ledger.ledger_owner(
        user=plan.user, team_id=plan.team_id, conversation_id=plan.conversation_id, message_id=plan.message_id
    )


def _reply_finish(*, plan: _ReplyPlan, outcome: _Outcome) -> dict | None:
    """The one closing transaction: message, ledger row, budget settlement. Returns the usage
    as it goes on the wire; None when the reaper already ended the reply."""
    input_tokens = output_tokens = cached = 0
    cost = ZERO
    estimated = False
    billable = outcome.attempt > 0 and not outcome.recorded
    if billable:
        usage, estimated = failover.call_usage(
            usage=outcome.usage, input_tokens=plan.input_tokens, text=outcome.text, thinking=outcome.thinking, model_id=plan.model_id
        )
        input_tokens, output_tokens, cached = usage.input_tokens, usage.output_tokens, usage.cached_tokens
        cost = prices.cost_of(price=plan.price, input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached)
    status = {
        "stop": Message.Status.DONE,
        "length": Message.Status.DONE,
        "cancelled": Message.Status.CANCELLED,
    }.get(outcome.finish_reason, Message.Status.ERROR)
    if outcome.error_code:  # told as an error (a "length" reply with no answer, say): saved as one
        status = Message.Status.ERROR
    now = timezone.now()
    with transaction.atomic():
        owner = _ledger_owner(plan=plan)  # first: the user row's lock orders this before erasure
        finished = Message.objects.filter(id=plan.message_id, status__in=RUNNING).update(
            content=outcome.text,
            status=status,
            finish_reason=outcome.finish_reason,
            # Told as provider_error; saved as what ended it: refused (so the context builder
            # leaves the turn out), content_filter or thinking_exhausted (so the page says why
            # after a reload).
            error_code=outcome.error_kind if outcome.error_kind in _SAVED_KINDS else outcome.error_code,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            heartbeat_at=None,
        )
        if not finished and Message.objects.filter(id=plan.message_id, error_code=REAPED).exists():
            # The reaper took this reply for a dead process's (this one stalled past
            # STALE_SECONDS), saved, billed and settled it and told the sockets. Nothing more.
            # (A row an erasure cancelled, or already deleted, is not rewritten, but its call is
            # still billed and its hold settled below.)
            return None
        Conversation.objects.filter(id=plan.conversation_id).update(updated_at=now)
        if billable:
            # The ledger row before the settlement: the lock order billing.ledger documents.
            ledger.usage_record(
                **owner,
                attempt=outcome.attempt,
                provider=plan.provider,
                model=plan.request.model,
                key_id=outcome.key_id,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached,
                cost=cost,
                estimated=estimated,
                ttft_ms=outcome.ttft_ms,
                latency_ms=outcome.latency_ms,
                outcome={"cancelled": "cancelled", "error": "error"}.get(outcome.finish_reason, "ok"),
                error_kind=outcome.error_kind,
            )
        budgets.budget_settle(reservation_id=plan.reservation_id, actual=cost)
    if outcome.key_id is not None and (outcome.finish_reason != "error" or outcome.error_kind in ENDED_BY_PROVIDER):
        # The key answered (a reply, a stop, or its model or filter ending the reply); its
        # failures were reported as they happened. In this same trip to the database thread,
        # after the reply is safe.
        keys.key_report_success(key_id=outcome.key_id)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": money_str(cost)}


# --- stopping -----------------------------------------------------------------------------------
async def turn_stop_async(*, conversation_id) -> bool:
    """Ask the reply running in this conversation to stop, wherever it runs. False: none runs."""
    state = await asynccache.aget(buffer_key(conversation_id))
    if not state:
        return False
    # The flag reaches a task in any process (it polls the cache); the message is the fast path.
    await asynccache.aset(_stop_key(state["message_id"]), True, BUFFER_TTL)
    layer = get_channel_layer()
    await layer.group_send(control_group_name(conversation_id), {"type": "turn.stop", "message_id": state["message_id"]})
    return True


def turn_stop(*, conversation_id) -> bool:
    """Sync form of turn_stop_async, for views, admin actions, tasks and commands."""
    return async_to_sync(turn_stop_async)(conversation_id=conversation_id)


def turns_stop_for_user(*, user_id) -> int:
    """Stop every reply running in the user's conversations (erasure, deactivation)."""
    ids = set(
        Message.objects.filter(conversation__owner_id=user_id, status__in=RUNNING).values_list("conversation_id", flat=True)
    )
    return sum(1 for conversation_id in ids if turn_stop(conversation_id=conversation_id))


def stream_state(*, conversation_id) -> dict | None:
    """The running reply's buffer: {"message_id", "seq", "text", "model"}, or None."""
    return cache.get(buffer_key(conversation_id))


def _reply_running(*, message_id) -> bool:
    return Message.objects.filter(id=message_id, status__in=RUNNING).exists()


async def stream_resume_state(*, conversation_id) -> dict | None:
    """What a socket opening on the conversation resumes from: the buffer of a reply that is
    still running, else None. A buffer can outlive its reply when the cache failed as the reply
    ended (its delete lost): the reply's row decides. Such a buffer is left alone (the next
    reply overwrites it; deleting it here could race that reply's new one). A cache fault here
    means no resume, not a failed socket: the reply's frames still arrive."""
    try:
        state = await asynccache.aget(buffer_key(conversation_id))
    except Exception as exc:  # noqa: BLE001
        logger.warning("reading the stream buffer failed: %s", type(exc).__name__)
        return None
    if not state:
        return None
    if not await _db(_reply_running)(message_id=state["message_id"]):
        return None
    return state


def reply_end_frame(*, message_id) -> dict | None:
    """The "done" frame of a reply that has ended, built from its saved row; None while it still
    runs (or when it is gone). For a socket that missed the published one (consumers.py)."""
    row = Message.objects.filter(id=message_id).exclude(status__in=RUNNING).values(
        "finish_reason", "input_tokens", "output_tokens", "cost"
    ).first()
    if row is None:
        return None
    usage = {"input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"], "cost": money_str(row["cost"])}
    return {"type": "done", "message_id": str(message_id), "finish_reason": row["finish_reason"] or "error", "usage": usage}


def _reap_settle(*, message_id, conversation_id, started_at, state: dict, text: str) -> dict:
    """Settle a dead reply from what its buffer knew: the input it sent (if a call started)
    and the text that came out, estimated, at the price in force when the reply started (as
    the turn would have: a price changed since does not apply to it). The reservation is
    released either way. Returns the usage as it goes on the wire."""
    from django.contrib.auth import get_user_model

    model_id = state["model"]
    provider, _sep, model_name = model_id.partition(":")
    price = prices.price_for(model_id=model_id, at=started_at)
    attempt = int(state.get("attempt") or 0)
    input_tokens = int(state.get("input_tokens") or 0) if attempt else 0
    output_tokens = context_mod.count_tokens(text=text, model_id=model_id)[0] if text else 0
    # The thinking the call streamed before it died: output the provider bills (estimated).
    output_tokens += int(state.get("thinking_tokens") or 0)
    cost = ZERO
    # The call the buffer names may already be in the ledger: it failed before any output (free,
    # failover.calls_with_failover recorded it) and the process died before the next went out,
    # which the buffer would name first. Nothing more was spent: billing its input here would
    # charge the budget and the reply for a call the ledger says cost nothing.
    if price is not None and attempt and ledger.attempts_recorded(message_id=message_id) < attempt:
        cost = prices.cost_of(price=price, input_tokens=input_tokens, output_tokens=output_tokens)
        ledger.usage_record(
            user=get_user_model().objects.filter(pk=state.get("user_id")).first(),
            conversation_id=conversation_id, message_id=message_id, attempt=attempt, provider=provider, model=model_name,
            key_id=uuid.UUID(state["key_id"]) if state.get("key_id") else None,
            input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=0, cost=cost, estimated=True,
            ttft_ms=None, latency_ms=None, outcome="error", error_kind=REAPED,
        )
        Message.objects.filter(id=message_id).update(input_tokens=input_tokens, output_tokens=output_tokens, cost=cost)
    else:
        input_tokens = output_tokens = 0
    budgets.budget_settle(reservation_id=uuid.UUID(state["reservation_id"]), actual=cost)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": money_str(cost)}


# --- the reaper ---------------------------------------------------------------------------------
def replies_reap_stale(*, stale_seconds: int = STALE_SECONDS) -> int:
    """Mark replies whose process stopped heartbeating as `error`, keeping the text the buffer
    holds, and tell any open socket. Running twice does nothing more."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    # Silent since the cutoff, or (never heartbeated) created before it.
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    stale = Message.objects.filter(silent, status__in=RUNNING).values_list(
        "id", "conversation_id", "content", "created_at", "model", "input_tokens", "reservation_id", "conversation__owner_id"
    )
    reaped = 0
    layer = get_channel_layer()
    for message_id, conversation_id, content, started_at, model_id, input_tokens, reservation_id, owner_id in list(stale):
        state = cache.get(buffer_key(conversation_id)) or {}
        buffered = state.get("message_id") == str(message_id)  # the buffer is this reply's
        text = state.get("text", content) if buffered else content
        frame_usage = {"input_tokens": 0, "output_tokens": 0, "cost": money_str(ZERO)}
        with transaction.atomic():
            changed = Message.objects.filter(id=message_id, status__in=RUNNING).update(
                status=Message.Status.ERROR, finish_reason="error", error_code=REAPED, content=text, heartbeat_at=None,
                input_tokens=0,  # until billed below
            )
            known = state if buffered else None
            if changed and not buffered and reservation_id is not None:
                # The buffer is gone too (Redis restarted: it keeps nothing on disk): the row
                # knows the hold and the input. The call in progress is the one after those the
                # ledger has; the text that came out since is lost, so only the input is billed.
                known = {
                    "model": model_id, "input_tokens": input_tokens, "user_id": owner_id, "key_id": None,
                    "reservation_id": str(reservation_id),
                    "attempt": ledger.attempts_recorded(message_id=message_id) + 1,
                }
            if changed and known and known.get("reservation_id"):
                frame_usage = _reap_settle(
                    message_id=message_id, conversation_id=conversation_id, started_at=started_at, state=known, text=text
                )
        if not changed:
            continue
        reaped += 1
        # A process that only stalled (not died) stops the reply when it wakes: this flag, or
        # its next heartbeat finding the row ended. Its own end then changes nothing.
        with contextlib.suppress(Exception):
            cache.set(_stop_key(message_id), 1, BUFFER_TTL)
        if buffered:
            cache.delete(buffer_key(conversation_id))
        with contextlib.suppress(Exception):
            async_to_sync(_publish)(
                layer,
                conversation_id,
                {"type": "error", "code": "provider_error", "message": _("The reply was interrupted."), "message_id": str(message_id)},
            )
            async_to_sync(_publish)(
                layer, conversation_id, {"type": "done", "message_id": str(message_id), "finish_reason": "error", "usage": frame_usage}
            )
    return reaped
