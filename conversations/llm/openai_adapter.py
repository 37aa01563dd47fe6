"""OpenAI chat completions, streamed, through the official SDK (AsyncOpenAI).

The same adapter serves every OpenAI-compatible server (Ollama, vLLM, llama.cpp server, LM Studio):
the key's base URL points the SDK there.

Max tokens: OpenAI deprecated `max_tokens` for chat completions and its reasoning models (o-series,
gpt-5) reject it, asking for `max_completion_tokens`; the installed SDK (3.52) takes both. Many
OpenAI-compatible servers only know `max_tokens` (older Ollama, LM Studio, llama.cpp builds), and
would silently ignore the newer name and generate without limit. So the official API (no base URL,
or api.openai.com) gets `max_completion_tokens` and every other server gets `max_tokens`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _common
from .base import ChatRequest, Finish, ProviderError, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    import openai

    from billing.keys import KeyLease

OPENAI_BASE_URL = "https://api.openai.com/v1"
PROVIDER_LABEL = "OpenAI"
# Local servers (Ollama...) need no key, but the SDK refuses to start without one.
NO_KEY_PLACEHOLDER = "no-key"


def is_official_api(base_url: str) -> bool:
    host = urlsplit(base_url).hostname if base_url else "api.openai.com"
    return host == "api.openai.com"


def _finish_reason(reason: str | None) -> str:
    # content_filter, tool_calls...: the reply ended on the provider's side, not by length.
    return "length" if reason == "length" else "stop"


class OpenAIAdapter(_common.SDKAdapter):
    provider = "openai"
    sdk_name = "openai"
    label = PROVIDER_LABEL

    def client(self, key: KeyLease, *, timeouts: _common.Timeouts | None = None) -> openai.AsyncOpenAI:
        """An SDK client for this key, without retries: key failover in the turn owns retrying."""
        timeouts = timeouts or _common.Timeouts.from_settings()
        return _common.sdk("openai").AsyncOpenAI(
            api_key=key.secret or NO_KEY_PLACEHOLDER,
            # Always explicit, so an OPENAI_BASE_URL in the environment never redirects a key.
            base_url=key.base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=timeouts.httpx(),
            http_client=_common.shared_http_client(self.sdk_name),
        )

    def request_params(self, request: ChatRequest, *, key: KeyLease) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if is_official_api(key.base_url):
            params["max_completion_tokens"] = request.max_tokens
        else:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = float(request.temperature)
        return params

    async def stream(self, request: ChatRequest, *, key: KeyLease | None) -> AsyncIterator[StreamEvent]:
        sdk, deadlines, client = await self.begin(key)
        stream = None
        usage: Usage | None = None
        finish: str | None = None
        try:
            try:
                stream = await deadlines.within(
                    client.chat.completions.create(
                        **self.request_params(request, key=key),
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                chunks = stream.__aiter__()
                while True:
                    try:
                        chunk = await deadlines.within(chunks.__anext__())
                    except StopAsyncIteration:
                        break
                    for choice in chunk.choices or ():
                        text = choice.delta.content if choice.delta is not None else None
                        if text:
                            deadlines.got_output = True
                            yield TextDelta(text)
                        if choice.finish_reason:
                            finish = _finish_reason(choice.finish_reason)
                            deadlines.got_output = True
                    if chunk.usage is not None:
                        details = chunk.usage.prompt_tokens_details
                        usage = Usage(
                            input_tokens=chunk.usage.prompt_tokens or 0,
                            output_tokens=chunk.usage.completion_tokens or 0,
                            cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
                        )
            except Exception as exc:
                error = self.error_from(exc, sdk=sdk, after_output=deadlines.got_output)
                if error is None:
                    raise
                raise error from None
        finally:
            if stream is not None:
                await stream.close()
        if finish is None:
            # The body ended without a finish reason: the connection was closed early.
            raise _common.stream_cut(provider=PROVIDER_LABEL, after_output=deadlines.got_output)
        if usage is not None:
            yield usage
        yield Finish(finish)  # type: ignore[arg-type]

    def status_error(self, exc: openai.APIStatusError, *, after_output: bool) -> ProviderError:
        body = exc.body if isinstance(exc.body, dict) else {}
        return _common.status_error(
            provider=PROVIDER_LABEL,
            status=exc.status_code,
            error_type=body.get("type"),
            code=body.get("code"),
            provider_message=body.get("message"),
            retry_after=_common.parse_retry_after(exc.response.headers),
            after_output=after_output,
            request_id=exc.request_id,
        )
