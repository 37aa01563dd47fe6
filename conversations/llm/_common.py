"""What the SDK adapters share: timeouts, deadlines, the pooled HTTP client, reading a streamed
body, and turning a provider's failure into a ProviderError whose message is safe to show (never
the secret, never the request's text).

Provider error messages are read to classify them (a 400 that names the context length) but never
passed on: OpenAI's 401 text quotes part of the key, and a 400 may quote the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import importlib
import json
import logging
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
import jiter
from django.conf import settings

from .base import ErrorKind, ProviderError

if TYPE_CHECKING:
    from billing.keys import KeyLease

T = TypeVar("T")

_CONTEXT_HINT = re.compile(
    r"context[ _-]?(length|window|size|limit)|maximum context|prompt is too long|too many tokens"
    r"|exceeds? the (available )?context|input length and .?max_tokens.? exceed",
    re.IGNORECASE,
)
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error", "prompt_too_long"}
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_token: float
    total: float

    @classmethod
    def from_settings(cls) -> Timeouts:
        return cls(
            connect=float(settings.LLM_CONNECT_TIMEOUT),
            first_token=float(settings.LLM_FIRST_TOKEN_TIMEOUT),
            total=float(settings.LLM_TOTAL_TIMEOUT),
        )

    def httpx(self) -> httpx2.Timeout:
        # The read timeout bounds every wait for bytes: the response headers and each gap between
        # chunks. A stall longer than the first-token allowance mid-stream is a dead stream.
        # The aiohttp transport takes read as its socket-read timeout, connect as its socket-connect
        # one and pool as its whole connect (waiting for a pooled connection included); it has no
        # write timeout, which the deadlines cover.
        return httpx2.Timeout(
            connect=self.connect,
            read=min(self.first_token, self.total),
            write=min(self.first_token, self.total),
            pool=self.connect,
        )


# The SDKs log each request's options at DEBUG, messages included, and message text must never reach
# a log; an operator turning LOG_LEVEL=DEBUG on must not change that. INFO keeps their one-line
# "HTTP Request: POST <url> 200" records, which hold no key and no text.
_SDK_LOGGERS = ("openai", "anthropic", "httpx2", "httpcore2")
for _name in _SDK_LOGGERS:
    _logger = logging.getLogger(_name)
    if _logger.level < logging.INFO:
        _logger.setLevel(logging.INFO)


# Importing the anthropic SDK takes seconds of CPU (openai's about one and a half): done on the event
# loop at the first call, it would freeze every websocket of the process meanwhile. So the first call
# imports it in a worker thread; `warm_up()` in conversations.llm can do it at process start.
_sdks: dict[str, ModuleType] = {}


async def load_sdk(name: str) -> ModuleType:
    module = _sdks.get(name)
    if module is None:
        # Python's import lock makes a concurrent first call wait for the whole import, never see
        # a half-initialised module.
        module = _sdks[name] = await asyncio.to_thread(importlib.import_module, name)
    return module


def sdk(name: str) -> ModuleType:
    """The SDK module, imported now if no call has loaded it yet (sync callers, tests)."""
    module = _sdks.get(name)
    if module is None:
        module = _sdks[name] = importlib.import_module(name)
    return module


# One pooled HTTP client per event loop and provider. Building an SDK client with its own HTTP
# client costs ~70 ms of CPU (loading the CA bundle into a fresh SSL context) on the event loop, per
# call; sharing one also reuses kept-alive connections. Only the HTTP layer is shared: the SDK client,
# which holds the key, is made per call and the key goes in that call's headers.
# The client is the SDKs' DefaultAioHttpClient (their `aiohttp` extra): the httpx2 interface they
# expect over an aiohttp session, which costs a fraction of httpx's own transport per streamed chunk
# (httpcore and anyio open cancel scopes around every read). Its aiohttp session is made on the first
# request, in this loop, and must be closed in it: see _closed_with_the_loop.
_http_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[httpx2.AsyncClient, AsyncIterator[None]]]
] = weakref.WeakKeyDictionary()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One SSL context for every HTTP client of the process: building one loads the CA bundle."""
    return httpx2.create_ssl_context()


async def _closed_with_the_loop(client: httpx2.AsyncClient) -> AsyncIterator[None]:
    """Waits at its `yield` for as long as its loop runs, then closes the client.

    An aiohttp session left open when its loop ends logs "Unclosed client session" (httpx's pool
    was silently dropped). Every short-lived loop that calls the adapters ends through
    asyncio.run() or asyncio.Runner (asgiref's async_to_sync in Celery tasks and admin actions,
    pytest-asyncio), which close the loop's async generators before closing the loop
    (loop.shutdown_asyncgens()): closing this one closes the client, in its loop.
    """
    try:
        yield
    finally:
        await client.aclose()


async def shared_http_client(sdk_name: str) -> httpx2.AsyncClient:
    """This event loop's pooled HTTP client for one SDK (building one costs ~70 ms of CPU)."""
    loop = asyncio.get_running_loop()
    clients = _http_clients.setdefault(loop, {})
    client, closer = clients.get(sdk_name, (None, None))
    if client is None or client.is_closed:
        # The SDK's defaults (connection limits), except redirects: a key's base URL is checked
        # when it is saved, and a redirect must not carry the call (and its key) somewhere that
        # was not checked. (httpx2's client layer follows redirects, never aiohttp itself.)
        client = sdk(sdk_name).DefaultAioHttpClient(follow_redirects=False, verify=ssl_context())
        closer = _closed_with_the_loop(client)
        await anext(closer)  # started, so the loop knows it; held here, as the loop holds it weakly
        clients[sdk_name] = (client, closer)
    return client


class Deadlines:
    """The first-token deadline holds until the first delta; the total deadline always."""

    def __init__(self, timeouts: Timeouts, *, provider: str = "The provider") -> None:
        self.provider = provider
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.first_token_at = now + timeouts.first_token
        self.total_at = now + timeouts.total
        self.started = time.monotonic()
        self.got_output = False
        # The transport's read timeout (Timeouts.httpx): no single read outlasts it.
        self.read_bound = min(timeouts.first_token, timeouts.total)

    def current(self) -> float:
        return self.total_at if self.got_output else min(self.first_token_at, self.total_at)

    async def within(self, awaitable: Awaitable[T]) -> T:
        """Await one step of the call under the current deadline. Never used around a `yield`:
        a timeout scope left open across a yield would fire into the consumer's code."""
        deadline = self.current()
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            which = "the whole reply" if self.got_output or deadline == self.total_at else "the first token"
            raise ProviderError(
                kind=ErrorKind.TIMEOUT,
                message=f"{self.provider} took too long ({which}).",
                after_output=self.got_output,
            ) from None

    async def read(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        """The next chunk of a streamed body under the current deadline; None at its end.

        The transport ends any read after `read_bound` without data, so a deadline further away
        than that cannot pass during this read: then no timeout scope is set up (it is a timer per
        chunk, and hundreds of streams read 50 chunks a second each)."""
        try:
            if self.current() - asyncio.get_running_loop().time() > self.read_bound:
                return await anext(chunks)
            return await self.within(anext(chunks))
        except StopAsyncIteration:
            return None


# How long to wait for the rest of a body after its last event (see drain).
DRAIN_SECONDS = 0.1


async def drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what is left of a streamed body after its last event (the end of the chunked body,
    usually already on its way), for at most DRAIN_SECONDS. An HTTP/1.1 response read to its end
    gives its connection back to the pool; one closed before is dropped, and the next call pays a
    new connection and TLS handshake. The SDKs did the same: openai drains after [DONE] for 0.1 s,
    anthropic read every stream to its end. The reply is complete: a failure here is ignored."""
    import aiohttp  # see _transport_cause

    with contextlib.suppress(TimeoutError, httpx2.HTTPError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


# How long a stream may take, once its finish reason arrived, to send the rest (OpenAI: the usage
# chunk, then `data: [DONE]`). Servers send them at once; a proxy that holds the end of the body
# back must not turn a complete reply into a timeout.
FINISH_GRACE_SECONDS = 1.0


def finish_grace_end() -> float:
    """The loop time until which the rest of a body is read once its finish reason has come."""
    return asyncio.get_running_loop().time() + FINISH_GRACE_SECONDS


async def read_next(deadlines: Deadlines, chunks: AsyncIterator[bytes], ends_at: float | None) -> bytes | None:
    """The next chunk of a streamed body, or None at its end: under the call's deadlines while
    the reply runs; once it is complete (`ends_at`, from finish_grace_end), by then at the latest."""
    if ends_at is None:
        return await deadlines.read(chunks)
    return await read_by(chunks, ends_at)


async def read_by(chunks: AsyncIterator[bytes], at: float) -> bytes | None:
    """The next chunk of a body whose reply is already complete (its finish reason arrived), or
    None at its end, at the loop time `at`, or when the connection fails: nothing read now can
    change the reply, only add its usage. The response is closed after (not given back to the
    pool: the rest of its body was never read)."""
    import aiohttp  # see _transport_cause

    try:
        async with asyncio.timeout_at(at):
            return await anext(chunks)
    except (StopAsyncIteration, TimeoutError, httpx2.HTTPError, aiohttp.ClientError):
        return None


def safe_token(value: object) -> str | None:
    """A provider's error type or code, reduced to identifier characters (it is shown and logged)."""
    if not isinstance(value, str) or not value:
        return None
    return _SAFE_TOKEN.sub("", value)[:64] or None


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def looks_like_context_too_long(*, message: object, code: object) -> bool:
    if isinstance(code, str) and code in _CONTEXT_CODES:
        return True
    return isinstance(message, str) and bool(_CONTEXT_HINT.search(message))


def status_error(
    *,
    provider: str,
    status: int,
    error_type: object = None,
    code: object = None,
    provider_message: object = None,
    retry_after: float | None = None,
    after_output: bool = False,
    request_id: object = None,
) -> ProviderError:
    """The ProviderError for an HTTP error answer (or, with status 200, an error event in the stream)."""
    error_type = safe_token(error_type)
    code = safe_token(code)
    extra = {k: v for k, v in {"type": error_type, "code": code, "request_id": safe_token(request_id)}.items() if v}
    label = "/".join(v for v in (error_type, code) if v)
    detail = f" ({label})" if label else ""

    def err(kind: ErrorKind, text: str) -> ProviderError:
        return ProviderError(
            kind=kind,
            message=text,
            status=status,
            retry_after=retry_after,
            after_output=after_output,
            extra=extra,
        )

    if status == 200:
        # An error event inside a started stream: classify by the provider's error type.
        if error_type in {"rate_limit_error", "rate_limit_exceeded"}:
            return err(ErrorKind.RATE_LIMITED, f"{provider} rate limit hit while streaming{detail}.")
        if error_type in {"invalid_request_error"}:
            return err(ErrorKind.BAD_REQUEST, f"{provider} refused the request while streaming{detail}.")
        return err(ErrorKind.UNAVAILABLE, f"{provider} failed while streaming{detail}.")
    if status in (401, 402, 403):
        return err(ErrorKind.AUTH, f"{provider} refused the key: HTTP {status}{detail}.")
    if status == 429:
        return err(ErrorKind.RATE_LIMITED, f"{provider} rate limit: HTTP 429{detail}.")
    if status == 408:
        return err(ErrorKind.TIMEOUT, f"{provider} timed out: HTTP 408{detail}.")
    if status == 404:
        return err(ErrorKind.MODEL_NOT_FOUND, f"{provider} does not serve this model here: HTTP 404{detail}.")
    if status == 413 or (
        400 <= status < 500 and looks_like_context_too_long(message=provider_message, code=code)
    ):
        return err(ErrorKind.CONTEXT_TOO_LONG, f"The conversation is too long for this model: HTTP {status}{detail}.")
    if 400 <= status < 500:
        return err(ErrorKind.BAD_REQUEST, f"{provider} refused the request: HTTP {status}{detail}.")
    return err(ErrorKind.UNAVAILABLE, f"{provider} is unavailable: HTTP {status}{detail}.")


def _transport_cause(exc: BaseException) -> tuple[BaseException, bool]:
    """(the error the transport met, whether it was a timeout) under the wrappers put around it.

    The SDKs raise APIConnectionError or APITimeoutError from an httpx2 error, and the aiohttp
    transport raises that httpx2 error from aiohttp's own, chosen by class and loosely: openai's copy
    turns every aiohttp ClientConnectionError, a refused connection or a server hanging up mid-body
    as much as a connect timeout, into httpx2.ConnectTimeout. So when there is an aiohttp error
    underneath, it decides; aiohttp's timeouts (a socket read or connect timing out) are TimeoutErrors.
    """
    # Imported here, not with this module: importing aiohttp is slow, and an error from it means
    # the SDK's transport has loaded it already.
    import aiohttp

    timed_out = False
    cause = exc
    for _ in range(10):  # bounded: a cause chain can be made to loop
        if isinstance(cause, aiohttp.ClientError):
            return cause, isinstance(cause, TimeoutError)
        timed_out = timed_out or isinstance(cause, TimeoutError | httpx2.TimeoutException)
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    return cause, timed_out


def is_transport_error(exc: BaseException) -> bool:
    """An httpx2 or aiohttp error met while reading a streamed body, which no SDK wraps."""
    import aiohttp  # see _transport_cause

    return isinstance(exc, httpx2.HTTPError | aiohttp.ClientError)


def transport_error(*, provider: str, exc: BaseException, after_output: bool) -> ProviderError:
    """Connection refused, reset, cut mid-body, or a connect or read timeout."""
    cause, timed_out = _transport_cause(exc)
    if timed_out:
        return ProviderError(
            kind=ErrorKind.TIMEOUT, message=f"{provider} did not answer in time.", after_output=after_output
        )
    name = type(cause).__name__
    text = (
        f"The connection to {provider} broke off mid-reply ({name})."
        if after_output
        else f"Could not reach {provider} ({name})."
    )
    return ProviderError(kind=ErrorKind.UNAVAILABLE, message=text, after_output=after_output)


def stream_cut(*, provider: str, after_output: bool) -> ProviderError:
    return ProviderError(
        kind=ErrorKind.UNAVAILABLE,
        message=f"The reply from {provider} ended before it was complete.",
        after_output=after_output,
    )


def malformed(*, provider: str, after_output: bool) -> ProviderError:
    """A streamed event that is not the JSON object the protocol says. Its text is not quoted: it
    may hold the reply, or whatever a misconfigured server answers."""
    return ProviderError(
        kind=ErrorKind.UNAVAILABLE,
        message=f"The reply from {provider} could not be read (malformed data in the stream).",
        after_output=after_output,
    )


def json_object(data: bytes, *, provider: str, after_output: bool) -> dict[str, Any]:
    """The JSON object of one event's data; a malformed() ProviderError for anything else."""
    try:
        # jiter (the SDKs' own JSON parser): ~0.7 µs per chunk where json.loads takes ~4. It is
        # stricter (a lone surrogate escape, which a token boundary can make): json.loads decides.
        value = jiter.from_json(data)
    except ValueError:
        try:
            value = json.loads(data)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            value = None
    if not isinstance(value, dict):
        raise malformed(provider=provider, after_output=after_output) from None
    return value


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class TextDeltas:
    """A reply's text deltas, made well-formed. A server that writes its JSON with ASCII escapes
    can cut a token between the two halves of a surrogate pair: one chunk ends with "\\ud83d",
    the next starts with "\\ude00", and each parses to a lone half, text that can neither be
    saved nor sent as UTF-8. So a trailing high half waits for the next delta and is joined to
    it; a half still alone, and a NUL (PostgreSQL text cannot hold one), become U+FFFD."""

    def __init__(self) -> None:
        self.held = ""

    def feed(self, text: str) -> str:
        if self.held:
            text, self.held = self.held + text, ""
        if not _UNSTORABLE.search(text):  # nearly every delta: one scan
            return text
        if "\ud800" <= text[-1] <= "\udbff":
            text, self.held = text[:-1], text[-1]
        # Through UTF-16, pairs become the characters they name and lone halves U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").replace("\x00", "\ufffd")

    def end(self) -> str:
        """What is still held when the reply ends: a lone half, shown as U+FFFD."""
        held, self.held = self.held, ""
        return "\ufffd" if held else ""


def token_count(value: object) -> int:
    """A token count from a provider's JSON; absent or null is 0. Raises TypeError for anything
    that is not a count (the adapters turn it into malformed())."""
    if value is None:
        return 0
    if isinstance(value, int | float) and value >= 0:
        return int(value)
    raise TypeError("not a token count")


class SDKAdapter:
    """What the OpenAI and Anthropic adapters share: starting a call, turning whatever the SDK or
    the transport raised into a ProviderError, and listing models to test a key."""

    provider: str
    sdk_name: str
    label: str

    def client(self, key: KeyLease, *, http_client: httpx2.AsyncClient, timeouts: Timeouts | None = None) -> Any:
        raise NotImplementedError

    def status_error(self, exc: Any, *, after_output: bool) -> ProviderError:
        """The ProviderError for the SDK's APIStatusError (each SDK exposes the body differently)."""
        raise NotImplementedError

    async def begin(self, key: KeyLease | None) -> tuple[ModuleType, Deadlines, Any]:
        """(the SDK module, the call's deadlines, an SDK client for the key)."""
        if key is None:
            raise ProviderError(kind=ErrorKind.AUTH, message=f"No {self.label} key was given for this call.")
        sdk = await load_sdk(self.sdk_name)
        timeouts = Timeouts.from_settings()
        # The client is not closed after the call: it only borrows the shared HTTP client.
        http_client = await shared_http_client(self.sdk_name)
        return sdk, Deadlines(timeouts, provider=self.label), self.client(key, http_client=http_client, timeouts=timeouts)

    def error_from(self, exc: Exception, *, sdk: ModuleType, after_output: bool) -> ProviderError | None:
        """The ProviderError for a failure of the call, or None for an exception that is not one
        (a bug, to be raised as it is)."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, sdk.APIStatusError):
            return self.status_error(exc, after_output=after_output)
        if isinstance(exc, sdk.APIConnectionError) or is_transport_error(exc):
            # APITimeoutError is an APIConnectionError: what is underneath tells whether it timed
            # out (see _transport_cause). Errors met while reading a raw streamed body come
            # unwrapped, as httpx2 errors (or aiohttp's, where the transport does not map them).
            return transport_error(provider=self.label, exc=exc, after_output=after_output)
        return None

    @contextlib.contextmanager
    def provider_errors(self, sdk: ModuleType, deadlines: Deadlines) -> Iterator[None]:
        """Whatever the SDK or the transport raises in the block comes out as a ProviderError
        (error_from; whether output had arrived is read when it fails); anything else, a bug, as
        it is."""
        try:
            yield
        except Exception as exc:
            error = self.error_from(exc, sdk=sdk, after_output=deadlines.got_output)
            if error is None:
                raise
            raise error from None

    @contextlib.asynccontextmanager
    async def streamed_response(self, sdk: ModuleType, deadlines: Deadlines, send: Awaitable[Any]) -> AsyncIterator[Any]:
        """The SDK's response to a `with_streaming_response` call, its body unread, for the block to
        read. `send` sends the request (a manager's `__aenter__()`), under the first deadline: the
        SDK builds and authenticates it, and raises its APIStatusError for an error answer.
        Failures, sending or in the block, come out as ProviderErrors (provider_errors); the
        response is closed after the block."""
        response = None
        try:
            with self.provider_errors(sdk, deadlines):
                response = await deadlines.within(send)
                yield response
        finally:
            if response is not None:
                await response.close()

    async def ping(self, *, key: KeyLease) -> list[str]:
        """The model names the key can list (GET /v1/models): a cheap check that a key and its base
        URL work, costing no tokens. Raises ProviderError like stream()."""
        sdk, deadlines, client = await self.begin(key)
        with self.provider_errors(sdk, deadlines):
            page = await deadlines.within(client.models.list())
        return [model.id for model in page.data]
