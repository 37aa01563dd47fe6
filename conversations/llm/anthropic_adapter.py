"""Anthropic Messages, streamed, through the official SDK (AsyncAnthropic).

The system prompt travels apart (`system=`), so system messages are lifted out of the list.
Usage comes in two halves: message_start carries the input (and cache reads), message_delta the
output count. Anthropic's `input_tokens` leaves out cache reads and cache writes, while OpenAI's
`prompt_tokens` includes cached tokens; Usage.input_tokens is the whole input here as there
(input + cache reads + cache writes), with the cache reads again in `cached_tokens`.

Temperature: anthropic 2.x removed `temperature` from messages.create (newer Claude models refuse
it), so it is sent through `extra_body`, and only when the conversation sets one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import _common
from .base import ChatRequest, Finish, ProviderError, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    import anthropic

    from billing.keys import KeyLease

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
PROVIDER_LABEL = "Anthropic"
_LENGTH_STOPS = {"max_tokens", "model_context_window_exceeded"}


class AnthropicAdapter(_common.SDKAdapter):
    provider = "anthropic"
    sdk_name = "anthropic"
    label = PROVIDER_LABEL

    def client(self, key: KeyLease, *, timeouts: _common.Timeouts | None = None) -> anthropic.AsyncAnthropic:
        """An SDK client for this key, without retries: key failover in the turn owns retrying."""
        timeouts = timeouts or _common.Timeouts.from_settings()
        return _common.sdk("anthropic").AsyncAnthropic(
            api_key=key.secret,
            # Always explicit, so ANTHROPIC_BASE_URL in the environment never redirects a key.
            base_url=key.base_url or ANTHROPIC_BASE_URL,
            max_retries=0,
            timeout=timeouts.httpx(),
            http_client=_common.shared_http_client(self.sdk_name),
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
            params["extra_body"] = {"temperature": float(request.temperature)}
        return params

    async def stream(self, request: ChatRequest, *, key: KeyLease | None) -> AsyncIterator[StreamEvent]:
        sdk, deadlines, client = await self.begin(key)
        stream = None
        input_tokens = cached_tokens = output_tokens = 0
        saw_usage = False
        finish: str | None = None
        stopped = False
        try:
            try:
                stream = await deadlines.within(client.messages.create(**self.request_params(request), stream=True))
                events = stream.__aiter__()
                while True:
                    try:
                        event = await deadlines.within(events.__anext__())
                    except StopAsyncIteration:
                        break
                    kind = event.type
                    if kind == "content_block_delta":
                        text = getattr(event.delta, "text", None)
                        if text:
                            deadlines.got_output = True
                            yield TextDelta(text)
                    elif kind == "message_start":
                        usage = event.message.usage
                        cache_read = usage.cache_read_input_tokens or 0
                        cache_write = usage.cache_creation_input_tokens or 0
                        input_tokens = (usage.input_tokens or 0) + cache_read + cache_write
                        cached_tokens = cache_read
                        output_tokens = usage.output_tokens or 0
                        saw_usage = True
                    elif kind == "message_delta":
                        if event.delta.stop_reason:
                            finish = "length" if event.delta.stop_reason in _LENGTH_STOPS else "stop"
                            deadlines.got_output = True
                        if event.usage is not None:
                            # Counts in message_delta are cumulative for the whole message.
                            output_tokens = event.usage.output_tokens or output_tokens
                            if event.usage.input_tokens is not None:
                                cache_read = event.usage.cache_read_input_tokens or cached_tokens
                                cache_write = event.usage.cache_creation_input_tokens or 0
                                input_tokens = event.usage.input_tokens + cache_read + cache_write
                                cached_tokens = cache_read
                            saw_usage = True
                    elif kind == "message_stop":
                        stopped = True
            except Exception as exc:
                error = self.error_from(exc, sdk=sdk, after_output=deadlines.got_output)
                if error is None:
                    raise
                raise error from None
        finally:
            if stream is not None:
                await stream.close()
        if finish is None or not stopped:
            raise _common.stream_cut(provider=PROVIDER_LABEL, after_output=deadlines.got_output)
        if saw_usage:
            yield Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens)
        yield Finish(finish)  # type: ignore[arg-type]

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
