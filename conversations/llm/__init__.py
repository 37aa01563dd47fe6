"""One async streaming interface, one adapter per provider (openai, anthropic, demo).

    adapter = get_adapter("openai")
    async for event in adapter.stream(ChatRequest(...), key=lease):  # TextDelta*, Usage?, Finish
        ...

Adapters are stateless (a client is made per call from the key), so one instance per provider
is shared. The SDK modules are imported on first use: a process that only ever runs the demo
never loads them.
"""

from __future__ import annotations

from .base import Adapter

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
