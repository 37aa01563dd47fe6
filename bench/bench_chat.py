"""Chat streaming benchmark (issue 3): what one Daphne process adds to a streamed reply.

    .venv/bin/python bench/bench_chat.py [--streams 500] [--db sqlite|postgres]

It starts, as subprocesses on free ports, the fake provider (bench/chat_fake.py: the one of
tests/fakeprovider with emit times recorded) and ONE Daphne process serving chatsite.asgi, on a
temporary SQLite database with the in-memory channel layer and cache, or on PostgreSQL
(`--pg-name`, default parley_bench, dropped and re-created) with Redis (`--redis-db`, default 10,
flushed) for the layer and the cache. It migrates, makes users, sessions, conversations and a
provider key, and removes all of it afterwards.

1. First delta: N sequential samples of each of three paths, interleaved round-robin (so drift in
   the machine's load falls on all three alike), against the same fake process with the same pace
   and first-token delay: straight to the fake with aiohttp ("direct raw": request sent -> first
   content chunk read); straight to the fake with the official openai SDK as Parley's adapter
   calls it ("direct SDK": `with_streaming_response`, `iter_lines`; the SDK's own cost is one any
   direct caller of the provider pays); and a turn through Parley (`user_message` sent -> first
   `delta` frame). Added = Parley - direct, per percentile, against each baseline.
2. Concurrency: for each K of the ramp, K sockets (one conversation each, 10 per user) send a
   `user_message` within --spread seconds; each reply is --deltas words at --pace-ms. A stream
   passes when its frames are ack, start, delta seq 1..n, done(stop), no error, and the deltas
   join to exactly the text the fake sent. Per delta, the lag is (client receive time of the frame
   carrying it) - (time the fake emitted it), both CLOCK_MONOTONIC. The fake (bench/chat_fake.py,
   one timer for all due streams) and the client (BenchSocket: a minimal websocket client that
   does its work in data_received and parses frames after the run) are kept cheap per delta, as
   they share the machine's cores with Daphne; their CPU per delta is printed.
3. CPU (utime+stime from /proc/PID/stat) and VmRSS of the Daphne process around every run;
   Daphne's CPU is also given per delta and per delta frame (the whole run's CPU, turn set-up
   included, divided by the deltas or frames of the replies that passed), and the fake's and the
   client's CPU per delta, since on a 2-core machine every µs they spend is taken from Daphne.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
from tests.fakeprovider.standalone import free_port, wait_port  # noqa: E402

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
MODEL = "openai:gpt-4o-mini"
STREAMS_PER_USER = 10
STEADY_AFTER = 1.0  # seconds after the last stream's first delta from which lag counts as steady


# --- small helpers --------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def reply_text(words: int) -> str:
    # Distinct words, so a dropped, repeated or reordered delta cannot go unnoticed.
    return " ".join(f"w{i:03d}" for i in range(1, words + 1)) + "."


# --- the environment ----------------------------------------------------------------------------
class Stack:
    """Database, fake provider and one Daphne process; everything undone by close()."""

    def __init__(self, args) -> None:
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="parley-bench-chat-"))
        self.env = dict(os.environ)
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "chatsite.settings",
                "DJANGO_SECRET_KEY": "bench-only-" + uuid.uuid4().hex,
                "DJANGO_DEBUG": "false",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "MEDIA_ROOT": str(self.tmp / "media"),
                "ALLOW_PRIVATE_BASE_URLS": "true",
                # The bench measures streaming, not the limits: raised out of the way.
                "RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000",
                "RATE_LIMIT_TOKENS_PER_MINUTE": "1000000000",
                "WS_MAX_SOCKETS_PER_USER": "1000",
                "WS_MAX_FRAMES_PER_SECOND": "1000",
                "CELERY_TASK_ALWAYS_EAGER": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if getattr(args, "pubsub_layer", False):
            self.env["DJANGO_SETTINGS_MODULE"] = "bench.settings_pubsub"
        if args.db == "postgres":
            self.env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.pg_name}"
            self.env["REDIS_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"
            self.env["CACHE_KEY_PREFIX"] = "parley-bench-chat"
        else:
            self.env["DATABASE_URL"] = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
            self.env.pop("REDIS_URL", None)
        # This process sets up the database with the same settings Daphne runs with.
        os.environ.update({k: v for k, v in self.env.items() if k in self._ours()})
        if args.db == "sqlite":
            os.environ.pop("REDIS_URL", None)

    def _ours(self) -> set[str]:
        return {
            "DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "MEDIA_ROOT",
            "ALLOW_PRIVATE_BASE_URLS", "DATABASE_URL", "REDIS_URL", "CACHE_KEY_PREFIX", "RATE_LIMIT_REQUESTS_PER_MINUTE",
            "RATE_LIMIT_TOKENS_PER_MINUTE", "WS_MAX_SOCKETS_PER_USER", "WS_MAX_FRAMES_PER_SECOND", "CELERY_TASK_ALWAYS_EAGER",
        }

    def _log(self, name: str):
        return open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process

    def start_fake(self, *, text: str) -> tuple[int, subprocess.Popen]:
        port = free_port()
        cmd = [
            PYTHON, str(ROOT / "bench" / "chat_fake.py"), "--port", str(port), "--pace-ms", str(self.args.pace_ms),
            "--first-delay-ms", str(self.args.first_delay_ms), "--text", text,
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log(f"fake-{port}"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_port(port, proc)
        return port, proc

    def start_daphne(self) -> int:
        self.port = free_port()
        cmd = [str(Path(PYTHON).parent / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"]
        self.daphne = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log("daphne"), stderr=subprocess.STDOUT)
        self.procs.append(self.daphne)
        wait_port(self.port, self.daphne)
        return self.port

    def prepare_database(self) -> None:
        if self.args.db == "postgres":
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.args.pg_name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{self.args.pg_name}"')
            self._redis_flush()
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)

    def _redis_flush(self) -> None:
        subprocess.run(["redis-cli", "-n", str(self.args.redis_db), "flushdb"], check=False, capture_output=True)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if self.args.db == "postgres":
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.args.pg_name}" WITH (FORCE)')
            self._redis_flush()
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def add_key(*, name: str, port: int, priority: int) -> None:
    from django.core.management import call_command

    call_command(
        "add_provider_key", provider="openai", name=name, key="sk-bench", base_url=f"http://127.0.0.1:{port}/v1",
        priority=priority, stdout=open(os.devnull, "w"),  # noqa: SIM115
    )


def disable_key(name: str) -> None:
    from django.core.management import call_command

    call_command("disable_provider_key", name=name, stdout=open(os.devnull, "w"))  # noqa: SIM115


def make_sockets_data(count: int, label: str) -> list[tuple[str, str]]:
    """`count` conversations (10 per user, titled so no title call follows the reply), each
    with the session cookie of its owner: [(conversation id, session key)]."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from conversations.models import Conversation

    User = get_user_model()
    out = []
    users = User.objects.bulk_create(
        [User(username=f"{label}-{i}-{uuid.uuid4().hex[:6]}", password="!") for i in range((count + STREAMS_PER_USER - 1) // STREAMS_PER_USER)]
    )
    users = list(User.objects.filter(username__startswith=f"{label}-"))
    conversations = Conversation.objects.bulk_create(
        [Conversation(owner=users[i // STREAMS_PER_USER], title=f"bench {i}", model=MODEL) for i in range(count)]
    )
    sessions = {}
    for user in users:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        sessions[user.pk] = store.session_key
    for conversation in conversations:
        out.append((str(conversation.id), sessions[conversation.owner_id]))
    return out


# --- the client -------------------------------------------------------------------------------
class HandshakeError(Exception):
    pass


class BenchSocket(asyncio.Protocol):
    """A minimal websocket client (RFC 6455) for one stream, cheap per frame.

    The bench client shares the 2 cores with Daphne, so every µs it spends per frame is taken from
    the process measured. aiohttp's client costs a task wake-up, a timeout and a parse per frame;
    this one does its work in `data_received`: it notes the time (so a frame's receive time is when
    its bytes reached the client, not when a task got round to it), keeps the payload as bytes and
    parses JSON only for the rare frame that may end the stream (one naming "done" or "error").
    The stream's frames are parsed after the run, outside the measured window. It answers pings
    (Daphne closes sockets that do not) and close frames; the server's frames are never masked,
    and this client sends text frames unfragmented, masked as the RFC requires.
    """

    def __init__(self, host: str, path: str, headers: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self.request = "".join(
            [f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"]
            + [f"{name}: {value}\r\n" for name, value in headers.items()]
        )
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request += f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        self.transport: asyncio.Transport | None = None
        self.upgraded = loop.create_future()
        self.ended = loop.create_future()  # result: '' (done) or what went wrong
        self.closed = loop.create_future()
        self.raw: list[tuple[float, bytes]] = []  # (receive time, payload) of every text frame
        self.buffer = b""
        self.fragments: list[bytes] | None = None
        self.closing = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request.encode())

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError(f"connection lost: {exc}"))
        self._end("socket CLOSED")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buffer + data if self.buffer else data
        if not self.upgraded.done():
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buffer = buf
                return
            head, buf = buf[:head_end].decode("latin-1"), buf[head_end + 4 :]
            accept = base64.b64encode(hashlib.sha1((self.key + WS_GUID).encode()).digest()).decode()
            if not head.startswith("HTTP/1.1 101") or f"sec-websocket-accept: {accept.lower()}" not in head.lower():
                self.upgraded.set_exception(HandshakeError(head.split("\r\n", 1)[0]))
                self.transport.close()
                return
            self.upgraded.set_result(None)
        pos, size, raw = 0, len(buf), self.raw
        while size - pos >= 2:
            first, length = buf[pos], buf[pos + 1]
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            elif length > 126:  # 127 (a masked length would be >127: the server never masks)
                if size - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if start + length > size:
                break
            payload, pos = buf[start : start + length], start + length
            opcode = first & 0x0F
            if first == 0x81:  # a whole text frame: nearly every frame
                raw.append((now, payload))
                if b'"done"' in payload or b'"error"' in payload:
                    self._maybe_end(payload)
            elif opcode in (0, 1):  # a fragment of a text frame
                self.fragments = (self.fragments or []) + [payload]
                if first & 0x80:
                    payload, self.fragments = b"".join(self.fragments), None
                    raw.append((now, payload))
                    self._maybe_end(payload)
            elif opcode == 9:
                self._send(0xA, payload)  # pong
            elif opcode == 8:
                self._end("socket CLOSE")
                if not self.closing:
                    self._send(0x8, payload[:2])
                self.transport.close()
            elif opcode != 0xA:
                self._end("socket BINARY" if opcode == 2 else f"socket opcode {opcode}")
        self.buffer = buf[pos:]

    # the stream
    def _maybe_end(self, payload: bytes) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "done":
            self._end("")
        elif frame.get("type") == "error" and "message_id" not in frame:
            self._end(f"error {frame.get('code')}")

    def _end(self, error: str) -> None:
        if not self.ended.done():
            self.ended.set_result(error)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (size // 4 + 1))[:size], "big")).to_bytes(size, "big")
        self.transport.write(header + mask + masked)

    def send_text(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("socket closed")
        self._send(0x1, text.encode())

    async def close(self) -> None:
        if not self.closed.done():
            self.closing = True
            self._send(0x8, (1000).to_bytes(2, "big"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(self.closed)
            if self.transport is not None:
                self.transport.close()


@dataclass
class StreamResult:
    tag: str
    sent: float = 0.0
    raw: list = field(default_factory=list)  # (receive time, payload bytes), parsed by parse()
    frames: list = field(default_factory=list)  # (receive time, frame)
    error: str = ""

    def parse(self) -> StreamResult:
        self.frames = [(t, json.loads(payload)) for t, payload in self.raw]
        return self


async def ws_open(port: int, conversation_id: str, session_key: str) -> BenchSocket:
    headers = {"Origin": f"http://127.0.0.1:{port}", "Cookie": f"sessionid={session_key}"}
    ws = BenchSocket(f"127.0.0.1:{port}", f"/ws/chat/{conversation_id}/", headers)
    await asyncio.get_running_loop().create_connection(lambda: ws, "127.0.0.1", port)
    async with asyncio.timeout(30):
        await ws.upgraded
    return ws


async def run_stream(ws, tag: str, *, timeout: float = 120) -> StreamResult:
    """Send one user_message and keep every frame until done (or error, or timeout); the frames
    are left unparsed (`StreamResult.parse`)."""
    result = StreamResult(tag=tag)
    result.sent = time.monotonic()
    if isinstance(ws, BaseException):  # the handshake failed
        result.error = f"handshake {type(ws).__name__}"
        return result
    try:
        ws.send_text(json.dumps({"type": "user_message", "content": tag, "client_id": str(uuid.uuid4())}))
    except Exception as exc:  # noqa: BLE001 - counted as a failed stream
        result.error = f"send {type(exc).__name__}"
        return result
    done, _pending = await asyncio.wait((ws.ended,), timeout=timeout)
    result.error = ws.ended.result() if done else "timeout"
    result.raw = ws.raw
    return result


def check_stream(result: StreamResult, expected: str) -> str:
    """'' when the reply is complete and in order, else what is wrong."""
    if result.error:
        return result.error
    kinds = [f["type"] for _t, f in result.frames]
    if "error" in kinds:
        return "error frame " + next(f.get("code", "") for _t, f in result.frames if f["type"] == "error")
    if kinds[:2] != ["ack", "start"] or kinds[-1] != "done":
        return "frame order " + ",".join(kinds[:3]) + "…" + kinds[-1]
    deltas = [f for _t, f in result.frames if f["type"] == "delta"]
    seqs = [f["seq"] for f in deltas]
    if seqs != list(range(1, len(deltas) + 1)):
        at = next(i for i, seq in enumerate(seqs) if seq != i + 1)
        return f"seq not 1,2,3…: {seqs[max(at - 2, 0) : at + 3]} at frame {at + 1} of {len(seqs)}"
    if "".join(f["text"] for f in deltas) != expected:
        return "text differs"
    if result.frames[-1][1].get("finish_reason") != "stop":
        return "finish_reason " + str(result.frames[-1][1].get("finish_reason"))
    return ""


def first_delta_ms(result: StreamResult) -> float | None:
    for t, frame in result.frames:
        if frame["type"] == "delta":
            return (t - result.sent) * 1000
    return None


def direct_request(tag: str) -> dict:
    """The request the openai adapter makes: streaming, with usage."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": tag}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 16384,
    }


def _content_time(line, now: float, started: float, first: float | None, received: list | None) -> float | None:
    """`first` updated for one SSE line read at `now`; `now` appended to `received` if the line
    carries content."""
    if line.startswith(b"data: {" if isinstance(line, bytes) else "data: {"):
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            if first is None:
                first = (now - started) * 1000
            if received is not None:
                received.append(now)
    return first


async def direct_first_delta(session, fake_port: int, tag: str, received: list | None = None) -> float | None:
    """Request sent -> first content chunk read, straight to the fake with aiohttp. Appends the
    receive time of every content chunk to `received` when given."""
    started = time.monotonic()
    first = None
    async with session.post(
        f"http://127.0.0.1:{fake_port}/v1/chat/completions", json=direct_request(tag), headers={"Authorization": "Bearer sk-bench"}
    ) as response:
        async for line in response.content:
            first = _content_time(line, time.monotonic(), started, first, received)
    return first


def sdk_client(fake_port: int):
    """The official SDK's client as Parley's openai adapter makes it (no retries, aiohttp transport)."""
    import openai

    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{fake_port}/v1", api_key="sk-bench", max_retries=0, http_client=openai.DefaultAioHttpClient()
    )


async def sdk_first_delta(client, tag: str, received: list | None = None) -> float | None:
    """Request sent -> first content chunk read, straight to the fake through the official SDK,
    as Parley's adapter calls it (`with_streaming_response`, lines read with `iter_lines`): the
    SDK's own cost, which any direct caller of the provider would pay too."""
    started = time.monotonic()
    first = None
    async with client.chat.completions.with_streaming_response.create(**direct_request(tag)) as response:
        async for line in response.iter_lines():
            first = _content_time(line, time.monotonic(), started, first, received)
    return first


# --- phases -------------------------------------------------------------------------------------
PATHS = ("direct", "sdk", "parley")


async def phase_first_delta(stack: Stack, fake_port: int, n: int) -> dict:
    """N samples of each path, interleaved (round k starts with path k mod 3, so load drift and
    whatever one sample leaves behind fall on every path alike)."""
    import aiohttp

    socks = await asyncio.to_thread(make_sockets_data, n + 5, "first")
    client = sdk_client(fake_port)
    # limit=0: aiohttp's default pool of 100 connections would hold the 101st request forever.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for i in range(5):  # warm-up every path: connection pools, imports, SDK client cache
            await direct_first_delta(session, fake_port, f"warm {i}")
            await sdk_first_delta(client, f"warm sdk {i}")
            ws = await ws_open(stack.port, *socks[i])
            await run_stream(ws, f"warm parley {i}")
            await ws.close()
        await session.post(f"http://127.0.0.1:{fake_port}/bench/reset")
        rss0 = proc_rss_mib(stack.daphne.pid)
        cpu_h = proc_cpu(stack.daphne.pid)
        # Every socket opened first, so the turns' CPU does not include the handshakes.
        sockets = [await ws_open(stack.port, *socks[5 + i]) for i in range(n)]
        cpu0 = proc_cpu(stack.daphne.pid)
        samples: dict[str, list[float]] = {path: [] for path in PATHS}
        received: dict[str, dict[str, list[float]]] = {"direct": {}, "sdk": {}}
        failures = 0
        for i in range(n):
            for path in PATHS[i % 3 :] + PATHS[: i % 3]:
                tag = f"{path} {i} {uuid.uuid4().hex}"
                if path == "parley":
                    result = (await run_stream(sockets[i], tag)).parse()
                    value = first_delta_ms(result)
                    if value is None or result.error:
                        failures += 1
                        continue
                else:
                    times = received[path][tag] = []
                    if path == "direct":
                        value = await direct_first_delta(session, fake_port, tag, times)
                    else:
                        value = await sdk_first_delta(client, tag, times)
                samples[path].append(value)
        cpu1 = proc_cpu(stack.daphne.pid)
        async with session.get(f"http://127.0.0.1:{fake_port}/bench/times") as response:
            emitted = await response.json()
        await asyncio.gather(*(ws.close() for ws in sockets))
    await client.close()
    # The lag of a plain client: the reference for the per-delta lag through Parley.
    lags = {
        path: [(r - e) * 1000 for tag, times in by_tag.items() for r, e in zip(times, emitted[tag])]
        for path, by_tag in received.items()
    }
    return {
        "cpu_per_handshake": (cpu0 - cpu_h) / n, **samples, "failures": failures, "cpu_per_turn": (cpu1 - cpu0) / n,
        "rss": rss0, "lags": lags, "load": loadavg(),
    }


async def phase_concurrency(stack: Stack, fake_port: int, k: int, socks, expected: str) -> dict:
    import aiohttp

    from tests.fakeprovider.server import _words

    words = _words(expected)
    pid = stack.daphne.pid
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await session.post(f"http://127.0.0.1:{fake_port}/bench/reset")
        rss_idle = proc_rss_mib(pid)
        sockets = []
        for i in range(0, k, 50):  # the handshakes, in batches (not measured)
            sockets += await asyncio.gather(
                *(ws_open(stack.port, *s) for s in socks[i : min(i + 50, k)]), return_exceptions=True
            )
        rss_open = proc_rss_mib(pid)
        cpu0 = proc_cpu(pid)
        client_cpu0 = time.process_time()
        fake_cpu0 = proc_cpu(stack.fake_long.pid)
        peak = [rss_open]
        sampling = True

        async def sample():
            while sampling:
                peak.append(proc_rss_mib(pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        tags = [f"stream {i} {uuid.uuid4().hex}" for i in range(k)]

        async def one(ws, tag):
            await asyncio.sleep(random.uniform(0, stack.args.spread))
            return await run_stream(ws, tag, timeout=stack.args.timeout)

        started = time.monotonic()
        results = await asyncio.gather(*(one(ws, tag) for ws, tag in zip(sockets, tags)))
        elapsed = time.monotonic() - started
        sampling = False
        await sampler
        cpu1 = proc_cpu(pid)
        client_cpu = time.process_time() - client_cpu0
        fake_cpu = proc_cpu(stack.fake_long.pid) - fake_cpu0
        rss_after = proc_rss_mib(pid)
        async with session.get(f"http://127.0.0.1:{fake_port}/bench/times") as response:
            emitted = await response.json()
        await asyncio.gather(*(ws.close() for ws in sockets if not isinstance(ws, BaseException)), return_exceptions=True)

    for result in results:  # after the measured window: the client's JSON work takes no core from Daphne
        result.parse()
    failures: dict[str, int] = {}
    lags, gaps, pace, first, frames_total = [], [], [], [], 0
    timed_lags, starts = [], []  # (emit time, lag) of every delta; each stream's first emit time
    for result in results:
        problem = check_stream(result, expected)
        if problem:
            failures[problem] = failures.get(problem, 0) + 1
            continue
        emits = emitted.get(result.tag) or []
        if len(emits) != len(words):
            failures["emit times missing"] = failures.get("emit times missing", 0) + 1
            continue
        first.append(first_delta_ms(result))
        starts.append(emits[0])
        pace += [(b - a) * 1000 for a, b in zip(emits, emits[1:])]
        delta_frames = [(t, f) for t, f in result.frames if f["type"] == "delta"]
        frames_total += len(delta_frames)
        gaps += [(b[0] - a[0]) * 1000 for a, b in zip(delta_frames, delta_frames[1:])]
        # Which frame carried word i: walk the frames' text against the words.
        index, carried = 0, ""
        for t, frame in delta_frames:
            carried += frame["text"]
            while index < len(words) and len("".join(words[: index + 1])) <= len(carried):
                lags.append((t - emits[index]) * 1000)
                timed_lags.append((emits[index], lags[-1]))
                index += 1
    ok = k - sum(failures.values())
    # "Steady": deltas emitted once every stream has started and STEADY_AFTER seconds more have
    # passed, i.e. without the burst of K turn starts (their preparation) competing for the CPU.
    steady_from = max(starts, default=0.0) + STEADY_AFTER
    steady = [lag for emitted_at, lag in timed_lags if emitted_at >= steady_from]
    return {
        "k": k, "ok": ok, "failures": failures, "elapsed": elapsed, "first": first, "lags": lags, "gaps": gaps,
        "steady": steady,
        "pace": pace, "frames": frames_total, "deltas": ok * len(words),
        "cpu": cpu1 - cpu0, "client_cpu": client_cpu, "fake_cpu": fake_cpu,
        "rss_idle": rss_idle, "rss_open": rss_open, "rss_peak": max(peak), "rss_after": rss_after, "load": loadavg(),
    }


# --- report ----------------------------------------------------------------------------------------
def print_first(res: dict, args) -> None:
    d, sdk, p = res["direct"], res["sdk"], res["parley"]
    print(
        f"\n## First content delta, N={len(p)} per path, interleaved; pace {args.pace_ms} ms,"
        f" first delay {args.first_delay_ms} ms"
    )
    print("| path | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|")

    def row(label: str, values: list[float]) -> None:
        print(f"| {label} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {pct(values, 99):.1f} |")

    def added(label: str, base: list[float]) -> None:
        cells = " | ".join(f"**{pct(p, q) - pct(base, q):.1f}**" for q in (50, 95, 99))
        print(f"| {label} | {cells} |")

    row("direct raw (aiohttp -> fake, request sent -> first content chunk)", d)
    row("direct SDK (openai.AsyncOpenAI, aiohttp transport -> fake)", sdk)
    row("Parley (user_message -> first delta frame)", p)
    added("**added vs direct raw** (Parley - raw, per percentile)", d)
    added("**added vs direct SDK** (Parley - SDK, per percentile: the SDK's own cost not counted)", sdk)
    print(
        f"failures: {res['failures']}; Daphne CPU per sequential turn: {res['cpu_per_turn'] * 1000:.1f} ms"
        f" (+ {res['cpu_per_handshake'] * 1000:.1f} ms per socket handshake); load {res['load']}"
    )
    for path, label in (("direct", "raw"), ("sdk", "SDK")):
        lags = res["lags"][path]
        print(f"direct {label} client's lag emit->receive per delta: p50 {pct(lags, 50):.2f} ms, p99 {pct(lags, 99):.2f} ms")


def print_ramp(rows: list[dict], args) -> None:
    print(f"\n## Concurrency: {args.deltas} deltas at {args.pace_ms} ms, starts spread over {args.spread} s")
    print(
        "| K | complete+in order | first delta p50/p99 ms | lag emit->client p50/p99 ms"
        f" | lag once all started (+{STEADY_AFTER:g} s) p50/p99 ms (deltas) | frame gap p50/p99 ms"
        " | fake pace p50/p99 ms | deltas/s | Daphne CPU s/stream | Daphne CPU % | MiB/open socket | MiB/stream (peak) | load |"
    )
    print("|" + "---:|" * 13)
    for r in rows:
        k = r["k"]
        print(
            f"| {k} | {r['ok']}/{k} | {pct(r['first'], 50):.0f} / {pct(r['first'], 99):.0f}"
            f" | {pct(r['lags'], 50):.0f} / {pct(r['lags'], 99):.0f}"
            f" | {pct(r['steady'], 50):.0f} / {pct(r['steady'], 99):.0f} ({len(r['steady'])})"
            f" | {pct(r['gaps'], 50):.0f} / {pct(r['gaps'], 99):.0f}"
            f" | {pct(r['pace'], 50):.1f} / {pct(r['pace'], 99):.1f} | {r['deltas'] / r['elapsed']:.0f}"
            f" | {r['cpu'] / k:.3f} | {100 * r['cpu'] / r['elapsed']:.0f}"
            f" | {(r['rss_open'] - r['rss_idle']) / k:.3f} | {(r['rss_peak'] - r['rss_idle']) / k:.3f} | {r['load']} |"
        )
    print(
        "\n| K | Daphne CPU µs/delta (all ÷ deltas) | Daphne CPU µs/frame | fake CPU µs/delta | client CPU µs/delta"
        " | client CPU µs/frame | deltas per frame |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        # Per delta (and per delta frame) of the replies that passed: with every reply complete
        # they are all the deltas the fake sent and all the frames Daphne sent.
        deltas, frames = r["deltas"] or float("nan"), r["frames"] or float("nan")
        print(
            f"| {r['k']} | {r['cpu'] / deltas * 1e6:.0f} | {r['cpu'] / frames * 1e6:.0f}"
            f" | {r['fake_cpu'] / deltas * 1e6:.1f} | {r['client_cpu'] / deltas * 1e6:.1f}"
            f" | {r['client_cpu'] / frames * 1e6:.0f} | {deltas / frames:.2f} |"
        )
    for r in rows:
        extra = f" failures: {r['failures']}" if r["failures"] else ""
        print(
            f"K={r['k']}: {r['elapsed']:.1f} s wall; CPU s: Daphne {r['cpu']:.2f}, fake {r['fake_cpu']:.2f},"
            f" client {r['client_cpu']:.2f}; RSS MiB idle {r['rss_idle']:.0f} open {r['rss_open']:.0f}"
            f" peak {r['rss_peak']:.0f} after {r['rss_after']:.0f}; delta frames {r['frames']}{extra}"
        )


async def amain(args) -> None:
    stack = Stack(args)
    try:
        # The bench's fake must stream exactly what tests/fakeprovider streams.
        subprocess.run([PYTHON, str(ROOT / "bench" / "chat_fake.py"), "--check-wire"], cwd=ROOT, check=True)
        await asyncio.to_thread(stack.prepare_database)
        short_port, _short = stack.start_fake(text=reply_text(args.first_words))
        long_text = reply_text(args.deltas)
        long_port, stack.fake_long = stack.start_fake(text=long_text)
        await asyncio.to_thread(add_key, name="bench-first", port=short_port, priority=200)
        stack.start_daphne()
        print(
            f"# Chat streaming bench: db={args.db}, settings {stack.env['DJANGO_SETTINGS_MODULE']},"
            f" {os.cpu_count()} cores, load {loadavg()} at start"
        )
        print(f"Daphne pid {stack.daphne.pid} on port {stack.port}; fake pids {_short.pid}, {stack.fake_long.pid}", flush=True)
        if args.first_n:
            print_first(await phase_first_delta(stack, short_port, args.first_n), args)
        else:  # still warm the process up (imports, SDK client, connection pools) before the ramp
            await phase_first_delta(stack, short_port, 1)
        await asyncio.to_thread(disable_key, "bench-first")
        await asyncio.to_thread(add_key, name="bench-long", port=long_port, priority=100)
        ramp = [k for k in (int(x) for x in args.ramp.split(",")) if 0 < k <= args.streams]  # "0": none
        socks = await asyncio.to_thread(make_sockets_data, max(ramp, default=0) * len(ramp), "ramp")
        rows, used = [], 0
        for k in ramp:
            row = await phase_concurrency(stack, long_port, k, socks[used : used + k], long_text)
            used += k
            rows.append(row)
            print(f"K={k}: {row['ok']}/{k} complete, load {row['load']}", flush=True)
        if not rows:
            return
        print_ramp(rows, args)
        passing = [r["k"] for r in rows if r["ok"] == r["k"]]
        print(f"\nLargest K with every reply complete and in order: {max(passing) if passing else 0}")
    finally:
        stack.close()


def main() -> None:
    # SIGTERM (a job being stopped) unwinds like Ctrl-C, so the subprocesses are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500, help="the largest K of the ramp")
    parser.add_argument("--ramp", default="50,100,200,500", help="Ks to run, comma-separated; 0 for none")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-name", default="parley_bench")
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument("--first-n", type=int, default=200, help="sequential samples per path (0: skip)")
    parser.add_argument("--first-words", type=int, default=5, help="reply length in the first-delta phase")
    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--pace-ms", type=float, default=20)
    parser.add_argument("--first-delay-ms", type=float, default=0)
    parser.add_argument("--spread", type=float, default=0.5, help="seconds over which the K streams start")
    parser.add_argument("--timeout", type=float, default=120, help="per stream")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--pubsub-layer", action="store_true",
        help="with --db postgres: run Daphne with bench/settings_pubsub.py (channels_redis' pub/sub layer)",
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
