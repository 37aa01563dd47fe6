"""The fake provider of tests/fakeprovider, plus the time at which it emits every content delta.

    python bench/chat_fake.py --port P --pace-ms 20 --text "..."

Same wire protocol, pace and first-token delay as `python -m tests.fakeprovider` (it subclasses
it); the only addition is bookkeeping for bench/bench_chat.py: each streamed request is tagged by
its last user message, and `GET /bench/times` returns {tag: [emit time of delta 1, 2, ...]} as
`time.monotonic()` values (CLOCK_MONOTONIC is one clock for every process of the machine, so the
bench client can subtract them from its own receive times). `POST /bench/reset` forgets them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakeprovider.server import FakeProvider, Script  # noqa: E402

_tag: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_tag", default=None)


class TimedFakeProvider(FakeProvider):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.times: dict[str, list[float]] = {}

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/bench/times", self._times)
        app.router.add_post("/bench/reset", self._reset)
        return app

    async def _times(self, request: web.Request) -> web.Response:
        return web.json_response(self.times)

    async def _reset(self, request: web.Request) -> web.Response:
        self.times.clear()
        self.reset()  # the recorded requests too: a 500-stream ramp would keep them all
        return web.json_response({})

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)  # aiohttp caches the body; the parent reads it again
        users = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "user"]
        tag = users[-1] if users and isinstance(users[-1], str) else None
        if tag is not None:
            self.times[tag] = []
            _tag.set(tag)  # this handler's task only
        return await super()._openai_chat(request)

    async def _pace(self, script: Script) -> None:
        await super()._pace(script)
        tag = _tag.get()
        if tag is not None:
            # Taken right before the chunk is written: the moment the delta leaves the provider.
            self.times[tag].append(time.monotonic())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pace-ms", type=float, default=20)
    parser.add_argument("--first-delay-ms", type=float, default=0)
    parser.add_argument("--text", required=True)
    args = parser.parse_args()
    fake = TimedFakeProvider(
        host="127.0.0.1",
        port=args.port,
        default=Script(text=args.text, pace_ms=args.pace_ms, first_delay_ms=args.first_delay_ms),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fake.serve_forever())


if __name__ == "__main__":
    main()
