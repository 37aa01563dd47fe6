"""Both SDK adapters (openai, anthropic) against the local fake provider: the real SDKs, real HTTP,
real SSE. Each behaviour is checked for both providers."""

import asyncio
import json
import logging
import uuid

import pytest

from billing.keys import KeyLease
from conversations.llm import get_adapter
from conversations.llm.base import ChatMessage, ChatRequest, ErrorKind, Finish, ProviderError, TextDelta, Usage
from tests.fakeprovider import Script

PROVIDERS = ["openai", "anthropic"]
SECRET_USER_TEXT = "my private words 7f3a"


def lease(fake, provider: str, secret: str) -> KeyLease:
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    return KeyLease(id=uuid.uuid4(), name="test key", provider=provider, base_url=base_url, secret=secret)


def chat_request(provider: str, *, max_tokens: int = 200, temperature=None) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5",
        messages=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content=SECRET_USER_TEXT),
        ],
        max_tokens=max_tokens,
        temperature=temperature,
    )


async def collect(provider: str, key: KeyLease, request: ChatRequest | None = None):
    """(events, error): everything the adapter yielded, then the ProviderError if one was raised."""
    events = []
    try:
        async for event in get_adapter(provider).stream(request or chat_request(provider), key=key):
            events.append(event)
    except ProviderError as exc:
        return events, exc
    return events, None


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def assert_safe(error: ProviderError, secret: str) -> None:
    shown = f"{error} {error.message} {error!r} {error.extra}"
    assert secret not in shown
    assert SECRET_USER_TEXT not in shown


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_text_then_usage_then_finish(fake_provider, provider):
    fake_provider.script("sk-good-1", Script(text="Hello there, friend.", pace_ms=1, input_tokens=21, cached_tokens=5))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-good-1"))

    assert error is None
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 3  # streamed word by word, not in one piece
    assert text_of(events) == "Hello there, friend."
    assert isinstance(events[-2], Usage) and isinstance(events[-1], Finish)
    assert events[-1].reason == "stop"
    usage = events[-2]
    assert usage.output_tokens == 3
    assert usage.cached_tokens == 5
    # OpenAI's prompt_tokens includes the cached ones; Anthropic reports them apart and the adapter adds them.
    assert usage.input_tokens == (21 if provider == "openai" else 26)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_sends_model_messages_and_max_tokens_with_the_keys_secret(fake_provider, provider):
    fake_provider.script("sk-good-2", Script(text="ok"))

    await collect(provider, lease(fake_provider, provider, "sk-good-2"), chat_request(provider, max_tokens=77))

    [sent] = fake_provider.requests_for("sk-good-2")
    assert sent.stream is True
    if provider == "openai":
        assert sent.model == "gpt-4o-mini"
        assert sent.messages == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": SECRET_USER_TEXT},
        ]
        assert sent.stream_options == {"include_usage": True}
        # A compatible server (not api.openai.com) gets the classic max_tokens name.
        assert sent.max_tokens == 77 and sent.max_completion_tokens is None
    else:
        assert sent.model == "claude-haiku-4-5"
        assert sent.system == "You are terse."  # lifted out of the message list
        assert sent.messages == [{"role": "user", "content": SECRET_USER_TEXT}]
        assert sent.max_tokens == 77
    assert sent.temperature is None  # not sent unless the conversation sets one


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_temperature_is_sent_when_set(fake_provider, provider):
    fake_provider.script("sk-temp", Script(text="ok"))

    await collect(provider, lease(fake_provider, provider, "sk-temp"), chat_request(provider, temperature=0.3))

    [sent] = fake_provider.requests_for("sk-temp")
    assert sent.temperature == pytest.approx(0.3)


async def test_a_temperature_above_anthropics_range_is_sent_as_its_highest(fake_provider):
    # A conversation may hold up to 2 (OpenAI's range); Anthropic refuses more than 1 with a 400.
    fake_provider.script("sk-hot", Script(text="ok"))
    await collect("anthropic", lease(fake_provider, "anthropic", "sk-hot"), chat_request("anthropic", temperature=1.7))
    [sent] = fake_provider.requests_for("sk-hot")
    assert sent.temperature == pytest.approx(1.0)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_max_tokens_reached_finishes_with_length(fake_provider, provider):
    fake_provider.script("sk-long", Script(text="one two three four five six"))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-long"), chat_request(provider, max_tokens=2))

    assert error is None
    assert text_of(events) == "one two"
    assert events[-1] == Finish("length")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_generic_400_is_bad_request(fake_provider, provider):
    fake_provider.script("sk-400", Script(mode="error", status=400, message=f"bad value near '{SECRET_USER_TEXT}'"))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-400"))

    assert events == []
    assert error.kind == ErrorKind.BAD_REQUEST
    assert error.status == 400
    assert error.after_output is False
    assert_safe(error, "sk-400")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_400_naming_the_context_length_is_context_too_long(fake_provider, provider):
    fake_provider.script("sk-ctx", Script.context_too_long())

    _, error = await collect(provider, lease(fake_provider, provider, "sk-ctx"))

    assert error.kind == ErrorKind.CONTEXT_TOO_LONG
    assert error.status == 400


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_401_is_auth_and_never_shows_the_secret(fake_provider, provider):
    secret = "sk-live-supersecret-0000"
    # OpenAI's real 401 quotes part of the key; the adapter must not pass that on.
    fake_provider.script(secret, Script(mode="error", status=401, message=f"Incorrect API key provided: {secret}"))

    _, error = await collect(provider, lease(fake_provider, provider, secret))

    assert error.kind == ErrorKind.AUTH
    assert error.status == 401
    assert_safe(error, secret)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_403_is_auth(fake_provider, provider):
    fake_provider.script("sk-403", Script(mode="error", status=403))

    _, error = await collect(provider, lease(fake_provider, provider, "sk-403"))

    assert error.kind == ErrorKind.AUTH


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_429_is_rate_limited_with_retry_after(fake_provider, provider):
    fake_provider.script("sk-429", Script(mode="error", status=429, retry_after="17"))

    _, error = await collect(provider, lease(fake_provider, provider, "sk-429"))

    assert error.kind == ErrorKind.RATE_LIMITED
    assert error.retry_after == 17.0
    # max_retries=0: the SDK did not retry on its own; key failover in the turn does.
    assert len(fake_provider.requests_for("sk-429")) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_503_is_unavailable_and_not_retried_by_the_sdk(fake_provider, provider):
    fake_provider.script("sk-503", Script(mode="error", status=503))

    _, error = await collect(provider, lease(fake_provider, provider, "sk-503"))

    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.status == 503
    assert len(fake_provider.requests_for("sk-503")) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_cut_midway_keeps_the_deltas_then_fails_unavailable(fake_provider, provider):
    fake_provider.script("sk-cut", Script(mode="cut", text="alpha beta gamma delta epsilon", cut_after=3))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-cut"))

    assert text_of(events) == "alpha beta gamma"
    assert not any(isinstance(e, Finish) for e in events)
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_error_event_inside_the_stream_is_unavailable_after_output(fake_provider, provider):
    fake_provider.script("sk-mid", Script(mode="stream_error", text="alpha beta gamma delta", cut_after=2))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-mid"))

    assert text_of(events) == "alpha beta"
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_server_that_never_answers_times_out(fake_provider, provider, settings):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    fake_provider.script("sk-hang", Script(mode="hang"))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-hang"))

    assert events == []
    assert error.kind == ErrorKind.TIMEOUT
    assert error.after_output is False


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stall_after_the_first_tokens_hits_the_total_timeout(fake_provider, provider, settings):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 5
    # The first word comes at 0.2 s and the whole answer would take 3.2 s: the deadline falls
    # mid-stream with room on both sides on a loaded machine (0.4 s against a 0.1 s pace did not).
    settings.LLM_TOTAL_TIMEOUT = 1.0
    fake_provider.script("sk-slow", Script(text="a b c d e f g h i j k l m n o p", pace_ms=200))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-slow"))

    assert error.kind == ErrorKind.TIMEOUT
    assert error.after_output is True
    assert text_of(events)  # what arrived before the deadline was yielded


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_total_deadline_holds_while_reads_far_from_it_skip_their_timer(fake_provider, provider, settings):
    """Reads more than the transport's read timeout before the deadline are not wrapped in a
    timeout scope (Deadlines.read): the deadline must still end the call on time."""
    import time

    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3  # also each read's bound
    settings.LLM_TOTAL_TIMEOUT = 1.0
    fake_provider.script("sk-steady", Script(text=" ".join(["w"] * 40), pace_ms=100))

    started = time.monotonic()
    events, error = await collect(provider, lease(fake_provider, provider, "sk-steady"))
    elapsed = time.monotonic() - started

    assert error.kind == ErrorKind.TIMEOUT and error.after_output is True
    assert 5 <= len(text_of(events).split()) < 40
    assert 0.9 <= elapsed < 1.5


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_connection_refused_is_unavailable(provider):
    key = KeyLease(id=uuid.uuid4(), name="gone", provider=provider, base_url="http://127.0.0.1:9/v1", secret="sk-x")

    _, error = await collect(provider, key)

    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is False


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_key_is_auth(provider):
    with pytest.raises(ProviderError) as caught:
        async for _ in get_adapter(provider).stream(chat_request(provider), key=None):
            pass
    assert caught.value.kind == ErrorKind.AUTH


async def test_official_openai_api_gets_max_completion_tokens():
    from conversations.llm.openai_adapter import OpenAIAdapter

    official = KeyLease(id=uuid.uuid4(), name="o", provider="openai", base_url="", secret="sk-x")
    local = KeyLease(id=uuid.uuid4(), name="l", provider="openai", base_url="http://localhost:11434/v1", secret="")

    official_params = OpenAIAdapter().request_params(chat_request("openai", max_tokens=50), key=official)
    local_params = OpenAIAdapter().request_params(chat_request("openai", max_tokens=50), key=local)

    assert official_params["max_completion_tokens"] == 50 and "max_tokens" not in official_params
    assert local_params["max_tokens"] == 50 and "max_completion_tokens" not in local_params


async def test_openai_compatible_server_without_a_key_still_works(fake_provider):
    # Ollama and friends need no key; the SDK refuses an empty one, so the adapter sends a placeholder.
    events, error = await collect("openai", lease(fake_provider, "openai", ""))

    assert error is None
    assert text_of(events) == "Hello from the fake provider."


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_closing_the_stream_midway_hangs_up_on_the_provider(fake_provider, provider):
    # What the turn does when the user presses stop: it closes the adapter's iterator.
    fake_provider.script("sk-stop", Script(text=" ".join(["word"] * 200), pace_ms=5))
    fake_provider.script("sk-after", Script(text="still fine"))
    stream = get_adapter(provider).stream(chat_request(provider), key=lease(fake_provider, provider, "sk-stop"))

    first = await stream.__anext__()
    while isinstance(first, Usage):  # Anthropic's input count, from message_start
        first = await stream.__anext__()
    await stream.aclose()
    for _ in range(200):  # the fake notices on its next write
        if fake_provider.disconnected:
            break
        await asyncio.sleep(0.01)

    assert first == TextDelta("word")
    assert fake_provider.disconnected == ["sk-stop"]
    # The shared connection pool is unharmed: the next call works.
    events, error = await collect(provider, lease(fake_provider, provider, "sk-after"))
    assert error is None and text_of(events) == "still fine"


async def test_anthropic_leaves_out_empty_messages_it_would_refuse(fake_provider):
    fake_provider.script("sk-empty", Script(text="ok"))
    request = ChatRequest(
        model="claude-haiku-4-5",
        messages=[
            ChatMessage(role="user", content="first"),
            ChatMessage(role="assistant", content=""),
            ChatMessage(role="user", content="second"),
        ],
        max_tokens=10,
    )

    _, error = await collect("anthropic", lease(fake_provider, "anthropic", "sk-empty"), request)

    assert error is None
    [sent] = fake_provider.requests_for("sk-empty")
    assert sent.messages == [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    assert sent.system is None


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_debug_logging_never_records_the_secret_or_the_text(fake_provider, provider, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "sk-debug-secret-1234"
    fake_provider.script(secret, Script(text="a reply"))

    events, error = await collect(provider, lease(fake_provider, provider, secret))

    assert error is None and text_of(events) == "a reply"
    assert secret not in caplog.text
    assert SECRET_USER_TEXT not in caplog.text


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_ping_lists_models_for_a_good_key_and_maps_a_bad_one(fake_provider, provider):
    fake_provider.script("sk-revoked", Script(mode="error", status=401))
    adapter = get_adapter(provider)

    names = await adapter.ping(key=lease(fake_provider, provider, "sk-fine"))
    with pytest.raises(ProviderError) as caught:
        await adapter.ping(key=lease(fake_provider, provider, "sk-revoked"))

    assert names
    assert caught.value.kind == ErrorKind.AUTH
    assert_safe(caught.value, "sk-revoked")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_whole_answer_is_its_text_then_usage_then_finish(fake_provider, provider):
    fake_provider.script("sk-title", Script(text="Foxes and dogs", input_tokens=9))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-title"))

    assert error is None
    assert text_of(events) == "Foxes and dogs"
    usage = [e for e in events if isinstance(e, Usage)][-1]  # Anthropic's early count comes first
    assert (usage.input_tokens, usage.output_tokens, usage.final) == (9, 3, True)
    assert events[-1] == Finish("stop")


# --- The streamed body, read by the adapters themselves ------------------------------------------
# Raw bodies (Script mode "raw") hold what the fake's scripted modes do not: odd line ends, events
# split across writes, malformed data, usage in other places.


def openai_chunk(content=None, finish=None, **extra) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps({**chunk, **extra}).encode() + b"\n\n"


def anthropic_event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


ANTHROPIC_START = anthropic_event(
    "message_start",
    {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 10, "output_tokens": 1}}},
)


def anthropic_text(text: str) -> bytes:
    return anthropic_event(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    )


def anthropic_end(stop_reason: str = "end_turn", **usage) -> bytes:
    delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 2, **usage}}
    return anthropic_event("message_delta", delta) + anthropic_event("message_stop", {"type": "message_stop"})


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_json_in_a_data_line_is_a_clear_error(fake_provider, provider):
    if provider == "openai":
        raw = [openai_chunk("Hi"), b"data: {not json\n\n", openai_chunk(finish="stop"), b"data: [DONE]\n\n"]
    else:
        raw = [ANTHROPIC_START, anthropic_text("Hi"), b"event: content_block_delta\ndata: {not json\n\n", anthropic_end()]
    fake_provider.script("sk-garbled", Script(mode="raw", raw=raw))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-garbled"))

    assert text_of(events) == "Hi"
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is True
    assert "could not be read" in error.message
    assert "not json" not in str(error)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_json_of_the_wrong_shape_is_a_clear_error(fake_provider, provider):
    if provider == "openai":
        raw = [b'data: {"choices": [{"delta": {"content": 42}}]}\n\n', openai_chunk(finish="stop")]
    else:
        raw = [ANTHROPIC_START, b'event: content_block_delta\ndata: {"delta": "text"}\n\n', anthropic_end()]
    fake_provider.script("sk-shape", Script(mode="raw", raw=raw))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-shape"))

    assert [e for e in events if not isinstance(e, Usage)] == []  # (Anthropic's input count comes first)
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is False
    assert "could not be read" in error.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_body_that_ends_cleanly_without_a_finish_is_a_cut(fake_provider, provider):
    # A whole, well-formed HTTP body that stops early: no finish reason (OpenAI), no message_stop
    # (Anthropic). Not the same failure as a connection cut mid-body (ClientPayloadError above).
    if provider == "openai":
        raw = [openai_chunk("alpha"), openai_chunk(" beta")]
    else:
        raw = [ANTHROPIC_START, anthropic_text("alpha"), anthropic_text(" beta")]
    fake_provider.script("sk-short", Script(mode="raw", raw=raw))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-short"))

    assert text_of(events) == "alpha beta"
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is True
    assert "ended before it was complete" in error.message


@pytest.mark.parametrize(
    "error",
    [
        # vLLM: the error object, then [DONE]. And the bare form of servers derived from older vLLM.
        {"error": {"object": "error", "message": "boom", "type": "InternalServerError", "param": None, "code": 500}},
        {"object": "error", "message": "boom", "type": "InternalServerError", "param": None, "code": 500},
    ],
)
async def test_openai_error_object_followed_by_done_is_an_error_not_an_end(fake_provider, error):
    raw = [openai_chunk("alpha"), b"data: " + json.dumps(error).encode() + b"\n\n", b"data: [DONE]\n\n"]
    fake_provider.script("sk-err-done", Script(mode="raw", raw=raw))

    events, error = await collect("openai", lease(fake_provider, "openai", "sk-err-done"))

    assert text_of(events) == "alpha"
    assert error.kind == ErrorKind.UNAVAILABLE and error.after_output is True


async def test_anthropic_a_body_ending_after_the_stop_reason_is_a_complete_reply(fake_provider):
    # message_delta carries the stop reason and the final output count: nothing of the reply can
    # come after it. A body that ends there (a proxy dropping the last event) lost nothing, as
    # an OpenAI body ending after its finish reason does not.
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}
    raw = [ANTHROPIC_START, anthropic_text("Hi"), anthropic_event("message_delta", delta)]
    fake_provider.script("sk-nostop", Script(mode="raw", raw=raw))

    events, error = await collect("anthropic", lease(fake_provider, "anthropic", "sk-nostop"))

    assert error is None
    assert text_of(events) == "Hi"
    assert events[-1] == Finish("stop") and events[-2].output_tokens == 1


async def test_anthropic_a_body_ending_before_the_stop_reason_is_a_cut(fake_provider):
    raw = [ANTHROPIC_START, anthropic_text("Hi"), anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})]
    fake_provider.script("sk-nodelta", Script(mode="raw", raw=raw))

    events, error = await collect("anthropic", lease(fake_provider, "anthropic", "sk-nodelta"))

    assert text_of(events) == "Hi"
    assert error.kind == ErrorKind.UNAVAILABLE and "ended before it was complete" in error.message


async def test_anthropic_a_server_that_stalls_after_its_stop_reason_ends_the_reply_without_waiting(fake_provider, settings):
    # message_delta arrived, then the connection stays open without message_stop: the reply is
    # complete, and ends after a short grace (_common.FINISH_GRACE_SECONDS), not as a timeout.
    settings.LLM_FIRST_TOKEN_TIMEOUT = 5.0
    fake_provider.script("sk-stall-end", Script(text="Hello there, friend.", input_tokens=21, stalls_before_done=True))

    started = asyncio.get_running_loop().time()
    events, error = await collect("anthropic", lease(fake_provider, "anthropic", "sk-stall-end"))
    elapsed = asyncio.get_running_loop().time() - started

    assert error is None
    assert text_of(events) == "Hello there, friend."
    assert events[-2:] == [Usage(input_tokens=21, output_tokens=3), Finish("stop")]
    assert elapsed < 3.0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_error_inside_the_stream_is_rate_limited(fake_provider, provider):
    error_type = "rate_limit_exceeded" if provider == "openai" else "rate_limit_error"
    fake_provider.script("sk-mid-429", Script(mode="stream_error", text="alpha beta gamma", cut_after=1, error_type=error_type))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-mid-429"))

    assert text_of(events) == "alpha"
    assert error.kind == ErrorKind.RATE_LIMITED
    assert error.status == 200
    assert error.extra["type"] == error_type
    assert error.after_output is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_crlf_line_ends_and_events_split_across_writes_are_read(fake_provider, provider):
    if provider == "openai":
        body = openai_chunk("Hello") + openai_chunk(" world") + openai_chunk(finish="length") + b"data: [DONE]\n\n"
    else:
        body = ANTHROPIC_START + anthropic_text("Hello") + anthropic_text(" world") + anthropic_end("max_tokens")
    body = body.replace(b"\n", b"\r\n")
    # Cut in the middle of lines, of a CRLF, and of a multi-byte character.
    body = body.replace(b"world", "wörld".encode())
    cuts = [7, body.index(b"\r\n") + 1, body.index("ö".encode()) + 1, len(body) - 3]
    raw = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    fake_provider.script("sk-crlf", Script(mode="raw", raw=raw, pace_ms=5))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-crlf"))

    assert error is None
    assert text_of(events) == "Hello wörld"
    assert events[-1] == Finish("length")


async def test_openai_usage_arrives_in_its_own_chunk_after_the_finish(fake_provider):
    usage = {"prompt_tokens": 30, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 12}}
    raw = [
        openai_chunk("Hi", usage=None),
        openai_chunk(finish="stop", usage=None),
        b"data: " + json.dumps({"id": "c1", "choices": [], "usage": usage}).encode() + b"\n\n",
        b"data: [DONE]\n\n",
        openai_chunk("never read"),  # after [DONE], as the SDK does, nothing is read
    ]
    fake_provider.script("sk-usage", Script(mode="raw", raw=raw))

    events, error = await collect("openai", lease(fake_provider, "openai", "sk-usage"))

    assert error is None
    assert events == [TextDelta("Hi"), Usage(input_tokens=30, output_tokens=2, cached_tokens=12), Finish("stop")]


async def test_openai_content_filter_is_a_filtered_finish_not_a_stop(fake_provider):
    # finish_reason "content_filter": the provider's filter ended the reply; it must not read as
    # complete. The text before it and the usage still come.
    fake_provider.script("sk-filter", Script(mode="refusal", text="alpha beta gamma", cut_after=2, input_tokens=9, output_tokens=2))

    events, error = await collect("openai", lease(fake_provider, "openai", "sk-filter"))

    assert error is None
    assert text_of(events) == "alpha beta"
    assert events[-2:] == [Usage(input_tokens=9, output_tokens=2), Finish("filtered")]


async def test_openai_stream_without_usage_still_finishes(fake_provider):
    # Some compatible servers ignore stream_options.include_usage: no Usage, the turn counts itself.
    raw = [openai_chunk("Hi"), openai_chunk(finish="stop"), b"data: [DONE]\n\n"]
    fake_provider.script("sk-nousage", Script(mode="raw", raw=raw))

    events, error = await collect("openai", lease(fake_provider, "openai", "sk-nousage"))

    assert error is None
    assert events == [TextDelta("Hi"), Finish("stop")]


async def test_anthropic_skips_pings_and_non_text_deltas_and_reads_cumulative_usage(fake_provider):
    thinking = {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}
    raw = [
        ANTHROPIC_START,
        b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
        b": a comment line\n\n",
        anthropic_event("content_block_delta", thinking),
        anthropic_event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {}}),
        anthropic_text("Answer"),
        anthropic_event("some_future_event", {"type": "some_future_event"}),
        # message_delta's counts are cumulative and, in newer API versions, include the input.
        anthropic_end("end_turn", input_tokens=40, cache_read_input_tokens=8, cache_creation_input_tokens=2),
    ]
    fake_provider.script("sk-ant-raw", Script(mode="raw", raw=raw))

    events, error = await collect("anthropic", lease(fake_provider, "anthropic", "sk-ant-raw"))

    assert error is None
    assert events == [
        Usage(input_tokens=10, output_tokens=1, final=False),  # message_start's count, yielded at once
        TextDelta("Answer"),
        Usage(input_tokens=50, output_tokens=2, cached_tokens=8),
        Finish("stop"),
    ]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_compatible_thinking_keeps_the_call_alive_and_is_kept_apart_from_the_answer(fake_provider, settings, field):
    # A reasoning model (vLLM's or llama.cpp's reasoning parser, DeepSeek) thinks for longer than
    # the first-token allowance before its answer starts: its thinking is the model answering.
    from conversations.llm.base import ReasoningDelta

    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    thinking = "Let me think about this step by step before I answer"
    fake_provider.script("sk-think", Script(text="가나다 answer.", reasoning=thinking, reasoning_field=field, pace_ms=60))

    events, error = await collect("openai", lease(fake_provider, "openai", "sk-think"))

    assert error is None
    assert text_of(events) == "가나다 answer."  # the thinking is not part of the reply's text
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == thinking
    assert events[-2] == Usage(input_tokens=events[-2].input_tokens, output_tokens=len(thinking.split()) + 2)
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize("reports_usage", [True, False])
async def test_openai_a_server_that_stalls_after_its_finish_reason_ends_the_reply_without_waiting_for_done(
    fake_provider, settings, reports_usage
):
    # The finish reason (and the usage, when the server sends one) arrived, then the connection
    # stays open without `data: [DONE]` (a proxy holding the end of the body): the reply is
    # complete, and ends after a short grace, not as a timeout after the read allowance.
    settings.LLM_FIRST_TOKEN_TIMEOUT = 5.0
    fake_provider.script(
        "sk-stall-end",
        Script(text="Hello there, friend.", input_tokens=21, stalls_before_done=True, reports_usage=reports_usage),
    )

    started = asyncio.get_running_loop().time()
    events, error = await collect("openai", lease(fake_provider, "openai", "sk-stall-end"))
    elapsed = asyncio.get_running_loop().time() - started

    assert error is None
    assert text_of(events) == "Hello there, friend."
    if reports_usage:
        assert events[-2:] == [Usage(input_tokens=21, output_tokens=3), Finish("stop")]
    else:
        assert not any(isinstance(e, Usage) for e in events) and events[-1] == Finish("stop")
    assert elapsed < 3.0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_connection_dropped_before_the_answer_is_unavailable_not_a_timeout(fake_provider, provider):
    # aiohttp's ServerDisconnectedError, which openai's copy of the aiohttp transport re-raises as
    # httpx2.ConnectTimeout (and the SDK as APITimeoutError).
    fake_provider.script("sk-drop", Script(mode="drop"))

    events, error = await collect(provider, lease(fake_provider, provider, "sk-drop"))

    assert events == []
    assert error.kind == ErrorKind.UNAVAILABLE
    assert error.after_output is False
    assert "ServerDisconnectedError" in error.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_connection_cut_mid_reply_says_it_broke_off(fake_provider, provider):
    fake_provider.script("sk-cut2", Script(mode="cut", text="alpha beta gamma", cut_after=1))

    _, error = await collect(provider, lease(fake_provider, provider, "sk-cut2"))

    assert error.kind == ErrorKind.UNAVAILABLE
    assert "broke off mid-reply" in error.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_shared_http_client_is_closed_with_its_event_loop(fake_provider, provider):
    # A Celery task or an admin action runs the adapter in a loop of its own (async_to_sync), which
    # ends with asyncio.run's shutdown: the pooled aiohttp session must be closed then, not left
    # to the garbage collector (which logs "Unclosed client session").
    from conversations.llm import _common

    async def call():
        events, error = await collect(provider, lease(fake_provider, provider, "sk-loop"))
        assert error is None
        return await _common.shared_http_client(provider)

    client = asyncio.run(call())

    assert client.is_closed


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_complete_reply_leaves_its_connection_for_the_next_call(fake_provider, provider):
    # The adapter stops reading at [DONE] / message_stop but reads the end of the body, so the
    # kept-alive connection goes back to the pool (a closed one costs the next call a handshake).
    fake_provider.script("sk-reuse", Script(text="one two three"))

    for _ in range(3):
        events, error = await collect(provider, lease(fake_provider, provider, "sk-reuse"))
        assert error is None and text_of(events) == "one two three"

    ports = {r.client_port for r in fake_provider.requests_for("sk-reuse")}
    assert len(ports) == 1
