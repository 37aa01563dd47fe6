"""The built-in offline demo:echo model and the adapter registry."""

import pytest

from conversations.context import count_tokens
from conversations.llm import get_adapter
from conversations.llm.base import ChatMessage, ChatRequest, Finish, TextDelta, Usage
from conversations.llm.demo import DemoAdapter


@pytest.fixture(autouse=True)
def _fast_demo(settings):
    settings.DEMO_DELAY_MS = 0


def demo_request(text: str, *, max_tokens: int = 1000) -> ChatRequest:
    return ChatRequest(
        model="echo",
        messages=[
            ChatMessage(role="system", content="Be kind."),
            ChatMessage(role="user", content="an older question"),
            ChatMessage(role="assistant", content="an older answer"),
            ChatMessage(role="user", content=text),
        ],
        max_tokens=max_tokens,
    )


async def run(request: ChatRequest) -> list:
    return [event async for event in get_adapter("demo").stream(request, key=None)]


async def test_demo_streams_the_last_user_message_word_by_word_without_a_key():
    events = await run(demo_request("Hello there, how are you today?"))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert [d.text for d in deltas] == ["Hello", " there,", " how", " are", " you", " today?"]
    assert isinstance(events[-2], Usage)
    assert events[-1] == Finish("stop")


async def test_demo_reports_usage_counted_like_the_others():
    text = "Counting tokens the same way everywhere matters for money."
    events = await run(demo_request(text))

    usage = events[-2]
    assert usage.output_tokens == count_tokens(text=text, model_id="demo:echo")[0]
    # Input: every message's text plus the framing OpenAI's cookbook counts.
    assert usage.input_tokens > sum(count_tokens(text=t, model_id="demo:echo")[0] for t in ["Be kind.", text])
    assert usage.cached_tokens == 0


async def test_demo_honours_max_tokens_with_length():
    events = await run(demo_request("one two three four five six seven", max_tokens=3))

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two three"
    assert events[-2].output_tokens == 3
    assert events[-1] == Finish("length")


async def test_demo_with_nothing_to_echo_still_answers():
    events = await run(ChatRequest(model="echo", messages=[ChatMessage(role="system", content="x")], max_tokens=100))

    assert any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == Finish("stop")


async def test_demo_waits_between_words_so_stop_is_possible(settings):
    settings.DEMO_DELAY_MS = 5
    stream = get_adapter("demo").stream(demo_request("a b c d e f"), key=None)

    first = await stream.__anext__()
    await stream.aclose()  # what the turn does on stop: the rest is never produced

    assert first == TextDelta("a")


def test_get_adapter_knows_the_three_providers_and_refuses_others():
    assert isinstance(get_adapter("demo"), DemoAdapter)
    assert get_adapter("openai").provider == "openai"
    assert get_adapter("anthropic").provider == "anthropic"
    assert get_adapter("openai") is get_adapter("openai")
    with pytest.raises(KeyError):
        get_adapter("mistral")


def test_warm_up_loads_the_sdks_and_the_offline_encoding():
    from conversations.llm import _common, warm_up

    warm_up()

    assert {"openai", "anthropic"} <= set(_common._sdks)
    assert count_tokens(text="hello", model_id="demo:echo") == (1, False)


async def test_the_demo_answers_a_short_request_whole_with_its_usage():
    events = await run(demo_request("title me"))

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "title me"
    (usage,) = [e for e in events if isinstance(e, Usage)]
    assert usage.output_tokens == 2
    assert events[-1] == Finish("stop")


async def test_demo_ping_needs_no_key():
    assert await get_adapter("demo").ping(key=None) == ["echo"]
