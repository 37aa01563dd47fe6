"""A local fake LLM provider that speaks the real OpenAI and Anthropic wire protocols.

The official SDKs talk to it unchanged (only their base URL points here), so tests exercise the
same HTTP, SSE parsing and error classes production does. Behaviour is scripted per API key (the
`Authorization: Bearer` or `x-api-key` header): answer at a pace, fail with a status, cut the stream,
hang. Every request is recorded (key, model, messages, max tokens...) for tests to assert on.

    fake = FakeProvider().start()
    fake.script("sk-slow", Script(text="hi there", pace_ms=50))
    fake.script("sk-bad", Script(mode="error", status=401))
    ... AsyncOpenAI(base_url=fake.openai_base_url, api_key="sk-slow") ...
    fake.stop()
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Mode = Literal["ok", "error", "cut", "hang", "stream_error", "refusal", "raw", "drop"]


@dataclass
class Script:
    """What the fake answers for one key.

    mode:
      ok            answer `text` (streamed word by word every `pace_ms` when the client streams)
      error         answer `status` with the provider's error body (`error_type`, `message`, `code`)
      cut           stream `cut_after` deltas, then drop the connection without the end events
      hang          accept the request and never answer
      stream_error  stream `cut_after` deltas, then send the provider's in-stream error event
                    (of type `error_type` if set)
      raw           answer 200 with a streamed body of exactly the bytes in `raw`, one write each
                    every `pace_ms` (odd line ends, events split across writes, malformed data...)
      drop          close the connection without answering, as a crashing proxy does
      refusal       stream `cut_after` deltas, then end the reply as the provider's safety filter
                    does: Anthropic's stop_reason "refusal" (Claude 4 streaming classifiers),
                    OpenAI's finish_reason "content_filter"
    """

    mode: Mode = "ok"
    text: str = "Hello from the fake provider."
    pace_ms: float = 0
    first_delay_ms: float = 0  # before the response headers, as a slow model's queue would
    status: int = 400
    message: str = ""
    error_type: str = ""
    code: str | None = None
    retry_after: str | None = None  # sent as the Retry-After header
    cut_after: int = 2
    # Usage reported; None means counted (one token per word of input, one per delta of output).
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    raw: list[bytes] = field(default_factory=list)
    # OpenAI-compatible: thinking streamed before the answer, word by word, as the reasoning
    # parsers of vLLM and llama.cpp and DeepSeek's API send it: in `delta.reasoning_content`
    # (newer vLLM and Ollama name it `reasoning`), counted in completion_tokens like the answer.
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"
    # OpenAI-compatible: False is a server that sends no usage in a stream, whatever
    # stream_options asks (older Ollama, LM Studio and llama.cpp builds).
    reports_usage: bool = True
    # OpenAI-compatible: False is a server whose chunks all say finish_reason null, ending the
    # stream with `data: [DONE]` alone (some Gemini and other proxies).
    sends_finish_reason: bool = True
    # OpenAI-compatible: True is a server that refuses a request carrying `stream_options` with
    # a 400, as vLLM before 0.5 (its request models forbid unknown fields) did.
    refuses_stream_options: bool = False
    # True is a server (or a proxy in front of one) that sends the reply's last events and then
    # keeps the connection open without the end of the stream until the client goes away, as some
    # proxies that buffer the end of a body do: OpenAI's finish reason and usage without
    # `data: [DONE]`, Anthropic's message_delta (stop reason, usage) without message_stop.
    stalls_before_done: bool = False
    # The models this key's server serves (its /v1/models list); None: any model asked for. Any
    # other model is answered with the provider's 404 (OpenAI's model_not_found, Anthropic's
    # not_found_error), as a server that never had the model, or retired it, does.
    models: list[str] | None = None

    @classmethod
    def context_too_long(cls) -> Script:
        """The 400 each provider sends when the prompt does not fit the model's window."""
        return cls(mode="error", status=400, code="context_length_exceeded")


@dataclass
class RecordedRequest:
    api: Literal["openai", "anthropic"]
    path: str
    key: str
    model: str | None
    messages: list[dict]
    system: Any
    max_tokens: int | None
    max_completion_tokens: int | None
    temperature: float | None
    stream: bool
    stream_options: dict | None
    body: dict = field(repr=False)
    client_port: int | None = None  # the client's end of the connection: tells a reused one
    received_at: float = field(default_factory=time.time)


def _words(text: str) -> list[str]:
    """Split into deltas that join back to exactly `text`."""
    parts = re.findall(r"\s*\S+", text)
    if parts:
        parts[-1] += text[len("".join(parts)) :]
    return parts or ([text] if text else [])


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(_content_words(block.get("text", "")) for block in content if isinstance(block, dict))
    return 0


@dataclass
class OpenAIAnswer:
    """One scripted chat completion: its words, finish reason, usage and ids, and its chunks as
    the streaming API encodes them (bench/chat_fake.py writes the same bytes its own way)."""

    model: str
    deltas: list[str]
    finish: str
    thinking: list[str]  # reasoning deltas, streamed before `deltas`
    usage: dict[str, Any]
    completion_id: str
    created: int
    include_usage: bool  # stream_options.include_usage: every chunk carries "usage" (null but the last)

    def chunk(self, delta: dict, finish_reason: str | None = None, *, choices: bool = True, usage: dict | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}] if choices else [],
        }
        if self.include_usage or usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n".encode()


class FakeProvider:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, default: Script | None = None) -> None:
        self.host = host
        self.port = port
        self.default = default or Script()
        self._scripts: dict[str, Script] = {}
        self._requests: list[RecordedRequest] = []
        self._disconnected: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # --- scripting and inspection (any thread) ---------------------------------------------

    def script(self, key: str, script: Script | None = None, **fields: Any) -> Script:
        script = script or Script(**fields)
        with self._lock:
            self._scripts[key] = script
        return script

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._requests.clear()
            self._disconnected.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, key: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.key == key]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url  # the Anthropic SDK appends /v1/messages itself

    def _script_for(self, key: str) -> Script:
        with self._lock:
            return self._scripts.get(key, self.default)

    # --- lifecycle ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._noting_disconnects(self._openai_chat))
        app.router.add_post("/v1/messages", self._noting_disconnects(self._anthropic_messages))
        app.router.add_get("/v1/models", self._models)
        return app

    def _noting_disconnects(self, handler):
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ConnectionResetError:
                # The client went away mid-answer (a stopped reply): tests can see it did.
                with self._lock:
                    self._disconnected.append(self._key(request))
                raise

        return handle

    @property
    def disconnected(self) -> list[str]:
        """Keys whose client closed the connection while the answer was still streaming."""
        with self._lock:
            return list(self._disconnected)

    def start(self) -> FakeProvider:
        """Serve on a background thread with its own event loop; returns once listening."""
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind((self.host, 0))
                self.port = probe.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.app(), shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._stopping is not None
            self._stopping.set()  # hanging handlers give up
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    async def serve_forever(self) -> None:
        """Standalone mode: serve in the current event loop until cancelled."""
        await self._serve()
        print(f"fake provider on {self.base_url} (OpenAI: {self.openai_base_url}, Anthropic: {self.anthropic_base_url})")
        await asyncio.Event().wait()

    # --- shared helpers ---------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return body if isinstance(body, dict) else {}

    def _record(self, api: Literal["openai", "anthropic"], request: web.Request, key: str, body: dict) -> None:
        recorded = RecordedRequest(
            api=api,
            path=request.path,
            key=key,
            model=body.get("model"),
            messages=list(body.get("messages") or []),
            system=body.get("system"),
            max_tokens=body.get("max_tokens"),
            max_completion_tokens=body.get("max_completion_tokens"),
            temperature=body.get("temperature"),
            stream=bool(body.get("stream")),
            stream_options=body.get("stream_options"),
            body=body,
            client_port=(request.transport.get_extra_info("peername") or (None, None))[1] if request.transport else None,
        )
        with self._lock:
            self._requests.append(recorded)

    async def _before_answer(self, script: Script, request: web.Request) -> None:
        if script.first_delay_ms:
            await asyncio.sleep(script.first_delay_ms / 1000)
        if script.mode == "hang":
            assert self._stopping is not None
            await self._stopping.wait()
            raise web.HTTPServiceUnavailable()
        if script.mode == "drop":
            self._cut(request)
            raise web.HTTPServiceUnavailable()  # never sent: the connection is gone

    async def _raw(self, request: web.Request, script: Script) -> web.StreamResponse:
        response = await self._sse(request)
        for part in script.raw:
            await self._pace(script)
            await response.write(part)
        await response.write_eof()
        return response

    @staticmethod
    def _plan(script: Script, max_tokens: int | None) -> tuple[list[str], str]:
        deltas = _words(script.text)
        if max_tokens is not None and len(deltas) > max_tokens:
            return deltas[:max_tokens], "length"
        return deltas, "stop"

    @staticmethod
    def _usage(script: Script, body: dict, deltas: list[str]) -> tuple[int, int, int]:
        if script.input_tokens is not None:
            input_tokens = script.input_tokens
        else:
            input_tokens = sum(3 + _content_words(m.get("content")) for m in body.get("messages") or [])
            input_tokens += _content_words(body.get("system"))
        output_tokens = script.output_tokens if script.output_tokens is not None else len(deltas)
        return input_tokens, output_tokens, script.cached_tokens

    @staticmethod
    async def _sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    @staticmethod
    def _cut(request: web.Request) -> None:
        # Drop the TCP connection mid-body: the client sees an incomplete chunked response,
        # exactly what a provider crash or a proxy timeout looks like.
        if request.transport is not None:
            request.transport.close()

    async def _hold_open(self, request: web.Request) -> None:
        """Keep the response open, sending nothing, until the client closes it or the fake stops."""
        assert self._stopping is not None
        while not self._stopping.is_set() and request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)

    async def _pace(self, script: Script) -> None:
        if script.pace_ms:
            await asyncio.sleep(script.pace_ms / 1000)

    # --- OpenAI -------------------------------------------------------------------------------

    @staticmethod
    def _key(request: web.Request) -> str:
        """The API key: Anthropic's `x-api-key`, else `Authorization: Bearer` (OpenAI, and what the
        anthropic 2.x SDK sends)."""
        if request.headers.get("x-api-key"):
            return request.headers["x-api-key"]
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else ""

    def _openai_answer(self, script: Script, body: dict) -> OpenAIAnswer:
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        # The thinking comes first and takes its share of max_tokens, as with a real reasoning model.
        thinking = _words(script.reasoning)
        if max_tokens is not None and len(thinking) >= max_tokens:
            thinking, deltas, finish = thinking[:max_tokens], [], "length"
        else:
            deltas, finish = self._plan(script, None if max_tokens is None else max_tokens - len(thinking))
        input_tokens, output_tokens, cached = self._usage(script, body, deltas)
        if script.output_tokens is None:
            output_tokens += len(thinking)
        return OpenAIAnswer(
            model=body.get("model") or "unknown",
            deltas=deltas,
            finish=finish,
            thinking=thinking,
            usage={
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": len(thinking)},
            },
            completion_id=f"chatcmpl-{uuid.uuid4().hex[:16]}",
            created=int(time.time()),
            include_usage=script.reports_usage and bool((body.get("stream_options") or {}).get("include_usage")),
        )

    def _openai_error(self, script: Script) -> web.Response:
        defaults = {
            400: ("invalid_request_error", "Invalid request."),
            401: ("invalid_request_error", "Incorrect API key provided: sk-****cret."),
            403: ("permission_denied", "You are not allowed to use this model."),
            404: ("invalid_request_error", "The model does not exist."),
            429: ("rate_limit_exceeded", "Rate limit reached for requests."),
        }
        error_type, message = defaults.get(script.status, ("server_error", "The server had an error."))
        if script.code == "context_length_exceeded" and not script.message:
            message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
        body = {
            "error": {
                "message": script.message or message,
                "type": script.error_type or error_type,
                "param": None,
                "code": script.code,
            }
        }
        headers = {"x-request-id": f"req_{uuid.uuid4().hex[:12]}"}
        if script.retry_after is not None:
            headers["Retry-After"] = script.retry_after
        return web.json_response(body, status=script.status, headers=headers)

    @staticmethod
    def _vllm_extra_forbidden(name: str, value: Any) -> web.Response:
        """vLLM 0.4's 400 for a request field it does not know: its own error object, not nested
        under "error", with pydantic's complaint as the message."""
        complaint = [{"type": "extra_forbidden", "loc": ("body", name), "msg": "Extra inputs are not permitted", "input": value}]
        body = {"object": "error", "message": str(complaint), "type": "BadRequestError", "param": None, "code": 400}
        return web.json_response(body, status=400)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        body = await self._body(request)
        self._record("openai", request, key, body)
        if not key:
            return self._openai_error(Script(mode="error", status=401, message="You didn't provide an API key."))
        script = self._script_for(key)
        await self._before_answer(script, request)
        if script.mode == "error":
            return self._openai_error(script)
        if script.models is not None and body.get("model") not in script.models:
            return self._openai_error(
                Script(
                    mode="error",
                    status=404,
                    code="model_not_found",
                    message=f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                )
            )
        if script.refuses_stream_options and "stream_options" in body:
            return self._vllm_extra_forbidden("stream_options", body["stream_options"])
        if script.mode == "raw":
            return await self._raw(request, script)

        answer = self._openai_answer(script, body)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": answer.completion_id,
                    "object": "chat.completion",
                    "created": answer.created,
                    "model": answer.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(answer.deltas),
                                "refusal": None,
                                **({script.reasoning_field: "".join(answer.thinking)} if answer.thinking else {}),
                            },
                            "finish_reason": answer.finish,
                            "logprobs": None,
                        }
                    ],
                    "usage": answer.usage,
                }
            )

        response = await self._sse(request)
        await response.write(answer.chunk({"role": "assistant", "content": ""}))
        for thought in answer.thinking:
            await self._pace(script)
            await response.write(answer.chunk({script.reasoning_field: thought}))
        for index, text in enumerate(answer.deltas):
            if script.mode in ("cut", "stream_error", "refusal") and index >= script.cut_after:
                break
            await self._pace(script)
            await response.write(answer.chunk({"content": text}))
        if script.mode == "cut":
            self._cut(request)
            return response
        if script.mode == "stream_error":
            error = {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": script.error_type or "server_error",
                }
            }
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
            await response.write_eof()
            return response
        if script.sends_finish_reason:
            await response.write(answer.chunk({}, "content_filter" if script.mode == "refusal" else answer.finish))
        if answer.include_usage:
            await response.write(answer.chunk({}, choices=False, usage=answer.usage))
        if script.stalls_before_done:
            await self._hold_open(request)
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # --- Anthropic ---------------------------------------------------------------------------

    def _anthropic_error(self, script: Script) -> web.Response:
        defaults = {
            400: ("invalid_request_error", "Invalid request."),
            401: ("authentication_error", "invalid x-api-key"),
            403: ("permission_error", "Your API key does not have permission to use the specified resource."),
            404: ("not_found_error", "model: not found"),
            413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
            429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
            529: ("overloaded_error", "Overloaded"),
        }
        error_type, message = defaults.get(script.status, ("api_error", "Internal server error"))
        if script.code == "context_length_exceeded" and not script.message:
            message = "prompt is too long: 210000 tokens > 200000 maximum"
        body = {"type": "error", "error": {"type": script.error_type or error_type, "message": script.message or message}}
        headers = {"request-id": f"req_{uuid.uuid4().hex[:12]}"}
        if script.retry_after is not None:
            headers["retry-after"] = script.retry_after
        return web.json_response(body, status=script.status, headers=headers)

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        body = await self._body(request)
        self._record("anthropic", request, key, body)
        if not key:
            return self._anthropic_error(Script(mode="error", status=401))
        script = self._script_for(key)
        await self._before_answer(script, request)
        if script.mode == "error":
            return self._anthropic_error(script)
        if script.models is not None and body.get("model") not in script.models:
            return self._anthropic_error(Script(mode="error", status=404, message=f"model: {body.get('model')}"))
        if script.mode == "raw":
            return await self._raw(request, script)

        model = body.get("model") or "unknown"
        deltas, finish = self._plan(script, body.get("max_tokens"))
        stop_reason = "max_tokens" if finish == "length" else "end_turn"
        input_tokens, output_tokens, cached = self._usage(script, body, deltas)
        message_id = f"msg_{uuid.uuid4().hex[:16]}"

        if not body.get("stream"):
            return web.json_response(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "".join(deltas)}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cache_read_input_tokens": cached,
                        "cache_creation_input_tokens": 0,
                    },
                }
            )

        def event(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        response = await self._sse(request)
        await response.write(
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": input_tokens,
                            "output_tokens": 1,
                            "cache_read_input_tokens": cached,
                            "cache_creation_input_tokens": 0,
                        },
                    },
                },
            )
        )
        await response.write(
            event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        )
        await response.write(event("ping", {"type": "ping"}))
        if script.mode == "refusal":
            deltas = deltas[: script.cut_after]
            stop_reason = "refusal"
            if script.output_tokens is None:
                output_tokens = len(deltas)
        for index, text in enumerate(deltas):
            if script.mode in ("cut", "stream_error") and index >= script.cut_after:
                break
            await self._pace(script)
            await response.write(
                event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                )
            )
        if script.mode == "cut":
            self._cut(request)
            return response
        if script.mode == "stream_error":
            error = {"type": script.error_type or "overloaded_error", "message": script.message or "Overloaded"}
            await response.write(event("error", {"type": "error", "error": error}))
            await response.write_eof()
            return response
        await response.write(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        await response.write(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason,
                        "stop_sequence": None,
                        **(
                            {"stop_details": {"type": "refusal", "category": "cyber", "explanation": "This request was declined."}}
                            if stop_reason == "refusal"
                            else {}
                        ),
                    },
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        if script.stalls_before_done:
            await self._hold_open(request)
            return response
        await response.write(event("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response

    # --- Models list (both APIs) -------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        anthropic = "x-api-key" in request.headers or "anthropic-version" in request.headers
        key = self._key(request)
        self._record("anthropic" if anthropic else "openai", request, key, {})
        script = self._script_for(key) if key else Script(mode="error", status=401)
        await self._before_answer(script, request)
        if script.mode == "error":
            return self._anthropic_error(script) if anthropic else self._openai_error(script)
        if anthropic:
            data = [
                {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
                for name in script.models or ("claude-sonnet-4-6", "claude-haiku-4-5")
            ]
            return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in script.models or ("gpt-4o-mini", "gpt-4o")]
        return web.json_response({"object": "list", "data": data})

