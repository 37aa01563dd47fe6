"""One async streaming interface, one adapter per provider (openai, anthropic, demo).

    adapter = get_adapter("openai")
    async for event in adapter.stream(ChatRequest(...), key=lease):  # (TextDelta | ReasoningDelta)*, Usage?, Finish
        ...

Adapters are stateless (a client is made per call from the key), so one instance per provider
is shared. The SDK modules are imported on a call's first use, in a worker thread (importing the
anthropic SDK costs seconds of CPU); `warm_up()` does it ahead, at process start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import Adapter, ChatRequest, Finish, TextDelta, Usage

if TYPE_CHECKING:
    from billing.keys import KeyLease

PROVIDERS = ("openai", "anthropic", "demo")
_adapters: dict[str, Adapter] = {}


def get_adapter(provider: str) -> Adapter:
    """The adapter for "openai", "anthropic" or "demo"; KeyError for anything else."""
    adapter = _adapters.get(provider)
    if adapter is not None:
        return adapter
    if provider == "openai":
        from .openai_adapter import OpenAIAdapter

        adapter = OpenAIAdapter()
    elif provider == "anthropic":
        from .anthropic_adapter import AnthropicAdapter

        adapter = AnthropicAdapter()
    elif provider == "demo":
        from .demo import DemoAdapter

        adapter = DemoAdapter()
    else:
        raise KeyError(provider)
    _adapters[provider] = adapter
    return adapter


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage | None  # None when the provider reported none (count it, marked estimated)
    finish_reason: str  # "stop" | "length" | "refused" | "filtered"


async def completion_fetch(*, provider: str, request: ChatRequest, key: KeyLease | None) -> Completion:
    """One whole answer, for titles and summaries: the same streaming call collected, so it has
    the same timeouts and the same ProviderError kinds as a chat turn."""
    parts: list[str] = []
    usage: Usage | None = None
    finish_reason = "stop"
    async for event in get_adapter(provider).stream(request, key=key):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            finish_reason = event.reason
    return Completion(text="".join(parts), usage=usage, finish_reason=finish_reason)


def warm_up() -> None:
    """Import both SDKs and load the offline token encoding now (sync; call at process start, e.g.
    from asgi.py or an AppConfig.ready), so the first chat turn does not pay for them."""
    from .. import context
    from . import _common

    for name in ("openai", "anthropic"):
        _common.sdk(name)
    context.count_tokens(text="warm up", model_id="demo:echo")
