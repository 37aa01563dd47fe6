"""One async streaming interface, one adapter per provider (openai, anthropic, demo).

INTERFACE STUB for `get_adapter`: the llm work fills it in."""

from .base import Adapter


def get_adapter(provider: str) -> Adapter:
    """The adapter for "openai", "anthropic" or "demo"; KeyError for anything else."""
    raise NotImplementedError
