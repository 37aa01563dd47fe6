"""One async streaming interface, one adapter per provider (openai, anthropic, demo; the
providers a model id may name are model_ids.PROVIDERS).

    adapter = get_adapter("openai")
    async for event in adapter.stream(ChatRequest(...), key=lease):  # (TextDelta | ReasoningDelta)*, Usage?, Finish
        ...

Adapters are stateless (a client is made per call from the key), so one instance per provider
is shared. The SDK modules are imported on a call's first use, in a worker thread (importing the
anthropic SDK costs seconds of CPU); `warm_up()` does it ahead, at process start.
"""

from __future__ import annotations

from .base import Adapter

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


def warm_up() -> None:
    """Import both SDKs and load the offline token encoding now (sync; call at process start, e.g.
    from asgi.py or an AppConfig.ready), so the first chat turn does not pay for them."""
    from .. import context
    from . import _common

    for name in ("openai", "anthropic"):
        _common.sdk(name)
    context.count_tokens(text="warm up", model_id="demo:echo")
