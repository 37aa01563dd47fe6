"""The fake provider of tests/fakeprovider, plus the time at which it emits every content delta.

    python bench/chat_fake.py --port P --pace-ms 20 --text "..."
    python bench/chat_fake.py --check-wire    # its streamed bytes == tests/fakeprovider's, or exit 1

Same wire protocol, pace and first-token delay as `python -m tests.fakeprovider` (it subclasses
it); the additions, for bench/bench_chat.py:

- Bookkeeping: each streamed answer is tagged by its last user message, and `GET /bench/times`
  returns {tag: [emit time of delta 1, 2, ...]} as `time.monotonic()` values (CLOCK_MONOTONIC is
  one clock for every process of the machine, so the bench client can subtract them from its own
  receive times). `POST /bench/reset` forgets them.
- A cheaper paced writer. The parent streams with one `asyncio.sleep` and one `await
  response.write` per delta per stream: ~50 µs of CPU per delta, so 500 streams at 20 ms would
  take the fake alone more than a core of the 2 the bench shares with Daphne. Here an OpenAI
  streaming answer ("ok" script, the bench's only one) is encoded once when the request arrives,
  every chunk already framed for HTTP chunked encoding, and one ticker drives every active stream:
  streams due in the same millisecond share one `loop.call_at`, which writes each one's next chunk
  straight to its transport. Each stream still waits `pace_ms` after its previous write (rounded
  to the millisecond grid the streams share), and the emit time is still taken right before the
  write. Everything else (other scripts, non-streamed answers, Anthropic) is the parent's code.
  `--check-wire` (run by the bench at start) compares the bytes with the parent's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakeprovider.server import FakeProvider, Script  # noqa: E402

TICK = 0.001  # seconds: the grid on which streams due at nearly the same moment share one wake-up


def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk, as aiohttp's chunked writer frames each `response.write`."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Stream:
    """One streamed answer: its framed chunks, the transport they go to, when each left."""

    __slots__ = ("chunks", "done", "index", "times", "transport")

    def __init__(self, chunks: list[bytes], transport: asyncio.Transport, times: list[float] | None, done: asyncio.Future) -> None:
        self.chunks = chunks  # content chunks; the last one carries the finish, usage and [DONE] too
        self.transport = transport
        self.times = times
        self.done = done
        self.index = 0


class _Ticker:
    """Writes the next chunk of every due stream; streams due in the same TICK share one timer."""

    def __init__(self, pace: float) -> None:
        self.pace = pace
        self.loop = asyncio.get_running_loop()
        self.due: dict[int, list[_Stream]] = {}

    def add(self, stream: _Stream, at: float) -> None:
        self._put(stream, round(at / TICK))

    def _put(self, stream: _Stream, slot: int) -> None:
        streams = self.due.get(slot)
        if streams is None:
            self.due[slot] = streams = []
            self.loop.call_at(slot * TICK, self._fire, slot)
        streams.append(stream)

    def _fire(self, slot: int) -> None:
        monotonic, pace = time.monotonic, self.pace
        for stream in self.due.pop(slot):
            transport = stream.transport
            if transport.is_closing():  # the client went away: the parent records it as such
                if not stream.done.done():
                    stream.done.set_exception(ConnectionResetError("client disconnected"))
                continue
            now = monotonic()
            if stream.times is not None:
                stream.times.append(now)  # right before the write: the moment the delta leaves
            index = stream.index
            transport.write(stream.chunks[index])
            stream.index = index = index + 1
            if index < len(stream.chunks):
                # As the parent's sleep(pace) after each write, on the grid, never in this slot.
                self._put(stream, max(round((now + pace) / TICK), slot + 1))
            elif not stream.done.done():
                stream.done.set_result(None)


class TimedFakeProvider(FakeProvider):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.times: dict[str, list[float]] = {}
        self._tickers: dict[float, _Ticker] = {}
        self._encoded_words: dict[str, bytes] = {}  # the script's words, as JSON strings

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
        key = self._key(request)
        body = await self._body(request)  # aiohttp caches the body; the parent reads it again
        script = self._script_for(key)
        if not key or script.mode != "ok" or not body.get("stream"):
            return await super()._openai_chat(request)
        # From here on, the parent's streamed "ok" answer, byte for byte (see --check-wire).
        self._record("openai", request, key, body)
        users = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "user"]
        tag = users[-1] if users and isinstance(users[-1], str) else None
        times: list[float] | None = None
        if tag is not None:
            times = self.times[tag] = []
        await self._before_answer(script, request)

        answer = self._openai_answer(script, body)
        deltas, chunk = answer.deltas, answer.chunk

        # Every content chunk is the same JSON but for its text: encoded once around a marker.
        head, tail = chunk({"content": "\0"}).split(b'"\\u0000"')
        tail_events = chunk({}, answer.finish)
        if answer.include_usage:
            tail_events = _framed(tail_events) + _framed(chunk({}, choices=False, usage=answer.usage))
        else:
            tail_events = _framed(tail_events)
        tail_events += _framed(b"data: [DONE]\n\n")
        words = self._encoded_words
        framed = []
        for text in deltas:
            word = words.get(text)
            if word is None:
                word = words[text] = json.dumps(text).encode()
            framed.append(_framed(head + word + tail))
        if framed:
            framed[-1] += tail_events
        else:
            framed = [tail_events]

        response = await self._sse(request)
        await response.write(chunk({"role": "assistant", "content": ""}))  # with the headers
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        done = asyncio.get_running_loop().create_future()
        stream = _Stream(framed, transport, times, done)
        pace = script.pace_ms / 1000
        if not deltas:
            # The parent writes the end events at once; no delta means no emit time.
            stream.times = None
            transport.write(framed[0])
            done.set_result(None)
        elif pace:
            if pace not in self._tickers:
                self._tickers[pace] = _Ticker(pace)
            self._tickers[pace].add(stream, time.monotonic() + pace)
        else:
            for part in framed:
                if times is not None:
                    times.append(time.monotonic())
                transport.write(part)
            done.set_result(None)
        await done
        await response.write_eof()
        return response


# --- the wire check -------------------------------------------------------------------------------
def _raw_post(port: int, body: dict) -> bytes:
    """The whole HTTP response, chunk framing included, as bytes."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-check\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        out = b""
        while part := sock.recv(65536):
            out += part
    return out


def _normalized(raw: bytes) -> bytes:
    raw = re.sub(rb"chatcmpl-[0-9a-f]{16}", b"chatcmpl-ID", raw)
    raw = re.sub(rb'"created": \d+', b'"created": 0', raw)
    return re.sub(rb"(?im)^date: .*\r\n", b"", raw)


def check_wire() -> list[str]:
    """Differences between this fake's streamed answers and the parent's for the same requests."""
    problems = []
    scripts = [Script(text="Hello, wire check: «ünïcode», \"quotes\"\tand\\slashes.", pace_ms=2), Script(text="", pace_ms=2)]
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 3},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_completion_tokens": 16384},
    ]
    for script in scripts:
        ours, theirs = TimedFakeProvider(default=script).start(), FakeProvider(default=script).start()
        try:
            for body in bodies:
                a, b = _normalized(_raw_post(ours.port, body)), _normalized(_raw_post(theirs.port, body))
                if a != b:
                    problems.append(f"text {script.text!r}, body {body}:\n  ours   {a!r}\n  parent {b!r}")
        finally:
            ours.stop()
            theirs.stop()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--pace-ms", type=float, default=20)
    parser.add_argument("--first-delay-ms", type=float, default=0)
    parser.add_argument("--text")
    parser.add_argument("--check-wire", action="store_true", help="compare the streamed bytes with tests/fakeprovider's")
    args = parser.parse_args()
    if args.check_wire:
        problems = check_wire()
        print("\n".join(problems) or "wire check: same bytes as tests/fakeprovider")
        sys.exit(1 if problems else 0)
    if args.port is None or args.text is None:
        parser.error("--port and --text are required")
    fake = TimedFakeProvider(
        host="127.0.0.1",
        port=args.port,
        default=Script(text=args.text, pace_ms=args.pace_ms, first_delay_ms=args.first_delay_ms),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fake.serve_forever())


if __name__ == "__main__":
    main()
