"""Provider calls with key failover: the one policy the chat turn (turns.py) and the follow-up
calls (titles and summaries: services._complete) both follow, so that a fix reaches both.

A call goes out with the key billing.keys chose. A failure before any output is written to the
ledger (nothing billed) and reported to the key's state machine, which decides what comes next
(KeyFailureOutcome): the request's own failure (a 400) is not sent to another key; the key's
(429, 401, 5xx, timeout, a server without the model) moves on to the next key after the backoff it
says. A failure after output is not retried: the provider has billed the input and the text it
sent, and a second call would bill the input again and repeat the text. What the last call is
billed for is call_usage's rule; billing it, settling the budget hold and reporting the key's
success stay with the caller, in its own closing transaction.

Runs on an event loop. `db` is how the caller runs a sync ORM call from it: the turn on its own
database threads, a follow-up back on the thread that called it (async_to_sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from billing import budgets, keys, ledger

from . import context as context_mod
from . import llm
from .llm.base import ChatRequest, ErrorKind, Finish, ProviderError, ReasoningDelta, TextDelta, Usage

if TYPE_CHECKING:
    from billing.keys import KeyLease

logger = logging.getLogger(__name__)

# Failures that are the request's own: no other key would take it (billing.keys agrees).
_REQUEST_REFUSED = (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_TOO_LONG)


def needs_key(provider: str) -> bool:
    return provider != "demo"  # the demo model runs in-process and needs no key


class Sink(Protocol):
    """Where a call's output goes as it arrives: the turn's stream, or a follow-up's Collected."""

    def add(self, text: str) -> None: ...

    def add_thinking(self, text: str) -> None: ...


class Collected:
    """A whole answer gathered as it arrives: a call cut off after some text still has it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def add_thinking(self, text: str) -> None:
        pass  # kept in Call.thinking, never part of the answer

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class Call:
    """What one provider call did."""

    got_output: bool = False  # the provider began answering: text, or thinking
    thinking: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish: str = ""
    error: ProviderError | None = None
    cancelled: bool = False
    ttft_ms: int | None = None
    latency_ms: int | None = None


@dataclass
class Ended:
    """How the calls ended.

    `call` is the last call when it is to be billed: it answered, was stopped, or was cut off
    after output (its `error` set). Otherwise it is None and either `cancelled` is set (stopped
    between calls) or `error_code` says why no call answered; every call made then already has
    its ledger row. The code and message are the websocket's (CONTRACT section 5)."""

    attempt: int = 0  # the number of the last call (1, 2, ...); 0: none was made
    key_id: uuid.UUID | None = None  # the key of the last call
    call: Call | None = None
    cancelled: bool = False
    error_code: str = ""
    error_message: str = ""
    error_kind: str = ""


def error_text(exc: ProviderError) -> str:
    if exc.kind == ErrorKind.CONTEXT_TOO_LONG:
        return _("The conversation is too long for this model. Start a new conversation or shorten the message.")
    if exc.kind == ErrorKind.BAD_REQUEST:
        return _("The provider refused the request.")
    if exc.kind == ErrorKind.TIMEOUT:
        return _("The provider did not answer in time.")
    return _("The provider is unavailable.")


async def wait_or_cancel(awaitable, cancel: asyncio.Event, timeout: float | None = None):
    """(done, value): the awaitable's value (or its exception, raised), or done=False when `cancel`
    is set or `timeout` passes first; the work is cancelled then, and also when this is."""
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait(
            {work, stopper}, timeout=None if timeout is None else max(timeout, 0.001), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopper.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    if work.cancelled():
        return False, None
    return True, work.result()


async def call_once(adapter, request: ChatRequest, key: KeyLease | None, sink: Sink, cancel: asyncio.Event) -> Call:
    """One provider call, relayed into `sink` until it ends, fails, times out or is stopped.

    Its events are read in one task for the whole call (not a task per event: hundreds of replies
    at 50 events a second each), under one timeout moved forward at every event, and a stop
    cancels that task."""
    result = Call()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.LLM_TOTAL_TIMEOUT
    gap = settings.LLM_FIRST_TOKEN_TIMEOUT

    async def relay() -> None:
        # The adapter has its own, exact timeouts; this is the net under a provider that hangs.
        # Before the first event it fires after `gap`; after an event it is moved on only when
        # nearer than `gap` (to twice `gap`): once per `gap` of steady output, not a new timer at
        # every event. So a stall after output fires it between `gap` and twice `gap` later.
        events = adapter.stream(request, key=key)
        try:
            async with asyncio.timeout_at(min(loop.time() + gap, deadline)) as scope:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if event.text:
                            if result.ttft_ms is None:
                                result.ttft_ms = int((time.monotonic() - started) * 1000)
                            result.got_output = True
                            sink.add(event.text)
                    elif isinstance(event, ReasoningDelta):
                        # Not shown; but the model is answering, and a failure now is not retried
                        # on another key (the provider bills this thinking).
                        result.got_output = True
                        result.thinking.append(event.text)
                        sink.add_thinking(event.text)
                    elif isinstance(event, Usage):
                        result.usage = event
                    elif isinstance(event, Finish):
                        result.finish = event.reason
                    now = loop.time()
                    when = scope.when()
                    if when - now < gap and when < deadline:
                        scope.reschedule(min(now + 2 * gap, deadline))
        finally:
            with contextlib.suppress(BaseException):
                await events.aclose()

    try:
        finished, _value = await wait_or_cancel(relay(), cancel)
        result.cancelled = not finished
    except TimeoutError:
        result.error = ProviderError(ErrorKind.TIMEOUT, "the provider did not answer in time", after_output=result.got_output)
    except ProviderError as exc:
        result.error = exc
    except Exception as exc:  # noqa: BLE001 - an adapter bug must not leave the call hanging
        logger.warning("adapter %s raised %s", adapter.provider, type(exc).__name__)
        result.error = ProviderError(ErrorKind.UNAVAILABLE, "the provider call failed", after_output=result.got_output)
    result.latency_ms = int((time.monotonic() - started) * 1000)
    return result


def _call_failed_record(
    *, ledger_owner: Callable[[], dict], attempt: int, provider: str, model: str, key_id, exc: ProviderError, latency_ms
) -> None:
    """A call that failed before any output: its own ledger row, nothing billed."""
    with transaction.atomic():
        ledger.usage_record(
            # Inside the transaction: the owner's lock orders this before an erasure (billing.ledger).
            **ledger_owner(),
            attempt=attempt,
            provider=provider,
            model=model,  # the ledger's model is the name without the provider
            key_id=key_id,
            input_tokens=0,
            output_tokens=0,
            cached_tokens=0,
            cost=Decimal("0"),
            estimated=False,
            ttft_ms=None,
            latency_ms=latency_ms,
            outcome="error",
            error_kind=str(exc.kind),
        )


async def calls_with_failover(
    *,
    provider: str,
    model_id: str,
    request: ChatRequest,
    first_key: KeyLease | None,
    sink: Sink,
    db: Callable[[Callable], Callable[..., Awaitable]],
    ledger_owner: Callable[[], dict],
    cancel: asyncio.Event | None = None,
    before_call: Callable[[int, KeyLease | None], Awaitable[None]] | None = None,
    max_attempts: int | None = None,
    reservation_id: uuid.UUID | None = None,
) -> Ended:
    """Call the provider with `first_key` (chosen by the caller: None when no key can serve, or
    for the demo model), then with each next key billing.keys chooses, until a call answers, is
    stopped, fails after output, or the failure policy ends it. `ledger_owner()` names who a
    failed call's ledger row is filed under; `before_call(attempt, key)` runs as each call goes
    out; `max_attempts` caps the calls (None: as many as there are keys). `reservation_id` is the
    budget hold the calls are made on: kept for each next call, and none is made once it is gone."""
    adapter = llm.get_adapter(provider)
    cancel = cancel or asyncio.Event()
    tried: list[uuid.UUID] = []
    attempt = 0
    key = first_key
    last_error: ProviderError | None = None
    while True:
        if cancel.is_set():
            return Ended(attempt=attempt, cancelled=True)
        if needs_key(provider):
            if attempt > 0:
                key = await db(keys.key_choose)(provider=provider, exclude=tuple(tried))
            if key is None:
                if last_error is not None and last_error.kind == ErrorKind.MODEL_NOT_FOUND:
                    # Every key that could be tried answered that its server does not have the model.
                    code, message = "model_unavailable", _("The model %(model)s is not available.") % {"model": model_id}
                else:
                    code = "provider_unavailable"
                    message = error_text(last_error) if last_error else _("No provider key can serve this model now.")
                return Ended(
                    attempt=attempt, error_code=code, error_message=message, error_kind=str(last_error.kind) if last_error else ""
                )
        if attempt > 0 and reservation_id is not None and not await db(budgets.reservation_keep)(reservation_id=reservation_id):
            # The hold was released (a stall past its expiry): its room may be another reply's now.
            return Ended(
                attempt=attempt, error_code="provider_unavailable", error_message=error_text(last_error), error_kind=str(last_error.kind)
            )
        attempt += 1
        key_id = key.id if key is not None else None
        if before_call is not None:
            await before_call(attempt, key)
        call = await call_once(adapter, request, key, sink, cancel)
        if call.cancelled or call.error is None:
            return Ended(attempt=attempt, key_id=key_id, call=call)
        exc = call.error
        decision = None
        if key is not None:
            try:
                # The lease's version: a refusal of a secret rotated while this call ran must not
                # mark the new secret invalid.
                decision = await db(keys.key_report_failure)(
                    key_id=key.id, kind=str(exc.kind), retry_after=exc.retry_after, attempt=attempt, version=key.version
                )
            except Exception:  # noqa: BLE001 - the key's state is bookkeeping; the call's bill is not
                # Not raised: a call cut after output must still reach the caller to be billed.
                # Without the key's decision no other key is tried.
                logger.exception("key %s: its failure could not be recorded", key.id)
        if call.got_output or exc.after_output:
            # Cut mid-answer: billed for what arrived, never retried.
            return Ended(attempt=attempt, key_id=key_id, call=call)
        await db(_call_failed_record)(
            ledger_owner=ledger_owner, attempt=attempt, provider=provider, model=request.model, key_id=key_id, exc=exc,
            latency_ms=call.latency_ms,
        )
        last_error = exc
        request_refused = exc.kind in _REQUEST_REFUSED
        out_of_attempts = max_attempts is not None and attempt >= max_attempts
        if request_refused or decision is None or not decision.retry or out_of_attempts:
            return Ended(
                attempt=attempt,
                key_id=key_id,
                error_code="provider_error" if request_refused else "provider_unavailable",
                error_message=error_text(exc),
                error_kind=str(exc.kind),
            )
        tried.append(key.id)
        if decision.backoff > 0:
            await wait_or_cancel(asyncio.sleep(decision.backoff), cancel, decision.backoff + 1)


def call_usage(*, usage: Usage | None, input_tokens: int, text: str, thinking: str, model_id: str) -> tuple[Usage, bool]:
    """(what a call is billed for, whether it is estimated). The provider's final count when it
    reported one. Otherwise (stopped or cut early, or a server that reports none) what it has
    billed is the input it was sent plus the text and thinking that came out, counted here and
    marked estimated: the input as the provider counted it where it said so before the end
    (Anthropic), else `input_tokens`, our count of the request."""
    if usage is not None and usage.final:
        return usage, False
    output_tokens = context_mod.output_tokens_counted(text=text, thinking=thinking, model_id=model_id)
    if usage is None:
        return Usage(input_tokens=input_tokens, output_tokens=output_tokens), True
    return (
        Usage(
            input_tokens=usage.input_tokens, output_tokens=max(output_tokens, usage.output_tokens), cached_tokens=usage.cached_tokens
        ),
        True,
    )
