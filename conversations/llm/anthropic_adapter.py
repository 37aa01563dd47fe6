"""Anthropic Messages, streamed, through the official SDK (AsyncAnthropic).

The system prompt travels apart (`system=`), so system messages are lifted out of the list.
Usage comes in two halves: message_start carries the input (and cache reads), message_delta the
output count. Anthropic's `input_tokens` leaves out cache reads and cache writes, while OpenAI's
`prompt_tokens` includes cached tokens; Usage.input_tokens is the whole input here as there
(input + cache reads + cache writes), with the cache reads again in `cached_tokens`.

Temperature: anthropic 2.x removed `temperature` from messages.create (newer Claude models refuse
it), so it is sent through `extra_body`, and only when the conversation sets one.

Streaming: the SDK sends the request (`with_streaming_response`) and raises its APIStatusError for
an error answer; the adapter reads the server-sent events itself (see _sse), by their `event:`
name as the SDK does: message_start (input usage, yielded at once as a Usage with final=False: a
reply stopped or cut before its end is billed Anthropic's count of its input), content_block_delta
(text_delta), message_delta (stop reason, output usage: the reply is complete once it came, and
message_stop is awaited for a short grace only), message_stop, and error (e.g. overloaded_error
after the 200). ping, content_block_start/stop and events this adapter does not
know are skipped unread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _common, _sse
from .base import ChatRequest, Finish, ProviderError, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    import anthropic
    import httpx2

    from billing.keys import KeyLease

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
PROVIDER_LABEL = "Anthropic"
_LENGTH_STOPS = {"max_tokens", "model_context_window_exceeded"}
ANTHROPIC_MAX_TEMPERATURE = 1.0  # the API's range is 0 to 1


@dataclass
class _Counts:
    """The token counts a stream reports: message_start the input (cache reads and writes apart)
    and the output so far; message_delta the output, cumulative, and in newer API versions the
    input again."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False

    def start(self, usage: dict[str, Any]) -> None:
        cache_read = _common.token_count(usage.get("cache_read_input_tokens"))
        cache_write = _common.token_count(usage.get("cache_creation_input_tokens"))
        self.input_tokens = _common.token_count(usage.get("input_tokens")) + cache_read + cache_write
        self.cached_tokens = cache_read
        self.output_tokens = _common.token_count(usage.get("output_tokens"))
        self.reported = True

    def usage(self, *, final: bool = True) -> Usage:
        return Usage(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, cached_tokens=self.cached_tokens, final=final
        )

    def update(self, usage: dict[str, Any]) -> None:
        self.output_tokens = _common.token_count(usage.get("output_tokens")) or self.output_tokens
        if usage.get("input_tokens") is not None:
            cache_read = _common.token_count(usage.get("cache_read_input_tokens")) or self.cached_tokens
            cache_write = _common.token_count(usage.get("cache_creation_input_tokens"))
            self.input_tokens = _common.token_count(usage["input_tokens"]) + cache_read + cache_write
            self.cached_tokens = cache_read
        self.reported = True


def _finish_reason(stop_reason: str) -> str:
    if stop_reason in _LENGTH_STOPS:
        return "length"
    # Claude's streaming classifiers ended the reply, with no words of their own: the person must
    # be told, and the turn left out of the next requests' context (or they are refused too).
    if stop_reason == "refusal":
        return "refused"
    return "stop"  # end_turn, stop_sequence, pause_turn, tool_use: ended on the model's side


class AnthropicAdapter(_common.SDKAdapter):
    provider = "anthropic"
    sdk_name = "anthropic"
    label = PROVIDER_LABEL

    def client(
        self, key: KeyLease, *, http_client: httpx2.AsyncClient, timeouts: _common.Timeouts | None = None
    ) -> anthropic.AsyncAnthropic:
        """An SDK client for this key over the loop's shared HTTP client (_common.shared_http_client),
        without retries: key failover in the turn owns retrying."""
        timeouts = timeouts or _common.Timeouts.from_settings()
        return _common.sdk("anthropic").AsyncAnthropic(
            api_key=key.secret,
            # Always explicit, so ANTHROPIC_BASE_URL in the environment never redirects a key.
            base_url=key.base_url or ANTHROPIC_BASE_URL,
            max_retries=0,
            timeout=timeouts.httpx(),
            http_client=http_client,
            # No tracing spans: they could carry conversation content to a collector.
            open_telemetry=False,
        )

    @staticmethod
    def request_params(request: ChatRequest) -> dict[str, Any]:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            # Anthropic refuses an empty text block (an errored reply saved empty, say): leave those out.
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system" and m.content.strip()
            ],
        }
        if system:
            params["system"] = system
        if request.temperature is not None:
            # Anthropic takes 0 to 1; a conversation may hold up to 2 (OpenAI's range, kept when
            # the model is switched). Above 1 is sent as 1, the most varied Anthropic allows,
            # rather than have every turn refused with a 400.
            params["extra_body"] = {"temperature": min(float(request.temperature), ANTHROPIC_MAX_TEMPERATURE)}
        return params

    async def stream(self, request: ChatRequest, *, key: KeyLease | None) -> AsyncIterator[StreamEvent]:
        sdk, deadlines, client = await self.begin(key)
        counts = _Counts()
        finish: str | None = None
        stopped = False
        manager = client.messages.with_streaming_response.create(**self.request_params(request), stream=True)
        async with self.streamed_response(sdk, deadlines, manager.__aenter__()) as response:
            chunks = response.http_response.aiter_bytes()
            decoder = _sse.SSEDecoder()
            texts = _common.TextDeltas()
            # Once the stop reason came (message_delta), the reply is complete: message_stop is
            # waited for until then, no longer (_common.FINISH_GRACE_SECONDS), as OpenAI's [DONE].
            ends_at: float | None = None
            while not stopped and (body := await _common.read_next(deadlines, chunks, ends_at)) is not None:
                for name, data in decoder.feed(body):
                    if name == b"content_block_delta":
                        text = self.delta_text(data, after_output=deadlines.got_output)
                        text = texts.feed(text) if text else text
                        if text:
                            deadlines.got_output = True
                            yield TextDelta(text)
                    elif name == b"message_start" or name == b"message_delta":
                        stop_reason = self.count(name, data, counts, after_output=deadlines.got_output)
                        if stop_reason:
                            finish = _finish_reason(stop_reason)
                            deadlines.got_output = True
                            ends_at = ends_at or _common.finish_grace_end()
                        elif name == b"message_start":
                            # Anthropic's count of the input, for a reply stopped or cut before its end.
                            yield counts.usage(final=False)
                    elif name == b"message_stop":
                        stopped = True  # the end: no event after it is read
                        break
                    elif name == b"error":
                        raise self.stream_error(data, response=response, after_output=deadlines.got_output)
            if stopped:
                await _common.drain(chunks)
        if finish is None:
            # The body ended before the stop reason: the connection was closed early.
            raise _common.stream_cut(provider=PROVIDER_LABEL, after_output=deadlines.got_output)
        if tail := texts.end():
            yield TextDelta(tail)
        if counts.reported:
            yield counts.usage()
        yield Finish(finish)  # type: ignore[arg-type]

    @staticmethod
    def delta_text(data: bytes, *, after_output: bool) -> str | None:
        """The text of a content_block_delta (None for the other deltas: tool input, thinking...)."""
        delta = _common.json_object(data, provider=PROVIDER_LABEL, after_output=after_output).get("delta")
        if not isinstance(delta, dict):
            raise _common.malformed(provider=PROVIDER_LABEL, after_output=after_output)
        if delta.get("type") != "text_delta":
            return None
        text = delta.get("text")
        if text is not None and not isinstance(text, str):
            raise _common.malformed(provider=PROVIDER_LABEL, after_output=after_output)
        return text

    @staticmethod
    def count(name: bytes, data: bytes, counts: _Counts, *, after_output: bool) -> str | None:
        """Take the usage of a message_start or message_delta into `counts`; the stop reason of a
        message_delta."""
        event = _common.json_object(data, provider=PROVIDER_LABEL, after_output=after_output)
        try:
            if name == b"message_start":
                counts.start(event["message"].get("usage") or {})
                return None
            usage = event.get("usage")
            if usage is not None:
                counts.update(usage)
            return (event.get("delta") or {}).get("stop_reason")
        except (AttributeError, KeyError, TypeError):  # a list where an object belongs, text for a count...
            raise _common.malformed(provider=PROVIDER_LABEL, after_output=after_output) from None

    @staticmethod
    def stream_error(data: bytes, *, response: Any, after_output: bool) -> ProviderError:
        """The ProviderError for an `error` event sent after the stream began, classified by its
        error type as the SDK's APIStatusError (status 200) would be."""
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        details = error.get("details")
        return _common.status_error(
            provider=PROVIDER_LABEL,
            status=200,
            error_type=error.get("type"),
            code=details.get("error_code") if isinstance(details, dict) else None,
            provider_message=error.get("message"),
            retry_after=_common.parse_retry_after(response.headers),
            after_output=after_output,
            request_id=response.headers.get("request-id"),
        )

    def status_error(self, exc: anthropic.APIStatusError, *, after_output: bool) -> ProviderError:
        return _common.status_error(
            provider=PROVIDER_LABEL,
            status=exc.status_code,
            error_type=exc.type,
            code=exc.error_code,
            provider_message=exc.api_message,
            retry_after=_common.parse_retry_after(exc.response.headers),
            after_output=after_output,
            request_id=exc.request_id,
        )
