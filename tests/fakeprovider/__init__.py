"""A local fake provider speaking the real OpenAI and Anthropic wire protocols (see server.py)."""

from .server import FakeProvider, RecordedRequest, Script

__all__ = ["FakeProvider", "RecordedRequest", "Script"]
