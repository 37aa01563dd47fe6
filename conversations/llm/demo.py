"""The built-in offline model `demo:echo`: it streams back the user's last message, word by word.

It needs no key and no network, so a fresh install can chat at once. It behaves like a real
provider where the turn can see it: deltas at a pace (DEMO_DELAY_MS, default 20 ms, so streaming
and stop are visible), token counts from context.count_tokens reported as Usage, and max_tokens
honoured with Finish("length").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from django.conf import settings

from .base import ChatRequest, Finish, StreamEvent, TextDelta, Usage

if TYPE_CHECKING:
    from billing.keys import KeyLease

DEMO_MODEL_ID = "demo:echo"
EMPTY_REPLY = "(The demo model echoes your message, and there was nothing to echo.)"


def demo_reply(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user" and message.content.strip():
            return message.content
    return EMPTY_REPLY


def _deltas(text: str) -> list[str]:
    """Words with their leading whitespace: joined back they give exactly `text`."""
    parts = re.findall(r"\s*\S+", text)
    if parts:
        parts[-1] += text[len("".join(parts)) :]
    return parts


class DemoAdapter:
    provider = "demo"

    async def ping(self, *, key: KeyLease | None = None) -> list[str]:
        """Like the SDK adapters' ping: the models this provider serves."""
        return ["echo"]

    async def stream(self, request: ChatRequest, *, key: KeyLease | None = None) -> AsyncIterator[StreamEvent]:
        from ..context import TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, count_tokens

        model_id = f"demo:{request.model}"
        input_tokens = TOKENS_REPLY_PRIMING
        for message in request.messages:
            input_tokens += TOKENS_PER_MESSAGE
            input_tokens += count_tokens(text=message.role, model_id=model_id)[0]
            input_tokens += count_tokens(text=message.content, model_id=model_id)[0]

        delay = max(float(getattr(settings, "DEMO_DELAY_MS", 20)), 0.0) / 1000
        output_tokens = 0
        finish = "stop"
        for delta in _deltas(demo_reply(request)):
            # Counting word by word matches counting the whole: cl100k splits on the same boundaries.
            tokens = count_tokens(text=delta, model_id=model_id)[0]
            if output_tokens + tokens > request.max_tokens:
                finish = "length"
                break
            if delay:
                await asyncio.sleep(delay)
            output_tokens += tokens
            yield TextDelta(delta)
        yield Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        yield Finish(finish)  # type: ignore[arg-type]
