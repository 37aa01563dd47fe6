"""OpenAI chat completions, streamed, through the official SDK (AsyncOpenAI).

The same adapter serves every OpenAI-compatible server (Ollama, vLLM, llama.cpp server, LM Studio):
the key's base URL points the SDK there.

Max tokens: OpenAI deprecated `max_tokens` for chat completions and its reasoning models (o-series,
gpt-5) reject it, asking for `max_completion_tokens`; the installed SDK (3.52) takes both. Many
OpenAI-compatible servers only know `max_tokens` (older Ollama, LM Studio, llama.cpp builds), and
would silently ignore the newer name and generate without limit. So the official API (no base URL,
or api.openai.com) gets `max_completion_tokens` and every other server gets `max_tokens`.

Streaming: the SDK sends the request (`with_streaming_response`) and raises its APIStatusError for
an error answer; the adapter reads the server-sent events itself (see _sse). Each `data:` line is a
chat.completion.chunk object, an `{"error": {...}}` object when the server fails after the 200
(what the SDK raises as APIError), or `[DONE]` at the end.

Thinking: a reasoning model behind a reasoning parser (vLLM, llama.cpp server, Ollama) or
DeepSeek's API streams its thinking apart from the answer, in `delta.reasoning_content` (newer
vLLM and Ollama: `delta.reasoning`), often for longer than the first-token allowance. It comes out
as ReasoningDelta: not the reply's text, but the model answering (the deadline is met) and billed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _common, _sse
from .base import ChatRequest, Finish, ProviderError, ReasoningDelta, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    import httpx2
    import openai

    from billing.keys import KeyLease

OPENAI_BASE_URL = "https://api.openai.com/v1"
PROVIDER_LABEL = "OpenAI"
# Local servers (Ollama...) need no key, but the SDK refuses to start without one.
NO_KEY_PLACEHOLDER = "no-key"
# The base URLs of servers that refused stream_options (OpenAIAdapter.send), in this process: each
# refusal costs a request, once. Bounded, though base URLs are the few an administrator set.
_REFUSE_STREAM_OPTIONS: set[str] = set()
_REFUSE_STREAM_OPTIONS_MAX = 1000


def is_official_api(base_url: str) -> bool:
    host = urlsplit(base_url).hostname if base_url else "api.openai.com"
    return host == "api.openai.com"


def _finish_reason(reason: str | None) -> str:
    if reason == "length":
        return "length"
    # The provider's content filter cut the reply (OpenAI, Azure OpenAI): it is not complete,
    # and the person must be told so.
    if reason == "content_filter":
        return "filtered"
    return "stop"  # stop, tool_calls, function_call, or a server's own name: ended by the model


class OpenAIAdapter(_common.SDKAdapter):
    provider = "openai"
    sdk_name = "openai"
    label = PROVIDER_LABEL

    def client(
        self, key: KeyLease, *, http_client: httpx2.AsyncClient, timeouts: _common.Timeouts | None = None
    ) -> openai.AsyncOpenAI:
        """An SDK client for this key over the loop's shared HTTP client (_common.shared_http_client),
        without retries: key failover in the turn owns retrying."""
        timeouts = timeouts or _common.Timeouts.from_settings()
        return _common.sdk("openai").AsyncOpenAI(
            api_key=key.secret or NO_KEY_PLACEHOLDER,
            # Always explicit, so an OPENAI_BASE_URL in the environment never redirects a key.
            base_url=key.base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=timeouts.httpx(),
            http_client=http_client,
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
        usage: Usage | None = None
        finish: str | None = None
        send = self.send(sdk, client, self.request_params(request, key=key), base_url=key.base_url)
        async with self.streamed_response(sdk, deadlines, send) as response:
            chunks = response.http_response.aiter_bytes()
            decoder = _sse.SSEDecoder()
            texts = _common.TextDeltas()
            thoughts = _common.TextDeltas()
            done = False
            # Once the finish reason came, the reply is complete: what may follow (the usage
            # chunk, [DONE]) is waited for until then, no longer (_common.FINISH_GRACE_SECONDS).
            ends_at: float | None = None
            while not done and (body := await _common.read_next(deadlines, chunks, ends_at)) is not None:
                for _name, data in decoder.feed(body):
                    if data.startswith(b"[DONE]"):
                        # The end, as the SDK reads it: no event after it is read.
                        done = True
                        break
                    chunk = _common.json_object(data, provider=PROVIDER_LABEL, after_output=deadlines.got_output)
                    if chunk.get("error"):
                        raise self.stream_error(chunk["error"], after_output=deadlines.got_output)
                    if chunk.get("object") == "error":  # the bare form (servers derived from older vLLM)
                        raise self.stream_error(chunk, after_output=deadlines.got_output)
                    text, thought, reason, chunk_usage = self.chunk_parts(chunk, after_output=deadlines.got_output)
                    if thought and (thought := thoughts.feed(thought)):
                        deadlines.got_output = True
                        yield ReasoningDelta(thought)
                    text = texts.feed(text) if text else text
                    if text:
                        deadlines.got_output = True
                        yield TextDelta(text)
                    if reason:
                        finish = _finish_reason(reason)
                        deadlines.got_output = True
                        ends_at = ends_at or _common.finish_grace_end()
                    if chunk_usage is not None:
                        usage = chunk_usage
            if done:
                await _common.drain(chunks)
                # [DONE] is the stream's end: a server whose chunks all say finish_reason null
                # (some proxies do) has answered in full.
                finish = finish or "stop"
        if finish is None:
            # The body ended without [DONE] or a finish reason: the connection was closed early.
            raise _common.stream_cut(provider=PROVIDER_LABEL, after_output=deadlines.got_output)
        if tail := texts.end():
            yield TextDelta(tail)
        if usage is not None:
            yield usage
        yield Finish(finish)  # type: ignore[arg-type]

    @staticmethod
    async def send(sdk: ModuleType, client: openai.AsyncOpenAI, params: dict[str, Any], *, base_url: str) -> Any:
        """Send the streamed request and return the SDK's response, its body unread. It asks for the
        usage (stream_options) unless the server refused that before: vLLM before 0.5 and some
        other servers answer a field they do not know with a 400 (422 at Mistral), and must still
        answer, the turn counting the tokens itself. The refusal costs nothing and no tokens; it is
        sent once per server and process, not once per call."""
        create = client.chat.completions.with_streaming_response.create
        if base_url not in _REFUSE_STREAM_OPTIONS:
            try:
                return await create(**params, stream=True, stream_options={"include_usage": True}).__aenter__()
            except sdk.APIStatusError as exc:
                if exc.status_code not in (400, 422) or "stream_options" not in f"{exc.param} {exc.body}":
                    raise
            if len(_REFUSE_STREAM_OPTIONS) < _REFUSE_STREAM_OPTIONS_MAX:
                _REFUSE_STREAM_OPTIONS.add(base_url)
        return await create(**params, stream=True).__aenter__()

    @staticmethod
    def chunk_parts(chunk: dict[str, Any], *, after_output: bool) -> tuple[str, str, str | None, Usage | None]:
        """(text, thinking, finish reason, usage) of one chat.completion.chunk; malformed() if it
        is not one."""
        try:
            text = thought = ""
            reason = None
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta")
                if delta:
                    text += delta.get("content") or ""
                    # One name or the other (a proxy may send both, the same text twice).
                    thinking = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(thinking, str):
                        thought += thinking
                if choice.get("finish_reason"):
                    reason = str(choice["finish_reason"])
            usage = None
            counts = chunk.get("usage")
            if counts:
                details = counts.get("prompt_tokens_details") or {}
                usage = Usage(
                    input_tokens=_common.token_count(counts.get("prompt_tokens")),
                    output_tokens=_common.token_count(counts.get("completion_tokens")),
                    cached_tokens=_common.token_count(details.get("cached_tokens")),
                )
        except (AttributeError, TypeError):  # a list where an object belongs, a number for text...
            raise _common.malformed(provider=PROVIDER_LABEL, after_output=after_output) from None
        return text, thought, reason, usage

    @staticmethod
    def stream_error(error: object, *, after_output: bool) -> ProviderError:
        """The ProviderError for an `{"error": {...}}` object sent after the stream began."""
        body = error if isinstance(error, dict) else {}
        return _common.status_error(
            provider=PROVIDER_LABEL,
            status=200,
            error_type=body.get("type") or "server_error",
            code=body.get("code"),
            after_output=after_output,
        )

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
