"""The interface every provider adapter speaks. The turn (conversations.turns) sees only this.

An adapter's `stream(request, key=...)` is an async iterator yielding, in order:
    (TextDelta | ReasoningDelta)* , then Usage (when the provider reports it), then Finish.
An adapter whose provider counts the input before the reply (Anthropic) also yields that early,
as a Usage with final=False among the deltas: what a reply ended early is billed for.
It raises ProviderError for anything that went wrong, with one of a few kinds; the message is
safe to show and log (never a secret, never the request's text).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from billing.keys import KeyLease


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's own model name, without the "provider:" prefix
    messages: list[ChatMessage]  # system messages first (adapters that take the system apart lift them)
    max_tokens: int
    temperature: float | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Thinking a reasoning model streams apart from its answer (the reasoning parsers of vLLM and
    llama.cpp, DeepSeek's API). Not part of the reply: never shown, saved or sent back as context
    (DeepSeek refuses it there). But it is the model at work, so it meets the first-token
    deadline, and the provider bills it as output, so it is counted when no usage is reported."""

    text: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    # False: counted by the provider before the reply's end. Its input is the provider's own
    # count; its output only what was written then, so a reply ended early counts its text.
    final: bool = True


@dataclass(frozen=True)
class Finish:
    # refused: the model's safety classifiers ended the reply (Anthropic's stop_reason "refusal").
    # filtered: the provider's content filter cut the reply (OpenAI's finish_reason "content_filter").
    reason: Literal["stop", "length", "refused", "filtered"]


StreamEvent = TextDelta | ReasoningDelta | Usage | Finish


class ErrorKind(StrEnum):
    AUTH = "auth"  # 401/403: the key is bad; never retried with it
    RATE_LIMITED = "rate_limited"  # 429: cool the key down (retry_after), try the next
    UNAVAILABLE = "unavailable"  # 5xx, connection refused, stream cut: next key after a backoff
    TIMEOUT = "timeout"  # connect / first token / total timeout
    BAD_REQUEST = "bad_request"  # 400: the user's request; not retried
    # 404: this key's server does not serve the model (never had it, retired it, a local server
    # never pulled it; or the base URL is wrong). The key is fine, and another key may serve it.
    MODEL_NOT_FOUND = "model_not_found"
    CONTEXT_TOO_LONG = "context_too_long"  # 400 naming the context length; not retried


@dataclass
class ProviderError(Exception):
    kind: ErrorKind
    message: str = ""
    status: int | None = None
    retry_after: float | None = None
    # True once any delta was yielded before the failure (the turn then keeps what arrived).
    after_output: bool = False
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else str(self.kind)


class Adapter(Protocol):
    provider: str

    def stream(self, request: ChatRequest, *, key: KeyLease | None) -> AsyncIterator[StreamEvent]: ...
